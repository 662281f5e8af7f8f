"""The benchmark runs and reports sane numbers; the PyTorch twins are the flax models.

The torch tests skip where torch is absent (CI does not install it; `pip install -e '.[bench]'`).
"""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from research import bench, models

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
  with pytest.raises(ValueError, match='only the transformer'):
    bench.model_block(bench.CASES[('mlp', 'small')], 'bfloat16')
  assert bench.model_block(bench.CASES[('transformer', 'bert_base')], 'bfloat16').dtype == 'bfloat16'


def _flax_params(case: bench.Case, batch: dict) -> tuple[nn.Module, dict]:
  model = models.build_model(bench.model_block(case), case.num_classes)
  params = nn.unbox(model.init(jax.random.key(0), batch['inputs'][:1]))['params']
  return model, jax.device_get(params)


@pytest.mark.parametrize('key', sorted(bench.CASES))
def test_torch_twins_have_the_flax_param_counts(key):
  torch = pytest.importorskip('torch')
  from research import bench_torch
  case = bench.CASES[key]
  model = models.build_model(bench.model_block(case), case.num_classes)
  example = bench.make_batch(case, 1)['inputs']
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), example)))
  flax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract['params']))
  with torch.device('meta'):  # no memory for BERT-base's 109M parameters
    twin = bench_torch.build(case.family, bench.model_block(case).to_dict(), case.input_shape,
                             case.num_classes)
  assert bench_torch.param_count(twin) == flax_count


# Variants beyond the benchmark's cases, so every branch of each twin is checked.
VARIANTS = [
    ('mlp', 'small', {}),
    ('cnn', 'small', {}),
    ('cnn', 'medium', {}),
    ('cnn', 'small', {'pooling': 'mean', 'hidden_sizes': (16,)}),
    ('transformer', 'small', {}),
    ('transformer', 'small', {'pooling': 'mean', 'position_embedding': 'sinusoidal'}),
    ('transformer', 'small', {'head': 'masked_lm', 'scan_layers': True}),
    ('transformer', 'medium', {'num_layers': 1}),
]


@pytest.mark.parametrize('family,size,overrides', VARIANTS)
def test_torch_twins_compute_the_flax_function(family, size, overrides):
  torch = pytest.importorskip('torch')
  from research import bench_torch
  case = bench.CASES[(family, size)]
  case = bench.Case(case.family, case.size, {**case.model, **overrides}, case.input_shape, 4)
  batch = bench.make_batch(case, 4)
  model, params = _flax_params(case, batch)
  expected = np.asarray(model.apply({'params': params}, batch['inputs']))

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
