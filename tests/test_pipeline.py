"""The grain pipeline: exact restore of the data position, disjoint per-process reads."""
import numpy as np
import pytest

from research.data import pipeline
from research.data.sources import SplitArrays


def _split(n=1000):
  inputs = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  return SplitArrays(inputs=inputs, labels=(np.arange(n) % 10).astype(np.int32))


def test_restored_iterator_yields_the_batches_that_would_have_come_next():
  split = _split()
  it = iter(pipeline.train_dataset(split, 64, seed=3))
  for _ in range(17):  # stop mid-epoch (15 batches per epoch)...
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(10)]  # ...crossing into the next epoch
  fresh = iter(pipeline.train_dataset(split, 64, seed=3))  # a rebuilt pipeline
  fresh.set_state(state)
  for want, got in zip(expected, (next(fresh) for _ in range(10))):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_shuffling_differs_per_epoch_and_follows_the_seed():
  split = _split(640)
  epoch = lambda seed, e: np.concatenate(
      [b['labels'] for b in pipeline.BatchIndices(640, 64, seed=seed, shuffle=True, train=True)
       [e * 10:(e + 1) * 10]])
  order = lambda seed, e: np.concatenate(
      [pipeline.BatchIndices(640, 64, seed=seed, shuffle=True, train=True)[k]['index']
       for k in range(e * 10, (e + 1) * 10)])
  assert sorted(order(0, 0)) == list(range(640))  # an epoch is a permutation
  assert not np.array_equal(order(0, 0), order(0, 1))
  assert np.array_equal(order(0, 1), order(0, 1))
  assert not np.array_equal(order(0, 0), order(1, 0))
  del epoch


@pytest.mark.parametrize('num_processes', [2, 4])
def test_processes_read_disjoint_slices_covering_the_epoch(num_processes):
  """What each of N processes reads in one epoch: no overlap, union = the split."""
  n, batch = 1024, 128
  split = _split(n)
  seen = []
  for p in range(num_processes):
    it = iter(pipeline.train_dataset(split, batch, seed=0, process_index=p,
                                     process_count=num_processes))
    rows = np.concatenate([next(it)['inputs'][:, 0] for _ in range(n // batch)])
    assert len(rows) == n // num_processes
    seen.append(rows.astype(int))
  union = np.concatenate(seen)
  assert len(union) == len(set(union)) == n


def test_eval_pads_the_last_batch_and_masks_it():
  batches = list(pipeline.eval_dataset(_split(1000), 128))
  assert len(batches) == 8
  assert sum(int(b['mask'].sum()) for b in batches) == 1000
  real = np.concatenate([b['inputs'][b['mask'], 0] for b in batches]).astype(int)
  assert list(real) == list(range(1000))
  assert batches[-1]['inputs'].shape[0] == 128  # padded to a full batch


def test_eval_with_two_processes_counts_every_example_once():
  real = []
  for p in range(2):
    for b in pipeline.eval_dataset(_split(1000), 128, process_index=p, process_count=2):
      real.extend(b['inputs'][b['mask'], 0].astype(int))
  assert sorted(real) == list(range(1000))


def test_batch_larger_than_split_fails_clearly():
  with pytest.raises(ValueError, match='larger than the split'):
    pipeline.train_dataset(_split(10), 64, seed=0)
