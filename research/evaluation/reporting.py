"""Human-readable summaries of results (terminal tables)."""
from __future__ import annotations

from typing import Any

import ml_collections


def _count(metrics: dict[str, Any]) -> str:
  for key in ('num_examples', 'num_tokens'):
    if key in metrics:
      return f'{int(metrics[key]):,} {key[4:]}'
  return '-'


def _value(metrics: dict[str, Any], key: str) -> str:
  value = metrics.get(key)
  return f'{value:.4f}' if isinstance(value, (int, float)) else '-'


def results_table(results: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """The run's headline: loss and the objective's main metric per split, throughput, MFU."""
  headline = results.get('headline_metric', 'accuracy')
  lines = [
      f'\n{config.dataset.name} / {config.model.name} / {results.get("objective", "classification")}: '
      f'{results["steps"]} steps, {results["num_params"]:,} params, seed {config.seed}',
      '',
      f'| split | loss | {headline} | evaluated on |',
      '|---|---|---|---|',
  ]
  train = results.get('train', {})
  if train:
    lines.append(f"| train (last {config.log_every_steps} steps) | {_value(train, 'loss')} | "
                 f"{_value(train, headline)} | - |")
  for split, m in results.items():
    if not isinstance(m, dict) or split == 'train' or 'loss' not in m:
      continue
    lines.append(f"| {split} | {_value(m, 'loss')} | {_value(m, headline)} | {_count(m)} |")
  lines.append('')
  mfu = results.get('mfu')
  mfu_text = f'MFU {100 * mfu:.2f}%' if mfu is not None else 'MFU unknown (no FLOP count)'
  if results.get('train_examples_per_s'):
    lines.append(f"wall time {results['wall_time_s']:.1f} s (compile {results['compile_time_s']:.1f} s), "
                 f"{results['train_examples_per_s']:,.0f} train examples/s on "
                 f"{results['devices']} {results['platform']} device(s), {mfu_text}")
  else:
    lines.append(f"wall time {results['wall_time_s']:.1f} s on {results['devices']} "
                 f"{results['platform']} device(s)")
  return '\n'.join(lines)
