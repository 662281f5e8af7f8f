"""Where a run's outputs go: config.json, metrics.jsonl, results.json in the workdir
(a local directory or a `gs://` URI; all I/O goes through `research.paths`)."""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any

import ml_collections
import numpy as np

from research import paths


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir and proves it writable, before any expensive work starts."""
  workdir = paths.absolute(workdir)
  if paths.is_remote(workdir):
    return _prepare_remote(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test_'):
      pass
  except OSError as e:
    raise PermissionError(
        f'Workdir {workdir!r} is not writable ({e.strerror}). Choose another --workdir.') from e
  return workdir


def _prepare_remote(workdir: str) -> str:
  """A bucket has no directories to create: write and delete one object, which proves
  the bucket exists and the credentials may write there. (Named uniquely: every host of
  a pod probes the same workdir.)"""
  probe = os.path.join(workdir, f'.write_test_{uuid.uuid4().hex}')
  try:
    paths.write_text_atomic(probe, '')
    paths.remove(probe)
  except Exception as e:  # gcsfs raises OSError subclasses, HttpError, auth errors...
    from research.errors import ConfigError  # writers is imported everywhere: keep it light
    # A wrong bucket name or missing credentials: the user's to fix, said in one line.
    raise ConfigError(f'Workdir {workdir!r} is not writable ({type(e).__name__}: '
                      f'{" ".join(str(e).split())[:300]}). Check the bucket name and the '
                      'credentials, or choose another --workdir.') from e
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
  paths.write_text_atomic(path, json.dumps(_to_builtin(obj), indent=2, sort_keys=True) + '\n')


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  write_json_atomic(os.path.join(workdir, 'config.json'), config.to_dict())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote (WORKDIR/config.json)."""
  from research.errors import ConfigError  # writers is imported everywhere: keep it light
  path = os.path.join(workdir, 'config.json')
  if not paths.exists(path):
    raise ConfigError(f'{path} does not exist: {workdir!r} is not a run directory (one '
                      'written by research.main).')
  return ml_collections.ConfigDict(with_new_defaults(json.loads(paths.read_text(path))))


# Blocks whose keys depend on the choice they hold (the model, the objective, the evals):
# another choice's defaults do not belong in them.
_CHOICE_BLOCKS = ('model', 'objective_args', 'evals')


def with_new_defaults(stored: dict[str, Any]) -> dict[str, Any]:
  """A run's stored config plus the default of every key added to the code since it was
  written (e.g. `lora`, or a model's new `dtype`), so older runs can still be evaluated,
  resumed, exported and compared with newer ones."""
  from research.config import default_config  # imports the registries: only when reading
  from research.errors import ConfigError
  def merge(stored_block: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(stored_block)
    for key, value in defaults.items():
      if key not in out:
        out[key] = value
      elif isinstance(value, dict) and isinstance(out[key], dict) and key not in _CHOICE_BLOCKS:
        out[key] = merge(out[key], value)
    return out
  out = merge(stored, default_config().to_dict())
  model = out.get('model')
  if isinstance(model, dict) and model.get('name'):
    from research import models  # pylint: disable=import-outside-toplevel
    try:  # the model's own new hyperparameters, at the defaults older code computed with
      out['model'] = merge(model, models.hyperparameters(model['name']))
    except ConfigError:
      pass  # a model registered by the user's code, not imported here: left as stored
  return out


class MetricsLog:
  """Appends one JSON object per logged (step, split) to metrics.jsonl."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **_to_builtin(metrics)}
    paths.append_text(self.path, json.dumps(record, sort_keys=True) + '\n')
