"""The compression table: each model's float32 run next to its compressed versions.

    taskset -c 1 python -m benchmarks.compress_bench \\
        --rows=cnn/float32=runs/c/cnn,cnn/w8a8=runs/c/cnn_w8a8,cnn/prune80=runs/c/cnn_p80

Each row is `MODEL/METHOD=RUN_DIR`; every MODEL needs a `MODEL/float32` row, the reference
of its other rows. A run directory is either a run written by `research.main` (float32,
pruned, distilled, QAT: its checkpoint's parameters, evaluated as trained) or one written
by `python -m research.quantize` (its int8 parameters, run by the quantized model).
Columns: test accuracy from the run's results.json and its change against the model's
float32 row (points), non-zero weights, bytes of the parameters on disk (one `.npz` of
every leaf for every row, int8 values plus float32 scales for quantized ones), then the
speed of the jitted inference function on the first test examples, as ratios to float32
measured in this same process: latency at batch 1 (float32 time / this row's time) and
throughput at batch 256 (this row's examples/s / float32's); above 1 is faster. Rows are
timed in alternation, repeat by repeat, and the median kept, so a noisy neighbour slows
every row alike. Pin it to one core (`taskset -c 1`): the header prints the CPUs it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from research import writers
from research.compress import quantize
from research.errors import ConfigError
from research.training import experiment, steps


def parse_rows(spec: str) -> list[tuple[str, str, str]]:
  rows = []
  for item in [s.strip() for s in spec.split(',') if s.strip()]:
    name, sep, run_dir = item.partition('=')
    model, slash, method = name.partition('/')
    if not (sep and slash and model and method and run_dir):
      raise ConfigError(f'--rows entry {item!r} must be MODEL/METHOD=RUN_DIR.')
    rows.append((model, method, run_dir))
  missing = sorted({m for m, _, _ in rows} - {m for m, method, _ in rows if method == 'float32'})
  if missing:
    raise ConfigError(f'--rows needs a MODEL/float32 row for {missing}: the reference of '
                      'the ratios.')
  return rows


def load_row(run_dir: str) -> dict[str, Any]:
  """The row's inference function, variables, example batch, accuracy and size."""
  with open(os.path.join(run_dir, 'results.json')) as f:
    results = json.load(f)
  ptq = writers.read_config(run_dir).get('post_training_quantization')
  if ptq is not None:
    _, exp, fn, like, _ = quantize.restore_quantized(ptq.source, ptq.mode, ptq.step)
    variables = quantize.load_variables(os.path.join(run_dir, quantize.PARAMS_FILE), like)
    size = os.path.getsize(os.path.join(run_dir, quantize.PARAMS_FILE))
  else:
    config, exp, state, _ = experiment.restore_run(run_dir)
    model = quantize.float_model(config, exp)
    variables = {'params': state.params, **state.model_state}
    fn = quantize.make_apply(model)
    with tempfile.TemporaryDirectory() as tmp:
      size = quantize.save_variables(os.path.join(tmp, 'params.npz'), variables)
  _, batch = next(exp.eval_batches(exp.config.dataset.eval_splits.split(',')[0].strip()))
  batch = jax.tree.map(np.asarray, dict(batch))
  return {'fn': fn, 'variables': variables, 'batch': batch, 'fields': exp.input_fields,
          'accuracy': results['test']['accuracy'], 'bytes': size,
          'nonzero': quantize.count_nonzero(variables['params'])}


def timer(row: dict[str, Any], batch_size: int) -> Callable[[int], float]:
  """`time(n) -> seconds per call` of the compiled function on `batch_size` examples."""
  batch = row['batch']
  reps = -(-batch_size // batch['inputs'].shape[0])
  inputs = np.concatenate([batch['inputs']] * reps)[:batch_size]
  kwargs = {k: np.concatenate([v] * reps)[:batch_size]
            for k, v in steps.model_inputs(batch, row['fields']).items()}
  compiled = jax.jit(row['fn']).lower(row['variables'], inputs, **kwargs).compile()
  jax.block_until_ready(compiled(row['variables'], inputs, **kwargs))

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      out = compiled(row['variables'], inputs, **kwargs)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n
  return run


def measure(rows: list[dict[str, Any]], batch_size: int, repeats: int, budget_s: float
            ) -> list[float]:
  """Median seconds per call of each row, rows alternating within each repeat."""
  timers = [timer(r, batch_size) for r in rows]
  calls = [max(1, int(budget_s / max(t(1), 1e-6))) for t in timers]
  times = [[] for _ in rows]
  for _ in range(repeats):
    for i, t in enumerate(timers):
      times[i].append(t(calls[i]))
  return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', required=True, help='MODEL/METHOD=RUN_DIR, comma-separated.')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--budget_s', type=float, default=0.2, help='Seconds per timing.')
  parser.add_argument('--json', default='', help='Also write the rows here.')
  args = parser.parse_args(argv)
  specs = parse_rows(args.rows)
  print(f'# CPUs {sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}, '
        f'{jax.devices()[0].platform}')
  table = []
  for model in dict.fromkeys(m for m, _, _ in specs):
    group = [(method, d) for m, method, d in specs if m == model]
    group.sort(key=lambda x: x[0] != 'float32')
    loaded = [load_row(d) for _, d in group]
    latency = measure(loaded, 1, args.repeats, args.budget_s)
    per_batch = measure(loaded, 256, args.repeats, args.budget_s)
    ref = loaded[0]
    for (method, run_dir), row, lat, thr in zip(group, loaded, latency, per_batch):
      table.append({
          'model': model, 'method': method, 'run': run_dir,
          'accuracy': row['accuracy'], 'delta_points': 100 * (row['accuracy'] - ref['accuracy']),
          'nonzero_params': row['nonzero'], 'bytes_on_disk': row['bytes'],
          'latency_b1_s': lat, 'latency_b1_speedup': latency[0] / lat,
          'throughput_b256': 256 / thr, 'throughput_b256_ratio': per_batch[0] / thr})
  print('| model | method | test accuracy % | change (points) | non-zero params | bytes on disk '
        '| latency b=1, x float32 | throughput b=256, x float32 |')
  print('|---|---|---:|---:|---:|---:|---:|---:|')
  for r in table:
    print(f"| {r['model']} | {r['method']} | {100 * r['accuracy']:.1f} | "
          f"{r['delta_points']:+.1f} | {r['nonzero_params']:,} | {r['bytes_on_disk']:,} | "
          f"{r['latency_b1_speedup']:.2f} | {r['throughput_b256_ratio']:.2f} |")
  if args.json:
    writers.write_json_atomic(args.json, table)
  return table


if __name__ == '__main__':
  from research.errors import one_line_errors
  one_line_errors(lambda argv: main(argv[1:]))(__import__('sys').argv)
