"""Linen models, each registered by name. Adding a model is adding a module and one line here.

A model's config block is `{'name': ..., **hyperparameters}`; the hyperparameters are
exactly the module's dataclass fields (minus `num_classes`, which comes from the dataset
and the objective). A model class may also declare:

- `flops_per_example(self, input_shape) -> int`: training FLOPs per example, by the MFU
  convention (6 x multiply-accumulates of matmuls and convolutions, plus attention's
  12 x layers x seq_len x d_model per token; biases, norms and activations left out).
  Without it, runs report no MFU.
- `batch_inputs`: `{batch field: keyword argument}` the trainer passes to `__call__` when
  the batch has that field (the Transformer takes the tokenizer's `input_mask`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import ml_collections

from research import errors
from research.errors import ConfigError
from research.models import lora
from research.models.simple import CNN, MLP, LogisticRegression
from research.models.transformer import TransformerEncoder

MODELS: dict[str, type[nn.Module]] = {
    'logistic': LogisticRegression,
    'mlp': MLP,
    'cnn': CNN,
    'transformer': TransformerEncoder,
}

_FROM_DATA = ('num_classes', 'parent', 'name')


def register(name: str, cls: type[nn.Module]) -> None:
  """Adds a model from outside the package (a test, a notebook, your own project)."""
  MODELS[name] = cls


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
    raise ConfigError(f'Unknown hyperparameters {unknown} for model {model_name!r}; '
                      f'valid: {sorted(params)}.')
  params.update(overrides)
  return ml_collections.ConfigDict({'name': model_name, **params})


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int,
                lora_cfg: ml_collections.ConfigDict | None = None) -> nn.Module:
  """The model; with `lora_cfg.rank > 0`, with LoRA adapters (`research.models.lora`)."""
  cls = _lookup(model_cfg.name)
  kwargs = {k: v for k, v in model_cfg.items() if k != 'name'}
  valid = hyperparameters(model_cfg.name)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ConfigError(f'Unknown keys {unknown} in config.model for model '
                      f'{model_cfg.name!r}; valid keys: {sorted(valid)}.')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if lora.enabled(lora_cfg):
    return lora.with_lora(cls)(num_classes=num_classes, **kwargs, **lora.wrap_kwargs(lora_cfg))
  return cls(num_classes=num_classes, **kwargs)


def batch_inputs(model: nn.Module) -> dict[str, str]:
  return dict(getattr(model, 'batch_inputs', {}))


def model_flops_per_example(model: nn.Module | ml_collections.ConfigDict,
                            input_shape: Sequence[int], num_classes: int | None = None
                            ) -> int | None:
  """Training FLOPs for one example of `input_shape` (no batch axis); None when the model
  declares no `flops_per_example`. `model` is a built module, or a config block
  (`config.model`) plus `num_classes`."""
  if isinstance(model, ml_collections.ConfigDict):
    if num_classes is None:
      raise ValueError('model_flops_per_example(config.model, ...) needs num_classes (the '
                       "dataset's); or pass a built module.")
    model = build_model(model, num_classes)
  count = getattr(model, 'flops_per_example', None)
  if count is None:
    return None
  return int(count(tuple(int(n) for n in input_shape)))


def _lookup(model_name: str) -> type[nn.Module]:
  return errors.lookup(MODELS, model_name, 'model')
