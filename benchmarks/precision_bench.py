"""Mixed precision and convolution implementations, measured side by side in one run.

    taskset -c 0 python -m benchmarks.precision_bench            # mlp, cnn, transformer (medium)
    taskset -c 0 python -m benchmarks.precision_bench --models=transformer --no-torch

Table 1, training steps (`benchmarks.bench`'s cases and timing: the trainer's jitted step,
Adam, one fixed batch; jax and the PyTorch twin alternate repeat by repeat): jax float32,
jax bfloat16 (`research.models.precision`'s policy), torch float32 and torch under
`torch.autocast(bfloat16)`, then the speed ratios (time of the second / time of the first:
above 1, the first is faster) and how many dots and convolutions take bfloat16 operands,
in the program handed to XLA and in the one XLA:CPU compiled.

Table 2, `conv_impl` per use (the small and medium CNNs, float32): the training step, and the jitted
evaluation forward pass at batch 1 and 256, for 'im2col' and 'xla'. The CNN's 'auto'
follows it: im2col for training steps on CPU, the XLA convolution everywhere else.
Pin it to one core: the numbers are ratios, measured in alternation.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench, compress_bench
from research.compress import quantize

MODELS = ('mlp', 'cnn', 'transformer')


def _ratio(slow: float | None, fast: float | None) -> str:
  return f'{slow / fast:.2f}' if slow and fast else '-'


def _ms(seconds: float | None) -> str:
  return f'{seconds * 1e3:.3g}' if seconds else '-'


def precision_rows(models: Sequence[str], size: str, repeats: int, use_torch: bool,
                   log=print) -> list[dict[str, Any]]:
  device = jax.devices('cpu')[0]
  worker = None
  if use_torch:
    worker, note = bench.start_torch_worker()
    if worker is None:
      log(f'torch: {note}')
  rows = []
  try:
    for family in models:
      case = bench.CASES[(family, size)]
      by_dtype = {}
      for dtype in ('float32', 'bfloat16'):
        by_dtype[dtype] = bench.bench_case(
            case, device=device, dtype=dtype, batch_size=case.batch_size, repeats=repeats,
            steps=0, target_s=0.4, peak_flops=0.0, torch_worker=worker, log=log)
      f32, bf16 = by_dtype['float32'], by_dtype['bfloat16']
      rows.append({
          'model': f'{family}/{size}', 'batch': case.batch_size,
          'jax_f32': f32['jax_step_s'], 'jax_bf16': bf16['jax_step_s'],
          'torch_f32': f32.get('torch_step_s'), 'torch_bf16': bf16.get('torch_step_s'),
          'dots_lowered': bf16['dots_lowered'], 'dots_compiled': bf16['dots_compiled'],
      })
  finally:
    if worker is not None:
      worker.close()
  return rows


def precision_table(rows: list[dict[str, Any]]) -> str:
  lines = [
      '| model | batch | jax f32 ms | jax bf16 ms | torch f32 ms | torch bf16 ms '
      '| jax bf16 vs jax f32 | jax bf16 vs torch bf16 | jax bf16 vs torch f32 '
      '| bf16 operands: our program | bf16 operands: XLA:CPU compiled |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|',
  ]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['batch']} | {_ms(r['jax_f32'])} | {_ms(r['jax_bf16'])} "
        f"| {_ms(r['torch_f32'])} | {_ms(r['torch_bf16'])} "
        f"| {_ratio(r['jax_f32'], r['jax_bf16'])} | {_ratio(r['torch_bf16'], r['jax_bf16'])} "
        f"| {_ratio(r['torch_f32'], r['jax_bf16'])} | {r['dots_lowered']} "
        f"| {r['dots_compiled']} |")
  return '\n'.join(lines)


def _forward_timer(runner: bench.JaxRunner, batch_size: int):
  """Seconds per evaluation forward pass at `batch_size`, by `compress_bench.timer`."""
  # Copies: the training step donates (deletes) the state's buffers when it runs.
  variables = jax.tree.map(jnp.copy, {'params': runner.state.params,
                                      **runner.state.model_state})
  row = {'fn': quantize.make_apply(runner.model), 'variables': variables, 'fields': {},
         'batch': jax.tree.map(np.asarray, dict(runner.batch))}
  run = compress_bench.timer(row, batch_size)
  n = max(1, int(0.3 / max(run(1), 1e-6)))
  return lambda: run(n)


def conv_rows(repeats: int, log=print) -> list[dict[str, Any]]:
  return [row for size in ('small', 'medium') for row in _conv_rows(size, repeats, log)]


def _conv_rows(size: str, repeats: int, log) -> list[dict[str, Any]]:
  case = bench.CASES[('cnn', size)]
  device = jax.devices('cpu')[0]
  timers: dict[str, dict[str, Any]] = {}
  for impl in ('im2col', 'xla'):
    cfg = bench.model_block(case, None, {'conv_impl': impl})
    runner = bench.JaxRunner(case, cfg, bench.make_batch(case, case.batch_size), device)
    runner.run(2)
    steps = bench._steps_for(runner.run(1), 0.4)
    timers[impl] = {
        f'training step (batch {case.batch_size})':
            (lambda r=runner, n=steps: r.run(n) / n),
        'evaluation, batch 1': _forward_timer(runner, 1),
        'evaluation, batch 256': _forward_timer(runner, 256),
    }
  rows = []
  for use in timers['xla']:
    times: dict[str, list[float]] = {'im2col': [], 'xla': []}
    for _ in range(repeats):
      for impl in ('im2col', 'xla'):
        times[impl].append(timers[impl][use]())
    row = {'use': f'cnn/{size}: {use}', **{impl: statistics.median(t) for impl, t in times.items()}}
    row['faster'] = 'im2col' if row['im2col'] < row['xla'] else 'xla'
    rows.append(row)
    log(f"  {row['use']}: im2col {_ms(row['im2col'])} ms, xla {_ms(row['xla'])} ms")
  return rows


def conv_table(rows: list[dict[str, Any]]) -> str:
  lines = ['| CNN (float32) | im2col ms | xla ms | xla time / im2col time | faster |',
           '|---|---:|---:|---:|---|']
  for r in rows:
    lines.append(f"| {r['use']} | {_ms(r['im2col'])} | {_ms(r['xla'])} "
                 f"| {_ratio(r['xla'], r['im2col'])} | {r['faster']} |")
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python -m benchmarks.precision_bench',
                              description=__doc__.split('\n')[0])
  p.add_argument('--models', default=','.join(MODELS), help='comma-separated: mlp,cnn,transformer')
  p.add_argument('--size', default='medium', help='small or medium')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--no-torch', dest='torch', action='store_false', help='jax only')
  p.add_argument('--no-conv', dest='conv', action='store_false', help='skip table 2')
  args = p.parse_args(argv)
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  for m in models:
    if (m, args.size) not in bench.CASES:
      p.error(f'no case {m}/{args.size}; known: {sorted(bench.CASES)}')
  print(f'CPUs: {sorted(os.sched_getaffinity(0))}, jax {jax.__version__}')
  rows = precision_rows(models, args.size, args.repeats, args.torch)
  tables = [precision_table(rows)]
  if args.conv:
    tables.append(conv_table(conv_rows(args.repeats)))
  print()
  print('\n\n'.join(tables))


if __name__ == '__main__':
  main()
