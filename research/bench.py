"""Training throughput and MFU of each model family, and the same model in PyTorch.

    python -m research.bench                                   # mlp, cnn, transformer x small, medium
    python -m research.bench --models=cnn --sizes=medium --json=bench.json
    python -m research.bench --no-torch                        # jax only (torch is optional)
    python -m research.bench --device=gpu --dtype=bfloat16 --models=transformer --sizes=bert_base

What is timed is what `research.train` runs: `steps.train_step` with an Adam optimizer from
`optim.create_optimizer`, jitted with the trainer's shardings and state donation, on one
fixed batch already on the device (the input pipeline is not timed). PyTorch runs the twin
model (`research.bench_torch`: same shapes, same parameter count, asserted) with
`torch.optim.Adam`, eagerly, as a PyTorch user would. jax and torch repeats alternate, so
a noisy neighbour slows both; `jax/torch` is the median of the per-repeat ratios.

MFU = model FLOPs per step / step time / peak (DESIGN.md "MFU convention"). On CPU the peak
is a 2048^3 fp32 matmul measured in the same run; on accelerators the vendor's dense peak
for the dtype (H100: 989 TFLOP/s bf16) or `--peak_tflops`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import config as config_lib
from research import models, optim, sharding, steps

# ---------------------------------------------------------------------------------------
# Cases: every (model family, size) this benchmark knows.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  family: str                      # a name in research.models.MODELS
  size: str
  model: dict[str, Any]            # hyperparameter overrides for models.model_config
  input_shape: tuple[int, ...]     # one example, channels-last
  batch_size: int
  num_classes: int = 10
  vocab_size: int = 0              # > 0: integer token inputs in [0, vocab_size)
  why: str = ''


CASES: dict[tuple[str, str], Case] = {c[:2]: Case(*c[:2], **c[2]) for c in [
    ('mlp', 'small', dict(
        model=dict(hidden_sizes=(100, 100), residual=True), input_shape=(40,),
        batch_size=100, why='MNIST-1D paper MLP and recipe batch (15,210 params)')),
    ('mlp', 'medium', dict(
        model=dict(hidden_sizes=(1024, 1024), residual=True), input_shape=(784,),
        batch_size=512, why='MNIST-sized input, 1024 wide: matmul-bound (1.9M params)')),
    ('cnn', 'small', dict(
        model=dict(), input_shape=(40,), batch_size=100,
        why='MNIST-1D paper CNN and recipe batch (5,210 params)')),
    ('cnn', 'medium', dict(
        model=dict(features=(32, 64, 128), kernel_sizes=(3, 3, 3), strides=(1, 2, 2),
                   padding=1, pooling='flatten'),
        input_shape=(28, 28, 1), batch_size=128,
        why='28x28 MNIST images, 32/64/128 channels: conv-bound')),
]}

# Transformer cases depend on the model's hyperparameter names; see _transformer_cases().
_TRANSFORMER_SHAPES = {
    'small': dict(num_layers=2, d_model=64, num_heads=4, mlp_dim=256, seq_len=40,
                  batch_size=100, why='MNIST-1D sized encoder (40 positions)'),
    'medium': dict(num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, seq_len=128,
                   batch_size=32, why='4 layers, d=256, seq 128: matmul-bound'),
    'bert_base': dict(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, seq_len=512,
                      batch_size=32, why='BERT-base encoder shapes, for accelerators'),
}

# Dense peak FLOP/s by device kind substring, for the accelerator MFU.
ACCELERATOR_PEAK_TFLOPS = {
    ('H100', 'bfloat16'): 989.0, ('H200', 'bfloat16'): 989.0, ('A100', 'bfloat16'): 312.0,
    ('H100', 'float32'): 494.5, ('H200', 'float32'): 494.5,  # TF32 dense
    ('TPU v4', 'bfloat16'): 275.0, ('TPU v5 lite', 'bfloat16'): 197.0,
    ('TPU v5e', 'bfloat16'): 197.0, ('TPU v5p', 'bfloat16'): 459.0,
}
