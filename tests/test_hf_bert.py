"""Hugging Face BERT checkpoints in our encoder: the same numbers as transformers, both ways.

A random tiny `BertForSequenceClassification` (2 layers, hidden 64, 4 heads, vocab 1,000)
is built offline from a `BertConfig` and saved with `save_pretrained`; our encoder, loaded
from that directory, must give transformers' hidden states and logits within 1e-5
(float32) on padded inputs, and writing it back must give a directory transformers loads
with the same logits.
"""
import json
import os

import jax
import numpy as np
import pytest

from research import models
from research.errors import ConfigError
from research.models import hf_bert
from research.training import optim

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

NUM_LABELS = 3


def _tiny_hf(path: str, seed: int = 0):
  torch.manual_seed(seed)
  config = transformers.BertConfig(
      vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_position_embeddings=40, type_vocab_size=2,
      num_labels=NUM_LABELS, hidden_act='gelu', layer_norm_eps=1e-12)
  model = transformers.BertForSequenceClassification(config).eval()
  with torch.no_grad():  # non-trivial LayerNorm and bias values, so a mix-up shows
    for name, p in model.named_parameters():
      if 'LayerNorm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


def _inputs(seed: int = 1):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 1000, size=(3, 12)).astype(np.int32)
  mask = np.ones((3, 12), bool)
  mask[1, 7:] = False  # padding
  mask[2, 4:] = False
  ids[~mask] = 0
  types = np.zeros_like(ids)
  types[0, 6:] = 1  # a second segment
  return ids, mask, types


def _ours(hf_dir: str, **overrides):
  fields = hf_bert.encoder_fields(hf_bert.read_config(hf_dir),
                                  hf_bert.read_tensors(hf_dir))
  cfg = models.model_config('transformer', head='classify', pooling='first', dropout_rate=0.1,
                            attention_impl='reference', **{**fields, **overrides})
  model = models.build_model(cfg, NUM_LABELS)
  flat, unused, bad = hf_bert.to_ours(hf_bert.read_tensors(hf_dir), fields)
  assert not unused and not bad
  if cfg.scan_layers:
    flat = hf_bert.stack_blocks(flat)
  return cfg, model, hf_bert.nest(flat)


def _hidden(model, params, ids, mask, types):
  """Our final hidden states: the output of the last block (post-LN: nothing after it)."""
  last = f'block_{model.num_layers - 1}'
  logits, state = model.apply(
      {'params': params}, ids, mask_BxL=mask, token_types_BxL=types,
      capture_intermediates=lambda m, method: method == '__call__' and m.name == last)
  return logits, state['intermediates'][last]['__call__'][0]


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tiny_bert'))
  _tiny_hf(path)
  return path


@pytest.fixture(scope='module')
def reference(hf_dir):
  model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
  ids, mask, types = _inputs()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                token_type_ids=torch.tensor(types, dtype=torch.long),
                output_hidden_states=True)
  return out.logits.numpy(), out.hidden_states[-1].numpy()


def test_encoder_fields_from_the_hf_config(hf_dir):
  fields = hf_bert.encoder_fields(hf_bert.read_config(hf_dir), hf_bert.read_tensors(hf_dir))
  assert fields == {
      'frontend': 'text', 'num_layers': 2, 'num_heads': 4, 'hidden_size': 64,
      'mlp_ratio': 2.0, 'vocab_size': 1000, 'max_length': 40,
      'position_embedding': 'learned', 'norm_position': 'post', 'type_vocab_size': 2,
      'gelu_exact': True, 'layer_norm_epsilon': 1e-12, 'pad_id': 0, 'pooler': True}


@pytest.mark.parametrize('scan_layers', [False, True])
def test_hidden_states_and_logits_equal_transformers(hf_dir, reference, scan_layers):
  _, model, params = _ours(hf_dir, scan_layers=scan_layers)
  ids, mask, types = _inputs()
  if scan_layers:  # the stacked layout has no per-block module: compare logits only
    logits = model.apply({'params': params}, ids, mask_BxL=mask, token_types_BxL=types)
  else:
    logits, hidden = _hidden(model, params, ids, mask, types)
    np.testing.assert_allclose(np.asarray(hidden), reference[1], atol=1e-5, rtol=0)
    # Token types matter: all-zero types change the first example (a mix-up would show).
    _, other = _hidden(model, params, ids, mask, np.zeros_like(types))
    assert np.abs(np.asarray(other)[0] - reference[1][0]).max() > 1e-2
  np.testing.assert_allclose(np.asarray(logits), reference[0], atol=1e-5, rtol=0)


def test_hf_ours_hf_round_trip_gives_the_same_logits(hf_dir, reference, tmp_path):
  cfg, model, params = _ours(hf_dir)
  flat = {optim.path_of(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  out = hf_bert.write_dir(str(tmp_path / 'out'), flat, cfg, NUM_LABELS,
                          tokenizer_json=None)
  back = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  ids, mask, types = _inputs()
  with torch.no_grad():
    logits = back(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long),
                  token_type_ids=torch.tensor(types, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(logits, reference[0], atol=1e-5, rtol=0)
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['architectures'] == ['BertForSequenceClassification']


def test_default_encoder_is_not_exportable():
  cfg = models.model_config('transformer', frontend='text')
  with pytest.raises(ConfigError, match="not a BERT.*'norm_position': 'pre'"):
    hf_bert.check_exportable(cfg)


def test_bad_hf_config_names_the_value():
  with pytest.raises(ConfigError, match=r"hidden_act='relu'.*accepted"):
    hf_bert.encoder_fields({'model_type': 'bert', 'hidden_act': 'relu'}, [])


def test_pretrained_tokenizer_equals_transformers(tmp_path):
  from research.data import preprocess, tokenizers
  from tests import tiny_bert
  path = str(tmp_path / 'tokenizer.json')
  tiny_bert.write_tokenizer(path)
  texts = ['w1 w2 w3', 'W7, w8! w9 w10 w11 w12 w13 w14 w15 w16 w17', 'unknownword w5']
  ours = tokenizers.PretrainedTokenizer.load(str(tmp_path))
  ids, mask = ours.encode(texts, 8)
  theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=path, pad_token='[PAD]')(
      texts, padding='max_length', truncation=True, max_length=8, return_tensors='np')
  np.testing.assert_array_equal(ids, theirs['input_ids'])
  np.testing.assert_array_equal(mask, theirs['attention_mask'].astype(bool))
  assert ids[0, 0] == ours.cls_id == 2 and ids[0, 4] == ours.sep_id == 3  # [CLS] .. [SEP]
  assert ids[1, -1] == ours.sep_id  # truncated, still framed
  # The op finds tokenizer.json in config.init_from.hf_dir when model= is not given.
  pp = preprocess.build_preprocess('tokenize_pretrained(max_len=8)', seed=0,
                                   pretrained_dir=str(tmp_path))
  batch = pp.eval_fn({'inputs': np.array(texts), 'labels': np.zeros(3, np.int64),
                      'mask': np.ones(3, bool)}, 0)
  np.testing.assert_array_equal(batch['inputs'], ids)
  with pytest.raises(ValueError, match='tokenize_pretrained needs model=PATH'):
    preprocess.build_preprocess('tokenize_pretrained(max_len=8)', seed=0)


def test_mismatched_checkpoint_lists_every_bad_tensor(tmp_path):
  """Missing, mis-shaped, unconvertible and unknown tensors, all in one error."""
  from safetensors.numpy import load_file, save_file
  from research import training
  from tests import tiny_bert
  from tests.helpers import tiny_config
  hf_dir = tiny_bert.write_dir(str(tmp_path / 'bert'))
  weights = os.path.join(hf_dir, 'model.safetensors')
  tensors = load_file(weights)
  del tensors['encoder.layer.0.output.dense.bias']
  tensors['encoder.layer.1.intermediate.dense.bias'] = np.zeros(7, np.float32)
  tensors['encoder.layer.1.attention.self.key.weight'] = np.zeros((5, 64), np.float32)
  tensors['encoder.layer.0.extra.weight'] = np.zeros(3, np.float32)
  save_file(tensors, weights)
  config = tiny_config('transformer', steps=1, pooling='first')
  config.dataset.name = f"npz:{tiny_bert.write_dataset(str(tmp_path / 'data.npz'), 64, 16)}"
  config.dataset.preprocess = 'tokenize_pretrained(max_len=8)'
  config.init_from.hf_dir = hf_dir
  with pytest.raises(ValueError) as e:
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  text = str(e.value)
  assert 'missing in the source (4):' in text  # the bias, the unconvertible key, head/*
  assert "'block_0/mlp_out/bias'" in text and "'head/kernel'" in text
  assert 'block_1/mlp_in/bias: ours (128,) vs source (7,)' in text
  assert 'not converted: encoder.layer.1.attention.self.key.weight (5, 64)' in text
  assert 'no place for: encoder.layer.0.extra.weight' in text
