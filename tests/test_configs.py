"""Every config file under configs/ builds and passes validation (or, where it needs a run
it builds on or an optional package, says which command gets it)."""
import glob
import os
import runpy

import pytest

from research import config as config_lib
from research.errors import ConfigError
from tests.helpers import REPO_ROOT

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '*', '*.py')))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_config_builds_and_validates(path, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)  # configs name their companion runs relative to the root
  try:
    config = runpy.run_path(path)['get_config']()
  except ConfigError as e:  # it needs another run or an optional package: says how to get it
    assert 'python -m research.main' in str(e) or 'pip install' in str(e), str(e)
    return
  if config.objective == 'distillation' and not config.objective_args.teacher:
    config.objective_args.teacher = 'runs/teacher'  # the one key the command line must add
  config_lib.validate(config)
  assert config.num_train_steps > 0 and config.model.name

