"""The one trainer: `train_and_evaluate(config, workdir)` runs any experiment from its config.

`Trainer` sets up (checks -> mesh -> data -> objective/model/optimizer -> sharded state ->
compiled steps, all in `experiment.build`), resumes or initialises, then loops: one
compiled step, then the periodic actions of `research.training.actions` (log, evaluate,
early-stop, preemption, checkpoint, profile), then the results. Pretraining, fine-tuning
and linear probes differ by config (objective, parameter groups, init_from), never by a
forked loop. Notebooks call `train_and_evaluate`; `research.main` is only a command line.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from research import config as config_lib
from research import models, paths, writers
from research.compress import prune
from research.data import balance, pipeline
from research.evaluation import evaluators
from research.parallel import distributed, sharding
from research.training import actions as actions_lib
from research.training import checkpoint as checkpoint_lib
from research.training import experiment, hardware, init_from, preemption

RESULTS_FILE = 'results.json'


def _truncate_metrics_log(path: str, last_step: int) -> None:
  """On resume, drops log records written after the checkpoint (they will be redone)."""
  if not paths.exists(path):
    return
  lines = paths.read_text(path).splitlines(keepends=True)
  kept = [line for line in lines if json.loads(line)['step'] <= last_step]
  paths.write_text_atomic(path, ''.join(kept))


class Trainer:
  """Holds a run's experiment, state and actions; `run()` trains and returns the results.

  Attributes the actions read and write: `state`, `eval_results` ({name: summary} of the
  latest evaluations), `evaluated_at` (the step of the latest one), `stop` (None, or why
  the loop ends after this step), `metrics_log`, `checkpointer`, `train_logger`.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    # ---- Checks that must fail before any expensive work ----
    config_lib.validate(config)
    self.config = config
    self.workdir = writers.prepare_workdir(workdir)
    distributed.initialize(config.distributed)  # before anything touches a device
    self.is_main_process = jax.process_index() == 0
    self.metrics_log = writers.MetricsLog(self.workdir, enabled=self.is_main_process)
    self.eval_specs = evaluators.specs(config)

    # ---- Mesh, data, objective, model, state shapes, compiled steps ----
    self.exp = experiment.build(config, workdir=self.workdir)
    self.evaluators = {spec.name: evaluators.build(spec, self.exp) for spec in self.eval_specs}
    sampler = None
    if config.dataset.balance_classes:
      sampler = balance.BalancedSampler(self.exp.train_split.labels, self.exp.info.num_classes,
                                        seed=config.seed)
      logging.info('Class-balanced epochs of %d examples; class frequencies %s -> %s.',
                   sampler.epoch_size, sampler.natural_frequencies.round(4).tolist(),
                   sampler.effective_frequencies.round(4).tolist())
    if self.is_main_process:  # what the data looked like to the model, for the record
      writers.write_json_atomic(os.path.join(self.workdir, 'data.json'), {
          'preprocess': config.dataset.preprocess, 'fitted': self.exp.preprocess.summary(),
          'class_balance': sampler.log_summary() if sampler else None})
    self.train_iter = iter(pipeline.train_dataset(
        self.exp.train_split, config.batch_size, seed=config.seed,
        shuffle=config.dataset.shuffle, process_index=jax.process_index(),
        process_count=jax.process_count(), preprocess=self.exp.preprocess.train_fn,
        sampler=sampler, prefetch_threads=config.dataset.prefetch_threads,
        batches_per_chunk=config.dataset.batches_per_chunk))
    self.checkpointer = checkpoint_lib.Checkpointer.for_run(self.workdir, config)
    self.checkpointer.leave_out = self.exp.base_paths  # LoRA: the base stays in init_from

    self.state = None
    self.start_step = 0
    self.eval_results: dict[str, dict[str, Any]] = {}
    self.evaluated_at: int | None = None
    self.stop: str | None = None
    self.actions: list[actions_lib.Action] = []
    self.train_logger: actions_lib.TrainLogger | None = None

  # ---- State ----
  def restore_or_init(self) -> dict[str, Any]:
    """Resumes from the newest checkpoint, or initialises (optionally from another run).
    Returns the trainer JSON saved with the checkpoint ({} when starting fresh)."""
    restored_trainer: dict[str, Any] = {}
    if self.config.checkpoint.resume:
      state, step, restored_trainer = self.checkpointer.restore(self.exp.abstract_state,
                                                                self.train_iter)
      if state is not None:
        if self.exp.base_paths:
          state = state.replace(params=init_from.restore_base(
              state.params, self.exp.abstract_state.params, self.config.init_from))
        self.state, self.start_step = state, step
        logging.info('Resumed from the checkpoint at step %d.', step)
        return restored_trainer
    self.state = self.exp.initial_state()
    if self.config.init_from.workdir or self.config.init_from.hf_dir:
      self.state, _ = init_from.load_params(self.state, self.config.init_from,
                                            self.exp.state_sharding.params)
    return {}

  def save(self, step: int, metrics: dict[str, float] | None) -> None:
    trainer_json = {a.state_key: a.state_dict() for a in self.actions if a.state_key}
    self.checkpointer.save(step, self.state, self.train_iter, metrics, trainer=trainer_json)

  def _build_actions(self, flops_per_example: int | None, peak_flops: float | None,
                     watcher: preemption.PreemptionWatcher) -> None:
    config, early, headline = self.config, self.config.early_stopping, self.exp.objective.headline_metric
    self.train_logger = actions_lib.TrainLogger(
        every_steps=config.log_every_steps, batch_size=config.batch_size,
        check_finite=config.nan_policy == 'stop', headline=headline,
        flops_per_example=flops_per_example, peak_flops=peak_flops,
        num_devices=self.exp.mesh.size,
        progress_bar=config.progress_bar and self.is_main_process,
        total_steps=config.num_train_steps, start_step=self.start_step)
    self.actions = [self.train_logger]
    self.actions += [actions_lib.Evaluate(spec, self.evaluators[spec.name], headline)
                     for spec in self.eval_specs]
    if early.metric:
      self.actions.append(actions_lib.EarlyStopping(early.metric, early.mode, early.patience,
                                                    early.min_delta))
    self.actions.append(actions_lib.PreemptionCheck(
        watcher, config.checkpoint.preemption_sync_every_steps))
    self.actions.append(actions_lib.Checkpoint(config.checkpoint.every_steps))
    if config.profile.start_step:
      self.actions.append(actions_lib.Profile(config.profile.start_step, config.profile.num_steps,
                                              os.path.join(self.workdir, 'profile')))

  def _finished_results(self, restored_trainer: dict[str, Any]) -> dict[str, Any] | None:
    """The saved results of a run that already finished (its last step or an early stop),
    or None."""
    stopped_at = restored_trainer.get('early_stopping', {}).get('stopped_at')
    done = self.start_step >= self.config.num_train_steps or (
        stopped_at is not None and stopped_at == self.start_step)
    path = os.path.join(self.workdir, RESULTS_FILE)
    if not (done and paths.exists(path)):
      return None
    return json.loads(paths.read_text(path))

  # ---- The loop ----
  def run(self) -> dict[str, Any]:
    config = self.config
    restored_trainer = self.restore_or_init()
    finished = self._finished_results(restored_trainer)
    if finished is not None:
      self.checkpointer.close()
      logging.info('The run in %s is already complete (step %d); its results are unchanged. '
                   'Use a new --workdir (or delete this one) to train again.', self.workdir,
                   self.start_step)
      return finished
    if self.start_step and self.is_main_process:
      _truncate_metrics_log(self.metrics_log.path, self.start_step)
    if self.is_main_process:
      writers.write_config(self.workdir, config)
    num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    flops_per_example = models.model_flops_per_example(self.exp.model, self.exp.example_shape)
    frozen_note = ''
    if flops_per_example:
      # The model's count assumes every parameter is trained; a frozen one skips work.
      fraction = self.exp.frozen_flops_fraction()
      if fraction != 1.0:
        flops_per_example = int(flops_per_example * fraction)
        frozen_note = f' ({fraction:.2f} of an all-trained step: parameters are frozen)'
    peak_flops, peak_source = hardware.peak_flops_per_device()
    logging.info('Model %s, objective %s: %s parameters, %s training FLOPs per example%s; '
                 'peak %s.', config.model.name, config.objective, f'{num_params:,}',
                 f'{flops_per_example:.3g}' if flops_per_example else 'unknown', frozen_note,
                 peak_source)

    train_fn = self.exp.train_fn  # jitted with in/out shardings and donation
    compilations_after_step_2 = None
    wall_start = time.perf_counter()
    with sharding.activate(self.exp.mesh), preemption.PreemptionWatcher() as watcher:
      self._build_actions(flops_per_example, peak_flops, watcher)
      for action in self.actions:
        if action.state_key and action.state_key in restored_trainer:
          action.load_state_dict(restored_trainer[action.state_key])
      try:
        for step in range(self.start_step + 1, config.num_train_steps + 1):
          for action in self.actions:
            action.before_step(self, step)
          batch = sharding.global_batch(next(self.train_iter), self.exp.batch_sharding)
          self.state, metrics = train_fn(self.state, batch)
          self.train_logger.record(step, metrics)
          if step == self.start_step + 2:
            compilations_after_step_2 = train_fn._cache_size()
          is_last = step == config.num_train_steps
          # A list, not any(): every action runs.
          if any([a.after_step(self, step, is_last) for a in self.actions]):
            self.train_logger.restart_interval()  # evals and saves are not training time
          if self.stop == 'preempted':
            self.checkpointer.wait()
            self.checkpointer.close()
            raise preemption.Preempted(step, watcher.signal_name)
          if self.stop:
            break
      finally:
        for action in self.actions:
          action.close()

    # Compile-once guard: a step that recompiles mid-run (changing shapes, dtypes or
    # shardings) silently costs a full compilation each time.
    if (compilations_after_step_2 is not None and
        train_fn._cache_size() > compilations_after_step_2):
      logging.warning('The train step was recompiled after step %d (%d compilations): an input '
                      'changed shape, dtype or sharding.', self.start_step + 2,
                      train_fn._cache_size())
    if not self.eval_results:  # resumed at the last step (results never written): evaluate
      with sharding.activate(self.exp.mesh):
        for action in self.actions:
          if isinstance(action, actions_lib.Evaluate):
            action.run(self, int(self.state.step))
    self.checkpointer.wait()
    best_step = self.checkpointer.best_step()
    self.checkpointer.close()
    results = self._results(num_params, flops_per_example, peak_source,
                            time.perf_counter() - wall_start)
    if self.is_main_process:
      writers.write_json_atomic(os.path.join(self.workdir, RESULTS_FILE),
                                {**results, 'best_checkpoint_step': best_step})
      if config.write_report:
        from research.evaluation import report  # here: matplotlib loads only for runs that report
        try:
          logging.info('Report: %s', report.write_report(self.workdir))
        except Exception:  # the results are saved; a plotting failure must not lose them
          logging.exception('Writing the report failed; rerun `python -m research.report %s`.',
                            self.workdir)
    return {**results, 'best_checkpoint_step': best_step}

  def _results(self, num_params: int, flops_per_example: int | None, peak_source: str,
               wall_time_s: float) -> dict[str, Any]:
    logger = self.train_logger
    early = next((a for a in self.actions if isinstance(a, actions_lib.EarlyStopping)), None)
    stopped_early_at = early.stopped_at if early else None
    examples_per_s = logger.steady_examples_per_s()
    return {
        **self.eval_results,
        'train': logger.last,
        'objective': self.config.objective,
        'headline_metric': self.exp.objective.headline_metric,
        'steps': stopped_early_at or self.config.num_train_steps,
        'stopped_early_at_step': stopped_early_at,
        'resumed_from_step': self.start_step,
        'num_params': int(num_params),
        'wall_time_s': wall_time_s,
        'compile_time_s': logger.compile_time_s,
        'train_step_compilations': self.exp.train_fn._cache_size(),
        'train_examples_per_s': examples_per_s,
        'flops_per_example': flops_per_example,
        'mfu': logger.mfu(examples_per_s),
        'peak_flops_per_device': peak_source,
        'devices': self.exp.mesh.size,
        'processes': jax.process_count(),
        'platform': jax.devices()[0].platform,
        **({'pruning': prune.sparsity_report(self.state.params, self.config)}
           if prune.enabled(self.config) else {}),
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates per `config`, writing outputs to `workdir`; returns the results.

  Resumes from `workdir/checkpoints` when it holds a checkpoint; a run that already
  finished is left untouched and its saved results returned. Raises
  `preemption.Preempted` after saving if SIGTERM/SIGINT arrives.
  """
  return Trainer(config, workdir).run()
