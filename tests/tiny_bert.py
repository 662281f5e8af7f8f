"""A random tiny Hugging Face BERT directory (config.json, model.safetensors,
tokenizer.json) and a small text dataset in its vocabulary, built offline for tests.

The model is transformers' own `BertModel` / `BertForSequenceClassification` from a
`BertConfig` (2 layers, hidden 64, 4 heads, vocab 1,000); the tokenizer a BERT-style
WordPiece (`tokenizers`) over made-up words `w0` ... `w994`, with [CLS] ... [SEP] framing.
"""
from __future__ import annotations

import json
import os

import numpy as np

SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']  # ids 0..4, as BERT orders them
VOCAB = 1000
WORDS = [f'w{i}' for i in range(VOCAB - len(SPECIALS))]


def write_tokenizer(path: str) -> None:
  import tokenizers as hf
  vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
  tok = hf.Tokenizer(hf.models.WordPiece(vocab, unk_token='[UNK]'))
  tok.normalizer = hf.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = hf.processors.TemplateProcessing(
      single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1',
      special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  tok.decoder = hf.decoders.WordPiece()
  tok.save(path)


def write_dir(path: str, *, num_labels: int = 0, seed: int = 0, max_positions: int = 40
              ) -> str:
  """A tiny BERT saved with `save_pretrained`: `BertModel` (num_labels=0) or
  `BertForSequenceClassification`; LayerNorms and biases perturbed so mix-ups show."""
  import torch
  import transformers
  torch.manual_seed(seed)
  config = transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_position_embeddings=max_positions, type_vocab_size=2,
      num_labels=max(num_labels, 2), hidden_act='gelu', layer_norm_eps=1e-12,
      pad_token_id=0)
  cls = transformers.BertForSequenceClassification if num_labels else transformers.BertModel
  model = cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'LayerNorm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  write_tokenizer(os.path.join(path, 'tokenizer.json'))
  return path


def write_dataset(path: str, n_train: int = 256, n_test: int = 64, seed: int = 0) -> str:
  """`npz:` text classification: 2 classes, told apart by which half of the vocabulary
  most words come from."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, 2, n)
    texts = []
    for label in labels:
      half = np.arange(len(WORDS) // 2) + label * (len(WORDS) // 2)
      words = np.where(rng.random(10) < 0.7, rng.choice(half, 10), rng.integers(0, len(WORDS), 10))
      texts.append(' '.join(WORDS[w] for w in words[:rng.integers(3, 11)]))
    return np.array(texts), labels.astype(np.int64)

  train, test = split(n_train), split(n_test)
  np.savez(path, train_inputs=train[0], train_labels=train[1], test_inputs=test[0],
           test_labels=test[1])
  return path


def hf_config(path: str) -> dict:
  with open(os.path.join(path, 'config.json')) as f:
    return json.load(f)
