"""config.init_from: fine-tune from another run's weights with load/skip rules."""
import shutil

import numpy as np
import pytest

from research import training
from tests import checkpoint_utils as cu
from tests.helpers import tiny_config


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('source'))
  training.train_and_evaluate(tiny_config('mlp', steps=10), workdir)
  return workdir


def test_loads_all_but_the_skipped_head(source_run, tmp_path):
  config = tiny_config('mlp', steps=1)
  config.init_from.workdir = source_run
  config.init_from.skip = '^head/'
  config.optimizer.learning_rate = 1e-12  # one step that changes (almost) nothing
  training.train_and_evaluate(config, str(tmp_path))
  source, ours = cu.read_state(source_run, 10)['params'], cu.read_state(str(tmp_path), 1)['params']
  np.testing.assert_allclose(ours['hidden_0']['kernel'], source['hidden_0']['kernel'], atol=1e-9)
  assert not np.allclose(ours['head']['kernel'], source['head']['kernel'])


def test_relative_source_workdir(source_run, tmp_path, monkeypatch):
  """`--config.init_from.workdir=runs/pretrain`, relative to where the command runs (Orbax
  takes only absolute paths; this failed with 'Checkpoint path should be absolute')."""
  monkeypatch.chdir(tmp_path)
  shutil.copytree(source_run, 'source')
  config = tiny_config('mlp', steps=1)
  config.init_from.workdir = 'source'
  config.optimizer.learning_rate = 1e-12
  training.train_and_evaluate(config, 'run')
  source, ours = cu.read_state(source_run, 10)['params'], cu.read_state('run', 1)['params']
  np.testing.assert_allclose(ours['hidden_0']['kernel'], source['hidden_0']['kernel'], atol=1e-9)
  np.testing.assert_allclose(ours['head']['kernel'], source['head']['kernel'], atol=1e-9)


def test_mismatch_lists_missing_unexpected_and_misshaped(source_run, tmp_path):
  config = tiny_config('mlp', steps=1, hidden_sizes=(100, 64, 100))
  config.init_from.workdir = source_run
  with pytest.raises(ValueError) as e:
    training.train_and_evaluate(config, str(tmp_path))
  text = str(e.value)
  assert 'missing in the source (2)' in text and "'hidden_2/bias', 'hidden_2/kernel'" in text
  assert 'mis-shaped' in text and 'hidden_1/kernel: ours (100, 64) vs source (100, 100)' in text


def test_bad_source_step_lists_available(source_run, tmp_path):
  config = tiny_config('mlp', steps=1)
  config.init_from.workdir = source_run
  config.init_from.step = 3
  with pytest.raises(FileNotFoundError, match=r'available: \[10\]'):
    training.train_and_evaluate(config, str(tmp_path))
