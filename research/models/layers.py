"""Dense and conv layers whose parameters carry logical axis names.

Logical names (`embed`, `mlp`, `conv_window`, `classes`, ...) are mapped onto mesh axes by
`research.sharding`; the models never mention mesh axes themselves.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

default_kernel_init = nn.initializers.lecun_normal()
default_bias_init = nn.initializers.zeros_init()


def dense(features: int, in_axis: str, out_axis: str, name: str | None = None,
          use_bias: bool = True, dtype=None) -> nn.Dense:
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init, (in_axis, out_axis)),
      bias_init=nn.with_logical_partitioning(default_bias_init, (out_axis,)),
      name=name,
  )


def conv(features: int, kernel_size: Sequence[int], strides: Sequence[int], padding,
         name: str | None = None, dtype=None) -> nn.Conv:
  window_axes = ('conv_window',) * len(kernel_size)
  return nn.Conv(
      features,
      kernel_size=tuple(kernel_size),
      strides=tuple(strides),
      padding=padding,
      dtype=dtype,
      kernel_init=nn.with_logical_partitioning(
          default_kernel_init, window_axes + ('conv_in', 'conv_out')),
      bias_init=nn.with_logical_partitioning(default_bias_init, ('conv_out',)),
      name=name,
  )


def activation(name: str):
  """Looks up an activation by name, e.g. 'relu', 'gelu', 'tanh'."""
  fn = getattr(nn, name, None)
  if fn is None or not callable(fn):
    raise ValueError(f"Unknown activation {name!r}; use a flax.linen function name such as "
                     "'relu', 'gelu', 'silu', 'tanh'.")
  return fn
