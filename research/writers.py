"""Where a run's outputs go: config.json, metrics.jsonl, results.json in the workdir."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir and proves it writable, before any expensive work starts."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test_'):
      pass
  except OSError as e:
    raise PermissionError(
        f'Workdir {workdir!r} is not writable ({e.strerror}). Choose another --workdir.') from e
  return workdir


def _to_builtin(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _to_builtin(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_builtin(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  if hasattr(x, 'tolist'):  # jax arrays
    return np.asarray(x).tolist()
  return x


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes through a temp file and rename: a crash never leaves half a file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(_to_builtin(obj), f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  write_json_atomic(os.path.join(workdir, 'config.json'), config.to_dict())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote (WORKDIR/config.json)."""
  from research.errors import ConfigError  # writers is imported everywhere: keep it light
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'{path} does not exist: {workdir!r} is not a run directory (one '
                      'written by research.main).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class MetricsLog:
  """Appends one JSON object per logged (step, split) to metrics.jsonl."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **_to_builtin(metrics)}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')
