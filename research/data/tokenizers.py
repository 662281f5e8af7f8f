"""Tokenizers with one API: `encode(texts, max_len) -> (ids_NxL int32, mask_NxL bool)`.

All share the special ids `0 = [PAD]`, `1 = [CLS]`, `2 = [MASK]`, `3 = unknown`, so a
model or a masking objective never depends on which tokenizer fed it.

- `ByteTokenizer`: UTF-8 bytes, byte b -> id b + 4 (vocab 260). No files, no training;
  encoding a batch is a handful of numpy operations (truncation is a fixed-width cast).
- `SentencePieceTokenizer`: trained on a dataset split (`train`) and saved as a `.model`
  file; `train_or_load` reuses the file, so a resumed run tokenizes exactly as before.
  Training runs on one thread: SentencePiece's result depends on the thread count.
- `WordPieceTokenizer`: BERT's WordPiece (Hugging Face `tokenizers`: lower-cased, accents
  stripped, split on whitespace and punctuation), trained on a split and saved as a
  `tokenizer.json` file; [SEP] is a fifth special id, 4.
- `PretrainedTokenizer`: a published checkpoint's `tokenizer.json` (BERT-family), with
  that file's ids and its [CLS] ... [SEP] framing, not the shared special ids.

`texts` may be a numpy array of bytes (`S`), str (`U`) or objects, or a list of Python
bytes/str; str is encoded as UTF-8 and bytes are decoded as UTF-8 (errors replaced) where
a tokenizer needs the other.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Protocol

import numpy as np

from research import paths

PAD_ID, CLS_ID, MASK_ID, UNK_ID = 0, 1, 2, 3
NUM_SPECIAL_IDS = 4


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, texts, max_len: int, *, add_cls: bool = False
             ) -> tuple[np.ndarray, np.ndarray]: ...

  def decode(self, ids_NxL: np.ndarray) -> list[str]: ...


def _text_budget(max_len: int, add_cls: bool) -> int:
  if max_len < 1 + add_cls:
    raise ValueError(f'max_len must be at least {1 + add_cls} (add_cls={add_cls}), got {max_len}.')
  return max_len - int(add_cls)


def _with_cls(ids_NxT: np.ndarray, mask_NxT: np.ndarray, add_cls: bool):
  if not add_cls:
    return ids_NxT, mask_NxT
  n = len(ids_NxT)
  ids = np.concatenate([np.full((n, 1), CLS_ID, np.int32), ids_NxT], axis=1)
  mask = np.concatenate([np.ones((n, 1), bool), mask_NxT], axis=1)
  return ids, mask


def _as_array(texts) -> np.ndarray:
  if isinstance(texts, (list, tuple)):  # may mix str and bytes: keep the objects
    arr = np.empty(len(texts), dtype=object)
    arr[:] = texts
    return arr
  arr = np.asarray(texts)
  if arr.ndim != 1:
    raise ValueError(f'texts must be a 1-D array or a list, got shape {arr.shape}.')
  return arr


def as_bytes_array(texts) -> np.ndarray:
  """A 1-D numpy `S` array: str items encoded as UTF-8, bytes items unchanged."""
  arr = _as_array(texts)
  if arr.dtype.kind == 'S':
    return arr
  if arr.dtype.kind == 'U':
    return np.strings.encode(arr, 'utf-8')
  if arr.dtype.kind == 'O':  # Python objects: one conversion each (no numpy kernel exists)
    return np.array([t.encode('utf-8') if isinstance(t, str) else bytes(t) for t in arr],
                    dtype='S')
  raise ValueError(f'texts must be bytes or str, got a numpy array of dtype {arr.dtype}.')


def as_str_list(texts) -> list[str]:
  arr = _as_array(texts)
  if arr.dtype.kind == 'S':
    return np.strings.decode(arr, 'utf-8', 'replace').tolist()
  if arr.dtype.kind == 'U':
    return arr.tolist()
  if arr.dtype.kind == 'O':
    return [t.decode('utf-8', 'replace') if isinstance(t, bytes) else str(t) for t in arr]
  raise ValueError(f'texts must be bytes or str, got a numpy array of dtype {arr.dtype}.')


class ByteTokenizer:
  """UTF-8 bytes as tokens: id = byte + 4; ids 0..3 are the shared special ids."""

  vocab_size = 256 + NUM_SPECIAL_IDS

  def encode(self, texts, max_len: int, *, add_cls: bool = False):
    """`(ids int32[N, max_len], mask bool[N, max_len])`; long texts are cut at max_len bytes."""
    budget = _text_budget(max_len, add_cls)
    fixed = as_bytes_array(texts).astype(f'S{budget}')  # truncates: one vectorised cast
    n = len(fixed)
    bytes_NxT = np.ascontiguousarray(fixed).view(np.uint8).reshape(n, budget)
    # Fixed-width `S` arrays pad with NUL; the true length keeps embedded NUL bytes.
    lengths_N = np.strings.str_len(fixed)
    mask_NxT = np.arange(budget) < lengths_N[:, None]
    ids_NxT = np.where(mask_NxT, bytes_NxT.astype(np.int32) + NUM_SPECIAL_IDS, PAD_ID)
    return _with_cls(ids_NxT.astype(np.int32), mask_NxT, add_cls)

  def decode_bytes(self, ids_NxL: np.ndarray) -> list[bytes]:
    """Bytes of each row, special ids dropped."""
    return [(row[row >= NUM_SPECIAL_IDS] - NUM_SPECIAL_IDS).astype(np.uint8).tobytes()
            for row in np.asarray(ids_NxL)]

  def decode(self, ids_NxL: np.ndarray) -> list[str]:
    return [b.decode('utf-8', 'replace') for b in self.decode_bytes(ids_NxL)]


def _spm():
  try:
    import sentencepiece
  except ImportError as e:  # an optional dependency: only text experiments need it
    raise ImportError('The sentencepiece tokenizer needs '
                      '`pip install "sentencepiece>=0.2,<0.3"`.') from e
  return sentencepiece


class _TrainedTokenizer:
  """What the trained subword tokenizers share: train once, then reuse the saved file."""

  @classmethod
  def train_or_load(cls, texts, path: str, vocab_size: int, **train_kwargs):
    """Loads `path` if it exists, else trains on `texts` and saves there."""
    if paths.exists(path):
      return cls.load(path)
    tokenizer = cls.train(texts, vocab_size, **train_kwargs)
    tokenizer.save(path)
    return tokenizer


class SentencePieceTokenizer(_TrainedTokenizer):
  """A SentencePiece model whose ids 0..3 are [PAD], [CLS], [MASK], unknown."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = _spm().SentencePieceProcessor(model_proto=model_proto)
    expected = {PAD_ID: '<pad>', CLS_ID: '[CLS]', MASK_ID: '[MASK]', UNK_ID: '<unk>'}
    got = {i: self._sp.id_to_piece(i) for i in expected}
    if got != expected:
      raise ValueError(f'SentencePiece model has special pieces {got}, expected {expected}: '
                       f'train it with SentencePieceTokenizer.train.')
    self.vocab_size = self._sp.get_piece_size()

  def __reduce__(self):  # picklable (grain worker processes): rebuilt from the model bytes
    return (SentencePieceTokenizer, (self.model_proto,))

  @classmethod
  def train(cls, texts, vocab_size: int, *, model_type: str = 'unigram', seed: int = 0,
            character_coverage: float = 1.0,
            max_sentences: int = 1_000_000) -> 'SentencePieceTokenizer':
    """Trains on `texts` (one sentence per item; at most `max_sentences`, sampled).

    `vocab_size` is an upper bound (`hard_vocab_limit=False`): a small corpus gives a
    smaller vocabulary instead of an error. Read the result's `vocab_size`.
    """
    spm = _spm()
    sentences = [t for t in as_str_list(texts) if t]
    if not sentences:
      raise ValueError('Cannot train a SentencePiece model on an empty corpus.')
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=writer, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
        control_symbols=['[CLS]', '[MASK]'],  # take the free ids 1 and 2, in this order
        hard_vocab_limit=False, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, max_sentence_length=1 << 16,
        num_threads=1,  # the trained model depends on the thread count
        minloglevel=2)
    return cls(writer.getvalue())

  @classmethod
  def load(cls, path: str) -> 'SentencePieceTokenizer':
    return cls(paths.read_bytes(path))

  def save(self, path: str) -> None:
    """Writes atomically (a reader never sees half a file)."""
    paths.makedirs(os.path.dirname(paths.absolute(path)))
    paths.write_bytes_atomic(path, self.model_proto)

  def encode(self, texts, max_len: int, *, add_cls: bool = False):
    """`(ids int32[N, max_len], mask bool[N, max_len])`; long texts are cut at max_len pieces."""
    budget = _text_budget(max_len, add_cls)
    pieces = self._sp.encode(as_str_list(texts), out_type=int)
    lengths_N = np.fromiter((min(len(p), budget) for p in pieces), np.int64, len(pieces))
    mask_NxT = np.arange(budget) < lengths_N[:, None]
    ids_NxT = np.zeros((len(pieces), budget), np.int32)
    flat = [i for p in pieces for i in p[:budget]]
    ids_NxT[mask_NxT] = np.asarray(flat, np.int32)  # row-major, as the mask is read
    return _with_cls(ids_NxT, mask_NxT, add_cls)

  def decode(self, ids_NxL: np.ndarray) -> list[str]:
    rows = [[int(i) for i in row if i >= NUM_SPECIAL_IDS or i == UNK_ID]
            for row in np.asarray(ids_NxL)]
    return self._sp.decode(rows)


def _hf_tokenizers():
  try:
    import tokenizers  # the Hugging Face library (absolute import: not this module)
  except ImportError as e:
    raise ImportError('The WordPiece tokenizer needs '
                      '`pip install "tokenizers>=0.21,<0.24"`.') from e
  return tokenizers


SEP_ID = 4
WORDPIECE_SPECIAL_TOKENS = ('[PAD]', '[CLS]', '[MASK]', '[UNK]', '[SEP]')  # ids 0..4


class WordPieceTokenizer(_TrainedTokenizer):
  """BERT's WordPiece (Hugging Face `tokenizers`) with ids 0..4 [PAD] [CLS] [MASK] [UNK] [SEP].

  Texts are normalised like BERT's uncased models (lower case, accents stripped, control
  characters removed, CJK characters split), split on whitespace and punctuation, and each
  word is matched greedily against the vocabulary (`##` marks a word's continuation). A
  word with a character the vocabulary lacks becomes one [UNK]. Special tokens written
  in a text (a literal "[MASK]") are encoded as text, never as special ids.
  """

  pad_id, cls_id, mask_id, unk_id, sep_id = PAD_ID, CLS_ID, MASK_ID, UNK_ID, SEP_ID
  special_ids = (PAD_ID, CLS_ID, MASK_ID, UNK_ID, SEP_ID)

  def __init__(self, tokenizer_json: str):
    self._tok = self._from_json(tokenizer_json)
    expected = dict(zip(self.special_ids, WORDPIECE_SPECIAL_TOKENS))
    got = {i: self._tok.id_to_token(i) for i in expected}
    if got != expected:
      raise ValueError(f'WordPiece tokenizer has special tokens {got}, expected {expected}: '
                       f'train it with WordPieceTokenizer.train.')
    self.json = self._tok.to_str()  # canonical (compact) form: what save() writes
    self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
    # BERT's pre-tokenizer makes '[' a word of its own, so no text yields [PAD] (id 0) and
    # the mask is `ids != 0`: cheaper than reading each encoding's attention mask.
    pre_tokenizer = json.loads(self.json).get('pre_tokenizer') or {}
    self._pad_only_pads = pre_tokenizer.get('type') == 'BertPreTokenizer'
    self._by_length: dict[int, object] = {}  # text budget -> a truncating, padding copy

  @staticmethod
  def _from_json(tokenizer_json: str):
    tok = _hf_tokenizers().Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True  # not serialised: "[MASK]" in a text is text
    return tok

  def __reduce__(self):  # picklable (grain worker processes): rebuilt from the JSON
    return (WordPieceTokenizer, (self.json,))

  @classmethod
  def train(cls, texts, vocab_size: int, *, min_frequency: int = 0) -> 'WordPieceTokenizer':
    """Trains on `texts` (all of them; the result does not depend on their order).

    `vocab_size` is an upper bound (a small corpus gives a smaller vocabulary) unless the
    corpus has more distinct characters: every character seen, and its `##` form, is
    kept. Read the result's `vocab_size`.

    Deterministic. The library's trainer alone is not, even on one thread
    (huggingface/tokenizers#1794): it numbers the `##c` continuation characters in hash
    map order, and the numbers break ties between equally frequent merges. So a first
    pass that stops before any merge (`vocab_size=1`) finds these characters, and the
    real pass receives them, sorted, right after the special tokens, which numbers them
    first; they are then turned back into ordinary vocabulary entries.
    """
    hf = _hf_tokenizers()
    sentences = [t for t in as_str_list(texts) if t]
    if not sentences:
      raise ValueError('Cannot train a WordPiece tokenizer on an empty corpus.')
    specials = list(WORDPIECE_SPECIAL_TOKENS)

    def fit(size: int, reserved: list[str]):
      tok = hf.Tokenizer(hf.models.WordPiece(unk_token='[UNK]'))
      tok.normalizer = hf.normalizers.BertNormalizer(lowercase=True)
      tok.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
      tok.decoder = hf.decoders.WordPiece()
      trainer = hf.trainers.WordPieceTrainer(
          vocab_size=size, min_frequency=min_frequency, special_tokens=specials + reserved,
          continuing_subword_prefix='##', show_progress=False)
      tok.train_from_iterator(sentences, trainer, length=len(sentences))
      return tok

    probe = fit(1, [])  # the alphabet and its continuations, no merges
    continuations = sorted(t for t in probe.get_vocab() if t.startswith('##') and len(t) > 2)
    config = json.loads(fit(vocab_size, continuations).to_str())
    config['added_tokens'] = [t for t in config['added_tokens'] if t['content'] in specials]
    return cls(json.dumps(config, ensure_ascii=False))

  @classmethod
  def load(cls, path: str) -> 'WordPieceTokenizer':
    return cls(paths.read_bytes(path).decode('utf-8'))

  def save(self, path: str) -> None:
    """Writes a `tokenizer.json` (`tokenizers.Tokenizer.from_file` reads it) atomically."""
    paths.makedirs(os.path.dirname(paths.absolute(path)))
    paths.write_text_atomic(path, self.json)

  def _fixed_length(self, budget: int):
    """A copy that truncates and pads to `budget` tokens in Rust (one per length, so
    concurrent calls with different lengths never share truncation settings)."""
    tok = self._by_length.get(budget)
    if tok is None:
      tok = self._from_json(self.json)
      tok.enable_truncation(max_length=budget)
      tok.enable_padding(length=budget, pad_id=PAD_ID, pad_token='[PAD]')
      self._by_length[budget] = tok
    return tok

  def encode(self, texts, max_len: int, *, add_cls: bool = False):
    """`(ids int32[N, max_len], mask bool[N, max_len])`; long texts are cut at max_len tokens."""
    budget = _text_budget(max_len, add_cls)
    # Batched in Rust (threads); no offsets. add_special_tokens=False: [CLS] is ours.
    encodings = self._fixed_length(budget).encode_batch_fast(
        as_str_list(texts), add_special_tokens=False)
    n = len(encodings)
    ids_NxT = np.array([e.ids for e in encodings], np.int32).reshape(n, budget)
    if self._pad_only_pads:
      mask_NxT = ids_NxT != PAD_ID
    else:
      mask_NxT = np.array([e.attention_mask for e in encodings], bool).reshape(n, budget)
    return _with_cls(ids_NxT, mask_NxT, add_cls)

  def encode_windows(self, texts, max_len: int, offsets_N: np.ndarray, *,
                     add_cls: bool = False):
    """Like `encode`, but each row keeps a window of the whole text's tokens, not its start.

    `offsets_N` in [0, 1) places each window: with `slack` tokens beyond the budget, the
    window starts at token `floor(offset * (slack + 1))`, so 0 is `encode`'s window and the
    draws cover every start equally. A text within the budget is encoded as `encode` does.
    """
    budget = _text_budget(max_len, add_cls)
    texts = as_str_list(texts)
    n = len(texts)
    if np.shape(offsets_N) != (n,):
      raise ValueError(f'offsets_N has shape {np.shape(offsets_N)}, expected ({n},).')
    # self._tok neither truncates nor pads: each encoding is the whole text.
    encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
    lengths_N = np.fromiter((len(e.ids) for e in encodings), np.int64, n)
    width = max(budget, int(lengths_N.max(initial=0)))  # every window lies inside
    ids_NxW = np.zeros((n, width), np.int32)
    ids_NxW[np.arange(width) < lengths_N[:, None]] = [i for e in encodings for i in e.ids]
    slack_N = np.maximum(lengths_N - budget, 0)
    starts_N = np.minimum((np.asarray(offsets_N) * (slack_N + 1)).astype(np.int64), slack_N)
    positions_NxT = starts_N[:, None] + np.arange(budget)
    mask_NxT = positions_NxT < lengths_N[:, None]
    ids_NxT = np.take_along_axis(ids_NxW, positions_NxT, axis=1)  # PAD past a text's end
    return _with_cls(ids_NxT, mask_NxT, add_cls)

  def decode(self, ids_NxL: np.ndarray) -> list[str]:
    """Text of each row ([PAD], [CLS], [MASK], [SEP] dropped; [UNK] kept)."""
    drop = [i for i in self.special_ids if i != UNK_ID]
    rows = [row[~np.isin(row, drop)].tolist() for row in np.asarray(ids_NxL)]
    return self._tok.decode_batch(rows, skip_special_tokens=False)


class PretrainedTokenizer:
  """A published model's `tokenizer.json` (e.g. BERT's WordPiece), its ids unchanged.

  Unlike the tokenizers above it keeps the file's own ids ([PAD] 0, [UNK] 100, [CLS] 101,
  [SEP] 102, [MASK] 103 in BERT's vocabulary) and its own framing: the file's
  post-processor adds [CLS] ... [SEP], as the checkpoint saw in pretraining (so `add_cls`
  is ignored). Token type ids are all 0 for one text, the model's default.
  """

  def __init__(self, tokenizer_json: str):
    self._tok = _hf_tokenizers().Tokenizer.from_str(tokenizer_json)
    self.json = tokenizer_json
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1
    ids = {name: self._tok.token_to_id(name) for name in WORDPIECE_SPECIAL_TOKENS}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
      raise ValueError(f'tokenizer.json lacks the special tokens {missing}; a BERT-family '
                       f'tokenizer has {list(WORDPIECE_SPECIAL_TOKENS)}.')
    self.pad_id, self.cls_id, self.mask_id, self.unk_id, self.sep_id = ids.values()
    self.special_ids = tuple(sorted(ids.values()))
    self._by_length: dict[int, object] = {}

  def __reduce__(self):  # picklable (grain worker processes): rebuilt from the JSON
    return (PretrainedTokenizer, (self.json,))

  @classmethod
  def load(cls, path: str) -> 'PretrainedTokenizer':
    """`path`: a tokenizer.json, or a directory holding one."""
    if os.path.isdir(path):
      path = os.path.join(path, 'tokenizer.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'No tokenizer.json at {path}.')
    with open(path, encoding='utf-8') as f:
      return cls(f.read())

  def save(self, path: str) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(self.json)
    os.replace(tmp, path)

  def _fixed_length(self, max_len: int):
    tok = self._by_length.get(max_len)
    if tok is None:
      tok = _hf_tokenizers().Tokenizer.from_str(self.json)
      tok.enable_truncation(max_length=max_len)
      tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token='[PAD]')
      self._by_length[max_len] = tok
    return tok

  def encode(self, texts, max_len: int, *, add_cls: bool = False):
    """`(ids int32[N, max_len], mask bool[N, max_len])`, [CLS] and [SEP] included."""
    del add_cls  # the file's post-processor frames every text
    if max_len < 2:
      raise ValueError(f'max_len must be at least 2 ([CLS] and [SEP]), got {max_len}.')
    encodings = self._fixed_length(max_len).encode_batch_fast(as_str_list(texts))
    n = len(encodings)
    ids_NxL = np.array([e.ids for e in encodings], np.int32).reshape(n, max_len)
    mask_NxL = np.array([e.attention_mask for e in encodings], bool).reshape(n, max_len)
    return ids_NxL, mask_NxL

  def decode(self, ids_NxL: np.ndarray) -> list[str]:
    return self._tok.decode_batch(np.asarray(ids_NxL).tolist(), skip_special_tokens=True)


def corpus_fingerprint(texts) -> str:
  """A short hash of a corpus, to name the model file trained on it."""
  h = hashlib.sha256()
  data = as_bytes_array(texts)
  h.update(str(len(data)).encode())
  h.update(np.strings.str_len(data).tobytes())
  h.update(data.tobytes())
  return h.hexdigest()[:12]
