"""The fine-tuning table of finished runs: full fine-tuning vs LoRA vs head only.

  python -m benchmarks.finetune_table runs/minilm/table/finetune-reuters_r8+{full,lora,probe}

Each argument is a finished run's workdir, or a folder of them (`seed0/`, `seed1/`, ... as
`research.reproduce` writes): a row each, the first the reference for the step-time ratio.
Columns: test accuracy (mean ± std over the seeds), trainable parameters (the elements of
Adam's first moment: frozen parameters have no optimizer state), bytes of the newest
checkpoint on disk, bytes of the optimizer state, and the steady training step time (mean
over the seeds, from results.json) as a ratio to the first row's.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from research.evaluation import compare
from research.training import optim


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
             for f in files)


def row(workdir: str) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), 'state'))
  opt = {optim.path_of(k): np.asarray(v)
         for k, v in jax.tree_util.tree_flatten_with_path(state['opt_state'])[0]}
  trainable = sum(v.size for p, v in opt.items() if '/mu/' in f'/{p}/')
  return {
      'run': os.path.basename(workdir.rstrip('/')),
      'accuracy': 100 * results['test']['accuracy'],
      'total_params': results['num_params'],
      'trainable': trainable,
      'checkpoint_bytes': _dir_bytes(os.path.join(directory, str(step))),
      'opt_bytes': sum(v.nbytes for v in opt.values()),
      'step_s': config['batch_size'] / results['train_examples_per_s'],
  }


def grouped_row(path: str) -> dict:
  """One row for a run or a folder of seeds: accuracy mean ± std, step time mean; the
  parameter and byte counts (equal across seeds) from the first."""
  runs = compare.find_run_dirs([path])
  if not runs:
    raise SystemExit(f'{path}: no results.json in it or below it (a finished run?)')
  rows = [row(w) for w in runs]
  accuracies = [r['accuracy'] for r in rows]
  return {**rows[0], 'run': os.path.basename(path.rstrip('/')), 'seeds': len(rows),
          'accuracy': float(np.mean(accuracies)),
          'accuracy_std': float(np.std(accuracies, ddof=1)) if len(rows) > 1 else None,
          'step_s': float(np.mean([r['step_s'] for r in rows]))}


def main(paths: list[str]) -> None:
  rows = [grouped_row(p) for p in paths]
  print('| run | test accuracy % | seeds | trainable params | checkpoint bytes '
        '| optimizer-state bytes | step time / first row |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    share = 100 * r['trainable'] / r['total_params']
    accuracy = f"{r['accuracy']:.2f}" + (f" ± {r['accuracy_std']:.2f}"
                                         if r['accuracy_std'] is not None else '')
    print(f"| {r['run']} | {accuracy} | {r['seeds']} | {r['trainable']:,} ({share:.2f}%) | "
          f"{r['checkpoint_bytes']:,} | {r['opt_bytes']:,} | "
          f"{r['step_s'] / rows[0]['step_s']:.2f} ({r['step_s']:.2f} s) |")


if __name__ == '__main__':
  main(sys.argv[1:])
