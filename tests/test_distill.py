"""Distillation: the loss's gradient is the soft cross-entropy's, the teacher is frozen and
must read the student's inputs, and a student trains from the command line."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import objectives
from research.config import default_config
from research.errors import ConfigError
from research.objectives.distillation import distillation_loss
from research.training import train_and_evaluate
from research.data import sources
from tests.helpers import read_jsonl, run_module, tiny_config

T = 3.0


def _logits(seed: int):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(6, 5)) * 2, jnp.float32)


@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
def test_gradient_equals_soft_and_hard_cross_entropy(alpha):
  student, teacher = _logits(0), _logits(1)
  labels = jnp.arange(6) % 5
  grad = jax.grad(lambda s: distillation_loss(s, teacher, labels, T, alpha).sum())(student)
  soft = jax.grad(lambda s: optax.softmax_cross_entropy(
      s / T, jax.nn.softmax(teacher / T)).sum())(student)
  hard = jax.grad(lambda s: optax.softmax_cross_entropy(
      s, jax.nn.one_hot(labels, 5)).sum())(student)
  np.testing.assert_allclose(grad, alpha * T ** 2 * soft + (1 - alpha) * hard, rtol=1e-5,
                             atol=1e-6)
  teacher_grad = jax.grad(lambda t: distillation_loss(student, t, labels, T, alpha).sum())(teacher)
  assert not np.asarray(teacher_grad).any()  # the teacher is frozen


def _config(**args):
  config = default_config()
  config.objective = 'distillation'
  config.objective_args = objectives.args_config('distillation', **args)
  return config


def test_missing_or_mismatched_teacher_is_named(tmp_path):
  info = sources.DatasetInfo('mnist1d', 10, 'x', 'y', {})
  with pytest.raises(ConfigError, match='needs config.objective_args.teacher'):
    objectives.build(_config(), info=info)
  with pytest.raises(ConfigError, match=r'alpha must be in \[0, 1\], got 2.0'):
    objectives.build(_config(teacher='x', alpha=2.0), info=info)
  other = default_config()
  other.dataset.name = 'mnist'
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(other.to_dict(), f)
  with pytest.raises(ConfigError, match="read dataset 'mnist'.*the student reads 'mnist1d'"):
    objectives.build(_config(teacher=str(tmp_path)), info=info)


@pytest.mark.slow  # README.md's distillation command runs in the default suite (test_readme)
def test_student_trains_from_the_command_line(tmp_path):
  teacher = str(tmp_path / 'teacher')
  train_and_evaluate(tiny_config('mlp', steps=5), teacher)
  student = str(tmp_path / 'student')
  proc = run_module('research.main', '--config=configs/mnist1d/distill.py', f'--workdir={student}',
                    f'--config.objective_args.teacher={teacher}', '--config.num_train_steps=10',
                    '--config.log_every_steps=5', '--config.progress_bar=False',
                    '--config.write_report=False', '--config.objective_args.temperature=2.0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(student, 'results.json')) as f:
    results = json.load(f)
  assert results['objective'] == 'distillation' and 0 <= results['test']['accuracy'] <= 1
  train = [r for r in read_jsonl(os.path.join(student, 'metrics.jsonl')) if r['split'] == 'train']
  assert train and all(0 <= r['teacher_agreement'] <= 1 for r in train)
