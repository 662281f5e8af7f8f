"""Preprocessing ops, tokenizers and class-balanced sampling, on small synthetic data."""
from __future__ import annotations

import os
import pickle

import jax
import numpy as np
import pytest

from research import models
from research.models import layers
from research.data import balance, pipeline, preprocess, tokenizers
from research.data.sources import SplitArrays


def images(n=64, size=8, channels=1, seed=0) -> SplitArrays:
  rng = np.random.default_rng(seed)
  x = rng.integers(1, 256, (n, size, size, channels)).astype(np.uint8)  # no zeros: padding shows
  return SplitArrays(inputs=x, labels=rng.integers(0, 10, n).astype(np.int32))


def batch_of(split: SplitArrays, n=None) -> dict[str, np.ndarray]:
  n = len(split) if n is None else n
  return {'inputs': split.inputs[:n], 'labels': split.labels[:n], 'mask': np.ones(n, bool)}


# ---- Spec parsing and errors ----

def test_spec_parsing():
  assert preprocess.parse_spec('') == []
  assert preprocess.parse_spec(' scale | random_crop(pad=2, mode=reflect) |flip(p=0.25)') == [
      ('scale', {}), ('random_crop', {'pad': 2, 'mode': 'reflect'}), ('flip', {'p': 0.25})]
  assert preprocess.parse_spec(['normalize(per="channel")']) == [
      ('standardize', {'per': 'channel'})]
  assert preprocess.parse_spec('random_crop(size=(6, 6))') == [
      ('random_crop', {'size': (6, 6)})]


@pytest.mark.parametrize('spec, message', [
    ('scale|normalise', r"Unknown preprocessing op 'normalise'.*available: \['flip', "
                        r".*'tokenize_wordpiece'\]. Did you mean 'normalize'\?"),
    ('flip(0.5)', r'use keyword arguments, e.g. flip\(p=...\)'),
    ('flip(prob=0.5)', r"no argument\(s\) \['prob'\]; accepted: \['p'\]"),
    ('random_crop(pad=2', 'Cannot parse'),
    ('standardize(per=pixel)', r"available: \['global', 'channel', 'feature'\]"),
    ('random_crop(mode=mirror)', r"Unknown pad mode 'mirror'"),
    ('random_crop(pad=two)', r"random_crop\(pad='two'\): expected int, like the default pad=4"),
])
def test_bad_specs_fail_with_the_valid_choices(spec, message):
  with pytest.raises(ValueError, match=message):
    preprocess.build_preprocess(spec, images(), seed=0)


def test_which_specs_need_the_training_split():
  assert not preprocess.needs_train_split('random_crop(pad=2)|flip|one_hot|tokenize_bytes')
  assert preprocess.needs_train_split('flip|standardize')
  assert preprocess.needs_train_split('tokenize_spm(vocab_size=100)')
  assert not preprocess.needs_train_split("tokenize_spm(model='/tmp/a.model')")
  with pytest.raises(ValueError, match='pass train_split'):
    preprocess.build_preprocess('standardize', None, seed=0)


def test_describe_lists_every_op():
  text = preprocess.describe_ops()
  for name in [*preprocess.OPS, *preprocess.ALIASES]:
    assert f'\n{name}' in f'\n{text}'


# ---- Deterministic ops ----

def test_empty_spec_keeps_uint8_and_makes_floats_float32():
  split = images()
  out = preprocess.make_preprocess('', seed=0)(batch_of(split), 0)['inputs']
  assert out.dtype == np.uint8  # shipped as bytes; scaled in the compiled step
  np.testing.assert_array_equal(out, split.inputs)
  floats = SplitArrays(np.random.default_rng(0).normal(size=(16, 40)), np.zeros(16, np.int32))
  out = preprocess.make_preprocess('', seed=0)(batch_of(floats), 0)['inputs']
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, floats.inputs.astype(np.float32))


def test_models_scale_uint8_images_to_unit_floats():
  x = np.arange(256, dtype=np.uint8).reshape(16, 4, 4, 1)
  scaled = np.asarray(jax.jit(layers.pixels_to_unit)(x))
  assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
  np.testing.assert_allclose(scaled, x / np.float32(255), rtol=2e-7)  # XLA: x * (1/255)
  floats = np.linspace(-1, 1, 8, dtype=np.float32)
  assert jax.jit(layers.pixels_to_unit)(floats).dtype == np.float32
  np.testing.assert_array_equal(jax.jit(layers.pixels_to_unit)(floats), floats)
  # Every image model applies it: uint8 pixels and their [0, 1] floats give one output.
  # Jitted init and apply: one compile each instead of one per primitive (eager mode).
  vit = models.model_config('transformer', frontend='image', patch_size=2, num_layers=1,
                            hidden_size=16, num_heads=2)
  for model_cfg in (models.model_config('logistic'), models.model_config('mlp'),
                    models.model_config('cnn'), vit):
    model = models.build_model(model_cfg, 10)
    params = jax.jit(model.init)(jax.random.key(0), scaled)
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(params, x), apply(params, scaled), rtol=1e-5, atol=1e-6)


def test_scale():
  split = images()
  out = preprocess.make_preprocess('scale', split, seed=0)(batch_of(split), 0)['inputs']
  np.testing.assert_allclose(out, split.inputs / 255.0, rtol=1e-6)
  floats = SplitArrays(np.linspace(-3.0, 5.0, 80).reshape(8, 10), np.zeros(8, np.int32))
  out = preprocess.make_preprocess('scale', floats, seed=0)(batch_of(floats), 0)['inputs']
  assert out.min() == 0.0 and out.max() == 1.0 and out.dtype == np.float32


@pytest.mark.parametrize('per, axes', [('global', None), ('channel', (0, 1, 2)),
                                       ('feature', 0)])
def test_standardize_uses_training_statistics(per, axes):
  split = images(n=300, channels=3)
  pp = preprocess.build_preprocess(f'standardize(per={per})', split, seed=0)
  out = pp.eval_fn(batch_of(split), 0)['inputs']
  assert out.dtype == np.float32 and out.shape == split.inputs.shape
  np.testing.assert_allclose(out.mean(axis=axes), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std(axis=axes), 1.0, atol=1e-4)
  # The statistics are the training split's: a different batch is not re-centred.
  other = images(n=10, channels=3, seed=1)
  expected = ((other.inputs - split.inputs.mean(axis=axes, keepdims=axes is not None))
              / split.inputs.std(axis=axes, keepdims=axes is not None))
  np.testing.assert_allclose(pp.eval_fn(batch_of(other), 0)['inputs'], expected, rtol=1e-4,
                             atol=1e-4)


def test_statistics_see_the_preceding_ops():
  split = images(n=200)
  direct = preprocess.make_preprocess('standardize', split, seed=0)(batch_of(split), 0)
  after_scale = preprocess.build_preprocess('scale|standardize', split, seed=0)
  np.testing.assert_allclose(after_scale.eval_fn(batch_of(split), 0)['inputs'],
                             direct['inputs'], atol=1e-5)
  mean = after_scale.summary()['1_standardize/mean']
  assert mean == pytest.approx(split.inputs.mean() / 255.0, rel=1e-5)


def test_constant_feature_is_centred_not_blown_up():
  x = np.zeros((10, 4), np.float32)
  x[:, 1] = np.arange(10)
  split = SplitArrays(x, np.zeros(10, np.int32))
  out = preprocess.make_preprocess('standardize(per=feature)', split, seed=0)(batch_of(split), 0)
  assert np.isfinite(out['inputs']).all() and (out['inputs'][:, 0] == 0).all()


def test_one_hot():
  split = images()
  out = preprocess.make_preprocess('one_hot', split, seed=0, num_classes=10)(batch_of(split), 0)
  assert out['targets'].shape == (64, 10) and out['targets'].dtype == np.float32
  np.testing.assert_array_equal(out['targets'].argmax(-1), split.labels)
  np.testing.assert_array_equal(out['labels'], split.labels)  # integer labels stay
  smooth = preprocess.make_preprocess('one_hot(smoothing=0.1)', split, seed=0,
                                      num_classes=10)(batch_of(split), 0)['targets']
  np.testing.assert_allclose(smooth.sum(-1), 1.0, rtol=1e-6)
  assert smooth.max() == pytest.approx(0.91) and smooth.min() == pytest.approx(0.01)


# ---- Random ops ----

def _exists_crop(padded: np.ndarray, crop: np.ndarray) -> bool:
  h, w = crop.shape[:2]
  return any(np.array_equal(padded[i:i + h, j:j + w], crop)
             for i in range(padded.shape[0] - h + 1) for j in range(padded.shape[1] - w + 1))


def test_random_crop_is_a_crop_of_the_padded_image():
  split = images(n=16)
  out = preprocess.make_preprocess('random_crop(pad=2)', seed=0)(batch_of(split), 7)['inputs']
  raw = preprocess.make_preprocess('random_crop(pad=2)|to_float', seed=0)(batch_of(split), 7)
  assert out.shape == (16, 8, 8, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, raw['inputs'])
  padded = np.pad(split.inputs, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for k in range(16):
    assert _exists_crop(padded[k], raw['inputs'][k].astype(np.uint8))
  # Some examples really moved (padding zeros show up), and the result differs from input.
  assert (raw['inputs'] == 0).any() and not np.array_equal(raw['inputs'], split.inputs)


def test_random_crop_to_a_smaller_size_centre_crops_in_evaluation():
  split = images(n=4)
  pp = preprocess.build_preprocess('random_crop(pad=0, size=6)|to_float', seed=0)
  assert pp.train_fn(batch_of(split), 0)['inputs'].shape == (4, 6, 6, 1)
  np.testing.assert_array_equal(pp.eval_fn(batch_of(split), 0)['inputs'],
                                split.inputs[:, 1:7, 1:7])


def test_flip_actually_flips():
  split = images(n=32)
  always = preprocess.make_preprocess('flip(p=1.0)|to_float', seed=0)(batch_of(split), 0)
  np.testing.assert_array_equal(always['inputs'], split.inputs[:, :, ::-1])
  never = preprocess.make_preprocess('flip(p=0.0)|to_float', seed=0)(batch_of(split), 0)
  np.testing.assert_array_equal(never['inputs'], split.inputs)
  half = preprocess.make_preprocess('flip|to_float', seed=0)(batch_of(split), 0)['inputs']
  flipped = [np.array_equal(h, x[:, ::-1]) for h, x in zip(half, split.inputs)]
  kept = [np.array_equal(h, x) for h, x in zip(half, split.inputs)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < 32


def test_random_shift_on_sequences():
  x = np.arange(1, 41, dtype=np.float32)[None].repeat(20, 0)  # MNIST-1D-like [B, 40]
  split = SplitArrays(x, np.zeros(20, np.int32))
  out = preprocess.make_preprocess('random_shift(max=3)', seed=0)(batch_of(split), 5)['inputs']
  assert out.shape == (20, 40)
  shifts = set()
  for row in out:  # each row is the input moved by s in [-3, 3], zero-filled
    s = next(s for s in range(-3, 4) if np.array_equal(row, np.roll(
        np.pad(x[0], 3), s)[3:43]))
    shifts.add(s)
  assert len(shifts) > 1
  wrapped = preprocess.make_preprocess('random_shift(max=3, mode=wrap)', seed=0)(
      batch_of(split), 5)['inputs']
  np.testing.assert_array_equal(np.sort(wrapped, axis=1), x)  # nothing lost


@pytest.mark.parametrize('spec', ['random_crop(pad=2)', 'flip', 'random_shift(max=2)'])
def test_random_ops_are_deterministic_per_seed_and_batch_index(spec):
  split = images(n=32)
  fn = preprocess.make_preprocess(spec, seed=3)
  a, again = fn(batch_of(split), 10)['inputs'], fn(batch_of(split), 10)['inputs']
  np.testing.assert_array_equal(a, again)
  np.testing.assert_array_equal(
      a, preprocess.make_preprocess(spec, seed=3)(batch_of(split), 10)['inputs'])
  assert not np.array_equal(a, fn(batch_of(split), 11)['inputs'])
  assert not np.array_equal(a, preprocess.make_preprocess(spec, seed=4)(batch_of(split), 10)[
      'inputs'])
  # Evaluation never augments.
  pp = preprocess.build_preprocess(spec, seed=3)
  np.testing.assert_array_equal(pp.eval_fn(batch_of(split), 10)['inputs'], split.inputs)


def test_augmentation_does_not_depend_on_the_number_of_processes():
  split = images(n=32)
  spec = 'random_crop(pad=2)|flip|random_shift(max=1)'
  whole = preprocess.make_preprocess(spec, seed=0)(batch_of(split), 4)['inputs']
  halves = []
  for index in range(2):
    fn = preprocess.make_preprocess(spec, seed=0, process_index=index, process_count=2)
    local = {k: v[index * 16:(index + 1) * 16] for k, v in batch_of(split).items()}
    halves.append(fn(local, 4)['inputs'])
  np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_image_ops_reject_text_and_text_needs_a_tokenizer():
  texts = {'inputs': np.array([b'a', b'bc']), 'labels': np.zeros(2, np.int32)}
  with pytest.raises(ValueError, match='needs numeric inputs'):
    preprocess.make_preprocess('flip', seed=0)(texts, 0)
  with pytest.raises(ValueError, match=r'add a tokenizer op.*tokenize_bytes'):
    preprocess.make_preprocess('', seed=0)(texts, 0)
  with pytest.raises(ValueError, match='standardize needs numeric inputs'):
    preprocess.build_preprocess('standardize', SplitArrays(texts['inputs'], texts['labels']),
                                seed=0)


# ---- Tokenizers ----

def test_byte_tokenizer_round_trip_and_mask():
  tok = tokenizers.ByteTokenizer()
  texts = ['héllo wörld', b'ab\x00c', '', 'x' * 50]
  ids, mask = tok.encode(texts, 12)
  assert ids.shape == mask.shape == (4, 12) and ids.dtype == np.int32 and mask.dtype == bool
  assert tok.vocab_size == 260 and ids.max() < 260
  np.testing.assert_array_equal(mask.sum(1), [12, 4, 0, 12])  # 'héllo wörld' is 13 bytes
  assert (ids[~mask] == tokenizers.PAD_ID).all() and (ids[mask] >= 4).all()
  assert tok.decode_bytes(ids) == ['héllo wörld'.encode()[:12], b'ab\x00c', b'', b'x' * 12]
  assert tok.decode(tok.encode(['héllo'], 16)[0]) == ['héllo']
  # Every input form gives the same ids.
  for form in (np.array([t.encode() for t in ['ab', 'c']]), np.array(['ab', 'c']),
               np.array([b'ab', 'c'], dtype=object)):
    np.testing.assert_array_equal(tok.encode(form, 4)[0], [[101, 102, 0, 0], [103, 0, 0, 0]])


def test_byte_tokenizer_cls():
  ids, mask = tokenizers.ByteTokenizer().encode([b'abc'], 3, add_cls=True)
  np.testing.assert_array_equal(ids, [[tokenizers.CLS_ID, 101, 102]])
  assert mask.all()
  with pytest.raises(ValueError, match='max_len must be at least 2'):
    tokenizers.ByteTokenizer().encode([b'abc'], 1, add_cls=True)


CORPUS = [f'the {a} {n} jumps over the {b} dog'
          for a in ('quick', 'slow', 'brown', 'red') for b in ('lazy', 'sleepy', 'old')
          for n in ('fox', 'cat', 'hare', 'wolf', 'bird')]


def test_sentencepiece_trains_encodes_and_round_trips(tmp_path):
  tok = tokenizers.SentencePieceTokenizer.train(CORPUS, vocab_size=60, seed=0)
  assert 10 < tok.vocab_size <= 60
  ids, mask = tok.encode(['the quick fox jumps', 'dog', ''], 8, add_cls=True)
  assert ids.shape == (3, 8) and ids.dtype == np.int32
  assert (ids[:, 0] == tokenizers.CLS_ID).all() and mask[:, 0].all()
  assert (ids[~mask] == tokenizers.PAD_ID).all()
  assert mask[2].sum() == 1  # only [CLS]
  assert tok.decode(tok.encode(['the slow cat jumps over the old dog'], 64)[0]) == [
      'the slow cat jumps over the old dog']
  # Saved and loaded: the same model; training is deterministic.
  path = str(tmp_path / 'spm.model')
  tok.save(path)
  np.testing.assert_array_equal(tokenizers.SentencePieceTokenizer.load(path).encode(CORPUS, 16)[0],
                                tok.encode(CORPUS, 16)[0])
  assert tokenizers.SentencePieceTokenizer.train(CORPUS, 60, seed=0).model_proto == tok.model_proto


def test_tokenize_spm_op_trains_once_and_reuses_the_file(tmp_path):
  split = SplitArrays(np.array([t.encode() for t in CORPUS], dtype=object),
                      np.zeros(len(CORPUS), np.int32))
  spec = 'tokenize_spm(vocab_size=60, max_len=10, cls=True)'
  pp = preprocess.build_preprocess(spec, split, seed=0, cache_dir=str(tmp_path))
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith('sentencepiece_v60_')
  out = pp.train_fn(batch_of(split, 5), 0)
  assert out['inputs'].shape == (5, 10) and out['inputs'].dtype == np.int32
  assert out['input_mask'].dtype == bool and (out['inputs'][:, 0] == tokenizers.CLS_ID).all()
  assert pp.vocab_size <= 60 and out['inputs'].max() < pp.vocab_size
  mtime = os.path.getmtime(tmp_path / files[0])
  again = preprocess.build_preprocess(spec, split, seed=0, cache_dir=str(tmp_path))
  assert os.path.getmtime(tmp_path / files[0]) == mtime
  np.testing.assert_array_equal(again.eval_fn(batch_of(split, 5), 0)['inputs'], out['inputs'])
  # Picklable, for pipelines that run preprocessing in worker processes.
  restored = pickle.loads(pickle.dumps(pp.train_fn))
  np.testing.assert_array_equal(restored(batch_of(split, 5), 0)['inputs'], out['inputs'])


def test_tokenize_bytes_op():
  split = SplitArrays(np.array(['ab', 'cde']), np.zeros(2, np.int32))
  pp = preprocess.build_preprocess('tokenize_bytes(max_len=4, cls=True)', split, seed=0)
  out = pp.eval_fn(batch_of(split), 0)
  np.testing.assert_array_equal(out['inputs'], [[1, 101, 102, 0], [1, 103, 104, 105]])
  np.testing.assert_array_equal(out['input_mask'], [[1, 1, 1, 0], [1, 1, 1, 1]])
  assert pp.vocab_size == 260


# ---- Class balance ----

def test_stratified_split():
  labels = np.repeat(np.arange(3), [50, 30, 7])
  train, test = balance.stratified_split(labels, 0.2, seed=0)
  assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 87
  assert np.bincount(labels[test]).tolist() == [10, 6, 1]  # round(7 * 0.2) = 1
  assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()
  again = balance.stratified_split(labels, 0.2, seed=0)
  np.testing.assert_array_equal(again[1], test)
  assert not np.array_equal(balance.stratified_split(labels, 0.2, seed=1)[1], test)


def test_balanced_sampler_oversamples_rare_classes_exactly():
  labels = np.repeat(np.arange(4), [100, 10, 3, 0])  # class 3 absent
  sampler = balance.BalancedSampler(labels, 4, seed=0)
  order = sampler.order(0)
  assert order.dtype == np.int64 and len(order) == sampler.epoch_size == 300
  assert np.bincount(labels[order], minlength=4).tolist() == [100, 100, 100, 0]
  per_example = np.bincount(order, minlength=len(labels))
  assert (per_example[:100] == 1).all()  # the largest class: each example once
  assert (per_example[100:110] == 10).all()  # 10 examples x 10
  assert sorted(per_example[110:113].tolist()) == [33, 33, 34]  # 100 = 3 x 33 + 1
  np.testing.assert_allclose(sampler.effective_frequencies, [1 / 3, 1 / 3, 1 / 3, 0])
  np.testing.assert_allclose(sampler.natural_frequencies, [100 / 113, 10 / 113, 3 / 113, 0])
  np.testing.assert_allclose(sampler.repeat_factors, [1, 10, 100 / 3, 0])
  assert sampler.missing_classes.tolist() == [3]
  summary = sampler.log_summary()
  assert summary['balance/effective_freq_1'] == pytest.approx(1 / 3)
  # A function of (seed, epoch): reproducible, and a different shuffle every epoch.
  np.testing.assert_array_equal(balance.BalancedSampler(labels, 4, seed=0).order(0), order)
  assert not np.array_equal(sampler.order(1), order)
  assert not np.array_equal(balance.BalancedSampler(labels, 4, seed=1).order(0), order)


def test_balanced_sampler_can_also_undersample():
  labels = np.repeat(np.arange(2), [100, 10])
  sampler = balance.BalancedSampler(labels, 2, seed=0, examples_per_class=20)
  order = sampler.order(3)
  assert np.bincount(labels[order]).tolist() == [20, 20]
  assert len(np.unique(order[labels[order] == 0])) == 20  # no repeats when undersampling


def test_balance_rejects_bad_labels():
  with pytest.raises(ValueError, match=r'labels outside \[0, 2\): \[2\]'):
    balance.BalancedSampler(np.array([0, 1, 2]), 2, seed=0)
  with pytest.raises(ValueError, match='empty'):
    balance.BalancedSampler(np.array([], np.int32), 2, seed=0)
