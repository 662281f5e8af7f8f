"""Reproduces a results table: every config x seed, then ours vs the paper.

  python -m research.reproduce --workdir=runs/mnist1d_table --seeds=0,1,2 \
      --configs=configs/mnist1d/logistic.py,configs/mnist1d/mlp.py,configs/mnist1d/cnn.py

A config may take an argument (`configs/text/classifier.py:reuters_r8+pretrained`; the run's
name is then `classifier-reuters_r8+pretrained`). Each run goes to WORKDIR/<name>/seed<k> (a
finished run is reused, an interrupted one resumes). The table is printed and written to WORKDIR/table.md. $RESEARCH_EXTRA_OVERRIDES
(`--config.KEY=VALUE ...`, as for research.main) applies to every run, e.g. to shrink steps.
"""
from __future__ import annotations

import os
import re
import runpy

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from research.evaluation import compare
from research import logs, paths, training
from research.training import hardware
from research import config as config_lib
from research.errors import ConfigError, one_line_errors

DEFAULT_CONFIGS = ('configs/mnist1d/logistic.py,configs/mnist1d/mlp.py,'
                   'configs/mnist1d/cnn.py,configs/mnist1d/transformer.py')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/mnist1d_table', 'Where the runs go.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds to run for each config.')
_CONFIGS = flags.DEFINE_list('configs', DEFAULT_CONFIGS.split(','), 'Config files.')


def apply_extra_overrides(config: ml_collections.ConfigDict) -> None:
  """Applies $RESEARCH_EXTRA_OVERRIDES to `config` in place, parsed as research.main parses it.

  (research.main appends them to its argv; its flags cannot be imported next to ours.)
  """
  args = config_lib.extra_overrides()
  keys = [re.match(r'^--config\.([A-Za-z0-9_.]+)=', arg) for arg in args]
  try:
    config_lib.check_override_keys(config, [key.group(1) for key in keys])
  except KeyError as e:
    raise ConfigError(e.args[0]) from None
  argv = ['research.reproduce', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', config, flag_values=flag_values, lock_config=False,
                                  sys_argv=argv)
  flag_values(argv)


def run_all(config_paths: list[str], seeds: list[int], workdir: str) -> list[str]:
  run_dirs = []
  for spec in config_paths:
    path, _, arg = spec.partition(':')  # 'configs/text/classifier.py:reuters_r8+pretrained'
    name = os.path.splitext(os.path.basename(path))[0] + (f'-{arg}' if arg else '')
    for seed in seeds:
      run_dir = os.path.join(workdir, name, f'seed{seed}')
      run_dirs.append(run_dir)
      if paths.exists(os.path.join(run_dir, 'results.json')):
        logging.info('Reusing finished run %s', run_dir)
        continue
      get_config = runpy.run_path(path)['get_config']
      config = get_config(arg) if arg else get_config()
      apply_extra_overrides(config)
      config.seed = seed
      config.progress_bar = False
      logging.info('Running %s seed %d -> %s', spec, seed, run_dir)
      training.train_and_evaluate(config, run_dir)
  return run_dirs


@one_line_errors
def main(argv: list[str]) -> None:
  del argv
  logs.show_our_progress()
  run_dirs = run_all(_CONFIGS.value, [int(s) for s in _SEEDS.value], _WORKDIR.value)
  groups, skipped = compare.load_runs(run_dirs)
  for warning in skipped:
    logging.warning('%s', warning)
  table = compare.markdown_table(groups)
  paths.write_text_atomic(os.path.join(_WORKDIR.value, 'table.md'), table + '\n')
  print(table)


if __name__ == '__main__':
  hardware.enable_compilation_cache()
  app.run(main)
