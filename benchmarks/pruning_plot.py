"""Test accuracy against sparsity for pruned runs (reads each run's results.json).

    python -m benchmarks.pruning_plot --out=docs/pruning_mnist1d.png \\
        --runs='cnn=runs/c/cnn,runs/c/cnn_p50;mlp=runs/c/mlp,runs/c/mlp_p50'

A run without `pruning` in its results (a dense run) counts as 0% sparse; the sparsity
plotted is the measured fraction of zero weights among the pruned parameters.
"""
from __future__ import annotations

import argparse
import json
import os

from research.errors import ConfigError


def read_points(run_dirs: list[str]) -> list[tuple[float, float]]:
  points = []
  for run_dir in run_dirs:
    path = os.path.join(run_dir, 'results.json')
    if not os.path.exists(path):
      raise ConfigError(f'{path} does not exist: {run_dir!r} is not a finished run.')
    with open(path) as f:
      results = json.load(f)
    sparsity = results.get('pruning', {}).get('overall', 0.0)
    points.append((100 * sparsity, 100 * results['test']['accuracy']))
  return sorted(points)


def parse_runs(spec: str) -> dict[str, list[str]]:
  groups = {}
  for part in [p.strip() for p in spec.split(';') if p.strip()]:
    name, sep, dirs = part.partition('=')
    if not sep or not dirs:
      raise ConfigError(f"--runs entry {part!r} must be 'NAME=DIR,DIR,...'.")
    groups[name] = [d.strip() for d in dirs.split(',') if d.strip()]
  return groups


def main(argv: list[str] | None = None) -> dict[str, list[tuple[float, float]]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', required=True, help="'NAME=DIR,DIR;NAME=DIR,...'")
  parser.add_argument('--out', required=True, help='The PNG to write.')
  parser.add_argument('--title', default='MNIST-1D: magnitude pruning (global, cubic schedule)')
  args = parser.parse_args(argv)
  curves = {name: read_points(dirs) for name, dirs in parse_runs(args.runs).items()}
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, points in curves.items():
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker='o', label=name)
    print(name, ', '.join(f'{x:.0f}%: {y:.1f}' for x, y in points))
  ax.set_xlabel('sparsity of the pruned weights (%)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(args.title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  return curves


if __name__ == '__main__':
  from research.errors import one_line_errors
  one_line_errors(lambda argv: main(argv[1:]))(__import__('sys').argv)
