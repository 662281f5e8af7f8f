"""MNIST-1D, cnn, with the paper's recipe: Adam 1e-2, batch 100, 6000 steps.

  python -m research.main --config=configs/mnist1d/cnn.py --workdir=runs/mnist1d_cnn
"""
from research import models
from research.config import default_config


def get_config():
  config = default_config()
  config.dataset.name = 'mnist1d'
  config.model = models.model_config('cnn')
  return config
