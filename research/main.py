"""Command line: `python -m research.main --config=configs/mnist1d/cnn.py --workdir=DIR`.

Deliberately thin: flags in, one call to `training.train_and_evaluate`, a table out. All logic
lives in importable modules so notebooks and tests use the same code.
Override any config key with `--config.KEY=VALUE`, e.g. `--config.optimizer.learning_rate=3e-3`.

$RESEARCH_EXTRA_OVERRIDES adds overrides without editing the command, e.g.
`RESEARCH_EXTRA_OVERRIDES="--config.num_train_steps=20 --config.eval_every_steps=10"`: for
smoke tests of documented commands (tests/test_readme.py) and clusters that inject settings.
They come after the command line's, so they win; `research.reproduce` applies them to each run.
"""
from __future__ import annotations

import os
import re
import runpy
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from research import config as config_lib
from research import logs
from research.errors import ConfigError, one_line_errors
from research.training import hardware, preemption
from research.evaluation import reporting
from research import training

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/mnist1d/cnn.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for outputs (created if missing).')
flags.mark_flags_as_required(['config', 'workdir'])

_OVERRIDE = re.compile(r'^--config\.([A-Za-z0-9_.]+)(=|$)')
def _check_overrides(argv: list[str]) -> None:
  """Fails early, with the valid keys, on an override the config file does not define."""
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  overrides = [m.group(1) for m in map(_OVERRIDE.match, argv) if m]
  if not path or not overrides:
    return
  file, _, arg = path.partition(':')
  get_config = runpy.run_path(file)['get_config']
  config = get_config(arg) if arg else get_config()
  try:
    config_lib.check_override_keys(config, overrides)
  except KeyError as e:
    sys.exit(f'Error: {e.args[0]}')


@one_line_errors  # a user mistake (ConfigError): one line, no traceback
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logs.show_our_progress()
  try:
    results = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as e:
    logging.warning('%s', e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  if jax.process_index() == 0:  # one table per run, not one per process
    print(reporting.results_table(results, _CONFIG.value))
    print(f'Outputs in {_WORKDIR.value}: config.json, metrics.jsonl, results.json')


def run() -> None:
  hardware.enable_compilation_cache()
  try:
    sys.argv += config_lib.extra_overrides()
  except ConfigError as e:
    sys.exit(f'Error: {e}')
  _check_overrides(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
