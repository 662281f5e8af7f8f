"""Log output of the command lines: this package's INFO lines, libraries' warnings only."""
from __future__ import annotations

import logging as pylogging
import os

from absl import logging


class _OnlyOurInfo(pylogging.Filter):
  """Keeps INFO lines from this package; libraries (Orbax, tfds, jax) only warn and up."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or f'{os.sep}research{os.sep}' in record.pathname


def show_our_progress() -> None:
  """INFO from `research`, WARNING and up from everything else (call once, in main)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OnlyOurInfo())
