"""Command line: when did a run's metric cross given levels, and its curves on a log axis.

  python -m research.curves runs/grokking --thresholds=0.5,0.9,0.99 --out=docs/grokking.png

Prints, per split in metrics.jsonl (train, test, ...), the first logged step at which
`--metric` reached each threshold, and draws the learning curves with a logarithmic step
axis. Reads only files; imports no JAX.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from research.evaluation import plots


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m research.curves', description=__doc__.split('\n')[0])
  parser.add_argument('workdir', help='a run directory with metrics.jsonl')
  parser.add_argument('--metric', default='accuracy')
  parser.add_argument('--thresholds', default='0.5,0.9,0.99',
                      help='comma-separated levels, e.g. 0.5,0.9,0.99')
  parser.add_argument('--out', default='', help='PNG to write (default WORKDIR/plots/curves_log.png)')
  args = parser.parse_args(argv)
  metrics_path = os.path.join(args.workdir, 'metrics.jsonl')
  if not os.path.isfile(metrics_path):
    print(f'Error: no metrics.jsonl in {args.workdir!r}: is it a run directory?', file=sys.stderr)
    return 2
  try:
    thresholds = [float(t) for t in args.thresholds.split(',') if t.strip()]
  except ValueError:
    print(f'Error: --thresholds takes comma-separated numbers, got {args.thresholds!r}.',
          file=sys.stderr)
    return 2
  series = plots.read_metrics(metrics_path)
  print(f'| split | ' + ' | '.join(f'first step {args.metric} >= {t:g}' for t in thresholds) + ' |')
  print('|---|' + '---:|' * len(thresholds))
  for split in sorted(series, key=lambda s: (s != 'train', s)):
    if args.metric not in series[split]:
      continue
    crossed = plots.first_crossings(series[split], args.metric, thresholds)
    print(f'| {split} | ' + ' | '.join('never' if crossed[t] is None else f'{crossed[t]:,}'
                                       for t in thresholds) + ' |')
  out = args.out or os.path.join(args.workdir, 'plots', 'curves_log.png')
  plots.learning_curves(metrics_path, out, log_x=True)
  print(f'Curves: {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
