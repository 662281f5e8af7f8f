"""The benchmark runs and reports sane numbers; the PyTorch twins are the flax models.

The torch tests skip where torch is absent (CI does not install it; `pip install -e '.[bench]'`).
"""
from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from benchmarks import bench
from research import models

NUMERIC_FIELDS = ('params', 'batch', 'jax_steps_per_s', 'jax_examples_per_s', 'compile_s',
                  'mfu', 'flops_per_step')


def test_small_mlp_jax_only_table_and_json(tmp_path):
  out = tmp_path / 'bench.json'
  result = bench.run(['--models=mlp', '--sizes=small', '--repeats=2', '--steps=3', '--no-torch',
                      f'--json={out}'], log=lambda _: None)
  header = result['table'].splitlines()[0]
  for column in ('model', 'size', 'params', 'batch', 'jax steps/s', 'jax ex/s', 'compile s',
                 'MFU %', 'torch ex/s', 'jax/torch'):
    assert column in header
  assert '| mlp | small | 15,210 | 100 |' in result['table']
  assert 'Machine: ' in result['table'] and 'GFLOP/s' in result['table']

  saved = json.loads(out.read_text())
  assert saved['machine']['peak_gflops'] > 0
  assert saved['machine']['cores'] >= 1 and saved['machine']['jax'] == jax.__version__
  (row,) = saved['rows']
  assert (row['model'], row['size'], row['params'], row['batch']) == ('mlp', 'small', 15210, 100)
  for field in NUMERIC_FIELDS:
    assert row[field] > 0, field
  assert len(row['jax_step_s_all']) == 2
  assert 'torch_examples_per_s' not in row  # --no-torch: jax-only


def test_unknown_model_or_size_is_rejected():
  with pytest.raises(SystemExit):
    bench.parse_args(['--models=resnet'])
  with pytest.raises(SystemExit):
    bench.parse_args(['--sizes=huge'])


def test_dtype_needs_a_model_with_a_dtype_field():
  for family in bench.FAMILIES:  # every family follows the mixed-precision policy
    assert bench.model_block(bench.CASES[(family, 'small')], 'bfloat16').dtype == 'bfloat16'

  class NoDtype(nn.Module):
    num_classes: int

    def __call__(self, x, train=False):
      return x
  models.register('no_dtype_for_bench_test', NoDtype)
  try:
    case = dataclasses.replace(bench.CASES[('mlp', 'small')], family='no_dtype_for_bench_test')
    with pytest.raises(ValueError, match="'no_dtype_for_bench_test' has no dtype field"):
      bench.model_block(case, 'bfloat16')
  finally:
    models.MODELS.pop('no_dtype_for_bench_test')


def _flax_params(case: bench.Case, batch: dict) -> tuple[nn.Module, dict]:
  model = models.build_model(bench.model_block(case), case.num_classes)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch['inputs'][:1]))['params']
  # Perturbed: biases and relative-position tables start at zero, which would hide a
  # twin that reads them wrongly.
  leaves, treedef = jax.tree.flatten(jax.device_get(params))
  rng = np.random.default_rng(1)
  leaves = [x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves]
  return model, jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize('key', sorted(bench.CASES))
def test_torch_twins_have_the_flax_param_counts(key):
  torch = pytest.importorskip('torch')
  from benchmarks import bench_torch
  case = bench.CASES[key]
  model = models.build_model(bench.model_block(case), case.num_classes)
  example = bench.make_batch(case, 1)['inputs']
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), example)))
  flax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract['params']))
  with torch.device('meta'):  # no memory for BERT-base's 109M parameters
    twin = bench_torch.build(case.family, bench.model_block(case).to_dict(), case.input_shape,
                             case.num_classes)
  assert bench_torch.param_count(twin) == flax_count


# Variants beyond the benchmark's cases, so every branch of each twin is checked. One per
# family runs in `make test` (torch is in the test extra for the Hugging Face parity tests);
# the rest, about a minute of CPU, in `make test-slow`.
def _slow(*variant):
  return pytest.param(*variant, marks=pytest.mark.slow)


VARIANTS = [
    ('mlp', 'small', {}),
    ('cnn', 'small', {}),
    _slow('cnn', 'medium', {}),
    _slow('cnn', 'small', {'pooling': 'mean', 'hidden_sizes': (16,)}),
    ('transformer', 'small', {}),
    _slow('transformer', 'small', {'pooling': 'mean', 'position_embedding': 'sinusoidal'}),
    _slow('transformer', 'small', {'head': 'masked_lm', 'scan_layers': True}),
    _slow('transformer', 'small', {'position_embedding': 'relative', 'pooling': 'cls'}),
    _slow('transformer', 'medium', {'position_embedding': 'relative', 'num_layers': 1,
                                    'hidden_size': 32, 'num_heads': 2}),  # text: padding mask
    ('transformer', 'medium', {'num_layers': 1, 'hidden_size': 32, 'num_heads': 2}),  # text
]


@pytest.mark.parametrize('family,size,overrides', VARIANTS)
def test_torch_twins_compute_the_flax_function(family, size, overrides):
  torch = pytest.importorskip('torch')
  from benchmarks import bench_torch
  case = bench.CASES[(family, size)]
  case = bench.Case(case.family, case.size, {**case.model, **overrides}, case.input_shape, 4)
  batch = bench.make_batch(case, 4)
  model, params = _flax_params(case, batch)
  expected = np.asarray(jax.jit(model.apply)({'params': params}, batch['inputs']))

  twin = bench_torch.build(family, bench.model_block(case).to_dict(), case.input_shape,
                           case.num_classes)
  bench_torch.load_flax_params(family, twin, params)
  twin.eval()
  x = torch.from_numpy(np.ascontiguousarray(bench_torch.to_torch_layout(family, batch['inputs'])))
  with torch.no_grad():
    got = twin(x if x.is_floating_point() else x.long()).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_torch_worker_times_steps_and_checks_param_counts():
  pytest.importorskip('torch')
  worker, why = bench.start_torch_worker()
  assert worker is not None, why
  try:
    row = bench.bench_case(bench.CASES[('mlp', 'small')], device=jax.devices('cpu')[0],
                           dtype='float32', batch_size=100, repeats=2, steps=2, target_s=0.1,
                           peak_flops=1e11, torch_worker=worker, log=lambda _: None)
  finally:
    worker.close()
  assert row['torch_examples_per_s'] > 0 and row['jax_over_torch'] > 0
  assert len(row['jax_over_torch_all']) == 2


def test_set_overrides_only_models_that_have_the_key():
  with pytest.raises(SystemExit, match='no hyperparameter'):
    bench.run(['--models=mlp', '--set', 'conv_impl=xla', '--no-torch'], log=lambda _: None)
  assert bench._parse_overrides(['hidden_sizes=[8,8]', 'residual=False', 'activation=gelu']) == {
      'hidden_sizes': (8, 8), 'residual': False, 'activation': 'gelu'}


@pytest.mark.parametrize('key', sorted(bench.CASES))
def test_every_case_gets_the_trainers_shardings(key):
  """The trainer's logical-axis rules accept every benchmarked model (shapes only, no compile)."""
  from research.parallel import sharding
  case = bench.CASES[key]
  model = models.build_model(bench.model_block(case), case.num_classes)
  example = bench.make_batch(case, 1)['inputs']
  mesh = sharding.make_mesh(bench.ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1}),
                            devices=jax.devices()[:1])
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
  shardings = sharding.tree_shardings(abstract['params'], mesh)
  assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(nn.unbox(abstract['params'])))


@pytest.mark.parametrize('shape,overrides', [
    ((40,), {}),                                                   # the MNIST-1D paper CNN
    pytest.param((28, 28, 1), dict(bench.CASES[('cnn', 'medium')].model),  # 2D, strides 1, 2
                 marks=pytest.mark.slow),                          # (the heaviest: test-slow)
    ((37, 3), dict(features=(8, 8), kernel_sizes=(4, 5), strides=(3, 1), padding=2,
                   pooling='mean')),
])
def test_cnn_im2col_is_the_xla_convolution(shape, overrides):
  """conv_impl='im2col' (the CPU default) has nn.Conv's params and computes its function."""
  x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
  results = {}
  for impl in ('xla', 'im2col'):
    model = models.build_model(models.model_config('cnn', conv_impl=impl, **overrides), 10)
    # Jitted: one compile each instead of one per primitive (eager mode), the same numbers.
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), x))['params']
    loss = lambda p: (model.apply({'params': p}, x) ** 2).sum()
    results[impl] = (params, jax.jit(model.apply)({'params': params}, x),
                     jax.jit(jax.grad(loss))(params))
  (p_xla, y_xla, g_xla), (p_im2col, y_im2col, g_im2col) = results['xla'], results['im2col']
  jax.tree.map(np.testing.assert_array_equal, p_xla, p_im2col)  # same init, same tree
  np.testing.assert_allclose(y_im2col, y_xla, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_im2col, g_xla)


def test_without_torch_the_table_is_jax_only(monkeypatch):
  monkeypatch.setattr(bench.importlib.util, 'find_spec', lambda name: None)
  result = bench.run(['--models=mlp', '--sizes=small', '--repeats=1', '--steps=2'],
                     log=lambda _: None)
  assert 'torch: not run (torch is not installed' in result['table']
  assert result['rows'][0]['jax_examples_per_s'] > 0
  assert '| - | - |' in result['table']


def test_small_cases_are_the_mnist1d_configs(repo_root):
  """The 'small' rows benchmark the models users train from configs/mnist1d/."""
  import runpy
  for family in ('mlp', 'cnn', 'transformer'):
    config = runpy.run_path(f'{repo_root}/configs/mnist1d/{family}.py')['get_config']()
    case = bench.CASES[(family, 'small')]
    assert dict(bench.model_block(case)) == dict(config.model), family
    assert case.batch_size == config.batch_size and case.input_shape == (40,)
