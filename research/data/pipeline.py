"""One grain pipeline for training and evaluation.

Element k of the pipeline is global batch k. For data held in host memory, batches are
gathered with one vectorised `np.take(inputs, idx)`, not example by example: a per-example
Python map is several times slower than the models' training steps (the README's Data
section has the measured numbers).

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
- Training batches are made a chunk of several at a time (one gather, one grain element),
  then handed out one by one: grain's per-element bookkeeping is microseconds, the scale
  of a small model's whole train step. The batches do not depend on the chunk size.
The iterator's `get_state()`/`set_state()` is the data position stored in checkpoints.
"""
from __future__ import annotations

import sys
from typing import Any

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

  def rows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Example indices and masks of global batches `first, ..., first + count - 1`, each
    `[count, B]`; evaluation's last batch is padded with example 0 and masked out."""
    size = self._batch_size
    index = np.zeros((count, size), np.int64)
    mask = np.ones((count, size), bool)
    done = 0
    while done < count:  # batches from one epoch at a time
      epoch, position = divmod(first + done, self._batches_per_epoch)
      take = min(self._batches_per_epoch - position, count - done)
      flat = self._order(epoch)[position * size:(position + take) * size]
      index[done:done + take].flat[:len(flat)] = flat
      mask[done:done + take].flat[len(flat):] = False
      done += take
    return index, mask

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    index, mask = self.rows(k, 1)
    return {'index': index[0], 'mask': mask[0]}


class _Gather:
  """Global batches' indices -> this process's rows -> arrays -> preprocessed batches."""

  def __init__(self, split: SplitArrays, preprocess: preprocess_lib.PreprocessFn,
               process_index: int, process_count: int):
    self._split, self._preprocess = split, preprocess
    self._process_index, self._process_count = process_index, process_count

  def batches(self, first_k: int, index_NxB: np.ndarray, mask_NxB: np.ndarray
              ) -> list[dict[str, np.ndarray]]:
    """Global batches `first_k, first_k + 1, ...` -> this process's preprocessed batches,
    from one gather."""
    per_process = index_NxB.shape[1] // self._process_count
    mine = slice(self._process_index * per_process, (self._process_index + 1) * per_process)
    idx_NxP = index_NxB[:, mine]
    inputs = np.take(self._split.inputs, idx_NxP, axis=0)  # [N, P, ...]; faster than [idx]
    labels = np.take(self._split.labels, idx_NxP, axis=0)
    masks = mask_NxB[:, mine]
    return [self._preprocess({'inputs': inputs[j], 'labels': labels[j], 'mask': masks[j]},
                             first_k + j)
            for j in range(len(idx_NxP))]

  def __call__(self, k: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return self.batches(k, batch['index'][None], batch['mask'][None])[0]


class _Chunks(grain.MapDataset):
  """Element c: the list of global batches `c * n, ..., c * n + n - 1`, made together."""

  def __init__(self, indices: BatchIndices, gather: _Gather, batches_per_chunk: int):
    super().__init__()
    self._indices, self._gather, self._n = indices, gather, batches_per_chunk

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'_Chunks({self._indices}, batches_per_chunk={self._n})'

  def __getitem__(self, c):
    if isinstance(c, slice):
      return self.slice(c)
    first = c * self._n
    return self._gather.batches(first, *self._indices.rows(first, self._n))


class _Unchunk(grain.IterDataset):
  """A stream of chunks (lists of batches) -> a stream of batches."""

  def __init__(self, parent: grain.IterDataset, batches_per_chunk: int):
    super().__init__(parent)
    self.batches_per_chunk = batches_per_chunk  # the resolved size, for reports

  def __iter__(self) -> '_UnchunkIterator':
    return _UnchunkIterator(self._parent.__iter__())


class _UnchunkIterator(grain.DatasetIterator):
  """State: the parent's state before the current chunk, and how much of it was taken.

  Not `grain.experimental.FlatMapIterDataset`: its per-element statistics cost ~5 us,
  a quarter of the pipeline's budget for the fastest models.
  """

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._chunk_state = parent.get_state()
    self._chunk: list[Any] = []
    self._taken = 0

  def __next__(self):
    if self._taken == len(self._chunk):
      self._chunk_state = self._parent.get_state()
      self._chunk, self._taken = next(self._parent), 0
    batch = self._chunk[self._taken]
    self._chunk[self._taken] = None  # the consumer holds the only reference
    self._taken += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {'chunk': self._chunk_state, 'taken': self._taken}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['chunk'])
    self._chunk_state, self._chunk, self._taken = state['chunk'], [], 0
    if state['taken']:  # remake the current chunk and skip what was already taken
      self._chunk, self._taken = next(self._parent), state['taken']

  def __str__(self) -> str:
    return '_UnchunkIterator'


_NO_PREPROCESSING = preprocess_lib.make_preprocess('', seed=0)  # only the final dtype step


def _check_divisible(batch_size: int, process_count: int) -> None:
  if batch_size % process_count:
    raise ValueError(f'Global batch size {batch_size} is not divisible by the number of '
                     f'processes ({process_count}).')


_CHUNK_BYTES = 4 << 20  # raw input bytes gathered per read when `batches_per_chunk=0`
_MAX_BATCHES_PER_CHUNK = 16


def auto_batches_per_chunk(split: SplitArrays, local_batch_size: int) -> int:
  """As many batches as fit in `_CHUNK_BYTES` of raw inputs, between 1 and 16."""
  batch_bytes = max(1, split.inputs[:1].nbytes * local_batch_size)
  return int(np.clip(_CHUNK_BYTES // batch_bytes, 1, _MAX_BATCHES_PER_CHUNK))


def train_dataset(split: SplitArrays, batch_size: int, *, seed: int, shuffle: bool = True,
                  process_index: int = 0, process_count: int = 1,
                  preprocess: preprocess_lib.PreprocessFn = _NO_PREPROCESSING,
                  sampler: balance.BalancedSampler | None = None,
                  prefetch_threads: int = 0, batches_per_chunk: int = 0) -> grain.IterDataset:
  """Endless training batches of this process's share of `batch_size` (the global batch).

  Batches are made `batches_per_chunk` at a time (0: `auto_batches_per_chunk`): one
  gather and one grain element per chunk, then handed out one by one. The batches are
  the same whatever the chunk size; the returned dataset's `batches_per_chunk` is the size
  used.
  `prefetch_threads=0` makes chunks on the training thread: handing an element over
  from a prefetch thread costs ~150 us, which chunks amortise. Use threads for heavy
  augmentation.
  """
  _check_divisible(batch_size, process_count)
  if batches_per_chunk < 0:
    raise ValueError(f'batches_per_chunk={batches_per_chunk}: use 0 (auto) or a positive '
                     f'number of batches.')
  indices = BatchIndices(len(split), batch_size, seed=seed, shuffle=shuffle, train=True,
                         sampler=sampler)
  n = batches_per_chunk or auto_batches_per_chunk(split, batch_size // process_count)
  chunks = _Chunks(indices, _Gather(split, preprocess, process_index, process_count), n)
  ds = chunks.to_iter_dataset(grain.ReadOptions(
      num_threads=prefetch_threads, prefetch_buffer_size=2 * prefetch_threads))
  return _Unchunk(ds, n)


def eval_dataset(split: SplitArrays, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1,
                 preprocess: preprocess_lib.PreprocessFn = _NO_PREPROCESSING
                 ) -> grain.MapDataset:
  """One ordered pass; the last batch is padded and its padding has `mask == False`."""
  _check_divisible(batch_size, process_count)
  ds = BatchIndices(len(split), batch_size, seed=0, shuffle=False, train=False)
  return ds.map_with_index(_Gather(split, preprocess, process_index, process_count))
