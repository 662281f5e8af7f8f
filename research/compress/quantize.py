"""int8 quantization with qwix: post-training (PTQ) of a finished run, and quantization-aware
training (QAT) from `config.quantization.qat`.

Modes (`MODES`):
- 'int8': int8 weights (per output channel, absmax), float32 activations. Smaller on disk;
  on CPU not faster (XLA dequantizes the weight, then runs a float32 dot). A library
  convolution (`conv_impl='xla'`) stays float here: qwix quantizes those only with int8
  activations.
- 'w8a8': int8 weights and int8 activations. Activation scales are dynamic (absmax of each
  row, computed in the dot), so no calibration batches are needed; the compiled dots are
  `s32 dot(s8, s8)`.

`quantized_apply(run_dir, mode)` returns `(fn, variables)` with `fn(variables, inputs,
**batch_inputs) -> logits`: a plain function for export (`flat_apply` gives it a flat list
of arrays in place of the variables' tree, which `jax.export` serializes). `quantize_run` writes a new run
directory (quantized params, config.json, results.json from the run's own evaluators);
`python -m research.quantize` is its command line.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import qwix

from research import models, writers
from research.errors import ConfigError
from research.parallel import sharding
from research.training import experiment, optim, steps

MODES = ('int8', 'w8a8')
QAT_MODES = ('',) + MODES
PARAMS_FILE = 'quantized_params.npz'


def check_mode(mode: str, key: str = '--mode') -> None:
  if mode not in MODES:
    raise ConfigError(f'{key}={mode!r} is not a quantization mode; accepted: {list(MODES)}.')


def _rules(mode: str, rule_cls=qwix.QuantizationRule) -> list:
  check_mode(mode)
  if mode == 'w8a8':
    return [rule_cls(module_path='.*', weight_qtype=jnp.int8, act_qtype=jnp.int8)]
  # qwix quantizes a library convolution (nn.Conv, conv_impl='xla') only with int8
  # activations too: weight-only mode leaves it float (im2col convolutions are dots).
  return [rule_cls(module_path='.*', weight_qtype=jnp.int8, op_names=('dot_general', 'einsum'))]


def qat_model(model: nn.Module, mode: str) -> nn.Module:
  """`model` with fake-quantized dots in training (straight-through gradients)."""
  if not mode:
    return model
  if mode not in MODES:
    raise ConfigError(f'config.quantization.qat={mode!r}; accepted: {list(QAT_MODES)}.')
  return qwix.quantize_model(model, qwix.QtProvider(_rules(mode, qwix.QtRule)))


def ptq_model(model: nn.Module, mode: str) -> nn.Module:
  """`model` whose dots take int8 weights (and, for 'w8a8', int8 activations)."""
  return qwix.quantize_model(model, qwix.PtqProvider(_rules(mode)))


def quantize_variables(model: nn.Module, mode: str, variables: dict[str, Any],
                       example_inputs: Any, **model_kwargs) -> tuple[nn.Module, dict[str, Any]]:
  """`(quantized model, its variables)`: float params -> int8 (qwix QArrays); other
  collections (BatchNorm statistics) unchanged."""
  qmodel = ptq_model(model, mode)
  abstract = jax.eval_shape(
      lambda: qmodel.init(jax.random.key(0), example_inputs, train=False, **model_kwargs))
  params = qwix.quantize_params(jax.tree.map(jnp.asarray, nn.unbox(variables['params'])),
                                abstract['params'])
  return qmodel, {**variables, 'params': params}


def make_apply(qmodel: nn.Module) -> Callable[..., jax.Array]:
  """`fn(variables, inputs, **batch_inputs) -> outputs` in evaluation mode."""
  def fn(variables, inputs, **batch_inputs):
    return qmodel.apply(variables, inputs, train=False, **batch_inputs)
  return fn


def float_model(config: ml_collections.ConfigDict, exp: experiment.Experiment) -> nn.Module:
  """The run's model without QAT's fake quantization (what PTQ starts from)."""
  return models.build_model(config.model, exp.objective.num_outputs(exp.info))


def _example(exp: experiment.Experiment) -> tuple[Any, dict[str, Any]]:
  batch = exp.example_batch
  return batch['inputs'], steps.model_inputs(batch, exp.input_fields)


def restore_quantized(workdir: str, mode: str, checkpoint: str | int = 'latest', *,
                      eval_split_names: list[str] | None = None):
  """`(config, experiment, fn, variables, step)`: a run's checkpoint, quantized."""
  check_mode(mode)
  config, exp, state, step = experiment.restore_run(workdir, checkpoint,
                                                    eval_split_names=eval_split_names)
  variables = {'params': state.params, **state.model_state}
  inputs, kwargs = _example(exp)
  qmodel, qvariables = quantize_variables(float_model(config, exp), mode, variables, inputs,
                                          **kwargs)
  return config, exp, make_apply(qmodel), qvariables, step


def quantized_apply(run_dir: str, mode: str = 'w8a8', checkpoint: str | int = 'latest'
                    ) -> tuple[Callable[..., jax.Array], dict[str, Any]]:
  """`(fn, variables)`, `fn(variables, inputs, **batch_inputs) -> logits`: the run's model
  with int8 dots, for export (`jax.jit(fn)`, `jax.export`). `batch_inputs` are the
  model's extra inputs (the Transformer's `mask_BxL`), as `research.predict` passes them."""
  _, _, fn, variables, _ = restore_quantized(run_dir, mode, checkpoint)
  return fn, variables


def flat_apply(fn: Callable[..., jax.Array], variables
               ) -> tuple[Callable[..., jax.Array], list[jax.Array]]:
  """`(flat_fn, leaves)`: `fn` taking its variables as a flat list of arrays, which
  `jax.export` can serialize (qwix's QArray is a pytree node it does not know)."""
  leaves, treedef = jax.tree.flatten(variables)

  def flat_fn(leaves, inputs, **batch_inputs):
    return fn(jax.tree.unflatten(treedef, leaves), inputs, **batch_inputs)
  return flat_fn, leaves


def quantized_experiment(exp: experiment.Experiment, fn: Callable) -> experiment.Experiment:
  """`exp` whose eval and predict functions run `fn` on variables (in place of a state), so
  the run's own evaluators measure the quantized model."""
  def outputs(variables, batch):
    return fn(variables, batch['inputs'], **steps.model_inputs(batch, exp.input_fields))

  def eval_fn(variables, batch, batch_index):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(exp.config.seed),
                                                steps._EVAL_STREAM), batch_index)
    batch = exp.objective.prepare(batch, key, False)
    return exp.objective.eval_statistics(outputs(variables, batch), batch)

  return dataclasses.replace(exp, eval_fn=jax.jit(eval_fn), predict_fn=jax.jit(outputs))


# ---- Saving: flat npz of every leaf, keyed by its path; restored by re-quantizing shapes ----

def flat_arrays(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {optim.path_of(path): np.asarray(leaf) for path, leaf in leaves}


def save_variables(path: str, variables) -> int:
  """Writes the variables (int8 values, float32 scales) through a temp file; returns bytes."""
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **flat_arrays(variables))
  os.replace(tmp, path)
  return os.path.getsize(path)


def load_variables(path: str, like) -> Any:
  """The variables saved by `save_variables`, in the structure of `like`."""
  with np.load(path) as data:
    arrays = dict(data)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  missing = [optim.path_of(p) for p, _ in leaves if optim.path_of(p) not in arrays]
  if missing:
    raise ConfigError(f'{path} lacks {missing[:5]}: it was written for another model.')
  return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(arrays[optim.path_of(p)])
                                                for p, _ in leaves])


def _weights(tree) -> list:
  """The weight arrays of a (possibly quantized) param tree: a QArray's int8 values, not
  its scales."""
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, qwix.QArray))
  return [x.qvalue if isinstance(x, qwix.QArray) else x for x in leaves]


def num_weights(tree) -> int:
  return int(sum(np.size(x) for x in _weights(tree)))


def count_nonzero(tree) -> int:
  return int(sum(np.count_nonzero(np.asarray(x)) for x in _weights(tree)))


def quantize_run(workdir: str, mode: str, out: str, checkpoint: str | int = 'latest'
                 ) -> dict[str, Any]:
  """Quantizes a finished run into a new run directory `out` and evaluates it with the
  run's evaluators. Writes `out/{quantized_params.npz, config.json, results.json}`."""
  check_mode(mode)
  if os.path.abspath(out) == os.path.abspath(workdir):
    raise ConfigError(f'--out={out!r} is the source run; choose a new directory.')
  from research import config as config_lib  # the evaluator specs of the source run
  from research.evaluation import evaluators
  config = writers.read_config(workdir)
  splits = list(dict.fromkeys(spec.split for spec in evaluators.specs(config)))
  out = writers.prepare_workdir(out)
  config, exp, fn, variables, step = restore_quantized(workdir, mode, checkpoint,
                                                       eval_split_names=splits)
  qexp = quantized_experiment(exp, fn)
  results: dict[str, Any] = {}
  with sharding.activate(exp.mesh):
    for spec in evaluators.specs(config):
      results[spec.name] = evaluators.build(spec, qexp).evaluate(variables)
  bytes_on_disk = save_variables(os.path.join(out, PARAMS_FILE), variables)
  # The source run's config plus where the int8 parameters came from (compress_bench reads it).
  writers.write_json_atomic(os.path.join(out, 'config.json'), {
      **config.to_dict(), 'post_training_quantization': {
          'mode': mode, 'source': os.path.abspath(workdir), 'step': step}})
  results.update({
      'objective': config.objective,
      'headline_metric': exp.objective.headline_metric,
      'quantization': mode, 'source_run': os.path.abspath(workdir), 'source_step': step,
      'num_params': num_weights(variables['params']),
      'bytes_on_disk': bytes_on_disk,
      'eval_splits': config_lib.eval_splits(config),
  })
  writers.write_json_atomic(os.path.join(out, 'results.json'), results)
  return results
