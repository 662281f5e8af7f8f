"""research.metrics against scikit-learn and small numpy references."""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from research.evaluation import metrics

K = 12
ABSENT = (10, 11)  # classes that occur in neither the labels nor the predictions


def _random_split(n=1000, k=K, seed=0):
  """Logits/labels where classes 10 and 11 are never a label and never the argmax."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=n)
  logits = rng.normal(size=(n, k)).astype(np.float32)
  logits[np.arange(n), labels] += 1.0  # better than chance, far from perfect
  logits[:, list(ABSENT)] -= 10.0      # never predicted, still ranked for top-k
  return logits, labels


@functools.lru_cache(maxsize=None)
def _jitted(num_classes, top_k=(1, 5)):
  return jax.jit(functools.partial(metrics.batch_statistics, num_classes=num_classes,
                                   top_k=top_k))


def _stats_in_batches(logits, labels, batch_size, top_k=(1, 5)):
  """Sums batch statistics over fixed-size batches; the last one padded and masked."""
  fn = _jitted(logits.shape[1], top_k)
  totals = None
  for start in range(0, len(labels), batch_size):
    x, y = logits[start:start + batch_size], labels[start:start + batch_size]
    real = len(y)
    pad = batch_size - real
    # Padding carries garbage (NaN logits, out-of-range labels): the mask must hide it.
    x = np.concatenate([x, np.full((pad, x.shape[1]), np.nan, np.float32)])
    y = np.concatenate([y, np.full((pad,), 7, y.dtype)])
    mask = np.arange(batch_size) < real
    out = fn(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return jax.device_get(totals)


@pytest.fixture(scope='module')
def split():
  logits, labels = _random_split()
  totals = _stats_in_batches(logits, labels, batch_size=len(labels))
  return logits, labels, totals, metrics.summarize(totals)


def test_accuracy_loss_and_confusion_match_sklearn(split):
  logits, labels, _, summary = split
  preds = logits.argmax(-1)
  assert summary['num_examples'] == 1000
  assert summary['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
  probs = jax.nn.softmax(logits.astype(np.float64), axis=-1)
  assert summary['loss'] == pytest.approx(skm.log_loss(labels, probs, labels=range(K)),
                                          rel=1e-5)
  expected = skm.confusion_matrix(labels, preds, labels=list(range(K)))
  np.testing.assert_array_equal(summary['confusion_matrix'], expected)
  assert set(preds) & set(ABSENT) == set()  # the absent classes really are absent


@pytest.mark.parametrize('average', [None, 'macro', 'micro', 'weighted'])
def test_precision_recall_f1_match_sklearn(split, average):
  logits, labels, _, summary = split
  p, r, f, s = skm.precision_recall_fscore_support(
      labels, logits.argmax(-1), labels=list(range(K)), average=average, zero_division=0)
  if average is None:
    ours = summary['per_class']
    np.testing.assert_allclose(ours['precision'], p, atol=1e-12)
    np.testing.assert_allclose(ours['recall'], r, atol=1e-12)
    np.testing.assert_allclose(ours['f1'], f, atol=1e-12)
    np.testing.assert_array_equal(ours['support'], s)
    assert [ours['f1'][c] for c in ABSENT] == [0.0, 0.0]
  else:
    assert summary[f'{average}_precision'] == pytest.approx(p, abs=1e-12)
    assert summary[f'{average}_recall'] == pytest.approx(r, abs=1e-12)
    assert summary[f'{average}_f1'] == pytest.approx(f, abs=1e-12)


def test_class_predicted_but_never_a_label():
  """Precision 0 for a class that is only predicted; recall 0 for one never predicted."""
  labels = np.array([0, 0, 1, 1])
  logits = np.full((4, 3), -5.0, np.float32)
  logits[[0, 1, 2, 3], [0, 2, 1, 0]] = 5.0   # predictions: 0, 2, 1, 0
  summary = metrics.summarize(_stats_in_batches(logits, labels, batch_size=4))
  for average in ('macro', 'micro', 'weighted'):
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, logits.argmax(-1), labels=[0, 1, 2], average=average, zero_division=0)
    assert (summary[f'{average}_precision'], summary[f'{average}_recall'],
            summary[f'{average}_f1']) == pytest.approx((p, r, f), abs=1e-12)
  assert summary['per_class']['precision'][2] == 0.0
  assert summary['per_class']['support'] == [2, 2, 0]


@pytest.mark.parametrize('k', [1, 3, 5])
def test_top_k_accuracy_matches_sklearn(k):
  logits, labels = _random_split(n=300, seed=1)
  totals = _stats_in_batches(logits, labels, batch_size=300, top_k=(1, 3, 5))
  expected = skm.top_k_accuracy_score(labels, logits, k=k, labels=list(range(K)))
  assert metrics.summarize(totals)[f'top_{k}_accuracy'] == pytest.approx(expected, abs=1e-12)


def test_top_1_equals_accuracy_even_with_ties_and_k_clamps():
  logits = np.zeros((6, 4), np.float32)        # all tied: argmax is class 0
  labels = np.array([0, 1, 2, 3, 0, 1])
  summary = metrics.summarize(_stats_in_batches(logits, labels, 6, top_k=(1, 2, 9)))
  assert summary['top_1_accuracy'] == summary['accuracy'] == pytest.approx(2 / 6)
  assert summary['top_2_accuracy'] == pytest.approx(4 / 6)  # ties broken by lower index
  assert summary['top_9_accuracy'] == 1.0                   # k > K clamps to K


def test_batched_with_padding_equals_one_batch(split):
  logits, labels, one_batch, summary = split
  batched = _stats_in_batches(logits, labels, batch_size=128)  # 8 batches, last 104 real
  assert int(batched['count']) == 1000
  assert int(np.asarray(batched['confusion']).sum()) == 1000
  for key in one_batch:
    if np.issubdtype(np.asarray(one_batch[key]).dtype, np.integer):
      np.testing.assert_array_equal(batched[key], one_batch[key], err_msg=key)
    else:  # float sums: only the summation order differs
      np.testing.assert_allclose(batched[key], one_batch[key], rtol=1e-5, err_msg=key)
  again = metrics.summarize(batched)
  for key, value in summary.items():
    if key in ('loss', 'ece', 'calibration'):
      continue
    assert again[key] == value, key
  assert again['loss'] == pytest.approx(summary['loss'], rel=1e-5)
  assert again['ece'] == pytest.approx(summary['ece'], abs=1e-6)


def _numpy_ece(probs, labels, num_bins=15):
  """The textbook loop (Guo et al. 2017): bins (lo, hi], weighted |accuracy - confidence|."""
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return ece


def test_ece_matches_numpy_reference(split):
  logits, labels, _, summary = split
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
  assert summary['ece'] == pytest.approx(_numpy_ece(probs, labels), abs=1e-5)
  calibration = summary['calibration']
  assert sum(calibration['count']) == 1000 and len(calibration['count']) == 15


def test_masked_examples_contribute_nothing():
  logits, labels = _random_split(n=64, seed=3)
  mask = np.arange(64) < 40
  fn = _jitted(K)
  masked = metrics.summarize(fn(logits, labels, mask))
  direct = metrics.summarize(fn(logits[:40], labels[:40], np.ones(40, bool)))
  assert masked['num_examples'] == 40
  assert masked['confusion_matrix'] == direct['confusion_matrix']
  assert masked['loss'] == pytest.approx(direct['loss'], rel=1e-6)


def test_summarize_rejects_empty_split():
  fn = _jitted(K)
  logits, labels = _random_split(n=8)
  with pytest.raises(ValueError, match='count == 0'):
    metrics.summarize(fn(logits, labels, np.zeros(8, bool)))


def test_scalars_keeps_only_numbers(split):
  out = metrics.scalars(split[3])
  assert {'loss', 'accuracy', 'top_5_accuracy', 'macro_f1', 'ece', 'num_examples'} <= set(out)
  assert 'confusion_matrix' not in out and 'per_class' not in out


def test_masked_token_accuracy_and_perplexity():
  rng = np.random.default_rng(4)
  b, l, v = 3, 7, 11
  logits = rng.normal(size=(b, l, v)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, l))
  weights = (rng.random((b, l)) < 0.4).astype(np.float32)
  weights[0, 0] = 1.0
  targets[weights == 0] = -1  # ignored positions may hold any id
  stats = jax.jit(metrics.masked_token_statistics)(logits, targets, weights)
  out = metrics.summarize_masked_tokens(stats)

  keep = weights > 0
  logits64 = logits.astype(np.float64)
  log_probs = logits64 - np.log(np.exp(logits64).sum(-1, keepdims=True))
  nll = -log_probs[keep, targets[keep]]
  assert out['num_tokens'] == keep.sum()
  assert out['perplexity'] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
  assert out['loss'] == pytest.approx(nll.mean(), rel=1e-5)
  assert out['masked_accuracy'] == pytest.approx(
      (logits.argmax(-1)[keep] == targets[keep]).mean(), abs=1e-7)

  # Splitting the batch and adding the sums changes nothing.
  halves = [jax.jit(metrics.masked_token_statistics)(logits[i:i + 1], targets[i:i + 1],
                                                     weights[i:i + 1]) for i in range(b)]
  total = functools.reduce(lambda x, y: jax.tree.map(jnp.add, x, y), halves)
  assert metrics.summarize_masked_tokens(total)['perplexity'] == pytest.approx(
      out['perplexity'], rel=1e-6)


_SHARDED_SCRIPT = textwrap.dedent("""
    import functools
    import jax, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from research.evaluation import metrics

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(96, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 96)
    mask = np.arange(96) < 90
    tokens = rng.normal(size=(16, 6, 9)).astype(np.float32)
    targets = rng.integers(0, 9, (16, 6))
    weights = (rng.random((16, 6)) < 0.5).astype(np.float32)
    stats = functools.partial(metrics.batch_statistics, num_classes=10)
    single = metrics.summarize(jax.jit(stats)(logits, labels, mask))
    single_tok = metrics.summarize_masked_tokens(
        jax.jit(metrics.masked_token_statistics)(tokens, targets, weights))
    assert len(jax.devices()) == 8
    for axis_type in (AxisType.Explicit, AxisType.Auto):
      mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
      batch, out = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
      with jax.set_mesh(mesh):
        got = metrics.summarize(jax.jit(stats, out_shardings=out)(
            *(jax.device_put(x, batch) for x in (logits, labels, mask))))
        tok = metrics.summarize_masked_tokens(jax.jit(
            metrics.masked_token_statistics, out_shardings=out)(
                *(jax.device_put(x, batch) for x in (tokens, targets, weights))))
      for key in ('num_examples', 'confusion_matrix', 'accuracy', 'top_5_accuracy',
                  'macro_f1'):
        assert got[key] == single[key], (axis_type, key)
      assert abs(got['loss'] - single['loss']) < 1e-6, axis_type
      assert abs(tok['perplexity'] - single_tok['perplexity']) < 1e-4, axis_type
    print('ok')
""")


def test_statistics_of_a_batch_sharded_over_8_devices():
  """The same numbers when the batch is sharded over a mesh, explicit or auto axes."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]
