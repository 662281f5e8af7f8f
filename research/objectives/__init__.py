"""Objectives by name (`config.objective`): a new one is a file plus one line here.

`build(config, info=..., preprocess=...)` makes the configured objective with its
hyperparameters from `config.objective_args` (unknown ones fail, listing the valid ones).
"""
from __future__ import annotations

import inspect
from typing import Any

import ml_collections

from research import errors
from research.errors import ConfigError
from research.objectives.base import Objective
from research.objectives.classification import Classification
from research.objectives.distillation import Distillation
from research.objectives.masked_lm import MaskedLM

OBJECTIVES: dict[str, type[Objective]] = {
    'classification': Classification,
    'masked_lm': MaskedLM,
    'distillation': Distillation,
}


def register(name: str, cls: type[Objective]) -> None:
  """Adds an objective from outside the package (a test, a notebook, your own project)."""
  OBJECTIVES[name] = cls


def lookup(name: str) -> type[Objective]:
  return errors.lookup(OBJECTIVES, name, 'objective')


def hyperparameters(name: str) -> dict[str, Any]:
  """The objective's own keyword arguments and their defaults."""
  params = inspect.signature(lookup(name).__init__).parameters
  return {k: p.default for k, p in params.items()
          if p.kind == p.KEYWORD_ONLY and k not in ('info', 'preprocess', 'seed')}


def build(config: ml_collections.ConfigDict, *, info: Any = None, preprocess: Any = None
          ) -> Objective:
  cls = lookup(config.objective)
  valid = hyperparameters(config.objective)
  args = dict(config.objective_args)
  unknown = sorted(set(args) - set(valid))
  if unknown:
    raise ConfigError(f'Unknown config.objective_args {unknown} for objective '
                      f'{config.objective!r}; valid: {sorted(valid)}.')
  return cls(info=info, preprocess=preprocess, seed=config.seed, **args)


def args_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.objective_args` for objective `name`: every hyperparameter with its default,
  so each can be overridden from the command line."""
  params = hyperparameters(name)
  unknown = sorted(set(overrides) - set(params))
  if unknown:
    raise ConfigError(f'Unknown hyperparameters {unknown} for objective {name!r}; valid: '
                      f'{sorted(params)}.')
  return ml_collections.ConfigDict({**params, **overrides})
