"""research.evaluate reproduces a finished run's metrics; early stopping and best checkpoints."""
import json

import pytest

from research import evaluate, training
from research.errors import ConfigError
from tests.helpers import read_jsonl, run_module, tiny_config


def test_evaluate_reproduces_final_results_exactly(tmp_path):
  results = training.train_and_evaluate(tiny_config('cnn', steps=20), str(tmp_path))
  evaluated = evaluate.evaluate_run(str(tmp_path), 'latest', 'test')
  assert evaluated['step'] == 20
  for key in ('loss', 'accuracy', 'macro_f1', 'ece', 'confusion_matrix', 'num_examples'):
    assert evaluated[key] == results['test'][key], key
  saved = json.loads((tmp_path / 'eval' / 'test-20.json').read_text())
  assert saved['accuracy'] == results['test']['accuracy']


def test_evaluate_a_relative_workdir(tmp_path, monkeypatch):
  """`--workdir=runs/demo` from the repo root: Orbax takes only absolute paths, so the
  Checkpointer makes the workdir absolute (this failed with 'Checkpoint path should be
  absolute')."""
  monkeypatch.chdir(tmp_path)
  results = training.train_and_evaluate(tiny_config('logistic', steps=5), 'run')
  evaluated = evaluate.evaluate_run('run', 'latest', 'test')
  assert evaluated['step'] == 5
  assert evaluated['accuracy'] == results['test']['accuracy']
  assert (tmp_path / 'run' / 'eval' / 'test-5.json').exists()
  assert evaluate.evaluate_run('run', '5', 'test')['loss'] == results['test']['loss']


def test_evaluate_cli(tmp_path):
  training.train_and_evaluate(tiny_config('logistic', steps=10), str(tmp_path))
  proc = run_module('research.evaluate', f'--workdir={tmp_path}', '--checkpoint=10',
                    '--split=train')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '(4000 examples)' in proc.stdout
  assert (tmp_path / 'eval' / 'train-10.json').exists()


def test_evaluate_bad_checkpoint_name(tmp_path):
  training.train_and_evaluate(tiny_config('logistic', steps=5), str(tmp_path))
  with pytest.raises(ValueError, match="'latest', 'best' or a step number"):
    evaluate.evaluate_run(str(tmp_path), 'newest')
  with pytest.raises(ConfigError, match=r'available steps: \[5\]'):
    evaluate.evaluate_run(str(tmp_path), '7')


def _early_stopping_config(steps: int = 2000):
  config = tiny_config('mlp', steps=steps)
  config.optimizer.learning_rate = 0.05  # overfits quickly: test loss turns up
  config.eval_every_steps = 10
  config.checkpoint.every_steps = 0
  config.early_stopping.metric = 'test/loss'
  config.early_stopping.mode = 'min'
  config.early_stopping.patience = 2
  return config


def test_early_stopping_stops_on_plateau_and_best_is_evaluated(tmp_path):
  config = _early_stopping_config()
  results = training.train_and_evaluate(config, str(tmp_path))
  stopped = results['stopped_early_at_step']
  assert stopped is not None and stopped < 2000
  losses = {r['step']: r['loss'] for r in read_jsonl(tmp_path / 'metrics.jsonl')
            if r['split'] == 'test'}
  best_step = min(losses, key=losses.get)
  assert stopped == best_step + 2 * 10  # two evaluations without improvement
  assert results['best_checkpoint_step'] == best_step
  best = evaluate.evaluate_run(str(tmp_path), 'best', 'test')
  assert best['step'] == best_step
  assert best['loss'] == pytest.approx(losses[best_step], rel=1e-6)


def test_early_stopping_patience_survives_a_resume(tmp_path):
  """Interrupted one evaluation before the stop, the resumed run stops at the same step:
  the best value and the patience count come back from the checkpoint."""
  whole = training.train_and_evaluate(_early_stopping_config(), str(tmp_path / 'whole'))
  stopped = whole['stopped_early_at_step']
  assert stopped is not None and stopped >= 30
  resumed_dir = str(tmp_path / 'resumed')
  first = training.train_and_evaluate(_early_stopping_config(steps=stopped - 10), resumed_dir)
  assert first['stopped_early_at_step'] is None  # one evaluation without improvement so far
  resumed = training.train_and_evaluate(_early_stopping_config(), resumed_dir)
  assert resumed['stopped_early_at_step'] == stopped


def test_evaluate_cli_user_mistakes_are_one_line(tmp_path):
  proc = run_module('research.evaluate', f'--workdir={tmp_path / "nothing_here"}')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().startswith('Error: ') and 'not a run directory' in proc.stderr


def test_a_run_written_before_new_config_keys_reads_with_their_defaults(tmp_path):
  """config.json of an older run lacks keys added since (lora, pruning, init_from.hf_dir):
  reading it fills their defaults, but never another model's keys into its model block."""
  import json
  from research import models, writers
  from research.config import default_config
  config = default_config()
  config.model = models.model_config('mlp')
  stored = config.to_dict()
  for block in ('lora', 'quantization', 'pruning'):
    del stored[block]
  del stored['init_from']['hf_dir']
  del stored['model']['dtype']  # a model hyperparameter added since
  stored = json.loads(json.dumps(stored))  # as the file holds it (tuples become lists)
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  read = writers.read_config(str(tmp_path))
  assert read.lora.rank == 0 and read.quantization.qat == '' and read.pruning.sparsity == 0.0
  assert read.init_from.hf_dir == '' and read.init_from.skip == stored['init_from']['skip']
  # The MLP's own keys, its new one at its default, and not the default CNN's keys.
  assert dict(read.model) == {**stored['model'], 'dtype': 'float32'}
  # So the older run and a new one with the same settings compare as one config.
  from research.evaluation import compare
  new = json.loads(json.dumps(config.to_dict()))
  assert (compare.config_fingerprint(writers.with_new_defaults(stored))
          == compare.config_fingerprint(writers.with_new_defaults(new)))
