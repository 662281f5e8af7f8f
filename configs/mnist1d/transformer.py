"""MNIST-1D, Transformer encoder: each of the 40 values is a token (Dense 1->D).

  python -m research.main --config=configs/mnist1d/transformer.py --workdir=runs/mnist1d_transformer

No Transformer row exists in the MNIST-1D papers (MLP 68%, CNN 94%); this config is ours.
"""
from research import models
from research.config import default_config


def get_config():
  config = default_config()
  config.dataset.name = 'mnist1d'
  config.model = models.model_config(
      'transformer',
      frontend='features',
      num_layers=3,
      num_heads=4,
      hidden_size=64,
      mlp_ratio=2.0,
      dropout_rate=0.1,
      position_embedding='learned',
      pooling='cls',
  )
  config.batch_size = 100
  config.num_train_steps = 4000
  config.eval_every_steps = 1000
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 200
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = 1.0
  return config
