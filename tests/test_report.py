"""research.report / plots / tb / compare / references on a hand-made workdir."""
import glob
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from research.evaluation import compare, metrics, plots, references, report, tb

CONFUSION = [[40, 5, 5], [10, 30, 10], [0, 0, 0]]  # class 2: never a label, never predicted


def _test_totals():
  """Host-side statistics for 100 examples, as batch_statistics would sum them."""
  confusion = np.array(CONFUSION, np.int32)
  return {
      'loss_sum': np.float32(81.25),
      'count': np.int32(100),
      'confusion': confusion,
      'top_1_correct': np.int32(70),
      'top_5_correct': np.int32(100),
      'ece_count': np.array([0, 0, 0, 0, 0, 0, 0, 0, 20, 30, 0, 0, 0, 0, 50], np.int32),
      'ece_confidence_sum': np.array([0] * 8 + [11.0, 19.5] + [0] * 4 + [49.0], np.float32),
      'ece_correct_sum': np.array([0] * 8 + [10, 15] + [0] * 4 + [45], np.int32),
  }


def _write_jsonl(path, records):
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


def _merge(base, extra):
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      _merge(base[key], value)
    else:
      base[key] = value
  return base


def _make_workdir(root, name='run', *, model='cnn', accuracy=None, seed=0, config=None):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  test = metrics.summarize(_test_totals())
  if accuracy is not None:
    test['accuracy'] = accuracy
  records = []
  for step in range(100, 501, 100):
    records.append({'step': step, 'split': 'train', 'loss': 2.0 / step * 100,
                    'accuracy': 0.1 + step / 1000, 'grad_norm': 1.0, 'examples_per_s': 5e4})
  for step in (250, 500):
    records.append({'step': step, 'split': 'test', 'loss': 0.9, 'accuracy': 0.6 + step / 5000})
  # A resumed run repeats step 500: the later record must win.
  records.append({'step': 500, 'split': 'test', **metrics.scalars(test)})
  _write_jsonl(os.path.join(workdir, 'metrics.jsonl'), records)
  results = {
      'test': test,
      'train': {'loss': 0.4, 'accuracy': 0.85, 'grad_norm': 0.5, 'examples_per_s': 5e4},
      'steps': 500, 'num_params': 5210, 'wall_time_s': 12.5, 'compile_time_s': 1.5,
      'train_examples_per_s': 51234.0, 'devices': 1, 'processes': 1, 'platform': 'cpu',
      'resumed_from_step': 0, 'best_checkpoint_step': None,
  }
  config = _merge({'seed': seed, 'batch_size': 100, 'log_every_steps': 100,
                   'dataset': {'name': 'mnist1d'}, 'model': {'name': model},
                   'optimizer': {'name': 'adam', 'learning_rate': 0.01, 'schedule': 'constant'}},
                  config or {})
  for filename, obj in (('results.json', results), ('config.json', config)):
    with open(os.path.join(workdir, filename), 'w') as f:
      json.dump(obj, f)
  return workdir


def _assert_png(path, min_px=200, max_px=4000):
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == b'\x89PNG\r\n\x1a\n', path
  width, height = struct.unpack('>II', head[16:24])
  assert min_px <= width <= max_px and min_px <= height <= max_px, (path, width, height)
  with Image.open(path) as image:
    image.verify()  # a complete, decodable file


def test_summary_of_hand_made_totals():
  test = metrics.summarize(_test_totals())
  assert test['accuracy'] == 0.7 and test['top_5_accuracy'] == 1.0
  assert test['per_class']['precision'] == pytest.approx([0.8, 30 / 35, 0.0])
  assert test['macro_recall'] == pytest.approx((0.8 + 0.6 + 0.0) / 3)  # absent class: 0
  assert test['ece'] == pytest.approx((1.0 + 4.5 + 4.0) / 100)


def test_write_report(tmp_path):
  workdir = _make_workdir(str(tmp_path))
  path = report.write_report(workdir)
  assert path == os.path.join(workdir, 'report.md')
  text = open(path).read()
  for png in ('learning_curves.png', 'confusion_test.png', 'reliability_test.png'):
    _assert_png(os.path.join(workdir, 'plots', png))
    assert f'(plots/{png})' in text
  assert '| test | 0.8125 | 70.00 | 100.00 |' in text   # loss, accuracy %, top-5 %
  assert '| train (mean of last 100 steps) | 0.4000 | 85.00 |' in text
  assert '| mnist1d | cnn | 70.00 | 1 | 94.0 | -24.00 |' in text  # vs the paper
  assert '5,210' in text and '51,234 examples/s' in text
  assert '| 2 | 0.0000 | 0.0000 | 0.0000 | 0 |' in text  # per-class row of the absent class

  # Regenerating is idempotent (TensorBoard files are replaced, not appended).
  report.write_report(workdir)
  assert open(path).read().replace(
      'TensorBoard', '') == text.replace('TensorBoard', '')


def test_report_of_a_masked_token_run(tmp_path):
  workdir = _make_workdir(str(tmp_path))
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  results['test'] = {'loss': 2.0, 'masked_accuracy': 0.4, 'perplexity': 7.389,
                     'num_tokens': 12345.0}
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f)
  text = open(report.write_report(workdir, tensorboard=False)).read()
  assert '| split | loss | accuracy % | masked accuracy % | perplexity | tokens |' in text
  assert '| test | 2.0000 | - | 40.00 | 7.389 | 12,345 |' in text
  assert 'Compared with the paper' not in text  # no accuracy to compare


def test_write_report_needs_results(tmp_path):
  with pytest.raises(FileNotFoundError, match='results.json'):
    report.write_report(str(tmp_path))


def test_learning_curves_keep_last_record_of_repeated_step(tmp_path):
  workdir = _make_workdir(str(tmp_path))
  series = plots.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert series['test']['step'] == [250.0, 500.0]
  assert series['test']['accuracy'] == [0.65, 0.7]
  assert series['train']['step'] == [100.0, 200.0, 300.0, 400.0, 500.0]


def test_confusion_plot_many_classes(tmp_path):
  matrix = np.random.default_rng(0).integers(0, 5, size=(100, 100))
  out = plots.confusion_matrix_plot(matrix, None, str(tmp_path / 'c.png'))
  _assert_png(out)
  with pytest.raises(ValueError, match='class names'):
    plots.confusion_matrix_plot(matrix, ['a', 'b'], str(tmp_path / 'd.png'))


def _read_events(path):
  """(tag, step, value) from a TFRecord event file, without TensorFlow."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  data = open(path, 'rb').read()
  out, pos = [], 0
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    out.extend((v.tag, event.step, v.simple_value) for v in event.summary.value)
  return out


def test_tensorboard_scalars(tmp_path):
  pytest.importorskip('tensorboardX')
  workdir = _make_workdir(str(tmp_path))
  report.write_report(workdir)
  report.write_report(workdir)  # a second call must not duplicate the curves
  files = sorted(glob.glob(os.path.join(workdir, 'tensorboard', '*', 'events.out.tfevents.*')))
  assert [os.path.basename(os.path.dirname(f)) for f in files] == ['test', 'train']
  test_events = _read_events(files[0])
  train_events = _read_events(files[1])
  assert [(s, round(v, 4)) for t, s, v in train_events if t == 'loss'] == [
      (100, 2.0), (200, 1.0), (300, 0.6667), (400, 0.5), (500, 0.4)]
  assert [(s, round(v, 4)) for t, s, v in test_events if t == 'accuracy'] == [
      (250, 0.65), (500, 0.7)]


def test_tensorboard_missing_package_is_a_clear_error(monkeypatch):
  import builtins  # pylint: disable=import-outside-toplevel
  real_import = builtins.__import__

  def no_tensorboardx(name, *args, **kwargs):
    if name.startswith('tensorboardX'):
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_tensorboardx)
  real_find_spec = tb.importlib.util.find_spec
  monkeypatch.setattr(tb.importlib.util, 'find_spec', lambda name, *a: (
      None if name == 'tensorboardX' else real_find_spec(name, *a)))
  assert not tb.available()
  with pytest.raises(ImportError, match='pip install'):
    tb.ScalarWriter('/nonexistent')


def test_tensorboard_files_are_written_without_importing_torch(tmp_path):
  # tensorboardX imports torch when it can (2 s of a short run); the writer hides it.
  pytest.importorskip('tensorboardX')
  pytest.importorskip('torch')
  code = ('import sys\n'
          'from research.evaluation import tb\n'
          f'w = tb.ScalarWriter({str(tmp_path)!r})\n'
          "w.write(1, 'train', {'loss': 0.5})\n"
          'w.close()\n'
          "assert 'torch' not in sys.modules, 'torch was imported'\n"
          'import torch  # still importable afterwards\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stderr[-2000:]
  assert glob.glob(os.path.join(str(tmp_path), 'train', 'events.out.tfevents.*'))


def test_references():
  assert [(r.model, r.value) for r in references.for_dataset('mnist1d')] == [
      ('logistic', 32.0), ('mlp', 68.0), ('cnn', 94.0), ('gru', 91.0), ('human', 96.0)]
  assert references.for_config_file('configs/mnist1d/logistic.py').value == 32.0
  assert references.for_config_file('/abs/repo/configs/mnist1d/cnn.py').model == 'cnn'
  assert references.lookup('mnist1d', 'transformer') is None
  assert 'Greydanus' in references.lookup('mnist1d', 'mlp').citation


def test_compare_command(tmp_path, capsys):
  root = str(tmp_path)
  _make_workdir(root, 'cnn_seed0', accuracy=0.92, seed=0)
  _make_workdir(root, 'cnn_seed1', accuracy=0.93, seed=1)
  _make_workdir(root, 'mlp_seed0', model='mlp', accuracy=0.65)
  _make_workdir(root, 'tiny_seed0', model='transformer', accuracy=0.5)
  os.makedirs(os.path.join(root, 'unfinished'))  # no results.json: ignored

  assert compare.main([root]) == 0
  rows = capsys.readouterr().out.splitlines()
  assert '| mnist1d | mlp | 65.00 | 1 | 68.0 | -3.00 |' in rows
  assert '| mnist1d | cnn | 92.50 ± 0.71 | 2 | 94.0 | -1.50 |' in rows
  assert '| mnist1d | transformer | 50.00 | 1 | - | - |' in rows
  assert rows.index('| mnist1d | mlp | 65.00 | 1 | 68.0 | -3.00 |') < rows.index(
      '| mnist1d | cnn | 92.50 ± 0.71 | 2 | 94.0 | -1.50 |')  # the paper's row order

  assert compare.main(['--glob', os.path.join(root, 'cnn_*'), '--all-references']) == 0
  out = capsys.readouterr().out
  assert '| mnist1d | cnn | 92.50 ± 0.71 | 2 | 94.0 | -1.50 |' in out
  assert '| mnist1d | human (Human expert) | - | 0 | 96.0 | - |' in out

  assert compare.main([os.path.join(root, 'unfinished')]) == 1
  assert compare.main([root, '--split', 'validation']) == 1
  assert 'no \'validation\' accuracy' in capsys.readouterr().err


def test_compare_pools_only_runs_of_one_config(tmp_path, capsys):
  """Seeds of one config are averaged; a 20-step run, a fine-tuned run, a NaN run and a run
  without test results are not (the issue: all of them were averaged into one cnn row)."""
  root = str(tmp_path)
  base = {'num_train_steps': 6000, 'init_from': {'workdir': '', 'skip': ''}}
  _make_workdir(root, 'cnn_seed0', accuracy=0.92, seed=0, config=base)
  _make_workdir(root, 'cnn_seed1', accuracy=0.93, seed=1, config=base)
  # Differs only in the seed and keys that do not change what is learnt: same experiment.
  _make_workdir(root, 'cnn_seed2', accuracy=0.94, seed=2, config=_merge(
      {'log_every_steps': 10, 'progress_bar': False, 'checkpoint': {'every_steps': 7},
       'dataset': {'data_dir': '/elsewhere'}, 'profile': {'start_step': 3}}, dict(base)))
  _make_workdir(root, 'cnn_smoke', accuracy=0.30, config={**base, 'num_train_steps': 20})
  _make_workdir(root, 'cnn_finetuned', accuracy=0.95,
                config={**base, 'init_from': {'workdir': 'runs/pretrain', 'skip': ''}})
  _make_workdir(root, 'cnn_diverged', accuracy=float('nan'), config=base)
  no_test = _make_workdir(root, 'cnn_no_test', config=base)
  results_path = os.path.join(no_test, 'results.json')
  results = json.load(open(results_path))
  del results['test']
  json.dump(results, open(results_path, 'w'))
  _make_workdir(root, 'mlp_seed0', model='mlp', accuracy=0.65, config=base)

  assert compare.main([root]) == 0
  captured = capsys.readouterr()
  rows = captured.out.splitlines()
  assert ('| mnist1d | cnn [init_from=no, num_train_steps=6000] | 93.00 ± 1.00 | 3 | 94.0 '
          '| -1.00 |') in rows
  assert '| mnist1d | cnn [init_from=no, num_train_steps=20] | 30.00 | 1 | 94.0 | -64.00 |' in rows
  assert '| mnist1d | cnn [init_from=yes, num_train_steps=6000] | 95.00 | 1 | 94.0 | +1.00 |' in rows
  assert '| mnist1d | mlp | 65.00 | 1 | 68.0 | -3.00 |' in rows  # one config: no label
  assert sum(row.startswith('| mnist1d | cnn') for row in rows) == 3
  warnings = captured.err.splitlines()
  assert all(w.startswith('warning: ') for w in warnings)
  assert len(warnings) == 3, warnings
  pooling = next(w for w in warnings if 'not pooled' in w)
  assert 'mnist1d / cnn: 5 runs have 3 different configs' in pooling
  assert 'differ in init_from, num_train_steps' in pooling
  assert os.path.join(root, 'cnn_smoke') in pooling
  assert any('cnn_diverged' in w and 'nan' in w for w in warnings)
  assert any('cnn_no_test' in w and "no 'test' accuracy" in w for w in warnings)

  # The same runs through the library call research.reproduce uses.
  groups, notes = compare.load_runs(compare.find_run_dirs([root]))
  assert groups[('mnist1d', 'cnn', 'init_from=no, num_train_steps=20')] == [30.0]
  assert ('mnist1d', 'cnn') not in groups and groups[('mnist1d', 'mlp')] == [65.0]
  assert len(notes) == 3


def test_by_dataset_table_puts_the_paper_rows_first(tmp_path, capsys):
  """Text-classification layout: datasets as columns, the paper's rows, then ours split by
  from-scratch vs fine-tuned; a dataset without a paper row still gets its column."""
  root = str(tmp_path)
  text = {'model': {'name': 'transformer'}, 'init_from': {'workdir': '', 'skip': ''}}
  tuned = {'model': {'name': 'transformer'}, 'init_from': {'workdir': 'runs/mlm', 'skip': ''}}
  shared_vocab = "tokenize_wordpiece(model='runs/mlm/wordpiece.json', max_len=128)"
  for seed, (scratch, pretrained) in enumerate([(0.95, 0.97), (0.96, 0.98)]):
    for dataset, shift in (('reuters_r8', 0.0), ('rotten_tomatoes', -0.2)):
      _make_workdir(root, f'{dataset}_scratch{seed}', model='transformer', seed=seed,
                    accuracy=scratch + shift, config={**text, 'dataset': {'name': dataset}})
      # From scratch with the pretraining's tokenizer: its own row, not pooled with the above.
      _make_workdir(root, f'{dataset}_scratch_shared_vocab{seed}', model='transformer',
                    seed=seed, accuracy=scratch + shift - 0.01,
                    config={**text, 'dataset': {'name': dataset, 'preprocess': shared_vocab}})
      _make_workdir(root, f'{dataset}_pre{seed}', model='transformer', seed=seed,
                    accuracy=pretrained + shift, config={**tuned, 'dataset': {'name': dataset}})
  assert compare.main(['--by-dataset', root]) == 0
  rows = capsys.readouterr().out.splitlines()
  assert rows[0] == '| method | reuters_r8 | rotten_tomatoes |'
  names = [row.split(' | ')[0][2:] for row in rows[2:] if row.startswith('| ')]
  assert names == ['TF-IDF+LR (paper)', 'CNN-rand (paper)', 'LSTM (paper)', 'fastText (paper)',
                   'Text GCN (paper)', 'transformer (from scratch)',
                   'transformer (from scratch, given tokenizer)',
                   'transformer (pretrained, fine-tuned)']
  assert '| Text GCN (paper) | 97.07 | - |' in rows
  assert '| transformer (from scratch) | 95.50 ± 0.71 (n=2) | 75.50 ± 0.71 (n=2) |' in rows
  assert ('| transformer (from scratch, given tokenizer) | 94.50 ± 0.71 (n=2) | '
          '74.50 ± 0.71 (n=2) |') in rows
  assert '| transformer (pretrained, fine-tuned) | 97.50 ± 0.71 (n=2) | 77.50 ± 0.71 (n=2) |' in rows
  assert any(row.startswith('Paper: Yao') for row in rows)


def test_experiment_config_drops_what_does_not_change_the_result():
  config = {'seed': 3, 'num_train_steps': 20, 'log_every_steps': 5, 'progress_bar': True,
            'write_report': False, 'eval_batch_size': 500,
            'checkpoint': {'every_steps': 10, 'keep': 2},
            'profile': {'start_step': 0}, 'distributed': {'coordinator_address': 'h:1'},
            'dataset': {'name': 'mnist1d', 'data_dir': '/data', 'batches_per_chunk': 4,
                        'prefetch_threads': 2, 'preprocess': 'standardize'},
            'init_from': {'workdir': '/runs/pre', 'skip': '^head/'},
            'model': {'name': 'mlp', 'hidden_sizes': [100, 100]},
            'evals': {}}
  assert compare.experiment_config(config) == {
      'num_train_steps': 20, 'dataset.name': 'mnist1d', 'dataset.preprocess': 'standardize',
      'init_from': 'yes', 'init_from.skip': '^head/', 'model.name': 'mlp',
      'model.hidden_sizes': [100, 100], 'evals': {}}
  other_seed = _merge(json.loads(json.dumps(config)), {
      'seed': 4, 'init_from': {'workdir': 'elsewhere/pre'}, 'checkpoint': {'keep': 9}})
  assert compare.config_fingerprint(other_seed) == compare.config_fingerprint(config)
  assert compare.config_fingerprint({**config, 'num_train_steps': 21}) != \
      compare.config_fingerprint(config)


def test_comparison_table_function():
  table = compare.comparison_table({'logistic': [0.315], 'cnn': [0.923, 0.94, 0.93]})
  lines = table.splitlines()
  assert '| mnist1d | logistic (Logistic regression) | 31.50 | 1 | 32.0 | -0.50 |' in lines
  assert '| mnist1d | cnn | 93.10 ± 0.85 | 3 | 94.0 | -0.90 |' in lines
  assert any(line.startswith('Paper: Greydanus') for line in lines)
  assert compare.comparison_table({'mlp': [65.1]}, unit='percent').count('-2.90') == 1
  with pytest.raises(ValueError, match="unit='percent'"):
    compare.comparison_table({'mlp': [65.1]})


def test_reproduce_passes_a_config_argument(tmp_path):
  """`path:ARG` reaches get_config(ARG) and names the run directory; commas separate configs."""
  from tests.helpers import REPO_ROOT, run_module
  config_file = tmp_path / 'tiny.py'
  config_file.write_text(
      'from tests.helpers import tiny_config\n'
      'def get_config(arg="3"):\n'
      '  return tiny_config("logistic", steps=int(arg))\n')
  proc = run_module('research.reproduce', f'--workdir={tmp_path / "runs"}', '--seeds=0',
                    f'--configs={config_file}:4,{config_file}:6',
                    env={'PYTHONPATH': REPO_ROOT})
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = {name: json.loads((tmp_path / 'runs' / name / 'seed0' / 'results.json').read_text())['steps']
           for name in ('tiny-4', 'tiny-6')}
  assert steps == {'tiny-4': 4, 'tiny-6': 6}
  # Another recipe over the same workdir: refused, not reported as the new one.
  before = (tmp_path / 'runs' / 'tiny-4' / 'seed0' / 'results.json').read_text()
  proc = run_module('research.reproduce', f'--workdir={tmp_path / "runs"}', '--seeds=0',
                    f'--configs={config_file}:4',
                    env={'PYTHONPATH': REPO_ROOT,
                         'RESEARCH_EXTRA_OVERRIDES': '--config.optimizer.learning_rate=0.5'})
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert re.search(r'tiny-4/seed0 was made with another config \(optimizer.learning_rate: '
                   r'[0-9.e-]+ -> 0.5\); move it away', proc.stderr), proc.stderr[-2000:]
  assert (tmp_path / 'runs' / 'tiny-4' / 'seed0' / 'results.json').read_text() == before


def test_reproduce_workers_run_in_parallel_on_disjoint_cpus(tmp_path):
  """--workers=2: every run finishes, each worker pinned to its own share of the CPUs; a
  failing run fails the command with its own one-line error."""
  from tests.helpers import REPO_ROOT, run_module
  config_file = tmp_path / 'tiny.py'
  config_file.write_text(
      'import multiprocessing, os\n'
      'from research.errors import ConfigError\n'
      'from tests.helpers import tiny_config\n'
      'def get_config(arg="3"):\n'
      '  if arg == "bad":\n'
      '    raise ConfigError("tiny.py: bad argument")\n'
      '  if multiprocessing.parent_process():  # a worker (the parent plans the runs too)\n'
      f'    with open({str(tmp_path)!r} + f"/cpus-{{os.getpid()}}", "w") as f:\n'
      '      f.write(",".join(map(str, sorted(os.sched_getaffinity(0)))))\n'
      '  return tiny_config("logistic", steps=int(arg))\n')
  proc = run_module('research.reproduce', f'--workdir={tmp_path / "runs"}', '--seeds=0,1,2',
                    f'--configs={config_file}:4', '--workers=2', env={'PYTHONPATH': REPO_ROOT})
  assert proc.returncode == 0, proc.stderr[-3000:]
  for seed in range(3):
    assert json.loads((tmp_path / 'runs' / 'tiny-4' / f'seed{seed}' / 'results.json')
                      .read_text())['steps'] == 4
  assert '| 3 |' in (tmp_path / 'runs' / 'table.md').read_text()  # n = 3 seeds in the table
  shares = {path.read_text() for path in tmp_path.glob('cpus-*')}
  cpus = [set(share.split(',')) for share in shares]
  if len(os.sched_getaffinity(0)) >= 2:
    assert len(cpus) == 2 and not cpus[0] & cpus[1], shares
  proc = run_module('research.reproduce', f'--workdir={tmp_path / "runs"}', '--seeds=0,1',
                    f'--configs={config_file}:bad', '--workers=2', env={'PYTHONPATH': REPO_ROOT})
  assert proc.returncode != 0 and 'tiny.py: bad argument' in proc.stderr
  assert 'Traceback' not in proc.stderr


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'  # a zombie has exited
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux')
def test_killing_reproduce_stops_its_workers(tmp_path):
  """SIGKILL to research.reproduce (no chance to clean up): the kernel sends its workers
  SIGTERM, so each run saves a checkpoint and exits instead of training on unseen."""
  from tests import checkpoint_utils as cu
  from tests.helpers import REPO_ROOT
  config_file = tmp_path / 'endless.py'
  config_file.write_text(
      'import multiprocessing, os\n'
      'from tests.helpers import tiny_config\n'
      'def get_config():\n'
      '  if multiprocessing.parent_process():\n'
      f'    open({str(tmp_path)!r} + f"/pid-{{os.getpid()}}", "w").close()\n'
      '  config = tiny_config("logistic", steps=10**6)\n'
      '  config.checkpoint.every_steps = 10**5\n'
      '  return config\n')
  runs = tmp_path / 'runs'
  log = open(tmp_path / 'log.txt', 'w')  # a file, not a pipe: nobody reads while they run
  proc = subprocess.Popen([sys.executable, '-m', 'research.reproduce', f'--workdir={runs}',
                           '--seeds=0,1', f'--configs={config_file}', '--workers=2'],
                          cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, 'PYTHONPATH': REPO_ROOT}, start_new_session=True)
  pids = []
  try:
    deadline = time.time() + 120
    while time.time() < deadline and not all(
        (runs / 'endless' / f'seed{s}' / 'metrics.jsonl').exists() for s in (0, 1)):
      assert proc.poll() is None, (tmp_path / 'log.txt').read_text()[-3000:]
      time.sleep(0.5)
    pids = [int(p.name.split('-')[1]) for p in tmp_path.glob('pid-*')]
    assert len(pids) == 2 and all(map(_alive, pids)), pids
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and any(map(_alive, pids)):
      time.sleep(0.2)
    assert not any(map(_alive, pids)), 'workers outlived research.reproduce'
    for seed in (0, 1):  # each stopped as if preempted: a checkpoint to resume from
      assert cu.finished_checkpoints(str(runs / 'endless' / f'seed{seed}'))
  finally:
    for pid in [proc.pid, *pids]:
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    log.close()
