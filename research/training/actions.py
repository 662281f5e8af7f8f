"""The training loop's periodic actions: log, evaluate, early-stop, preempt, checkpoint, profile.

The Trainer runs the compiled step and then each action in order; an action looks at the
step it follows and does its work when its cadence says so. Each is a small class that
can be built and tested alone (tests/test_actions.py). An action:

- `before_step(trainer, step)`: before step `step` runs (the profiler starts here);
- `after_step(trainer, step, is_last) -> bool`: after it; returns True when it spent time
  that is not training (an evaluation, a save), so throughput excludes it;
- `state_dict()` / `load_state_dict(saved)`: state that must survive a resume, saved in
  the checkpoint's `trainer` item (early stopping's best value and patience count).

They talk to each other only through the trainer: `trainer.eval_results` and
`trainer.evaluated_at` (what the last evaluation returned, and when), `trainer.stop` (why
the loop should end: `'early_stopping'` or `'preempted'`), `trainer.state`.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from research import paths
from research.evaluation import evaluators
from research.evaluation import metrics as metrics_lib
from research.training import preemption

if TYPE_CHECKING:
  from research.training.trainer import Trainer


class Action:
  """Base class: does nothing. Subclasses override the hooks they need."""

  # Key of this action's entry in the checkpoint's trainer JSON ('' = nothing to save).
  state_key = ''

  def before_step(self, trainer: 'Trainer', step: int) -> None:
    del trainer, step

  def after_step(self, trainer: 'Trainer', step: int, is_last: bool) -> bool:
    del trainer, step, is_last
    return False

  def state_dict(self) -> dict[str, Any]:
    return {}

  def load_state_dict(self, saved: dict[str, Any]) -> None:
    del saved

  def close(self) -> None:
    pass


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
  """{'test/accuracy': 0.93, ...} from {'test': {'accuracy': 0.93, ...}}: scalars only."""
  return {f'{name}/{k}': float(v) for name, m in results.items()
          for k, v in metrics_lib.scalars(m).items()}


def _describe(metrics: dict[str, Any], headline: str) -> str:
  parts = [f"loss {metrics['loss']:.4f}"] if 'loss' in metrics else []
  if headline in metrics:
    parts.append(f'{headline} {metrics[headline]:.4f}')
  for count in ('num_examples', 'num_tokens'):
    if count in metrics:
      parts.append(f'({int(metrics[count])} {count[4:]})')
      break
  return '  '.join(parts)


class TrainLogger(Action):
  """Keeps per-step metrics on the device until a log step fetches them in one transfer;
  writes their means, examples/s and MFU to metrics.jsonl and the progress bar."""

  def __init__(self, *, every_steps: int, batch_size: int, check_finite: bool,
               headline: str, flops_per_example: int | None, peak_flops: float | None,
               num_devices: int, progress_bar: bool, total_steps: int, start_step: int):
    self.every_steps, self.batch_size, self.check_finite = every_steps, batch_size, check_finite
    self.headline = headline
    self.flops_per_example, self.peak_flops = flops_per_example, peak_flops
    self.num_devices = num_devices
    self._buffer: list[tuple[int, dict[str, jax.Array]]] = []
    self.last: dict[str, float] = {}
    self.compile_time_s = 0.0
    self.train_time_s, self.steady_examples = 0.0, 0  # excludes the compiling step and evals
    self._interval_start, self._interval_examples = time.perf_counter(), 0
    self._first_step = start_step + 1
    self.bar = tqdm(total=total_steps, initial=start_step, desc='train', unit='step',
                    dynamic_ncols=True, disable=not progress_bar)

  def mfu(self, examples_per_s: float) -> float | None:
    """Model FLOPs utilisation: model FLOPs per second over the mesh's peak."""
    if not (self.flops_per_example and self.peak_flops):
      return None
    return self.flops_per_example * examples_per_s / (self.peak_flops * self.num_devices)

  def steady_examples_per_s(self) -> float:
    return self.steady_examples / self.train_time_s if self.train_time_s else 0.0

  def record(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Called by the trainer right after each step."""
    if step == self._first_step:  # the first step compiles: time it apart
      jax.block_until_ready(metrics)
      self.compile_time_s = time.perf_counter() - self._interval_start
      self._interval_start = time.perf_counter()
    else:
      self._interval_examples += self.batch_size
    self._buffer.append((step, metrics))
    self.bar.update(1)

  def restart_interval(self) -> None:
    self._interval_start, self._interval_examples = time.perf_counter(), 0

  def raise_if_nonfinite(self) -> None:
    """Raises naming the first buffered step with a non-finite loss (before any save)."""
    if not self.check_finite or not self._buffer:
      return
    losses = jax.device_get([m['loss'] for _, m in self._buffer])
    for (step, _), loss in zip(self._buffer, losses):
      if not math.isfinite(float(loss)):
        raise FloatingPointError(
            f'Non-finite training loss ({float(loss)}) at step {step}. The run was '
            f'stopped before saving it; the last checkpoint is intact. Lower the learning '
            f"rate, clip gradients (optimizer.grad_clip_norm), or set nan_policy='skip'.")

  def after_step(self, trainer, step, is_last):
    if step % self.every_steps and not is_last:
      return False
    self.raise_if_nonfinite()
    fetched = jax.device_get([m for _, m in self._buffer])
    self._buffer = []
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]} if fetched else {}
    elapsed = time.perf_counter() - self._interval_start
    self.train_time_s += elapsed
    self.steady_examples += self._interval_examples
    means['examples_per_s'] = self._interval_examples / elapsed if self._interval_examples else 0.0
    mfu = self.mfu(means['examples_per_s'])
    if mfu is not None:
      means['mfu'] = mfu
    self.last = means
    trainer.metrics_log.write(step, 'train', means)
    self.bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}",
                         ex_s=f"{means['examples_per_s']:,.0f}")
    if self.bar.disable and trainer.is_main_process:
      logging.info('step %d  train: %s  %.0f examples/s', step,
                   _describe(means, self.headline), means['examples_per_s'])
    return True

  def close(self) -> None:
    self.bar.close()


class Evaluate(Action):
  """Runs one evaluator every `spec.every_steps` (0: only at the end) and at the end."""

  def __init__(self, spec: evaluators.EvalSpec, evaluator: evaluators.Evaluator,
               headline: str):
    self.spec, self.evaluator, self.headline = spec, evaluator, headline

  def due(self, step: int, is_last: bool) -> bool:
    return is_last or bool(self.spec.every_steps and step % self.spec.every_steps == 0)

  def run(self, trainer: 'Trainer', step: int) -> dict[str, Any]:
    result = self.evaluator.evaluate(trainer.state)
    trainer.metrics_log.write(step, self.spec.name, metrics_lib.scalars(result))
    if trainer.is_main_process:
      logging.info('step %d  %s: %s', step, self.spec.name, _describe(result, self.headline))
    trainer.eval_results[self.spec.name] = result
    trainer.evaluated_at = step
    return result

  def after_step(self, trainer, step, is_last):
    if not self.due(step, is_last):
      return False
    self.run(trainer, step)
    return True


class EarlyStopping(Action):
  """Asks the loop to stop when `metric` ('SPLIT/METRIC') has not improved by `min_delta`
  for `patience` evaluations."""

  state_key = 'early_stopping'

  def __init__(self, metric: str, mode: str, patience: int, min_delta: float):
    self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
    self.best: float | None = None
    self.evals_without_improvement = 0
    self.stopped_at: int | None = None

  def update(self, value: float) -> bool:
    """Feeds one evaluation's value; True when patience has run out."""
    sign = 1.0 if self.mode == 'max' else -1.0
    if self.best is None or sign * (value - self.best) > self.min_delta:
      self.best, self.evals_without_improvement = value, 0
    else:
      self.evals_without_improvement += 1
    return self.evals_without_improvement >= self.patience

  def after_step(self, trainer, step, is_last):
    if trainer.evaluated_at != step:
      return False
    if self.update(flat_metrics(trainer.eval_results)[self.metric]):
      self.stopped_at = step
      trainer.stop = trainer.stop or 'early_stopping'
      logging.info('Early stopping at step %d: %s has not improved for %d evaluations '
                   '(best %.5f).', step, self.metric, self.patience, self.best)
    return False

  def state_dict(self):
    return {'metric': self.metric, 'best': self.best,
            'evals_without_improvement': self.evals_without_improvement,
            'stopped_at': self.stopped_at}

  def load_state_dict(self, saved):
    if saved.get('metric') != self.metric:  # a resumed run that watches another metric
      return
    self.best = saved.get('best')
    self.evals_without_improvement = int(saved.get('evals_without_improvement', 0))
    self.stopped_at = saved.get('stopped_at')


class PreemptionCheck(Action):
  """Turns SIGTERM/SIGINT into `trainer.stop = 'preempted'` after the current step.

  One process reads its own flag every step. Several processes must stop at the same
  step, so they agree through an all-gather, which blocks: only every `sync_every_steps`
  steps (all processes check at the same steps) and at the last step.
  """

  def __init__(self, watcher: preemption.PreemptionWatcher, sync_every_steps: int):
    self.watcher, self.sync_every_steps = watcher, sync_every_steps

  def requested(self, step: int, is_last: bool) -> bool:
    local = self.watcher.signal_name is not None
    if jax.process_count() == 1:
      return local
    if step % self.sync_every_steps and not is_last:
      return False
    flags = multihost_utils.process_allgather(np.array([local], dtype=np.int32))
    if flags.any() and self.watcher.signal_name is None:
      self.watcher.signal_name = 'SIGTERM (another process)'
    return bool(flags.any())

  def after_step(self, trainer, step, is_last):
    if self.requested(step, is_last):
      trainer.stop = 'preempted'
    return False


class Checkpoint(Action):
  """Saves the state, the data position and the actions' state: every `every_steps`, at
  the end, when the loop stops, and after each evaluation when checkpoints are ranked by
  a metric (so the best one is a real checkpoint)."""

  def __init__(self, every_steps: int):
    self.every_steps = every_steps

  def after_step(self, trainer, step, is_last):
    evaluated = trainer.evaluated_at == step
    periodic = self.every_steps and step % self.every_steps == 0
    if not (is_last or trainer.stop or periodic or (evaluated and trainer.checkpointer.best_metric)):
      return False
    trainer.train_logger.raise_if_nonfinite()  # never save a state that went non-finite
    trainer.save(step, flat_metrics(trainer.eval_results) if evaluated else None)
    return True


class Profile(Action):
  """A `jax.profiler` trace of steps [start_step, start_step + num_steps) in
  WORKDIR/profile (open with TensorBoard's profile plugin or Perfetto)."""

  def __init__(self, start_step: int, num_steps: int, directory: str):
    self.start_step, self.num_steps, self.directory = start_step, num_steps, directory
    self.active = False
    self._local_dir: str | None = None  # the trace's local copy, for a gs:// workdir

  def before_step(self, trainer, step):
    if step == self.start_step and not self.active:
      # The profiler writes local files only: trace locally, upload when it stops.
      if paths.is_remote(self.directory):
        self._local_dir = tempfile.mkdtemp(prefix='profile_')
      else:
        os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self._local_dir or self.directory)
      self.active = True
      logging.info('Profiling steps %d-%d into %s.', step, step + self.num_steps - 1,
                   self.directory)

  def after_step(self, trainer, step, is_last):
    if self.active and (step == self.start_step + self.num_steps - 1 or is_last or trainer.stop):
      jax.block_until_ready(trainer.state)
      self.close()
      return True
    return False

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      if self._local_dir:
        paths.upload_tree(self._local_dir, self.directory)
        shutil.rmtree(self._local_dir, ignore_errors=True)
        self._local_dir = None
