"""Offline tfds builders. Importing this package registers them with tfds.

A new offline dataset is one module here defining a `tfds.core.GeneratorBasedBuilder`
plus one line in `_MODULES` below; `OFFLINE_DATASETS` finds its name (and its configs' names).
"""
from __future__ import annotations

import importlib
import inspect

import tensorflow_datasets as tfds

# The registry: one module name per line of datasets. Importing a module registers its
# builders with tfds.
_MODULES = tuple(importlib.import_module(f'{__name__}.{name}') for name in (
    'mnist1d',
    'mnist_subset',
    'sklearn_digits',
    'text_corpora',
))


def _names(module) -> list[str]:
  out = []
  for cls in vars(module).values():
    if not (inspect.isclass(cls) and issubclass(cls, tfds.core.GeneratorBasedBuilder)
            and cls.__module__ == module.__name__ and not inspect.isabstract(cls)
            and not cls.__name__.startswith('_')):
      continue
    configs = [c.name for c in getattr(cls, 'BUILDER_CONFIGS', [])]
    default = getattr(cls, 'DEFAULT_CONFIG_NAME', None) or (configs[0] if configs else None)
    out.append(cls.name)  # the default config
    out += [f'{cls.name}/{c}' for c in configs if c != default]
  return out


# Every dataset that builds itself here without network, e.g. 'mnist1d', 'mnist1d/shuffled'.
OFFLINE_DATASETS: tuple[str, ...] = tuple(sorted(n for m in _MODULES for n in _names(m)))
