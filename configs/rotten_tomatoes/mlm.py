"""Masked-language-model pretraining of a small byte-level Transformer encoder, offline.

  python -m research.main --config=configs/rotten_tomatoes/mlm.py --workdir=runs/rt_mlm

Data: the 12,808 Rotten Tomatoes snippets (`rotten_tomatoes`, offline; labels unused),
UTF-8 bytes as tokens (`tokenize_bytes`, vocab 260, max 128 tokens: the median snippet
is about 110 bytes). Objective: BERT's masking (`masked_lm`: 15% of real tokens chosen,
80% [MASK] / 10% random / 10% unchanged), loss on the chosen tokens only. The
evaluation reports masked-token accuracy next to `majority_baseline_accuracy` (always
predicting the split's most frequent masked byte): the model must beat it to have
learnt anything beyond byte frequencies.

The encoder's weights then start a classifier (configs/rotten_tomatoes/classifier.py,
`--config.init_from.workdir=runs/rt_mlm`). Sized for a CPU (2 layers, d=128).
"""
import os
import runpy

from research import models, objectives
from research.config import default_config

# The AdamW recipe shared with configs/text/.
_TEXT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'text',
                                    'mlm.py'))

MAX_LENGTH = 128
BYTE_VOCAB_SIZE = 260  # 256 bytes + [PAD], [CLS], [MASK], unknown


def encoder(**overrides):
  """The encoder shared by pretraining and fine-tuning (same parameter paths)."""
  return dict(frontend='text', vocab_size=BYTE_VOCAB_SIZE, pad_id=0, max_length=MAX_LENGTH,
              num_layers=2, num_heads=4, hidden_size=128, mlp_ratio=4.0,
              position_embedding='learned', **overrides)


def get_config():
  config = default_config()
  config.dataset.name = 'rotten_tomatoes'
  config.dataset.eval_splits = 'test'
  config.dataset.preprocess = f'tokenize_bytes(max_len={MAX_LENGTH})'
  config.objective = 'masked_lm'
  config.objective_args = objectives.args_config('masked_lm')
  config.model = models.model_config('transformer', head='masked_lm', dropout_rate=0.0,
                                     **encoder())
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_train_steps = 2000
  config.eval_every_steps = 500
  config.log_every_steps = 100
  config.checkpoint.every_steps = 500
  _TEXT['adamw'](config, learning_rate=1e-3, warmup_steps=200)
  return config
