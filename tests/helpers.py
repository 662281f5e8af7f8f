"""Small shared pieces for tests: tiny configs and a subprocess runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections

from research import models
from research.config import default_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model: str = 'mlp', steps: int = 30, **model_overrides) -> ml_collections.ConfigDict:
  config = default_config()
  config.model = models.model_config(model, **model_overrides)
  config.num_train_steps = steps
  config.log_every_steps = 5
  config.eval_every_steps = 0
  config.batch_size = 50
  config.eval_batch_size = 500
  config.progress_bar = False
  config.write_report = False  # matplotlib costs seconds; test_train keeps one run with it
  return config


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300,
               cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})
