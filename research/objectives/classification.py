"""Softmax cross-entropy over classes, with optional label smoothing; sklearn-exact metrics.

Training loss per example: cross-entropy against the one-hot label, or against the
smoothed target `(1 - a) * one_hot + a / K` when `label_smoothing=a` (optax's
`smooth_labels`), or against `batch['targets']` when the preprocessing made soft targets
(the `one_hot(smoothing=...)` op). Evaluation reports the plain (unsmoothed) loss and the
metrics of `research.evaluation.metrics`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from research.errors import ConfigError
from research.evaluation import metrics as metrics_lib
from research.objectives.base import Batch, Objective


class Classification(Objective):
  headline_metric = 'accuracy'

  def __init__(self, *, label_smoothing: float = 0.0, info: Any = None,
               preprocess: Any = None, seed: int = 0):
    super().__init__(info=info, preprocess=preprocess, seed=seed)
    if not 0.0 <= label_smoothing < 1.0:
      raise ConfigError(f'config.objective_args.label_smoothing must be in [0, 1), got '
                        f'{label_smoothing}.')
    self.label_smoothing = float(label_smoothing)
    self.num_classes = int(info.num_classes) if info is not None else 0
    if preprocess is not None and label_smoothing and any(
        name == 'one_hot' for name, _ in preprocess.spec):
      raise ConfigError('Label smoothing is set twice: config.objective_args.label_smoothing='
                        f'{label_smoothing} and a one_hot op in config.dataset.preprocess. '
                        'Keep one.')

  def per_example_loss(self, logits_BxK: jax.Array, batch: Batch) -> jax.Array:
    logits_BxK = logits_BxK.astype(jnp.float32)
    if 'targets' in batch:  # soft targets from the one_hot preprocessing op
      return optax.softmax_cross_entropy(logits_BxK, batch['targets'])
    if self.label_smoothing:
      num_classes = logits_BxK.shape[-1]
      targets_BxK = optax.smooth_labels(jax.nn.one_hot(batch['labels'], num_classes),
                                        self.label_smoothing)
      return optax.softmax_cross_entropy(logits_BxK, targets_BxK)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch['labels'])

  def loss(self, logits_BxK, batch):
    weight_B = batch['mask'].astype(jnp.float32)
    losses_B = self.per_example_loss(logits_BxK, batch)
    correct_B = jnp.argmax(logits_BxK, axis=-1) == batch['labels']
    return ((losses_B * weight_B).sum(), weight_B.sum(),
            {'accuracy': (correct_B * weight_B).sum()})

  def eval_statistics(self, logits_BxK, batch):
    return metrics_lib.batch_statistics(logits_BxK, batch['labels'], batch['mask'],
                                        num_classes=logits_BxK.shape[-1])

  def summarize(self, totals):
    return metrics_lib.summarize(totals)
