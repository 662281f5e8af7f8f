"""What training and evaluation share: mesh, data, objective, model, optimizer, state
shapes and shardings, the compiled steps.

`build(config)` sets up everything up to (not including) the state's values, so the
trainer can initialise or resume, and `research.evaluate` can restore a checkpoint into
exactly the layout that wrote it.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from research import config as config_lib
from research import models, objectives, writers
from research.data import pipeline, preprocess, sources
from research.errors import ConfigError
from research.evaluation import evaluators
from research.parallel import sharding
from research.training import checkpoint as checkpoint_lib
from research.compress import prune
from research.models import hf_bert, lora
from research.training import init_from, optim, steps


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  mesh: Mesh
  batch_sharding: NamedSharding
  info: sources.DatasetInfo
  train_split: sources.SplitArrays | None
  eval_splits: dict[str, sources.SplitArrays]  # keyed by tfds split name
  objective: objectives.Objective
  model: nn.Module
  input_fields: dict[str, str]                 # batch field -> model keyword (input_mask)
  init_fn: Callable[[jax.Array], Any]          # rng -> boxed TrainState
  abstract_state: Any                          # ShapeDtypeStructs carrying target shardings
  state_sharding: Any
  eval_fn: Callable                            # (state, batch, batch index) -> statistics
  predict_fn: Callable                         # (state, batch) -> model outputs
  train_fn: Callable                           # jitted, donating; compiles on first call
  example_shape: tuple[int, ...]               # one model input, after preprocessing
  example_dtype: np.dtype                      # as the pipeline ships it (uint8 images stay uint8)
  example_batch: dict[str, np.ndarray]         # one preprocessed example, every field
  preprocess: preprocess.Preprocess  # train_fn augments; eval_fn is what evaluation sees
  # LoRA: the frozen base's param paths, left out of checkpoints (reloaded from init_from).
  base_paths: frozenset[str] = frozenset()
  # The train step before jit and freezing (frozen=...), and the frozen mask train_fn uses.
  train_step: Callable | None = None
  frozen: Any = None

  def initial_state(self) -> steps.TrainState:
    """A fresh state, each shard created on its own device (no full copy anywhere)."""
    with sharding.activate(self.mesh):
      return jax.jit(lambda rng: nn.unbox(self.init_fn(rng)),
                     out_shardings=self.state_sharding)(jax.random.key(self.config.seed))

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch's shapes, dtypes and sharding (for ahead-of-time compiles)."""
    batch = self.config.batch_size
    return {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype, sharding=self.batch_sharding)
            for k, v in self.example_batch.items()}

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

  def frozen_flops_fraction(self) -> float:
    """The share of an all-trained step's FLOPs that this run's train step does: 1 unless
    parameters are frozen (then their weight gradients, and the backward pass below the
    lowest trained parameter, are skipped). XLA's FLOP counts of the two steps' lowered
    programs (traced, not compiled), so it holds for any model and freeze rule."""
    if self.frozen is None or not any(jax.tree.leaves(self.frozen)):
      return 1.0
    batch = self.abstract_batch()
    counts = []
    with sharding.activate(self.mesh):
      # train_fn itself for the frozen step: its trace is then reused by the first real call.
      for fn in (self.train_fn, jax.jit(functools.partial(self.train_step, frozen=None))):
        analysis = fn.lower(self.abstract_state, batch).cost_analysis()
        # a dict; a list of one per program in older jax
        counts.append(float((analysis[0] if isinstance(analysis, list) else analysis)['flops']))
    return counts[0] / counts[1]

  def eval_batches(self, split: str):
    """`(index, global batch)` over a whole split: padded last batch (mask False there),
    every example once; run under the mesh, so jitted steps see its shardings."""
    if split not in self.eval_splits:
      raise ConfigError(f'Split {split!r} was not loaded for evaluation; loaded: '
                        f'{sorted(self.eval_splits)}.')
    with sharding.activate(self.mesh):
      for i, local_batch in enumerate(pipeline.eval_dataset(
          self.eval_splits[split], self.config.eval_batch_size,
          process_index=jax.process_index(), process_count=jax.process_count(),
          preprocess=self.preprocess.eval_fn)):
        yield i, sharding.global_batch(local_batch, self.batch_sharding)

  def evaluate(self, state: steps.TrainState, split: str) -> dict[str, Any]:
    """The objective's metrics over a whole split (tfds split name)."""
    totals = None
    for i, batch in self.eval_batches(split):
      totals = evaluators.replicated_sum(totals, self.eval_fn(state, batch, np.int32(i)))
    return self.objective.summarize(totals)


def check_batch_sizes(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  micro = config.batch_size // config.grad_accum_steps
  if micro % data_parallel:
    raise ConfigError(
        f'config.batch_size={config.batch_size} (micro-batch {micro} with grad_accum_steps='
        f'{config.grad_accum_steps}) must be divisible by the data-parallel size '
        f'{data_parallel} (mesh data x fsdp).')
  if config.eval_batch_size % data_parallel:
    raise ConfigError(f'config.eval_batch_size={config.eval_batch_size} must be divisible by '
                     f'the data-parallel size {data_parallel} (mesh data x fsdp).')


def build(config: ml_collections.ConfigDict, *, load_train_split: bool = True,
          eval_split_names: list[str] | None = None, workdir: str | None = None,
          devices=None) -> Experiment:
  """`workdir` holds a tokenizer trained by the preprocessing (reused on resume and eval).
  `eval_split_names` defaults to every split an evaluator of the config reads."""
  if config.init_from.hf_dir:  # the checkpoint fixes the encoder's architecture
    changed = hf_bert.fill_model_config(config.model, config.init_from.hf_dir)
    if changed:
      logging.info('config.model set from %s: %s', config.init_from.hf_dir, changed)

  # ---- Mesh ----
  mesh = sharding.make_mesh(config.mesh, devices)
  check_batch_sizes(config, sharding.data_parallel_size(mesh))
  batch_sharding = sharding.batch_sharding(mesh)
  logging.info('Mesh %s over %d devices (%s), %d process(es).', dict(mesh.shape), mesh.size,
               jax.devices()[0].platform, jax.process_count())

  # ---- Data ----
  source = sources.open_source(config.dataset)
  info = source.info
  # Preprocessing statistics (standardize) and tokenizers are fitted on the training split,
  # so evaluation-only runs load it too when the spec needs it.
  spec = config.dataset.preprocess
  train_split = (source.load(config.dataset.train_split)
                 if load_train_split or preprocess.needs_train_split(spec) else None)
  if eval_split_names is None:
    eval_split_names = list(dict.fromkeys(spec.split for spec in evaluators.specs(config)))
  eval_splits = {name: source.load(name) for name in eval_split_names}
  pp = preprocess.build_preprocess(
      spec, train_split, seed=config.seed, num_classes=info.num_classes,
      process_index=jax.process_index(), process_count=jax.process_count(), cache_dir=workdir,
      pretrained_dir=config.init_from.hf_dir)
  logging.info('Preprocessing %r: %s', spec, pp.summary())
  if pp.vocab_size and 'vocab_size' in config.model and config.model.vocab_size < pp.vocab_size:
    raise ConfigError(f'config.model.vocab_size={config.model.vocab_size} is smaller than the '
                      f'tokenizer vocabulary ({pp.vocab_size}); set '
                      f'--config.model.vocab_size={pp.vocab_size}.')

  # ---- Objective, model, optimizer, state shapes and shardings ----
  objective = objectives.build(config, info=info, preprocess=pp)
  model = models.build_model(config.model, objective.num_outputs(info), config.lora)
  qat = config.quantization.qat
  if qat:  # fake-quantized dots (qwix); the params are the float model's
    from research.compress import quantize  # qwix loads only for runs that use it
    model = quantize.qat_model(model, qat)
  input_fields = models.batch_inputs(model)
  any_split = train_split if train_split is not None else next(iter(eval_splits.values()))
  example_batch = pp.eval_fn({'inputs': any_split.inputs[:1], 'labels': any_split.labels[:1],
                              'mask': np.ones(1, bool)}, 0)
  missing = sorted(set(objective.batch_fields) - set(example_batch))
  if missing:
    raise ConfigError(f'Objective {config.objective!r} needs batch fields {missing}; the '
                      f'preprocessed batch has {sorted(example_batch)}.')
  example_inputs = example_batch['inputs']
  example_kwargs = steps.model_inputs(example_batch, input_fields)

  try:
    boxed_params = jax.eval_shape(
        lambda rng: model.init(rng, example_inputs, train=False, **example_kwargs)['params'],
        jax.random.key(config.seed))
  except Exception as e:  # shape/dtype errors surface deep inside flax; say what met what
    raise ConfigError(
        f'Model {config.model.name!r} ({dict(config.model)}) cannot take the inputs of '
        f'dataset {info.name!r}: one example has shape {tuple(example_inputs.shape[1:])} and '
        f'dtype {example_inputs.dtype} (after preprocessing {config.dataset.preprocess!r}). '
        f'{type(e).__name__}: {e}') from e
  base_paths = _lora_base(config, boxed_params)
  optimizer_cfg = lora.optimizer_config(config)
  tx = optim.create_optimizer(optimizer_cfg, config.num_train_steps, params=boxed_params)
  tx = prune.wrap(tx, config, boxed_params)  # itself unless config.pruning.sparsity > 0
  init_fn = functools.partial(steps.create_train_state, model, tx, example_inputs,
                              model_kwargs=example_kwargs)
  boxed = jax.eval_shape(init_fn, jax.random.key(config.seed))
  state_sharding = sharding.tree_shardings(boxed, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(boxed), state_sharding)

  step_kwargs = dict(objective=objective, seed=config.seed, input_fields=input_fields)
  eval_fn = jax.jit(functools.partial(steps.eval_step, **step_kwargs),
                    in_shardings=(state_sharding, batch_sharding, sharding.replicated(mesh)),
                    out_shardings=sharding.replicated(mesh))
  predict_fn = jax.jit(functools.partial(steps.predict_step, input_fields=input_fields),
                       in_shardings=(state_sharding, batch_sharding))
  train_step = functools.partial(steps.train_step, **step_kwargs,
                                 grad_accum_steps=config.grad_accum_steps,
                                 skip_nonfinite=config.nan_policy == 'skip')
  frozen = optim.frozen_mask(optimizer_cfg, nn.unbox(boxed_params))
  train_fn = jax.jit(
      functools.partial(train_step, frozen=frozen),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=(0,))
  return Experiment(config=config, mesh=mesh, batch_sharding=batch_sharding, info=info,
                    train_split=train_split, eval_splits=eval_splits, objective=objective,
                    model=model, input_fields=input_fields,
                    init_fn=init_fn, abstract_state=abstract_state,
                    state_sharding=state_sharding, eval_fn=eval_fn, predict_fn=predict_fn,
                    train_fn=train_fn, preprocess=pp,
                    example_shape=tuple(example_inputs.shape[1:]),
                    example_dtype=example_inputs.dtype,
                    example_batch=example_batch, base_paths=base_paths,
                    train_step=train_step, frozen=frozen)


def _lora_base(config: ml_collections.ConfigDict, boxed_params) -> frozenset[str]:
  """LoRA's frozen base (empty without LoRA), after checking the targets matched and that
  init_from loads every frozen param (a fresh one could not be reloaded on resume)."""
  if not lora.enabled(config.lora):
    return frozenset()
  paths = optim.param_paths(boxed_params)
  lora.check_targets(config.lora, paths)
  frozen = re.compile(lora.freeze_regex(config.lora))
  base = {p for p in paths if frozen.search(p)}
  loaded = init_from.wanted(config.init_from, paths)
  fresh = sorted(base - loaded)
  if fresh:
    raise ConfigError(f'LoRA freezes {fresh}, which init_from does not load (load='
                      f'{config.init_from.load!r}, skip={config.init_from.skip!r}); train them '
                      f'(config.lora.trainable) or load them.')
  return frozenset(base)


def restore_run(workdir: str, checkpoint: str | int = 'latest', *,
                eval_split_names: list[str] | None = None):
  """A finished (or running) run rebuilt from WORKDIR/config.json, its checkpoint
  `checkpoint` ('latest', 'best' or a step) restored onto the current devices.

  Returns `(config, experiment, state, step)`. `eval_split_names` defaults to the run's
  first evaluation split (read for the model's input shapes).
  """
  config = writers.read_config(workdir)
  config.checkpoint.async_save = False
  checkpointer = checkpoint_lib.Checkpointer.for_run(workdir, config)
  checkpoint = str(checkpoint)
  if checkpoint == 'latest':
    step = checkpointer.latest_step()
  elif checkpoint == 'best':
    if not checkpointer.best_metric:
      raise ConfigError('--checkpoint=best needs a run with checkpoint.best_metric or '
                        'early_stopping.metric set; this run has neither.')
    step = checkpointer.best_step()
  elif checkpoint.isdigit():
    step = int(checkpoint)
  else:
    raise ConfigError(f"--checkpoint must be 'latest', 'best' or a step number, got {checkpoint!r}.")
  if step is None:
    raise ConfigError(f'No checkpoint in {checkpointer.directory}.')
  if step not in checkpointer.all_steps():
    raise ConfigError(f'--checkpoint={checkpoint}: no checkpoint at step {step} in '
                      f'{checkpointer.directory}; available steps: {checkpointer.all_steps()}.')
  if eval_split_names is None:
    eval_split_names = config_lib.eval_splits(config)[:1] or [config.dataset.train_split]
  exp = build(config, load_train_split=False, eval_split_names=eval_split_names,
              workdir=workdir)
  checkpointer.leave_out = exp.base_paths
  state = checkpointer.restore_state(exp.abstract_state, step)
  checkpointer.close()
  if exp.base_paths:
    state = state.replace(params=init_from.restore_base(state.params, exp.abstract_state.params,
                                                        config.init_from))
  return config, exp, state, step
