"""Grokking: a + b mod 113 (Power et al. 2022; Nanda et al. 2023), on your-own-data arrays.

  python -m research.main --config=configs/grokking/modular_addition.py --workdir=runs/grokking

Every pair (a, b) with 0 <= a, b < 113 is one example, the tokens `a b =`, labelled
(a + b) mod 113. A fixed 30% of the 12,769 pairs (permutation seed 0) is the training set,
the other 70% the test set. One-layer Transformer (d=128, 4 heads, MLP 512), full-batch
AdamW (lr 1e-3, weight decay 1.0, betas 0.9 / 0.98), as in Nanda et al. The model fits
the training pairs within a few hundred steps; test accuracy stays near chance for
thousands of steps, then climbs to 100%: the README's "Grokking" section has the curves
and the steps at which test accuracy crosses 50 / 90 / 99%.

The pairs are written once to an `.npz` file (the `npz:` source of research/data/arrays.py,
so `research.evaluate` and resumed runs read the same arrays) in $RESEARCH_CACHE_DIR, else
~/.cache/research.
"""
import os
import tempfile

import numpy as np

from research import models
from research.config import default_config

P = 113
TRAIN_FRACTION = 0.3
EQUALS, PAD = P, P + 1  # token ids after the numbers 0..P-1


def pairs_file(p: int = P, train_fraction: float = TRAIN_FRACTION, seed: int = 0) -> str:
  """The .npz of every (a, b, =) -> (a + b) mod p, split train / test; written once."""
  cache = os.environ.get('RESEARCH_CACHE_DIR') or os.path.expanduser('~/.cache/research')
  path = os.path.join(cache, f'modular_addition_p{p}_train{train_fraction:g}_seed{seed}.npz')
  if os.path.exists(path):
    return path
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing='ij')
  a, b = a.ravel(), b.ravel()
  inputs = np.stack([a, b, np.full_like(a, EQUALS)], axis=1).astype(np.int32)
  labels = ((a + b) % p).astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  n_train = int(train_fraction * len(labels))
  train, test = order[:n_train], order[n_train:]
  os.makedirs(cache, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=cache, suffix='.npz', delete=False) as f:
    np.savez(f, train_inputs=inputs[train], train_labels=labels[train],
             test_inputs=inputs[test], test_labels=labels[test])
  os.replace(f.name, path)  # atomic: a concurrent run never reads half a file
  return path


def get_config():
  config = default_config()
  config.dataset.name = f'npz:{pairs_file()}'
  config.model = models.model_config(
      'transformer', frontend='text', vocab_size=P + 2, pad_id=PAD, max_length=3,
      num_layers=1, num_heads=4, hidden_size=128, mlp_ratio=4.0, dropout_rate=0.0,
      position_embedding='learned', pooling='cls')
  config.batch_size = int(TRAIN_FRACTION * P * P)  # full batch: every training pair, each step
  config.eval_batch_size = 8939 // 7  # the 8,939 test pairs in 7 batches
  config.num_train_steps = 4000
  config.eval_every_steps = 100
  config.log_every_steps = 100
  config.checkpoint.every_steps = 1000
  opt = config.optimizer
  opt.name, opt.learning_rate, opt.schedule, opt.warmup_steps = 'adamw', 1e-3, 'constant', 10
  opt.weight_decay, opt.b1, opt.b2 = 1.0, 0.9, 0.98
  return config
