"""Masked-language-model pretraining (BERT's recipe), masks drawn on the device.

Of the real, non-special tokens, each is chosen with probability `mask_rate` (15%); a
chosen token becomes [MASK] with probability 0.8, a random regular token with 0.1, and
stays unchanged with 0.1. The loss is the cross-entropy of the chosen tokens' original
ids, averaged over chosen tokens. The draw is a function of the key the trainer passes:
(seed, step) in training and (seed, batch index) in evaluation, so it is deterministic, a
resumed run masks exactly as an uninterrupted one, and every evaluation sees the same
masks. The model returns vocabulary logits per token, `logits_BxLxV` (the Transformer with
`head='masked_lm'`), or, when it takes the batch's `mlm_positions` (`max_predictions` > 0,
BERT's max_predictions_per_seq), only at those P positions, `logits_BxPxV`: the chosen
tokens come first in each row (up to P of them; the rest of the row is padding with
weight 0), so the head's cost falls by L / P. A row with more than P chosen tokens
predicts P of them, chosen at random (with P = 2 x mask_rate x L that is very rare);
`dropped_predictions` in the eval metrics counts them. (The model's FLOP count, and so
MFU, still counts the head at every position.)

Evaluation reports `loss`, `masked_accuracy`, `perplexity`, `num_tokens` and
`majority_baseline_accuracy`: the accuracy of always predicting the split's most frequent
masked token (a model must beat it to have learnt anything beyond token frequencies).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.data import tokenizers
from research.errors import ConfigError
from research.evaluation import metrics as metrics_lib
from research.objectives.base import Batch, Objective


def mask_tokens(key: jax.Array, tokens_BxL: jax.Array, maskable_BxL: jax.Array, *,
                mask_rate: float, mask_id: int, first_regular_id: int, vocab_size: int,
                replace_with_mask: float = 0.8, replace_with_random: float = 0.1
                ) -> tuple[jax.Array, jax.Array]:
  """`(inputs_BxL, chosen_BxL)`: BERT's corruption of `tokens_BxL` and where it chose."""
  choose_key, kind_key, random_key = jax.random.split(key, 3)
  shape = tokens_BxL.shape
  chosen_BxL = (jax.random.uniform(choose_key, shape) < mask_rate) & maskable_BxL
  kind_BxL = jax.random.uniform(kind_key, shape)
  to_mask_BxL = chosen_BxL & (kind_BxL < replace_with_mask)
  to_random_BxL = chosen_BxL & (kind_BxL >= replace_with_mask) & (
      kind_BxL < replace_with_mask + replace_with_random)
  random_BxL = jax.random.randint(random_key, shape, first_regular_id, vocab_size,
                                  dtype=tokens_BxL.dtype)
  inputs_BxL = jnp.where(to_mask_BxL, jnp.asarray(mask_id, tokens_BxL.dtype),
                         jnp.where(to_random_BxL, random_BxL, tokens_BxL))
  return inputs_BxL, chosen_BxL


class MaskedLM(Objective):
  headline_metric = 'masked_accuracy'

  def __init__(self, *, mask_rate: float = 0.15, replace_with_mask: float = 0.8,
               replace_with_random: float = 0.1, max_predictions: int = 0, info: Any = None,
               preprocess: Any = None, seed: int = 0):
    super().__init__(info=info, preprocess=preprocess, seed=seed)
    if not 0.0 < mask_rate < 1.0:
      raise ConfigError(f'config.objective_args.mask_rate must be in (0, 1), got {mask_rate}.')
    if not (0 <= replace_with_mask and 0 <= replace_with_random
            and replace_with_mask + replace_with_random <= 1):
      raise ConfigError('config.objective_args.replace_with_mask and replace_with_random must '
                        f'be >= 0 with a sum <= 1; got {replace_with_mask}, {replace_with_random}.')
    if max_predictions < 0:
      raise ConfigError('config.objective_args.max_predictions must be >= 0 (0: every '
                        f'position), got {max_predictions}.')
    self.mask_rate = mask_rate
    self.max_predictions = int(max_predictions)
    self.replace_with_mask, self.replace_with_random = replace_with_mask, replace_with_random
    tokenizer = preprocess.tokenizer if preprocess is not None else None
    if preprocess is not None and tokenizer is None:
      raise ConfigError("objective='masked_lm' needs token ids: add a tokenizer op to "
                        "config.dataset.preprocess, e.g. 'tokenize_bytes(max_len=128)'.")
    self.vocab_size = int(getattr(tokenizer, 'vocab_size', tokenizers.NUM_SPECIAL_IDS + 1))
    self.pad_id = int(getattr(tokenizer, 'pad_id', tokenizers.PAD_ID))
    self.mask_id = int(getattr(tokenizer, 'mask_id', tokenizers.MASK_ID))
    specials = getattr(tokenizer, 'special_ids', None)
    if specials is None:
      specials = range(tokenizers.NUM_SPECIAL_IDS)
    self.special_ids = tuple(sorted(int(i) for i in specials))
    # Random replacements are regular tokens: ids above every special id.
    self.first_regular_id = max(self.special_ids) + 1

  def num_outputs(self, info: Any) -> int:
    return 0  # the masked-LM head's width is the model's vocab_size

  def prepare(self, batch: Batch, key: jax.Array, train: bool) -> Batch:
    del train  # the same corruption in training and evaluation; only the key differs
    tokens_BxL = batch['inputs'].astype(jnp.int32)
    real_BxL = batch['input_mask'] if 'input_mask' in batch else tokens_BxL != self.pad_id
    real_BxL = real_BxL & batch['mask'][:, None]  # padding rows of an eval batch
    special_BxL = jnp.isin(tokens_BxL, jnp.asarray(self.special_ids, jnp.int32))
    inputs_BxL, chosen_BxL = mask_tokens(
        key, tokens_BxL, real_BxL & ~special_BxL, mask_rate=self.mask_rate,
        mask_id=self.mask_id, first_regular_id=self.first_regular_id,
        vocab_size=self.vocab_size, replace_with_mask=self.replace_with_mask,
        replace_with_random=self.replace_with_random)
    out = {**batch, 'inputs': inputs_BxL, 'mlm_targets': tokens_BxL,
           'mlm_weights': chosen_BxL.astype(jnp.float32)}
    length = tokens_BxL.shape[1]
    if self.max_predictions and self.max_predictions < length:
      # The chosen positions first (random order among them), then unchosen ones as padding.
      priority_BxL = jax.random.uniform(jax.random.fold_in(key, 7), tokens_BxL.shape)
      _, positions_BxP = jax.lax.top_k(priority_BxL + 2.0 * chosen_BxL, self.max_predictions)
      out['mlm_positions'] = positions_BxP.astype(jnp.int32)
      out['mlm_position_targets'] = jnp.take_along_axis(tokens_BxL, positions_BxP, axis=1)
      out['mlm_position_weights'] = jnp.take_along_axis(
          chosen_BxL, positions_BxP, axis=1).astype(jnp.float32)
    return out

  def _targets(self, logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """`(targets, weights)` matching the logits: per position, or per token."""
    if 'mlm_positions' in batch and logits.shape[1] == batch['mlm_positions'].shape[1]:
      return batch['mlm_position_targets'], batch['mlm_position_weights']
    return batch['mlm_targets'], batch['mlm_weights']

  def _check(self, logits: jax.Array) -> None:
    if logits.ndim != 3:
      raise ConfigError(f"objective='masked_lm' needs per-token logits (batch, length, vocab); "
                        f'the model returned shape {logits.shape}. Use the transformer with '
                        f"head='masked_lm' (--config.model.head=masked_lm).")

  def loss(self, logits_BxLxV, batch):
    self._check(logits_BxLxV)
    stats = metrics_lib.masked_token_statistics(logits_BxLxV, *self._targets(logits_BxLxV, batch))
    return stats['nll_sum'], stats['weight_sum'], {'masked_accuracy': stats['correct_sum']}

  def eval_statistics(self, logits_BxLxV, batch):
    self._check(logits_BxLxV)
    targets, weights = self._targets(logits_BxLxV, batch)
    stats = metrics_lib.masked_token_statistics(logits_BxLxV, targets, weights)
    vocab = logits_BxLxV.shape[-1]
    # Masked targets per token id: the majority baseline (and a frequency profile).
    stats['target_counts'] = jnp.zeros(vocab, jnp.float32).at[
        targets.reshape(-1)].add(weights.reshape(-1))
    stats['chosen'] = batch['mlm_weights'].sum()  # before the cap of max_predictions
    return stats

  def summarize(self, totals):
    totals = jax.device_get(totals)
    out = metrics_lib.summarize_masked_tokens(
        {k: v for k, v in totals.items() if k not in ('target_counts', 'chosen')})
    out['dropped_predictions'] = float(np.asarray(totals['chosen'])) - out['num_tokens']
    counts = np.asarray(totals['target_counts'])
    out['majority_baseline_accuracy'] = float(counts.max() / max(counts.sum(), 1.0))
    return out
