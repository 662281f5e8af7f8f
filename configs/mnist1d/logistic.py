"""MNIST-1D, logistic, with the paper's recipe: Adam 1e-2, batch 100, 6000 steps.

  python -m research.main --config=configs/mnist1d/logistic.py --workdir=runs/mnist1d_logistic
"""
from research import models
from research.config import default_config


def get_config():
  config = default_config()
  config.dataset.name = 'mnist1d'
  config.model = models.model_config('logistic')
  return config
