"""Errors that mean "the user asked for something that cannot work", not "the code broke".

The command-line entry points print a `ConfigError` as one line (no traceback) and exit
with status 2; every other exception keeps its traceback. Raise it where a config value,
a flag, a path or a name given by the user is wrong, and say what is accepted.
"""
from __future__ import annotations

import difflib
import functools
import sys
from typing import Callable, TypeVar

T = TypeVar('T')


class ConfigError(ValueError):
  """A bad value given by the user; the message names it and what is accepted."""


def lookup(table: dict[str, T], name: str, kind: str) -> T:
  """`table[name]`, or a ConfigError listing the available names and the closest one."""
  if name in table:
    return table[name]
  close = difflib.get_close_matches(name, table, n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  raise ConfigError(f'Unknown {kind} {name!r}; available: {sorted(table)}.{hint}')


def one_line_errors(main: Callable) -> Callable:
  """Wraps a command-line `main`: a ConfigError is printed as `Error: ...` on stderr and
  exits with status 2; any other exception keeps its traceback."""
  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except ConfigError as e:
      print(f'Error: {e}', file=sys.stderr)
      sys.exit(2)
  return wrapped
