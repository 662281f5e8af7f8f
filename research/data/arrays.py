"""Your own data: numpy arrays in memory, `.npz` files, CSV files, lists of dicts.

`config.dataset.name` names one of:

- a dataset registered in this process with `register(name, train=(x, y), test=(x, y))`
  (arrays, or lists of `{'text': ..., 'label': ...}` dicts for text);
- `npz:PATH`: a `.npz` file with `<split>_inputs` and `<split>_labels` arrays per split
  (e.g. `train_inputs`, `train_labels`, `test_inputs`, `test_labels`);
- `csv:PATTERN`: one CSV file per split, `PATTERN` with `{split}` in it (e.g.
  `csv:data/{split}.csv`); the column `config.dataset.label_key` (default `label`) is the
  label, a `text` column (or `config.dataset.input_key`) is text, otherwise every other
  column is a float32 feature.

They feed the same pipeline as tfds datasets (per-epoch shuffling from the seed, exact
resume, padded evaluation, per-process slices), take the same split slices
(`train[:80%]`, `train[800:]`) and fail with the same errors (labels outside
`[0, num_classes)`, unknown or empty splits). Integer labels are classes
(`num_classes` = the largest label + 1 over all splits, unless given); float labels are
regression targets. A registered dataset lives in its process: a resumed run must
register it again (files need nothing).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import types
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from research import paths
from research.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  name: str
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (inputs, labels)
  num_classes: int                                  # 0: float labels (regression)
  class_names: tuple[str, ...] = ()


_REGISTERED: dict[str, ArrayDataset] = {}
_PREFIXES = ('npz:', 'csv:')


def _as_arrays(split: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
  """`(inputs, labels)` from a pair of arrays or a list of {'text'/'inputs', 'label'} dicts."""
  if isinstance(data, (list, tuple)) and data and isinstance(data[0], dict):
    key = 'text' if 'text' in data[0] else 'inputs'
    if key not in data[0] or 'label' not in data[0]:
      raise ConfigError(f"Split {split!r}: dicts need a 'text' (or 'inputs') and a 'label' "
                        f'key; the first has {sorted(data[0])}.')
    values = [d[key] for d in data]
    labels = np.asarray([d['label'] for d in data])
    if isinstance(values[0], (str, bytes)):
      inputs = np.empty(len(values), dtype=object)
      inputs[:] = values
    else:
      inputs = np.stack([np.asarray(v) for v in values])
    return inputs, labels
  if not (isinstance(data, (list, tuple)) and len(data) == 2):
    raise ConfigError(f'Split {split!r} must be (inputs, labels) or a list of dicts; got '
                      f'{type(data).__name__}.')
  inputs, labels = data
  inputs = np.asarray(inputs) if not isinstance(inputs, np.ndarray) else inputs
  if inputs.dtype.kind in 'SU':  # texts: objects, not fixed-width strings
    inputs = inputs.astype(object)
  labels = np.asarray(labels)
  if len(inputs) != len(labels):
    raise ConfigError(f'Split {split!r} has {len(inputs)} inputs but {len(labels)} labels.')
  return inputs, labels


def make_dataset(name: str, splits: dict[str, Any], *, num_classes: int | None = None,
                 class_names: Sequence[str] = ()) -> ArrayDataset:
  arrays = {split: _as_arrays(split, data) for split, data in splits.items()}
  if not arrays:
    raise ConfigError(f'Dataset {name!r} needs at least one split, e.g. train=(x, y).')
  kinds = {labels.dtype.kind for _, labels in arrays.values()}
  if kinds <= {'i', 'u'}:
    largest = max(int(labels.max()) for _, labels in arrays.values() if len(labels))
    num_classes = num_classes if num_classes is not None else max(largest + 1,
                                                                  len(class_names))
  elif kinds <= {'f'}:
    if num_classes:
      raise ConfigError(f'Dataset {name!r} has float labels (regression), but '
                        f'num_classes={num_classes} was given.')
    num_classes = 0
  else:
    raise ConfigError(f'Dataset {name!r}: labels must be integers (classes) or floats '
                      f'(regression); got dtypes {sorted(kinds)}.')
  if class_names and len(class_names) != num_classes:
    raise ConfigError(f'Dataset {name!r}: {len(class_names)} class names for '
                      f'{num_classes} classes.')
  return ArrayDataset(name, arrays, int(num_classes), tuple(class_names))


def register(name: str, *, num_classes: int | None = None, class_names: Sequence[str] = (),
             **splits: Any) -> ArrayDataset:
  """Makes `config.dataset.name = name` read these arrays (in this process)."""
  if name.startswith(_PREFIXES):
    raise ConfigError(f'{name!r}: names starting with {_PREFIXES} are file paths.')
  dataset = make_dataset(name, splits, num_classes=num_classes, class_names=class_names)
  _REGISTERED[name] = dataset
  return dataset


def _from_npz(spec: str) -> ArrayDataset:
  path = spec[len('npz:'):]
  if not paths.isfile(path):
    raise ConfigError(f'config.dataset.name={spec!r}: no file {path!r}.')
  source = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path  # gs://
  with np.load(source, allow_pickle=False) as f:
    keys = set(f.files)
    names = sorted(k[:-len('_inputs')] for k in keys if k.endswith('_inputs'))
    missing = [f'{n}_labels' for n in names if f'{n}_labels' not in keys]
    if not names or missing:
      raise ConfigError(f'{path} needs <split>_inputs and <split>_labels arrays (e.g. '
                        f'train_inputs, train_labels); it has {sorted(keys)}.')
    splits = {n: (f[f'{n}_inputs'], f[f'{n}_labels']) for n in names}
  return make_dataset(spec, splits)


def _from_csv(spec: str, input_key: str, label_key: str) -> ArrayDataset:
  pattern = spec[len('csv:'):]
  if '{split}' not in pattern:
    raise ConfigError(f"config.dataset.name={spec!r} needs '{{split}}' in the path, e.g. "
                      "'csv:data/{split}.csv'.")
  directory, base = os.path.split(pattern)
  prefix, suffix = base.split('{split}')
  found = sorted(f[len(prefix):len(f) - len(suffix)] for f in paths.listdir(directory or '.')
                 if f.startswith(prefix) and f.endswith(suffix))
  if not found:
    raise ConfigError(f'config.dataset.name={spec!r}: no file matches {pattern!r}.')
  label_key = label_key or 'label'
  splits = {}
  for split in found:
    path = pattern.format(split=split)
    if paths.is_remote(path):  # gs://: read whole, then parse as a local file would be
      rows = list(csv.DictReader(io.StringIO(paths.read_bytes(path).decode(), newline='')))
    else:
      with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows or label_key not in rows[0]:
      raise ConfigError(f'{path}: no {label_key!r} column (config.dataset.label_key); '
                        f'columns: {sorted(rows[0]) if rows else "(empty file)"}.')
    raw = [r[label_key] for r in rows]
    try:
      labels = np.asarray([int(v) for v in raw], np.int64)
    except ValueError:
      labels = np.asarray([float(v) for v in raw], np.float32)
    text_key = input_key or ('text' if 'text' in rows[0] else '')
    if text_key:
      inputs = np.empty(len(rows), dtype=object)
      inputs[:] = [r[text_key] for r in rows]
    else:
      columns = [c for c in rows[0] if c != label_key]
      inputs = np.asarray([[float(r[c]) for c in columns] for r in rows], np.float32)
    splits[split] = (inputs, labels)
  return make_dataset(spec, splits)


def lookup(name: str, input_key: str = '', label_key: str = '') -> ArrayDataset | None:
  """The dataset `name` refers to, or None when it is not one of ours (then: tfds)."""
  if name.startswith('npz:'):
    return _from_npz(name)
  if name.startswith('csv:'):
    return _from_csv(name, input_key, label_key)
  return _REGISTERED.get(name)


def split_indices(dataset: ArrayDataset, split: str) -> tuple[str, np.ndarray]:
  """`(base split, example indices)` of a split spec such as 'train[:80%]' (tfds syntax)."""
  base = split.split('[')[0]
  if base not in dataset.splits:
    raise ValueError(f'Dataset {dataset.name!r} has no split {split!r}; available: '
                     f'{sorted(dataset.splits)}.')
  n = len(dataset.splits[base][1])
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {base: types.SimpleNamespace(num_examples=n)})[0]
  except (ValueError, AssertionError) as e:
    raise ConfigError(f'Split {split!r} of {dataset.name!r} is not a valid slice ({e}).') from e
  return base, np.arange(instruction.from_ or 0, n if instruction.to is None else instruction.to)
