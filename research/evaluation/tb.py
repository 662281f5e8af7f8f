"""TensorBoard scalars without TensorFlow, through `tensorboardX` (protobuf + numpy only).

Layout: one event directory per split (`<logdir>/train`, `<logdir>/test`, ...) with the
same tags in each (`loss`, `accuracy`, ...), so TensorBoard overlays train and eval
curves of a metric on one chart. View with `tensorboard --logdir <workdir>/tensorboard`
(tensorboard itself is not a dependency of this package).
"""
from __future__ import annotations

import glob
import importlib.util
import math
import os
import sys
import tempfile
from typing import Any

from research import paths

_INSTALL_HINT = ('TensorBoard event files need the `tensorboardX` package (pure Python, no '
                 'TensorFlow): pip install "tensorboardX>=2.6.5,<2.7".')


def _import_tensorboardx():
  """`import tensorboardX`, without the `import torch` its writer module attempts.

  tensorboardX imports torch, when installed, only to accept torch tensors; we hand it
  numpy. That import cost 2 s of a 12 s run (it is hidden from tensorboardX here, and
  importable as usual afterwards).
  """
  hide_torch = 'torch' not in sys.modules
  if hide_torch:
    sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
  finally:
    if hide_torch:
      del sys.modules['torch']
  return tensorboardX


def available() -> bool:
  return importlib.util.find_spec('tensorboardX') is not None


class ScalarWriter:
  """`write(step, split, metrics)` like `writers.MetricsLog`, into TensorBoard event files."""

  def __init__(self, logdir: str):
    try:
      self._summary_writer_cls = _import_tensorboardx().SummaryWriter
    except ImportError as e:
      raise ImportError(_INSTALL_HINT) from e
    self.logdir = logdir
    self._writers: dict[str, Any] = {}

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> int:
    """Writes the finite numeric entries of `metrics`; returns how many were written."""
    if split not in self._writers:
      self._writers[split] = self._summary_writer_cls(os.path.join(self.logdir, split))
    writer = self._writers[split]
    written = 0
    for tag, value in sorted(metrics.items()):
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      if not math.isfinite(value):
        continue
      writer.add_scalar(tag, float(value), global_step=int(step))
      written += 1
    return written

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}

  def __enter__(self) -> ScalarWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def write_scalars(metrics_jsonl_path: str, logdir: str) -> int:
  """Rewrites `logdir` from metrics.jsonl (idempotent); returns the number of scalars.

  Event files from an earlier call are removed first, so regenerating a report does not
  double every curve. Later records of a repeated (split, step) win, as in the plots.
  """
  from research.evaluation import plots  # pylint: disable=import-outside-toplevel

  series = plots.read_metrics(metrics_jsonl_path)
  if paths.is_remote(logdir):  # tensorboardX writes local files: write them, then upload
    for old in paths.path(logdir).glob('*/events.out.tfevents.*'):
      old.unlink()
    with tempfile.TemporaryDirectory(prefix='tensorboard_') as local:
      written = _write_series(series, local)
      paths.upload_tree(local, logdir)
    return written
  for old in glob.glob(os.path.join(logdir, '*', 'events.out.tfevents.*')):
    os.remove(old)
  return _write_series(series, logdir)


def _write_series(series: dict[str, dict[str, list[float]]], logdir: str) -> int:
  written = 0
  with ScalarWriter(logdir) as writer:
    for split, data in series.items():
      keys = [k for k in data if k != 'step']
      for i, step in enumerate(data['step']):
        written += writer.write(int(step), split, {k: data[k][i] for k in keys})
  return written
