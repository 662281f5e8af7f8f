"""What an evaluator is: something that measures a train state on one split.

It gets the `Experiment` (model, objective, mesh, data) and the split's name, and
implements `evaluate(state) -> dict`; the loop logs every scalar of that dict and keeps
the whole dict in results.json. `self.batches()` yields the split's global batches (the
last one padded, `mask` False on padding) and `self.exp.predict_fn(state, batch)` runs
the model in evaluation mode. Registered by name in `research.evaluation.evaluators`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import jax

if TYPE_CHECKING:
  from research.training.experiment import Experiment


class Evaluator:
  """Measures a train state on one split. Subclasses implement `evaluate`."""

  def __init__(self, exp: 'Experiment', split: str):
    self.exp, self.split = exp, split

  def batches(self) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """`(batch index, global batch)` over the whole split, under the run's mesh."""
    yield from self.exp.eval_batches(self.split)

  def evaluate(self, state) -> dict[str, Any]:
    raise NotImplementedError


class ObjectiveEvaluator(Evaluator):
  """The objective's eval statistics summed over the split, then summarised once
  (classification: loss, accuracy, F1, confusion matrix, ...; masked_lm: masked-token
  accuracy, perplexity, the majority baseline)."""

  def evaluate(self, state) -> dict[str, Any]:
    return self.exp.evaluate(state, self.split)
