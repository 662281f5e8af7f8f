"""Helpers for fault-tolerance tests: run training in a subprocess, kill it, read results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

from tests.helpers import REPO_ROOT


def train_command(workdir: str, config: str = 'configs/mnist1d/cnn.py', *overrides: str) -> list[str]:
  return [sys.executable, '-m', 'research.main', f'--config={config}', f'--workdir={workdir}',
          '--config.progress_bar=False', '--config.eval_every_steps=0', *overrides]


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
  return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, **(env or {})},
                          start_new_session=True)  # our own process group: kill it whole


def finished_checkpoints(workdir: str) -> list[int]:
  """Steps whose save completed (Orbax renames a finished save to its bare step number)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def saves_in_progress(workdir: str) -> list[int]:
  """Steps whose async save is being written: Orbax's `<step>.orbax-checkpoint-tmp*`
  directories (renamed to `<step>` when complete; a killed save's stays until the next run)."""
  directory = os.path.join(workdir, 'checkpoints')
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  return sorted(int(d.split('.')[0]) for d in names if 'tmp' in d and d.split('.')[0].isdigit())


def last_logged_step(workdir: str) -> int:
  """The highest step with a training record in metrics.jsonl (0 if none). A line still
  being written is skipped; a resumed run first drops the records after its checkpoint."""
  step = 0
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record.get('split') == 'train':
          step = max(step, int(record['step']))
  except FileNotFoundError:
    pass
  return step


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None,
             interval: float = 0.005) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc is not None and proc.poll() is not None:
      return predicate()
    time.sleep(interval)
  return False


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass
  proc.communicate(timeout=60)


def read_state(workdir: str, step: int) -> dict:
  """The saved train state with plain Orbax: no import of this project needed."""
  path = os.path.abspath(os.path.join(workdir, 'checkpoints', str(step), 'state'))  # Orbax needs it
  return ocp.StandardCheckpointer().restore(path)


def assert_trees_bitwise_equal(a, b) -> None:
  import jax
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
