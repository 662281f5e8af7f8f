"""Dense and conv layers whose parameters carry logical axis names.

Logical names (`embed`, `mlp`, `conv_window`, `classes`, ...) are mapped onto mesh axes by
`research.parallel.sharding`; the models never mention mesh axes themselves.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import precision
from research.models.precision import dots_intercepted  # noqa: F401  (layers.dots_intercepted)

default_kernel_init = nn.initializers.lecun_normal()
default_bias_init = nn.initializers.zeros_init()


def pixels_to_unit(x: jax.Array) -> jax.Array:
  """uint8 pixels (0..255) -> float32 in [0, 1]; any other input unchanged.

  The pipeline ships images as uint8 (a quarter of the bytes of float32, and no float
  conversion on the host). Every model calls this first, so the trainer, evaluation and a
  notebook's `model.apply` all see the same function; inside a jitted step the scaling
  fuses into the first layer.
  """
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x


def _dot(a: jax.Array, b: jax.Array, out_dtype: Any) -> jax.Array:
  # float32 accumulation whatever the operands (bfloat16 under the mixed-precision policy).
  return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def matmul(x_NxI: jax.Array, w_IxO: jax.Array, out_dtype: Any = None) -> jax.Array:
  """`x @ w` (any leading axes on x) whose kernel gradient XLA:CPU computes at full speed.

  The kernel gradient is `x^T g`, a dot contracting the leading (row) axis of both
  operands, and the input gradient `g w^T` contracts a column-major operand. XLA:CPU
  hands such "transposed" dots to Eigen at about half the speed of its YNNPACK dots, often
  after a slow transpose copy. Here both are row-major dots of an explicitly transposed
  operand (for the kernel gradient, the one with fewer columns, so the copy is small),
  kept apart by `optimization_barrier` so that XLA does not fold the transpose back into
  the dot. The same numbers up to float summation order. bfloat16 operands follow
  `research.models.precision`: float32 accumulation, forward and backward; the result is
  in `out_dtype` (default: x's dtype).
  """
  return _matmul(jnp.dtype(out_dtype or x_NxI.dtype), x_NxI, w_IxO)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _matmul(out_dtype, x, w):
  return _dot(x, w, out_dtype)


def _matmul_fwd(out_dtype, x, w):
  return _dot(x, w, out_dtype), (x, w)


def _matmul_bwd(out_dtype, residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  if x.dtype != jnp.float32:
    return precision.dense_gradients(x, w, g)
  x_NxI = x.reshape(-1, x.shape[-1])
  g_NxO = g.reshape(-1, g.shape[-1])
  barrier = jax.lax.optimization_barrier
  if x_NxI.shape[1] <= g_NxO.shape[1]:
    dw_IxO = _dot(barrier(x_NxI.T), g_NxO, w.dtype)
  else:
    dw_IxO = barrier(_dot(barrier(g_NxO.T), x_NxI, w.dtype)).T
  dx = _dot(g, barrier(w.T), x.dtype)  # w^T as a row-major copy (it is small)
  return dx, dw_IxO


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _matmul_dot_general(lhs, rhs, dimension_numbers, precision=None,
                        preferred_element_type=None):
  """`nn.Dense`'s dot_general (contract lhs's last axis with rhs's first) via `matmul`."""
  if dots_intercepted():
    # A leading unit axis: qwix falls back to matching shapes when it looks for weights, and
    # a (batch, width) activation shaped like a (width, width) kernel would pass for one.
    (lhs_contract, rhs_contract), batch = dimension_numbers
    y = jax.lax.dot_general(lhs[None], rhs, ((tuple(a + 1 for a in lhs_contract), rhs_contract),
                                             batch), precision=precision,
                            preferred_element_type=preferred_element_type)
    return y[0]
  del precision  # Dense passes None, the default `@` uses
  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (tuple(lhs_contract), tuple(rhs_contract)) != ((lhs.ndim - 1,), (0,)) or any(batch):
    raise ValueError(f'matmul handles x @ w only, got dimension_numbers={dimension_numbers}.')
  return matmul(lhs, rhs, preferred_element_type)


DENSE_IMPLS = ('auto', 'xla', 'matmul')


def dense(features: int, in_axis: str, out_axis: str, name: str | None = None,
          use_bias: bool = True, dtype=None, impl: str = 'auto', out_dtype=None) -> nn.Dense:
  """`nn.Dense` under `research.models.precision`'s policy (operands in `dtype`, float32
  accumulation, the result in `dtype` or `out_dtype`, e.g. float32 logits); impl 'matmul'
  routes it through `matmul` ('auto': on CPU only)."""
  if impl not in DENSE_IMPLS:
    raise ValueError(f'Unknown dense impl {impl!r}; accepted: {list(DENSE_IMPLS)}.')
  if impl == 'auto':
    impl = 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init, (in_axis, out_axis)),
      bias_init=nn.with_logical_partitioning(default_bias_init, (out_axis,)),
      name=name,
      dot_general=functools.partial(
          _matmul_dot_general if impl == 'matmul' else precision.dot_general,
          preferred_element_type=out_dtype),
  )


CONV_IMPLS = ('auto', 'xla', 'im2col')


class Im2colConv(nn.Module):
  """`nn.Conv`'s maths and parameters, computed as patch extraction plus one matmul.

  Same `kernel` (window..., in, out) and `bias` as `nn.Conv`, so a checkpoint serves both.
  XLA's CPU convolutions are slow to train (their kernel gradients first transpose the
  activations batch-last); as slices plus one matmul, a training step of a 3-conv CNN on
  28x28 images runs 1.2-1.5x faster on CPU (`python -m benchmarks.bench --models=cnn
  --set conv_impl=xla`, then `=im2col`). On GPU/TPU the library convolutions win.
  `padding` is explicit: one (low, high) pair per spatial dimension.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  padding: Sequence[tuple[int, int]]
  dtype: Any = None
  use_bias: bool = True
  kernel_init: Any = default_kernel_init
  bias_init: Any = default_bias_init

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    window = tuple(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init, window + (x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,)) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    x = jnp.pad(x, [(0, 0), *[tuple(p) for p in self.padding], (0, 0)])
    out_sizes = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], window, self.strides)]
    # One strided slice per window offset, concatenated window-major, channel-minor: the
    # order of kernel.reshape(-1, features).
    pieces = [x[(slice(None),) + tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n
                                       in zip(offset, self.strides, out_sizes))]
              for offset in itertools.product(*(range(k) for k in window))]
    patches = jnp.concatenate(pieces, axis=-1)
    if dots_intercepted():
      # The kernel unreshaped (a quantizer finds it by identity): window and channel
      # axes contracted together, the same sum as the matmul below.
      n = len(window) + 1
      patches = patches.reshape(patches.shape[:-1] + window + (x.shape[-1],))
      lhs_axes = tuple(range(patches.ndim - n, patches.ndim))
      y = jax.lax.dot_general(patches, kernel, ((lhs_axes, tuple(range(n))), ((), ())))
    else:
      y = matmul(patches, kernel.reshape(-1, self.features))
    return y + bias if bias is not None else y


def conv(features: int, kernel_size: Sequence[int], strides: Sequence[int], padding,
         name: str | None = None, dtype=None, impl: str = 'xla', use_bias: bool = True
         ) -> nn.Module:
  """A convolution: `nn.Conv` ('xla'), `Im2colConv` ('im2col'), or 'auto' (im2col on CPU)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'Unknown conv impl {impl!r}; accepted: {list(CONV_IMPLS)}.')
  if impl == 'auto':
    impl = 'im2col' if jax.default_backend() == 'cpu' else 'xla'
  # One name per window dimension: flax rejects a logical name repeated within an array.
  window_axes = ('conv_window',) + tuple(f'conv_window_{i}' for i in range(1, len(kernel_size)))
  kwargs = dict(
      kernel_size=tuple(kernel_size), strides=tuple(strides), padding=padding, dtype=dtype,
      use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(
          default_kernel_init, window_axes + ('conv_in', 'conv_out')),
      bias_init=nn.with_logical_partitioning(default_bias_init, ('conv_out',)),
      name=name)
  if impl == 'im2col':
    if isinstance(padding, str):
      raise ValueError(f"conv impl 'im2col' needs explicit (low, high) padding pairs, got "
                       f'{padding!r}.')
    return Im2colConv(features, **kwargs)
  return nn.Conv(features, conv_general_dilated=precision.conv_general_dilated, **kwargs)


def activation(name: str):
  """Looks up an activation by name, e.g. 'relu', 'gelu', 'tanh'."""
  fn = getattr(nn, name, None)
  if fn is None or not callable(fn):
    raise ValueError(f"Unknown activation {name!r}; use a flax.linen function name such as "
                     "'relu', 'gelu', 'silu', 'tanh'.")
  return fn
