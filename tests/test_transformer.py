"""Transformer encoder: shapes, param count, masking, symmetry, remat/scan, precision, FLOPs."""
from __future__ import annotations

import functools
import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import models
from research.parallel import sharding
from research import models
from research.models.transformer import TransformerEncoder

NUM_CLASSES = 10
VOCAB = 50
TINY = dict(num_layers=2, num_heads=2, hidden_size=16, mlp_ratio=2.0, dropout_rate=0.0,
            vocab_size=VOCAB, max_length=24, patch_size=4)
# (frontend, one example's shape, dtype)
INPUTS = {
    'features': ((40,), jnp.float32),
    'image': ((12, 8, 3), jnp.float32),
    'text': ((16,), jnp.int32),
}


def _model(**overrides) -> TransformerEncoder:
  return models.build_model(models.model_config('transformer', **{**TINY, **overrides}),
                            NUM_CLASSES)


def _inputs(frontend: str, batch: int = 3, seed: int = 0) -> jax.Array:
  shape, dtype = INPUTS[frontend]
  rng = np.random.default_rng(seed)
  if frontend == 'text':
    return jnp.asarray(rng.integers(1, VOCAB, (batch,) + shape), dtype)
  return jnp.asarray(rng.uniform(size=(batch,) + shape), dtype)


def _param_shapes(model: TransformerEncoder, x: jax.Array):
  return jax.eval_shape(lambda x: nn.unbox(model.init(jax.random.key(0), x))['params'], x)


def _init(model: TransformerEncoder, x: jax.Array, seed: int = 0):
  """Random params of the right shapes, drawn with numpy.

  `model.init` compiles every initializer (seconds on a small CPU); these tests only need
  some params, not the initial distribution. LayerNorm scales stay near 1.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    values = rng.normal(size=leaf.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.asarray(1.0 + 0.1 * values)
    if name.endswith("['kernel']"):  # about LeCun's 1/sqrt(fan_in) for fan_in 16..32
      return jnp.asarray(values * 0.2)
    return jnp.asarray(values * 0.1)
  return jax.tree_util.tree_map_with_path(draw, _param_shapes(model, x))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply_jit(model, params, x, train, kwargs):
  return model.apply({'params': params}, x, train=train, **kwargs)


def _apply(model, params, x, train: bool = False, **kwargs):
  # Jitted (the module is hashable, so static): compiling the whole forward pass once is
  # faster than eager mode, which compiles each primitive for each new shape.
  return _apply_jit(model, params, x, train, kwargs)


def _num_params(tree) -> int:
  return sum(p.size for p in jax.tree.leaves(tree))


def _expected_num_params(frontend: str, head: str, pooling: str, position: str) -> int:
  """Counted by hand from the architecture (TINY sizes)."""
  d, f, layers, k, v = 16, 32, 2, NUM_CLASSES, VOCAB
  if frontend == 'features':
    tokens, front = 40, 1 * d + d                 # Dense(1 -> D)
  elif frontend == 'image':
    tokens, front = (12 // 4) * (8 // 4), 4 * 4 * 3 * d + d  # Dense(p*p*C -> D)
  else:
    tokens, front = 16, v * d                     # embedding table, no bias
  rows = 24 if frontend == 'text' else tokens     # text: max_length positions
  if position == 'learned':
    front += rows * d
  block = (2 * 2 * d                              # two LayerNorms
           + 4 * (d * d + d)                      # q, k, v, out projections
           + (d * f + f) + (f * d + d))           # MLP
  if position == 'relative':
    block += (2 * rows - 1) * 2                   # a bias per offset and head (2 heads)
  final_norm = 2 * d
  if head == 'masked_lm':
    out = d * v + v
  else:
    out = d * k + k + (d if pooling == 'cls' else 0)  # + the class token
  return front + layers * block + final_norm + out


# ---- Shapes, parameter count, axis names -------------------------------------------------

@pytest.mark.parametrize('frontend', ['features', 'image', 'text'])
@pytest.mark.parametrize('head', ['classify', 'masked_lm'])
def test_output_shapes_and_param_count(frontend, head):
  for pooling, position in (('cls', 'learned'), ('mean', 'sinusoidal'), ('cls', 'relative')):
    model = _model(frontend=frontend, head=head, pooling=pooling, position_embedding=position)
    x = _inputs(frontend)
    params = _param_shapes(model, x)  # shapes only: traced, not computed
    out = jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params, x)
    if head == 'classify':
      assert out.shape == (3, NUM_CLASSES)
    else:
      num_tokens = {'features': 40, 'image': 6, 'text': 16}[frontend]
      assert out.shape == (3, num_tokens, VOCAB)
    assert out.dtype == jnp.float32
    assert _num_params(params) == _expected_num_params(frontend, head, pooling, position)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_every_param_has_logical_axis_names(scan_layers):
  model = _model(frontend='text', scan_layers=scan_layers)
  boxed = jax.eval_shape(model.init, jax.random.key(0), _inputs('text'))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
  for p in leaves:
    assert len(p.names) == p.value.ndim, p
    if scan_layers and p.names[0] == 'layers':
      assert p.value.shape[0] == TINY['num_layers']


def test_bad_field_names_value_and_choices():
  def init(model):
    return jax.eval_shape(model.init, jax.random.key(0), _inputs('features'))
  with pytest.raises(ValueError, match=r"frontend='audio'.*'features', 'image', 'text'"):
    init(_model(frontend='audio'))
  with pytest.raises(ValueError, match='divisible by num_heads'):
    init(_model(num_heads=3))
  with pytest.raises(ValueError, match="attention_impl='reference'"):
    init(_model(attention_dropout_rate=0.1))
  with pytest.raises(ValueError, match="attention_impl='cudnn' needs"):
    init(_model(attention_impl='cudnn'))  # float32 (and, on this machine, no GPU)


# ---- Padding, permutations ---------------------------------------------------------------

@pytest.mark.parametrize('pooling,position', [('cls', 'learned'), ('mean', 'relative')])
def test_padding_changes_nothing(pooling, position):
  model = _model(frontend='text', pooling=pooling, position_embedding=position)
  tokens = np.array(_inputs('text'))
  tokens[0, 10:] = 0  # example 0: 10 real tokens, example 1: 4, example 2: none padded
  tokens[1, 4:] = 0
  params = _init(model, jnp.asarray(tokens))
  logits = _apply(model, params, jnp.asarray(tokens))

  # Different ids at the padded positions, masked explicitly: same logits.
  mask = tokens != 0
  scrambled = np.where(mask, tokens, np.random.default_rng(0).integers(1, VOCAB, tokens.shape))
  logits_scrambled = _apply(model, params, jnp.asarray(scrambled), mask_BxL=jnp.asarray(mask))
  np.testing.assert_allclose(logits_scrambled, logits, atol=1e-5)

  # More padding appended (the position table has room up to max_length): same logits.
  longer = np.concatenate([tokens, np.zeros((3, 8), tokens.dtype)], axis=1)
  np.testing.assert_allclose(_apply(model, params, jnp.asarray(longer)), logits, atol=1e-5)

  # And the padding really is what was ignored: changing a real token changes the logits.
  changed = tokens.copy()
  changed[:, 0] = tokens[:, 0] % (VOCAB - 1) + 1
  assert not np.allclose(_apply(model, params, jnp.asarray(changed)), logits, atol=1e-5)


@pytest.mark.parametrize('frontend', ['features', 'text'])
def test_permutation_equivariant_without_positions(frontend):
  model = _model(frontend=frontend, head='masked_lm', position_embedding='none')
  x = _inputs(frontend)
  params = _init(model, x)
  perm = np.random.default_rng(1).permutation(x.shape[1])
  out_BxNxV = _apply(model, params, x)
  out_permuted = _apply(model, params, x[:, perm])
  np.testing.assert_allclose(out_permuted, out_BxNxV[:, perm], atol=1e-5)
  # Learned positions break the symmetry (so the check above is not vacuous).
  positional = _model(frontend=frontend, head='masked_lm')
  p2 = _init(positional, x)
  assert not np.allclose(_apply(positional, p2, x[:, perm]),
                         _apply(positional, p2, x)[:, perm], atol=1e-4)


# ---- remat / scan ------------------------------------------------------------------------

def _to_scan_layout(params: dict, num_layers: int) -> dict:
  """block_0..block_{n-1} -> 'blocks' with each leaf stacked on a leading layer axis."""
  out = {k: v for k, v in params.items() if not k.startswith('block_')}
  out['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[params[f'block_{i}'] for i in range(num_layers)])
  return out


def _loss_and_grads(model, params, x, y):
  def loss(p):
    logits = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.key(0)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


NUM_LAYERS = 2


@functools.lru_cache(maxsize=1)
def _plain_loss_and_grads():
  x = _inputs('text')
  plain = _model(frontend='text', num_layers=NUM_LAYERS)
  params = _init(plain, x)
  return x, params, _loss_and_grads(plain, params, x, jnp.array([1, 2, 3]))


@pytest.mark.parametrize('remat,scan_layers,policy', [
    (True, False, 'nothing_saveable'),
    (False, True, 'nothing_saveable'),
    (True, True, 'dots_saveable'),
])
def test_remat_and_scan_match_plain(remat, scan_layers, policy):
  x, params, (loss, grads) = _plain_loss_and_grads()
  y = jnp.array([1, 2, 3])

  variant = _model(frontend='text', num_layers=NUM_LAYERS, remat=remat,
                   scan_layers=scan_layers, remat_policy=policy)
  if scan_layers:
    params, grads = (_to_scan_layout(params, NUM_LAYERS), _to_scan_layout(grads, NUM_LAYERS))
  assert jax.tree.structure(params) == jax.tree.structure(_param_shapes(variant, x))
  loss_v, grads_v = _loss_and_grads(variant, params, x, y)
  np.testing.assert_allclose(loss_v, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads_v, grads)


def test_dropout_is_active_in_training_only():
  model = _model(dropout_rate=0.5, scan_layers=True)
  x = _inputs('features')
  params = _init(model, x)
  eval_a, eval_b = _apply(model, params, x), _apply(model, params, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = _apply(model, params, x, train=True, rngs={'dropout': jax.random.key(1)})
  train_b = _apply(model, params, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_a, train_b)


# ---- Attention paths, precision ----------------------------------------------------------

@pytest.mark.parametrize('frontend,position', [('text', 'relative'), ('image', 'learned')])
def test_fused_and_reference_attention_agree(frontend, position):
  x = np.array(_inputs(frontend))
  if frontend == 'text':
    x[0, 5:] = 0  # exercise the padding mask
  x = jnp.asarray(x)
  fused = _model(frontend=frontend, attention_impl='fused', position_embedding=position)
  params = _init(fused, x)
  reference = _model(frontend=frontend, attention_impl='reference',
                     position_embedding=position)
  np.testing.assert_allclose(_apply(reference, params, x), _apply(fused, params, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attention_impl', ['fused'])  # 'reference' agrees with it (above)
def test_bfloat16_close_to_float32(attention_impl):
  x = _inputs('features', batch=8)
  f32 = _model(attention_impl=attention_impl, hidden_size=32)
  params = _init(f32, x)
  bf16 = _model(attention_impl=attention_impl, hidden_size=32, dtype='bfloat16')
  bf16_shapes = _param_shapes(bf16, x)
  assert jax.tree.structure(bf16_shapes) == jax.tree.structure(params)
  # Params stay float32 whatever the compute dtype.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_shapes))
  logits_f32 = _apply(f32, params, x)
  logits_bf16 = _apply(bf16, params, x)
  assert logits_bf16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(logits_bf16 - logits_f32) / jnp.linalg.norm(logits_f32))
  print(f'bf16 vs f32 relative logits error ({attention_impl}): {rel:.2e}')
  assert rel < 1e-2


# ---- Sharding ----------------------------------------------------------------------------

def test_runs_under_mesh_with_logical_rules():
  """Logical constraints resolve against the project's rules inside a mesh (1 device here)."""
  mesh = sharding.make_mesh(config_lib.default_config().mesh)
  model = _model(frontend='text', scan_layers=True, remat=True)
  x = _inputs('text')
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    # Traces init's unboxing constraints too (3-D kernels with 3 axis names).
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)['params']
    shardings = sharding.tree_shardings(abstract, mesh)
    params = jax.device_put(_init(model, x), shardings)
    out = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, x)
  np.testing.assert_allclose(out, _apply(model, params, x), atol=1e-5)


# ---- FLOPs -------------------------------------------------------------------------------

def _compiled_flops_per_example(model, x) -> float:
  params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), x)))['params']
  labels = jnp.zeros((x.shape[0],), jnp.int32)

  def loss(p, x, labels):
    logits = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.key(0)})
    if logits.ndim == 3:
      logits = logits.mean(axis=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  compiled = jax.jit(jax.grad(loss)).lower(params, x, labels).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops'] / x.shape[0]


@pytest.mark.parametrize('name,overrides,example_shape,dtype', [
    ('transformer', dict(frontend='text', num_layers=4, hidden_size=256, num_heads=4,
                         pooling='mean', dropout_rate=0.0), (128,), jnp.int32),
    ('mlp', {}, (40,), jnp.float32),
    ('cnn', {}, (40,), jnp.float32),
])
def test_flops_match_compiled_step(name, overrides, example_shape, dtype):
  model_cfg = models.model_config(name, **overrides)
  model = models.build_model(model_cfg, NUM_CLASSES)
  x = jnp.ones((4,) + example_shape, dtype)
  compiled = _compiled_flops_per_example(model, x)
  estimate = models.model_flops_per_example(model_cfg, example_shape, num_classes=NUM_CLASSES)
  assert estimate == models.model_flops_per_example(model, example_shape)
  print(f'{name} {overrides.get("frontend", "")}: formula {estimate:.4g} FLOPs/example, '
        f'compiled cost_analysis {compiled:.4g} (ratio {compiled / estimate:.3f})')
  assert abs(compiled / estimate - 1) < 0.10


def test_flops_need_num_classes_for_a_config():
  with pytest.raises(ValueError, match='num_classes'):
    models.model_flops_per_example(models.model_config('transformer'), (40,))


# ---- Configs -----------------------------------------------------------------------------

@pytest.mark.parametrize('path,num_classes,example', [
    ('configs/mnist1d/transformer.py', 10, jnp.zeros((2, 40), jnp.float32)),
    ('configs/mnist_subset/vit.py', 10, jnp.zeros((2, 28, 28, 1), jnp.float32)),
    # The default pipeline hands token ids over as float32; the text front end casts back.
    ('configs/imdb/text_classifier.py', 2, jnp.ones((2, 512), jnp.float32)),
])
def test_configs_build_a_working_model(path, num_classes, example):
  config = runpy.run_path(path)['get_config']()
  config_lib.validate(config)
  model = models.build_model(config.model, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0), example)
  out = jax.eval_shape(lambda v: model.apply(v, example), shapes)
  assert out.shape == (2, num_classes)


def test_mnist1d_config_trains_end_to_end(repo_root, tmp_path):
  """The experiment's own config, shortened: the trainer runs it and the loss falls."""
  from research import training  # the trainer pulls in data and checkpointing: import late
  from tests.helpers import read_jsonl

  config = runpy.run_path(f'{repo_root}/configs/mnist1d/transformer.py')['get_config']()
  config.num_train_steps = 20
  config.batch_size = 50
  config.optimizer.warmup_steps = 2
  config.log_every_steps = 5
  config.eval_every_steps = 0
  config.progress_bar = False
  if 'write_report' in config:
    config.write_report = False
  results = training.train_and_evaluate(config, str(tmp_path))
  losses = [r['loss'] for r in read_jsonl(tmp_path / 'metrics.jsonl') if r['split'] == 'train']
  assert losses[-1] < 0.9 * losses[0], losses
  assert results['test']['num_examples'] == 1000
  assert results['num_params'] == _num_params(
      _param_shapes(models.build_model(config.model, NUM_CLASSES), jnp.zeros((1, 40))))
