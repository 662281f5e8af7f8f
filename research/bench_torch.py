"""PyTorch twins of the flax models, for `research.bench`: same shapes, same parameter counts.

Each twin is built from the same hyperparameters as its flax model (the `config.model`
block), and runs the same step a PyTorch user would write: forward, cross-entropy, backward,
`torch.optim.Adam`. PyTorch is optional (`pip install -e '.[bench]'`); only this module
imports it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
  if name == 'gelu':  # flax's nn.gelu is the tanh approximation
    return lambda x: F.gelu(x, approximate='tanh')
  fn = getattr(F, name, None)
  if fn is None:
    raise ValueError(f'No PyTorch twin for activation {name!r}.')
  return fn


class MLP(nn.Module):
  """Twin of `research.models.simple.MLP` (residual where a layer keeps its width)."""

  def __init__(self, in_features: int, num_classes: int, hidden_sizes: Sequence[int],
               residual: bool, activation: str, **unused):
    super().__init__()
    self.act = _activation(activation)
    self.residual = residual
    widths = [in_features, *hidden_sizes]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x.flatten(1)
    for layer in self.hidden:
      update = self.act(layer(h))
      h = h + update if self.residual and h.shape[-1] == update.shape[-1] else update
    return self.head(h)


class CNN(nn.Module):
  """Twin of `research.models.simple.CNN`; inputs are channels-first (N, C, L) or (N, C, H, W)."""

  def __init__(self, input_shape: Sequence[int], num_classes: int, features: Sequence[int],
               kernel_sizes: Sequence[int], strides: Sequence[int], padding: int,
               pooling: str, hidden_sizes: Sequence[int], activation: str, **unused):
    super().__init__()
    self.act = _activation(activation)
    self.pooling = pooling
    spatial = list(input_shape[:-1]) if len(input_shape) > 1 else list(input_shape)
    channels = input_shape[-1] if len(input_shape) > 1 else 1
    conv_cls = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    convs = []
    for width, k, s in zip(features, kernel_sizes, strides):
      convs.append(conv_cls(channels, width, k, stride=s, padding=padding))
      spatial = [(n + 2 * padding - k) // s + 1 for n in spatial]
      channels = width
    self.convs = nn.ModuleList(convs)
    flat = channels * math.prod(spatial) if pooling == 'flatten' else channels
    widths = [flat, *hidden_sizes]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x
    for conv in self.convs:
      h = self.act(conv(h))
    h = h.flatten(1) if self.pooling == 'flatten' else h.mean(dim=tuple(range(2, h.ndim)))
    for layer in self.hidden:
      h = self.act(layer(h))
    return self.head(h)


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


# ---- Registry: family name -> builder(hyperparameters, input_shape, num_classes) ----

def _build_mlp(hp: dict[str, Any], input_shape, num_classes: int) -> nn.Module:
  return MLP(int(np.prod(input_shape)), num_classes, **hp)


def _build_cnn(hp: dict[str, Any], input_shape, num_classes: int) -> nn.Module:
  return CNN(tuple(input_shape), num_classes, **hp)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    'mlp': _build_mlp,
    'cnn': _build_cnn,
}


def build(family: str, hp: dict[str, Any], input_shape: Sequence[int],
          num_classes: int) -> nn.Module:
  """The twin of flax model `family` with hyperparameters `hp` (a `config.model` block)."""
  if family not in BUILDERS:
    raise ValueError(f'No PyTorch twin for model {family!r}; twins exist for {sorted(BUILDERS)}.')
  hp = {k: v for k, v in hp.items() if k != 'name'}
  return BUILDERS[family](hp, input_shape, num_classes)


def to_torch_layout(family: str, inputs: np.ndarray) -> np.ndarray:
  """Flax takes channels-last inputs; the torch twins take channels-first."""
  if family == 'cnn':
    if inputs.ndim == 2:  # x_BxL -> (B, 1, L)
      return inputs[:, None, :]
    return np.moveaxis(inputs, -1, 1)
  return inputs


def make_runner(family: str, hp: dict[str, Any], inputs: np.ndarray, labels: np.ndarray,
                num_classes: int, learning_rate: float = 1e-3, seed: int = 0):
  """(run(num_steps), num_params): `run` trains `num_steps` Adam steps on one fixed batch."""
  torch.manual_seed(seed)
  model = build(family, hp, inputs.shape[1:], num_classes)
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
  x = torch.from_numpy(np.ascontiguousarray(to_torch_layout(family, inputs)))
  if x.is_floating_point():
    x = x.float()
  y = torch.from_numpy(labels.astype(np.int64))

  def run(num_steps: int) -> float:
    for _ in range(num_steps):
      optimizer.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(x), y)
      loss.backward()
      optimizer.step()
    return float(loss)

  return run, param_count(model)
