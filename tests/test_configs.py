"""Every config file under configs/ builds and passes validation (or, where it needs a run
it builds on or an optional package, says which command gets it)."""
import glob
import os
import re
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



def test_text_classifier_variants(tmp_path, monkeypatch):
  """classifier.py:DATASET (own vocabulary), +pretrained (the masked-LM run's tokenizer and
  weights), +pretraining_vocab (its tokenizer only); anything else is named."""
  monkeypatch.chdir(tmp_path)  # the masked-LM run is looked up under runs/text/mlm here
  get_config = runpy.run_path(os.path.join(REPO_ROOT, 'configs', 'text', 'classifier.py'))[
      'get_config']
  scratch = get_config('newsgroups20')
  assert 'vocab_size=8000' in scratch.dataset.preprocess and not scratch.init_from.workdir
  with pytest.raises(ConfigError, match='No WordPiece tokenizer.*configs/text/mlm.py'):
    get_config('newsgroups20+pretrained')
  (tmp_path / 'runs' / 'text' / 'mlm').mkdir(parents=True)
  tokenizer = tmp_path / 'runs' / 'text' / 'mlm' / 'wordpiece_v8000_abc.json'
  tokenizer.write_text('{}')
  pretrained = get_config('newsgroups20+pretrained')
  vocab_only = get_config('reuters_r8+pretraining_vocab')
  for config in (pretrained, vocab_only):
    assert f'model={str(tokenizer)!r}' in config.dataset.preprocess
  assert pretrained.init_from.workdir == 'runs/text/mlm' and not vocab_only.init_from.workdir
  for bad in ('newsgroups20+pretrained+pretraining_vocab', 'reuters_r9', 'reuters_r8+lora'):
    with pytest.raises(ConfigError, match=f'DATASET.*got {re.escape(repr(bad))}'):
      get_config(bad)
