"""Your own data (`research.data.arrays`): arrays in memory, .npz, CSV and lists of dicts
train through the same pipeline, resume exactly after SIGKILL, and fail like tfds sources."""
from __future__ import annotations

import csv
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from research import models, training
from research import config as config_lib
from research.config import default_config
from research.data import arrays, sources
from research.errors import ConfigError
from tests import checkpoint_utils as cu
from tests.helpers import REPO_ROOT, tiny_config


def _blobs(n: int, seed: int):
  """Three Gaussian blobs in 10 dimensions: an easy, exactly reproducible problem."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  x = rng.normal(size=(n, 10)).astype(np.float32) + 2.0 * np.eye(3, 10, dtype=np.float32)[y]
  return x, y


@pytest.fixture
def registered():
  x, y = _blobs(1200, 0)
  yield arrays.register('blobs', train=(x[:1000], y[:1000]), test=(x[1000:], y[1000:]),
                        class_names=('a', 'b', 'c'))
  arrays._REGISTERED.pop('blobs', None)


def test_readme_example_trains_on_numpy_arrays(tmp_path):
  # The README's ten lines (Data section), with fewer steps and a temporary workdir.
  import numpy as np
  from research import models, training
  from research.config import default_config
  from research.data import arrays
  x, y = np.random.default_rng(0).normal(size=(1000, 20)).astype('float32'), np.arange(1000) % 4
  x[np.arange(1000), y] += 3.0          # make the classes separable
  arrays.register('my_data', train=(x[:800], y[:800]), test=(x[800:], y[800:]))
  config = default_config()
  config.dataset.name, config.model = 'my_data', models.model_config('mlp')
  config.num_train_steps, config.progress_bar, config.write_report = 300, False, False
  results = training.train_and_evaluate(config, str(tmp_path / 'my_run'))
  print(f"own arrays: test accuracy {results['test']['accuracy']:.3f}")
  assert results['test']['accuracy'] > 0.9 and results['test']['num_examples'] == 200
  arrays._REGISTERED.pop('my_data')


def test_split_slices_sizes_and_class_names(registered):
  source = sources.open_source(default_config().dataset.__class__(
      {'name': 'blobs', 'input_key': '', 'label_key': '', 'data_dir': ''}))
  assert source.info.num_classes == 3 and source.info.class_names == ('a', 'b', 'c')
  assert len(source.load('train[:80%]')) == 800 and len(source.load('train[900:]')) == 100
  np.testing.assert_array_equal(source.load('train[10:20]').inputs, registered.splits['train'][0][10:20])
  with pytest.raises(ValueError, match=r"has no split 'validation'; available: \['test', 'train'\]"):
    source.load('validation')
  with pytest.raises(ValueError, match='is empty'):
    source.load('train[5:5]')


def test_validation_fraction_holds_out_a_stratified_split_the_same_for_every_seed(registered,
                                                                                tmp_path):
  cfg = default_config()
  cfg.dataset.name, cfg.dataset.validation_fraction = 'blobs', 0.1
  source = sources.open_source(cfg.dataset)
  train, held = source.load('train'), source.load('validation')
  all_x, all_y = registered.splits['train']
  counts = np.bincount(all_y, minlength=3)
  np.testing.assert_array_equal(np.bincount(held.labels, minlength=3), np.round(0.1 * counts))
  assert source.info.split_sizes == {'train': len(train), 'validation': len(held), 'test': 200}
  # Disjoint, and together exactly the original training split.
  rows = {tuple(r) for r in all_x.tolist()}
  got = [tuple(r) for r in np.concatenate([train.inputs, held.inputs]).tolist()]
  assert len(got) == 1000 and set(got) == rows
  assert len(source.load('test')) == 200  # other splits untouched
  cfg.seed = 7  # the held-out examples do not depend on the run's seed
  np.testing.assert_array_equal(sources.open_source(cfg.dataset).load('validation').inputs,
                                held.inputs)
  # A run trains on the rest and evaluates the held-out part by name.
  cfg.model, cfg.dataset.eval_splits = models.model_config('mlp'), 'validation,test'
  cfg.num_train_steps, cfg.progress_bar, cfg.write_report = 30, False, False
  results = training.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert results['validation']['num_examples'] == len(held) == np.round(0.1 * counts).sum()
  assert results['test']['num_examples'] == 200


def test_validation_fraction_errors(registered):
  cfg = default_config()
  cfg.dataset.name, cfg.dataset.validation_fraction = 'blobs', 1.0
  with pytest.raises(ConfigError, match=r'validation_fraction must be in \[0, 1\), got 1.0'):
    config_lib.validate(cfg)
  x, y = _blobs(60, 2)
  arrays.register('has_validation', train=(x[:50], y[:50]), validation=(x[50:], y[50:]))
  try:
    cfg.dataset.name, cfg.dataset.validation_fraction = 'has_validation', 0.2
    with pytest.raises(ConfigError, match="has its own 'validation' split; use it"):
      sources.open_source(cfg.dataset)
  finally:
    arrays._REGISTERED.pop('has_validation')


def test_bad_labels_fail_like_tfds_sources():
  x, y = _blobs(50, 1)
  y[7] = 5
  arrays.register('bad', train=(x, y), num_classes=3)
  try:
    cfg = default_config().dataset
    cfg.name = 'bad'
    with pytest.raises(ValueError, match=r"Split 'train' of 'bad' has labels outside \[0, 3\): "
                                         r'\[5\] \(first bad example index 7\)'):
      sources.open_source(cfg).load('train')
  finally:
    arrays._REGISTERED.pop('bad')
  with pytest.raises(ConfigError, match='50 inputs but 49 labels'):
    arrays.register('mismatch', train=(x, y[:49]))


def test_npz_and_csv_files(tmp_path):
  x, y = _blobs(300, 2)
  np.savez(tmp_path / 'data.npz', train_inputs=x[:240], train_labels=y[:240],
           test_inputs=x[240:], test_labels=y[240:])
  for split, rows in (('train', range(240)), ('test', range(240, 300))):
    with open(tmp_path / f'{split}.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow([f'f{i}' for i in range(10)] + ['label'])
      for i in rows:
        writer.writerow([repr(float(v)) for v in x[i]] + [int(y[i])])
  results = {}
  for name in (f'npz:{tmp_path}/data.npz', f'csv:{tmp_path}/{{split}}.csv'):
    config = tiny_config('mlp', steps=100)
    config.dataset.name = name
    results[name] = training.train_and_evaluate(config, str(tmp_path / name[:3]))
  # The same numbers through both files: the same float32 arrays, the same run.
  npz, from_csv = results.values()
  assert npz['test']['accuracy'] == from_csv['test']['accuracy'] > 0.6  # chance: 1/3
  with pytest.raises(ConfigError, match='needs <split>_inputs and <split>_labels'):
    np.savez(tmp_path / 'wrong.npz', x=x)
    arrays.lookup(f'npz:{tmp_path}/wrong.npz')


def test_text_as_a_list_of_dicts(tmp_path):
  words = ['good', 'great', 'fine', 'bad', 'awful', 'poor']
  rng = np.random.default_rng(0)
  data = [{'text': f'the film was {words[i % 6]} {words[(i * 7) % 3 + 3 * (i % 6 >= 3)]}',
           'label': int(i % 6 >= 3)} for i in rng.permutation(600)]
  arrays.register('reviews', train=data[:500], test=data[500:], class_names=('pos', 'neg'))
  try:
    config = tiny_config('transformer', steps=60, frontend='text', vocab_size=260,
                         max_length=32, pooling='mean')
    config.dataset.name, config.dataset.preprocess = 'reviews', 'tokenize_bytes(max_len=32)'
    config.optimizer.learning_rate = 3e-3
    results = training.train_and_evaluate(config, str(tmp_path))
    assert results['test']['accuracy'] > 0.9
  finally:
    arrays._REGISTERED.pop('reviews')


_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    from research import models, training
    from research.config import default_config
    from research.data import arrays
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1200)
    x = rng.normal(size=(1200, 10)).astype(np.float32) + 2.0 * np.eye(3, 10, dtype=np.float32)[y]
    arrays.register('blobs', train=(x[:1000], y[:1000]), test=(x[1000:], y[1000:]))
    config = default_config()
    config.dataset.name, config.model = 'blobs', models.model_config('mlp')
    config.num_train_steps, config.batch_size, config.log_every_steps = 600, 50, 10
    config.checkpoint.every_steps, config.eval_every_steps = 50, 0
    config.progress_bar, config.write_report = False, False
    training.train_and_evaluate(config, sys.argv[1])
''')


def test_sigkill_resume_from_in_memory_arrays_is_bitwise_exact(tmp_path):
  script = tmp_path / 'train_blobs.py'
  script.write_text(_SCRIPT)
  env = {'PYTHONPATH': REPO_ROOT}
  straight = str(tmp_path / 'straight')
  proc = cu.start([sys.executable, str(script), straight], env=env)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  killed = str(tmp_path / 'killed')
  proc = cu.start([sys.executable, str(script), killed], env=env)
  assert cu.wait_for(lambda: 200 in cu.finished_checkpoints(killed), 300, proc)
  assert proc.poll() is None, 'the run ended before the kill'
  cu.kill_group(proc)
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  proc = cu.start([sys.executable, str(script), killed], env=env)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert 0 < json.load(open(os.path.join(killed, 'results.json')))['resumed_from_step'] < 600
  cu.assert_trees_bitwise_equal(cu.read_state(killed, 600), cu.read_state(straight, 600))
