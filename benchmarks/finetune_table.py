"""The fine-tuning table of finished runs: full fine-tuning vs LoRA vs head only.

  python -m benchmarks.finetune_table runs/minilm/rt_full runs/minilm/rt_lora runs/minilm/rt_probe

For each run (the first is the reference for the step-time ratio): test accuracy, trainable
parameters (the elements of Adam's first moment: frozen parameters have no optimizer
state), bytes of the newest checkpoint on disk, bytes of the optimizer state, and the
steady training step time as a ratio to the first run's (from results.json).
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

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


def main(workdirs: list[str]) -> None:
  rows = [row(w) for w in workdirs]
  print('| run | test accuracy % | trainable params | checkpoint bytes | optimizer-state bytes '
        '| step time / full |')
  print('|---|---:|---:|---:|---:|---:|')
  for r in rows:
    share = 100 * r['trainable'] / r['total_params']
    print(f"| {r['run']} | {r['accuracy']:.2f} | {r['trainable']:,} ({share:.2f}%) | "
          f"{r['checkpoint_bytes']:,} | {r['opt_bytes']:,} | "
          f"{r['step_s'] / rows[0]['step_s']:.2f} ({r['step_s']:.2f} s) |")


if __name__ == '__main__':
  main(sys.argv[1:])
