"""Evaluators by name (`config.evals`): what a run measures, on which split, how often.

Every run has one default evaluator per split in `config.dataset.eval_splits`: the
objective's own metrics (`'objective'`), every `eval_every_steps` and at the end. More
come from `config.evals`, a block of entries keyed by the name their results are logged
under (big_vision's idea)::

  config.evals.val_probe = dict(evaluator='objective', split='train[:10%]', every_steps=500)

Each entry: `evaluator` (a name in `EVALUATORS`), `split` (a tfds split of the dataset),
`every_steps` (0: at the end only; -1: every `eval_every_steps`), plus the evaluator's
own keyword arguments. The loop logs whatever an evaluator returns: its scalars go to
metrics.jsonl and TensorBoard under the entry's name, the whole dict to results.json.

A new evaluator is a subclass of `research.evaluation.evaluator.Evaluator` in a file of
its own (or in your code) plus one line in `EVALUATORS` (or `register(name, cls)` from
outside the package).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

import jax
import ml_collections

from research import errors
from research.errors import ConfigError
from research.evaluation.evaluator import Evaluator, ObjectiveEvaluator

if TYPE_CHECKING:
  from research.training.experiment import Experiment

_ENTRY_KEYS = ('evaluator', 'split', 'every_steps')


EVALUATORS: dict[str, type[Evaluator]] = {
    'objective': ObjectiveEvaluator,
}


def register(name: str, cls: type[Evaluator]) -> None:
  """Adds an evaluator from outside the package (a test, a notebook, your own project)."""
  EVALUATORS[name] = cls


def lookup(name: str) -> type[Evaluator]:
  return errors.lookup(EVALUATORS, name, 'evaluator')


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One configured evaluation: logged as `name`, on `split`, every `every_steps`."""
  name: str
  evaluator: str
  split: str            # the tfds split name
  every_steps: int      # 0: only at the end
  args: dict[str, Any]


def specs(config: ml_collections.ConfigDict) -> list[EvalSpec]:
  """The run's evaluations: the default ones, then `config.evals`, checked."""
  from research import config as config_lib  # config imports this module's neighbours
  out = [EvalSpec(config_lib.results_key(split), 'objective', split, config.eval_every_steps, {})
         for split in config_lib.eval_splits(config)]
  for name, entry in config.evals.items():
    entry = dict(entry)
    if 'evaluator' not in entry or 'split' not in entry:
      raise ConfigError(f"config.evals.{name} needs 'evaluator' and 'split'; got {entry}.")
    cls = lookup(entry['evaluator'])
    every = int(entry.get('every_steps', -1))
    if every < -1:
      raise ConfigError(f'config.evals.{name}.every_steps must be >= -1, got {every}.')
    args = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
    accepted = [k for k, p in inspect.signature(cls.__init__).parameters.items()
                if k not in ('self', 'exp', 'split') and p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
      raise ConfigError(f'Unknown keys {unknown} in config.evals.{name} for evaluator '
                        f"{entry['evaluator']!r}; accepted: {sorted(_ENTRY_KEYS + tuple(accepted))}.")
    if any(s.name == name for s in out):
      raise ConfigError(f'config.evals.{name} would overwrite the default evaluation of split '
                        f'{name!r}; choose another name.')
    out.append(EvalSpec(name, entry['evaluator'], entry['split'],
                        config.eval_every_steps if every == -1 else every, args))
  return out


def build(spec: EvalSpec, exp: 'Experiment') -> Evaluator:
  return lookup(spec.evaluator)(exp, spec.split, **spec.args)


def replicated_sum(totals, out):
  """Adds one batch's statistics to the running totals (None at the start)."""
  return out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)

