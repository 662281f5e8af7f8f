"""The one trainer: `train_and_evaluate(config, workdir)` runs any experiment from its config.

Sections, top to bottom: checks -> mesh -> data -> model/optimizer -> sharded state ->
compiled steps -> resume -> loop (log, eval, checkpoint, preemption) -> results.
Notebooks call this function directly; `research.main` is only a command-line shell.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from research.training import checkpoint as checkpoint_lib
from research import config as config_lib
from research.evaluation import metrics as metrics_lib
from research.parallel import distributed, sharding
from research.training import experiment, hardware, init_from, preemption
from research import writers
from research.models import flops
from research.data import balance, pipeline


class _TrainMetrics:
  """Per-step metrics stay on device until a log or save point fetches them in one go."""

  def __init__(self):
    self._buffer: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._buffer.append((step, metrics))

  def flush(self, check_finite: bool) -> dict[str, float]:
    """Means over the buffered steps; raises naming the first step with a non-finite loss."""
    if not self._buffer:
      return {}
    fetched = jax.device_get([m for _, m in self._buffer])
    step_ids = [s for s, _ in self._buffer]
    self._buffer = []
    if check_finite:
      for step, m in zip(step_ids, fetched):
        if not math.isfinite(float(m['loss'])):
          raise FloatingPointError(
              f'Non-finite training loss ({float(m["loss"])}) at step {step}. The run was '
              f'stopped before saving it; the last checkpoint is intact. Lower the learning '
              f"rate, clip gradients (optimizer.grad_clip_norm), or set nan_policy='skip'.")
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


class _EarlyStopping:
  """Stops when `metric` has not improved by `min_delta` for `patience` evaluations."""

  def __init__(self, metric: str, mode: str, patience: int, min_delta: float):
    self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
    self.best: float | None = None
    self._evals_without_improvement = 0

  def should_stop(self, eval_metrics: dict[str, float]) -> bool:
    if not self.metric:
      return False
    value = eval_metrics[self.metric]
    sign = 1.0 if self.mode == 'max' else -1.0
    if self.best is None or sign * (value - self.best) > self.min_delta:
      self.best, self._evals_without_improvement = value, 0
    else:
      self._evals_without_improvement += 1
    return self._evals_without_improvement >= self.patience

  def state_dict(self) -> dict[str, Any]:
    return {'metric': self.metric, 'best': self.best,
            'evals_without_improvement': self._evals_without_improvement}

  def load_state_dict(self, saved: dict[str, Any]) -> None:
    if saved.get('metric') != self.metric:  # a resumed run that watches another metric
      return
    self.best = saved.get('best')
    self._evals_without_improvement = int(saved.get('evals_without_improvement', 0))


def _truncate_metrics_log(path: str, last_step: int) -> None:
  """On resume, drops log records written after the checkpoint (they will be redone)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if json.loads(line)['step'] <= last_step]
  with open(f'{path}.tmp', 'w') as f:
    f.writelines(kept)
  os.replace(f'{path}.tmp', path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates per `config`, writing outputs to `workdir`; returns the results.

  Resumes from `workdir/checkpoints` when it holds a checkpoint. Raises
  `preemption.Preempted` after saving if SIGTERM/SIGINT arrives.
  """
  # ---- Checks that must fail before any expensive work ----
  config_lib.validate(config)
  workdir = writers.prepare_workdir(workdir)
  distributed.initialize(config.distributed)  # before anything touches a device
  is_main_process = jax.process_index() == 0
  metrics_log = writers.MetricsLog(workdir, enabled=is_main_process)

  # ---- Mesh, data, model, state shapes and shardings (shared with research.evaluate) ----
  exp = experiment.build(config, workdir=workdir)
  mesh = exp.mesh
  sampler = None
  if config.dataset.balance_classes:
    sampler = balance.BalancedSampler(exp.train_split.labels, exp.info.num_classes,
                                      seed=config.seed)
    logging.info('Class-balanced epochs of %d examples; class frequencies %s -> %s.',
                 sampler.epoch_size, sampler.natural_frequencies.round(4).tolist(),
                 sampler.effective_frequencies.round(4).tolist())
  if is_main_process:  # what the data looked like to the model, for the record
    writers.write_json_atomic(os.path.join(workdir, 'data.json'), {
        'preprocess': config.dataset.preprocess, 'fitted': exp.preprocess.summary(),
        'class_balance': sampler.log_summary() if sampler else None})
  train_iter = iter(pipeline.train_dataset(
      exp.train_split, config.batch_size, seed=config.seed, shuffle=config.dataset.shuffle,
      process_index=jax.process_index(), process_count=jax.process_count(),
      preprocess=exp.preprocess.train_fn, sampler=sampler,
      prefetch_threads=config.dataset.prefetch_threads,
      batches_per_chunk=config.dataset.batches_per_chunk))
  train_fn = exp.train_fn  # jitted with in/out shardings and donation; compiles at step 1

  # ---- Resume, or start fresh ----
  ckpt_cfg = config.checkpoint
  early = config.early_stopping
  checkpointer = checkpoint_lib.Checkpointer.for_run(workdir, config)
  state, start_step, restored_trainer = None, 0, {}
  if ckpt_cfg.resume:
    state, restored_step, restored_trainer = checkpointer.restore(exp.abstract_state,
                                                                  train_iter)
    if state is not None:
      start_step = restored_step
      logging.info('Resumed from the checkpoint at step %d.', start_step)
      if is_main_process:
        _truncate_metrics_log(metrics_log.path, start_step)
  if state is None:
    state = exp.initial_state()
    if config.init_from.workdir:
      state, _ = init_from.load_params(state, config.init_from, exp.state_sharding.params)
  if is_main_process:
    writers.write_config(workdir, config)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  flops_per_example = flops.model_flops_per_example(exp.model, exp.example_shape)
  peak_flops, peak_source = hardware.peak_flops_per_device()
  logging.info('Model %s: %s parameters, %.3g training FLOPs per example; peak %s.',
               config.model.name, f'{num_params:,}', flops_per_example, peak_source)

  def mfu(examples_per_s: float) -> float:
    """Model FLOPs utilisation: model FLOPs per second over the mesh's peak."""
    return flops_per_example * examples_per_s / (peak_flops * mesh.size) if peak_flops else 0.0

  # ---- Loop ----
  def run_evals(step: int) -> dict[str, dict[str, Any]]:
    out = {}
    for name in exp.eval_splits:
      result = exp.evaluate(state, name)
      metrics_log.write(step, name, metrics_lib.scalars(result))
      logging.info('step %d  %s: loss %.4f  accuracy %.4f  (%d examples)', step, name,
                   result['loss'], result['accuracy'], result['num_examples'])
      out[name] = result
    return out

  def flat_eval_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {f'{split}/{k}': float(v) for split, m in results.items() for k, v in m.items()
            if isinstance(v, (int, float))}

  train_metrics = _TrainMetrics()
  compilations_after_step_2 = None
  stopper = _EarlyStopping(early.metric, early.mode, early.patience, early.min_delta)
  if 'early_stopping' in restored_trainer:  # continue its patience count, not restart it
    stopper.load_state_dict(restored_trainer['early_stopping'])
  stopped_early_at = None
  check_finite = config.nan_policy == 'stop'
  last_train: dict[str, float] = {}
  eval_results: dict[str, dict[str, Any]] = {}
  compile_time_s = 0.0
  train_time_s, steady_examples = 0.0, 0  # excludes the first (compiling) step and evals
  interval_start, interval_examples = time.perf_counter(), 0
  wall_start = time.perf_counter()
  bar = tqdm(total=config.num_train_steps, initial=start_step, desc='train', unit='step',
             dynamic_ncols=True, disable=not (config.progress_bar and is_main_process))
  with sharding.activate(mesh), preemption.PreemptionWatcher() as watcher:
    for step in range(start_step + 1, config.num_train_steps + 1):
      batch = sharding.global_batch(next(train_iter), exp.batch_sharding)
      if step == start_step + 1:
        t0 = time.perf_counter()
        state, metrics = train_fn(state, batch)
        jax.block_until_ready(metrics)
        compile_time_s = time.perf_counter() - t0
        interval_start = time.perf_counter()
      else:
        state, metrics = train_fn(state, batch)
        interval_examples += config.batch_size
      train_metrics.add(step, metrics)
      bar.update(1)
      if step == start_step + 2:
        compilations_after_step_2 = train_fn._cache_size()
      is_last = step == config.num_train_steps

      if step % config.log_every_steps == 0 or is_last:
        last_train = train_metrics.flush(check_finite)
        elapsed = time.perf_counter() - interval_start
        train_time_s += elapsed
        steady_examples += interval_examples
        last_train['examples_per_s'] = interval_examples / elapsed if interval_examples else 0.0
        last_train['mfu'] = mfu(last_train['examples_per_s'])
        metrics_log.write(step, 'train', last_train)
        bar.set_postfix(loss=f"{last_train['loss']:.4f}",
                        ex_s=f"{last_train['examples_per_s']:,.0f}")
        if bar.disable:
          logging.info('step %d  train: loss %.4f  accuracy %.4f  %.0f examples/s', step,
                       last_train['loss'], last_train['accuracy'],
                       last_train['examples_per_s'])

      evaluated = is_last or (config.eval_every_steps and step % config.eval_every_steps == 0)
      if evaluated:
        eval_results = run_evals(step)
        if stopper.should_stop(flat_eval_metrics(eval_results)):
          stopped_early_at = step
          logging.info('Early stopping at step %d: %s has not improved for %d evaluations '
                       '(best %.5f).', step, early.metric, early.patience, stopper.best)
      stop = watcher.should_stop()
      periodic = ckpt_cfg.every_steps and step % ckpt_cfg.every_steps == 0
      # With a best-metric policy every evaluation is saved, so "best" is a real checkpoint.
      if (is_last or stop or periodic or stopped_early_at or
          (evaluated and checkpointer.best_metric)):
        train_metrics.flush(check_finite)  # never save a state that went non-finite
        checkpointer.save(step, state, train_iter,
                          flat_eval_metrics(eval_results) if evaluated else None,
                          trainer={'early_stopping': stopper.state_dict()})
      if stop:
        checkpointer.wait()
        checkpointer.close()
        bar.close()
        raise preemption.Preempted(step, watcher.signal_name)
      if stopped_early_at:
        break
      if step % config.log_every_steps == 0 or evaluated:
        interval_start = time.perf_counter()  # evals and saves do not count as training
        interval_examples = 0
  bar.close()

  # Compile-once guard: a step that recompiles mid-run (changing shapes, dtypes or
  # shardings) silently costs a full compilation each time.
  recompiled = (compilations_after_step_2 is not None and
                train_fn._cache_size() > compilations_after_step_2)
  if recompiled:
    logging.warning('The train step was recompiled after step %d (%d compilations): an input '
                    'changed shape, dtype or sharding.', start_step + 2, train_fn._cache_size())
  if not eval_results:  # resumed at or past the last step: evaluate the restored state
    eval_results = run_evals(int(state.step))
  checkpointer.wait()
  best_step = checkpointer.best_step()
  checkpointer.close()

  results = {
      **eval_results,
      'train': last_train,
      'steps': stopped_early_at or config.num_train_steps,
      'stopped_early_at_step': stopped_early_at,
      'resumed_from_step': start_step,
      'best_checkpoint_step': best_step,
      'num_params': int(num_params),
      'wall_time_s': time.perf_counter() - wall_start,
      'compile_time_s': compile_time_s,
      'train_step_compilations': train_fn._cache_size(),
      'train_examples_per_s': steady_examples / train_time_s if train_time_s else 0.0,
      'flops_per_example': flops_per_example,
      'mfu': mfu(steady_examples / train_time_s if train_time_s else 0.0),
      'peak_flops_per_device': peak_source,
      'devices': mesh.size,
      'processes': jax.process_count(),
      'platform': jax.devices()[0].platform,
  }
  if is_main_process:
    writers.write_json_atomic(os.path.join(workdir, 'results.json'), results)
    if config.write_report:
      from research.evaluation import report  # here, so matplotlib loads only for runs that report
      try:
        logging.info('Report: %s', report.write_report(workdir))
      except Exception:  # the results are saved; a plotting failure must not lose them
        logging.exception('Writing the report failed; rerun `python -m research.report %s`.',
                          workdir)
  return results
