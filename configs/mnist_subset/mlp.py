"""5,000 real MNIST digits, the seed documents' dropout MLP: 784 -> 256 -> 128 -> 10.

  python -m research.main --config=configs/mnist_subset/mlp.py --workdir=runs/mnist_subset_mlp

ReLU and dropout 0.2 after each hidden layer, Adam 1e-3, batch 64, 10 epochs of the 4,000
training digits (625 steps). `python -m benchmarks.race` runs it against the same model as
a plain PyTorch loop with a DataLoader.
"""
from research import models
from research.config import default_config

EPOCHS, BATCH, TRAIN_EXAMPLES = 10, 64, 4000


def get_config():
  config = default_config()
  config.dataset.name = 'mnist_subset'
  config.model = models.model_config('mlp', hidden_sizes=(256, 128), residual=False,
                                     dropout_rate=0.2)
  config.batch_size = BATCH
  config.num_train_steps = -(-EPOCHS * TRAIN_EXAMPLES // BATCH)  # 625
  config.eval_every_steps = 0  # once, at the end, as the seed's loop does
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  return config
