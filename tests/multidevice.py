"""Runs several tiny trainings in one process and writes their per-step losses as JSON.

The caller sets XLA_FLAGS=--xla_force_host_platform_device_count=N (before jax starts),
and for multi-process runs the `distributed.*` overrides. Usage:
  python -m tests.multidevice SPEC.json OUT.json
SPEC: [{"name", "model", "workdir", "overrides": {"mesh.fsdp": 8, ...}}, ...]
"""
from __future__ import annotations

import json
import os
import sys

import jax

from research import training
from tests.helpers import read_jsonl, tiny_config

SCALING_MODELS = {  # widths every mesh axis divides, so sharding really happens
    'mlp': dict(hidden_sizes=(128, 128)),
    'cnn': dict(features=(32, 32, 32)),
    'transformer': dict(),
}


def scaling_config(model: str, steps: int = 20):
  config = tiny_config(model, steps=steps, **SCALING_MODELS[model])
  config.batch_size = 64
  config.eval_batch_size = 200
  config.log_every_steps = 1
  config.checkpoint.every_steps = 0
  config.checkpoint.async_save = False
  if model == 'transformer':
    # At lr 1e-2 this tiny encoder's loss jumps around; chaotic steps amplify float32
    # reduction-order noise across meshes beyond 1e-5. 1e-3 trains smoothly.
    config.optimizer.learning_rate = 1e-3
  return config


def apply_overrides(config, overrides: dict) -> None:
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = tuple(value) if isinstance(value, list) else value


def train_losses(workdir: str) -> list[float]:
  return [r['loss'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if r['split'] == 'train']


def run(spec: dict) -> dict:
  config = scaling_config(spec['model'], spec.get('steps', 20))
  apply_overrides(config, spec.get('overrides', {}))
  results = training.train_and_evaluate(config, spec['workdir'])
  out = {'results': {k: v for k, v in results.items() if k != 'test'}}
  if 'test' in results:
    out['test_examples'] = results['test']['num_examples']
    out['test_confusion_total'] = sum(map(sum, results['test']['confusion_matrix']))
    out['test_loss'] = results['test']['loss']
  if jax.process_index() == 0:
    out['losses'] = train_losses(spec['workdir'])
  return out


def main() -> None:
  if sys.argv[1] == 'fsdp_memory':
    fsdp_memory(sys.argv[2])
    return
  spec_path, out_path = sys.argv[1:3]
  with open(spec_path) as f:
    specs = json.load(f)
  outputs = {s['name']: run(s) for s in specs}
  if jax.process_index() == 0:
    with open(out_path, 'w') as f:
      json.dump(outputs, f)




def fsdp_memory(out_path: str) -> None:
  """Per-device train-step memory of a Transformer: 1 device vs FSDP over all devices."""
  from research.training import experiment
  from research import models
  config = tiny_config('transformer')
  config.model = models.model_config('transformer', num_layers=4, hidden_size=256,
                                     num_heads=8, mlp_ratio=4.0)
  config.batch_size = 64
  config.eval_batch_size = 64
  figures = {}
  for name, devices, mesh in (('single', jax.devices()[:1], (1, 1)),
                              ('fsdp', jax.devices(), (1, -1))):
    config.mesh.data, config.mesh.fsdp = mesh
    exp = experiment.build(config, eval_split_names=[], devices=devices)
    figures[name] = exp.train_step_memory()
  with open(out_path, 'w') as f:
    json.dump(figures, f)


if __name__ == '__main__':
  main()
