"""Predictions from a run's workdir agree with its evaluation."""
from __future__ import annotations

import runpy

import numpy as np
import pytest

from research import training
from research.data import sources
from research.errors import ConfigError
from research.predict import Predictor
from tests.helpers import REPO_ROOT


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('rt'))
  config = runpy.run_path(f'{REPO_ROOT}/configs/rotten_tomatoes/classifier.py')['get_config']()
  config.model.update(num_layers=1, hidden_size=32, num_heads=2, max_length=48)
  config.dataset.preprocess = 'tokenize_bytes(max_len=48)'
  config.dataset.eval_splits = 'test[:300]'
  config.update(num_train_steps=40, eval_every_steps=0, log_every_steps=20, batch_size=32,
                eval_batch_size=128, progress_bar=False, write_report=False)
  config.optimizer.warmup_steps = 5
  return workdir, config, training.train_and_evaluate(config, workdir)


def test_predictions_match_the_runs_evaluation(text_run):
  workdir, config, results = text_run
  predictor = Predictor.from_workdir(workdir)
  builder = sources.open_builder(config.dataset)
  info = sources.dataset_info(builder, config.dataset)
  test = sources.load_split(builder, info, 'test[:300]')
  out = predictor.predict(list(test.inputs))  # 300 texts: batches of 128, the last padded
  assert out['probabilities'].shape == (300, 2)
  np.testing.assert_allclose(out['probabilities'].sum(axis=1), 1.0, rtol=1e-5)
  accuracy = float((out['labels'] == test.labels).mean())
  assert accuracy == pytest.approx(results['test[:300]']['accuracy'], abs=1e-9)
  assert set(out['names']) <= {'rotten', 'fresh'}
  one = predictor.predict([test.inputs[7]])  # a single input: same answer as in a batch
  np.testing.assert_allclose(one['probabilities'][0], out['probabilities'][7], rtol=1e-5, atol=1e-6)


def test_predict_rejects_a_bare_string(text_run):
  predictor = Predictor.from_workdir(text_run[0])
  with pytest.raises(ConfigError, match='sequence of inputs'):
    predictor.predict('just one text')
