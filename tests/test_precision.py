"""The mixed-precision policy (research.models.precision): bfloat16 operands with float32
accumulation in every dot and convolution, float32 parameters, float32 logits, and
training that follows float32's loss."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import models, objectives
from research.config import default_config
from research.models import layers, precision
from research.training import precision_audit, steps

NUM_CLASSES = 10
# (name, model, hyperparameters, one example's shape, LoRA rank)
CASES = [
    ('mlp', 'mlp', dict(hidden_sizes=(64, 64)), (40,), 0),
    ('cnn-im2col', 'cnn', dict(conv_impl='im2col'), (40,), 0),
    ('cnn-xla', 'cnn', dict(conv_impl='xla', norm='batch', pooling='mean', hidden_sizes=(32,)),
     (12, 12, 1), 0),
    ('transformer', 'transformer', dict(frontend='features', num_layers=2, num_heads=4,
                                        hidden_size=32, position_embedding='relative',
                                        pooling='mean', dropout_rate=0.1), (40,), 0),
    ('transformer-text-lora', 'transformer', dict(frontend='text', vocab_size=50, max_length=16,
                                                  num_layers=1, num_heads=2, hidden_size=32,
                                                  pooling='cls', attention_impl='reference',
                                                  dropout_rate=0.1), (16,), 4),
]


def _model(name: str, hp: dict, dtype: str, lora_rank: int) -> nn.Module:
  lora_cfg = None
  if lora_rank:
    lora_cfg = ml_collections.ConfigDict(dict(default_config().lora))
    lora_cfg.rank = lora_rank
    lora_cfg.targets = 'attention/(query|value)$'
  return models.build_model(models.model_config(name, dtype=dtype, **hp), NUM_CLASSES, lora_cfg)


def _batch(shape, batch_size: int = 8, seed: int = 0, vocab: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  if vocab:
    inputs = rng.integers(1, vocab, (batch_size,) + shape).astype(np.int32)
  else:
    inputs = rng.standard_normal((batch_size,) + shape).astype(np.float32)
  return {'inputs': inputs, 'labels': rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
          'mask': np.ones(batch_size, bool)}


def _train_step_text(model: nn.Module, batch: dict) -> str:
  """The StableHLO of the trainer's jitted step (the program handed to XLA)."""
  tx = optax.adam(1e-3)
  init = functools.partial(steps.create_train_state, model, tx, batch['inputs'][:1])
  state = jax.eval_shape(lambda: nn.unbox(init(jax.random.key(0))))
  step = jax.jit(functools.partial(steps.train_step, seed=0,
                                   objective=objectives.lookup('classification')()))
  return step.lower(state, batch).as_text()


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_every_dot_and_convolution_of_the_bf16_training_step_takes_bf16_operands(case):
  _, name, hp, shape, lora_rank = case
  batch = _batch(shape, vocab=hp.get('vocab_size', 0))
  counts = {dtype: precision_audit.stablehlo_dots(
      _train_step_text(_model(name, hp, dtype, lora_rank), batch))
      for dtype in ('float32', 'bfloat16')}
  # Forward and backward: at least two dots (or convolutions) per layer.
  assert sum(counts['float32'].values()) >= 6
  assert sum(counts['bfloat16'].values()) == sum(counts['float32'].values())
  assert set(counts['float32']) <= {('dot', 'f32', 'f32'), ('convolution', 'f32', 'f32')}
  assert set(counts['bfloat16']) <= {('dot', 'bf16', 'bf16'),
                                     ('convolution', 'bf16', 'bf16')}, counts['bfloat16']
  if hp.get('conv_impl') == 'xla':
    assert counts['bfloat16'][('convolution', 'bf16', 'bf16')] >= 3  # forward, d_input, d_kernel


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bf16_keeps_float32_params_and_returns_float32_logits(case):
  _, name, hp, shape, lora_rank = case
  batch = _batch(shape, vocab=hp.get('vocab_size', 0))
  model = _model(name, hp, 'bfloat16', lora_rank)
  variables = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch['inputs'])))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
  logits = jax.eval_shape(lambda v: model.apply(v, batch['inputs']), variables)
  assert logits.dtype == jnp.float32


# The deciles of a standard normal.
_DECILES = np.array([-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816])


def _teacher_batches(shape, steps_: int, batch_size: int = 64):
  """A learnable task for every family: the label is the decile of the input's
  (normalised) sum, ten balanced classes."""
  rng = np.random.default_rng(1)
  for _ in range(steps_):
    x_BxF = rng.standard_normal((batch_size, int(np.prod(shape)))).astype(np.float32)
    z_B = x_BxF.sum(-1) / np.sqrt(x_BxF.shape[1])
    yield {'inputs': x_BxF.reshape((batch_size,) + shape),
           'labels': np.searchsorted(_DECILES, z_B).astype(np.int32),
           'mask': np.ones(batch_size, bool)}


def _losses(name: str, hp: dict, dtype: str, shape, num_steps: int) -> np.ndarray:
  model = _model(name, hp, dtype, 0)
  batches = list(_teacher_batches(shape, num_steps))
  state = nn.unbox(steps.create_train_state(model, optax.adam(3e-3), batches[0]['inputs'][:1],
                                            jax.random.key(0)))
  step = jax.jit(functools.partial(steps.train_step, seed=0,
                                   objective=objectives.lookup('classification')()))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(metrics['loss'])
  return np.asarray(jax.device_get(losses), np.float64)


@pytest.mark.slow  # 600 training steps: make test-slow
@pytest.mark.parametrize('case', [CASES[0], CASES[1], CASES[3]], ids=['mlp', 'cnn', 'transformer'])
def test_bf16_training_follows_float32_within_one_percent_over_100_steps(case):
  _, name, hp, shape, _ = case
  f32 = _losses(name, hp, 'float32', shape, 100)
  bf16 = _losses(name, hp, 'bfloat16', shape, 100)
  assert f32[-10:].mean() < 0.8 * f32[:10].mean()  # it learns, so the comparison means something
  # Mean loss over the run and over its last ten steps, each within 1% of float32's.
  assert abs(bf16.mean() - f32.mean()) <= 0.01 * f32.mean()
  assert abs(bf16[-10:].mean() - f32[-10:].mean()) <= 0.01 * f32[-10:].mean()


def test_mixed_einsum_gradients_match_float32_gradients_of_the_rounded_operands():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((3, 5, 4)), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal((3, 4, 6)), jnp.bfloat16)
  spec = 'bij,bjk->bik'

  def loss(fn, a, b):
    return (fn(a, b).astype(jnp.float32) ** 2).sum()
  mixed = jax.grad(functools.partial(loss, lambda a, b: precision.einsum(spec, a, b)),
                   argnums=(0, 1))(a, b)
  exact = jax.grad(functools.partial(loss, lambda a, b: jnp.einsum(spec, a, b)),
                   argnums=(0, 1))(a.astype(jnp.float32), b.astype(jnp.float32))
  for got, want in zip(mixed, exact):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=3e-2, atol=3e-2)


def test_matmul_bf16_forward_accumulates_in_float32():
  # 4096 ones summed: a bfloat16 accumulator stalls at 256 (its spacing there is 2).
  x = jnp.ones((1, 4096), jnp.bfloat16)
  w = jnp.ones((4096, 1), jnp.bfloat16)
  assert float(layers.matmul(x, w, jnp.float32)[0, 0]) == 4096.0
  assert float(precision.einsum('ik,kj->ij', x, w, out_dtype=jnp.float32)[0, 0]) == 4096.0


def test_precision_einsum_names_an_index_it_cannot_differentiate():
  with pytest.raises(ValueError, match=r"index \['j'\]"):
    jax.grad(lambda a, b: precision.einsum('ij,ik->ik', a, b).astype(jnp.float32).sum())(
        jnp.ones((2, 3), jnp.bfloat16), jnp.ones((2, 4), jnp.bfloat16))


def test_unknown_compute_dtype_is_named():
  with pytest.raises(ValueError, match=r"'float16'.*accepted: \['float32', 'bfloat16'\]"):
    precision.compute_dtype('float16')


def test_cnn_auto_conv_impl_trains_with_im2col_and_evaluates_with_xla_on_cpu():
  model = _model('cnn', {}, 'float32', 0)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 40)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  train_text = jax.jit(lambda v: model.apply(v, x, train=True)).lower(variables).as_text()
  eval_text = jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables).as_text()
  assert 'stablehlo.convolution' not in train_text and 'stablehlo.dot_general' in train_text
  assert 'stablehlo.convolution' in eval_text
  np.testing.assert_allclose(model.apply(variables, x, train=True),
                             model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)
