"""Masked-LM pretraining from its config on offline text (Rotten Tomatoes, byte tokens):
it beats the most-frequent-token baseline, and a SIGKILL-resume is bitwise exact."""
from __future__ import annotations

import json
import os

import pytest

from tests import checkpoint_utils as cu
from tests.helpers import REPO_ROOT, read_jsonl

CONFIG = 'configs/rotten_tomatoes/mlm.py'
STEPS, EVERY = 160, 40
# The config's encoder, shrunk to run in seconds on a CPU; the test split cut to 512.
SMALL = ('--config.model.num_layers=1', '--config.model.hidden_size=64',
         '--config.model.num_heads=2', '--config.model.max_length=64',
         '--config.dataset.preprocess=tokenize_bytes(max_len=64)',
         '--config.dataset.eval_splits=test[:512]', '--config.batch_size=32',
         '--config.eval_batch_size=256', '--config.optimizer.learning_rate=3e-3',
         '--config.optimizer.warmup_steps=20', '--config.write_report=False',
         f'--config.num_train_steps={STEPS}', f'--config.checkpoint.every_steps={EVERY}',
         '--config.log_every_steps=20', '--config.checkpoint.keep=2')


def _train(workdir: str) -> None:
  proc = cu.start(cu.train_command(workdir, CONFIG, *SMALL))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mlm'))
  _train(workdir)
  return workdir


def test_masked_lm_beats_the_most_frequent_token_baseline(uninterrupted):
  results = json.loads(open(os.path.join(uninterrupted, 'results.json')).read())
  test = results['test[:512]']
  print(f"masked-token accuracy {test['masked_accuracy']:.4f} vs majority baseline "
        f"{test['majority_baseline_accuracy']:.4f}; perplexity {test['perplexity']:.2f} over "
        f"{int(test['num_tokens'])} masked tokens")
  assert results['objective'] == 'masked_lm'
  assert test['masked_accuracy'] > test['majority_baseline_accuracy'] + 0.03
  assert test['perplexity'] < 30  # 260 byte ids: a uniform guess is 260
  train = [r for r in read_jsonl(os.path.join(uninterrupted, 'metrics.jsonl'))
           if r['split'] == 'train']
  assert train[-1]['loss'] < train[0]['loss'] - 1.0


def test_masked_lm_resume_after_sigkill_is_bitwise_exact(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  proc = cu.start(cu.train_command(workdir, CONFIG, *SMALL))
  # Kill right after the second checkpoint (step 80) is complete: the run is mid-way.
  landed = cu.wait_for(lambda: 2 * EVERY in cu.finished_checkpoints(workdir), 300, proc)
  assert landed and proc.poll() is None, 'the run ended before the kill'
  cu.kill_group(proc)
  assert max(cu.finished_checkpoints(workdir)) < STEPS
  _train(workdir)
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert 0 < results['resumed_from_step'] < STEPS
  cu.assert_trees_bitwise_equal(cu.read_state(workdir, STEPS),
                                cu.read_state(uninterrupted, STEPS))
  losses = lambda w: [(r['step'], r['loss']) for r in read_jsonl(os.path.join(w, 'metrics.jsonl'))  # noqa: E731
                      if r['split'] == 'train']
  assert losses(workdir) == losses(uninterrupted)  # the same masks, batches and dropout


def test_classifier_starts_from_the_pretrained_encoder(uninterrupted):
  """configs/rotten_tomatoes/classifier.py with init_from the pretraining run: every
  encoder weight is the pretrained one; only the new head is freshly initialised."""
  import runpy

  import numpy as np

  from research.training import experiment, init_from
  config = runpy.run_path(f'{REPO_ROOT}/{CONFIG.replace("mlm", "classifier")}')['get_config']()
  config.model.update(num_layers=1, hidden_size=64, num_heads=2, max_length=64)
  config.dataset.preprocess = 'tokenize_bytes(max_len=64)'
  config.init_from.workdir = uninterrupted
  exp = experiment.build(config, eval_split_names=[])
  state, report = init_from.load_params(exp.initial_state(), config.init_from,
                                        exp.state_sharding.params)
  assert report['initialised'] == ['head/bias', 'head/kernel']
  pretrained = cu.read_state(uninterrupted, STEPS)['params']
  assert 'mlm_head' in pretrained and 'head' not in pretrained
  np.testing.assert_array_equal(state.params['block_0']['attention']['query']['kernel'],
                                pretrained['block_0']['attention']['query']['kernel'])
