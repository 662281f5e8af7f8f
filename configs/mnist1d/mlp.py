"""MNIST-1D, mlp, with the paper's recipe: Adam 1e-2, batch 100, 6000 steps.

  python -m research.main --config=configs/mnist1d/mlp.py --workdir=runs/mnist1d_mlp
"""
from research import models
from research.config import default_config


def get_config():
  config = default_config()
  config.dataset.name = 'mnist1d'
  config.model = models.model_config('mlp')
  return config
