"""WordPieceTokenizer (Hugging Face `tokenizers`) and the `tokenize_wordpiece` op."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tokenizers as hf

from research.data import preprocess, tokenizers
from research.data.sources import SplitArrays

WordPiece = tokenizers.WordPieceTokenizer

CORPUS = [f'the {a} {n} jumps over the {b} dog'
          for a in ('quick', 'slow', 'brown', 'red') for b in ('lazy', 'sleepy', 'old')
          for n in ('fox', 'cat', 'hare', 'wolf', 'bird')] + [
              'a [bracketed] word, and a full stop.', 'Mask, pad, cls, sep, unk!']


@pytest.fixture(scope='module')
def tok() -> tokenizers.WordPieceTokenizer:
  return WordPiece.train(CORPUS, vocab_size=80)


def split_of(texts) -> SplitArrays:
  return SplitArrays(np.array([t.encode() for t in texts], dtype=object),
                     np.zeros(len(texts), np.int32))


def batch_of(split: SplitArrays, n: int) -> dict[str, np.ndarray]:
  return {'inputs': split.inputs[:n], 'labels': split.labels[:n], 'mask': np.ones(n, bool)}


def library_ids(tok, text: str) -> list[int]:
  return hf.Tokenizer.from_str(tok.json).encode(text, add_special_tokens=False).ids


def test_special_ids_are_the_shared_ones(tok):
  assert [hf.Tokenizer.from_str(tok.json).id_to_token(i) for i in range(5)] == [
      '[PAD]', '[CLS]', '[MASK]', '[UNK]', '[SEP]']
  assert (tok.pad_id, tok.cls_id, tok.mask_id, tok.unk_id, tok.sep_id) == (
      tokenizers.PAD_ID, tokenizers.CLS_ID, tokenizers.MASK_ID, tokenizers.UNK_ID, 4)
  assert tok.special_ids == (0, 1, 2, 3, 4)
  assert 30 < tok.vocab_size <= 80
  # A special token written in a text is text, never a special id.
  ids, mask = tok.encode(['[MASK] [PAD] [CLS] [SEP] [UNK]'], 32)
  assert not np.isin(ids[mask], tok.special_ids).any()
  # A character never seen in training makes its word [UNK].
  assert tok.encode(['the zebra'], 4)[0].tolist() == [[library_ids(tok, 'the')[0], 3, 0, 0]]


def test_masked_lm_reads_the_special_ids(tok):
  from research.objectives import masked_lm

  class FakePreprocess:
    steps = [(preprocess.OPS['tokenize_wordpiece'], {'tokenizer': tok})]
    tokenizer = tok  # what Preprocess.tokenizer returns for these steps
  objective = masked_lm.MaskedLM(preprocess=FakePreprocess())
  assert objective.vocab_size == tok.vocab_size and objective.mask_id == 2
  assert objective.special_ids == (0, 1, 2, 3, 4) and objective.first_regular_id == 5


def test_encode_truncates_pads_and_masks(tok):
  texts = ['The QUICK fox jumps over the lazy dog', 'dog', '', 'fox ' * 40]
  full = [library_ids(tok, t) for t in texts]
  ids, mask = tok.encode(texts, 6)
  assert ids.shape == mask.shape == (4, 6) and ids.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(mask.sum(1), [min(len(f), 6) for f in full])
  for row, f in zip(ids, full):
    np.testing.assert_array_equal(row[:len(f)], f[:6])
  assert (ids[~mask] == tokenizers.PAD_ID).all() and (ids[mask] > 4).all()
  assert (mask[:, :-1] >= mask[:, 1:]).all()  # real tokens first, then padding

  cls_ids, cls_mask = tok.encode(texts, 6, add_cls=True)
  assert (cls_ids[:, 0] == tokenizers.CLS_ID).all() and cls_mask[:, 0].all()
  np.testing.assert_array_equal(cls_ids[:, 1:], tok.encode(texts, 5)[0])
  assert cls_mask[2].sum() == 1  # the empty text: only [CLS]
  with pytest.raises(ValueError, match='max_len must be at least 2'):
    tok.encode(texts, 1, add_cls=True)

  # Every input form gives the same ids; no texts gives an empty batch.
  for form in (np.array([t.encode() for t in texts]), np.array(texts),
               np.array([texts[0].encode(), *texts[1:]], dtype=object)):
    np.testing.assert_array_equal(tok.encode(form, 6)[0], ids)
  assert tok.encode([], 6)[0].shape == (0, 6)
  # Lengths are independent: a longer budget after a shorter one still sees everything.
  assert tok.encode(texts, 64)[1].sum(1).tolist() == [min(len(f), 64) for f in full]


def test_encode_windows_are_slices_of_the_whole_text(tok):
  texts = ['the quick fox jumps over the lazy dog ' * 5, 'the cat', '', 'slow hare ' * 4]
  full = [library_ids(tok, t) for t in texts]
  # Offset 0 is encode's window; a text within the budget is encoded as encode does.
  for add_cls in (False, True):
    np.testing.assert_array_equal(tok.encode_windows(texts, 8, np.zeros(4), add_cls=add_cls),
                                  tok.encode(texts, 8, add_cls=add_cls))
  for offset in np.linspace(0, 0.999, 40):
    ids, mask = tok.encode_windows(texts, 8, np.full(4, offset))
    for row, row_mask, f in zip(ids, mask, full):
      slack = max(len(f) - 8, 0)
      start = int(offset * (slack + 1))  # the offset spreads evenly over the starts
      assert row[row_mask].tolist() == f[start:start + 8]  # a contiguous slice
      assert (row[~row_mask] == tokenizers.PAD_ID).all()
  ids, mask = tok.encode_windows(texts, 8, np.full(4, 0.9999))
  assert ids[0].tolist() == full[0][-8:]  # the last window is reachable too
  with pytest.raises(ValueError, match=r'offsets_N has shape \(3,\), expected \(4,\)'):
    tok.encode_windows(texts, 8, np.zeros(3))


def test_tokenize_wordpiece_random_windows_in_training_only(tmp_path):
  long_texts = ['the quick fox jumps over the lazy dog ' * 6, 'the old cat ' * 9] * 4
  split = split_of(CORPUS + long_texts)
  spec = 'tokenize_wordpiece(vocab_size=80, max_len=10, cls=True, window=random)'
  pp = preprocess.build_preprocess(spec, split, seed=0, cache_dir=str(tmp_path))
  batch = {'inputs': split.inputs[-8:], 'labels': split.labels[-8:], 'mask': np.ones(8, bool)}
  first = pp.train_fn(batch, 3)
  np.testing.assert_array_equal(pp.train_fn(batch, 3)['inputs'], first['inputs'])  # resumable
  assert (first['inputs'][:, 0] == tokenizers.CLS_ID).all() and first['input_mask'].all()
  assert not np.array_equal(pp.train_fn(batch, 4)['inputs'], first['inputs'])
  starts = tok_starts = pp.tokenizer.encode(batch['inputs'], 10, add_cls=True)[0]
  assert not np.array_equal(first['inputs'], starts)
  np.testing.assert_array_equal(pp.eval_fn(batch, 3)['inputs'], tok_starts)  # the start
  # The tokenizer file does not depend on the window: the same as window=start's.
  assert len(os.listdir(tmp_path)) == 1
  # Not an augmentation: the op still tokenizes in evaluation (distillation compares it).
  assert not preprocess.OPS['tokenize_wordpiece'].random
  assert "window='start'): " in preprocess.describe_ops()
  with pytest.raises(ValueError, match=r"window='middle' is not one of \['start', 'random'\]"):
    preprocess.build_preprocess('tokenize_wordpiece(vocab_size=80, window=middle)', split,
                                seed=0)


def test_decode(tok):
  ids, _ = tok.encode(['The slow cat jumps over the OLD dog.'], 32, add_cls=True)
  assert tok.decode(ids) == ['the slow cat jumps over the old dog.']


def test_save_load_round_trip(tok, tmp_path):
  path = str(tmp_path / 'sub' / 'tokenizer.json')
  tok.save(path)
  loaded = WordPiece.load(path)
  assert loaded.json == tok.json and loaded.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(loaded.encode(CORPUS, 16)[0], tok.encode(CORPUS, 16)[0])
  # A standard tokenizer.json: the library reads it as is.
  ids, mask = tok.encode(CORPUS[:1], 32)
  assert hf.Tokenizer.from_file(path).encode(CORPUS[0]).ids == ids[0][mask[0]].tolist()
  restored = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(restored.encode(CORPUS, 16)[0], tok.encode(CORPUS, 16)[0])


def test_training_is_deterministic(tok):
  # The library's own trainer gives a different vocabulary almost every time on this
  # corpus (huggingface/tokenizers#1794); ours gives one, whatever the corpus order.
  assert {WordPiece.train(CORPUS, 80).json for _ in range(3)} == {tok.json}
  assert WordPiece.train(CORPUS[::-1], 80).json == tok.json


def test_mask_of_a_loaded_tokenizer_whose_text_can_give_pad(tok):
  # Split on whitespace only, not normalised: the word '[PAD]' is the vocabulary's id 0.
  config = json.loads(tok.json)
  config['normalizer'], config['pre_tokenizer'] = None, {'type': 'WhitespaceSplit'}
  loaded = WordPiece(json.dumps(config))
  ids, mask = loaded.encode(['[PAD] dog'], 4)
  assert ids[0].tolist() == [0, *library_ids(tok, 'dog'), 0, 0]
  assert mask[0].tolist() == [True, True, False, False]


def test_training_errors_and_a_small_corpus():
  with pytest.raises(ValueError, match='empty corpus'):
    WordPiece.train(['', b''], 100)
  small = WordPiece.train(['ab ab ab'], 1000)
  assert small.vocab_size == 5 + 4  # the specials, 'a', 'b', '##b' and the merge 'ab'
  with pytest.raises(ValueError, match='special tokens'):
    bad = hf.Tokenizer(hf.models.WordPiece({'[UNK]': 0, 'a': 1}, unk_token='[UNK]'))
    WordPiece(bad.to_str())


def test_tokenize_wordpiece_op_trains_once_and_reuses_the_file(tmp_path, monkeypatch):
  split = split_of(CORPUS)
  spec = 'tokenize_wordpiece(vocab_size=80, max_len=10, cls=True)'
  assert preprocess.needs_train_split(spec)
  pp = preprocess.build_preprocess(spec, split, seed=0, cache_dir=str(tmp_path))
  files = os.listdir(tmp_path)
  assert len(files) == 1
  fingerprint = tokenizers.corpus_fingerprint(split.inputs)
  assert files[0] == f'wordpiece_v80_{fingerprint}.json'
  out = pp.train_fn(batch_of(split, 5), 0)
  assert out['inputs'].shape == (5, 10) and out['inputs'].dtype == np.int32
  assert out['input_mask'].dtype == bool and (out['inputs'][:, 0] == tokenizers.CLS_ID).all()
  assert pp.vocab_size <= 80 and out['inputs'].max() < pp.vocab_size
  assert pp.summary() == {'0_tokenize_wordpiece/vocab_size': pp.vocab_size,
                          '0_tokenize_wordpiece/max_len': 10, '0_tokenize_wordpiece/cls': True,
                          '0_tokenize_wordpiece/window': 'start'}

  # A second build (a resumed run, an evaluation) loads the file instead of training.
  def no_training(*args, **kwargs):
    raise AssertionError('trained again instead of loading the cached file')
  monkeypatch.setattr(tokenizers.WordPieceTokenizer, 'train', no_training)
  again = preprocess.build_preprocess(spec, split, seed=0, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again.eval_fn(batch_of(split, 5), 0)['inputs'], out['inputs'])
  # Or names the file explicitly: then it needs no training split at all.
  given = f"tokenize_wordpiece(model='{tmp_path / files[0]}', max_len=10, cls=True)"
  assert not preprocess.needs_train_split(given)
  explicit = preprocess.build_preprocess(given, None, seed=0)
  np.testing.assert_array_equal(explicit.eval_fn(batch_of(split, 5), 0)['inputs'],
                                out['inputs'])
  # Picklable, for pipelines that run preprocessing in worker processes.
  restored = pickle.loads(pickle.dumps(pp.train_fn))
  np.testing.assert_array_equal(restored(batch_of(split, 5), 0)['inputs'], out['inputs'])


def test_tokenize_wordpiece_without_a_cache_dir():
  split = split_of(CORPUS)
  pp = preprocess.build_preprocess('tokenize_wordpiece(vocab_size=80, max_len=8)', split, seed=0)
  assert pp.eval_fn(batch_of(split, 3), 0)['input_mask'].shape == (3, 8)
  assert 'tokenize_wordpiece(vocab_size=8000, max_len=128, cls=False' in preprocess.describe_ops()


def test_transformers_is_not_needed(tmp_path):
  """Training, encoding, saving and loading with `import transformers` made to fail."""
  code = textwrap.dedent(f"""
      import sys
      sys.modules['transformers'] = None  # any import of it raises ImportError
      from research.data import tokenizers
      tok = tokenizers.WordPieceTokenizer.train(['a quick fox', 'a lazy dog'], 100)
      tok.save({str(tmp_path / 't.json')!r})
      loaded = tokenizers.WordPieceTokenizer.load({str(tmp_path / 't.json')!r})
      assert (loaded.encode(['a fox'], 4)[0] == tok.encode(['a fox'], 4)[0]).all()
      print('ok')
  """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr
