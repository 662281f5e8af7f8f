"""Data: offline tfds builders, tfds sources, grain pipelines."""
