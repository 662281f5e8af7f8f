"""Objectives and evaluators: built-ins checked against references, and new ones plugged in
from this file alone (no file under research/ edited)."""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from research import config as config_lib
from research import models, objectives, training
from research.errors import ConfigError
from research.evaluation import evaluators
from research.training import experiment, optim, steps
from tests.helpers import read_jsonl, tiny_config

# ---- A new dataset, objective and evaluator, defined here only ---------------------------

NUM_FEATURES = 8
TRUE_WEIGHTS = np.linspace(-1.0, 1.0, NUM_FEATURES).astype(np.float32)


class SyntheticRegression(tfds.core.GeneratorBasedBuilder):
  """y = x . w + 0.1 noise, x ~ N(0, I_8): 2,000 train / 500 test (a float target)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(NUM_FEATURES,), dtype=np.float32),
            'y': tfds.features.Scalar(dtype=np.float32)}),
        supervised_keys=('x', 'y'), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(2000, seed=0),
            'test': self._generate_examples(500, seed=1)}

  def _generate_examples(self, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
    y = x @ TRUE_WEIGHTS + 0.1 * rng.normal(size=n).astype(np.float32)
    for i in range(n):
      yield i, {'x': x[i], 'y': np.float32(y[i])}


class MeanSquaredError(objectives.Objective):
  """Regression: one output, squared error against the float label."""
  headline_metric = 'mse'

  def num_outputs(self, info):
    return 1

  def _squared_errors(self, outputs_Bx1, batch):
    weight_B = batch['mask'].astype(jnp.float32)
    return (outputs_Bx1[:, 0] - batch['labels']) ** 2 * weight_B, weight_B

  def loss(self, outputs_Bx1, batch):
    err_B, weight_B = self._squared_errors(outputs_Bx1, batch)
    return err_B.sum(), weight_B.sum(), {'mse': err_B.sum()}

  def eval_statistics(self, outputs_Bx1, batch):
    err_B, weight_B = self._squared_errors(outputs_Bx1, batch)
    return {'squared_error_sum': err_B.sum(), 'count': weight_B.sum()}

  def summarize(self, totals):
    totals = jax.device_get(totals)
    mse = float(totals['squared_error_sum'] / totals['count'])
    return {'loss': mse, 'mse': mse, 'num_examples': int(totals['count'])}


class RSquared(evaluators.Evaluator):
  """1 - SSE / SST of the model's predictions over the split, from `predict_fn`."""

  def __init__(self, exp, split, *, clip_predictions: float = 1e9):
    super().__init__(exp, split)
    self.clip = clip_predictions

  def evaluate(self, state):
    predictions, targets = [], []
    for _, batch in self.batches():
      outputs = self.exp.predict_fn(state, batch)
      keep = np.asarray(batch['mask'])
      predictions.append(np.clip(np.asarray(outputs)[keep, 0], -self.clip, self.clip))
      targets.append(np.asarray(batch['labels'])[keep])
    y_hat, y = np.concatenate(predictions), np.concatenate(targets)
    return {'r_squared': float(1 - ((y - y_hat) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
            'num_examples': len(y)}


@pytest.fixture
def plugged_in():
  objectives.register('mse_regression', MeanSquaredError)
  evaluators.register('r_squared', RSquared)
  yield
  objectives.OBJECTIVES.pop('mse_regression')
  evaluators.EVALUATORS.pop('r_squared')


def _regression_config():
  config = tiny_config('mlp', steps=300, hidden_sizes=(32,))
  config.dataset.name = 'synthetic_regression'
  config.objective = 'mse_regression'
  config.objective_args = objectives.args_config('mse_regression')
  config.optimizer.learning_rate = 3e-3
  config.eval_every_steps = 100
  config.evals.fit = dict(evaluator='r_squared', split='test', every_steps=150,
                          clip_predictions=100.0)
  return config


def test_new_objective_and_evaluator_train_through_train_and_evaluate(plugged_in, tmp_path):
  results = training.train_and_evaluate(_regression_config(), str(tmp_path))
  baseline_mse = float((TRUE_WEIGHTS ** 2).sum()) + 0.01  # predicting 0: Var(y)
  print(f"test mse {results['test']['mse']:.4f} (predicting zero: {baseline_mse:.3f}); "
        f"R^2 {results['fit']['r_squared']:.4f}")
  assert results['test']['mse'] < 0.1 * baseline_mse
  assert results['fit']['r_squared'] > 0.9
  assert results['headline_metric'] == 'mse'
  log = read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  # The evaluator ran on its own cadence (150, 300) and the default one on eval_every_steps.
  assert [r['step'] for r in log if r['split'] == 'fit'] == [150, 300]
  assert [r['step'] for r in log if r['split'] == 'test'] == [100, 200, 300]
  assert 'mse' in [r for r in log if r['split'] == 'train'][-1]
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['fit']['r_squared'] == results['fit']['r_squared']


def test_unknown_objective_evaluator_and_arguments_are_named(plugged_in, tmp_path):
  config = _regression_config()
  config.objective = 'mse_regresion'
  with pytest.raises(ConfigError, match=r"Unknown objective 'mse_regresion'.*mse_regression"):
    config_lib.validate(config)
  config = _regression_config()
  config.evals.fit.evaluator = 'r_square'
  with pytest.raises(ConfigError, match="Unknown evaluator 'r_square'.*Did you mean 'r_squared'"):
    config_lib.validate(config)
  config = _regression_config()
  config.evals.fit.clip = 3.0
  with pytest.raises(ConfigError, match=r"Unknown keys \['clip'\] in config.evals.fit"):
    config_lib.validate(config)
  config = tiny_config()
  config.objective_args.label_smothing = 0.1
  with pytest.raises(ConfigError, match=r"label_smothing.*valid: \['label_smoothing'\]"):
    objectives.build(config)


# ---- Label smoothing ---------------------------------------------------------------------

def test_label_smoothing_loss_equals_optax_smoothed_cross_entropy():
  """The train step's loss with label_smoothing=a is optax's cross-entropy against
  smooth_labels(one_hot, a), and also (1 - a) CE + a * mean over classes of -log p."""
  alpha, num_classes = 0.2, 10
  model = models.build_model(models.model_config('mlp'), num_classes)
  tx = optim.create_optimizer(config_lib.default_config().optimizer, 10)
  rng = np.random.default_rng(0)
  # Large inputs give confident logits, where smoothing changes the loss most.
  batch = {'inputs': 20 * rng.normal(size=(32, 40)).astype(np.float32),
           'labels': rng.integers(0, num_classes, 32).astype(np.int32),
           'mask': np.ones(32, bool)}
  batch['mask'][-4:] = False  # padding rows do not count
  state = nn.unbox(steps.create_train_state(model, tx, batch['inputs'][:1], jax.random.key(0)))
  logits = model.apply({'params': state.params}, batch['inputs'], train=True,
                       rngs={'dropout': jax.random.fold_in(jax.random.key(0), 0)})
  real = batch['mask']
  expected = optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(batch['labels'], num_classes), alpha))[real].mean()
  log_p = np.asarray(jax.nn.log_softmax(logits))[real]
  ce = -log_p[np.arange(len(log_p)), batch['labels'][real]]
  by_hand = ((1 - alpha) * ce + alpha * (-log_p).mean(axis=1)).mean()

  def loss_of(objective):
    _, metrics = jax.jit(lambda s, b: steps.train_step(s, b, objective=objective, seed=0))(
        state, batch)
    return float(metrics['loss'])

  smoothed = loss_of(objectives.lookup('classification')(label_smoothing=alpha))
  plain = loss_of(objectives.lookup('classification')())
  print(f'loss: smoothed {smoothed:.6f}, optax {float(expected):.6f}, by hand {by_hand:.6f}, '
        f'unsmoothed {plain:.6f}')
  np.testing.assert_allclose(smoothed, expected, rtol=1e-6)
  np.testing.assert_allclose(smoothed, by_hand, rtol=1e-5)
  assert abs(smoothed - plain) > 1e-3  # smoothing really changes the loss


def test_label_smoothing_from_the_config_reaches_the_train_step(tmp_path):
  config = tiny_config(steps=5)
  config.objective_args.label_smoothing = 0.3
  exp = experiment.build(config, eval_split_names=[])
  assert exp.objective.label_smoothing == 0.3
  config.dataset.preprocess = 'one_hot(smoothing=0.1)'
  with pytest.raises(ConfigError, match='Label smoothing is set twice'):
    experiment.build(config, eval_split_names=[])


# ---- Masked-LM masking -------------------------------------------------------------------

def test_masked_lm_masking_follows_bert_proportions_and_skips_specials():
  from research.objectives import masked_lm
  key = jax.random.key(0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 260, (1024, 128)), jnp.int32)
  tokens = tokens.at[:, 100:].set(0)  # padding
  maskable = tokens != 0
  inputs, chosen = masked_lm.mask_tokens(key, tokens, maskable, mask_rate=0.15, mask_id=2,
                                         first_regular_id=4, vocab_size=260)
  chosen, inputs, tokens = map(np.asarray, (chosen, inputs, tokens))
  rate = chosen.sum() / np.asarray(maskable).sum()
  as_mask = (inputs[chosen] == 2).mean()
  unchanged = (inputs[chosen] == tokens[chosen]).mean()
  print(f'chosen {rate:.3f} of real tokens; of those [MASK] {as_mask:.3f}, unchanged {unchanged:.3f}')
  random = 1 - as_mask - unchanged
  assert np.asarray(maskable).sum() == 102_400
  assert abs(rate - 0.15) < 0.01 and abs(as_mask - 0.8) < 0.02
  assert abs(unchanged - 0.1) < 0.02 and abs(random - 0.1) < 0.02
  assert not chosen[:, 100:].any()  # padding never chosen
  assert (inputs[~chosen] == tokens[~chosen]).all()  # the rest untouched


def test_masked_lm_head_at_chosen_positions_equals_the_full_head():
  """max_predictions=P: the head runs on P positions per row; with no row over P chosen
  tokens, loss and statistics equal those of the head over every position."""
  from research.objectives import masked_lm
  model = models.build_model(models.model_config(
      'transformer', frontend='text', head='masked_lm', vocab_size=260, max_length=64,
      num_layers=1, hidden_size=32, num_heads=2, dropout_rate=0.0), 0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 260, (8, 64)).astype(np.int32)
  tokens[:, 50:] = 0
  batch = {'inputs': tokens, 'labels': np.zeros(8, np.int32), 'mask': np.ones(8, bool),
           'input_mask': tokens != 0}
  variables = model.init(jax.random.key(0), tokens)
  key = jax.random.key(3)
  full = masked_lm.MaskedLM()
  capped = masked_lm.MaskedLM(max_predictions=24)
  b_full, b_capped = full.prepare(batch, key, True), capped.prepare(batch, key, True)
  np.testing.assert_array_equal(b_full['inputs'], b_capped['inputs'])  # the same corruption
  assert b_capped['mlm_positions'].shape == (8, 24)
  assert int(b_capped['mlm_position_weights'].sum()) == int(b_full['mlm_weights'].sum())
  logits_full = model.apply(variables, b_full['inputs'], mask_BxL=batch['input_mask'])
  logits_pos = model.apply(variables, b_capped['inputs'], mask_BxL=batch['input_mask'],
                           positions_BxP=b_capped['mlm_positions'])
  assert logits_pos.shape == (8, 24, 260)
  loss_full, weight_full, sums_full = full.loss(logits_full, b_full)
  loss_pos, weight_pos, sums_pos = capped.loss(logits_pos, b_capped)
  np.testing.assert_allclose(loss_pos, loss_full, rtol=1e-5)
  assert float(weight_pos) == float(weight_full) and float(sums_pos['masked_accuracy']) == float(
      sums_full['masked_accuracy'])
  summary = capped.summarize(capped.eval_statistics(logits_pos, b_capped))
  assert summary['dropped_predictions'] == 0.0
  tight = masked_lm.MaskedLM(max_predictions=4).prepare(batch, key, True)
  dropped = tight['mlm_weights'].sum() - tight['mlm_position_weights'].sum()
  assert float(dropped) > 0  # rows with more than 4 chosen tokens predict only 4
