"""Test setup: a fresh tfds data dir per session, so every test run proves the offline
builders prepare themselves from scratch (no network, no pre-built cache)."""
import os
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TFDS_DATA_DIR', tempfile.mkdtemp(prefix='research_tfds_'))


@pytest.fixture
def repo_root() -> str:
  return REPO_ROOT


@pytest.fixture
def python() -> str:
  return sys.executable
