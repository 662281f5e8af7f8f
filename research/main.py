"""Command line: `python -m research.main --config=configs/mnist1d/cnn.py --workdir=DIR`.

Deliberately thin: flags in, one call to `train.train_and_evaluate`, a table out. All logic
lives in importable modules so notebooks and tests use the same code.
Override any config key with `--config.KEY=VALUE`, e.g. `--config.optimizer.learning_rate=3e-3`.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from research import reporting, train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/mnist1d/cnn.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for outputs (created if missing).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(reporting.results_table(results, _CONFIG.value))
  print(f'Outputs in {_WORKDIR.value}: config.json, metrics.jsonl, results.json')


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
