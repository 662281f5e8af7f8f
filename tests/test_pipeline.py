"""The grain pipeline: exact restore of the data position, disjoint per-process reads."""
import numpy as np
import pytest

from research.data import pipeline
from research.data import preprocess as preprocess_lib
from research.data.sources import SplitArrays


def _split(n=1000):
  inputs = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  return SplitArrays(inputs=inputs, labels=(np.arange(n) % 10).astype(np.int32))


def _assert_same_batches(want, got):
  assert len(want) == len(got)
  for w, g in zip(want, got):
    assert w.keys() == g.keys()
    for key in w:
      np.testing.assert_array_equal(w[key], g[key])


@pytest.mark.parametrize('batches_per_chunk', [0, 1, 4])
@pytest.mark.parametrize('stop_after', [16, 17])
def test_restored_iterator_yields_the_batches_that_would_have_come_next(batches_per_chunk,
                                                                       stop_after):
  split = _split()
  make = lambda: iter(pipeline.train_dataset(split, 64, seed=3,  # noqa: E731
                                             batches_per_chunk=batches_per_chunk))
  it = make()
  for _ in range(stop_after):  # stop mid-epoch (15 batches per epoch), on or inside a chunk...
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(10)]  # ...crossing into the next epoch
  fresh = make()  # a rebuilt pipeline
  fresh.set_state(state)
  _assert_same_batches(expected, [next(fresh) for _ in range(10)])


def test_batches_do_not_depend_on_the_chunk_size():
  """Chunking is a speed knob: the same batches, augmentation and process slices."""
  images = SplitArrays(
      inputs=np.random.default_rng(0).integers(0, 256, (300, 6, 6, 1)).astype(np.uint8),
      labels=(np.arange(300) % 10).astype(np.int32))
  augment = preprocess_lib.make_preprocess('random_crop(pad=1)|flip', seed=5)
  for process_index in range(2):
    streams = []
    for batches_per_chunk in (1, 3, 16):
      it = iter(pipeline.train_dataset(images, 32, seed=1, preprocess=augment,
                                       process_index=process_index, process_count=2,
                                       batches_per_chunk=batches_per_chunk))
      streams.append([next(it) for _ in range(40)])  # 4+ epochs of 9 batches
    _assert_same_batches(streams[0], streams[1])
    _assert_same_batches(streams[0], streams[2])
  assert streams[0][0]['inputs'].dtype == np.uint8


def test_chunk_size_is_automatic_and_bounded():
  assert pipeline.auto_batches_per_chunk(_split(), 64) == 16  # 768-byte batches: the cap
  big = SplitArrays(np.zeros((4, 512, 512, 3), np.uint8), np.zeros(4, np.int32))
  assert pipeline.auto_batches_per_chunk(big, 64) == 1  # 48 MB batches: one at a time
  with pytest.raises(ValueError, match='batches_per_chunk=-1'):
    pipeline.train_dataset(_split(), 64, seed=0, batches_per_chunk=-1)


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
