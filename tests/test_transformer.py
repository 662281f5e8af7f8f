"""The Transformer encoder: shapes, parameter count, masking, symmetry, remat/scan, precision, FLOPs."""
from __future__ import annotations

import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import models, sharding
from research.models import flops
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
  key = jax.random.key(seed)
  if frontend == 'text':
    return jax.random.randint(key, (batch,) + shape, 1, VOCAB, dtype)
  return jax.random.uniform(key, (batch,) + shape, dtype)


def _init(model: TransformerEncoder, x: jax.Array):
  return nn.unbox(model.init(jax.random.key(0), x))['params']


def _apply(model, params, x, **kwargs):
  return model.apply({'params': params}, x, **kwargs)


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
  if position == 'learned':
    front += (24 if frontend == 'text' else tokens) * d  # text: max_length rows
  block = (2 * 2 * d                              # two LayerNorms
           + 4 * (d * d + d)                      # q, k, v, out projections
           + (d * f + f) + (f * d + d))           # MLP
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
  for pooling, position in (('cls', 'learned'), ('mean', 'sinusoidal')):
    model = _model(frontend=frontend, head=head, pooling=pooling, position_embedding=position)
    x = _inputs(frontend)
    params = _init(model, x)
    out = _apply(model, params, x)
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
  boxed = model.init(jax.random.key(0), _inputs('text'))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
  for p in leaves:
    assert len(p.names) == p.value.ndim, p
    if scan_layers and p.names[0] == 'layers':
      assert p.value.shape[0] == TINY['num_layers']


def test_bad_field_names_value_and_choices():
  with pytest.raises(ValueError, match=r"frontend='audio'.*'features', 'image', 'text'"):
    _apply(_model(frontend='audio'), {}, _inputs('features'))
  with pytest.raises(ValueError, match='divisible by num_heads'):
    _model(num_heads=3).init(jax.random.key(0), _inputs('features'))
  with pytest.raises(ValueError, match="attention_impl='reference'"):
    _model(attention_dropout_rate=0.1).init(jax.random.key(0), _inputs('features'))


# ---- Padding, permutations ---------------------------------------------------------------

@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_padding_changes_nothing(pooling):
  model = _model(frontend='text', pooling=pooling)
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


@pytest.mark.parametrize('remat,scan_layers,policy', [
    (True, False, 'nothing_saveable'),
    (True, False, 'dots_saveable'),
    (False, True, 'nothing_saveable'),
    (True, True, 'dots_saveable'),
])
def test_remat_and_scan_match_plain(remat, scan_layers, policy):
  x = _inputs('text')
  y = jnp.array([1, 2, 3])
  plain = _model(frontend='text', num_layers=3)
  params = _init(plain, x)
  loss, grads = _loss_and_grads(plain, params, x, y)

  variant = _model(frontend='text', num_layers=3, remat=remat, scan_layers=scan_layers,
                   remat_policy=policy)
  if scan_layers:
    params, grads = _to_scan_layout(params, 3), _to_scan_layout(grads, 3)
  assert jax.tree.structure(params) == jax.tree.structure(_init(variant, x))
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

@pytest.mark.parametrize('frontend', ['text', 'image'])
def test_fused_and_reference_attention_agree(frontend):
  x = np.array(_inputs(frontend))
  if frontend == 'text':
    x[0, 5:] = 0  # exercise the padding mask
  x = jnp.asarray(x)
  fused = _model(frontend=frontend, attention_impl='fused')
  params = _init(fused, x)
  reference = _model(frontend=frontend, attention_impl='reference')
  np.testing.assert_allclose(_apply(reference, params, x), _apply(fused, params, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attention_impl', ['fused', 'reference'])
def test_bfloat16_close_to_float32(attention_impl):
  x = _inputs('features', batch=8)
  f32 = _model(attention_impl=attention_impl, hidden_size=32)
  params = _init(f32, x)
  bf16 = _model(attention_impl=attention_impl, hidden_size=32, dtype='bfloat16')
  assert jax.tree.structure(_init(bf16, x)) == jax.tree.structure(params)
  # Params stay float32 whatever the compute dtype.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(bf16, x)))
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
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  shardings = sharding.tree_shardings(abstract, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    variables = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), x)),
                        out_shardings=shardings)()
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  np.testing.assert_allclose(out, _apply(model, variables['params'], x), atol=1e-5)


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
    ('transformer', dict(frontend='image', num_layers=2, hidden_size=128, num_heads=4,
                         head='masked_lm', patch_size=4), (32, 32, 3), jnp.float32),
    ('mlp', {}, (40,), jnp.float32),
    ('cnn', {}, (40,), jnp.float32),
])
def test_flops_match_compiled_step(name, overrides, example_shape, dtype):
  model_cfg = models.model_config(name, **overrides)
  model = models.build_model(model_cfg, NUM_CLASSES)
  x = jnp.ones((4,) + example_shape, dtype)
  compiled = _compiled_flops_per_example(model, x)
  estimate = flops.model_flops_per_example(model_cfg, example_shape, num_classes=NUM_CLASSES)
  assert estimate == flops.model_flops_per_example(model, example_shape)
  print(f'{name} {overrides.get("frontend", "")}: formula {estimate:.4g} FLOPs/example, '
        f'compiled cost_analysis {compiled:.4g} (ratio {compiled / estimate:.3f})')
  assert abs(compiled / estimate - 1) < 0.10


def test_flops_need_num_classes_for_a_config():
  with pytest.raises(ValueError, match='num_classes'):
    flops.model_flops_per_example(models.model_config('transformer'), (40,))


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
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
  out = jax.eval_shape(lambda v: model.apply(v, example), shapes)
  assert out.shape == (2, num_classes)
