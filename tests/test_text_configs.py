"""Text configs run end to end: the IMDB classifier under `tfds.testing.mock_data`, and the
tokenizer's `input_mask` reaching the encoder."""
from __future__ import annotations

import runpy

import jax.numpy as jnp
import numpy as np

from research import training
from research.training import experiment
from research.parallel import sharding


def _imdb_config(repo_root: str, steps: int = 4):
  config = runpy.run_path(f'{repo_root}/configs/imdb/text_classifier.py')['get_config']()
  config.dataset.preprocess = 'tokenize_bytes(max_len=64)'
  config.model.max_length = 64
  config.model.num_layers, config.model.hidden_size, config.model.num_heads = 1, 32, 2
  config.num_train_steps = steps
  config.batch_size = 8
  config.eval_batch_size = 16
  config.log_every_steps = 2
  config.optimizer.warmup_steps = 1
  config.progress_bar = False
  config.write_report = False
  return config


def test_imdb_config_runs_end_to_end_on_mock_data(repo_root, mock_tfds, tmp_path):
  with mock_tfds(num_examples=40):
    results = training.train_and_evaluate(_imdb_config(repo_root), str(tmp_path))
  assert results['steps'] == 4
  assert results['test']['num_examples'] == 40
  assert np.isfinite(results['test']['loss'])


def test_tokenizer_mask_reaches_the_encoder(repo_root, mock_tfds, tmp_path):
  """The model's outputs depend on the batch's `input_mask`, not only on the pad ids:
  hiding real tokens through the mask changes the logits; the tokenizer's own mask gives
  the same logits as the model's pad-id fallback."""
  with mock_tfds(num_examples=16):
    exp = experiment.build(_imdb_config(repo_root), eval_split_names=['test'])
    assert exp.input_fields == {'input_mask': 'mask_BxL', 'mlm_positions': 'positions_BxP'}
    state = exp.initial_state()
    _, batch = next(iter(exp.eval_batches('test')))
    with sharding.activate(exp.mesh):
      with_mask = exp.predict_fn(state, batch)
      fewer = dict(batch, input_mask=batch['input_mask'] & (jnp.arange(64) < 8))
      with_fewer = exp.predict_fn(state, fewer)
      no_mask = exp.predict_fn(state, {k: v for k, v in batch.items() if k != 'input_mask'})
  lengths = np.asarray(batch['input_mask']).sum(axis=1)
  assert (lengths > 8).any()
  np.testing.assert_allclose(with_mask, no_mask, rtol=1e-6, atol=1e-6)
  changed = np.abs(np.asarray(with_mask) - np.asarray(with_fewer)).max(axis=1) > 1e-6
  np.testing.assert_array_equal(changed, lengths > 8)
