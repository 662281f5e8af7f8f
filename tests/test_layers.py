"""layers.matmul: x @ w with CPU-friendly gradients; the same function and gradients."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import layers


def _grads(mm, x, w, g):
  return jax.vjp(mm, x, w)[1](g)


@pytest.mark.parametrize('x_shape,out', [((48, 16), 40),     # fewer inputs than outputs
                                         ((48, 40), 16),     # more inputs than outputs
                                         ((3, 7, 24), 24)])  # leading axes, as in [B, L, D]
def test_matmul_is_x_at_w_with_the_same_gradients(x_shape, out):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((x_shape[-1], out)), jnp.float32)
  g = jnp.asarray(rng.standard_normal(x_shape[:-1] + (out,)), jnp.float32)
  np.testing.assert_allclose(jax.jit(layers.matmul)(x, w), x @ w, rtol=1e-6)
  dx, dw = jax.jit(lambda *a: _grads(layers.matmul, *a))(x, w, g)
  want_dx, want_dw = _grads(lambda x, w: x @ w, x, w, g)
  assert dx.shape == x.shape and dw.shape == w.shape
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)


def _dot_dims(fn, *args) -> list[tuple[str, str]]:
  """(lhs, rhs) contracting dims of every dot in the compiled HLO."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  return re.findall(r' dot\([^)]*\), lhs_contracting_dims=\{(\d+)\}, '
                    r'rhs_contracting_dims=\{(\d+)\}', text)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='about XLA:CPU dot layouts')
@pytest.mark.parametrize('n,i,o', [(512, 64, 256), (512, 256, 64)])
def test_every_training_dot_is_row_major(n, i, o):
  """XLA:CPU's fast (YNNPACK) dots take row-major operands: lhs contracts its last axis,
  rhs its first. Plain `x @ w` gives transposed gradient dots; `matmul` does not."""
  x, w = jnp.ones((n, i)), jnp.ones((i, o))

  def train_dots(mm):
    return _dot_dims(jax.grad(lambda x, w: (mm(x, w) ** 2).sum(), argnums=(0, 1)), x, w)

  assert set(train_dots(layers.matmul)) == {('1', '0')}
  assert len(train_dots(layers.matmul)) == 3  # forward, input and kernel gradients
  assert set(train_dots(lambda x, w: x @ w)) != {('1', '0')}  # what this fixes


def test_dense_impls_share_params_and_function():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5, 12)), jnp.float32)
  results = {}
  for impl in ('xla', 'matmul'):
    dense = layers.dense(8, 'embed', 'mlp', impl=impl)
    params = nn.unbox(dense.init(jax.random.key(0), x))['params']
    loss = lambda p: (dense.apply({'params': p}, x) ** 2).sum()  # noqa: B023
    results[impl] = (params, dense.apply({'params': params}, x), jax.grad(loss)(params))
  (p_xla, y_xla, g_xla), (p_mm, y_mm, g_mm) = results['xla'], results['matmul']
  jax.tree.map(np.testing.assert_array_equal, p_xla, p_mm)
  np.testing.assert_allclose(y_mm, y_xla, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_mm, g_xla)


def test_unknown_dense_impl_is_named():
  with pytest.raises(ValueError, match="Unknown dense impl 'fast'.*'auto', 'xla', 'matmul'"):
    layers.dense(8, 'embed', 'mlp', impl='fast')
