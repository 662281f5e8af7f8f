"""Magnitude pruning: the cubic schedule, global and per-layer masks, pruned weights exactly
zero after every update, config errors, and masks that survive a SIGKILL and resume."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.compress import prune
from research.config import default_config, validate
from research.errors import ConfigError
from tests import checkpoint_utils as cu


def test_cubic_schedule():
  s = lambda t: float(prune.cubic_sparsity(t, 0.8, 100, 300))  # noqa: E731
  assert s(0) == 0.0 and s(100) == 0.0
  np.testing.assert_allclose(s(200), 0.8 * (1 - 0.5 ** 3), rtol=1e-6)
  assert s(300) == pytest.approx(0.8) and s(1000) == pytest.approx(0.8)
  assert all(s(t) <= s(t + 10) for t in range(0, 400, 10))  # never decreasing


def _tree():
  rng = np.random.default_rng(0)
  return {'small': {'kernel': jnp.asarray(rng.permutation(100).reshape(10, 10) + 1.0)},
          'big': {'kernel': jnp.asarray(rng.permutation(50).reshape(5, 10) + 1000.0)},
          'head': {'bias': jnp.asarray(np.full(3, 0.001))}}


def _selected(tree):
  return {'small': {'kernel': True}, 'big': {'kernel': True}, 'head': {'bias': False}}


def test_global_masks_use_one_threshold_and_layer_masks_one_each():
  params = _tree()
  masks = prune.magnitude_masks(params, _selected(params), 0.5, 'global')
  # 150 kernel weights, 75 pruned: all from 'small' (every 'big' weight is larger).
  assert int((~masks['small']['kernel']).sum()) == 75 and bool(masks['big']['kernel'].all())
  np.testing.assert_array_equal(masks['small']['kernel'], params['small']['kernel'] > 75)
  assert bool(masks['head']['bias'].all())  # not selected: never pruned
  masks = prune.magnitude_masks(params, _selected(params), 0.5, 'layer')
  assert int((~masks['small']['kernel']).sum()) == 50
  assert int((~masks['big']['kernel']).sum()) == 25


@pytest.mark.parametrize('scope', prune.SCOPES)
def test_pruned_weights_are_exactly_zero_after_every_update(scope):
  params = _tree()
  tx = prune.pruned(optax.sgd(0.1), sparsity=0.8, selected_fn=_selected, scope=scope,
                    begin_step=2, end_step=10, update_every=2)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(jnp.ones_like, params)  # every weight pushed the same way
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  sparsities = []
  for _ in range(14):
    params, state = step(params, state)
    kernels = np.concatenate([np.asarray(params[k]['kernel']).ravel() for k in ('small', 'big')])
    sparsities.append((kernels == 0).mean())
    masks = state.masks  # the masks live in the optimizer state ...
    for k in ('small', 'big'):  # ... and a pruned weight is exactly zero
      assert not np.asarray(params[k]['kernel'])[~np.asarray(masks[k]['kernel'])].any()
  assert sparsities[0] == 0.0 and sparsities == sorted(sparsities)
  assert sparsities[-1] == pytest.approx(0.8)
  assert not (np.asarray(params['head']['bias']) == 0).any()
  assert int(state.count) == 14


@pytest.mark.parametrize('key,value,message', [
    ('sparsity', 1.0, 'config.pruning.sparsity must be in [0, 1), got 1.0.'),
    ('scope', 'row', "config.pruning.scope='row'; accepted: ['global', 'layer']."),
    ('end_step', 99999, 'config.pruning needs 0 <= begin_step < end_step <= num_train_steps'),
])
def test_bad_pruning_config_is_named(key, value, message):
  config = default_config()
  config.pruning.sparsity = 0.5
  config.pruning[key] = value
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert message in str(e.value)


STEPS, EVERY = 60, 20
OVERRIDES = ('--config.pruning.sparsity=0.8', '--config.pruning.end_step=40',
             '--config.pruning.update_every=5', f'--config.num_train_steps={STEPS}',
             f'--config.checkpoint.every_steps={EVERY}', '--config.log_every_steps=5',
             '--config.write_report=False', '--config.checkpoint.async_save=False')


def _train(workdir: str, kill_after_checkpoint: bool = False) -> None:
  proc = cu.start(cu.train_command(workdir, 'configs/mnist1d/cnn.py', *OVERRIDES))
  if kill_after_checkpoint:
    assert cu.wait_for(lambda: any(EVERY <= s < STEPS for s in cu.finished_checkpoints(workdir)),
                       300, proc, interval=0.002)
    assert proc.poll() is None, 'the run finished before the kill'
    cu.kill_group(proc)
    return
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]


def test_masks_survive_sigkill_and_resume(tmp_path):
  uninterrupted, killed = str(tmp_path / 'uninterrupted'), str(tmp_path / 'killed')
  _train(uninterrupted)
  _train(killed, kill_after_checkpoint=True)
  _train(killed)  # resumes from the checkpoint the kill left
  with open(os.path.join(killed, 'results.json')) as f:
    results = json.load(f)
  assert results['resumed_from_step'] > 0
  # params and opt_state (the masks and the step count of the pruning wrapper included)
  state = cu.read_state(killed, STEPS)
  cu.assert_trees_bitwise_equal(state, cu.read_state(uninterrupted, STEPS))
  report = results['pruning']
  kernels = {k: np.asarray(v['kernel']) for k, v in state['params'].items()}
  total = sum(k.size for k in kernels.values())
  assert report['overall'] == pytest.approx(int(0.8 * total) / total)
  for name, kernel in kernels.items():
    assert report['per_layer'][f'{name}/kernel'] == pytest.approx((kernel == 0).mean())
