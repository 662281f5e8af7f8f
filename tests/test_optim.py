"""Parameter groups: freezing (no updates, no optimizer state), learning-rate multipliers,
weight decay on or off, and clear errors for rules that match nothing."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from research import config as config_lib
from research import models, training
from research.errors import ConfigError
from research.training import experiment, optim
from tests.helpers import tiny_config


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _flat(params) -> dict[str, np.ndarray]:
  return {optim.path_of(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_frozen_parameters_are_bitwise_unchanged_after_50_steps(tmp_path):
  """A linear probe on the CNN: every conv frozen, only the head trains."""
  config = tiny_config('cnn', steps=50)
  config.checkpoint.async_save = False
  config.optimizer.freeze = '^conv_'
  results = training.train_and_evaluate(config, str(tmp_path / 'probe'))
  exp = experiment.build(config, eval_split_names=[])
  initial = _flat(exp.initial_state().params)
  final = _flat(ocp.StandardCheckpointer().restore(
      str(tmp_path / 'probe' / 'checkpoints' / '50' / 'state'))['params'])
  frozen = [p for p in initial if p.startswith('conv_')]
  trained = [p for p in initial if not p.startswith('conv_')]
  assert len(frozen) == 6 and trained == ['head/bias', 'head/kernel']
  for p in frozen:
    assert np.array_equal(initial[p], final[p]), p
  for p in trained:
    assert not np.array_equal(initial[p], final[p]), p
  assert results['test']['accuracy'] > 0.1

  full_state = experiment.build(tiny_config('cnn', steps=50), eval_split_names=[]).abstract_state
  with_freeze, without = _nbytes(exp.abstract_state.opt_state), _nbytes(full_state.opt_state)
  params = _nbytes(exp.abstract_state.params)
  print(f'optimizer state: {without:,} bytes without freezing, {with_freeze:,} bytes with the '
        f'convolutions frozen (params {params:,} bytes; the head is '
        f'{_nbytes([exp.abstract_state.params["head"]]):,})')
  head = _nbytes([exp.abstract_state.params['head']])
  assert without >= 2 * params  # Adam: two moments per parameter
  assert with_freeze < 2 * head + 64  # only the head's moments (and step counters)


def test_optax_masked_alone_would_leak_the_raw_gradient():
  """Why freezing uses set_to_zero: optax.masked(adam) passes the gradient through as the
  update of masked-out leaves; our optimizer returns exactly zero there."""
  params = {'frozen': np.ones(3, np.float32), 'free': np.ones(3, np.float32)}
  grads = {'frozen': np.full(3, 0.5, np.float32), 'free': np.full(3, 0.5, np.float32)}
  naive = optax.masked(optax.adam(0.1), {'frozen': False, 'free': True})
  leaked, _ = naive.update(grads, naive.init(params), params)
  assert np.all(np.asarray(leaked['frozen']) == 0.5)
  opt = config_lib.default_config().optimizer
  opt.learning_rate, opt.freeze = 0.1, '^frozen'
  tx = optim.create_optimizer(opt, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates['frozen']) == 0.0)
  assert np.all(np.asarray(updates['free']) != 0.0)


def test_learning_rate_multipliers_scale_the_update_exactly():
  """SGD without momentum: update = -lr * mult * grad, per group, first match wins."""
  model = models.build_model(models.model_config('mlp', hidden_sizes=(16,)), 10)
  opt = config_lib.default_config().optimizer
  opt.name, opt.momentum, opt.learning_rate = 'sgd', 0.0, 0.5
  opt.lr_multipliers = '^head/kernel=10; ^head/=0; ^hidden_0/=0.25'
  params = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 40), np.float32))['params'])
  grads = jax.tree.map(lambda p: np.ones_like(p), params)
  tx = optim.create_optimizer(opt, 10, params)
  updates = _flat(tx.update(grads, tx.init(params), params)[0])
  expected = {'head/kernel': -5.0, 'head/bias': 0.0, 'hidden_0/kernel': -0.125,
              'hidden_0/bias': -0.125}
  assert set(updates) == set(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(updates[path], np.full_like(updates[path], value), path)


def test_no_weight_decay_group():
  params = {'dense': {'kernel': np.ones((2, 2), np.float32), 'bias': np.ones(2, np.float32)}}
  zero_grads = jax.tree.map(np.zeros_like, params)
  opt = config_lib.default_config().optimizer
  opt.name, opt.learning_rate, opt.weight_decay, opt.no_weight_decay = 'adamw', 0.1, 0.5, 'bias$'
  tx = optim.create_optimizer(opt, 10, params)
  updates = tx.update(zero_grads, tx.init(params), params)[0]
  np.testing.assert_allclose(updates['dense']['kernel'], -0.1 * 0.5 * params['dense']['kernel'])
  np.testing.assert_array_equal(updates['dense']['bias'], 0.0)


def test_without_groups_the_optimizer_is_the_plain_chain():
  """No groups: the same optax chain (and state layout) as a plain Adam, so runs and
  checkpoints from before parameter groups existed are unchanged."""
  params = {'w': np.ones(4, np.float32)}
  opt = config_lib.default_config().optimizer
  tx = optim.create_optimizer(opt, 10, params)
  plain = optax.chain(optax.adam(optim.learning_rate_schedule(opt, 10)))
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(plain.init(params))


@pytest.mark.parametrize('key,value,match', [
    ('freeze', '^encoder/', r"freeze rule '\^encoder/' matches no parameter. Parameter paths: "
                            r'conv_0/bias'),
    ('lr_multipliers', '^head/=x', r"lr_multipliers entry '\^head/=x' must be 'REGEX=NUMBER'"),
    ('lr_multipliers', '^head/=-1', 'must be >= 0'),
    ('no_weight_decay', '(', 'not a valid regex'),
])
def test_bad_group_rules_are_named(key, value, match):
  config = tiny_config('cnn')
  config.optimizer[key] = value
  with pytest.raises(ConfigError, match=match):
    experiment.build(config, eval_split_names=[])


def test_frozen_params_do_not_count_in_the_clipping_norm():
  params = {'a': np.ones(1, np.float32), 'b': np.ones(1, np.float32)}
  grads = {'a': np.full(1, 100.0, np.float32), 'b': np.full(1, 1.0, np.float32)}
  opt = config_lib.default_config().optimizer
  opt.name, opt.momentum, opt.learning_rate = 'sgd', 0.0, 1.0
  opt.grad_clip_norm, opt.freeze = 2.0, '^a'
  tx = optim.create_optimizer(opt, 10, params)
  updates = tx.update(grads, tx.init(params), params)[0]
  np.testing.assert_allclose(updates['b'], [-1.0])  # norm 1 < 2: not clipped by a's 100


def test_frozen_parameters_get_no_gradient_computation():
  """A linear probe's step (convolutions frozen) differentiates the head only: its lowered
  program has no backward dots or convolutions for the frozen layers, and its update is the
  update of the step that computes every gradient and lets the optimizer zero them."""
  import functools
  import re as re_lib
  from research.training import steps
  config = tiny_config('cnn', steps=2)
  config.optimizer.freeze = '^conv_'
  exp = experiment.build(config, eval_split_names=[])
  state = exp.initial_state()
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.standard_normal((config.batch_size,) + exp.example_shape
                                         ).astype(np.float32),
           'labels': rng.integers(0, 10, config.batch_size).astype(np.int32),
           'mask': np.ones(config.batch_size, bool)}
  mask = optim.frozen_mask(config.optimizer, state.params)
  assert sorted(k for k, v in _flat(mask).items() if not v) == ['head/bias', 'head/kernel']

  def step(frozen):
    return jax.jit(functools.partial(steps.train_step, objective=exp.objective,
                                     seed=config.seed, frozen=frozen))

  def matmuls(frozen) -> int:
    text = step(frozen).lower(state, batch).as_text()
    return len(re_lib.findall(r'stablehlo\.(dot_general|convolution)', text))
  with_mask, without = matmuls(mask), matmuls(None)
  print(f'dots and convolutions in the probe step: {with_mask} with the stop, {without} without')
  assert with_mask < without
  new_masked, metrics_masked = step(mask)(state, batch)
  new_full, metrics_full = step(None)(state, batch)
  for path, value in _flat(new_full.params).items():
    np.testing.assert_allclose(_flat(new_masked.params)[path], value, rtol=1e-6, atol=1e-7,
                               err_msg=path)
  # The logged norm is the trained parameters' gradient norm (frozen ones are zeros).
  assert 0 < metrics_masked['grad_norm'] < metrics_full['grad_norm']
  # MFU counts what the step does: the probe's step is about a forward pass (a third of a
  # forward + backward), an all-trained step the whole.
  fraction = exp.frozen_flops_fraction()
  print(f"the probe's step does {fraction:.2f} of an all-trained step's FLOPs")
  assert 0.25 < fraction < 0.5
  assert experiment.build(tiny_config('cnn', steps=2), eval_split_names=[]
                          ).frozen_flops_fraction() == 1.0
