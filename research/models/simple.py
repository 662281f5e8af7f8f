"""Logistic regression, MLP and CNN classifiers (the MNIST-1D paper's models, generalised).

Inputs are `x_BxF` feature vectors, `x_BxL` / `x_BxLxC` sequences or `x_BxHxWxC` images.
Every module returns float32 logits `logits_BxK`. `dtype='bfloat16'` applies the
mixed-precision policy of `research.models.precision` (float32 parameters, bfloat16
activations, every dot and convolution bfloat16 x bfloat16 with float32 accumulation).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import layers, precision


def _flatten(x: jnp.ndarray) -> jnp.ndarray:
  return x.reshape(x.shape[0], -1)


def _dense_macs(width: int, hidden_sizes: Sequence[int], num_classes: int) -> int:
  macs = 0
  for hidden in hidden_sizes:
    macs += width * hidden
    width = hidden
  return macs + width * num_classes


class LogisticRegression(nn.Module):
  """A single linear layer on the flattened input."""
  num_classes: int
  dtype: str = 'float32'

  def flops_per_example(self, input_shape: Sequence[int]) -> int:
    return 6 * _dense_macs(math.prod(input_shape), (), self.num_classes)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    dtype = precision.compute_dtype(self.dtype)
    x_BxF = _flatten(layers.pixels_to_unit(x))
    return layers.dense(self.num_classes, 'embed', 'classes', name='head', dtype=dtype,
                        out_dtype=jnp.float32)(x_BxF)


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
  dtype: str = 'float32'

  def flops_per_example(self, input_shape: Sequence[int]) -> int:
    return 6 * _dense_macs(math.prod(input_shape), self.hidden_sizes, self.num_classes)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    act = layers.activation(self.activation)
    dtype = precision.compute_dtype(self.dtype)
    h_BxD = _flatten(layers.pixels_to_unit(x)).astype(dtype)
    for i, width in enumerate(self.hidden_sizes):
      update_BxH = act(layers.dense(width, 'embed', 'mlp', name=f'hidden_{i}',
                                    dtype=dtype)(h_BxD))
      update_BxH = nn.Dropout(self.dropout_rate, deterministic=not train)(update_BxH)
      if self.residual and h_BxD.shape[-1] == width:
        h_BxD = h_BxD + update_BxH
      else:
        h_BxD = update_BxH
    return layers.dense(self.num_classes, 'mlp', 'classes', name='head', dtype=dtype,
                        out_dtype=jnp.float32)(h_BxD)


class CNN(nn.Module):
  """Convolutions (1D for sequences, 2D for images), then dense layers.

  The MNIST-1D paper's CNN is the default: three convolutions of 25 channels,
  kernels 5/3/3, stride 2, padding 1, ReLU, then a linear layer on the flattened
  5x25 features (5,210 parameters).
  `pooling='flatten'` keeps the spatial layout (as the paper); `'mean'` averages over it.
  `conv_impl`: 'xla' (`nn.Conv`), 'im2col' (slices + one matmul, `layers.Im2colConv`: the
  same maths and parameters) or 'auto', chosen per use from measurements
  (`python -m benchmarks.precision_bench`): im2col for training steps on CPU (XLA:CPU's
  convolution gradients are slow), the XLA convolution for evaluation, serving and export
  (its forward pass is faster) and on GPU/TPU.
  `norm='batch'` adds BatchNorm after each convolution, before the activation: batch
  statistics in training (over the global batch, on any mesh), running averages
  (`batch_stats`, updated with `batch_norm_momentum`) in evaluation.
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
  norm: str = 'none'
  batch_norm_momentum: float = 0.9
  dtype: str = 'float32'

  def flops_per_example(self, input_shape: Sequence[int]) -> int:
    if len(input_shape) == 1:  # x_L: one channel
      input_shape = (input_shape[0], 1)
    spatial, channels = list(input_shape[:-1]), input_shape[-1]
    macs = 0
    for width, k, s in zip(self.features, self.kernel_sizes, self.strides):
      spatial = [(n + 2 * self.padding - k) // s + 1 for n in spatial]
      macs += math.prod(spatial) * k ** len(spatial) * channels * width
      channels = width
    flat = channels * (math.prod(spatial) if self.pooling == 'flatten' else 1)
    return 6 * (macs + _dense_macs(flat, self.hidden_sizes, self.num_classes))

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if not (len(self.features) == len(self.kernel_sizes) == len(self.strides)):
      raise ValueError(
          f'CNN needs one kernel size and stride per conv layer; got features='
          f'{tuple(self.features)}, kernel_sizes={tuple(self.kernel_sizes)}, '
          f'strides={tuple(self.strides)}.')
    if self.pooling not in ('flatten', 'mean'):
      raise ValueError(f"CNN pooling must be 'flatten' or 'mean', got {self.pooling!r}.")
    if self.norm not in ('none', 'batch'):
      raise ValueError(f"CNN norm must be 'none' or 'batch', got {self.norm!r}.")
    act = layers.activation(self.activation)
    dtype = precision.compute_dtype(self.dtype)
    x = layers.pixels_to_unit(x).astype(dtype)
    if x.ndim == 2:  # x_BxL: a single-channel sequence
      x = x[..., None]
    spatial_dims = x.ndim - 2  # 1 for x_BxLxC, 2 for x_BxHxWxC
    conv_impl = self.conv_impl
    if conv_impl == 'auto':  # the same parameters either way, so the choice is free
      conv_impl = 'im2col' if train and jax.default_backend() == 'cpu' else 'xla'
    h = x
    for i, (width, k, s) in enumerate(zip(self.features, self.kernel_sizes, self.strides)):
      h = layers.conv(width, (k,) * spatial_dims, (s,) * spatial_dims,
                      [(self.padding, self.padding)] * spatial_dims, name=f'conv_{i}',
                      impl=conv_impl, use_bias=self.norm == 'none', dtype=dtype)(h)
      if self.norm == 'batch':
        h = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                         dtype=dtype,
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                 ('conv_out',)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                ('conv_out',)),
                         name=f'norm_{i}')(h)
      h = act(h)
    if self.pooling == 'flatten':
      h_BxD = _flatten(h)
    else:
      h_BxD = h.astype(jnp.float32).mean(axis=tuple(range(1, 1 + spatial_dims)))
    for i, width in enumerate(self.hidden_sizes):
      h_BxD = act(layers.dense(width, 'embed', 'mlp', name=f'hidden_{i}', dtype=dtype)(h_BxD))
      h_BxD = nn.Dropout(self.dropout_rate, deterministic=not train)(h_BxD)
    return layers.dense(self.num_classes, 'embed', 'classes', name='head', dtype=dtype,
                        out_dtype=jnp.float32)(h_BxD)
