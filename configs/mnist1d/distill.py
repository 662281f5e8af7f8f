"""MNIST-1D: the paper's MLP taught by a finished run (the CNN), the paper's recipe otherwise.

  python -m research.main --config=configs/mnist1d/cnn.py --workdir=runs/mnist1d_cnn
  python -m research.main --config=configs/mnist1d/distill.py --workdir=runs/mnist1d_distill \\
      --config.objective_args.teacher=runs/mnist1d_cnn

loss = alpha * T^2 * soft CE(teacher / T, student / T) + (1 - alpha) * hard CE
(research/objectives/distillation.py); temperature and alpha are objective_args.
"""
from research import models, objectives
from research.config import default_config


def get_config():
  config = default_config()
  config.dataset.name = 'mnist1d'
  config.model = models.model_config('mlp')
  config.objective = 'distillation'
  config.objective_args = objectives.args_config('distillation', temperature=4.0, alpha=0.9)
  return config
