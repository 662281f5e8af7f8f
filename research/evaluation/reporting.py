"""Human-readable summaries of results (terminal tables)."""
from __future__ import annotations

from typing import Any

import ml_collections



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
    if not isinstance(m, dict) or 'num_examples' not in m:  # e.g. 'train', 'steps'
      continue
    lines.append(f"| {split} | {m['loss']:.4f} | {m['accuracy']:.4f} | {m['num_examples']} |")
  lines.append('')
  lines.append(f"wall time {results['wall_time_s']:.1f} s (compile {results['compile_time_s']:.1f} s), "
               f"{results['train_examples_per_s']:,.0f} train examples/s on "
               f"{results['devices']} {results['platform']} device(s), MFU {100 * results['mfu']:.2f}%")
  return '\n'.join(lines)
