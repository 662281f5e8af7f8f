"""Test setup: a fresh tfds data dir per session, so every test run proves the offline
builders prepare themselves from scratch (no network, no pre-built cache)."""
import os
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Under pytest-xdist each worker process gets its own: two workers preparing one dataset in
# one directory race on tfds' final rename. A TFDS_DATA_DIR set by the user is kept.
if 'TFDS_DATA_DIR' not in os.environ or os.environ.get('RESEARCH_TESTS_OWN_TFDS_DIR'):
  os.environ['TFDS_DATA_DIR'] = tempfile.mkdtemp(
      prefix=f"research_tfds_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
  os.environ['RESEARCH_TESTS_OWN_TFDS_DIR'] = '1'

# One persistent JAX compilation cache per test process and the subprocesses it starts:
# many tests compile the same tiny train steps (in-process and in `python -m research.main`
# subprocesses), and a cache hit skips XLA's compile. It changes how long tests take, not
# what they compute. A cache dir set by the user is kept.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ or os.environ.get('RESEARCH_TESTS_OWN_JAX_CACHE'):
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix=f"research_jax_cache_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
  # Train and eval steps, not the tiny per-primitive compiles of eager code.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'
  os.environ['RESEARCH_TESTS_OWN_JAX_CACHE'] = '1'


@pytest.fixture
def repo_root() -> str:
  return REPO_ROOT


@pytest.fixture
def python() -> str:
  return sys.executable


@pytest.fixture
def mock_tfds(monkeypatch):
  """`tfds.testing.mock_data`, with its data source's batched read repaired.

  tfds 4.9.10 assigns `__getitems__` on a MagicMock as a plain attribute, so it is called
  without `self` and every batched read raises TypeError; per-item reads work.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking

  def getitems(record_keys, generator, serialized=False):
    assert not serialized
    return [generator[k] for k in record_keys]
  monkeypatch.setattr(mocking, '_getitems', getitems)
  return tfds.testing.mock_data
