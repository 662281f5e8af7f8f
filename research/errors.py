"""Errors that mean "the user asked for something that cannot work", not "the code broke".

The command-line entry points print a `ConfigError` as one line (no traceback) and exit
with status 2; every other exception keeps its traceback. Raise it where a config value,
a flag, a path or a name given by the user is wrong, and say what is accepted.
"""
from __future__ import annotations


class ConfigError(ValueError):
  """A bad value given by the user; the message names it and what is accepted."""
