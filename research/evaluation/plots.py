"""PNG plots of a run: learning curves, confusion matrices, reliability diagrams.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas, never
through pyplot: no display is needed, and importing this module does not change the
backend of a notebook that uses it.
"""
from __future__ import annotations

import collections
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from research import paths

_DPI = 120


def _save(fig: Figure, out_png: str) -> str:
  """Renders into memory, then writes: `out_png` may be a `gs://` URI."""
  paths.makedirs(os.path.dirname(paths.absolute(out_png)))
  FigureCanvasAgg(fig)
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=_DPI, bbox_inches='tight')
  paths.write_bytes_atomic(out_png, buffer.getvalue())
  return out_png


def read_metrics(metrics_jsonl_path: str) -> dict[str, dict[str, list[float]]]:
  """{split: {'step': [...], key: [...]}} from metrics.jsonl, sorted by step.

  A resumed run appends the steps it repeats after a restore; the last record of a
  (split, step) wins, so curves never zigzag back in time.
  """
  latest: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
  text = paths.read_text(metrics_jsonl_path)  # may be a gs:// object
  for line_number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{metrics_jsonl_path}:{line_number} is not JSON ({e.msg}).') from e
    latest[record['split']][int(record['step'])] = record
  out: dict[str, dict[str, list[float]]] = {}
  for split, by_step in latest.items():
    steps = sorted(by_step)
    keys = sorted({k for r in by_step.values() for k, v in r.items()
                   if k not in ('step', 'split') and isinstance(v, (int, float))})
    series = {'step': [float(s) for s in steps]}
    for key in keys:
      series[key] = [float(by_step[s].get(key, np.nan)) for s in steps]
    out[split] = series
  return out


def first_crossings(series: dict[str, list[float]], key: str,
                    thresholds: Sequence[float]) -> dict[float, int | None]:
  """{threshold: the first logged step whose `key` is >= threshold (None: never)}."""
  out = {}
  for threshold in thresholds:
    out[threshold] = next((int(step) for step, value in zip(series['step'], series.get(key, []))
                           if value >= threshold), None)
  return out


def learning_curves(metrics_jsonl_path: str, out_png: str,
                    keys: Sequence[str] = ('loss', 'accuracy'), log_x: bool = False) -> str:
  """One panel per key (loss, accuracy) with one line per split (train, test, ...);
  `log_x` for runs whose interesting part spans decades of steps (grokking)."""
  series = read_metrics(metrics_jsonl_path)
  if not series:
    raise ValueError(f'{metrics_jsonl_path} holds no records to plot.')
  fig = Figure(figsize=(5 * len(keys), 3.8))
  axes = fig.subplots(1, len(keys), squeeze=False)[0]
  # train first, then eval splits in name order: stable colours across runs.
  splits = sorted(series, key=lambda s: (s != 'train', s))
  for ax, key in zip(axes, keys):
    for split in splits:
      data = series[split]
      if key not in data:
        continue
      style = dict(linewidth=1.2, alpha=0.8) if split == 'train' else dict(marker='o',
                                                                          markersize=3)
      ax.plot(data['step'], data[key], label=split, **style)
    ax.set_xlabel('step')
    if log_x:
      ax.set_xscale('log')
    ax.set_ylabel(key)
    ax.set_title(key)
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend()
  return _save(fig, out_png)


def confusion_matrix_plot(matrix: Sequence[Sequence[float]], class_names: Sequence[str] | None,
                          out_png: str, title: str = 'confusion matrix') -> str:
  """Counts per (true, predicted) pair; colour is the row-normalised rate (recall)."""
  counts = np.asarray(matrix, np.float64)
  if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
    raise ValueError(f'confusion matrix must be square, got shape {counts.shape}.')
  k = counts.shape[0]
  names = [str(c) for c in (class_names if class_names is not None else range(k))]
  if len(names) != k:
    raise ValueError(f'{len(names)} class names for a {k}x{k} confusion matrix.')
  rows = counts.sum(axis=1, keepdims=True)
  rates = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)

  size = min(3 + 0.45 * k, 20)
  fig = Figure(figsize=(size + 1, size))
  ax = fig.subplots()
  image = ax.imshow(rates, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of true class')
  tick_every = max(1, k // 30)  # keep labels legible for many classes
  ticks = np.arange(0, k, tick_every)
  ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if k > 10 else 0)
  ax.set_yticks(ticks, [names[i] for i in ticks])
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(f'{title} ({int(counts.sum())} examples)')
  if k <= 30:
    for i in range(k):
      for j in range(k):
        if counts[i, j]:
          ax.text(j, i, f'{int(counts[i, j])}', ha='center', va='center', fontsize=8,
                  color='white' if rates[i, j] > 0.5 else 'black')
  return _save(fig, out_png)


def reliability_diagram(calibration: dict[str, Sequence[float]], out_png: str,
                        title: str = 'reliability') -> str:
  """Accuracy vs confidence per ECE bin (from `metrics.summarize(...)['calibration']`)."""
  count = np.asarray(calibration['count'], np.float64)
  accuracy = np.asarray(calibration['accuracy'], np.float64)
  confidence = np.asarray(calibration['confidence'], np.float64)
  num_bins = len(count)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  used = count > 0
  fig = Figure(figsize=(4.5, 4.5))
  ax = fig.subplots()
  ax.bar(edges[:-1][used], accuracy[used], width=1.0 / num_bins, align='edge',
         edgecolor='black', alpha=0.7, label='accuracy')
  ax.plot(confidence[used], confidence[used], 'r.', label='mean confidence')
  ax.plot([0, 1], [0, 1], 'k--', linewidth=0.8, label='perfect calibration')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('confidence')
  ax.set_ylabel('accuracy')
  ax.set_title(title)
  ax.legend(loc='upper left')
  return _save(fig, out_png)
