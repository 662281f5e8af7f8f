"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set) as a tfds dataset, offline.

`sklearn.datasets.load_digits()` ships 1,797 images of 8x8 pixels with integer values
0..16. They are stored as `image: uint8[8, 8, 1]` rescaled to 0..255 with
`pixel = round(v * 255 / 16)` (exactly invertible: `v = round(pixel * 16 / 255)`), so
the same "uint8 / 255" convention as MNIST applies. `label: ClassLabel(10)`.

Split (fixed, stratified, `research.data.balance.stratified_split(labels, 0.2, seed=0)`,
per class `round(0.2 * n_c)` half-up go to test):

  train  1,438 examples (per class 142 146 142 146 145 146 145 143 139 144)
  test     359 examples (per class  36  36  35  37  36  36  36  36  35  36)

Within a split, examples keep scikit-learn's order; the training pipeline shuffles.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders import labelled_images

NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2
SPLIT_SIZES = {'train': 1438, 'test': 359}


def to_uint8(values_0_16: np.ndarray) -> np.ndarray:
  return np.floor(np.asarray(values_0_16, np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


def reference_arrays() -> tuple[np.ndarray, np.ndarray]:
  """`(images uint8[1797, 8, 8, 1] in 0..255, labels int64[1797])` from scikit-learn."""
  from sklearn.datasets import load_digits  # imported lazily: only needed when preparing

  digits = load_digits()
  x = digits.images
  if x.shape != (1797, 8, 8) or x.min() < 0 or x.max() > 16 or not np.array_equal(x, np.round(x)):
    raise ValueError(f'sklearn load_digits() changed: images {x.shape}, range '
                     f'[{x.min()}, {x.max()}]; expected 1797x8x8 integers in 0..16.')
  return to_uint8(x)[..., None], digits.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  return labelled_images.stratified_split(
      labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED, num_classes=NUM_CLASSES,
      expected_sizes=SPLIT_SIZES, dataset='sklearn_digits')


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """1,797 8x8 digits (scikit-learn), split 1,438 / 359, stratified."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Built offline from sklearn.datasets.load_digits(), 0..16 -> 0..255.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the documented order
        homepage=('https://scikit-learn.org/stable/modules/generated/'
                  'sklearn.datasets.load_digits.html'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    images, labels = reference_arrays()
    return {name: self._generate_examples(images[idx], labels[idx])
            for name, idx in split_indices(labels).items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    return labelled_images.examples(images, labels)
