"""MNIST-1D (Greydanus 2020) as a tfds dataset, generated offline from the `mnist1d` package.

`mnist1d.data.make_dataset(get_dataset_args())` regenerates the paper's frozen dataset
exactly (4,000 train / 1,000 test, 40 float features). We call `make_dataset` directly
because `get_dataset` tries the network first. The `shuffled` config applies one fixed
permutation of the 40 positions to every example (the paper's "shuffled" control, where
spatial structure is destroyed); the permutation is `numpy.random.RandomState(0).permutation(40)`.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_FEATURES = 40
SHUFFLE_PERMUTATION_SEED = 0


def reference_arrays() -> dict[str, np.ndarray]:
  """The paper's arrays, straight from the `mnist1d` package (float64 features)."""
  import mnist1d.data  # imported lazily: it is only needed when preparing

  state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; restore it
  try:
    data = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
  finally:
    np.random.set_state(state)
  return data


def shuffle_permutation() -> np.ndarray:
  return np.random.RandomState(SHUFFLE_PERMUTATION_SEED).permutation(NUM_FEATURES)


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D: 1D signals of 40 samples, 10 digit classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Generated offline from mnist1d.data.make_dataset.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='original', description='The frozen paper dataset.'),
      tfds.core.BuilderConfig(
          name='shuffled',
          description='Same, with one fixed permutation of the 40 positions.'),
  ]
  DEFAULT_CONFIG_NAME = 'original'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(NUM_FEATURES,), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('x', 'label'),
        disable_shuffling=True,  # keep the paper's example order, element for element
        homepage='https://github.com/greydanus/mnist1d',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    data = reference_arrays()
    x_train, x_test = data['x'], data['x_test']
    if self.builder_config.name == 'shuffled':
      perm = shuffle_permutation()
      x_train, x_test = x_train[:, perm], x_test[:, perm]
    return {
        'train': self._generate_examples(x_train, data['y']),
        'test': self._generate_examples(x_test, data['y_test']),
    }

  def _generate_examples(self, x: np.ndarray, y: np.ndarray):
    for i, (features, label) in enumerate(zip(x, y)):
      yield i, {'x': features.astype(np.float32), 'label': int(label)}
