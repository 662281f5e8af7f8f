"""Mixed precision: bfloat16 operands, float32 accumulation, in every dot and convolution.

The policy every model follows when its `dtype` is 'bfloat16':
- parameters stay float32 (the optimizer updates float32 weights);
- activations are bfloat16; each layer casts its kernel to bfloat16 at the point of use;
- every dot (`einsum`, `dot_general`, `layers.matmul`) and convolution takes bfloat16
  operands and accumulates in float32 (`preferred_element_type=float32`), then rounds the
  result to bfloat16. Matrix units want exactly this: TPU MXUs, GPU tensor cores and the
  CPU's AMX tiles all multiply bfloat16 pairs into float32 sums;
- the backward pass does the same: the incoming gradient is rounded to bfloat16 and both
  gradient dots accumulate in float32. A custom VJP is needed for that: JAX's own transpose
  of a dot with a float32 `preferred_element_type` multiplies the float32 cotangent by the
  bfloat16 operand, and XLA then converts both to float32 (a float32 dot, on CPU 4x slower
  than the bfloat16 one);
- softmax, normalisation statistics, pooled means, the logits and the loss are float32.

With float32 operands every function here is the plain float32 operation, so float32 runs
compute exactly what they computed before this module existed.
"""
from __future__ import annotations

import functools
import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ('float32', 'bfloat16')

_LAX_DOT_GENERAL = jax.lax.dot_general
_LAX_DOT_GENERAL_CODE = jax.lax.dot_general.__code__


def compute_dtype(name: str) -> jnp.dtype:
  """'float32' or 'bfloat16' as a dtype; anything else is an error naming the choices."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'Unknown compute dtype {name!r}; accepted: {list(COMPUTE_DTYPES)}.')
  return jnp.dtype(name)


def dots_intercepted() -> bool:
  """True while a quantizer (qwix) has replaced `jax.lax.dot_general` (the function, or
  its code object, which is how qwix patches it) with its own.

  qwix quantizes the dots it sees through that public name and recognises a weight by
  identity with the parameter. A custom VJP (here, and `layers.matmul`'s) would hide the
  dot from it, so the layers then call plain `jax.lax.dot_general`/`jnp.einsum`: same maths.
  """
  dot_general = jax.lax.dot_general
  return dot_general is not _LAX_DOT_GENERAL or dot_general.__code__ is not _LAX_DOT_GENERAL_CODE


def _accumulate_f32(spec: str, a: jax.Array, b: jax.Array, out_dtype: Any) -> jax.Array:
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _canonical_einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype: Any) -> jax.Array:
  """`_accumulate_f32` with both operands first copied into a dot's canonical layout:
  a as (batch, free, contracted), b as (batch, contracted, free).

  A gradient einsum contracts axes that are not minor (e.g. the attention probabilities
  over queries for dV). XLA would fold the transpose into the dot, and XLA:CPU runs such a
  non-canonical bfloat16 dot in its generic thunk, which has no bfloat16 x bfloat16 ->
  float32 kernel; the explicit copies (kept by `optimization_barrier`) give it a plain
  row-major dot that its AMX (YNNPACK) path takes.
  """
  inputs, out = spec.split('->')
  a_idx, b_idx = inputs.split(',')
  batch = [c for c in out if c in a_idx and c in b_idx]
  contract = [c for c in a_idx if c in b_idx and c not in out]
  a_free = [c for c in out if c in a_idx and c not in b_idx]
  b_free = [c for c in out if c in b_idx and c not in a_idx]

  def arrange(x, idx, order):
    if list(idx) == order:
      return x
    return jax.lax.optimization_barrier(jnp.transpose(x, [idx.index(c) for c in order]))

  a_t = arrange(a, a_idx, batch + a_free + contract)
  b_t = arrange(b, b_idx, batch + contract + b_free)
  y_order = batch + a_free + b_free
  canonical = (f"{''.join(batch + a_free + contract)},{''.join(batch + contract + b_free)}"
               f"->{''.join(y_order)}")
  y = _accumulate_f32(canonical, a_t, b_t, out_dtype)
  if y_order == list(out):
    return y
  return jnp.transpose(jax.lax.optimization_barrier(y), [y_order.index(c) for c in out])


def dense_gradients(x: jax.Array, w: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dx, dw) of `x @ w` (any leading axes on x) from the bfloat16 output gradient `g`."""
  x_NxI, g_NxO = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dw_IxO = _accumulate_f32('ni,no->io', x_NxI, g_NxO, w.dtype)
  dx = _accumulate_f32('no,io->ni', g_NxO, w, x.dtype)
  return dx.reshape(x.shape), dw_IxO


def _gradient_specs(spec: str) -> tuple[str, str]:
  """For 'A,B->C': the einsums giving dA from (dC, B) and dB from (A, dC)."""
  inputs, out = spec.split('->')
  a, b = inputs.split(',')
  for name, operand, other in (('first', a, b), ('second', b, a)):
    lonely = set(operand) - set(other) - set(out)
    if lonely:  # summed over inside one operand: its gradient would be a broadcast
      raise ValueError(f'precision.einsum({spec!r}): index {sorted(lonely)} of the {name} '
                       'operand appears nowhere else; sum it out before the einsum.')
  return f'{out},{b}->{a}', f'{a},{out}->{b}'


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_einsum(spec: str, out_dtype: Any, a: jax.Array, b: jax.Array) -> jax.Array:
  return _accumulate_f32(spec, a, b, out_dtype)


def _mixed_einsum_fwd(spec, out_dtype, a, b):
  return _accumulate_f32(spec, a, b, out_dtype), (a, b)


def _mixed_einsum_bwd(spec, out_dtype, residuals, g):
  a, b = residuals
  da_spec, db_spec = _gradient_specs(spec)
  g = g.astype(a.dtype)  # bfloat16 operands in the gradient dots too
  return _canonical_einsum(da_spec, g, b, a.dtype), _canonical_einsum(db_spec, a, g, b.dtype)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype: Any = None) -> jax.Array:
  """Two-operand `jnp.einsum` under the policy: float32 accumulation, result in
  `out_dtype` (default: the operands' dtype), gradients by the same kind of dot.

  Indices must be explicit (no '...'), and each index of an operand must appear in the
  other operand or in the output (true of every projection and attention product).
  """
  if a.dtype != b.dtype:
    raise ValueError(f'precision.einsum({spec!r}): operands of one dtype expected (cast at '
                     f'the point of use), got {a.dtype} and {b.dtype}.')
  out_dtype = jnp.dtype(out_dtype or a.dtype)
  if a.dtype == jnp.float32 and out_dtype == jnp.float32:
    return jnp.einsum(spec, a, b)
  if dots_intercepted():  # a quantizer must see the dot and the parameter itself
    return _accumulate_f32(spec, a, b, out_dtype)
  return _mixed_einsum(spec, out_dtype, a, b)


def dot_general_spec(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> str:
  """The einsum spec of `lax.dot_general` (output: batch, lhs free, rhs free axes)."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  lhs = [next(letters) for _ in range(lhs_ndim)]
  rhs = [next(letters) for _ in range(rhs_ndim)]
  for i, j in zip(list(lhs_contract) + list(lhs_batch), list(rhs_contract) + list(rhs_batch)):
    rhs[j] = lhs[i]
  batch = [lhs[i] for i in lhs_batch]
  lhs_free = [lhs[i] for i in range(lhs_ndim) if i not in (*lhs_contract, *lhs_batch)]
  rhs_free = [rhs[j] for j in range(rhs_ndim) if j not in (*rhs_contract, *rhs_batch)]
  return f"{''.join(lhs)},{''.join(rhs)}->{''.join(batch + lhs_free + rhs_free)}"


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """A drop-in `dot_general` for flax layers (`nn.Dense(dot_general=...)`) under the policy."""
  if lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32 or dots_intercepted():
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return einsum(dot_general_spec(dimension_numbers, lhs.ndim, rhs.ndim), lhs, rhs,
                out_dtype=preferred_element_type)


def _conv(lhs, rhs, kwargs, preferred_element_type=None):
  return jax.lax.conv_general_dilated(lhs, rhs, **dict(kwargs),
                                      preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mixed_conv(kwargs: tuple, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  return _conv(lhs, rhs, kwargs, jnp.float32).astype(lhs.dtype)


def _mixed_conv_fwd(kwargs, lhs, rhs):
  return _mixed_conv(kwargs, lhs, rhs), (lhs, rhs)


def _mixed_conv_bwd(kwargs, residuals, g):
  lhs, rhs = residuals
  # JAX's transposed convolutions of a bfloat16 convolution: bfloat16 operands, which GPUs
  # and TPUs accumulate in float32. (XLA:CPU computes every convolution in float32 whatever
  # its operand types; on CPU the bfloat16 route is `layers.Im2colConv`, a matmul.)
  _, pullback = jax.vjp(lambda x, w: _conv(x, w, kwargs), lhs, rhs)
  return pullback(g.astype(lhs.dtype))


_mixed_conv.defvjp(_mixed_conv_fwd, _mixed_conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """A drop-in `conv_general_dilated` for `nn.Conv` under the policy."""
  kwargs = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                precision=precision)
  if lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32 or dots_intercepted():
    return _conv(lhs, rhs, tuple(kwargs.items()), preferred_element_type)
  return _mixed_conv(_hashable(kwargs), lhs, rhs)


def _hashable(kwargs: dict) -> tuple:
  def freeze(v):  # lists (e.g. padding pairs) to tuples; named tuples kept as they are
    if isinstance(v, list) or type(v) is tuple:
      return tuple(freeze(x) for x in v)
    return v
  return tuple((k, freeze(v)) for k, v in kwargs.items())
