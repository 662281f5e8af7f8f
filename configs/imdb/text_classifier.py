"""IMDB reviews sentiment (2 classes), Transformer encoder over byte-level tokens.

  python -m research.main --config=configs/imdb/text_classifier.py --workdir=runs/imdb_tx

Needs `imdb_reviews` prepared (network, or a data_dir where it was downloaded). Inputs
are token ids `x_BxL` (L = max_length = 512) from the byte tokenizer op
(`tokenize_bytes`, `research.data.tokenizers.ByteTokenizer`: vocab 260, pad id 0); its
`input_mask` reaches the encoder as the attention and pooling mask. The model prepends
its own learned class token, so the tokenizer adds no [CLS] id. Sized for an accelerator: on a CPU, shrink it
(`--config.model.num_layers=2 --config.model.hidden_size=64`).
"""
from research import models
from research.config import default_config

MAX_LENGTH = 512
BYTE_VOCAB_SIZE = 260  # 256 bytes + [PAD], [CLS], [MASK], unknown


def get_config():
  config = default_config()
  config.dataset.name = 'imdb_reviews'
  config.dataset.train_split = 'train'
  config.dataset.eval_splits = 'test'
  config.dataset.preprocess = f'tokenize_bytes(max_len={MAX_LENGTH})'
  config.model = models.model_config(
      'transformer',
      frontend='text',
      vocab_size=BYTE_VOCAB_SIZE,
      pad_id=0,
      max_length=MAX_LENGTH,
      num_layers=4,
      num_heads=4,
      hidden_size=128,
      mlp_ratio=4.0,
      dropout_rate=0.1,
      position_embedding='learned',
      pooling='cls',
  )
  config.batch_size = 64
  config.eval_batch_size = 500
  config.num_train_steps = 5000
  config.eval_every_steps = 1000
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 5e-4
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 500
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = 1.0
  return config
