"""The Trainer's periodic actions, each alone, against a stand-in trainer."""
from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import training
from research.evaluation import evaluators
from research.training import actions, preemption
from tests.helpers import tiny_config


class _Log:
  def __init__(self):
    self.records = []

  def write(self, step, split, metrics):
    self.records.append((step, split, dict(metrics)))


def _trainer(**kw):
  defaults = dict(state=None, eval_results={}, evaluated_at=None, stop=None, metrics_log=_Log(),
                  is_main_process=True, saved=[])
  defaults.update(kw)
  t = types.SimpleNamespace(**defaults)
  t.save = lambda step, metrics: t.saved.append((step, metrics))
  return t


def test_early_stopping_counts_evaluations_without_improvement():
  stopper = actions.EarlyStopping('test/accuracy', 'max', patience=2, min_delta=0.01)
  trainer = _trainer()
  stops = []
  for step, acc in zip((10, 20, 30, 40), (0.5, 0.6, 0.605, 0.609)):
    trainer.eval_results, trainer.evaluated_at = {'test': {'accuracy': acc}}, step
    stopper.after_step(trainer, step, False)
    stops.append(trainer.stop)
  # 0.605 and 0.609 do not beat 0.6 by 0.01: the second of them exhausts patience 2.
  assert stops == [None, None, None, 'early_stopping']
  assert stopper.stopped_at == 40 and stopper.best == 0.6
  restored = actions.EarlyStopping('test/accuracy', 'max', patience=2, min_delta=0.01)
  restored.load_state_dict(stopper.state_dict())
  assert restored.state_dict() == stopper.state_dict()
  other = actions.EarlyStopping('test/loss', 'min', patience=2, min_delta=0.0)
  other.load_state_dict(stopper.state_dict())  # watches another metric: starts afresh
  assert other.best is None


def test_early_stopping_ignores_steps_without_evaluation():
  stopper = actions.EarlyStopping('test/loss', 'min', patience=1, min_delta=0.0)
  trainer = _trainer(eval_results={'test': {'loss': 1.0}}, evaluated_at=5)
  stopper.after_step(trainer, 5, False)
  for step in (6, 7, 8):  # the same stale results must not count again
    stopper.after_step(trainer, step, False)
  assert trainer.stop is None and stopper.evals_without_improvement == 0


def test_preemption_all_gathers_only_every_sync_steps(monkeypatch):
  calls = []

  def allgather(x):
    calls.append(x)
    return np.stack([x, np.array([0], np.int32)])
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(actions.multihost_utils, 'process_allgather', allgather)
  watcher = preemption.PreemptionWatcher()
  check = actions.PreemptionCheck(watcher, sync_every_steps=10)
  trainer = _trainer()
  for step in range(1, 26):
    if step == 13:
      watcher.signal_name = 'SIGTERM'
    check.after_step(trainer, step, is_last=False)
    if trainer.stop:
      break
  assert len(calls) == 2  # steps 10 and 20, not 20 all-gathers
  assert step == 20 and trainer.stop == 'preempted'


def test_preemption_single_process_checks_every_step():
  watcher = preemption.PreemptionWatcher()
  check = actions.PreemptionCheck(watcher, sync_every_steps=10)
  trainer = _trainer()
  check.after_step(trainer, 3, False)
  assert trainer.stop is None
  watcher.signal_name = 'SIGINT'
  check.after_step(trainer, 4, False)
  assert trainer.stop == 'preempted'


@pytest.mark.parametrize('step,is_last,evaluated,stop,best,saved', [
    (5, False, False, None, '', False),
    (10, False, False, None, '', True),   # periodic
    (7, True, False, None, '', True),     # last step
    (7, False, False, 'preempted', '', True),
    (7, False, True, None, '', False),     # an evaluation alone does not save ...
    (7, False, True, None, 'test/accuracy', True),  # ... unless checkpoints are ranked
])
def test_checkpoint_decides_when_to_save(step, is_last, evaluated, stop, best, saved):
  logger = types.SimpleNamespace(raise_if_nonfinite=lambda: None)
  trainer = _trainer(evaluated_at=step if evaluated else None, stop=stop,
                     eval_results={'test': {'accuracy': 0.5}} if evaluated else {},
                     checkpointer=types.SimpleNamespace(best_metric=best), train_logger=logger)
  actions.Checkpoint(every_steps=10).after_step(trainer, step, is_last)
  assert bool(trainer.saved) == saved
  if saved and evaluated:
    assert trainer.saved[0] == (step, {'test/accuracy': 0.5})


def test_train_logger_refuses_to_pass_a_nonfinite_loss():
  logger = actions.TrainLogger(every_steps=5, batch_size=4, check_finite=True, headline='accuracy',
                               flops_per_example=None, peak_flops=None, num_devices=1,
                               progress_bar=False, total_steps=10, start_step=0)
  trainer = _trainer()
  for step in (1, 2, 3):
    logger.record(step, {'loss': jnp.float32(np.nan if step == 2 else 1.0)})
  with pytest.raises(FloatingPointError, match='at step 2'):
    logger.raise_if_nonfinite()
  assert logger.mfu(100.0) is None  # no FLOP count: no MFU, rather than a made-up 0
  del trainer


def test_evaluate_runs_on_its_cadence_and_at_the_end():
  class Fixed(evaluators.Evaluator):
    def evaluate(self, state):
      return {'loss': 1.0, 'score': 2.0, 'per_class': [1, 2]}
  spec = evaluators.EvalSpec('probe', 'fixed', 'test', 4, {})
  action = actions.Evaluate(spec, Fixed(None, 'test'), headline='score')
  trainer = _trainer()
  for step in range(1, 11):
    action.after_step(trainer, step, step == 10)
  assert [r[0] for r in trainer.metrics_log.records] == [4, 8, 10]
  assert trainer.metrics_log.records[0][2] == {'loss': 1.0, 'score': 2.0}  # scalars only
  assert trainer.eval_results['probe']['per_class'] == [1, 2] and trainer.evaluated_at == 10


def test_profile_writes_a_trace_of_the_chosen_steps(tmp_path):
  config = tiny_config(steps=6)
  config.profile.start_step, config.profile.num_steps = 3, 2
  training.train_and_evaluate(config, str(tmp_path))
  traces = [f for _, _, files in os.walk(tmp_path / 'profile') for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces
