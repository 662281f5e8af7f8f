"""What training and evaluation share: mesh, data, model, state shapes and shardings, eval.

`build(config)` sets up everything up to (not including) the state's values, so the
trainer can initialise or resume, and `research.evaluate` can restore a checkpoint into
exactly the layout that wrote it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from research import config as config_lib
from research.evaluation import metrics as metrics_lib
from research import models
from research.training import optim, steps
from research.parallel import sharding
from research.data import pipeline, preprocess, sources


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  mesh: Mesh
  batch_sharding: NamedSharding
  info: sources.DatasetInfo
  train_split: sources.SplitArrays | None
  eval_splits: dict[str, sources.SplitArrays]  # keyed as results.json keys them
  model: nn.Module
  init_fn: Callable[[jax.Array], Any]          # rng -> boxed TrainState
  abstract_state: Any                          # ShapeDtypeStructs carrying target shardings
  state_sharding: Any
  eval_fn: Callable
  train_fn: Callable                           # jitted, donating; compiles on first call
  example_shape: tuple[int, ...]               # one model input, after preprocessing
  example_dtype: np.dtype                      # as the pipeline ships it (uint8 images stay uint8)
  preprocess: preprocess.Preprocess  # train_fn augments; eval_fn is what evaluation sees

  def initial_state(self) -> steps.TrainState:
    """A fresh state, each shard created on its own device (no full copy anywhere)."""
    with sharding.activate(self.mesh):
      return jax.jit(lambda rng: nn.unbox(self.init_fn(rng)),
                     out_shardings=self.state_sharding)(jax.random.key(self.config.seed))

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch's shapes, dtypes and sharding (for ahead-of-time compiles)."""
    batch = self.config.batch_size
    spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=self.batch_sharding)  # noqa: E731
    return {'inputs': spec((batch, *self.example_shape), self.example_dtype),
            'labels': spec((batch,), np.int32), 'mask': spec((batch,), np.bool_)}

  def train_step_memory(self) -> dict[str, int]:
    """Per-device bytes of the compiled train step (XLA's `memory_analysis()`)."""
    batch = self.abstract_batch()
    with sharding.activate(self.mesh):
      compiled = self.train_fn.lower(self.abstract_state, batch).compile()
    analysis = compiled.memory_analysis()
    batch_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch))
    per_device_batch = batch_bytes // sharding.data_parallel_size(self.mesh)
    return {
        'arguments': analysis.argument_size_in_bytes,
        'state': analysis.argument_size_in_bytes - per_device_batch,  # params + opt state
        'outputs': analysis.output_size_in_bytes,
        'temporaries': analysis.temp_size_in_bytes,
    }

  def evaluate(self, state: steps.TrainState, split_name: str) -> dict[str, Any]:
    """Metrics over a whole split: padded last batch, every example counted once."""
    totals = None
    with sharding.activate(self.mesh):
      for local_batch in pipeline.eval_dataset(
          self.eval_splits[split_name], self.config.eval_batch_size,
          process_index=jax.process_index(), process_count=jax.process_count(),
          preprocess=self.preprocess.eval_fn):
        out = self.eval_fn(state, sharding.global_batch(local_batch, self.batch_sharding))
        totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
    return metrics_lib.summarize(totals)


def check_batch_sizes(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  micro = config.batch_size // config.grad_accum_steps
  if micro % data_parallel:
    raise ValueError(
        f'config.batch_size={config.batch_size} (micro-batch {micro} with grad_accum_steps='
        f'{config.grad_accum_steps}) must be divisible by the data-parallel size '
        f'{data_parallel} (mesh data x fsdp).')
  if config.eval_batch_size % data_parallel:
    raise ValueError(f'config.eval_batch_size={config.eval_batch_size} must be divisible by '
                     f'the data-parallel size {data_parallel} (mesh data x fsdp).')


def build(config: ml_collections.ConfigDict, *, load_train_split: bool = True,
          eval_split_names: list[str] | None = None, workdir: str | None = None,
          devices=None) -> Experiment:
  """`workdir` holds a tokenizer trained by the preprocessing (reused on resume and eval)."""
  # ---- Mesh ----
  mesh = sharding.make_mesh(config.mesh, devices)
  check_batch_sizes(config, sharding.data_parallel_size(mesh))
  batch_sharding = sharding.batch_sharding(mesh)
  logging.info('Mesh %s over %d devices (%s), %d process(es).', dict(mesh.shape), mesh.size,
               jax.devices()[0].platform, jax.process_count())

  # ---- Data ----
  builder = sources.open_builder(config.dataset)
  info = sources.dataset_info(builder, config.dataset)
  # Preprocessing statistics (standardize) and tokenizers are fitted on the training split,
  # so evaluation-only runs load it too when the spec needs it.
  spec = config.dataset.preprocess
  train_split = (sources.load_split(builder, info, config.dataset.train_split)
                 if load_train_split or preprocess.needs_train_split(spec) else None)
  names = config_lib.eval_splits(config) if eval_split_names is None else eval_split_names
  eval_splits = {config_lib.results_key(name): sources.load_split(builder, info, name) for name in names}
  pp = preprocess.build_preprocess(
      spec, train_split, seed=config.seed, num_classes=info.num_classes,
      process_index=jax.process_index(), process_count=jax.process_count(), cache_dir=workdir)
  logging.info('Preprocessing %r: %s', spec, pp.summary())
  if pp.vocab_size and 'vocab_size' in config.model and config.model.vocab_size < pp.vocab_size:
    raise ValueError(f'config.model.vocab_size={config.model.vocab_size} is smaller than the '
                     f'tokenizer vocabulary ({pp.vocab_size}); set '
                     f'--config.model.vocab_size={pp.vocab_size}.')

  # ---- Model, optimizer, state shapes and shardings ----
  model = models.build_model(config.model, info.num_classes)
  tx = optim.create_optimizer(config.optimizer, config.num_train_steps)
  any_split = train_split if train_split is not None else next(iter(eval_splits.values()))
  example_inputs = pp.eval_fn({'inputs': any_split.inputs[:1], 'labels': any_split.labels[:1],
                               'mask': np.ones(1, bool)}, 0)['inputs']
  init_fn = functools.partial(steps.create_train_state, model, tx, example_inputs)
  try:
    boxed = jax.eval_shape(init_fn, jax.random.key(config.seed))
  except Exception as e:  # shape/dtype errors surface deep inside flax; say what met what
    raise ValueError(
        f'Model {config.model.name!r} ({dict(config.model)}) cannot take the inputs of '
        f'dataset {info.name!r}: one example has shape {tuple(example_inputs.shape[1:])} and '
        f'dtype {example_inputs.dtype} (after preprocessing {config.dataset.preprocess!r}). '
        f'{type(e).__name__}: {e}') from e
  state_sharding = sharding.tree_shardings(boxed, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(boxed), state_sharding)

  eval_fn = jax.jit(functools.partial(steps.eval_step, num_classes=info.num_classes),
                    in_shardings=(state_sharding, batch_sharding),
                    out_shardings=sharding.replicated(mesh))
  train_fn = jax.jit(
      functools.partial(steps.train_step, seed=config.seed,
                        grad_accum_steps=config.grad_accum_steps,
                        skip_nonfinite=config.nan_policy == 'skip'),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=(0,))
  return Experiment(config=config, mesh=mesh, batch_sharding=batch_sharding, info=info,
                    train_split=train_split, eval_splits=eval_splits, model=model,
                    init_fn=init_fn, abstract_state=abstract_state,
                    state_sharding=state_sharding, eval_fn=eval_fn, train_fn=train_fn,
                    preprocess=pp,
                    example_shape=tuple(example_inputs.shape[1:]),
                    example_dtype=example_inputs.dtype)
