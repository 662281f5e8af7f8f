"""int8 quantization (qwix): outputs near float32, s8 dots in the compiled HLO, a run
quantized from the command line and evaluated by its own evaluators, QAT -> PTQ exact."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.compress import quantize
from research.training import train_and_evaluate
from tests.helpers import run_module, tiny_config

NUM_CLASSES = 10
TINY_TX = dict(num_layers=1, num_heads=2, hidden_size=16, mlp_ratio=2.0, dropout_rate=0.0,
               vocab_size=50, max_length=24)
# name: (model config, one example's shape, dtype)
CASES = {
    'mlp': (models.model_config('mlp'), (40,), jnp.float32),
    'cnn_im2col': (models.model_config('cnn', conv_impl='im2col'), (40,), jnp.float32),
    'cnn_conv': (models.model_config('cnn', conv_impl='xla'), (40,), jnp.float32),
    'transformer_text': (models.model_config('transformer', frontend='text', **TINY_TX),
                         (16,), jnp.int32),
}


def _setup(name: str, batch: int = 64):
  cfg, shape, dtype = CASES[name]
  model = models.build_model(cfg, NUM_CLASSES)
  rng = np.random.default_rng(0)
  if dtype == jnp.int32:
    x = jnp.asarray(rng.integers(1, 50, (batch, *shape)), jnp.int32)
  else:
    x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False))()
  return model, jax.tree.map(np.asarray, dict(variables)), x


def dot_operand_types(hlo: str) -> list[tuple[str, str]]:
  """The element types of both operands of every `dot` in compiled HLO text, resolved
  within each computation (fusion parameters are named per computation)."""
  out = []
  for block in re.split(r'\n(?=\S)', hlo):  # one computation per unindented header
    types = dict(re.findall(r'(%[\w.\-]+) = (\w+)\[', block))
    for lhs, rhs in re.findall(r'= \w+\[[^\]]*\]\{?[^ ]* dot\((%[\w.\-]+), (%[\w.\-]+)\)', block):
      out.append((types.get(lhs, '?'), types.get(rhs, '?')))
  return out


@pytest.mark.parametrize('name,mode', [('mlp', 'int8'), ('mlp', 'w8a8'), ('cnn_im2col', 'w8a8'),
                                       ('cnn_conv', 'w8a8'), ('transformer_text', 'w8a8')])
def test_quantized_outputs_are_close_to_float(name, mode):
  model, variables, x = _setup(name)
  want = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  qmodel, qvariables = quantize.quantize_variables(model, mode, variables, x[:1])
  compiled = jax.jit(quantize.make_apply(qmodel)).lower(qvariables, x).compile()
  got = np.asarray(compiled(qvariables, x))
  relative = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert relative < 0.05, relative
  assert not np.array_equal(got, want)  # it did quantize something
  kernels = [leaf for leaf in jax.tree.leaves(
      qvariables['params'], is_leaf=lambda v: isinstance(v, quantize.qwix.QArray))
             if isinstance(leaf, quantize.qwix.QArray)]
  assert kernels and all(k.qvalue.dtype == jnp.int8 for k in kernels)
  s8_dots = dot_operand_types(compiled.as_text()).count(('s8', 's8'))
  if mode == 'int8':  # weight-only: dequantized, float dots
    assert s8_dots == 0
  elif name != 'cnn_conv':  # every projection an s8 x s8 dot (fused attention's stay float)
    num_kernels = sum('kernel' in str(path[-1]) for path, _ in
                      jax.tree_util.tree_flatten_with_path(variables['params'])[0])
    assert s8_dots >= num_kernels, (dot_operand_types(compiled.as_text()), num_kernels)


def test_flat_quantized_function_exports_and_round_trips():
  model, variables, x = _setup('mlp', batch=4)
  qmodel, qvariables = quantize.quantize_variables(model, 'w8a8', variables, x[:1])
  fn = quantize.make_apply(qmodel)
  flat_fn, leaves = quantize.flat_apply(fn, qvariables)
  exported = jax.export.export(jax.jit(flat_fn))(leaves, x)
  restored = jax.export.deserialize(exported.serialize())
  np.testing.assert_array_equal(np.asarray(restored.call(leaves, x)),
                                np.asarray(jax.jit(fn)(qvariables, x)))


def test_float_model_has_no_int8_dots():
  model, variables, x = _setup('mlp')
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  types = dot_operand_types(hlo.as_text())
  assert types and ('s8', 's8') not in types


def test_qat_model_trains_and_converts_to_ptq_exactly():
  model, variables, x = _setup('mlp', batch=16)
  qat = quantize.qat_model(model, 'w8a8')
  labels = jnp.arange(x.shape[0]) % NUM_CLASSES

  def loss(params):
    logits = qat.apply({'params': params}, x, train=False)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), labels])
  grads = jax.grad(loss)(variables['params'])  # straight-through: gradients reach kernels
  assert all(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads))
  qat_out = np.asarray(qat.apply(variables, x, train=False))
  qmodel, qvariables = quantize.quantize_variables(model, 'w8a8', variables, x[:1])
  ptq_out = np.asarray(quantize.make_apply(qmodel)(qvariables, x))
  np.testing.assert_allclose(ptq_out, qat_out, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('float_run'))
  config = tiny_config('mlp', steps=5)
  results = train_and_evaluate(config, workdir)
  return workdir, results


def test_quantize_run_writes_an_evaluated_run(finished_run, tmp_path):
  # In process: README.md's `python -m research.quantize` command runs it from the command
  # line in the default suite (tests/test_readme.py).
  workdir, float_results = finished_run
  out = str(tmp_path / 'w8a8')
  quantize.quantize_run(workdir, 'w8a8', out)
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  # The same evaluator as training: the quantized model's metrics over the whole split.
  assert results['test']['num_examples'] == float_results['test']['num_examples']
  assert abs(results['test']['accuracy'] - float_results['test']['accuracy']) < 0.05
  assert results['quantization'] == 'w8a8' and results['num_params'] == float_results['num_params']
  # The saved int8 variables reload into the quantized function and give the same logits.
  fn, variables = quantize.quantized_apply(workdir, 'w8a8')
  saved = quantize.load_variables(os.path.join(out, quantize.PARAMS_FILE), variables)
  x = np.random.default_rng(1).normal(size=(8, 40)).astype(np.float32)  # MNIST-1D inputs
  np.testing.assert_array_equal(np.asarray(fn(saved, x)), np.asarray(fn(variables, x)))
  assert results['bytes_on_disk'] == os.path.getsize(os.path.join(out, quantize.PARAMS_FILE))


def test_quantize_command_rejects_a_bad_mode_in_one_line(tmp_path):
  proc = run_module('research.quantize', f'--workdir={tmp_path}', '--mode=int4',
                    f'--out={tmp_path}/q')
  assert proc.returncode != 0
  assert "--mode='int4' is not a quantization mode; accepted: ['int8', 'w8a8']" in proc.stderr
  assert 'Traceback' not in proc.stderr
