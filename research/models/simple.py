"""Logistic regression, MLP and CNN classifiers (the MNIST-1D paper's models, generalised).

Inputs are `x_BxF` feature vectors, `x_BxL` / `x_BxLxC` sequences or `x_BxHxWxC` images.
Every module returns logits `logits_BxK`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import layers


def _flatten(x: jnp.ndarray) -> jnp.ndarray:
  return x.reshape(x.shape[0], -1)


class LogisticRegression(nn.Module):
  """A single linear layer on the flattened input."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x_BxF = _flatten(layers.pixels_to_unit(x))
    return layers.dense(self.num_classes, 'embed', 'classes', name='head')(x_BxF)


class MLP(nn.Module):
  """Dense layers with an activation between them.

  With `residual=True`, each hidden layer whose width equals its input's adds its input
  back (`h = h + act(dense(h))`): the MNIST-1D paper's MLP is `hidden_sizes=(100, 100)`,
  `residual=True` (40 -> 100 -> 100 -> 10, 15,210 parameters).
  """
  num_classes: int
  hidden_sizes: Sequence[int] = (100, 100)
  residual: bool = True
  activation: str = 'relu'
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    act = layers.activation(self.activation)
    h_BxD = _flatten(layers.pixels_to_unit(x))
    for i, width in enumerate(self.hidden_sizes):
      update_BxH = act(layers.dense(width, 'embed', 'mlp', name=f'hidden_{i}')(h_BxD))
      update_BxH = nn.Dropout(self.dropout_rate, deterministic=not train)(update_BxH)
      if self.residual and h_BxD.shape[-1] == width:
        h_BxD = h_BxD + update_BxH
      else:
        h_BxD = update_BxH
    return layers.dense(self.num_classes, 'mlp', 'classes', name='head')(h_BxD)


class CNN(nn.Module):
  """Convolutions (1D for sequences, 2D for images), then dense layers.

  The MNIST-1D paper's CNN is the default: three convolutions of 25 channels,
  kernels 5/3/3, stride 2, padding 1, ReLU, then a linear layer on the flattened
  5x25 features (5,210 parameters).
  `pooling='flatten'` keeps the spatial layout (as the paper); `'mean'` averages over it.
  `conv_impl`: 'xla' (`nn.Conv`), 'im2col' (slices + one matmul, `layers.Im2colConv`: the
  same maths and parameters, faster to train on CPU) or 'auto' (im2col on CPU, xla on
  GPU/TPU).
  """
  num_classes: int
  features: Sequence[int] = (25, 25, 25)
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  padding: int = 1
  pooling: str = 'flatten'
  hidden_sizes: Sequence[int] = ()
  activation: str = 'relu'
  dropout_rate: float = 0.0
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if not (len(self.features) == len(self.kernel_sizes) == len(self.strides)):
      raise ValueError(
          f'CNN needs one kernel size and stride per conv layer; got features='
          f'{tuple(self.features)}, kernel_sizes={tuple(self.kernel_sizes)}, '
          f'strides={tuple(self.strides)}.')
    if self.pooling not in ('flatten', 'mean'):
      raise ValueError(f"CNN pooling must be 'flatten' or 'mean', got {self.pooling!r}.")
    act = layers.activation(self.activation)
    x = layers.pixels_to_unit(x)
    if x.ndim == 2:  # x_BxL: a single-channel sequence
      x = x[..., None]
    spatial_dims = x.ndim - 2  # 1 for x_BxLxC, 2 for x_BxHxWxC
    h = x
    for i, (width, k, s) in enumerate(zip(self.features, self.kernel_sizes, self.strides)):
      h = layers.conv(width, (k,) * spatial_dims, (s,) * spatial_dims,
                      [(self.padding, self.padding)] * spatial_dims, name=f'conv_{i}',
                      impl=self.conv_impl)(h)
      h = act(h)
    if self.pooling == 'flatten':
      h_BxD = _flatten(h)
    else:
      h_BxD = h.mean(axis=tuple(range(1, 1 + spatial_dims)))
    for i, width in enumerate(self.hidden_sizes):
      h_BxD = act(layers.dense(width, 'embed', 'mlp', name=f'hidden_{i}')(h_BxD))
      h_BxD = nn.Dropout(self.dropout_rate, deterministic=not train)(h_BxD)
    return layers.dense(self.num_classes, 'embed', 'classes', name='head')(h_BxD)
