"""Fault tolerance: exact resume after SIGKILL, chaos kills, SIGTERM, corruption, NaN guard."""
import glob
import json
import logging
import os
import random
import signal

import jax.numpy as jnp
import pytest

from research.training import preemption
from research import training
from tests import checkpoint_utils as cu
from tests.helpers import read_jsonl, tiny_config

# Long enough that every planned kill has steps left to land on: `_chaos` places kill i of
# n in the i-th of n windows of steps 1..PLAN_END, and a window must hold a checkpoint (10
# kills: 52-step windows). A kill after a save lands up to one save interval later (the next
# save starts when the previous completes), so PLAN_END leaves 2 intervals before the end.
# Logging every 10 steps lets the kills follow the run closely.
STEPS = 600
EVERY = 40
LOG_EVERY = 10
PLAN_END = STEPS - 2 * EVERY
OVERRIDES = (f'--config.num_train_steps={STEPS}', f'--config.checkpoint.every_steps={EVERY}',
             f'--config.log_every_steps={LOG_EVERY}', '--config.checkpoint.keep=2',
             '--config.write_report=False')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  proc = cu.start(cu.train_command(workdir, 'configs/mnist1d/cnn.py', *OVERRIDES))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return workdir


def _chaos(workdir: str, kill_points: list[str], rng: random.Random) -> int:
  """SIGKILLs the run once per point, restarting it after each; then runs it to the end.

  Every kill is placed by step, read from the files the run writes, never by wall-clock
  time: kill i waits, from the i-th of len(kill_points) equal windows of steps 1..PLAN_END
  (or past every step an earlier process reached, if that is later), for
    'after_save':  a checkpoint completing (the kill comes right after it),
    'during_save': an async save's temporary directory (the kill lands mid-save),
    'random':      metrics.jsonl showing a step drawn at random from the window.
  Returns how many kills landed: the process was still running and had not finished
  training (no step STEPS logged, no checkpoint at STEPS, no results.json) when killed.
  """
  width = PLAN_END // len(kill_points)
  assert width >= EVERY, f'{len(kill_points)} kills need a longer run: a window per checkpoint'
  landed = 0
  for i, point in enumerate(kill_points):
    low, high = 1 + i * width, 1 + (i + 1) * width
    # Steps a killed process already logged or saved do not count: this process must get
    # past them (a resumed run restarts from its checkpoint and truncates metrics.jsonl).
    first = max([low, cu.last_logged_step(workdir) + 1,
                 *(s + 1 for s in cu.finished_checkpoints(workdir))])
    if point == 'random':
      target = max(rng.randrange(low, high), first)
      reached = lambda: cu.last_logged_step(workdir) >= target  # noqa: E731
      where = f'step {target} logged'
    elif point in ('after_save', 'during_save'):
      steps_of = cu.finished_checkpoints if point == 'after_save' else cu.saves_in_progress
      reached = lambda: any(first <= s <= PLAN_END for s in steps_of(workdir))  # noqa: E731
      where = f"a {'completed' if point == 'after_save' else 'running'} save at step >= {first}"
    else:
      raise ValueError(f'unknown kill point {point!r}')
    last = PLAN_END if point == 'random' else PLAN_END // EVERY * EVERY  # its last chance
    assert first <= last, f'kill {i} ({point}): earlier kills overshot to step {first - 1}'
    proc = cu.start(cu.train_command(workdir, 'configs/mnist1d/cnn.py', *OVERRIDES))
    hit = cu.wait_for(reached, 300, proc, interval=0.002)
    alive = proc.poll() is None
    cu.kill_group(proc)
    finished = (cu.last_logged_step(workdir) >= STEPS or STEPS in cu.finished_checkpoints(workdir)
                or os.path.exists(os.path.join(workdir, 'results.json')))
    ok = hit and alive and not finished
    landed += ok
    print(f'kill {i} ({point}, at {where}): {"landed" if ok else "MISSED"}; logged up to '
          f'step {cu.last_logged_step(workdir)}, checkpoints {cu.finished_checkpoints(workdir)}, '
          f'saves in progress {cu.saves_in_progress(workdir)}')
  proc = cu.start(cu.train_command(workdir, 'configs/mnist1d/cnn.py', *OVERRIDES))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return landed


def test_resume_after_sigkill_is_bitwise_exact(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  assert _chaos(workdir, ['after_save'], random.Random(0)) == 1
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert results['resumed_from_step'] > 0
  cu.assert_trees_bitwise_equal(cu.read_state(workdir, STEPS),
                                cu.read_state(uninterrupted, STEPS))
  # Same batches: the resumed run's logged training losses equal the uninterrupted run's.
  losses = lambda w: [(r['step'], r['loss']) for r in read_jsonl(os.path.join(w, 'metrics.jsonl'))
                      if r['split'] == 'train']
  assert losses(workdir) == losses(uninterrupted)


def test_chaos_kills_resume_to_identical_params(uninterrupted, tmp_path):
  rng = random.Random(1)
  points = ['during_save', 'random', 'after_save']
  assert _chaos(str(tmp_path), points, rng) == len(points)
  cu.assert_trees_bitwise_equal(cu.read_state(str(tmp_path), STEPS),
                                cu.read_state(uninterrupted, STEPS))


@pytest.mark.slow
def test_chaos_ten_kills(uninterrupted, tmp_path):
  """The full version: `make test-slow` (or pytest -m slow -k chaos_ten)."""
  rng = random.Random(2)
  points = ['during_save', 'after_save'] + ['random'] * 6 + ['during_save', 'after_save']
  assert _chaos(str(tmp_path), points, rng) == len(points)
  cu.assert_trees_bitwise_equal(cu.read_state(str(tmp_path), STEPS),
                                cu.read_state(uninterrupted, STEPS))


def test_sigterm_saves_the_current_step_and_exits_with_the_documented_code(tmp_path):
  workdir = str(tmp_path)
  proc = cu.start(cu.train_command(workdir, 'configs/mnist1d/cnn.py',
                                   '--config.num_train_steps=100000',
                                   '--config.checkpoint.every_steps=0'))
  assert cu.wait_for(lambda: os.path.exists(os.path.join(workdir, 'metrics.jsonl')), 120, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-3000:]
  line = next(l for l in err.splitlines() if 'Stopped by SIGTERM after step' in l)
  step = int(line.split('after step ')[1].split(';')[0])
  assert cu.finished_checkpoints(workdir) == [step]
  assert int(cu.read_state(workdir, step)['step']) == step
  assert not os.path.exists(os.path.join(workdir, 'results.json'))


def test_damaged_latest_checkpoint_is_skipped_and_kept_aside(tmp_path, caplog):
  config = tiny_config('mlp', steps=20)
  config.checkpoint.every_steps = 10
  reference = training.train_and_evaluate(config, str(tmp_path / 'reference'))
  workdir = str(tmp_path / 'damaged')
  training.train_and_evaluate(config, workdir)
  files = [f for f in glob.glob(f'{workdir}/checkpoints/20/state/**', recursive=True)
           if os.path.isfile(f)]
  victim = max(files, key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)

  with caplog.at_level(logging.ERROR):
    resumed = training.train_and_evaluate(config, workdir)
  assert 'Checkpoint at step 20 cannot be restored' in caplog.text
  assert resumed['resumed_from_step'] == 10
  assert resumed['test']['loss'] == reference['test']['loss']  # retrained 10 -> 20 exactly
  assert len(os.listdir(f'{workdir}/checkpoints_quarantine')) == 1  # kept, not deleted
  assert cu.finished_checkpoints(workdir) == [10, 20]


def test_missing_checkpoint_directory_falls_back(tmp_path):
  config = tiny_config('mlp', steps=20)
  config.checkpoint.every_steps = 10
  workdir = str(tmp_path)
  training.train_and_evaluate(config, workdir)
  import shutil
  shutil.rmtree(f'{workdir}/checkpoints/20/state')
  assert training.train_and_evaluate(config, workdir)['resumed_from_step'] == 10


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  config = tiny_config('mlp', steps=40)
  config.checkpoint.every_steps = 10
  config.optimizer.learning_rate = 1e30  # diverges within a few steps
  with pytest.raises(FloatingPointError, match=r'Non-finite training loss .* at step \d+'):
    training.train_and_evaluate(config, str(tmp_path))
  steps = cu.finished_checkpoints(str(tmp_path))
  for step in steps:  # whatever was saved is finite
    state = cu.read_state(str(tmp_path), step)
    assert all(bool(jnp.isfinite(x).all()) for x in
               __import__('jax').tree.leaves(state['params']))


def test_skip_policy_drops_non_finite_updates(tmp_path):
  config = tiny_config('mlp', steps=10)
  config.nan_policy = 'skip'
  config.optimizer.learning_rate = 1e30
  results = training.train_and_evaluate(config, str(tmp_path))
  assert results['train']['skipped'] > 0
  state = cu.read_state(str(tmp_path), 10)
  assert all(bool(jnp.isfinite(x).all()) for x in __import__('jax').tree.leaves(state['params']))


def test_best_checkpoint_is_kept_alongside_the_latest(tmp_path):
  config = tiny_config('mlp', steps=60)
  config.eval_every_steps = 10
  config.checkpoint.every_steps = 0
  config.checkpoint.keep = 1
  config.checkpoint.best_metric = 'test/loss'
  config.checkpoint.best_mode = 'min'
  config.optimizer.learning_rate = 0.05  # overfits: eval loss rises after a while
  results = training.train_and_evaluate(config, str(tmp_path))
  evals = [r for r in read_jsonl(tmp_path / 'metrics.jsonl') if r['split'] == 'test']
  best = min(evals, key=lambda r: r['loss'])['step']
  assert results['best_checkpoint_step'] == best
  assert set(cu.finished_checkpoints(str(tmp_path))) == {best, 60}
