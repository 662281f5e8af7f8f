"""End to end: each model trains a few steps, its loss falls, and its outputs are written."""
import json
import os

import pytest

from research import training
from tests.helpers import read_jsonl, tiny_config


@pytest.mark.parametrize('model', ['logistic', 'mlp', 'cnn'])
def test_tiny_run_learns_and_writes_outputs(model, tmp_path):
  config = tiny_config(model, steps=40)
  results = training.train_and_evaluate(config, str(tmp_path))

  train_losses = [r['loss'] for r in read_jsonl(tmp_path / 'metrics.jsonl')
                  if r['split'] == 'train']
  assert len(train_losses) == 8  # every 5 steps
  assert train_losses[-1] < 0.8 * train_losses[0], train_losses

  with open(tmp_path / 'results.json') as f:
    saved = json.load(f)
  assert saved['test']['num_examples'] == 1000  # the whole MNIST-1D test split
  assert saved['test']['accuracy'] == pytest.approx(results['test']['accuracy'])
  assert saved['test']['accuracy'] > 0.2  # well above chance (0.1) after 40 steps
  assert saved['steps'] == 40 and saved['train_examples_per_s'] > 0
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['name'] == model
  assert sum(map(sum, saved['test']['confusion_matrix'])) == 1000


def test_same_seed_same_result_different_seed_different(tmp_path):
  a = training.train_and_evaluate(tiny_config('mlp', steps=10), str(tmp_path / 'a'))
  b = training.train_and_evaluate(tiny_config('mlp', steps=10), str(tmp_path / 'b'))
  config = tiny_config('mlp', steps=10)
  config.seed = 1
  c = training.train_and_evaluate(config, str(tmp_path / 'c'))
  assert a['test']['loss'] == b['test']['loss']
  assert a['test']['loss'] != c['test']['loss']


def test_eval_counts_every_example_once_with_padded_last_batch(tmp_path):
  config = tiny_config('logistic', steps=5)
  config.eval_batch_size = 128  # 1000 = 7 * 128 + 104: the last batch is padded
  config.dataset.eval_splits = 'test,train'
  results = training.train_and_evaluate(config, str(tmp_path))
  assert results['test']['num_examples'] == 1000
  assert results['train_eval']['num_examples'] == 4000  # the train split, evaluated
  assert results['train']['loss'] > 0  # the training loop's own metrics, not overwritten
  matrix = results['test']['confusion_matrix']
  assert sum(map(sum, matrix)) == 1000


def test_unwritable_workdir_fails_before_training(tmp_path, monkeypatch):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  opened = []
  monkeypatch.setattr('research.data.sources.open_builder',
                      lambda *a, **k: opened.append(1))
  with pytest.raises(PermissionError, match='not writable'):
    training.train_and_evaluate(tiny_config(), str(blocker / 'run'))
  assert not opened  # no data was read, no training started


def test_unknown_model_lists_available(tmp_path):
  config = tiny_config()
  config.model.name = 'resnet'
  with pytest.raises(ValueError, match=r"Unknown model 'resnet'.*cnn.*logistic.*mlp"):
    training.train_and_evaluate(config, str(tmp_path))


def test_model_block_of_another_model_is_reported(tmp_path):
  config = tiny_config('cnn')
  config.model.name = 'mlp'  # the block still holds the CNN's hyperparameters
  with pytest.raises(ValueError, match=r"Unknown keys .*kernel_sizes.*model 'mlp'"):
    training.train_and_evaluate(config, str(tmp_path))


def test_unknown_dataset_lists_available(tmp_path):
  config = tiny_config()
  config.dataset.name = 'mnist1e'
  with pytest.raises(ValueError, match=r"Unknown dataset 'mnist1e'.*mnist1d"):
    training.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('key,value,match', [
    ('batch_size', 0, 'batch_size must be a positive integer'),
    ('grad_accum_steps', 3, 'divisible by config.grad_accum_steps'),
])
def test_bad_values_name_the_key(tmp_path, key, value, match):
  config = tiny_config()
  config[key] = value
  with pytest.raises(ValueError, match=match):
    training.train_and_evaluate(config, str(tmp_path))


def test_bad_optimizer_lists_choices(tmp_path):
  config = tiny_config()
  config.optimizer.name = 'lamb'
  with pytest.raises(ValueError, match=r"Unknown optimizer 'lamb'.*adam.*adamw.*sgd"):
    training.train_and_evaluate(config, str(tmp_path))


def test_report_plots_and_tensorboard_are_written(tmp_path):
  config = tiny_config('cnn', steps=20)
  config.write_report = True
  config.eval_every_steps = 10
  results = training.train_and_evaluate(config, str(tmp_path))
  report = (tmp_path / 'report.md').read_text()
  assert f"{results['test']['accuracy']:.4f}"[:5] in report
  for png in ('learning_curves.png', 'confusion_test.png'):
    assert (tmp_path / 'plots' / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert any((tmp_path / 'tensorboard').rglob('events.out.tfevents.*'))
  for key in ('macro_f1', 'top_5_accuracy', 'ece'):
    assert key in results['test']


def test_inputs_the_model_cannot_take_fail_clearly(tmp_path):
  config = tiny_config('transformer', frontend='image', patch_size=4)
  with pytest.raises(ValueError, match=r"Model 'transformer' .* cannot take the inputs of "
                                       r"dataset 'mnist1d': one example has shape \(40,\)"):
    training.train_and_evaluate(config, str(tmp_path))
