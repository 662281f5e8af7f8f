"""5,000 real MNIST digits (4,000 train / 1,000 test), Vision Transformer.

  python -m research.main --config=configs/mnist_subset/vit.py --workdir=runs/mnist_subset_vit

Expected (seed 0): test accuracy 94.9%, 2.5 minutes on a 2-core CPU shared with other jobs.
7x7 patches of the 28x28x1 images give 16 tokens plus a class token: small enough to
train on a laptop CPU in minutes. For full MNIST (`--config.dataset.name=mnist`, same
shapes) use patch_size=4 and more steps.
"""
from research import models
from research.config import default_config


def get_config():
  config = default_config()
  config.dataset.name = 'mnist_subset'
  config.model = models.model_config(
      'transformer',
      frontend='image',
      patch_size=7,
      num_layers=4,
      num_heads=4,
      hidden_size=64,
      mlp_ratio=2.0,
      dropout_rate=0.1,
      position_embedding='learned',
      pooling='cls',
  )
  config.batch_size = 100
  config.num_train_steps = 2000
  config.eval_every_steps = 500
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 200
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = 1.0
  return config
