"""JAX/Flax research codebase: models, data, sharded training, checkpoints, evaluation."""
