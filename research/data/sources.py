"""Finds a dataset by name, prepares it if needed, and reads its splits into host memory.

`open_source(config.dataset)`: your own arrays or files (`research.data.arrays`) when the
name is one of them, else a tfds dataset. Offline builders (`research.data.builders`)
generate themselves on first use. Any other tfds name goes through unchanged; it needs
network or a data dir where it was prepared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import os
import re
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research.data import arrays
from research.data import builders  # registers the offline builders
from research.data import holdout
from research.errors import ConfigError

OFFLINE_DATASETS = builders.OFFLINE_DATASETS


@dataclasses.dataclass(frozen=True)
class SplitArrays:
  """One split held in host memory: `inputs_NxF...` and `labels_N`."""
  inputs: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int  # 0: the label is a float regression target
  input_key: str
  label_key: str
  split_sizes: dict[str, int]
  class_names: tuple[str, ...] = ()  # the label feature's names, when it has them


def resolve_data_dir(data_dir: str) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def _check_name(name: str) -> None:
  known = tfds.list_builders(with_community_datasets=False)
  base = name.split('/')[0].split(':')[0]
  if base not in known:
    close = difflib.get_close_matches(base, known, n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise ValueError(
        f'Unknown dataset {name!r}. Offline datasets (no network needed): '
        f'{list(OFFLINE_DATASETS)}; otherwise any tfds name such as mnist, cifar10, '
        f'imdb_reviews (needs network or a prepared data_dir); your own data: '
        f"research.data.arrays.register(name, train=(x, y), ...), 'npz:PATH' or "
        f"'csv:DIR/{{split}}.csv'.{hint}")


@contextlib.contextmanager
def _preparation_lock(data_dir: str, name: str) -> Iterator[None]:
  """One process at a time prepares a dataset in a local data dir (tfds' own renames race:
  two runs started together would both build it and the second fail). Remote data dirs
  (gs://) are prepared beforehand or by one process."""
  if '://' in data_dir:
    yield
    return
  lock_path = os.path.join(data_dir, '.' + re.sub(r'[^\w.-]', '_', name) + '.lock')
  try:
    os.makedirs(data_dir, exist_ok=True)
    lock_file = open(lock_path, 'a')
  except OSError:  # a read-only data dir holds prepared data: nothing will be written
    yield
    return
  with lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
    yield


def open_builder(dataset_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder for `dataset_cfg.name`, prepared (built offline or downloaded)."""
  _check_name(dataset_cfg.name)
  data_dir = resolve_data_dir(dataset_cfg.data_dir)
  try:
    with _preparation_lock(data_dir, dataset_cfg.name):
      # Made under the lock: a builder made before another process finished would not
      # see its files.
      builder = tfds.builder(dataset_cfg.name, data_dir=data_dir, file_format='array_record')
      builder.download_and_prepare(file_format='array_record')
  except Exception as e:  # a network failure surfaces as many exception types
    if dataset_cfg.name.split('/')[0] in {n.split('/')[0] for n in OFFLINE_DATASETS}:
      raise
    raise RuntimeError(
        f'Dataset {dataset_cfg.name!r} is not prepared in {data_dir} and could not be '
        f'downloaded ({type(e).__name__}: {e}). On a machine with network run '
        f'`tfds build {dataset_cfg.name} --data_dir=DIR --file_format=array_record` and '
        f'point config.dataset.data_dir (or $TFDS_DATA_DIR) at DIR.') from e
  return builder


def dataset_info(builder: tfds.core.DatasetBuilder,
                 dataset_cfg: ml_collections.ConfigDict) -> DatasetInfo:
  info = builder.info
  supervised = info.supervised_keys or (None, None)
  input_key = dataset_cfg.input_key or supervised[0]
  label_key = dataset_cfg.label_key or supervised[1]
  feature_names = sorted(info.features.keys())
  for role, key in (('input', input_key), ('label', label_key)):
    if key is None or key not in info.features:
      raise ValueError(f'Dataset {dataset_cfg.name!r} has no {role} feature {key!r}; set '
                       f'config.dataset.{role}_key to one of {feature_names}.')
  label_feature = info.features[label_key]
  # A class label gives num_classes; a float feature is a regression target (num_classes 0).
  num_classes = getattr(label_feature, 'num_classes', None)
  if num_classes is None and np.dtype(getattr(label_feature, 'np_dtype', np.int64)).kind != 'f':
    raise ValueError(f'Feature {label_key!r} of {dataset_cfg.name!r} is neither a class label '
                     'nor a float regression target.')
  return DatasetInfo(
      name=dataset_cfg.name,
      num_classes=num_classes or 0,
      input_key=input_key,
      label_key=label_key,
      split_sizes={k: v.num_examples for k, v in info.splits.items()},
      class_names=tuple(getattr(label_feature, 'names', None) or ()),
  )


def load_split(builder: tfds.core.DatasetBuilder, info: DatasetInfo, split: str) -> SplitArrays:
  """Reads a whole split into host memory (random access through the ArrayRecord source)."""
  available = sorted(info.split_sizes) or ['(none)']
  base_split = split.split('[')[0]
  if info.split_sizes and base_split not in info.split_sizes:
    raise ValueError(f'Dataset {info.name!r} has no split {split!r}; available: {available}.')
  # tfds fails obscurely on an empty slice ('train[:0]'), so check the size first.
  if info.split_sizes and builder.info.splits[split].num_examples == 0:
    raise ValueError(f'Split {split!r} of dataset {info.name!r} is empty.')
  source = builder.as_data_source(split=split)
  n = len(source)
  if n == 0:
    raise ValueError(f'Split {split!r} of dataset {info.name!r} is empty.')
  records = source.__getitems__(list(range(n)))
  if np.asarray(records[0][info.input_key]).dtype.kind in 'SUO':
    # Text: an object array. A fixed-width one would pad every item to the longest
    # (IMDB train as numpy str: 25,000 x 13,704 chars x 4 bytes = 1.4 GB).
    inputs = np.empty(n, dtype=object)
    inputs[:] = [r[info.input_key] for r in records]
  else:
    inputs = np.stack([np.asarray(r[info.input_key]) for r in records])
  if not info.num_classes:  # a regression target
    labels = np.asarray([r[info.label_key] for r in records], dtype=np.float32)
    return SplitArrays(inputs=inputs, labels=labels)
  labels = np.asarray([r[info.label_key] for r in records], dtype=np.int32)
  check_labels(labels, info, split)
  return SplitArrays(inputs=inputs, labels=labels)


def check_labels(labels: np.ndarray, info: DatasetInfo, split: str) -> None:
  bad = (labels < 0) | (labels >= info.num_classes)
  if bad.any():
    raise ValueError(
        f'Split {split!r} of {info.name!r} has labels outside [0, {info.num_classes}): '
        f'{sorted(set(labels[bad].tolist()))[:10]} (first bad example index '
        f'{int(np.argmax(bad))}).')


class Source:
  """A dataset the trainer reads: its `info` and `load(split) -> SplitArrays`."""

  def __init__(self, info: DatasetInfo):
    self.info = info

  def load(self, split: str) -> SplitArrays:
    raise NotImplementedError


class TfdsSource(Source):
  def __init__(self, builder: tfds.core.DatasetBuilder, info: DatasetInfo):
    super().__init__(info)
    self.builder = builder

  def load(self, split: str) -> SplitArrays:
    return load_split(self.builder, self.info, split)


class ArraySource(Source):
  """Your own arrays or files (`research.data.arrays`), with tfds' split slices."""

  def __init__(self, dataset: arrays.ArrayDataset):
    super().__init__(DatasetInfo(
        name=dataset.name, num_classes=dataset.num_classes, input_key='inputs',
        label_key='labels', split_sizes={k: len(v[1]) for k, v in dataset.splits.items()},
        class_names=dataset.class_names))
    self.dataset = dataset

  def load(self, split: str) -> SplitArrays:
    base, idx = arrays.split_indices(self.dataset, split)
    if len(idx) == 0:
      raise ValueError(f'Split {split!r} of dataset {self.info.name!r} is empty.')
    inputs, labels = self.dataset.splits[base]
    inputs, labels = inputs[idx], labels[idx]
    if not self.info.num_classes:
      return SplitArrays(inputs=inputs, labels=labels.astype(np.float32))
    labels = labels.astype(np.int32)
    check_labels(labels, self.info, split)
    return SplitArrays(inputs=inputs, labels=labels)


class HoldoutSource(Source):
  """`source` with a stratified fraction of its training split held out as 'validation'
  (research.data.holdout); the training split is the rest."""

  def __init__(self, source: Source, train_split: str, fraction: float):
    if holdout.SPLIT in source.info.split_sizes:
      raise ConfigError(
          f'Dataset {source.info.name!r} has its own {holdout.SPLIT!r} split; use it '
          f'(config.dataset.eval_splits) instead of config.dataset.validation_fraction.')
    self.source = source
    train = source.load(train_split)
    kept, held_out = holdout.stratified_holdout(train.labels, fraction)
    if not len(held_out) or not len(kept):
      raise ConfigError(f'config.dataset.validation_fraction={fraction} of the '
                        f'{len(train)} examples of {train_split!r} leaves an empty split.')
    self._splits = {train_split: _take(train, kept), holdout.SPLIT: _take(train, held_out)}
    sizes = dict(source.info.split_sizes)
    sizes.update({train_split: len(kept), holdout.SPLIT: len(held_out)})
    super().__init__(dataclasses.replace(source.info, split_sizes=sizes))

  def load(self, split: str) -> SplitArrays:
    return self._splits[split] if split in self._splits else self.source.load(split)


def _take(split: SplitArrays, index: np.ndarray) -> SplitArrays:
  return SplitArrays(inputs=split.inputs[index], labels=split.labels[index])


def open_source(dataset_cfg: ml_collections.ConfigDict) -> Source:
  """Your own data (`research.data.arrays`) when the name is one, else a tfds dataset;
  with `dataset_cfg.validation_fraction` > 0, part of its training split held out."""
  own = arrays.lookup(dataset_cfg.name, dataset_cfg.input_key, dataset_cfg.label_key)
  if own is not None:
    source = ArraySource(own)
  else:
    builder = open_builder(dataset_cfg)
    source = TfdsSource(builder, dataset_info(builder, dataset_cfg))
  fraction = dataset_cfg.get('validation_fraction', 0.0)
  if fraction:
    source = HoldoutSource(source, dataset_cfg.train_split, fraction)
  return source
