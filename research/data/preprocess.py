"""Preprocessing ops chosen by a config string, applied to whole numpy batches.

    config.dataset.preprocess = 'random_crop(pad=2)|flip|standardize'

A spec is ops separated by `|`, each `name` or `name(key=value, ...)` (keyword arguments,
Python literals; a bare word is a string: `standardize(per=channel)`). `OPS` lists them;
`describe_ops()` prints each with its arguments.

A batch is a dict of arrays: `inputs` (`[B, L]` sequences or channel-last `[B, ..., C]`
images, or `[B]` bytes/str texts), `labels` int `[B]`, `mask` bool `[B]`. Every op works
on the whole batch at once; none loops over examples in Python.

- Statistics (`scale`, `standardize`) are computed once from the training split, on the
  inputs as the ops before them leave them (evaluation behaviour), in chunks.
- Random ops (`random_crop`, `random_shift`, `flip`, `tokenize_wordpiece(window=random)`)
  draw from `default_rng([seed, stream, op_position, batch_index])`: a batch is augmented the same
  way every time it is produced, including after resuming from a checkpoint. Draws are
  made for the whole global batch and each process keeps its rows, so the augmentation
  does not depend on the number of processes. In evaluation they do nothing
  (`random_crop(size=...)` centre-crops).
- After the last op, inputs are made model-ready: floats -> float32, token ids stay
  int32, and uint8 images stay uint8: the models scale them to [0, 1] floats on the
  device (`research.models.layers.pixels_to_unit`), which moves a quarter of the bytes
  to the device and spares the host a float conversion that costs more than a small
  model's train step. Text that was never tokenized is an error.

`build_preprocess` fits once and returns both functions (`train_fn`, `eval_fn`), each
`(batch, batch_index) -> batch`; `make_preprocess` returns one of them.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from research.data import tokenizers

Batch = dict[str, np.ndarray]
PreprocessFn = Callable[[Batch, int], Batch]

_PREPROCESS_STREAM = 0x5050  # separates these draws from shuffling, seeded the same
_FIT_CHUNK = 4096            # examples per chunk when computing training statistics
_SPM_SEED = 0                # one tokenizer per corpus and vocab size, whatever the run's seed
PAD_MODES = ('constant', 'reflect', 'edge', 'wrap')


# ---- Random draws for one op on one batch ----

class Random:
  """Draws for the global batch; returns this process's rows."""

  def __init__(self, rng: np.random.Generator, n_local: int, process_index: int,
               process_count: int):
    self._rng = rng
    self._n_global = n_local * process_count
    self._rows = slice(process_index * n_local, (process_index + 1) * n_local)

  def integers(self, low, high, *tail: int) -> np.ndarray:
    """Uniform integers in [low, high] (inclusive), shape `[B, *tail]`."""
    return self._rng.integers(low, high, (self._n_global,) + tail, endpoint=True)[self._rows]

  def uniform(self, *tail: int) -> np.ndarray:
    return self._rng.random((self._n_global,) + tail)[self._rows]


# ---- Shape helpers ----

def _spatial_axes(x: np.ndarray, op: str) -> tuple[int, ...]:
  """`[B, L]` -> (1,); channel-last `[B, *S, C]` -> axes of S."""
  if x.dtype.kind in 'SUO':
    raise ValueError(f'{op} needs numeric inputs, got {x.dtype}: it is an image/sequence op.')
  if x.ndim == 2:
    return (1,)
  if x.ndim >= 3:
    return tuple(range(1, x.ndim - 1))
  raise ValueError(f'{op} needs inputs [B, L] or channel-last [B, ..., C], got shape {x.shape}.')


def _pad(x: np.ndarray, axes: tuple[int, ...], pad: int, mode: str) -> np.ndarray:
  if mode not in PAD_MODES:
    raise ValueError(f'Unknown pad mode {mode!r}; available: {list(PAD_MODES)}.')
  widths = [(pad, pad) if a in axes else (0, 0) for a in range(x.ndim)]
  return np.pad(x, widths, mode=mode) if pad else x


def _crop(x: np.ndarray, axes: tuple[int, ...], starts_BxS: np.ndarray,
          size: tuple[int, ...]) -> np.ndarray:
  """Per-example crops `x[b, s0:s0 + n0, s1:s1 + n1, ...]` in one gather.

  A sliding-window view has one window per start position; indexing it with the starts
  copies exactly the crops (20x faster than indexing pixel by pixel).
  """
  windows = sliding_window_view(x, size, axis=axes)  # [B, *starts, *rest, *size]
  crops = windows[(np.arange(len(x)),) + tuple(starts_BxS.T)]  # [B, *rest, *size]
  # The window axes come last; move them back where the spatial axes were.
  k = len(axes)
  crops = np.moveaxis(crops, tuple(range(crops.ndim - k, crops.ndim)), axes)
  return np.ascontiguousarray(crops)


# ---- The ops: `apply(batch, rand, **params)`; rand is None in evaluation ----

def to_float(batch: Batch, rand) -> Batch:
  """Cast inputs to float32, values unchanged."""
  return {**batch, 'inputs': batch['inputs'].astype(np.float32)}


def _fit_scale(ctx: '_FitContext') -> dict[str, Any]:
  dtype = ctx.numeric_dtype('scale')
  if dtype == np.uint8:
    return {'low': 0.0, 'high': 255.0}
  low, high = np.inf, -np.inf
  for chunk in ctx.train_inputs():
    low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
  return {'low': low, 'high': high if high > low else low + 1.0}


def scale(batch: Batch, rand, *, low: float, high: float) -> Batch:
  """Map [low, high] to [0, 1]: uint8 uses [0, 255]; others the training split's min/max."""
  x = (batch['inputs'].astype(np.float32) - np.float32(low)) / np.float32(high - low)
  return {**batch, 'inputs': x}


STANDARDIZE_PER = ('global', 'channel', 'feature')


def _fit_standardize(ctx: '_FitContext', per: str = 'global', eps: float = 1e-6
                     ) -> dict[str, Any]:
  if per not in STANDARDIZE_PER:
    raise ValueError(f'standardize(per={per!r}): available: {list(STANDARDIZE_PER)}.')
  ctx.numeric_dtype('standardize')
  total = total_sq = None
  count = 0
  for chunk in ctx.train_inputs():
    x = chunk.astype(np.float64)
    axes = {'global': tuple(range(x.ndim)), 'channel': tuple(range(x.ndim - 1)),
            'feature': (0,)}[per]
    s, sq = x.sum(axis=axes), np.square(x).sum(axis=axes)
    total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    count += x.size // np.size(s)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  std = np.where(std > eps, std, 1.0)  # constant features are centred, not blown up
  return {'mean': mean.astype(np.float32), 'std': std.astype(np.float32)}


def standardize(batch: Batch, rand, *, mean: np.ndarray, std: np.ndarray) -> Batch:
  """(x - mean) / std from the training split; per=global|channel (last axis)|feature."""
  x = batch['inputs'].astype(np.float32)
  # Statistics spread over one example's shape: broadcasting a length-3 channel axis in
  # numpy's inner loop is 5x slower than one contiguous pass.
  x -= np.broadcast_to(mean, x.shape[1:]).copy()
  x /= np.broadcast_to(std, x.shape[1:]).copy()
  return {**batch, 'inputs': x}


def _fit_one_hot(ctx: '_FitContext', smoothing: float = 0.0) -> dict[str, Any]:
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f'one_hot(smoothing={smoothing}) must be in [0, 1).')
  return {'num_classes': ctx.num_classes(), 'smoothing': smoothing}


def one_hot(batch: Batch, rand, *, num_classes: int, smoothing: float) -> Batch:
  """Adds `targets` float32 [B, K] (labels stay integers for accuracy and confusion)."""
  targets = np.eye(num_classes, dtype=np.float32)[batch['labels']]
  if smoothing:
    targets = targets * np.float32(1.0 - smoothing) + np.float32(smoothing / num_classes)
  return {**batch, 'targets': targets}


def _fit_crop(ctx: '_FitContext', pad: int = 4, size: int | Sequence[int] | None = None,
              mode: str = 'constant') -> dict[str, Any]:
  if pad < 0:
    raise ValueError(f'random_crop(pad={pad}) must be >= 0.')
  _pad(np.zeros((1, 1)), (1,), 0, mode)  # validates mode
  return {'pad': int(pad), 'size': size, 'mode': mode}


def random_crop(batch: Batch, rand, *, pad: int, size, mode: str) -> Batch:
  """Pad each spatial side by `pad`, crop `size` (default: the input size) at random."""
  x = batch['inputs']
  axes = _spatial_axes(x, 'random_crop')
  in_size = tuple(x.shape[a] for a in axes)
  out = in_size if size is None else (
      (size,) * len(axes) if isinstance(size, int) else tuple(size))
  if len(out) != len(axes) or any(o > i + 2 * pad for o, i in zip(out, in_size)):
    raise ValueError(f'random_crop(size={size}, pad={pad}) does not fit inputs of spatial '
                     f'size {in_size}.')
  if rand is None and out == in_size:
    return batch  # evaluation, same size: identity
  padded = _pad(x, axes, pad, mode)
  room = np.asarray([i + 2 * pad - o for o, i in zip(out, in_size)])
  if rand is None:
    starts = np.broadcast_to(room // 2, (len(x), len(axes)))  # centre crop
  else:
    starts = rand.integers(0, room, len(axes))
  return {**batch, 'inputs': _crop(padded, axes, starts, out)}


def _fit_shift(ctx: '_FitContext', max: int = 2, mode: str = 'constant') -> dict[str, Any]:
  if max < 0:
    raise ValueError(f'random_shift(max={max}) must be >= 0.')
  _pad(np.zeros((1, 1)), (1,), 0, mode)
  return {'max': int(max), 'mode': mode}


def random_shift(batch: Batch, rand, *, max: int, mode: str) -> Batch:
  """Translate by a uniform integer in [-max, max] per spatial axis; `mode` fills the edge."""
  x = batch['inputs']
  axes = _spatial_axes(x, 'random_shift')
  if rand is None or max == 0:
    return batch
  shifts = rand.integers(-max, max, len(axes))
  size = tuple(x.shape[a] for a in axes)
  return {**batch, 'inputs': _crop(_pad(x, axes, max, mode), axes, max - shifts, size)}


def flip(batch: Batch, rand, *, p: float = 0.5) -> Batch:
  """Mirror the last spatial axis (width; a sequence's time) with probability p."""
  x = batch['inputs']
  axis = _spatial_axes(x, 'flip')[-1]
  if rand is None:
    return batch
  flip_B = rand.uniform() < p
  out = x.copy()
  out[flip_B] = np.flip(x[flip_B], axis)
  return {**batch, 'inputs': out}


def _fit_tokenize_bytes(ctx: '_FitContext', max_len: int = 128, cls: bool = False
                        ) -> dict[str, Any]:
  return {'tokenizer': tokenizers.ByteTokenizer(), 'max_len': max_len, 'cls': cls}


def _fit_trained_tokenizer(ctx: '_FitContext', tokenizer_cls, file_name: str,
                           vocab_size: int, model: str, **train_kwargs):
  """A subword tokenizer: loaded from `model`, or trained on the training split's texts
  and cached in the workdir as `file_name` (with the corpus fingerprint), so a resumed run
  or an evaluation tokenizes exactly as the run did."""
  if model:
    return tokenizer_cls.load(model)
  texts = np.concatenate(list(ctx.train_inputs()))
  if not ctx.cache_dir:
    return tokenizer_cls.train(texts, vocab_size, **train_kwargs)
  name = file_name.format(vocab_size=vocab_size,
                          fingerprint=tokenizers.corpus_fingerprint(texts))
  return tokenizer_cls.train_or_load(texts, os.path.join(ctx.cache_dir, name), vocab_size,
                                     **train_kwargs)


def _fit_tokenize_spm(ctx: '_FitContext', vocab_size: int = 8000, max_len: int = 128,
                      cls: bool = False, model: str = '') -> dict[str, Any]:
  tok = _fit_trained_tokenizer(ctx, tokenizers.SentencePieceTokenizer,
                               'sentencepiece_v{vocab_size}_{fingerprint}.model', vocab_size,
                               model, seed=_SPM_SEED)
  return {'tokenizer': tok, 'max_len': max_len, 'cls': cls}


WINDOWS = ('start', 'random')  # tokenize_wordpiece: which max_len tokens of a text train


def _fit_tokenize_wordpiece(ctx: '_FitContext', vocab_size: int = 8000, max_len: int = 128,
                            cls: bool = False, model: str = '', window: str = 'start'
                            ) -> dict[str, Any]:
  if window not in WINDOWS:
    raise ValueError(f'tokenize_wordpiece: window={window!r} is not one of {list(WINDOWS)} '
                     f"('start': the text's first max_len tokens; 'random': a random "
                     f"window of them in training, the start in evaluation).")
  tok = _fit_trained_tokenizer(ctx, tokenizers.WordPieceTokenizer,
                               'wordpiece_v{vocab_size}_{fingerprint}.json', vocab_size, model)
  return {'tokenizer': tok, 'max_len': max_len, 'cls': cls, 'window': window}


def _fit_tokenize_pretrained(ctx: '_FitContext', max_len: int = 128, model: str = ''
                             ) -> dict[str, Any]:
  """A published checkpoint's tokenizer.json: `model` (the file or its directory), or
  the directory of `config.init_from.hf_dir` when `model` is ''."""
  path = model or ctx.pretrained_dir
  if not path:
    raise ValueError("tokenize_pretrained needs model=PATH (a tokenizer.json or its "
                     "directory) or config.init_from.hf_dir.")
  return {'tokenizer': tokenizers.PretrainedTokenizer.load(path), 'max_len': max_len,
          'cls': False}


def tokenize(batch: Batch, rand, *, tokenizer, max_len: int, cls: bool,
             window: str = 'start') -> Batch:
  """Texts -> `inputs` int32 [B, max_len] and `input_mask` bool [B, max_len] (True: token).

  `window='random'`, in training: each text's tokens from a uniformly drawn start, so
  over the epochs a model reads whole long texts, not only their first max_len tokens
  (as BERT's pretraining reads whole documents). Evaluation reads the start."""
  if window == 'random' and rand is not None:
    ids, mask = tokenizer.encode_windows(batch['inputs'], max_len, rand.uniform(), add_cls=cls)
  else:
    ids, mask = tokenizer.encode(batch['inputs'], max_len, add_cls=cls)
  return {**batch, 'inputs': ids, 'input_mask': mask}


def _never(kwargs: dict[str, Any]) -> bool:
  return False


def _always(kwargs: dict[str, Any]) -> bool:
  return True


def _unless_model_given(kwargs: dict[str, Any]) -> bool:
  return not kwargs.get('model')


def _windowed(params: dict[str, Any]) -> bool:
  return params.get('window') == 'random'


@dataclasses.dataclass(frozen=True)
class Op:
  apply: Callable[..., Batch]
  fit: Callable[..., dict[str, Any]] | None = None  # user kwargs -> apply's params
  random: bool = False  # an augmentation: acts in training only
  tokenizes: bool = False
  # Whether fitting reads the training split, given the op's arguments.
  needs_train_split: Callable[[dict[str, Any]], bool] = _never
  # Whether an op that is not an augmentation draws in training, given its fitted params.
  draws: Callable[[dict[str, Any]], bool] = _never

  def arguments(self) -> dict[str, Any]:
    fn = self.fit or self.apply
    params = list(inspect.signature(fn).parameters.values())[1 if self.fit else 2:]
    return {p.name: p.default for p in params}


OPS: dict[str, Op] = {
    'to_float': Op(to_float),
    'scale': Op(scale, _fit_scale, needs_train_split=_always),
    'standardize': Op(standardize, _fit_standardize, needs_train_split=_always),
    'one_hot': Op(one_hot, _fit_one_hot),
    'random_crop': Op(random_crop, _fit_crop, random=True),
    'random_shift': Op(random_shift, _fit_shift, random=True),
    'flip': Op(flip, random=True),
    'tokenize_bytes': Op(tokenize, _fit_tokenize_bytes, tokenizes=True),
    'tokenize_spm': Op(tokenize, _fit_tokenize_spm, tokenizes=True,
                       needs_train_split=_unless_model_given),
    'tokenize_wordpiece': Op(tokenize, _fit_tokenize_wordpiece, tokenizes=True, draws=_windowed,
                             needs_train_split=_unless_model_given),
    'tokenize_pretrained': Op(tokenize, _fit_tokenize_pretrained, tokenizes=True),
}


# Other names people reach for. torchvision's `Normalize(mean, std)` is standardization.
ALIASES = {'normalize': 'standardize'}


def describe_ops() -> str:
  lines = []
  for name, op in OPS.items():
    args = ', '.join(f'{k}={v!r}' for k, v in op.arguments().items())
    doc = (inspect.getdoc(op.apply) or '').splitlines()[0]
    lines.append(f'{name}({args}){"  [train only]" if op.random else ""}: {doc}')
  lines += [f'{alias}: same as {name}' for alias, name in ALIASES.items()]
  return '\n'.join(lines)


# ---- The spec parser ----

def _literal(node: ast.expr, op_text: str) -> Any:
  if isinstance(node, ast.Name):
    return node.id  # a bare word is a string: per=channel
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f'Preprocessing op {op_text!r}: arguments must be literals.') from None


_BARE_WORD = re.compile(r'=\s*([A-Za-z_]\w*)\s*(?=[,)])')


def _quote_bare_word(match: re.Match) -> str:
  word = match.group(1)
  return f'={word}' if word in ('True', 'False', 'None') else f'={word!r}'


def _check_type(op: str, key: str, value: Any, default: Any) -> None:
  if default is None or default is inspect.Parameter.empty:
    return
  kind = type(default)
  ok = (isinstance(value, bool) if kind is bool else
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
        isinstance(value, kind) and not isinstance(value, bool) if kind is int else
        isinstance(value, kind))
  if not ok:
    raise ValueError(f'Preprocessing op {op}({key}={value!r}): expected {kind.__name__}, '
                     f'like the default {key}={default!r}.')


def parse_spec(spec: str | Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
  """'a|b(k=1)' -> [('a', {}), ('b', {'k': 1})], checking names and argument names."""
  texts = spec.split('|') if isinstance(spec, str) else list(spec)
  parsed = []
  for text in (t.strip() for t in texts):
    if not text:
      continue
    try:  # bare words become strings first, so that keywords work too: per=global
      node = ast.parse(_BARE_WORD.sub(_quote_bare_word, text), mode='eval').body
    except SyntaxError:
      raise ValueError(f'Cannot parse preprocessing op {text!r}; write name or '
                       f'name(key=value, ...).') from None
    call = node if isinstance(node, ast.Call) else None
    name_node = call.func if call else node
    if not isinstance(name_node, ast.Name):
      raise ValueError(f'Cannot parse preprocessing op {text!r}; write name or '
                       f'name(key=value, ...).')
    name = ALIASES.get(name_node.id, name_node.id)
    if name not in OPS:
      valid = sorted([*OPS, *ALIASES])
      close = difflib.get_close_matches(name, valid, n=1)
      hint = f' Did you mean {close[0]!r}?' if close else ''
      raise ValueError(f'Unknown preprocessing op {name!r} in {spec!r}; available: '
                       f'{valid}.{hint}')
    if call and call.args:
      raise ValueError(f'Preprocessing op {text!r}: use keyword arguments, e.g. '
                       f'{name}({", ".join(f"{k}=..." for k in OPS[name].arguments())}).')
    kwargs = {kw.arg: _literal(kw.value, text) for kw in (call.keywords if call else [])}
    accepted = OPS[name].arguments()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
      raise ValueError(f'Preprocessing op {name!r} has no argument(s) {unknown}; '
                       f'accepted: {sorted(accepted)}.')
    for key, value in kwargs.items():
      _check_type(name, key, value, accepted[key])
    parsed.append((name, kwargs))
  return parsed


def needs_train_split(spec: str | Sequence[str]) -> bool:
  """Whether `build_preprocess(spec, ...)` reads the training split (to fit statistics or a
  tokenizer): evaluation-only runs must then load it too."""
  return any(OPS[name].needs_train_split(kwargs) for name, kwargs in parse_spec(spec))


# ---- Fitting and the two batch functions ----

class _FitContext:
  """What `fit` functions may read: the training inputs after the ops fitted so far."""

  def __init__(self, train_split, num_classes: int | None, seed: int, cache_dir: str | None,
               pretrained_dir: str = ''):
    self._split = train_split
    self._num_classes = num_classes
    self.seed = seed
    self.cache_dir = cache_dir
    self.pretrained_dir = pretrained_dir  # config.init_from.hf_dir (tokenize_pretrained)
    self.steps: list[tuple[Op, dict[str, Any]]] = []

  def _require_split(self):
    if self._split is None:
      raise ValueError('This preprocessing spec computes statistics from the training '
                       'split: pass train_split to build_preprocess.')
    return self._split

  def train_inputs(self) -> Iterator[np.ndarray]:
    split = self._require_split()
    n = len(split.inputs)
    if n == 0:
      raise ValueError('The training split is empty: no statistics to compute.')
    for start in range(0, n, _FIT_CHUNK):
      sl = slice(start, start + _FIT_CHUNK)
      batch = {'inputs': split.inputs[sl], 'labels': split.labels[sl]}
      yield _run(self.steps, batch, None)['inputs']

  def numeric_dtype(self, op: str) -> np.dtype:
    """The dtype of the inputs reaching `op`; text is an error."""
    split = self._require_split()
    probe = {'inputs': split.inputs[:1], 'labels': split.labels[:1]}
    dtype = _run(self.steps, probe, None)['inputs'].dtype
    if dtype.kind in 'SUO':
      raise ValueError(f'{op} needs numeric inputs, got {dtype}: tokenize text first.')
    return dtype

  def num_classes(self) -> int:
    if self._num_classes is not None:
      return self._num_classes
    return int(self._require_split().labels.max()) + 1


def _run(steps, batch: Batch, random_for) -> Batch:
  for position, (op, params) in enumerate(steps):
    draws = op.random or op.draws(params)
    rand = random_for(position) if (draws and random_for is not None) else None
    batch = op.apply(batch, rand, **params)
  return batch


def _finalize(batch: Batch, tokenized: bool) -> Batch:
  x = batch['inputs']
  if x.dtype.kind in 'SUO':
    raise ValueError(f'Inputs are text ({x.dtype}): add a tokenizer op to '
                     f'config.dataset.preprocess, e.g. tokenize_bytes(max_len=256), '
                     f'tokenize_spm(vocab_size=8000, max_len=256) or '
                     f'tokenize_wordpiece(vocab_size=8000, max_len=256).')
  # uint8 stays uint8: the models scale it to [0, 1] (`layers.pixels_to_unit`).
  if x.dtype != np.uint8 and (x.dtype.kind == 'f' or not tokenized):
    x = x.astype(np.float32, copy=False)
  return {**batch, 'inputs': x}


class _Apply:
  """`(batch, batch_index) -> batch`, in training or evaluation mode."""

  def __init__(self, pp: 'Preprocess', train: bool):
    self._pp, self._train = pp, train

  def __call__(self, batch: Batch, batch_index: int = 0) -> Batch:
    pp = self._pp
    random_for = None
    if self._train:
      n_local = len(batch['inputs'])

      def random_for(position: int) -> Random:
        rng = np.random.default_rng([pp.seed, _PREPROCESS_STREAM, position, batch_index])
        return Random(rng, n_local, pp.process_index, pp.process_count)
    return _finalize(_run(pp.steps, dict(batch), random_for), pp.tokenizes)


@dataclasses.dataclass
class Preprocess:
  """Fitted ops; `train_fn` and `eval_fn` are what the pipeline maps over batches."""
  spec: list[tuple[str, dict[str, Any]]]
  steps: list[tuple[Op, dict[str, Any]]]
  seed: int
  process_index: int = 0
  process_count: int = 1

  @property
  def tokenizes(self) -> bool:
    return any(op.tokenizes for op, _ in self.steps)

  @property
  def tokenizer(self):
    """The tokenizer the ops fitted, or None."""
    for op, params in self.steps:
      if op.tokenizes:
        return params['tokenizer']
    return None

  @property
  def vocab_size(self) -> int | None:
    """The tokenizer's vocabulary size (for the model's embedding), or None."""
    tokenizer = self.tokenizer
    return tokenizer.vocab_size if tokenizer is not None else None

  @property
  def train_fn(self) -> PreprocessFn:
    return _Apply(self, train=True)

  @property
  def eval_fn(self) -> PreprocessFn:
    return _Apply(self, train=False)

  def summary(self) -> dict[str, Any]:
    """Fitted statistics worth logging."""
    out: dict[str, Any] = {}
    for position, ((name, _), (_, params)) in enumerate(zip(self.spec, self.steps)):
      for k, v in params.items():
        if k == 'tokenizer':
          out[f'{position}_{name}/vocab_size'] = v.vocab_size
        elif isinstance(v, (int, float, str, np.ndarray, np.generic)) and np.size(v) <= 16:
          out[f'{position}_{name}/{k}'] = np.asarray(v).tolist()
    return out


def build_preprocess(spec: str | Sequence[str], train_split=None, *, seed: int,
                     num_classes: int | None = None, process_index: int = 0,
                     process_count: int = 1, cache_dir: str | None = None,
                     pretrained_dir: str = '') -> Preprocess:
  """Parses `spec` and fits its statistics on `train_split` (anything with `.inputs`,
  `.labels`; only needed by ops that fit). A trained tokenizer is saved in `cache_dir`;
  `pretrained_dir` is where `tokenize_pretrained` finds its tokenizer.json by default."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count}).')
  parsed = parse_spec(spec)
  ctx = _FitContext(train_split, num_classes, seed, cache_dir, pretrained_dir)
  for name, kwargs in parsed:
    op = OPS[name]
    params = op.fit(ctx, **kwargs) if op.fit else kwargs
    ctx.steps.append((op, params))
  return Preprocess(parsed, ctx.steps, seed, process_index, process_count)


def make_preprocess(spec: str | Sequence[str], train_split=None, *, seed: int,
                    train: bool = True, **kwargs) -> PreprocessFn:
  """One function, training (augmenting) or evaluation; see `build_preprocess`."""
  pp = build_preprocess(spec, train_split, seed=seed, **kwargs)
  return pp.train_fn if train else pp.eval_fn
