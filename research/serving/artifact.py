"""Loads an exported model directory (`python -m research.export`) with jax and numpy only.

  from research.serving import artifact          # or, where `research` is not installed:
  model = artifact.load('runs/export/demo')      #   sys.path.insert(0, DIR); import loader
  model.predict(x_Bx40)                          # {'labels', 'names', 'probabilities'}

This module imports nothing from `research` (the exporter copies it into every artifact
as `loader.py`), so a serving process needs only jax, numpy and, for WordPiece or
SentencePiece text models, `tokenizers` or `sentencepiece`.

A directory holds:
  model.jaxexport   the serialized `jax.export` function `(variables, *inputs) -> logits`,
                    with a symbolic batch size, lowered for cpu, cuda and tpu
  weights.npz       `variables`: the model's parameters (and BatchNorm statistics) and the
                    fitted preprocessing statistics, keyed by path ('params/head/kernel')
  signature.json    inputs and outputs (names, dtypes, shapes), class names, the text
                    preprocessing (tokenizer, max_len, [CLS])
  tokenizer.json / tokenizer.model   a trained WordPiece / SentencePiece tokenizer
  model_card.json   the run's config, results and checkpoint step
  loader.py         this module
  manifest.json     sha256 of every other file: `load` refuses a directory that differs

Numeric preprocessing (scale, standardize, centre crops) is part of the exported function;
text is tokenized here, on the host, exactly as the run's evaluation pipeline does.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax import export as jax_export

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
MODULE_FILE = 'model.jaxexport'
WEIGHTS_FILE = 'weights.npz'
SIGNATURE_FILE = 'signature.json'

# The tokenizers' shared special ids (research/data/tokenizers.py): [PAD], [CLS].
_PAD_ID, _CLS_ID, _NUM_SPECIAL_IDS = 0, 1, 4


class ArtifactError(Exception):
  """The directory is not a complete, unmodified exported model."""


class InputError(ValueError):
  """Inputs that do not match the model's signature; the message says what is expected."""


# ---- Integrity ----

def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def verify_manifest(directory: str) -> dict[str, str]:
  """Every file listed in manifest.json exists with its sha256, and no file is unlisted."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise ArtifactError(f'{directory} is not an exported model: {MANIFEST} is missing.')
  try:
    with open(path) as f:
      files = json.load(f)['files']
  except (ValueError, KeyError, TypeError) as e:
    raise ArtifactError(f'{path} is not a valid manifest ({type(e).__name__}: {e}).') from None
  for name, expected in sorted(files.items()):
    file_path = os.path.join(directory, name)
    if not os.path.isfile(file_path):
      raise ArtifactError(f'{file_path} is listed in {MANIFEST} but missing.')
    actual = sha256_file(file_path)
    if actual != expected:
      raise ArtifactError(f'Checksum mismatch for {file_path}: sha256 {actual}, the manifest '
                          f'says {expected}. The artifact is corrupted or was modified; '
                          f'export it again.')
  extra = sorted(set(os.listdir(directory)) - set(files) - {MANIFEST, '__pycache__'})
  if extra:
    raise ArtifactError(f'{directory} has files not in {MANIFEST}: {extra}.')
  return files


def write_manifest(directory: str) -> dict[str, str]:
  """Hashes every file of `directory` into manifest.json (the exporter's last step)."""
  files = {name: sha256_file(os.path.join(directory, name))
           for name in sorted(os.listdir(directory))
           if name != MANIFEST and os.path.isfile(os.path.join(directory, name))}
  with open(os.path.join(directory, MANIFEST), 'w') as f:
    json.dump({'format_version': FORMAT_VERSION, 'files': files}, f, indent=2)
  return files


# ---- Text: tokenized as research/data/tokenizers.py does ----

class _ByteEncoder:
  """UTF-8 bytes, id = byte + 4, cut at the byte budget."""

  def encode(self, texts: list[str], budget: int) -> tuple[np.ndarray, np.ndarray]:
    fixed = np.array([t.encode('utf-8') for t in texts], dtype='S').astype(f'S{budget}')
    n = len(fixed)
    bytes_NxT = np.ascontiguousarray(fixed).view(np.uint8).reshape(n, budget)
    mask_NxT = np.arange(budget) < np.strings.str_len(fixed)[:, None]
    ids_NxT = np.where(mask_NxT, bytes_NxT.astype(np.int32) + _NUM_SPECIAL_IDS, _PAD_ID)
    return ids_NxT.astype(np.int32), mask_NxT


class _WordPieceEncoder:
  """A Hugging Face `tokenizer.json`, truncated and padded to the budget in Rust."""

  def __init__(self, path: str, budget: int):
    import tokenizers  # only text models need it
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.encode_special_tokens = True  # "[MASK]" written in a text is text
    self._tok.enable_truncation(max_length=budget)
    self._tok.enable_padding(length=budget, pad_id=_PAD_ID, pad_token='[PAD]')
    with open(path, encoding='utf-8') as f:
      pre_tokenizer = json.load(f).get('pre_tokenizer') or {}
    # BERT's pre-tokenizer never yields [PAD] from text, so the mask is `ids != 0`.
    self._pad_only_pads = pre_tokenizer.get('type') == 'BertPreTokenizer'

  def encode(self, texts: list[str], budget: int) -> tuple[np.ndarray, np.ndarray]:
    encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
    n = len(encodings)
    ids_NxT = np.array([e.ids for e in encodings], np.int32).reshape(n, budget)
    if self._pad_only_pads:
      return ids_NxT, ids_NxT != _PAD_ID
    return ids_NxT, np.array([e.attention_mask for e in encodings], bool).reshape(n, budget)


class _SentencePieceEncoder:

  def __init__(self, path: str):
    import sentencepiece  # only SentencePiece text models need it
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)

  def encode(self, texts: list[str], budget: int) -> tuple[np.ndarray, np.ndarray]:
    pieces = self._sp.encode(texts, out_type=int)
    lengths_N = np.fromiter((min(len(p), budget) for p in pieces), np.int64, len(pieces))
    mask_NxT = np.arange(budget) < lengths_N[:, None]
    ids_NxT = np.zeros((len(pieces), budget), np.int32)
    ids_NxT[mask_NxT] = np.asarray([i for p in pieces for i in p[:budget]], np.int32)
    return ids_NxT, mask_NxT


class TextEncoder:
  """Texts -> `(ids int32[N, max_len], mask bool[N, max_len])`, [CLS] first if the run had it."""

  def __init__(self, directory: str, spec: dict[str, Any]):
    self.max_len, self.cls = int(spec['max_len']), bool(spec['cls'])
    self._budget = self.max_len - int(self.cls)
    kind = spec['tokenizer']
    if kind == 'bytes':
      self._encoder = _ByteEncoder()
    elif kind == 'wordpiece':
      self._encoder = _WordPieceEncoder(os.path.join(directory, spec['file']), self._budget)
    elif kind == 'sentencepiece':
      self._encoder = _SentencePieceEncoder(os.path.join(directory, spec['file']))
    else:
      raise ArtifactError(f'Unknown tokenizer {kind!r} in {SIGNATURE_FILE}; this loader '
                          f'knows bytes, wordpiece and sentencepiece.')

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids_NxT, mask_NxT = self._encoder.encode(texts, self._budget)
    if self.cls:
      n = len(ids_NxT)
      ids_NxT = np.concatenate([np.full((n, 1), _CLS_ID, np.int32), ids_NxT], axis=1)
      mask_NxT = np.concatenate([np.ones((n, 1), bool), mask_NxT], axis=1)
    return ids_NxT, mask_NxT


# ---- The model ----

def _chunks(n: int, buckets: Sequence[int]) -> list[tuple[int, int]]:
  """`(rows, compiled size)` pieces covering n rows: the largest bucket that fits, again
  and again (with powers of two, n's binary digits: no padding); a remainder below the
  smallest bucket is padded up to it."""
  pieces = []
  while n > 0:
    size = next((b for b in reversed(buckets) if b <= n), buckets[0])
    pieces.append((min(size, n), size))
    n -= size
  return pieces


class ExportedModel:
  """An exported run: `outputs(inputs)` -> logits, `predict(inputs)` -> labels and
  probabilities. `inputs` is a list of texts (text models) or an array `[N, *shape]`."""

  def __init__(self, directory: str, *, verify: bool = True,
               batch_buckets: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)):
    self.directory = directory
    self.files = verify_manifest(directory) if verify else {}
    with open(os.path.join(directory, SIGNATURE_FILE)) as f:
      self.signature: dict[str, Any] = json.load(f)
    if self.signature.get('format_version') != FORMAT_VERSION:
      raise ArtifactError(f'{directory}: format_version {self.signature.get("format_version")}'
                          f' is not {FORMAT_VERSION}, the one this loader reads.')
    self.name: str = self.signature['name']
    self.class_names: list[str] = list(self.signature.get('class_names') or [])
    self.input_spec: dict[str, Any] = self.signature['inputs'][0]
    self.is_text = self.input_spec['datatype'] == 'BYTES'
    self.example_shape = tuple(self.input_spec['shape'][1:])
    self.dtype = np.dtype(self.input_spec['numpy_dtype'])
    self.num_outputs = int(self.signature['outputs'][0]['shape'][1])
    self.text = TextEncoder(directory, self.signature['text']) if self.is_text else None
    with np.load(os.path.join(directory, WEIGHTS_FILE)) as weights:
      variables = {k: weights[k] for k in self.signature['variables']}
    self.variables = jax.device_put(variables)
    with open(os.path.join(directory, MODULE_FILE), 'rb') as f:
      self.exported = jax_export.deserialize(bytearray(f.read()))
    self._call = jax.jit(self.exported.call)
    # Padding to a few batch sizes bounds the number of compilations.
    self.batch_buckets = tuple(sorted(set(int(b) for b in batch_buckets)))

  # -- inputs --

  def prepare(self, inputs: Any) -> tuple[np.ndarray, ...]:
    """Validated, model-ready host arrays for `inputs` (raises InputError)."""
    if self.is_text:
      if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple, np.ndarray)):
        raise InputError(f'texts must be a list of strings, got {type(inputs).__name__}.')
      texts = list(inputs)
      bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
      if bad is not None:
        raise InputError(f'texts[{bad}] is {type(texts[bad]).__name__}, not a string.')
      if not texts:
        raise InputError('the batch is empty: send at least one text.')
      return self.text(texts)
    return (self.as_array(inputs),)

  def as_array(self, inputs: Any) -> np.ndarray:
    """`inputs` as the signature's dtype and shape `[N, *example_shape]`, or InputError."""
    try:
      array = np.asarray(inputs)
    except ValueError as e:  # ragged nested lists
      raise InputError(f'inputs are ragged: each example must have shape '
                       f'{list(self.example_shape)} ({e}).') from None
    if array.dtype.kind not in 'biuf' or array.dtype.kind == 'b':
      raise InputError(f'inputs must be numbers ({self.input_spec["datatype"]}), got '
                       f'{_kind_name(array)}.')
    if array.ndim == 0 or array.shape[0] == 0:
      raise InputError(f'the batch is empty: send inputs of shape [N, '
                       f'{", ".join(map(str, self.example_shape))}] with N >= 1.')
    if tuple(array.shape[1:]) != self.example_shape:
      raise InputError(f'inputs have shape {list(array.shape)}; this model takes '
                       f'[N, {", ".join(map(str, self.example_shape))}].')
    if self.dtype.kind in 'iu':
      info = np.iinfo(self.dtype)
      if array.dtype.kind == 'f' and not np.all(np.mod(array, 1) == 0):
        raise InputError(f'inputs must be integers ({self.dtype.name}), got fractional values.')
      if array.size and (array.min() < info.min or array.max() > info.max):
        raise InputError(f'inputs must be {self.dtype.name} in [{info.min}, {info.max}], got '
                         f'values in [{array.min()}, {array.max()}].')
    cast = array.astype(self.dtype, copy=False)
    if self.dtype.kind == 'f' and not np.all(np.isfinite(cast)):
      raise InputError(f'inputs contain NaN, infinity or values beyond the range of '
                       f'{self.dtype.name}.')
    return cast

  # -- running --

  def run(self, *arrays: np.ndarray) -> np.ndarray:
    """Logits float32 `[N, K]` for prepared arrays, in calls of the compiled batch sizes."""
    rows, start = [], 0
    for count, size in _chunks(len(arrays[0]), self.batch_buckets):
      chunk = [a[start:start + count] for a in arrays]
      if size > count:
        chunk = [np.concatenate([c, np.zeros((size - count, *c.shape[1:]), c.dtype)])
                 for c in chunk]
      rows.append(np.asarray(self._call(self.variables, *chunk))[:count])
      start += count
    return np.concatenate(rows) if len(rows) != 1 else rows[0]

  def warm_up(self) -> None:
    """Compiles every bucket now, so no request waits for a compilation."""
    for size in self.batch_buckets:
      self._call(self.variables, *self._zeros(size))[0].block_until_ready()

  def _zeros(self, n: int) -> list[np.ndarray]:
    if self.is_text:
      length = self.text.max_len
      return [np.zeros((n, length), np.int32), np.zeros((n, length), bool)]
    return [np.zeros((n, *self.example_shape), self.dtype)]

  def outputs(self, inputs: Any) -> np.ndarray:
    """The model's logits `[N, K]` for raw inputs (texts or an array)."""
    return self.run(*self.prepare(inputs))

  def probabilities(self, logits_NxK: np.ndarray) -> np.ndarray:
    z = logits_NxK - logits_NxK.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

  def predict(self, inputs: Any) -> dict[str, Any]:
    """`{'labels': int[N], 'names': [str] * N, 'probabilities': float[N, K]}`."""
    probabilities = self.probabilities(self.outputs(inputs))
    labels = probabilities.argmax(axis=-1)
    return {'labels': labels, 'names': self.label_names(labels), 'probabilities': probabilities}

  def label_names(self, labels: np.ndarray) -> list[str]:
    return [self.class_names[i] if self.class_names else str(int(i)) for i in labels]


def _kind_name(array: np.ndarray) -> str:
  return {'U': 'strings', 'S': 'bytes', 'O': 'mixed or nested values', 'b': 'booleans'}.get(
      array.dtype.kind, str(array.dtype))


def load(directory: str, **kwargs) -> ExportedModel:
  """The exported model in `directory`, its manifest checked first."""
  return ExportedModel(directory, **kwargs)
