"""What the in-memory image builders share: a checked stratified split and the examples."""
from __future__ import annotations

import numpy as np

from research.data import balance


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int, num_classes: int,
                     expected_sizes: dict[str, int], dataset: str) -> dict[str, np.ndarray]:
  """{'train': idx, 'test': idx}, failing if the sizes differ from the documented ones."""
  train_idx, test_idx = balance.stratified_split(labels, test_fraction, seed=seed,
                                                 num_classes=num_classes)
  splits = {'train': train_idx, 'test': test_idx}
  for name, idx in splits.items():
    if len(idx) != expected_sizes[name]:
      raise ValueError(f'{dataset} split {name!r} has {len(idx)} examples, '
                       f'documented {expected_sizes[name]}.')
  return splits


def examples(images: np.ndarray, labels: np.ndarray):
  """tfds `_generate_examples` body: (key, {'image', 'label'}) in order."""
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {'image': image, 'label': int(label)}
