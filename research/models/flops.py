"""Model FLOPs per training example, by the MFU convention of DESIGN.md.

Training FLOPs = 6 x (multiply-accumulates of the matmuls and convolutions, i.e. weights x
the tokens or positions they are applied to) + the attention term 12 x layers x seq_len x
d_model per token. 6 = 2 (a MAC is two FLOPs) x 3 (forward, plus a backward twice its
size). Biases, norms, activations, softmax and embedding lookups are left out, as in the
convention; they are a few percent of a compiled step's FLOPs for models of useful size.

`input_shape` is one example's shape, without the batch axis: (40,) for MNIST-1D,
(28, 28, 1) for MNIST images, (512,) for 512 text tokens.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import ml_collections

from research import models
from research.models.simple import CNN, MLP, LogisticRegression
from research.models.transformer import TransformerEncoder


def transformer_flops_per_example(model: TransformerEncoder,
                                  input_shape: Sequence[int]) -> dict[str, int]:
  """The terms of a Transformer's training FLOPs per example, and their 'total'."""
  model.check()
  d, f, layers_ = model.hidden_size, model.mlp_dim, model.num_layers
  if model.frontend == 'features':
    num_tokens = input_shape[0]
    frontend_macs = num_tokens * (input_shape[1] if len(input_shape) > 1 else 1) * d
  elif model.frontend == 'image':
    h, w = input_shape[:2]
    channels = input_shape[2] if len(input_shape) > 2 else 1
    p = model.patch_size
    num_tokens = (h // p) * (w // p)
    frontend_macs = num_tokens * p * p * channels * d
  else:
    num_tokens = input_shape[0]
    frontend_macs = 0  # an embedding lookup, not a matmul
  seq_len = num_tokens + (1 if model.uses_class_token else 0)
  # q, k, v, out projections (4 d^2) and the two MLP matmuls (2 d f), per token per layer.
  block_macs = layers_ * seq_len * (4 * d * d + 2 * d * f)
  if model.head == 'masked_lm':
    head_macs = seq_len * d * model.vocab_size
  else:
    head_macs = d * model.num_classes  # applied once, to the pooled token
  terms = {
      'frontend': 6 * frontend_macs,
      'blocks': 6 * block_macs,
      'head': 6 * head_macs,
      # Q K^T and att V: 2 x seq_len x d MACs per token per layer, x 6; not halved.
      'attention': 12 * layers_ * seq_len * d * seq_len,
  }
  terms['total'] = sum(terms.values())
  return terms


def _mlp_macs(model: MLP | LogisticRegression, input_shape: Sequence[int]) -> int:
  width = math.prod(input_shape)
  macs = 0
  for hidden in getattr(model, 'hidden_sizes', ()):
    macs += width * hidden
    width = hidden
  return macs + width * model.num_classes


def _cnn_macs(model: CNN, input_shape: Sequence[int]) -> int:
  if len(input_shape) == 1:  # x_L: one channel
    input_shape = (input_shape[0], 1)
  spatial, channels = list(input_shape[:-1]), input_shape[-1]
  macs = 0
  for width, k, s in zip(model.features, model.kernel_sizes, model.strides):
    spatial = [(n + 2 * model.padding - k) // s + 1 for n in spatial]
    macs += math.prod(spatial) * k ** len(spatial) * channels * width
    channels = width
  flat = channels * (math.prod(spatial) if model.pooling == 'flatten' else 1)
  for hidden in model.hidden_sizes:
    macs += flat * hidden
    flat = hidden
  return macs + flat * model.num_classes


def model_flops_per_example(model: nn.Module | ml_collections.ConfigDict,
                            input_shape: Sequence[int], num_classes: int | None = None) -> int:
  """Training FLOPs for one example of `input_shape` (no batch axis).

  `model` is a built module, or a config block (`config.model`) plus `num_classes`.
  """
  if isinstance(model, ml_collections.ConfigDict):
    if num_classes is None:
      raise ValueError('model_flops_per_example(config.model, ...) needs num_classes (the '
                       "dataset's); or pass a built module.")
    model = models.build_model(model, num_classes)
  input_shape = tuple(int(n) for n in input_shape)
  if isinstance(model, TransformerEncoder):
    return transformer_flops_per_example(model, input_shape)['total']
  if isinstance(model, (MLP, LogisticRegression)):
    return 6 * _mlp_macs(model, input_shape)
  if isinstance(model, CNN):
    return 6 * _cnn_macs(model, input_shape)
  raise ValueError(f'No FLOP count for {type(model).__name__}; known: TransformerEncoder, '
                   'MLP, LogisticRegression, CNN. Add one to research/models/flops.py.')
