"""The command line in a subprocess: overrides reach the run; bad keys fail helpfully."""
import json

from tests.helpers import read_jsonl, run_module


def test_cli_trains_with_overrides(tmp_path):
  workdir = tmp_path / 'run'
  # Without $JAX_COMPILATION_CACHE_DIR, compiled programs go to $RESEARCH_CACHE_DIR/jax.
  env = {'JAX_COMPILATION_CACHE_DIR': '', 'RESEARCH_CACHE_DIR': str(tmp_path / 'cache')}
  proc = run_module(
      'research.main', '--config=configs/mnist1d/mlp.py', f'--workdir={workdir}',
      '--config.num_train_steps=20', '--config.log_every_steps=10',
      '--config.eval_every_steps=10', '--config.optimizer.learning_rate=0.005',
      '--config.seed=3', '--config.progress_bar=False', env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert list((tmp_path / 'cache' / 'jax').iterdir())  # the train step, at least
  config = json.loads((workdir / 'config.json').read_text())
  assert config['optimizer']['learning_rate'] == 0.005 and config['seed'] == 3
  records = read_jsonl(workdir / 'metrics.jsonl')
  assert [(r['step'], r['split']) for r in records] == [
      (10, 'train'), (10, 'test'), (20, 'train'), (20, 'test')]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['steps'] == 20
  assert '| test |' in proc.stdout  # the summary table


def test_cli_unknown_key_names_it_and_lists_valid_keys(tmp_path):
  proc = run_module('research.main', '--config=configs/mnist1d/cnn.py',
                    f'--workdir={tmp_path}', '--config.no_such_key=1')
  assert proc.returncode != 0
  assert "Unknown config key 'config.no_such_key'" in proc.stderr
  valid_line = next(l for l in proc.stderr.splitlines() if l.startswith('Valid keys in config:'))
  for key in ('batch_size', 'dataset', 'model', 'optimizer', 'mesh', 'seed'):
    assert key in valid_line
  assert not (tmp_path / 'config.json').exists()


def test_cli_misspelt_nested_key_suggests_the_right_one(tmp_path):
  proc = run_module('research.main', '--config=configs/mnist1d/cnn.py',
                    f'--workdir={tmp_path}', '--config.optimizer.learnig_rate=0.1')
  assert proc.returncode != 0
  assert 'Did you mean learning_rate' in proc.stderr
  assert 'Valid keys in config.optimizer:' in proc.stderr


def test_cli_user_mistakes_are_one_line_without_traceback(tmp_path):
  for override, expected in (('--config.model.name=cnnn', "Unknown model 'cnnn'"),
                             ('--config.objective=clasification', "Unknown objective"),
                             ('--config.optimizer.freeze=^nothing/', 'matches no parameter')):
    proc = run_module('research.main', '--config=configs/mnist1d/cnn.py',
                      f'--workdir={tmp_path / "run"}', override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('Error: ')]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
  args = ('research.main', '--config=configs/mnist1d/mlp.py', f'--workdir={tmp_path}',
          '--config.num_train_steps=20', '--config.log_every_steps=10',
          '--config.progress_bar=False', '--config.write_report=False')
  first = run_module(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  before = {name: (tmp_path / name).read_bytes() for name in ('metrics.jsonl', 'results.json')}
  again = run_module(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'already complete' in again.stderr
  assert '| test |' in again.stdout  # the saved results, shown again
  for name, content in before.items():
    assert (tmp_path / name).read_bytes() == content, name


def test_the_command_modules_tests_import_coexist_in_one_process():
  """absl flags are process-global: two command modules (research/*.py) that define the same
  flag cannot be imported in one process, and pytest-xdist may put any two test modules in
  one worker. So library code lives outside the command modules, and the few command
  modules that tests do import must import together."""
  import glob
  import os
  import re
  import subprocess
  import sys
  from tests.helpers import REPO_ROOT
  commands = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO_ROOT, 'research', '*.py'))}
  imported = set()
  for path in glob.glob(os.path.join(REPO_ROOT, 'tests', '*.py')):
    text = open(path).read()
    for names in re.findall(r'^from research import ([\w, ]+)$', text, flags=re.M):
      imported |= {n.strip() for n in names.split(',')} & commands
    imported |= set(re.findall(r'^(?:from|import) research\.(\w+)\b', text, flags=re.M)) & commands
  assert 'evaluate' in imported  # the scan sees the imports it is about
  code = ''.join(f'import research.{name}\n' for name in sorted(imported))
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, (sorted(imported), result.stderr[-2000:])

