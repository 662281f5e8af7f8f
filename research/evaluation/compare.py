"""Our runs against the paper's table: mean ± std over seeds, and the gap in points.

  python -m research.compare runs/mnist1d_cnn_seed0 runs/mnist1d_cnn_seed1 ...
  python -m research.compare runs/                 # every run (results.json) below it
  python -m research.compare --glob 'runs/mnist1d_*'

Runs are grouped by (config.dataset.name, config.model.name) and matched to
`research.evaluation.references`. Std is the sample standard deviation (ddof=1) over runs; with one
run it is not shown. Gap = our mean - paper, in percentage points.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from research.evaluation import references

Group = tuple[str, str]  # (dataset, model)


def _format_ours(values_pct: Sequence[float]) -> str:
  mean = float(np.mean(values_pct))
  if len(values_pct) < 2:
    return f'{mean:.2f}'
  return f'{mean:.2f} ± {float(np.std(values_pct, ddof=1)):.2f}'


def _group_order(group: Group) -> tuple:
  order = {(r.dataset, r.model): i for i, r in enumerate(references.REFERENCES)}
  return (group[0], order.get(group, len(order)), group[1])


def markdown_table(groups: dict[Group, list[float]], *, split: str = 'test',
                   include_unrun_references: bool = False) -> str:
  """Table rows from {(dataset, model): [accuracy in percent, one per run]}."""
  groups = dict(groups)
  if include_unrun_references:
    for dataset in sorted({d for d, _ in groups}):
      for ref in references.for_dataset(dataset):
        groups.setdefault((ref.dataset, ref.model), [])
  lines = [f'| dataset | model | ours: {split} accuracy % (mean ± std) | n | paper % | '
           'gap (points) |',
           '|---|---|---:|---:|---:|---:|']
  citations: list[str] = []
  for group in sorted(groups, key=_group_order):
    dataset, model = group
    values = groups[group]
    ref = references.lookup(dataset, model)
    name = f'{model} ({ref.display_name})' if ref and ref.display_name.lower() != model else model
    ours = _format_ours(values) if values else '-'
    paper = f'{ref.value:.1f}' if ref else '-'
    gap = f'{float(np.mean(values)) - ref.value:+.2f}' if ref and values else '-'
    lines.append(f'| {dataset} | {name} | {ours} | {len(values)} | {paper} | {gap} |')
    if ref and ref.citation not in citations:
      citations.append(ref.citation)
  if citations:
    lines.append('')
    lines.extend(f'Paper: {c}' for c in citations)
  return '\n'.join(lines)


def comparison_table(results_by_model: dict[str, list[float]], *, dataset: str = 'mnist1d',
                     unit: str = 'fraction', split: str = 'test',
                     include_unrun_references: bool = False) -> str:
  """Markdown table from {model name: [test accuracy per run]} for one dataset.

  unit='fraction' (as results.json stores accuracy, e.g. 0.923) or 'percent' (92.3).
  """
  if unit not in ('fraction', 'percent'):
    raise ValueError(f"unit must be 'fraction' or 'percent', got {unit!r}.")
  scale = 100.0 if unit == 'fraction' else 1.0
  groups: dict[Group, list[float]] = {}
  for model, values in results_by_model.items():
    values = [float(v) for v in values]
    if unit == 'fraction' and any(v > 1.0 for v in values):
      raise ValueError(f'Accuracies for {model!r} exceed 1 ({values}): these look like '
                       "percentages; pass unit='percent'.")
    groups[(dataset, model)] = [v * scale for v in values]
  return markdown_table(groups, split=split, include_unrun_references=include_unrun_references)


def find_run_dirs(paths: Iterable[str]) -> list[str]:
  """Each path itself if it holds results.json, else every directory below it that does."""
  found: list[str] = []
  for path in paths:
    if os.path.isfile(os.path.join(path, 'results.json')):
      found.append(path)
      continue
    for root, dirs, files in os.walk(path):
      dirs.sort()
      if 'results.json' in files:
        found.append(root)
  return sorted(dict.fromkeys(os.path.normpath(p) for p in found))


def load_runs(run_dirs: Iterable[str], split: str = 'test') -> tuple[dict[Group, list[float]],
                                                                        list[str]]:
  """({(dataset, model): [accuracy % per run]}, [warnings for runs that were skipped])."""
  groups: dict[Group, list[float]] = {}
  skipped: list[str] = []
  for run_dir in run_dirs:
    try:
      with open(os.path.join(run_dir, 'config.json')) as f:
        config = json.load(f)
      with open(os.path.join(run_dir, 'results.json')) as f:
        results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      skipped.append(f'{run_dir}: {e}')
      continue
    if split not in results or 'accuracy' not in results.get(split, {}):
      available = sorted(k for k, v in results.items() if isinstance(v, dict) and 'accuracy' in v)
      skipped.append(f'{run_dir}: no {split!r} accuracy in results.json '
                     f'(splits with accuracy: {available}).')
      continue
    group = (config['dataset']['name'], config['model']['name'])
    groups.setdefault(group, []).append(100.0 * float(results[split]['accuracy']))
  return groups, skipped


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m research.compare',
      description='Compare runs (workdirs with config.json + results.json) with the '
                  'published numbers in research/references.py.')
  parser.add_argument('run_dirs', nargs='*', help='run workdirs, or folders that hold them')
  parser.add_argument('--glob', action='append', default=[],
                      help="a glob of run workdirs, e.g. 'runs/mnist1d_*' (repeatable)")
  parser.add_argument('--split', default='test', help='eval split to compare (default test)')
  parser.add_argument('--all-references', action='store_true',
                      help="also list the paper's rows that no run reproduces (GRU, human)")
  args = parser.parse_args(argv)

  paths = list(args.run_dirs)
  for pattern in args.glob:
    paths.extend(sorted(glob.glob(pattern)))
  if not paths:
    parser.error('give at least one RUN_DIR or --glob PATTERN.')
  run_dirs = find_run_dirs(paths)
  groups, skipped = load_runs(run_dirs, split=args.split)
  for warning in skipped:
    print(f'skipped {warning}', file=sys.stderr)
  if not groups:
    print(f'No finished runs (config.json + results.json with {args.split!r} accuracy) under '
          f'{paths}.', file=sys.stderr)
    return 1
  print(markdown_table(groups, split=args.split,
                       include_unrun_references=args.all_references))
  return 0


if __name__ == '__main__':
  sys.exit(main())
