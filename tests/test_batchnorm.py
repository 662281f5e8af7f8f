"""A model with mutable state (BatchNorm's `batch_stats`): trained, checkpointed, resumed
exactly, and evaluated with its running statistics. (8 devices: tests/test_scaling.py.)"""
from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research import training
from research.training import checkpoint as checkpoint_lib
from research.training import experiment
from tests.helpers import tiny_config


def _config(steps: int):
  config = tiny_config('cnn', steps=steps, norm='batch')
  config.checkpoint.async_save = False
  return config


def _state(workdir, step: int) -> dict:
  return ocp.StandardCheckpointer().restore(f'{workdir}/checkpoints/{step}/state')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('bn')
  config = _config(300)
  config.eval_every_steps = 100
  return workdir, training.train_and_evaluate(config, str(workdir))


def test_batchnorm_cnn_trains_and_updates_running_statistics(trained):
  workdir, results = trained
  accuracies = [json.loads(line)['accuracy'] for line in open(workdir / 'metrics.jsonl')
                if json.loads(line)['split'] == 'test']
  print(f'BatchNorm CNN test accuracy at steps 100/200/300: {accuracies}')
  assert results['test']['accuracy'] > 0.5
  stats = _state(workdir, 300)['model_state']['batch_stats']
  assert sorted(stats) == ['norm_0', 'norm_1', 'norm_2']
  assert np.abs(stats['norm_0']['mean']).max() > 1e-3  # moved away from the initial 0
  assert not np.allclose(stats['norm_0']['var'], 1.0)
  # BatchNorm layers replace the convolutions' biases.
  assert 'bias' not in _state(workdir, 300)['params']['conv_0']


def test_evaluation_uses_running_statistics(trained):
  """An example's logits do not depend on the other examples of its eval batch (batch
  statistics would make them), and equal an apply with the saved batch_stats."""
  workdir, _ = trained
  exp = experiment.build(_config(300), eval_split_names=['test'])
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), async_save=False)
  state = checkpointer.restore_state(exp.abstract_state, 300)
  checkpointer.close()
  x = exp.eval_splits['test'].inputs[:64].astype(np.float32)
  batch = {'inputs': x, 'labels': np.zeros(64, np.int32), 'mask': np.ones(64, bool)}
  logits = np.asarray(exp.predict_fn(state, batch))
  halves = [np.asarray(exp.predict_fn(state, {k: v[i:i + 32] for k, v in batch.items()}))
            for i in (0, 32)]
  np.testing.assert_allclose(np.concatenate(halves), logits, rtol=1e-5, atol=1e-5)
  manual = exp.model.apply({'params': state.params, **state.model_state}, x, train=False)
  np.testing.assert_allclose(manual, logits, rtol=1e-5, atol=1e-5)
  with_batch_stats, _ = exp.model.apply({'params': state.params, **state.model_state}, x,
                                        train=True, mutable=['batch_stats'])
  assert np.abs(np.asarray(with_batch_stats) - logits).max() > 1e-3


def test_resume_is_bitwise_exact_with_batch_stats(tmp_path):
  straight = tmp_path / 'straight'
  training.train_and_evaluate(_config(40), str(straight))
  resumed = tmp_path / 'resumed'
  training.train_and_evaluate(_config(20), str(resumed))
  results = training.train_and_evaluate(_config(40), str(resumed))  # continues from 20
  assert results['resumed_from_step'] == 20
  a, b = _state(straight, 40), _state(resumed, 40)
  for tree in ('params', 'model_state', 'opt_state'):
    leaves_a, leaves_b = jax.tree.leaves(a[tree]), jax.tree.leaves(b[tree])
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_array_equal(x, y, err_msg=tree)
