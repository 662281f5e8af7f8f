"""One grain pipeline for training and evaluation.

Element k of the pipeline is global batch k. For data held in host memory, a batch is
gathered with one vectorised index (`inputs[idx]`), not example by example: a per-example
Python map is several times slower than the models' training steps (DESIGN.md).

- Training: an endless stream; epoch e uses the permutation `default_rng([seed, e])`, so
  shuffling differs per epoch and is a function of the seed. The incomplete last batch of
  an epoch is dropped.
- Evaluation: one pass in order; the last batch is padded and `mask` marks real examples,
  so every example counts exactly once.
- Multi-host: every process computes the same global batch indices and keeps only its
  contiguous slice (`process_index`), so processes read disjoint data.
- Class balance (optional): a `balance.BalancedSampler` replaces the permutation; epoch e
  is `sampler.order(e)`, where every class appears equally often.
- Preprocessing (`research.data.preprocess`) is called as `preprocess(batch, k)` with the
  global batch index k, so its random augmentations are a function of (seed, k).
The iterator's `get_state()`/`set_state()` is the data position stored in checkpoints.
"""
from __future__ import annotations

import sys

import grain
import numpy as np

from research.data import balance
from research.data import preprocess as preprocess_lib
from research.data.sources import SplitArrays


class BatchIndices(grain.MapDataset):
  """Element k: `{'index': int64[B], 'mask': bool[B]}` for global batch k."""

  def __init__(self, num_examples: int, batch_size: int, *, seed: int, shuffle: bool,
               train: bool, sampler: balance.BalancedSampler | None = None):
    super().__init__()
    if sampler is not None:
      if not train:
        raise ValueError('Class-balanced sampling is for training only.')
      num_examples = sampler.epoch_size  # an epoch is the balanced order's length
    if num_examples == 0:
      raise ValueError('Cannot build batches from an empty split.')
    if train and num_examples < batch_size:
      raise ValueError(f'Training batch size {batch_size} is larger than the split '
                       f'({num_examples} examples).')
    self._n = num_examples
    self._batch_size = batch_size
    self._seed = seed
    self._shuffle = shuffle
    self._train = train
    self._sampler = sampler
    self._batches_per_epoch = (num_examples // batch_size if train
                               else -(-num_examples // batch_size))
    self._cached_epoch: tuple[int, np.ndarray] | None = None

  @property
  def batches_per_epoch(self) -> int:
    return self._batches_per_epoch

  def __len__(self) -> int:
    return sys.maxsize if self._train else self._batches_per_epoch

  def __str__(self) -> str:
    return (f'BatchIndices(n={self._n}, batch_size={self._batch_size}, '
            f'shuffle={self._shuffle}, train={self._train})')

  def _order(self, epoch: int) -> np.ndarray:
    cached = self._cached_epoch
    if cached is not None and cached[0] == epoch:
      return cached[1]
    if self._sampler is not None:
      order = self._sampler.order(epoch)  # already shuffled, a function of (seed, epoch)
    elif self._shuffle:
      order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
    else:
      order = np.arange(self._n)
    self._cached_epoch = (epoch, order)
    return order

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    epoch, position = divmod(k, self._batches_per_epoch)
    order = self._order(epoch)
    index = order[position * self._batch_size:(position + 1) * self._batch_size]
    mask = np.ones(self._batch_size, dtype=bool)
    if len(index) < self._batch_size:  # eval only: pad with example 0, masked out
      mask[len(index):] = False
      index = np.concatenate([index, np.zeros(self._batch_size - len(index), index.dtype)])
    return {'index': index, 'mask': mask}


class _Gather:
  """Global batch k's indices -> this process's slice -> arrays -> preprocessing.

  One grain map per batch (not three): each layer costs tens of microseconds, which is
  the scale of a small model's whole train step.
  """

  def __init__(self, split: SplitArrays, preprocess: preprocess_lib.PreprocessFn,
               process_index: int, process_count: int):
    self._split, self._preprocess = split, preprocess
    self._process_index, self._process_count = process_index, process_count

  def __call__(self, k: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    per_process = len(batch['index']) // self._process_count
    mine = slice(self._process_index * per_process, (self._process_index + 1) * per_process)
    idx = batch['index'][mine]
    gathered = {
        'inputs': self._split.inputs[idx],
        'labels': self._split.labels[idx],
        'mask': batch['mask'][mine],
    }
    return self._preprocess(gathered, k)


def default_preprocess(inputs: np.ndarray) -> np.ndarray:
  """uint8 images to [0, 1] floats; everything else to float32 (the empty spec's result)."""
  if inputs.dtype == np.uint8:
    return inputs.astype(np.float32) / 255.0
  return inputs.astype(np.float32, copy=False)


_NO_PREPROCESSING = preprocess_lib.make_preprocess('', seed=0)  # only default_preprocess


def _check_divisible(batch_size: int, process_count: int) -> None:
  if batch_size % process_count:
    raise ValueError(f'Global batch size {batch_size} is not divisible by the number of '
                     f'processes ({process_count}).')


def train_dataset(split: SplitArrays, batch_size: int, *, seed: int, shuffle: bool = True,
                  process_index: int = 0, process_count: int = 1,
                  preprocess: preprocess_lib.PreprocessFn = _NO_PREPROCESSING,
                  sampler: balance.BalancedSampler | None = None,
                  prefetch_threads: int = 0) -> grain.IterDataset:
  """Endless training batches of this process's share of `batch_size` (the global batch).

  `prefetch_threads=0` makes batches on the training thread: an in-memory gather takes
  ~30 us, while handing batches over from a prefetch thread costs ~150 us each (measured
  with `python -m research.data.bench`). Use threads for heavy augmentation.
  """
  _check_divisible(batch_size, process_count)
  ds = BatchIndices(len(split), batch_size, seed=seed, shuffle=shuffle, train=True,
                    sampler=sampler)
  ds = ds.map_with_index(_Gather(split, preprocess, process_index, process_count))
  return ds.to_iter_dataset(grain.ReadOptions(
      num_threads=prefetch_threads, prefetch_buffer_size=2 * prefetch_threads))


def eval_dataset(split: SplitArrays, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1,
                 preprocess: preprocess_lib.PreprocessFn = _NO_PREPROCESSING
                 ) -> grain.MapDataset:
  """One ordered pass; the last batch is padded and its padding has `mask == False`."""
  _check_divisible(batch_size, process_count)
  ds = BatchIndices(len(split), batch_size, seed=0, shuffle=False, train=False)
  return ds.map_with_index(_Gather(split, preprocess, process_index, process_count))
