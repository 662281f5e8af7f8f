"""What an objective is: the loss from model outputs and batch, and its eval statistics.

The trainer knows nothing about classification or masked tokens; it calls an objective:

- `prepare(batch, key, train)`: changes the batch on the device before the model sees it
  (masked-LM masking, drawn from `key`, a function of (seed, step) or of the eval batch's
  index, so it is deterministic and resumes exactly). The default returns it unchanged.
- `loss(outputs, batch)`: `(loss_sum, weight_sum, sums)` over the batch's real examples or
  tokens. The trainer divides by the total weight after summing micro-batches, so 4
  accumulated micro-batches of 16 give the gradient of one batch of 64; `sums` (e.g.
  correct predictions) are divided by the same weight and logged as training metrics.
- `eval_statistics(outputs, batch)`: a dict of summable arrays (sums and counts); the
  evaluator adds them up over a split and calls `summarize(totals)` once, on the host.
- `num_outputs(info)`: the size of the model's last layer (classes, 1 for regression, or
  0 when the model's head decides, as a masked-LM head over the vocabulary does).

A new objective is one file defining a subclass plus one line in `objectives.OBJECTIVES`
(or `objectives.register(name, cls)` from your own code). Its hyperparameters are the
keyword arguments of its constructor; `config.objective_args` holds them.
"""
from __future__ import annotations

from typing import Any

import jax

Batch = dict[str, jax.Array]


class Objective:
  """Base class; subclasses override `loss`, `eval_statistics` and `summarize`."""

  # Batch fields the objective reads besides 'inputs' and 'mask' (checked before training).
  batch_fields: tuple[str, ...] = ()
  # The metric named in logs next to the loss, e.g. 'accuracy'.
  headline_metric: str = ''

  def __init__(self, *, info: Any = None, preprocess: Any = None, seed: int = 0):
    self.info, self.preprocess, self.seed = info, preprocess, seed

  def num_outputs(self, info: Any) -> int:
    return int(info.num_classes)

  def prepare(self, batch: Batch, key: jax.Array, train: bool) -> Batch:
    del key, train
    return batch

  def loss(self, outputs: jax.Array, batch: Batch
           ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError

  def eval_statistics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    raise NotImplementedError

  def summarize(self, totals: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError
