"""Is the input pipeline ever the bottleneck? Pipeline examples/s vs training examples/s.

  python -m benchmarks.data_bench [--batch_size=256] [--json=out.json]

For every offline dataset: examples/s that the grain training pipeline delivers (gather +
preprocessing, host side, batches dropped as training drops them), next to examples/s that
the fastest model's (logistic regression's) compiled train step consumes on this machine,
and their ratio. The two are timed in alternation so that both see the same load.
"""
from __future__ import annotations

import functools
import json
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from research import models, objectives
from research.training import optim, steps
from research.config import default_config
from research.data import pipeline, sources

_BATCH = flags.DEFINE_integer('batch_size', 256, 'Global batch size for both measurements.')
_JSON = flags.DEFINE_string('json', '', 'Also write the numbers to this file.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats; the median is reported.')
_CALLS = flags.DEFINE_integer('batches', 1000, 'Batches per timed repeat.')
# The array datasets (text needs a tokenizer and a text model: see the masked-LM config).
DATASETS = tuple(n for n in sources.OFFLINE_DATASETS
                 if n.split('/')[0] in ('mnist1d', 'mnist_subset', 'sklearn_digits'))


def _rate(fn, examples_per_call: int, calls: int) -> float:
  start = time.perf_counter()
  fn(calls)
  return examples_per_call * calls / (time.perf_counter() - start)


def bench_dataset(name: str, batch_size: int, repeats: int, calls: int) -> dict:
  """Pipeline and train step timed in alternation, so both see the same machine load."""
  config = default_config()
  config.dataset.name = name
  builder = sources.open_builder(config.dataset)
  info = sources.dataset_info(builder, config.dataset)
  split = sources.load_split(builder, info, 'train')

  dataset = pipeline.train_dataset(split, batch_size, seed=0,
                                   prefetch_threads=config.dataset.prefetch_threads,
                                   batches_per_chunk=config.dataset.batches_per_chunk)
  it = iter(dataset)
  next(it)

  def read(n):  # drops each batch, as training does (keeping them would time page faults)
    for _ in range(n):
      next(it)

  model = models.build_model(models.model_config('logistic'), info.num_classes)
  tx = optim.create_optimizer(config.optimizer, 1000)
  batch = jax.device_put(next(it))
  state = nn.unbox(steps.create_train_state(model, tx, batch['inputs'][:1], jax.random.key(0)))
  step = jax.jit(functools.partial(steps.train_step, seed=0,
                                   objective=objectives.lookup('classification')()),
                 donate_argnums=(0,))
  state, metrics = step(state, batch)  # compile
  jax.block_until_ready(metrics)

  def train(n):
    nonlocal state
    for _ in range(n):
      state, m = step(state, batch)
    jax.block_until_ready(m)

  pipeline_rates, train_rates = [], []
  for _ in range(repeats):
    pipeline_rates.append(_rate(read, batch_size, calls))
    train_rates.append(_rate(train, batch_size, calls))
  return {'dataset': name, 'examples': len(split), 'input_shape': list(split.inputs.shape[1:]),
          'input_dtype': str(split.inputs.dtype),
          'batches_per_chunk': dataset.batches_per_chunk,
          'pipeline_examples_per_s': statistics.median(pipeline_rates),
          'train_examples_per_s': statistics.median(train_rates),
          'ratio': statistics.median(p / t for p, t in zip(pipeline_rates, train_rates))}


def main(argv) -> None:
  del argv
  rows = [bench_dataset(name, _BATCH.value, _REPEATS.value, _CALLS.value) for name in DATASETS]
  print(f'\nBatch {_BATCH.value}, {_REPEATS.value} alternating repeats of {_CALLS.value} batches '
        f'each (medians; the ratio is the median of the per-repeat ratios), '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s), '
        f'numpy {np.__version__}, jax {jax.__version__}\n')
  print('| dataset | train examples | example | batches per read | pipeline ex/s | '
        'logistic train step ex/s | pipeline / train |')
  print('|---|---:|---|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['dataset']} | {r['examples']:,} | {tuple(r['input_shape'])} "
          f"{r['input_dtype']} | {r['batches_per_chunk']} | "
          f"{r['pipeline_examples_per_s']:,.0f} | {r['train_examples_per_s']:,.0f} | "
          f"{r['ratio']:.1f}x |")
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  app.run(main)
