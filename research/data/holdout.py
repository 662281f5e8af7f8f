"""A validation split carved out of the training split, for choosing hyperparameters.

Many datasets ship only train and test (20 Newsgroups, Reuters), and their training split
is often stored sorted by class, so a slice such as 'train[90%:]' is not a sample of it.
`config.dataset.validation_fraction = f` holds out a stratified random fraction `f` of
every class of the training split: the run trains on the rest and can evaluate the
held-out part as split 'validation'. The draw depends only on the labels and a fixed
seed, not on `config.seed`, so every seed and every config of a study sees the same split.
"""
from __future__ import annotations

import numpy as np

from research.errors import ConfigError

SPLIT = 'validation'
_SEED = 20190127  # fixed: the held-out examples must not change with config.seed


def check_fraction(fraction: float) -> None:
  if not 0 <= fraction < 1:
    raise ConfigError(f'config.dataset.validation_fraction must be in [0, 1), got {fraction!r}.')


def stratified_holdout(labels_N: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held_out): sorted index arrays; round(fraction * n_c) of each class c held out.

  Float labels (regression) are one stratum.
  """
  check_fraction(fraction)
  rng = np.random.default_rng(_SEED)
  strata = labels_N if labels_N.dtype.kind in 'iub' else np.zeros(len(labels_N), np.int32)
  held = []
  for c in np.unique(strata):  # ascending: the draw does not depend on the storage order
    members = np.flatnonzero(strata == c)
    held.append(rng.permutation(members)[:int(round(fraction * len(members)))])
  held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  kept = np.setdiff1d(np.arange(len(labels_N)), held_out)
  return kept, held_out
