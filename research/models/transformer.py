"""A pre-LayerNorm Transformer encoder with interchangeable front ends and heads.

Front ends (`frontend`) turn an input batch into tokens `x_BxNxD`:
- 'features': each scalar of `x_BxL` (MNIST-1D's 40 values) becomes a token, `Dense(1->D)`;
  `x_BxLxC` gives C features per token.
- 'image' (ViT): non-overlapping `patch_size` patches of `x_BxHxWxC`, flattened, `Dense`.
- 'text': token ids `x_BxL` (int, or float from the default pipeline), pad id `pad_id`
  masked out of attention and pooling.
Positions (`position_embedding`): 'learned' or 'sinusoidal' tables added to the tokens;
'relative', a learned per-head attention bias for each offset j - i (T5-style, one table
per layer), which makes attention translation-equivariant; 'none'.
Heads (`head`): 'classify' pools (`pooling='cls'` prepends a learned class token,
'mean' averages the unpadded tokens, 'first' takes the first token, e.g. a tokenizer's
[CLS]) and returns `logits_BxK`; 'masked_lm' returns
per-token vocabulary logits `logits_BxNxV` (for masked-token pretraining).

Precision: parameters are float32; matmuls run in `dtype` ('float32' or 'bfloat16');
softmax and LayerNorm statistics are always float32; logits come back float32.
`attention_impl='fused'` calls `jax.nn.dot_product_attention` (its XLA implementation, which
the compiler fuses on every platform); 'cudnn' asks that function for cuDNN's flash-attention
kernel (NVIDIA GPUs, bfloat16); 'reference' is the plain einsum path the tests compare them
with, and the only one with attention dropout.

BERT-family options (`research.models.hf_bert` loads such checkpoints): `norm_position=
'post'` (LayerNorm after each residual sum, and on the embeddings instead of at the end),
`type_vocab_size` (token-type embeddings, type 0 unless `token_types_BxL` is given),
`gelu_exact` (erf GELU rather than the tanh approximation), `layer_norm_epsilon`, and
`pooler` (dense + tanh on the pooled token, then dropout, before the classifier). The
defaults are the pre-LN encoder above, its parameters and numbers unchanged.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import layers, precision

FRONTENDS = ('features', 'image', 'text')
HEADS = ('classify', 'masked_lm')
POOLINGS = ('cls', 'mean', 'first')
NORM_POSITIONS = ('pre', 'post')
POSITION_EMBEDDINGS = ('learned', 'sinusoidal', 'relative', 'none')
ATTENTION_IMPLS = ('fused', 'cudnn', 'reference')
DTYPES = ('float32', 'bfloat16')
REMAT_POLICIES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable',
                  'everything_saveable')

ACTIVATION_AXES = ('batch', 'length', 'embed')
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def _layer_norm(dtype: Any, name: str, epsilon: float = 1e-6) -> nn.LayerNorm:
  # force_float32_reductions (flax's default) keeps mean/variance in float32 under bf16.
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, force_float32_reductions=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)),
      name=name)


class HeadsProjection(nn.Module):
  """`x_BxLxD -> y_BxLxHxDh` (or back, with `to_heads=False`), kernels named per axis.

  Written out rather than `nn.DenseGeneral`: DenseGeneral initialises a flattened 2-D
  kernel and reshapes it, which breaks 3-D logical axis names under a mesh.
  """
  num_heads: int
  head_dim: int
  to_heads: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.to_heads:
      dim = x.shape[-1]
      init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
      kernel = self.param('kernel',
                          nn.with_logical_partitioning(init, ('embed', 'heads', 'kv')),
                          (dim, self.num_heads, self.head_dim), jnp.float32)
      bias = self.param('bias', nn.with_logical_partitioning(layers.default_bias_init,
                                                             ('heads', 'kv')),
                        (self.num_heads, self.head_dim), jnp.float32)
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)  # qwix-interceptable
      y = precision.einsum('bld,dhk->blhk', x, kernel)
    else:
      dim = self.num_heads * self.head_dim  # the output projection keeps the width
      init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
      kernel = self.param('kernel',
                          nn.with_logical_partitioning(init, ('heads', 'kv', 'embed')),
                          (self.num_heads, self.head_dim, dim), jnp.float32)
      bias = self.param('bias', nn.with_logical_partitioning(layers.default_bias_init,
                                                             ('embed',)),
                        (dim,), jnp.float32)
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)  # qwix-interceptable
      y = precision.einsum('blhk,hkd->bld', x, kernel)
    return y + bias.astype(self.dtype)


def sinusoidal_positions(length: int, dim: int) -> jnp.ndarray:
  """The fixed sin/cos table `pos_NxD` of 'Attention is all you need'."""
  position_N1 = jnp.arange(length, dtype=jnp.float32)[:, None]
  inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle_NxD2 = position_N1 * inv_freq[None, :]
  pos_NxD = jnp.zeros((length, dim), jnp.float32)
  pos_NxD = pos_NxD.at[:, 0::2].set(jnp.sin(angle_NxD2))
  return pos_NxD.at[:, 1::2].set(jnp.cos(angle_NxD2[:, :dim // 2]))


def reference_attention(q_BxLxHxDh: jnp.ndarray, k_BxLxHxDh: jnp.ndarray,
                        v_BxLxHxDh: jnp.ndarray, mask_BxL: jnp.ndarray | None,
                        dropout: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
                        bias_HxLxL: jnp.ndarray | None = None) -> jnp.ndarray:
  """Softmax attention with einsums; float32 logits and softmax whatever the input dtype."""
  scale = 1.0 / math.sqrt(q_BxLxHxDh.shape[-1])
  logits_BxHxLxL = precision.einsum('blhd,bmhd->bhlm', q_BxLxHxDh, k_BxLxHxDh,
                                    out_dtype=jnp.float32) * scale
  if bias_HxLxL is not None:
    logits_BxHxLxL = logits_BxHxLxL + bias_HxLxL.astype(jnp.float32)[None]
  if mask_BxL is not None:
    # A large finite negative (not -inf): an all-padding row gives uniform weights, not NaN.
    big_negative = jnp.finfo(jnp.float32).min / 2
    logits_BxHxLxL = jnp.where(mask_BxL[:, None, None, :], logits_BxHxLxL, big_negative)
  att_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1)
  if dropout is not None:
    att_BxHxLxL = dropout(att_BxHxLxL)
  return precision.einsum('bhlm,bmhd->blhd', att_BxHxLxL.astype(v_BxLxHxDh.dtype), v_BxLxHxDh)


def relative_offsets(length: int, max_distance: int) -> jnp.ndarray:
  """`idx_LxL[i, j]` = clip(j - i, +-max_distance) + max_distance: a row of the bias table."""
  pos_L = jnp.arange(length)
  return jnp.clip(pos_L[None, :] - pos_L[:, None], -max_distance, max_distance) + max_distance


class SelfAttention(nn.Module):
  """Multi-head self-attention over `x_BxLxD`; `mask_BxL` marks the keys that may be seen.

  With `relative_distance > 0`, a learned per-head bias indexed by the offset j - i (clipped
  to +-relative_distance) is added to the attention logits, as in T5 (without buckets);
  the first `num_prefix_tokens` (a class token) get no bias.
  """
  num_heads: int
  dtype: Any = jnp.float32
  attention_impl: str = 'fused'
  dropout_rate: float = 0.0
  deterministic: bool = True
  relative_distance: int = 0
  num_prefix_tokens: int = 0

  def relative_bias(self, length: int) -> jnp.ndarray:
    """`bias_HxLxL` for a sequence of `length` tokens, the prefix included."""
    table_RxH = self.param(
        'relative_bias', nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                      ('relative', 'heads')),
        (2 * self.relative_distance + 1, self.num_heads), jnp.float32)
    prefix = self.num_prefix_tokens
    bias_LxLxH = table_RxH[relative_offsets(length - prefix, self.relative_distance)]
    bias_HxLxL = bias_LxLxH.transpose(2, 0, 1)
    return jnp.pad(bias_HxLxL, ((0, 0), (prefix, 0), (prefix, 0)))

  @nn.compact
  def __call__(self, x_BxLxD: jnp.ndarray, mask_BxL: jnp.ndarray | None) -> jnp.ndarray:
    dim = x_BxLxD.shape[-1]
    head_dim = dim // self.num_heads
    def project(name: str) -> jnp.ndarray:
      return HeadsProjection(self.num_heads, head_dim, dtype=self.dtype, name=name)(x_BxLxD)
    q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh = project('query'), project('key'), project('value')
    qkv_axes = ('batch', 'length', 'heads', 'kv')
    q_BxLxHxDh = nn.with_logical_constraint(q_BxLxHxDh, qkv_axes)
    k_BxLxHxDh = nn.with_logical_constraint(k_BxLxHxDh, qkv_axes)
    v_BxLxHxDh = nn.with_logical_constraint(v_BxLxHxDh, qkv_axes)
    bias_HxLxL = None
    if self.relative_distance > 0:
      bias_HxLxL = self.relative_bias(x_BxLxD.shape[1])
    impl = self.attention_impl
    if impl == 'fused' and jnp.dtype(self.dtype) != jnp.float32:
      # jax.nn.dot_product_attention's XLA path multiplies probabilities by values
      # bf16 x bf16 -> bf16 and its gradient dots mix float32 cotangents with bfloat16
      # operands, which XLA runs as float32 dots: under the mixed-precision policy the
      # same maths goes through `reference_attention`'s einsums (no attention dropout,
      # as in 'fused').
      impl = 'fused_reference'
    if impl in ('fused', 'cudnn'):
      mask_Bx1x1xL = None if mask_BxL is None else mask_BxL[:, None, None, :]
      bias_1xHxLxL = None if bias_HxLxL is None else bias_HxLxL[None].astype(q_BxLxHxDh.dtype)
      out_BxLxHxDh = jax.nn.dot_product_attention(
          q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, bias=bias_1xHxLxL, mask=mask_Bx1x1xL,
          implementation='cudnn' if self.attention_impl == 'cudnn' else None)
    else:
      dropout = None
      if self.dropout_rate > 0 and impl == 'reference':
        dropout = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
      out_BxLxHxDh = reference_attention(q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, mask_BxL,
                                         dropout, bias_HxLxL)
    out_BxLxHxDh = nn.with_logical_constraint(out_BxLxHxDh, qkv_axes)
    return HeadsProjection(self.num_heads, head_dim, to_heads=False, dtype=self.dtype,
                           name='out')(out_BxLxHxDh)


class EncoderBlock(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)) with GELU; with `post_norm`, LN(x +
  attention(x)) then LN(x + MLP(x)) (BERT). `scanned` returns (x, None)."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  attention_impl: str = 'fused'
  dtype: Any = jnp.float32
  deterministic: bool = True
  relative_distance: int = 0
  num_prefix_tokens: int = 0
  scanned: bool = False
  post_norm: bool = False
  gelu_exact: bool = False
  layer_norm_epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x_BxLxD: jnp.ndarray, mask_BxL: jnp.ndarray | None):
    dim = x_BxLxD.shape[-1]
    ln_attention = _layer_norm(self.dtype, 'ln_attention', self.layer_norm_epsilon)
    ln_mlp = _layer_norm(self.dtype, 'ln_mlp', self.layer_norm_epsilon)
    # Pre-LN normalises each branch's input; post-LN (BERT) each residual sum.
    pre = (lambda ln, y: y) if self.post_norm else (lambda ln, y: ln(y))
    post = (lambda ln, y: ln(y)) if self.post_norm else (lambda ln, y: y)
    h_BxLxD = pre(ln_attention, x_BxLxD)
    h_BxLxD = SelfAttention(self.num_heads, self.dtype, self.attention_impl,
                            self.attention_dropout_rate, self.deterministic,
                            self.relative_distance, self.num_prefix_tokens,
                            name='attention')(h_BxLxD, mask_BxL)
    h_BxLxD = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(h_BxLxD)
    x_BxLxD = nn.with_logical_constraint(post(ln_attention, x_BxLxD + h_BxLxD),
                                         ACTIVATION_AXES)

    h_BxLxD = pre(ln_mlp, x_BxLxD)
    h_BxLxF = layers.dense(self.mlp_dim, 'embed', 'mlp', name='mlp_in',
                           dtype=self.dtype)(h_BxLxD)
    h_BxLxF = nn.gelu(h_BxLxF, approximate=not self.gelu_exact)
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ('batch', 'length', 'mlp'))
    h_BxLxF = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(h_BxLxF)
    h_BxLxD = layers.dense(dim, 'mlp', 'embed', name='mlp_out', dtype=self.dtype)(h_BxLxF)
    h_BxLxD = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(h_BxLxD)
    x_BxLxD = nn.with_logical_constraint(post(ln_mlp, x_BxLxD + h_BxLxD), ACTIVATION_AXES)
    return (x_BxLxD, None) if self.scanned else x_BxLxD


class TransformerEncoder(nn.Module):
  """Pre-LN Transformer encoder; see the module docstring for front ends and heads.

  `max_length` sizes the learned position and relative-bias tables of the 'text' front end
  (inputs may be shorter); 'features' and 'image' size them from the input they are
  initialised with.
  `scan_layers` compiles one block and loops it (params stacked on a leading 'layers'
  axis, under 'blocks'); otherwise blocks are 'block_0', 'block_1', ... `remat`
  recomputes each block's activations in the backward pass, keeping what
  `remat_policy` (a `jax.checkpoint_policies` name) saves.
  """
  num_classes: int
  frontend: str = 'features'
  head: str = 'classify'
  num_layers: int = 2
  num_heads: int = 4
  hidden_size: int = 64
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  position_embedding: str = 'learned'
  pooling: str = 'cls'
  max_length: int = 512
  vocab_size: int = 260
  pad_id: int = 0
  patch_size: int = 4
  dtype: str = 'float32'
  attention_impl: str = 'fused'
  remat: bool = False
  remat_policy: str = 'nothing_saveable'
  scan_layers: bool = False
  # BERT-family options (see the module docstring); the defaults keep the pre-LN encoder.
  norm_position: str = 'pre'
  type_vocab_size: int = 0
  gelu_exact: bool = False
  layer_norm_epsilon: float = 1e-6
  pooler: bool = False

  @property
  def mlp_dim(self) -> int:
    return int(round(self.hidden_size * self.mlp_ratio))

  @property
  def uses_class_token(self) -> bool:
    return self.head == 'classify' and self.pooling == 'cls'

  # Batch fields the trainer passes to __call__, as {batch field: keyword argument}:
  # the tokenizer's padding mask, and the positions a masked-LM objective predicts.
  batch_inputs = {'input_mask': 'mask_BxL', 'mlm_positions': 'positions_BxP'}

  def flops_terms(self, input_shape: Sequence[int]) -> dict[str, int]:
    """The terms of the training FLOPs per example (`research.models` convention), and
    their 'total'."""
    self.check()
    d, f, layers_ = self.hidden_size, self.mlp_dim, self.num_layers
    if self.frontend == 'features':
      num_tokens = input_shape[0]
      frontend_macs = num_tokens * (input_shape[1] if len(input_shape) > 1 else 1) * d
    elif self.frontend == 'image':
      h, w = input_shape[:2]
      channels = input_shape[2] if len(input_shape) > 2 else 1
      p = self.patch_size
      num_tokens = (h // p) * (w // p)
      frontend_macs = num_tokens * p * p * channels * d
    else:
      num_tokens = input_shape[0]
      frontend_macs = 0  # an embedding lookup, not a matmul
    seq_len = num_tokens + (1 if self.uses_class_token else 0)
    # q, k, v, out projections (4 d^2) and the two MLP matmuls (2 d f), per token per layer.
    block_macs = layers_ * seq_len * (4 * d * d + 2 * d * f)
    if self.head == 'masked_lm':
      head_macs = seq_len * d * self.vocab_size
    else:
      head_macs = d * self.num_classes  # applied once, to the pooled token
      if self.pooler:
        head_macs += d * d
    terms = {
        'frontend': 6 * frontend_macs,
        'blocks': 6 * block_macs,
        'head': 6 * head_macs,
        # Q K^T and att V: 2 x seq_len x d MACs per token per layer, x 6; not halved.
        'attention': 12 * layers_ * seq_len * d * seq_len,
    }
    terms['total'] = sum(terms.values())
    return terms

  def flops_per_example(self, input_shape: Sequence[int]) -> int:
    return self.flops_terms(input_shape)['total']

  def check(self) -> None:
    """Raises ValueError naming the bad field, its value and the accepted values."""
    choices = {'frontend': FRONTENDS, 'head': HEADS, 'pooling': POOLINGS,
               'position_embedding': POSITION_EMBEDDINGS, 'attention_impl': ATTENTION_IMPLS,
               'dtype': DTYPES, 'remat_policy': REMAT_POLICIES,
               'norm_position': NORM_POSITIONS}
    for field, accepted in choices.items():
      if getattr(self, field) not in accepted:
        raise ValueError(f'TransformerEncoder {field}={getattr(self, field)!r}; '
                         f'accepted: {list(accepted)}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'TransformerEncoder hidden_size={self.hidden_size} must be divisible '
                       f'by num_heads={self.num_heads}.')
    if self.position_embedding == 'sinusoidal' and self.hidden_size % 2:
      raise ValueError(f"position_embedding='sinusoidal' needs an even hidden_size, got "
                       f'{self.hidden_size}.')
    if self.attention_impl == 'cudnn' and (jax.default_backend() != 'gpu'
                                           or self.dtype == 'float32'):
      raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU and dtype='bfloat16' "
                       f'(here: {jax.default_backend()}, dtype={self.dtype!r}); use '
                       f"attention_impl='fused' elsewhere.")
    if self.type_vocab_size and self.frontend != 'text':
      raise ValueError(f"type_vocab_size={self.type_vocab_size} needs frontend='text', "
                       f'got {self.frontend!r}.')
    if self.attention_dropout_rate > 0 and self.attention_impl != 'reference':
      raise ValueError(f'attention_dropout_rate={self.attention_dropout_rate} needs '
                       f"attention_impl='reference' (the fused kernel has no dropout); or set "
                       f'attention_dropout_rate=0.')

  # ---- Front ends: input -> tokens x_BxNxD (before positions) and mask_BxN or None ----
  def _embed_features(self, x: jnp.ndarray, dtype: Any):
    x = layers.pixels_to_unit(x)
    if x.ndim == 2:  # x_BxL: one scalar per token
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f"frontend='features' expects x_BxL or x_BxLxC, got shape {x.shape}.")
    x_BxNxD = layers.dense(self.hidden_size, 'patch', 'embed', name='feature_embed',
                           dtype=dtype)(x.astype(jnp.float32))
    return x_BxNxD, None

  def _embed_image(self, x: jnp.ndarray, dtype: Any):
    x = layers.pixels_to_unit(x)
    if x.ndim == 3:  # x_BxHxW: one channel
      x = x[..., None]
    if x.ndim != 4:
      raise ValueError(f"frontend='image' expects x_BxHxWxC, got shape {x.shape}; reshape "
                       'flat pixels to images first.')
    b, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f'Image size {h}x{w} is not divisible by patch_size={p}.')
    # Non-overlapping patches as a reshape plus a Dense: the same as a stride-p conv, without
    # XLA's slow CPU convolutions.
    patches = x.astype(jnp.float32).reshape(b, h // p, p, w // p, p, c)
    patches_BxNxP = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p),
                                                                p * p * c)
    x_BxNxD = layers.dense(self.hidden_size, 'patch', 'embed', name='patch_embed',
                           dtype=dtype)(patches_BxNxP)
    return x_BxNxD, None

  def _embed_text(self, x: jnp.ndarray, dtype: Any, mask_BxN: jnp.ndarray | None):
    if x.ndim != 2:
      raise ValueError(f"frontend='text' expects token ids x_BxL, got shape {x.shape}.")
    if x.shape[1] > self.max_length:
      raise ValueError(f'Text of length {x.shape[1]} is longer than max_length='
                       f'{self.max_length}; raise max_length or truncate the tokens.')
    tokens_BxN = x.astype(jnp.int32)  # the default input pipeline hands over float32 ids
    if mask_BxN is None:
      mask_BxN = tokens_BxN != self.pad_id
    x_BxNxD = nn.Embed(
        self.vocab_size, self.hidden_size, dtype=dtype,
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ('vocab', 'embed')),
        name='token_embed')(tokens_BxN)
    return x_BxNxD, mask_BxN

  def _position_rows(self, num_tokens: int) -> int:
    """Positions a table covers: text up to max_length; otherwise the input's tokens."""
    return self.max_length if self.frontend == 'text' else num_tokens

  def _add_positions(self, x_BxNxD: jnp.ndarray) -> jnp.ndarray:
    n, dim = x_BxNxD.shape[1:]
    if self.position_embedding in ('none', 'relative'):  # 'relative' acts in attention
      return x_BxNxD
    if self.position_embedding == 'sinusoidal':
      pos_NxD = sinusoidal_positions(n, dim)
    else:
      pos_NxD = self.param('pos_embed',
                           nn.with_logical_partitioning(_EMBED_INIT, ('length', 'embed')),
                           (self._position_rows(n), dim), jnp.float32)[:n]
    return x_BxNxD + pos_NxD.astype(x_BxNxD.dtype)[None]

  def _encode(self, x_BxLxD: jnp.ndarray, mask_BxL: jnp.ndarray | None,
              deterministic: bool, dtype: Any, num_tokens: int) -> jnp.ndarray:
    relative_distance = 0
    if self.position_embedding == 'relative':
      relative_distance = self._position_rows(num_tokens) - 1
    block_cls = EncoderBlock
    if self.remat:
      # Under scan, CSE across iterations cannot undo the remat, so prevent_cse can go.
      block_cls = nn.remat(block_cls, policy=getattr(jax.checkpoint_policies,
                                                     self.remat_policy),
                           prevent_cse=not self.scan_layers)
    kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate,
                  attention_impl=self.attention_impl, dtype=dtype,
                  deterministic=deterministic, relative_distance=relative_distance,
                  num_prefix_tokens=int(self.uses_class_token),
                  post_norm=self.norm_position == 'post', gelu_exact=self.gelu_exact,
                  layer_norm_epsilon=self.layer_norm_epsilon)
    if self.scan_layers:
      blocks = nn.scan(block_cls, variable_axes={'params': 0},
                       split_rngs={'params': True, 'dropout': True},
                       in_axes=(nn.broadcast,), length=self.num_layers,
                       metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxLxD, _ = blocks(scanned=True, name='blocks', **kwargs)(x_BxLxD, mask_BxL)
    else:
      for i in range(self.num_layers):
        x_BxLxD = block_cls(name=f'block_{i}', **kwargs)(x_BxLxD, mask_BxL)
    if self.norm_position == 'post':  # each block ends normalised
      return x_BxLxD
    return _layer_norm(dtype, 'ln_final', self.layer_norm_epsilon)(x_BxLxD)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               mask_BxL: jnp.ndarray | None = None,
               positions_BxP: jnp.ndarray | None = None,
               token_types_BxL: jnp.ndarray | None = None) -> jnp.ndarray:
    """`logits_BxK` ('classify') or `logits_BxNxV` ('masked_lm'), float32.

    `mask_BxL` (text only) overrides the padding mask `x != pad_id`. `positions_BxP`
    ('masked_lm' only): the head runs on those P token positions only and returns
    `logits_BxPxV`, as BERT does (the vocabulary projection of every token would
    otherwise dominate the step's cost). `token_types_BxL` (with `type_vocab_size`):
    segment ids, 0 when not given.
    """
    self.check()
    dtype = jnp.dtype(self.dtype)
    deterministic = not train
    if self.frontend == 'features':
      x_BxNxD, mask_BxN = self._embed_features(x, dtype)
    elif self.frontend == 'image':
      x_BxNxD, mask_BxN = self._embed_image(x, dtype)
    else:
      x_BxNxD, mask_BxN = self._embed_text(x, dtype, mask_BxL)
    num_tokens = x_BxNxD.shape[1]  # before the class token
    x_BxNxD = self._add_positions(x_BxNxD)
    if self.type_vocab_size:
      if token_types_BxL is None:
        token_types_BxL = jnp.zeros(x_BxNxD.shape[:2], jnp.int32)
      x_BxNxD = x_BxNxD + nn.Embed(
          self.type_vocab_size, self.hidden_size, dtype=dtype,
          embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ('token_types', 'embed')),
          name='type_embed')(token_types_BxL.astype(jnp.int32))
    if self.norm_position == 'post':  # BERT normalises the embeddings' sum
      x_BxNxD = _layer_norm(dtype, 'ln_embed', self.layer_norm_epsilon)(x_BxNxD)

    if self.uses_class_token:
      cls_D = self.param('cls_token', nn.with_logical_partitioning(_EMBED_INIT, ('embed',)),
                         (self.hidden_size,), jnp.float32)
      cls_Bx1xD = jnp.broadcast_to(cls_D.astype(dtype),
                                   (x_BxNxD.shape[0], 1, self.hidden_size))
      x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
      if mask_BxN is not None:
        mask_BxN = jnp.concatenate([jnp.ones_like(mask_BxN[:, :1]), mask_BxN], axis=1)
    x_BxNxD = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x_BxNxD)
    x_BxNxD = nn.with_logical_constraint(x_BxNxD.astype(dtype), ACTIVATION_AXES)

    x_BxNxD = self._encode(x_BxNxD, mask_BxN, deterministic, dtype, num_tokens)

    if self.head == 'masked_lm':
      if positions_BxP is not None:
        x_BxNxD = jnp.take_along_axis(x_BxNxD, positions_BxP[..., None].astype(jnp.int32),
                                      axis=1)  # x_BxPxD
      logits_BxNxV = layers.dense(self.vocab_size, 'embed', 'vocab', name='mlm_head',
                                  dtype=dtype, out_dtype=jnp.float32)(x_BxNxD)
      return logits_BxNxV.astype(jnp.float32)

    if self.pooling in ('cls', 'first'):
      pooled_BxD = x_BxNxD[:, 0]
    elif mask_BxN is None:
      pooled_BxD = x_BxNxD.astype(jnp.float32).mean(axis=1)
    else:
      weight_BxN = mask_BxN.astype(jnp.float32)
      # A float32 weighted sum (a reduction, not a dot: the activations may be bfloat16).
      pooled_BxD = ((x_BxNxD.astype(jnp.float32) * weight_BxN[..., None]).sum(axis=1)
                    / jnp.maximum(weight_BxN.sum(axis=1, keepdims=True), 1.0))
    if self.pooler:
      pooled_BxD = jnp.tanh(layers.dense(self.hidden_size, 'embed', 'embed_out', name='pooler',
                                         dtype=dtype)(pooled_BxD))
      pooled_BxD = nn.Dropout(self.dropout_rate, deterministic=deterministic)(pooled_BxD)
    logits_BxK = layers.dense(self.num_classes, 'embed', 'classes', name='head',
                              dtype=dtype, out_dtype=jnp.float32)(pooled_BxD)
    return logits_BxK.astype(jnp.float32)
