"""Exact metrics over a whole split: summable statistics on device, summaries on the host.

Evaluation runs in two halves so that every number is exact however the split is
batched, padded or sharded:

1. `batch_statistics` (pure jnp, inside the jitted eval step) returns only quantities
   that add up: sums and counts. Over a global, sharded batch `jax.jit` already reduces
   them across devices and processes; the caller adds the per-batch dicts with
   `jax.tree.map(jnp.add, ...)`. Padding examples (mask False) contribute nothing.
2. `summarize` (numpy, on the host, once per split) turns the totals into accuracy,
   precision/recall/F1, top-k accuracy, ECE and the confusion matrix.

Counts are int32, so they are exact up to 2**31 examples; loss and confidence sums are
float32 and agree across batchings to float32 rounding.

Zero division, matching scikit-learn's
`precision_recall_fscore_support(..., labels=list(range(K)), zero_division=0)`:
a class never predicted has precision 0.0; a class absent from the labels has recall 0.0;
its F1 is 0.0 when 2*tp + fp + fn == 0. Macro averages are plain means over all K
classes, so a class absent from both labels and predictions counts as 0.0 in them (it
lowers macro-F1). Weighted averages weight by support, so such a class has no effect.
Micro averages pool tp/fp/fn over classes; for single-label data they equal accuracy.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Statistics = dict[str, jax.Array]

_TOP_K_KEY = re.compile(r'^top_(\d+)_correct$')


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------

def _replicated_if_explicit(x: jax.Array):
  """Under an explicit-axes mesh a contraction over the sharded batch axis must name its
  output sharding: replicated. Under auto axes (or no mesh) XLA chooses: None."""
  sharding = jax.typeof(x).sharding
  axis_types = getattr(sharding.mesh, 'axis_types', None) or ()
  if any(t == jax.sharding.AxisType.Explicit for t in axis_types):
    return sharding.update(spec=jax.sharding.PartitionSpec())
  return None


def batch_statistics(logits_BxK: jax.Array, labels_B: jax.Array, mask_B: jax.Array, *,
                     num_classes: int, top_k: Sequence[int] = (1, 5),
                     num_ece_bins: int = 15) -> Statistics:
  """Summable statistics of one batch; jit-able, with static keyword arguments.

  Returns a flat dict:
    loss_sum            float32 ()  sum of softmax cross-entropy over real examples
    count               int32 ()    number of real examples (mask True)
    confusion           int32 (K,K) rows = true class, columns = predicted class
    top_{k}_correct     int32 ()    one per requested k; k > K is clamped to K
    ece_count           int32 (nb,) examples per confidence bin
    ece_confidence_sum  float32 (nb,) sum of max softmax probability per bin
    ece_correct_sum     int32 (nb,) top-1 correct examples per bin

  The predicted class is `argmax` (the lowest index wins a tie), and top-k uses the
  same order, so `top_1_correct` always equals the confusion matrix's trace. Bins are
  (b/nb, (b+1)/nb], as in Guo et al. 2017. Masked rows are excluded with `where`, so
  NaN or garbage in padding cannot leak into the sums.
  """
  if logits_BxK.ndim != 2 or logits_BxK.shape[-1] != num_classes:
    raise ValueError(f'logits must have shape (batch, num_classes={num_classes}), got '
                     f'{logits_BxK.shape}.')
  ks = sorted({int(k) for k in top_k})
  if any(k < 1 for k in ks):
    raise ValueError(f'top_k values must be >= 1, got {tuple(top_k)}.')
  if num_ece_bins < 1:
    raise ValueError(f'num_ece_bins must be >= 1, got {num_ece_bins}.')

  logits_BxK = logits_BxK.astype(jnp.float32)
  mask_B = mask_B.astype(bool)
  labels_B = jnp.where(mask_B, labels_B, 0).astype(jnp.int32)
  one_B = mask_B.astype(jnp.int32)

  log_probs_BxK = jax.nn.log_softmax(logits_BxK, axis=-1)
  nll_B = -jnp.take_along_axis(log_probs_BxK, labels_B[:, None], axis=-1)[:, 0]
  preds_B = jnp.argmax(logits_BxK, axis=-1).astype(jnp.int32)
  # A one-hot contraction, not a scatter-add: scattering a sharded batch into a
  # replicated matrix fails under explicit-axes meshes and serialises on TPU, while this
  # is one matmul. Sums of 0/1 products in float32 are exact below 2**24 examples a batch.
  true_BxK = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32) * one_B[:, None]
  pred_BxK = jax.nn.one_hot(preds_B, num_classes, dtype=jnp.float32)
  confusion_KxK = jnp.round(jnp.einsum(
      'bi,bj->ij', true_BxK, pred_BxK, precision=jax.lax.Precision.HIGHEST,
      out_sharding=_replicated_if_explicit(true_BxK))).astype(jnp.int32)

  # Rank of the true class in the order "higher logit first, lower index on ties":
  # the number of classes that beat it. This is the order of argmax and lax.top_k.
  label_logit_B = jnp.take_along_axis(logits_BxK, labels_B[:, None], axis=-1)
  class_K = jnp.arange(num_classes)
  beats_BxK = (logits_BxK > label_logit_B) | (
      (logits_BxK == label_logit_B) & (class_K[None, :] < labels_B[:, None]))
  rank_B = beats_BxK.sum(axis=-1)

  correct_B = preds_B == labels_B
  confidence_B = jnp.exp(jnp.max(log_probs_BxK, axis=-1))
  bin_B = jnp.clip(jnp.ceil(confidence_B * num_ece_bins).astype(jnp.int32) - 1,
                   0, num_ece_bins - 1)

  in_bin_BxN = jax.nn.one_hot(bin_B, num_ece_bins, dtype=jnp.int32) * one_B[:, None]

  def per_bin(values_B, dtype):
    values_B = jnp.where(mask_B, values_B, 0).astype(dtype)
    return (in_bin_BxN.astype(dtype) * values_B[:, None]).sum(axis=0)

  stats = {
      'loss_sum': jnp.where(mask_B, nll_B, 0.0).sum(),
      'count': one_B.sum(),
      'confusion': confusion_KxK,
      'ece_count': per_bin(one_B, jnp.int32),
      'ece_confidence_sum': per_bin(confidence_B, jnp.float32),
      'ece_correct_sum': per_bin(correct_B.astype(jnp.int32), jnp.int32),
  }
  for k in ks:
    stats[f'top_{k}_correct'] = ((rank_B < min(k, num_classes)) & mask_B).astype(
        jnp.int32).sum()
  return stats


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, and 0.0 where the denominator is 0 (zero_division=0)."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  out = np.zeros(np.broadcast(numerator, denominator).shape, np.float64)
  np.divide(numerator, denominator, out=out, where=denominator != 0)
  return out


def summarize(totals: dict[str, Any]) -> dict[str, Any]:
  """Host-side metrics from `batch_statistics` summed over a split (see module doc).

  Keys: loss, accuracy, top_{k}_accuracy, {macro,micro,weighted}_{precision,recall,f1},
  ece, num_examples (scalars); per_class {precision, recall, f1, support} lists;
  confusion_matrix (int lists); calibration {count, accuracy, confidence} per ECE bin.
  Use `scalars(summary)` for the part that goes into metrics.jsonl or TensorBoard.
  """
  totals = {k: np.asarray(v) for k, v in jax.device_get(totals).items()}
  missing = {'loss_sum', 'count', 'confusion', 'ece_count', 'ece_confidence_sum',
             'ece_correct_sum'} - set(totals)
  if missing:
    raise ValueError(f'summarize() needs the output of batch_statistics(); missing keys '
                     f'{sorted(missing)} (got {sorted(totals)}).')
  n = int(totals['count'])
  if n <= 0:
    raise ValueError('No examples to summarize (count == 0): the split is empty or every '
                     'example is masked as padding.')
  confusion = np.rint(totals['confusion']).astype(np.int64)
  tp = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1).astype(np.float64)     # true examples per class
  predicted = confusion.sum(axis=0).astype(np.float64)   # predictions per class
  fp, fn = predicted - tp, support - tp

  precision = _safe_divide(tp, predicted)
  recall = _safe_divide(tp, support)
  f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
  micro_precision = float(_safe_divide(tp.sum(), predicted.sum()))
  micro_recall = float(_safe_divide(tp.sum(), support.sum()))
  micro_f1 = float(_safe_divide(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))

  def weighted(values):
    return float(_safe_divide((values * support).sum(), support.sum()))

  out: dict[str, Any] = {
      'loss': float(totals['loss_sum']) / n,
      'accuracy': float(tp.sum()) / n,
  }
  top_ks = sorted((int(m.group(1)), key) for key in totals
                  if (m := _TOP_K_KEY.match(key)))
  for k, key in top_ks:
    out[f'top_{k}_accuracy'] = float(totals[key]) / n

  bin_count = totals['ece_count'].astype(np.float64)
  bin_confidence = totals['ece_confidence_sum'].astype(np.float64)
  bin_correct = totals['ece_correct_sum'].astype(np.float64)
  out.update({
      'macro_precision': float(precision.mean()),
      'macro_recall': float(recall.mean()),
      'macro_f1': float(f1.mean()),
      'micro_precision': micro_precision,
      'micro_recall': micro_recall,
      'micro_f1': micro_f1,
      'weighted_precision': weighted(precision),
      'weighted_recall': weighted(recall),
      'weighted_f1': weighted(f1),
      # sum_b |B_b|/n * |acc_b - conf_b| == sum_b |correct_b - confidence_b| / n
      'ece': float(np.abs(bin_correct - bin_confidence).sum()) / n,
      'num_examples': n,
      'per_class': {
          'precision': precision.tolist(),
          'recall': recall.tolist(),
          'f1': f1.tolist(),
          'support': support.astype(np.int64).tolist(),
      },
      'confusion_matrix': confusion.tolist(),
      'calibration': {
          'count': bin_count.astype(np.int64).tolist(),
          'accuracy': _safe_divide(bin_correct, bin_count).tolist(),
          'confidence': _safe_divide(bin_confidence, bin_count).tolist(),
      },
  })
  return out


def scalars(summary: dict[str, Any]) -> dict[str, float]:
  """The scalar entries of a summary: what to log per step (metrics.jsonl, TensorBoard)."""
  return {k: v for k, v in summary.items()
          if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------
# Masked tokens (a pretraining head: masked-LM accuracy and perplexity)
# ---------------------------------------------------------------------------

def masked_token_statistics(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                            weights_BxL: jax.Array) -> Statistics:
  """Summable sums over the tokens with nonzero weight; jit-able.

  Returns nll_sum (weighted negative log-likelihood), correct_sum (weighted argmax
  hits) and weight_sum, all float32 scalars. Weights may be 0/1 masks or real weights.
  """
  if logits_BxLxV.shape[:-1] != targets_BxL.shape or targets_BxL.shape != weights_BxL.shape:
    raise ValueError(f'Shapes disagree: logits {logits_BxLxV.shape}, targets '
                     f'{targets_BxL.shape}, weights {weights_BxL.shape}; expected '
                     f'(B, L, V), (B, L), (B, L).')
  weights_BxL = weights_BxL.astype(jnp.float32)
  keep_BxL = weights_BxL != 0
  targets_BxL = jnp.where(keep_BxL, targets_BxL, 0).astype(jnp.int32)
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  nll_BxL = log_z_BxL - target_logit_BxL
  correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL).astype(jnp.float32)
  return {
      'nll_sum': jnp.where(keep_BxL, nll_BxL * weights_BxL, 0.0).sum(),
      'correct_sum': jnp.where(keep_BxL, correct_BxL * weights_BxL, 0.0).sum(),
      'weight_sum': weights_BxL.sum(),
  }


def summarize_masked_tokens(totals: dict[str, Any]) -> dict[str, float]:
  """loss (mean NLL per weighted token), masked_accuracy, perplexity = exp(loss), num_tokens."""
  totals = {k: float(np.asarray(v)) for k, v in jax.device_get(totals).items()}
  weight = totals['weight_sum']
  if weight <= 0:
    raise ValueError('No weighted tokens to summarize (weight_sum == 0): every target is '
                     'masked out.')
  loss = totals['nll_sum'] / weight
  return {
      'loss': loss,
      'masked_accuracy': totals['correct_sum'] / weight,
      'perplexity': float(np.exp(loss)),
      'num_tokens': weight,
  }
