"""Offline tfds builders. Importing this package registers them with tfds."""
from research.data.builders import mnist1d  # noqa: F401  (registers 'mnist1d')
from research.data.builders import mnist_subset  # noqa: F401  (registers 'mnist_subset')
from research.data.builders import sklearn_digits  # noqa: F401  (registers 'sklearn_digits')
