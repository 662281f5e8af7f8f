"""Our runs against the paper's table: mean ± std over seeds, and the gap in points.

  python -m research.compare runs/mnist1d_cnn_seed0 runs/mnist1d_cnn_seed1 ...
  python -m research.compare runs/                 # every run (results.json) below it
  python -m research.compare --glob 'runs/mnist1d_*'

Runs are pooled only when they are the same experiment: the same config.dataset.name,
config.model.name and the same config apart from the seed and the keys that change where a
run writes, how often it logs or checkpoints and how fast it goes (`experiment_config`).
When runs of one (dataset, model) have different configs (a 20-step smoke test, a
fine-tuned run, another learning rate), each config gets its own row, labelled by what
differs (`cnn [num_train_steps=20]`), and a warning on stderr says so. Runs without a finite
accuracy for the split (no results for it, or NaN from a diverged run) are left out, each
named in a warning. Rows are matched to `research.evaluation.references` by (dataset,
model). Std is the sample standard deviation (ddof=1) over runs; with one run it is not
shown. Gap = our mean - paper, in percentage points.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from research import paths as paths_lib
from research import writers
from research.evaluation import references

# (dataset, model), or (dataset, model, label) when that pair has runs of several configs
# and the label says which (e.g. 'num_train_steps=20').
Group = tuple[str, ...]

# Config keys that do not change what a run learns: runs differing only in these are one
# experiment. Also dropped: every path-like key (last part 'workdir' or ending in '_dir').
IGNORED_KEYS = frozenset({
    'seed', 'log_every_steps', 'progress_bar', 'write_report',
    'eval_batch_size',  # the last eval batch is padded and masked: same metrics
    'dataset.prefetch_threads', 'dataset.batches_per_chunk',  # speed only, same batches
})
IGNORED_BLOCKS = frozenset({'checkpoint', 'profile', 'distributed'})
_LABEL_KEYS = 3  # differing keys shown in a row label; the warning lists them all


def _format_ours(values_pct: Sequence[float]) -> str:
  mean = float(np.mean(values_pct))
  if len(values_pct) < 2:
    return f'{mean:.2f}'
  return f'{mean:.2f} ± {float(np.std(values_pct, ddof=1)):.2f}'


def _group_order(group: Group) -> tuple:
  order = {(r.dataset, r.model): i for i, r in enumerate(references.REFERENCES)}
  return (group[0], order.get(tuple(group[:2]), len(order)), group[1], group[2:])


def _flatten(config: Mapping[str, Any], prefix: str = '') -> Iterable[tuple[str, Any]]:
  for key, value in config.items():
    if isinstance(value, Mapping) and value:
      yield from _flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def experiment_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """A run's config.json as flat dotted keys, without the seed, paths, logging, checkpoint,
  profiling, multi-process and speed-only keys: what decides the result. A fine-tuning
  source counts only as `init_from: 'yes'` (the path differs per machine and per seed)."""
  out = {}
  for key, value in _flatten(config):
    last = key.rsplit('.', 1)[-1]
    if key == 'init_from.workdir':
      out['init_from'] = 'yes' if value else 'no'
    elif (key in IGNORED_KEYS or key.split('.', 1)[0] in IGNORED_BLOCKS or
          last == 'workdir' or last.endswith('_dir')):
      continue
    else:
      out[key] = value
  return out


def config_fingerprint(config: Mapping[str, Any]) -> str:
  """Equal for two runs exactly when their `experiment_config`s are equal."""
  text = json.dumps(experiment_config(config), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


_ABSENT = object()


def _show(value: Any) -> str:
  if value is _ABSENT:
    return '(absent)'
  return value if isinstance(value, str) else json.dumps(value, default=str)


def _variant_labels(configs: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
  """({fingerprint: row label}, [the keys whose values differ]) for one (dataset, model)."""
  keys = sorted({k for c in configs.values() for k in c})
  differing = [k for k in keys
               if len({_show(c.get(k, _ABSENT)) for c in configs.values()}) > 1]
  labels = {}
  for fp, c in configs.items():
    label = ', '.join(f'{k}={_show(c.get(k, _ABSENT))}' for k in differing[:_LABEL_KEYS])
    if len(differing) > _LABEL_KEYS:
      label += f', +{len(differing) - _LABEL_KEYS} more'
    labels[fp] = label
  for fp, label in labels.items():  # truncated labels can coincide: then tell them apart
    if sum(other == label for other in labels.values()) > 1:
      labels[fp] = f'{label} #{fp[:6]}'
  return labels, differing


def markdown_table(groups: dict[Group, list[float]], *, split: str = 'test',
                   include_unrun_references: bool = False) -> str:
  """Table rows from {(dataset, model): [accuracy in percent, one per run]}; a key
  (dataset, model, label) is a row for one config of several, named `model [label]`."""
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
    dataset, model, *variant = group
    values = groups[group]
    ref = references.lookup(dataset, model)
    name = f'{model} ({ref.display_name})' if ref and ref.display_name.lower() != model else model
    if variant and variant[0]:
      name += f' [{variant[0]}]'
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
    if paths_lib.isfile(os.path.join(path, 'results.json')):
      found.append(path)
      continue
    if paths_lib.is_remote(path):  # a bucket: one listing finds every results.json below
      found += [os.path.dirname(p) for p in paths_lib.files_under(path)
                if p.endswith('/results.json')]
      continue
    for root, dirs, files in os.walk(path):
      dirs.sort()
      if 'results.json' in files:
        found.append(root)
  return sorted(dict.fromkeys(p.rstrip('/') if paths_lib.is_remote(p) else os.path.normpath(p)
                             for p in found))


def _read_run(run_dir: str, split: str) -> tuple[dict[str, Any], float] | str:
  """(config, `split` accuracy in percent), or a warning saying why the run is left out."""
  try:
    # Keys added to the code since an older run was written count at their defaults.
    config = writers.with_new_defaults(
        json.loads(paths_lib.read_text(os.path.join(run_dir, 'config.json'))))
    results = json.loads(paths_lib.read_text(os.path.join(run_dir, 'results.json')))
  except (OSError, json.JSONDecodeError) as e:
    return f'{run_dir}: {e}'
  if not isinstance(results.get(split), dict) or 'accuracy' not in results[split]:
    available = sorted(k for k, v in results.items() if isinstance(v, dict) and 'accuracy' in v)
    return (f'skipped {run_dir}: no {split!r} accuracy in results.json '
            f'(splits with accuracy: {available}).')
  accuracy = results[split]['accuracy']
  if (isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or
      not math.isfinite(accuracy)):
    return (f'skipped {run_dir}: its {split!r} accuracy is {accuracy!r} (a diverged '
            'run?); it is not averaged in.')
  try:
    config['dataset']['name'], config['model']['name']
  except (KeyError, TypeError) as e:
    return f'skipped {run_dir}: config.json has no dataset.name / model.name ({e}).'
  return config, 100.0 * float(accuracy)


def load_runs(run_dirs: Iterable[str], split: str = 'test') -> tuple[dict[Group, list[float]],
                                                                        list[str]]:
  """({group: [accuracy % per run]}, [warnings]).

  A group is (dataset, model) when all of that pair's runs share one `experiment_config`;
  otherwise each config is its own group (dataset, model, label of what differs) and a
  warning says so. Runs without a finite `split` accuracy are skipped, with a warning each.
  """
  # (dataset, model) -> fingerprint -> (experiment config, [(run_dir, accuracy %)])
  by_pair: dict[tuple[str, str], dict[str, tuple[dict[str, Any], list[tuple[str, float]]]]] = {}
  skipped: list[str] = []
  for run_dir in run_dirs:
    run = _read_run(run_dir, split)
    if isinstance(run, str):
      skipped.append(run)
      continue
    config, accuracy = run
    pair = (config['dataset']['name'], config['model']['name'])
    fingerprint = config_fingerprint(config)
    variants = by_pair.setdefault(pair, {})
    variants.setdefault(fingerprint, (experiment_config(config), []))[1].append(
        (run_dir, accuracy))

  groups: dict[Group, list[float]] = {}
  warnings: list[str] = []
  for (dataset, model), variants in by_pair.items():
    if len(variants) == 1:
      (_, runs), = variants.values()
      groups[(dataset, model)] = [acc for _, acc in runs]
      continue
    labels, differing = _variant_labels({fp: c for fp, (c, _) in variants.items()})
    described = []
    for fp, (_, runs) in sorted(variants.items(), key=lambda item: labels[item[0]]):
      groups[(dataset, model, labels[fp])] = [acc for _, acc in runs]
      dirs = ', '.join(d for d, _ in runs[:3]) + (', ...' if len(runs) > 3 else '')
      described.append(f"[{labels[fp]}] {len(runs)} run{'s' * (len(runs) > 1)} ({dirs})")
    n_runs = sum(len(runs) for _, runs in variants.values())
    warnings.append(
        f'{dataset} / {model}: {n_runs} runs have {len(variants)} different configs '
        f'(they differ in {", ".join(differing)}), so they are not pooled into one mean; '
        f'one row each: {"; ".join(described)}.')
  return groups, skipped + warnings


# A preprocess op given a saved tokenizer (`tokenize_wordpiece(model=...)`) rather than
# training its own vocabulary on the run's data.
_GIVEN_TOKENIZER = re.compile(r'tokenize_\w+\(\s*model\s*=')


def _row_name(config: Mapping[str, Any]) -> str:
  """A run's row in the by-dataset table: its model, and whether it was fine-tuned from
  another run (`init_from`) or trained from scratch; a from-scratch run that reads a saved
  tokenizer (the pretraining's: the same encoder, only the weights fresh) is its own row."""
  init = config.get('init_from') or {}
  if init.get('workdir') or init.get('hf_dir'):
    source = 'pretrained, fine-tuned'
  elif _GIVEN_TOKENIZER.search((config.get('dataset') or {}).get('preprocess') or ''):
    source = 'from scratch, given tokenizer'
  else:
    source = 'from scratch'
  return f"{config['model']['name']} ({source})"


def by_dataset_table(run_dirs: Iterable[str], *, split: str = 'test') -> tuple[str, list[str]]:
  """(markdown table, warnings): one column per dataset, one row per method.

  The papers' rows for those datasets come first (`references.for_dataset`, in their
  order), then ours: a row per model and kind (from scratch, or fine-tuned from another
  run), mean ± std over the runs in a cell. Runs of one cell whose configs differ by more
  than the seed are not pooled: each config gets its own row, tagged with its fingerprint,
  and a warning."""
  warnings: list[str] = []
  # row name -> dataset -> config fingerprint -> [accuracy %]
  found: dict[str, dict[str, dict[str, list[float]]]] = {}
  for run_dir in run_dirs:
    run = _read_run(run_dir, split)
    if isinstance(run, str):
      warnings.append(run)
      continue
    config, accuracy = run
    found.setdefault(_row_name(config), {}).setdefault(config['dataset']['name'], {}) \
        .setdefault(config_fingerprint(config), []).append(accuracy)
  cells: dict[str, dict[str, list[float]]] = {}
  for name, by_dataset in found.items():
    for dataset, by_config in by_dataset.items():
      for fingerprint, values in by_config.items():
        row = name if len(by_config) == 1 else f'{name} [config {fingerprint[:6]}]'
        cells.setdefault(row, {})[dataset] = values
      if len(by_config) > 1:
        warnings.append(f'{dataset} / {name}: runs of {len(by_config)} different configs; '
                        'one row each, tagged with the config fingerprint.')
  # The papers' column order; datasets without a paper row after them.
  first_seen = {}
  for i, ref in enumerate(references.REFERENCES):
    first_seen.setdefault(ref.dataset, i)
  datasets = sorted({d for row in cells.values() for d in row},
                    key=lambda d: (first_seen.get(d, len(references.REFERENCES)), d))
  header = ['method'] + datasets
  lines = ['| ' + ' | '.join(header) + ' |', '|---|' + '---:|' * len(datasets)]
  citations: list[str] = []
  ref_rows: dict[str, dict[str, float]] = {}
  for dataset in datasets:
    for ref in references.for_dataset(dataset):
      ref_rows.setdefault(f'{ref.display_name} (paper)', {})[dataset] = ref.value
      if ref.citation not in citations:
        citations.append(ref.citation)
  for name, values in ref_rows.items():
    lines.append(f'| {name} | ' + ' | '.join(
        f'{values[d]:.2f}' if d in values else '-' for d in datasets) + ' |')
  for name in sorted(cells):
    row = cells[name]
    lines.append(f'| {name} | ' + ' | '.join(
        f'{_format_ours(row[d])} (n={len(row[d])})' if row.get(d) else '-'
        for d in datasets) + ' |')
  if citations:
    lines.append('')
    lines.extend(f'Paper: {c}' for c in citations)
  return '\n'.join(lines), warnings


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m research.compare',
      description='Compare runs (workdirs with config.json + results.json) with the '
                  'published numbers in research/references.py.')
  parser.add_argument('run_dirs', nargs='*', help='run workdirs, or folders that hold them')
  parser.add_argument('--glob', action='append', default=[],
                      help="a glob of run workdirs, e.g. 'runs/mnist1d_*' (repeatable)")
  parser.add_argument('--split', default='test', help='eval split to compare (default test)')
  parser.add_argument('--by-dataset', action='store_true',
                      help='one column per dataset, one row per method (the papers\' rows '
                           'first): the layout of text-classification tables')
  parser.add_argument('--all-references', action='store_true',
                      help="also list the paper's rows that no run reproduces (GRU, human)")
  args = parser.parse_args(argv)

  paths = list(args.run_dirs)
  for pattern in args.glob:
    paths.extend(paths_lib.glob(pattern))
  if not paths:
    parser.error('give at least one RUN_DIR or --glob PATTERN.')
  run_dirs = find_run_dirs(paths)
  if args.by_dataset:
    table, warnings = by_dataset_table(run_dirs, split=args.split)
    for warning in warnings:
      print(f'warning: {warning}', file=sys.stderr)
    if '(n=' not in table:
      print(f'No finished runs with {args.split!r} accuracy under {paths}.', file=sys.stderr)
      return 1
    print(table)
    return 0
  groups, skipped = load_runs(run_dirs, split=args.split)
  for warning in skipped:
    print(f'warning: {warning}', file=sys.stderr)
  if not groups:
    print(f'No finished runs (config.json + results.json with {args.split!r} accuracy) under '
          f'{paths}.', file=sys.stderr)
    return 1
  print(markdown_table(groups, split=args.split,
                       include_unrun_references=args.all_references))
  return 0


if __name__ == '__main__':
  sys.exit(main())
