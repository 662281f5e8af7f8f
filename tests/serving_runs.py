"""Tiny trained runs, their exports and a prediction server in a subprocess, for
tests/test_export.py and tests/test_serve.py.

The runs are trained once per test session (both modules and every xdist worker share
them): an MNIST-1D CNN with `standardize` (fitted statistics inside the exported
function) and a one-layer WordPiece text Transformer with [CLS] (a tokenizer.json in the
artifact).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx

from research import training
from research.serving.exporter import export_run
from tests.helpers import REPO_ROOT, tiny_config



def _cnn_config():
  config = tiny_config('cnn', steps=20)
  config.dataset.preprocess = 'standardize'
  config.eval_batch_size = 100
  return config


def _text_config():
  config = runpy.run_path(f'{REPO_ROOT}/configs/rotten_tomatoes/classifier.py')['get_config']()
  config.model.update(num_layers=1, hidden_size=32, num_heads=2, max_length=32, vocab_size=400)
  config.dataset.preprocess = 'tokenize_wordpiece(vocab_size=400, max_len=32, cls=True)'
  config.dataset.eval_splits = 'test[:100]'
  config.update(num_train_steps=10, eval_every_steps=0, log_every_steps=10, batch_size=32,
                eval_batch_size=100, progress_bar=False, write_report=False)
  config.optimizer.warmup_steps = 2
  return config


def runs_dir(tmp_path_factory) -> str:
  """Where the runs are made: under pytest-xdist, the directory all workers of this test
  run share (the parent of each worker's base), so the two modules train them once."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  path = os.path.join(str(base), 'serving_runs')
  os.makedirs(path, exist_ok=True)
  return path


def trained_and_exported(kind: str, base: str) -> tuple[str, str]:
  """`(workdir, export dir)` of the tiny `kind` ('cnn' or 'text') run in `base`, made by
  the first process to ask (a file lock serialises workers)."""
  workdir, out = os.path.join(base, f'{kind}_run'), os.path.join(base, f'{kind}_export')
  with open(os.path.join(base, f'{kind}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isfile(os.path.join(out, 'manifest.json')):
      config = {'cnn': _cnn_config, 'text': _text_config}[kind]()
      shutil.rmtree(workdir, ignore_errors=True)  # a half-made run from a crashed worker
      training.train_and_evaluate(config, workdir)
      export_run(workdir, out, name=kind)
  return workdir, out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class ServerProcess:
  """`python -m research.serve` on 127.0.0.1 and a free port, its output in a log file."""

  def __init__(self, model_dir: str, log_path: str, *flags: str):
    self.port = free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.log_path = log_path
    self._log = open(log_path, 'w')
    env = {**os.environ, 'PYTHONPATH': REPO_ROOT, 'JAX_PLATFORMS': 'cpu'}
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'research.serve', f'--model={model_dir}', '--host=127.0.0.1',
         f'--port={self.port}', *flags],
        cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)

  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()[-3000:]

  def wait_ready(self, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f'server exited with {self.proc.returncode}:\n{self.log()}')
      with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f'{self.url}/v2/health/ready', timeout=1).status_code == 200:
          return
      time.sleep(0.2)
    raise RuntimeError(f'server not ready after {timeout_s} s:\n{self.log()}')

  def terminate(self) -> None:
    self.proc.send_signal(signal.SIGTERM)

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(15)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()
