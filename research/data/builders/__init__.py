"""Offline tfds builders. Importing this package registers them with tfds."""
from research.data.builders import mnist1d  # noqa: F401  (registers 'mnist1d')
from research.data.builders import mnist_subset  # noqa: F401  (registers 'mnist_subset')
from research.data.builders import sklearn_digits  # noqa: F401  (registers 'sklearn_digits')
# registers 'newsgroups20', 'reuters_r52', 'reuters_r8', 'rotten_tomatoes'
from research.data.builders import text_corpora  # noqa: F401
