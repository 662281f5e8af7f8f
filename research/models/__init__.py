"""Linen models, each registered by name. Adding a model is adding a module and one line here.

A model's config block is `{'name': ..., **hyperparameters}`; the hyperparameters are
exactly the module's dataclass fields (minus `num_classes`, which comes from the dataset).
"""
from __future__ import annotations

import dataclasses
import difflib

import flax.linen as nn
import ml_collections

from research.models.simple import CNN, MLP, LogisticRegression
from research.models.transformer import TransformerEncoder

MODELS: dict[str, type[nn.Module]] = {
    'logistic': LogisticRegression,
    'mlp': MLP,
    'cnn': CNN,
    'transformer': TransformerEncoder,
}

_FROM_DATA = ('num_classes', 'parent', 'name')


def hyperparameters(model_name: str) -> dict:
  """The tunable fields of a model with their defaults."""
  cls = _lookup(model_name)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in _FROM_DATA or not f.init:
      continue
    if f.default is not dataclasses.MISSING:
      value = f.default
    elif f.default_factory is not dataclasses.MISSING:
      value = f.default_factory()
    else:
      continue
    out[f.name] = tuple(value) if isinstance(value, list) else value
  return out


def model_config(model_name: str, **overrides) -> ml_collections.ConfigDict:
  """A config block holding every hyperparameter of `model_name`, defaults then overrides."""
  params = hyperparameters(model_name)
  unknown = sorted(set(overrides) - set(params))
  if unknown:
    raise ValueError(f'Unknown hyperparameters {unknown} for model {model_name!r}; '
                     f'valid: {sorted(params)}.')
  params.update(overrides)
  return ml_collections.ConfigDict({'name': model_name, **params})


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  cls = _lookup(model_cfg.name)
  kwargs = {k: v for k, v in model_cfg.items() if k != 'name'}
  valid = hyperparameters(model_cfg.name)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f'Unknown keys {unknown} in config.model for model '
                     f'{model_cfg.name!r}; valid keys: {sorted(valid)}.')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return cls(num_classes=num_classes, **kwargs)


def _lookup(model_name: str) -> type[nn.Module]:
  if model_name not in MODELS:
    close = difflib.get_close_matches(model_name, MODELS, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'Unknown model {model_name!r}. Available models: '
                     f'{sorted(MODELS)}.{hint}')
  return MODELS[model_name]
