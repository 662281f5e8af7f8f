"""Training: the Trainer and its periodic actions, pure steps, optimizer, checkpoints."""
from research.training.trainer import train_and_evaluate  # noqa: F401
