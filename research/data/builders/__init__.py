"""Offline tfds builders. Importing this package registers them with tfds."""
from research.data.builders import mnist1d  # noqa: F401  (registers 'mnist1d')
