"""Class-aware index selection: stratified splits and class-balanced epoch orders.

- `stratified_split`: a fixed train/test split that keeps each class's share. It draws
  from `numpy.random.RandomState`, whose stream numpy keeps frozen across versions, so a
  builder's split is the same wherever it is rebuilt.
- `BalancedSampler`: per-epoch index orders in which every class present appears exactly
  equally often. Rare classes are oversampled: each of a class's examples is repeated
  `examples_per_class // n_c` times, and the remaining `examples_per_class % n_c` are
  drawn without replacement, so within an epoch no example of a class appears more than
  once more than another. Epoch `e`'s order is a function of `(seed, e)` only: resuming
  from a checkpoint at any batch replays exactly the same orders.
"""
from __future__ import annotations

import numpy as np

# Separates the sampler's random stream from the shuffling and preprocessing streams that
# are seeded with the same `seed`.
_BALANCE_STREAM = 0xBA1A


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a 1-D integer array, got shape {labels.shape} and '
                     f'dtype {labels.dtype}.')
  if labels.size == 0:
    raise ValueError('labels is empty: cannot split or balance an empty split.')
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    raise ValueError(f'labels outside [0, {num_classes}): '
                     f'{sorted(set(labels[bad].tolist()))[:10]}.')
  return labels


def stratified_split(labels: np.ndarray, test_fraction: float, *, seed: int,
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`(train_idx, test_idx)`, each ascending; per class, `round(test_fraction * n_c)` go to test.

  Rounding is half-up. Classes are visited in increasing order, all drawing from one
  `RandomState(seed)`.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  labels = _check_labels(labels, num_classes)
  rng = np.random.RandomState(seed)
  test = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    n_test = int(np.floor(test_fraction * len(members) + 0.5))
    test.append(rng.permutation(members)[:n_test])
  test_idx = np.sort(np.concatenate(test))
  train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)  # sorted
  return train_idx, test_idx


class BalancedSampler:
  """Per-epoch orders where each class present appears `examples_per_class` times.

  `examples_per_class=None` oversamples every class up to the largest one (no example is
  dropped); a smaller value also undersamples the frequent classes. Classes with no
  examples cannot be sampled: they get frequency 0 and are listed in `missing_classes`.
  """

  def __init__(self, labels: np.ndarray, num_classes: int, *, seed: int,
               examples_per_class: int | None = None):
    labels = _check_labels(labels, num_classes)
    self.num_classes = num_classes
    self.seed = seed
    self.class_counts = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(self.class_counts)
    self.missing_classes = np.flatnonzero(self.class_counts == 0)
    self.examples_per_class = (int(self.class_counts.max()) if examples_per_class is None
                               else int(examples_per_class))
    if self.examples_per_class <= 0:
      raise ValueError(f'examples_per_class must be positive, got {examples_per_class}.')
    self._members = [np.flatnonzero(labels == c) for c in present]
    self.epoch_size = self.examples_per_class * len(present)

  @property
  def natural_frequencies(self) -> np.ndarray:
    """Each class's share of the split, `float[num_classes]`."""
    return self.class_counts / self.class_counts.sum()

  @property
  def effective_frequencies(self) -> np.ndarray:
    """Each class's share of every balanced epoch (exact, not an estimate)."""
    freq = np.zeros(self.num_classes)
    freq[self.class_counts > 0] = self.examples_per_class / self.epoch_size
    return freq

  @property
  def repeat_factors(self) -> np.ndarray:
    """Mean times one example of each class is seen per epoch (0 for missing classes)."""
    with np.errstate(divide='ignore', invalid='ignore'):
      return np.where(self.class_counts > 0,
                      self.examples_per_class / np.maximum(self.class_counts, 1), 0.0)

  def log_summary(self) -> dict[str, float]:
    """Flat `{name: value}` for a metrics writer."""
    out = {'balance/epoch_size': float(self.epoch_size)}
    for c in range(self.num_classes):
      out[f'balance/natural_freq_{c}'] = float(self.natural_frequencies[c])
      out[f'balance/effective_freq_{c}'] = float(self.effective_frequencies[c])
    return out

  def order(self, epoch: int) -> np.ndarray:
    """`int64[epoch_size]` example indices for `epoch`, shuffled across classes."""
    rng = np.random.default_rng([self.seed, _BALANCE_STREAM, epoch])
    m = self.examples_per_class
    chosen = []
    for members in self._members:  # one iteration per class, not per example
      repeats, extra = divmod(m, len(members))
      chosen.append(np.tile(members, repeats))
      chosen.append(rng.choice(members, size=extra, replace=False))
    return rng.permutation(np.concatenate(chosen)).astype(np.int64)
