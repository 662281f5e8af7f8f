"""The one trainer: `train_and_evaluate(config, workdir)` runs any experiment from its config.

Sections, top to bottom: checks -> mesh -> data -> model/optimizer -> sharded state ->
compiled steps -> loop (log, eval) -> results. Notebooks call this function directly;
`research.main` is only a command-line shell around it.
"""
from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from research import config as config_lib
from research import models, optim, sharding, steps, writers
from research.data import pipeline, sources


def _summarise_eval(totals: dict[str, Any]) -> dict[str, Any]:
  count = float(totals['count'])
  return {
      'loss': float(totals['loss_sum']) / count,
      'accuracy': float(totals['correct']) / count,
      'num_examples': int(round(count)),
      'confusion_matrix': np.asarray(totals['confusion']).round().astype(int).tolist(),
  }


def evaluate(state: steps.TrainState, eval_fn, split: sources.SplitArrays, batch_size: int,
             batch_sharding) -> dict[str, Any]:
  """Metrics over the whole split: padded last batch, every example counted once."""
  totals = None
  for local_batch in pipeline.eval_dataset(split, batch_size,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count()):
    out = eval_fn(state, sharding.global_batch(local_batch, batch_sharding))
    totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
  return _summarise_eval(jax.device_get(totals))


def _check_batch_sizes(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  micro = config.batch_size // config.grad_accum_steps
  if micro % data_parallel:
    raise ValueError(
        f'config.batch_size={config.batch_size} (micro-batch {micro} with grad_accum_steps='
        f'{config.grad_accum_steps}) must be divisible by the data-parallel size '
        f'{data_parallel} (mesh data x fsdp).')
  if config.eval_batch_size % data_parallel:
    raise ValueError(f'config.eval_batch_size={config.eval_batch_size} must be divisible by '
                     f'the data-parallel size {data_parallel} (mesh data x fsdp).')


def _mean_metrics(buffered: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(buffered)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates per `config`, writing outputs to `workdir`; returns the results."""
  # ---- Checks that must fail before any expensive work ----
  config_lib.validate(config)
  workdir = writers.prepare_workdir(workdir)
  is_main_process = jax.process_index() == 0
  if is_main_process:
    writers.write_config(workdir, config)
  metrics_log = writers.MetricsLog(workdir, enabled=is_main_process)

  # ---- Mesh ----
  mesh = sharding.make_mesh(config.mesh)
  data_parallel = sharding.data_parallel_size(mesh)
  _check_batch_sizes(config, data_parallel)
  batch_sharding = sharding.batch_sharding(mesh)
  logging.info('Mesh %s over %d devices (%s).', dict(mesh.shape), mesh.size,
               jax.devices()[0].platform)

  # ---- Data ----
  builder = sources.open_builder(config.dataset)
  info = sources.dataset_info(builder, config.dataset)
  train_split = sources.load_split(builder, info, config.dataset.train_split)
  # Results are keyed by split; 'train' already names the training-loop metrics, so an
  # evaluation of the train split is reported as 'train_eval'.
  eval_splits = {('train_eval' if name == 'train' else name):
                 sources.load_split(builder, info, name)
                 for name in config_lib.eval_splits(config)}
  train_ds = pipeline.train_dataset(
      train_split, config.batch_size, seed=config.seed, shuffle=config.dataset.shuffle,
      process_index=jax.process_index(), process_count=jax.process_count())

  # ---- Model, optimizer, sharded state ----
  model = models.build_model(config.model, info.num_classes)
  tx = optim.create_optimizer(config.optimizer, config.num_train_steps)
  example_inputs = pipeline.default_preprocess(train_split.inputs[:1])
  init_fn = functools.partial(steps.create_train_state, model, tx, example_inputs)
  init_rng = jax.random.key(config.seed)
  # Shapes and shardings first, then materialise each shard where it lives: no full copy
  # of the state on one device.
  abstract_state = jax.eval_shape(init_fn, init_rng)
  state_sharding = sharding.tree_shardings(abstract_state, mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda rng: nn.unbox(init_fn(rng)), out_shardings=state_sharding)(init_rng)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('Model %s: %s parameters.', config.model.name, f'{num_params:,}')

  # ---- Compiled steps ----
  replicated = sharding.replicated(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, seed=config.seed,
                        grad_accum_steps=config.grad_accum_steps),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(steps.eval_step, num_classes=info.num_classes),
                    in_shardings=(state_sharding, batch_sharding), out_shardings=replicated)

  # ---- Loop ----
  def run_evals(step: int) -> dict[str, dict[str, Any]]:
    out = {}
    for name, split in eval_splits.items():
      result = evaluate(state, eval_fn, split, config.eval_batch_size, batch_sharding)
      metrics_log.write(step, name, {k: v for k, v in result.items()
                                     if k != 'confusion_matrix'})
      logging.info('step %d  %s: loss %.4f  accuracy %.4f  (%d examples)', step, name,
                   result['loss'], result['accuracy'], result['num_examples'])
      out[name] = result
    return out

  train_iter = iter(train_ds)
  buffered: list[dict[str, jax.Array]] = []
  last_train: dict[str, float] = {}
  compile_time_s = 0.0
  train_time_s = 0.0  # steady-state step time, excluding the first (compiling) step
  steady_examples = 0
  interval_start = time.perf_counter()
  interval_examples = 0
  wall_start = time.perf_counter()
  eval_results: dict[str, dict[str, Any]] = {}
  bar = tqdm(total=config.num_train_steps, desc='train', unit='step', dynamic_ncols=True,
             disable=not (config.progress_bar and is_main_process))
  with jax.set_mesh(mesh):
    for step in range(1, config.num_train_steps + 1):
      local_batch = next(train_iter)
      batch = sharding.global_batch(local_batch, batch_sharding)
      if step == 1:
        t0 = time.perf_counter()
        state, metrics = train_fn(state, batch)
        jax.block_until_ready(metrics)
        compile_time_s = time.perf_counter() - t0
        interval_start = time.perf_counter()
      else:
        state, metrics = train_fn(state, batch)
        interval_examples += config.batch_size
      buffered.append(metrics)
      bar.update(1)

      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        last_train = _mean_metrics(buffered)
        buffered = []
        elapsed = time.perf_counter() - interval_start
        train_time_s += elapsed
        steady_examples += interval_examples
        last_train['examples_per_s'] = interval_examples / elapsed if interval_examples else 0.0
        metrics_log.write(step, 'train', last_train)
        bar.set_postfix(loss=f"{last_train['loss']:.4f}",
                        ex_s=f"{last_train['examples_per_s']:,.0f}")
        if bar.disable:
          logging.info('step %d  train: loss %.4f  accuracy %.4f  %.0f examples/s', step,
                       last_train['loss'], last_train['accuracy'],
                       last_train['examples_per_s'])

      is_last = step == config.num_train_steps
      if is_last or (config.eval_every_steps and step % config.eval_every_steps == 0):
        eval_results = run_evals(step)

      if step % config.log_every_steps == 0 or is_last:
        interval_start = time.perf_counter()  # evals do not count against throughput
        interval_examples = 0
  bar.close()

  results = {
      **eval_results,
      'train': last_train,
      'steps': config.num_train_steps,
      'num_params': int(num_params),
      'wall_time_s': time.perf_counter() - wall_start,
      'compile_time_s': compile_time_s,
      'train_examples_per_s': steady_examples / train_time_s if train_time_s else 0.0,
      'devices': mesh.size,
      'platform': jax.devices()[0].platform,
  }
  if is_main_process:
    writers.write_json_atomic(f'{workdir}/results.json', results)
  return results
