"""A run's report from its workdir: report.md, plots/*.png and tensorboard/ event files.

  python -m research.report WORKDIR      # (re)generate; train.py calls write_report at the end

Reads only files (config.json, results.json, metrics.jsonl) and imports no JAX, so a
report can be rebuilt for any finished run, on any machine.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import logging

from research import paths
from research.evaluation import compare, plots, references, tb

def eval_splits(results: dict[str, Any]) -> list[str]:
  """The eval splits in results.json: dict entries with a loss, other than 'train' (the
  training loop's own running metrics)."""
  return [k for k, v in results.items() if k != 'train' and isinstance(v, dict) and 'loss' in v]


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
  """`value` formatted (scaled first, e.g. x100 for percent), or '-' when missing."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return '-'
  if fmt.endswith('d'):
    return format(int(round(value)), fmt)
  return format(value * scale, fmt)


def _get(config: dict[str, Any], dotted: str) -> Any:
  node: Any = config
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


# (results key, column header, format, scale); a column appears when any split has the key.
_COLUMNS = (
    ('loss', 'loss', '.4f', 1.0),
    ('accuracy', 'accuracy %', '.2f', 100.0),
    ('top_5_accuracy', 'top-5 %', '.2f', 100.0),
    ('macro_f1', 'macro F1', '.4f', 1.0),
    ('ece', 'ECE', '.4f', 1.0),
    ('masked_accuracy', 'masked accuracy %', '.2f', 100.0),
    ('perplexity', 'perplexity', '.3f', 1.0),
    ('num_examples', 'examples', 'd', 1.0),
    ('num_tokens', 'tokens', ',d', 1.0),
)


def _metrics_table(results: dict[str, Any], config: dict[str, Any]) -> list[str]:
  rows: list[tuple[str, dict[str, Any]]] = []
  train = results.get('train')
  if isinstance(train, dict) and train:
    every = _get(config, 'log_every_steps')
    rows.append((f'train (mean of last {every} steps)' if every else 'train', train))
  rows += [(split, results[split]) for split in eval_splits(results)]
  columns = [c for c in _COLUMNS if any(c[0] in m for _, m in rows)]
  lines = ['| split | ' + ' | '.join(c[1] for c in columns) + ' |',
           '|---|' + '---:|' * len(columns)]
  for label, m in rows:
    cells = [_num(m.get(key), fmt, scale) for key, _, fmt, scale in columns]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return lines


def _facts_table(results: dict[str, Any], config: dict[str, Any]) -> list[str]:
  facts = [
      ('dataset', _get(config, 'dataset.name')),
      ('model', _get(config, 'model.name')),
      ('seed', _get(config, 'seed')),
      ('steps', results.get('steps')),
      ('parameters', _num(results.get('num_params'), ',d')),
      ('batch size', _get(config, 'batch_size')),
      ('optimizer', _get(config, 'optimizer.name')),
      ('learning rate', _get(config, 'optimizer.learning_rate')),
      ('schedule', _get(config, 'optimizer.schedule')),
      ('devices', f"{results['devices']} × {results.get('platform', '?')}"
       if 'devices' in results else None),
      ('processes', results.get('processes')),
      ('resumed from step', results.get('resumed_from_step') or None),
      ('best checkpoint step', results.get('best_checkpoint_step')),
      ('wall time', _num(results.get('wall_time_s'), '.1f') + ' s'
       if 'wall_time_s' in results else None),
      ('compile time', _num(results.get('compile_time_s'), '.1f') + ' s'
       if 'compile_time_s' in results else None),
      ('train throughput', _num(results.get('train_examples_per_s'), ',.0f') + ' examples/s'
       if 'train_examples_per_s' in results else None),
  ]
  lines = ['| | |', '|---|---|']
  lines += [f'| {name} | {value} |' for name, value in facts if value is not None]
  return lines


def _per_class_table(metrics: dict[str, Any], class_names: Sequence[str]) -> list[str]:
  per_class = metrics['per_class']
  lines = ['| class | precision | recall | F1 | support |', '|---|---:|---:|---:|---:|']
  for i, name in enumerate(class_names):
    lines.append(f"| {name} | {per_class['precision'][i]:.4f} | {per_class['recall'][i]:.4f} | "
                 f"{per_class['f1'][i]:.4f} | {per_class['support'][i]} |")
  return lines


def _read_json(path: str) -> dict[str, Any]:
  try:
    return json.loads(paths.read_text(path))
  except FileNotFoundError:
    return {}


def write_report(workdir: str, *, class_names: Sequence[str] | None = None,
                 tensorboard: bool = True) -> str:
  """Writes workdir/report.md, workdir/plots/*.png and workdir/tensorboard/; returns report.md.

  results.json is required; config.json and metrics.jsonl are used when present.
  Class names come from the argument, else results.json's 'class_names', else 0..K-1.
  TensorBoard files are skipped, with a warning, if tensorboardX is not installed.
  """
  results_path = os.path.join(workdir, 'results.json')
  if not paths.isfile(results_path):
    raise FileNotFoundError(f'No results.json in {workdir!r}: the run has not finished '
                            '(train_and_evaluate writes it at the end).')
  results = _read_json(results_path)
  config = _read_json(os.path.join(workdir, 'config.json'))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  plot_dir = os.path.join(workdir, 'plots')
  paths.makedirs(plot_dir)
  dataset, model = _get(config, 'dataset.name'), _get(config, 'model.name')
  if class_names is None and isinstance(results.get('class_names'), list):
    class_names = [str(c) for c in results['class_names']]
  splits = eval_splits(results)

  # ---- Figures ----
  figures: list[tuple[str, str]] = []
  has_curves = paths.isfile(metrics_path) and paths.path(metrics_path).stat().length > 0
  if has_curves:
    plots.learning_curves(metrics_path, os.path.join(plot_dir, 'learning_curves.png'))
    figures.append(('learning curves', 'plots/learning_curves.png'))
  for split in splits:
    matrix = results[split].get('confusion_matrix')
    if matrix:
      names = list(class_names) if class_names is not None else [str(i) for i in range(len(matrix))]
      plots.confusion_matrix_plot(matrix, names, os.path.join(plot_dir, f'confusion_{split}.png'),
                                  title=f'{split} confusion matrix')
      figures.append((f'confusion matrix: {split}', f'plots/confusion_{split}.png'))
    calibration = results[split].get('calibration')
    if calibration:
      plots.reliability_diagram(calibration, os.path.join(plot_dir, f'reliability_{split}.png'),
                                title=f'{split} reliability (ECE {results[split]["ece"]:.4f})')
      figures.append((f'reliability: {split}', f'plots/reliability_{split}.png'))

  # ---- TensorBoard ----
  tb_note = None
  if tensorboard and has_curves:
    if tb.available():
      n = tb.write_scalars(metrics_path, os.path.join(workdir, 'tensorboard'))
      tb_note = (f'TensorBoard: {n} scalars in `tensorboard/` '
                 f'(`tensorboard --logdir {workdir}/tensorboard`).')
    else:
      logging.warning('Skipping TensorBoard files: tensorboardX is not installed.')

  # ---- report.md ----
  title = (f'{dataset} / {model}' if dataset and model
           else os.path.basename(paths.absolute(workdir)))
  lines = [f'# Run report: {title}', '', f'Workdir: `{paths.absolute(workdir)}`', '',
           '## Metrics', '']
  lines += _metrics_table(results, config)
  ref = references.lookup(dataset, model) if dataset and model else None
  if ref and ref.split in splits and ref.metric in results[ref.split]:
    lines += ['', '## Compared with the paper', '',
              compare.markdown_table({(dataset, model): [100.0 * results[ref.split][ref.metric]]},
                                     split=ref.split)]
    if ref.note:
      lines += ['', f'Note: {ref.note}']
  lines += ['', '## Run', ''] + _facts_table(results, config)
  if figures:
    lines += ['', '## Figures', '']
    for caption, path in figures:
      lines += [f'![{caption}]({path})', '']
  if tb_note:
    lines += [tb_note]
  for split in splits:
    metrics = results[split]
    if 'per_class' in metrics:
      k = len(metrics['per_class']['support'])
      names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
      lines += ['', f'## Per class: {split}', '',
                f"macro F1 {metrics['macro_f1']:.4f}, weighted F1 {metrics['weighted_f1']:.4f}, "
                f"micro F1 {metrics['micro_f1']:.4f}", '']
      lines += _per_class_table(metrics, names)
  if config:
    lines += ['', '## Config', '', '<details><summary>config.json</summary>', '', '```json',
              json.dumps(config, indent=2, sort_keys=True), '```', '', '</details>']
  report_path = os.path.join(workdir, 'report.md')
  paths.write_text_atomic(report_path, '\n'.join(lines).rstrip() + '\n')
  return report_path


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if len(argv) != 1 or argv[0].startswith('-'):
    print('usage: python -m research.report WORKDIR', file=sys.stderr)
    return 2
  print(write_report(argv[0]))
  return 0


if __name__ == '__main__':
  sys.exit(main())
