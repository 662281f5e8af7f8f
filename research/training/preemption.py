"""SIGTERM/SIGINT become a request to stop after the current step, save, and exit.

TPU VMs and spot GPUs send SIGTERM some seconds before they go away. The trainer polls
`should_stop()` after every step; with several processes they agree (any one asked ->
all stop at the same step) through one small all-gather.
"""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

# Exit code of a run stopped by SIGTERM/SIGINT after saving (EX_TEMPFAIL: "try again").
# A scheduler that sees it should simply relaunch the same command: the run resumes.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """Raised by the trainer after it saved the state at `step` because it was asked to stop."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'Stopped by {signal_name} after step {step}; the checkpoint at step '
                     f'{step} is complete. Relaunch the same command to resume.')
    self.step = step
    self.signal_name = signal_name


class PreemptionWatcher:
  """Installs SIGTERM/SIGINT handlers for the duration of a `with` block."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self) -> 'PreemptionWatcher':
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook runners): no handlers
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name

  def should_stop(self) -> bool:
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    flags = multihost_utils.process_allgather(np.array([local], dtype=np.int32))
    if flags.any() and self.signal_name is None:
      self.signal_name = 'SIGTERM (another process)'
    return bool(flags.any())
