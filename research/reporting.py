"""Human-readable summaries of results (terminal tables)."""
from __future__ import annotations

from typing import Any

import ml_collections

_NON_SPLITS = {'train', 'steps', 'num_params', 'wall_time_s', 'compile_time_s',
               'train_examples_per_s', 'devices', 'processes', 'platform',
               'resumed_from_step', 'best_checkpoint_step', 'train_step_compilations',
               'stopped_early_at_step', 'flops_per_example', 'mfu', 'peak_flops_per_device'}


def results_table(results: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  lines = [
      f'\n{config.dataset.name} / {config.model.name}: {results["steps"]} steps, '
      f'{results["num_params"]:,} params, seed {config.seed}',
      '',
      '| split | loss | accuracy | examples |',
      '|---|---|---|---|',
  ]
  train = results.get('train', {})
  if train:
    lines.append(f"| train (last {config.log_every_steps} steps) | {train['loss']:.4f} | "
                 f"{train['accuracy']:.4f} | - |")
  for split, m in results.items():
    if split in _NON_SPLITS or not isinstance(m, dict):
      continue
    lines.append(f"| {split} | {m['loss']:.4f} | {m['accuracy']:.4f} | {m['num_examples']} |")
  lines.append('')
  lines.append(f"wall time {results['wall_time_s']:.1f} s (compile {results['compile_time_s']:.1f} s), "
               f"{results['train_examples_per_s']:,.0f} train examples/s on "
               f"{results['devices']} {results['platform']} device(s), MFU {100 * results['mfu']:.2f}%")
  return '\n'.join(lines)
