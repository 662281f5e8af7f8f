"""A finished run as a self-contained model directory for serving (the library behind
`python -m research.export --workdir=runs/demo [--checkpoint=latest|best|STEP] --out=DIR`).

The directory (format: `research/serving/artifact.py`) holds a `jax.export` module with a
symbolic batch size for cpu, cuda and tpu, its weights, `signature.json`, the run's
tokenizer, a model card (config, results) and a sha256 manifest. It loads with jax and
numpy alone (`loader.py` inside it), and `python -m research.serve --model=DIR` serves it.

The numeric preprocessing of the run's evaluation pipeline (scale, standardize, centre
crops) is traced into the exported function, its fitted statistics stored with the
weights; text is tokenized by the loader as the run's pipeline does.

Other kinds of model plug in through `Exportable`: `export_run` builds one from a run
directory; a quantized run (or any `apply_fn` with its variables) builds its own and
calls `write_artifact`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import export as jax_export

from research import writers
from research.data import preprocess as preprocess_lib
from research.data import tokenizers
from research.errors import ConfigError
from research.serving import artifact
from research.training import experiment, steps

PLATFORMS = ('cpu', 'cuda', 'tpu')
_PREPROCESS_PREFIX = 'preprocess'

# numpy dtype -> Open Inference Protocol datatype.
DATATYPES = {'bool': 'BOOL', 'uint8': 'UINT8', 'int8': 'INT8', 'int16': 'INT16',
             'int32': 'INT32', 'int64': 'INT64', 'float16': 'FP16', 'float32': 'FP32',
             'float64': 'FP64'}


@dataclasses.dataclass
class Exportable:
  """What an artifact is made of: a pure function of (variables, model inputs) and data.

  `apply_fn(variables, inputs, **model_kwargs) -> logits [B, K]`, where `variables` is the
  nested dict of collections (params, batch_stats...) and `model_kwargs` the model's extra
  batch inputs (`mask_BxL` for text). A quantized model provides its own `apply_fn` and
  (int8) `variables`; everything else is the run's.
  """
  name: str
  apply_fn: Callable[..., jax.Array]
  variables: dict[str, Any]
  preprocess: preprocess_lib.Preprocess
  input_fields: dict[str, str]      # batch field -> model keyword (input_mask -> mask_BxL)
  raw_shape: tuple[int, ...]        # one raw example (numeric runs; () for text)
  raw_dtype: np.dtype               # the dataset's input dtype (object/bytes/str for text)
  class_names: list[str]
  card: dict[str, Any]              # the model card: config, results, step, source


# ---- Preprocessing, traced into the exported function ----

def _text_step(pp: preprocess_lib.Preprocess) -> tuple[int, dict[str, Any]] | None:
  for position, (name, _) in enumerate(pp.spec):
    if preprocess_lib.OPS[name].tokenizes:
      return position, pp.steps[position][1]
  return None


def _numeric_ops(pp: preprocess_lib.Preprocess) -> list[tuple[str, str, dict[str, Any]]]:
  """`(key prefix, op name, fitted params)` of the ops the exported function runs."""
  ops = []
  for position, ((name, _), (op, params)) in enumerate(zip(pp.spec, pp.steps)):
    if op.tokenizes:
      if position != 0:
        raise ConfigError(f'Cannot export preprocessing {pp.spec!r}: the tokenizer must be '
                          f'the first op.')
      continue
    if name not in _JAX_OPS:
      raise ConfigError(f'Cannot export preprocessing op {name!r}: the exporter runs '
                        f'{sorted(_JAX_OPS)} and the tokenizers.')
    ops.append((f'{_PREPROCESS_PREFIX}/{position}_{name}', name, params))
  return ops


def _statistics(ops) -> dict[str, np.ndarray]:
  """The fitted statistics, stored with the weights (float32, as the pipeline uses them)."""
  out = {}
  for prefix, name, params in ops:
    if name == 'scale':
      out[f'{prefix}/low'] = np.float32(params['low'])
      out[f'{prefix}/range'] = np.float32(params['high'] - params['low'])
    elif name == 'standardize':
      out[f'{prefix}/mean'] = np.asarray(params['mean'], np.float32)
      out[f'{prefix}/std'] = np.asarray(params['std'], np.float32)
  return {k: np.asarray(v) for k, v in out.items()}


def _jax_crop(x, stats, params):
  """Evaluation's `random_crop`: identity at the input size, else pad and centre-crop."""
  axes = tuple(range(1, x.ndim - 1)) if x.ndim >= 3 else (1,)
  in_size = tuple(x.shape[a] for a in axes)
  size, pad = params['size'], params['pad']
  out = in_size if size is None else (
      (size,) * len(axes) if isinstance(size, int) else tuple(size))
  if out == in_size:
    return x
  widths = [(pad, pad) if a in axes else (0, 0) for a in range(x.ndim)]
  x = jnp.pad(x, widths, mode=params['mode'])
  index = [slice(None)] * x.ndim
  for a, o, i in zip(axes, out, in_size):
    start = (i + 2 * pad - o) // 2
    index[a] = slice(start, start + o)
  return x[tuple(index)]


# Each: (inputs, statistics under the op's prefix, fitted params) -> inputs, in evaluation.
_JAX_OPS: dict[str, Callable] = {
    'to_float': lambda x, s, p: x.astype(jnp.float32),
    'scale': lambda x, s, p: (x.astype(jnp.float32) - s['low']) / s['range'],
    'standardize': lambda x, s, p: (x.astype(jnp.float32) - s['mean']) / s['std'],
    'random_crop': _jax_crop,
    'random_shift': lambda x, s, p: x,  # augmentations do nothing in evaluation
    'flip': lambda x, s, p: x,
    'one_hot': lambda x, s, p: x,       # targets only
}


def serving_function(model: Exportable) -> tuple[Callable, dict[str, np.ndarray]]:
  """`(fn, variables)`: `fn(variables, *model inputs) -> logits float32 [B, K]` with the
  numeric preprocessing inside, and the flat variables (path -> array) it takes."""
  ops = _numeric_ops(model.preprocess)
  text = _text_step(model.preprocess) is not None
  flat = {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(model.variables), sep='/').items()}
  flat.update(_statistics(ops))

  def fn(variables, *inputs):
    model_vars = traverse_util.unflatten_dict(
        {k: v for k, v in variables.items() if not k.startswith(_PREPROCESS_PREFIX + '/')},
        sep='/')
    batch = {'inputs': inputs[0]}
    if text:
      batch['input_mask'] = inputs[1]
    x = batch['inputs']
    for prefix, name, params in ops:
      stats = {k[len(prefix) + 1:]: v for k, v in variables.items() if k.startswith(prefix + '/')}
      x = _JAX_OPS[name](x, stats, params)
    # As the pipeline leaves it: uint8 stays uint8, token ids int32, the rest float32.
    if x.dtype != jnp.uint8 and (jnp.issubdtype(x.dtype, jnp.floating) or not text):
      x = x.astype(jnp.float32)
    batch['inputs'] = x
    kwargs = steps.model_inputs(batch, model.input_fields)
    return model.apply_fn(model_vars, x, **kwargs).astype(jnp.float32)
  return fn, flat


# ---- Writing the directory ----

def _input_specs(model: Exportable, text: dict[str, Any] | None):
  """(signature inputs, exported argument shapes) for a symbolic batch `b`."""
  b, = jax_export.symbolic_shape('b')
  if text:
    length = text['max_len']
    args = [jax.ShapeDtypeStruct((b, length), jnp.int32), jax.ShapeDtypeStruct((b, length), bool)]
    inputs = [{'name': 'text', 'datatype': 'BYTES', 'shape': [-1], 'numpy_dtype': 'str'}]
    return inputs, args
  dtype = np.dtype(model.raw_dtype)
  if dtype.kind in 'OSU':
    raise ConfigError('The run reads text but has no tokenizer op: nothing to export.')
  if dtype.itemsize == 8:  # jax computes in 32 bits; the pipeline's first cast does the same
    dtype = np.dtype(dtype.kind + '4') if dtype.kind != 'u' else np.dtype('uint32')
  if dtype.name not in DATATYPES:
    raise ConfigError(f'Cannot export inputs of dtype {dtype}; supported: {sorted(DATATYPES)}.')
  args = [jax.ShapeDtypeStruct((b, *model.raw_shape), dtype)]
  inputs = [{'name': 'inputs', 'datatype': DATATYPES[dtype.name],
             'shape': [-1, *model.raw_shape], 'numpy_dtype': dtype.name}]
  return inputs, args


def _text_spec(model: Exportable, out_dir: str) -> dict[str, Any] | None:
  """Writes the tokenizer file and returns signature.json's `text` entry."""
  found = _text_step(model.preprocess)
  if found is None:
    return None
  _, params = found
  tok = params['tokenizer']
  spec = {'max_len': int(params['max_len']), 'cls': bool(params['cls'])}
  if isinstance(tok, tokenizers.ByteTokenizer):
    return {'tokenizer': 'bytes', **spec}
  if isinstance(tok, tokenizers.WordPieceTokenizer):
    tok.save(os.path.join(out_dir, 'tokenizer.json'))
    return {'tokenizer': 'wordpiece', 'file': 'tokenizer.json', **spec}
  if isinstance(tok, tokenizers.SentencePieceTokenizer):
    tok.save(os.path.join(out_dir, 'tokenizer.model'))
    return {'tokenizer': 'sentencepiece', 'file': 'tokenizer.model', **spec}
  raise ConfigError(f'Cannot export tokenizer {type(tok).__name__}: the loader knows '
                    f'ByteTokenizer, WordPieceTokenizer and SentencePieceTokenizer.')


def write_artifact(model: Exportable, out: str, *, platforms=PLATFORMS) -> dict[str, Any]:
  """Writes the model directory `out` (replacing an earlier export there; anything else
  in the way is an error) and returns its signature."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isfile(os.path.join(out, artifact.MANIFEST)) and (
      not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f'--out={out} exists and is not an exported model; choose a new '
                      f'directory (an earlier export there would be replaced).')
  tmp = f'{out}.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    text = _text_spec(model, tmp)
    inputs, arg_specs = _input_specs(model, text)
    fn, variables = serving_function(model)
    var_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in variables.items()}
    exported = jax_export.export(jax.jit(fn), platforms=platforms)(var_specs, *arg_specs)
    out_aval = exported.out_avals[0]
    if len(exported.out_avals) != 1 or len(out_aval.shape) != 2:
      raise ConfigError(f'Export serves classifiers (logits [batch, classes]); this model '
                        f'returns {[a.shape for a in exported.out_avals]}.')
    num_classes = int(out_aval.shape[1])
    with open(os.path.join(tmp, artifact.MODULE_FILE), 'wb') as f:
      f.write(exported.serialize())
    np.savez(os.path.join(tmp, artifact.WEIGHTS_FILE), **variables)
    signature = {
        'format_version': artifact.FORMAT_VERSION,
        'name': model.name,
        'inputs': inputs,
        'outputs': [
            {'name': 'logits', 'datatype': 'FP32', 'shape': [-1, num_classes]},
            {'name': 'probabilities', 'datatype': 'FP32', 'shape': [-1, num_classes]},
            {'name': 'label', 'datatype': 'INT64', 'shape': [-1]},
            {'name': 'class_name', 'datatype': 'BYTES', 'shape': [-1]}],
        'class_names': list(model.class_names),
        'text': text,
        'function_inputs': [{'shape': ['batch', *a.shape[1:]], 'dtype': str(a.dtype)}
                            for a in arg_specs],
        'platforms': list(platforms),
        'variables': sorted(variables),
    }
    writers.write_json_atomic(os.path.join(tmp, artifact.SIGNATURE_FILE), signature)
    card = {**model.card, 'exported_at': datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec='seconds'), 'jax_version': jax.__version__,
            'num_parameters': int(sum(v.size for k, v in variables.items()
                                      if k.startswith('params/')))}
    writers.write_json_atomic(os.path.join(tmp, 'model_card.json'), card)
    shutil.copyfile(artifact.__file__, os.path.join(tmp, 'loader.py'))
    artifact.write_manifest(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  # Swap in the complete directory: a failure above leaves an earlier export untouched.
  old = f'{out}.old{os.getpid()}'
  if os.path.exists(out):
    os.replace(out, old)
  os.replace(tmp, out)
  shutil.rmtree(old, ignore_errors=True)
  return signature


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def from_run(workdir: str, checkpoint: str | int = 'latest', quantize: str = '') -> Exportable:
  """The run in `workdir` at `checkpoint` ('latest', 'best' or a step), ready to write;
  `quantize` ('int8' or 'w8a8', `research.compress.quantize`): its int8 model instead."""
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise ConfigError(f'--workdir={workdir} is not a run directory (no config.json).')
  if quantize:
    from research.compress import quantize as quantize_lib  # qwix loads only when asked
    config, exp, qfn, qvariables, step = quantize_lib.restore_quantized(workdir, quantize,
                                                                        checkpoint)
    # qwix's quantized arrays are pytree nodes the artifact format does not know: the
    # function takes their leaves (int8 values, float32 scales) under numbered names.
    flat_fn, leaves = quantize_lib.flat_apply(qfn, qvariables)
    names = [f'q{i:04d}' for i in range(len(leaves))]
    variables = {'params': dict(zip(names, leaves))}
    apply_fn = lambda v, x, **kw: flat_fn([v['params'][n] for n in names], x, **kw)
  else:
    config, exp, state, step = experiment.restore_run(workdir, checkpoint)
    variables = {'params': state.params, **state.model_state}
    model = exp.model
    apply_fn = lambda v, x, **kw: model.apply(v, x, train=False, **kw)
  split = next(iter(exp.eval_splits.values()))
  card = {'source_workdir': os.path.abspath(workdir), 'checkpoint': str(checkpoint),
          'step': int(step), 'quantization': quantize or 'none',
          'config': _read_json(os.path.join(workdir, 'config.json')),
          'results': _read_json(os.path.join(workdir, 'results.json'))}
  return Exportable(
      name=os.path.basename(os.path.normpath(workdir)), apply_fn=apply_fn,
      variables=variables, preprocess=exp.preprocess, input_fields=exp.input_fields,
      raw_shape=tuple(split.inputs.shape[1:]), raw_dtype=split.inputs.dtype,
      class_names=list(exp.info.class_names), card=card)


def export_run(workdir: str, out: str, checkpoint: str | int = 'latest',
               name: str | None = None, quantize: str = '') -> dict[str, Any]:
  """Exports the run in `workdir` (int8 with `quantize='int8'|'w8a8'`) to `out`; returns
  the artifact's signature."""
  model = from_run(workdir, checkpoint, quantize)
  if name:
    model.name = name
  return write_artifact(model, out)
