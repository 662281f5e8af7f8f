"""Reproduces a results table: every config x seed, then ours vs the paper.

  python -m research.reproduce --workdir=runs/mnist1d_table --seeds=0,1,2 \
      --configs=configs/mnist1d/logistic.py,configs/mnist1d/mlp.py,configs/mnist1d/cnn.py

A config may take an argument (`configs/text/classifier.py:reuters_r8+pretrained`; the run's
name is then `classifier-reuters_r8+pretrained`). Each run goes to WORKDIR/<name>/seed<k>: a
finished run is reused and an interrupted one resumes, but only when its config.json holds
the same recipe; otherwise the command stops and names what changed (an edited config file
would else be reported with the old runs' numbers). The table is printed and written to
WORKDIR/table.md. $RESEARCH_EXTRA_OVERRIDES
(`--config.KEY=VALUE ...`, as for research.main) applies to every run, e.g. to shrink steps.

`--workers=N` runs N at a time, each in its own process pinned to its share of this
process's CPUs (on a CPU host, two one-core runs beat one two-core run: small models do
not scale across cores). Keep 1 on an accelerator: the runs would share the device.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import json
import multiprocessing
import os
import re
import runpy
import signal
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from research.evaluation import compare
from research import logs, models, paths, training
from research.models import hf_bert
from research.training import hardware, preemption
from research import config as config_lib
from research.config import default_config
from research.errors import ConfigError, one_line_errors

DEFAULT_CONFIGS = ('configs/mnist1d/logistic.py,configs/mnist1d/mlp.py,'
                   'configs/mnist1d/cnn.py,configs/mnist1d/transformer.py')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/mnist1d_table', 'Where the runs go.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds to run for each config.')
_CONFIGS = flags.DEFINE_list('configs', DEFAULT_CONFIGS.split(','), 'Config files.')
_WORKERS = flags.DEFINE_integer('workers', 1, 'Runs at a time, each pinned to its share of '
                                'the CPUs (CPU hosts; 1 on an accelerator).')


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


def planned_runs(config_paths: list[str], seeds: list[int],
                 workdir: str) -> list[tuple[str, str, int, str]]:
  """`(config path, its argument, seed, run directory)` for every config x seed."""
  runs = []
  for spec in config_paths:
    path, _, arg = spec.partition(':')  # 'configs/text/classifier.py:reuters_r8+pretrained'
    name = os.path.splitext(os.path.basename(path))[0] + (f'-{arg}' if arg else '')
    runs.extend((path, arg, seed, os.path.join(workdir, name, f'seed{seed}')) for seed in seeds)
  return runs


def planned_config(path: str, arg: str, seed: int) -> ml_collections.ConfigDict:
  """The config a planned run trains with: the file's, $RESEARCH_EXTRA_OVERRIDES, the seed."""
  get_config = runpy.run_path(path)['get_config']
  config = get_config(arg) if arg else get_config()
  apply_extra_overrides(config)
  config.seed = seed
  config.progress_bar = False
  return config


def check_existing_run(config: ml_collections.ConfigDict, run_dir: str) -> None:
  """Refuses to reuse or resume `run_dir` when it was made with another config (an edited
  config file or other overrides): its results would be reported under the new recipe."""
  saved_path = os.path.join(run_dir, 'config.json')
  if not paths.exists(saved_path):
    return
  config = ml_collections.ConfigDict(config.to_dict())
  if config.init_from.hf_dir:  # the run fills the architecture from the checkpoint
    hf_bert.fill_model_config(config.model, config.init_from.hf_dir)
  planned = compare.experiment_config(config.to_dict())
  saved = compare.experiment_config(json.loads(paths.read_text(saved_path)))
  # A key added to the code after the run was made counts at its default: what it did then.
  defaults = default_config()
  defaults.model = models.model_config(config.model.name)
  for key, value in compare.experiment_config(defaults.to_dict()).items():
    saved.setdefault(key, value)
  changed = [f'{k}: {saved.get(k, "(absent)")!r} -> {planned.get(k, "(absent)")!r}'
             for k in sorted(set(planned) | set(saved)) if planned.get(k) != saved.get(k)]
  if changed:
    raise ConfigError(
        f'{run_dir} was made with another config ({"; ".join(changed[:4])}'
        f'{f"; and {len(changed) - 4} more" if len(changed) > 4 else ""}); move it away or '
        f'pass another --workdir, so its results are not reported under the new recipe.')


def run_one(path: str, arg: str, seed: int, run_dir: str) -> None:
  config = planned_config(path, arg, seed)
  logging.info('Running %s%s seed %d -> %s', path, f':{arg}' if arg else '', seed, run_dir)
  training.train_and_evaluate(config, run_dir)


def cpu_shares(workers: int) -> list[set[int] | None]:
  """This process's CPUs split into `workers` disjoint, contiguous, near-equal sets (None
  each where the OS has no CPU affinity, e.g. macOS: the workers then share the CPUs)."""
  if not hasattr(os, 'sched_setaffinity'):
    return [None] * workers
  cpus = sorted(os.sched_getaffinity(0))
  if workers > len(cpus):
    raise ConfigError(f'--workers={workers} exceeds the {len(cpus)} CPUs this process may '
                      f'use; pass at most {len(cpus)}.')
  size, extra = divmod(len(cpus), workers)
  shares, start = [], 0
  for index in range(workers):
    end = start + size + (index < extra)
    shares.append(set(cpus[start:end]))
    start = end
  return shares


def _stop_with_parent(parent_pid: int) -> None:
  """Linux: the kernel sends this worker SIGTERM when its parent dies, so killing
  research.reproduce by PID stops its runs too (each saves and exits as if preempted, and
  the next reproduce resumes it) instead of leaving them training unseen."""
  if not sys.platform.startswith('linux'):
    return
  pr_set_pdeathsig = 1  # <linux/prctl.h>
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
  if os.getppid() != parent_pid:  # the parent died before the request was in place
    os.kill(os.getpid(), signal.SIGTERM)


_PARENT_PID = None  # in a worker: the pid of the research.reproduce that started it


def _run_in_worker(*run) -> None:
  try:
    run_one(*run)
  finally:
    if os.getppid() != _PARENT_PID:  # stopped by the parent's death: nobody takes a result,
      os._exit(preemption.PREEMPTED_EXIT_CODE)  # and the pool's queues would block forever


def _pin_worker(shares, parent_pid: int) -> None:
  """Runs in each worker process before jax starts: takes one CPU share for good."""
  global _PARENT_PID
  _PARENT_PID = parent_pid
  _stop_with_parent(parent_pid)
  share = shares.get()
  if share is not None:
    os.sched_setaffinity(0, share)
  logs.show_our_progress()
  hardware.enable_compilation_cache()


def run_all(config_paths: list[str], seeds: list[int], workdir: str,
            workers: int = 1) -> list[str]:
  runs = planned_runs(config_paths, seeds, workdir)
  todo = []
  for run in runs:
    check_existing_run(planned_config(*run[:3]), run[3])
    if paths.exists(os.path.join(run[3], 'results.json')):
      logging.info('Reusing finished run %s', run[3])
    else:
      todo.append(run)
  if workers <= 1 or len(todo) <= 1:
    for run in todo:
      run_one(*run)
  else:
    # 'spawn': a fresh interpreter per worker, so jax initialises under the pinned CPUs.
    context = multiprocessing.get_context('spawn')
    shares = context.Queue()
    for share in cpu_shares(workers):
      shares.put(share)
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                                initializer=_pin_worker,
                                                initargs=(shares, os.getpid())) as pool:
      futures = {pool.submit(_run_in_worker, *run): run for run in todo}
      try:
        for future in concurrent.futures.as_completed(futures):
          future.result()  # a failed run stops the table with its own error
          logging.info('Finished %s', futures[future][3])
      except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # the runs under way finish; no new ones
        raise
  return [run[3] for run in runs]


@one_line_errors
def main(argv: list[str]) -> None:
  del argv
  logs.show_our_progress()
  run_dirs = run_all(_CONFIGS.value, [int(s) for s in _SEEDS.value], _WORKDIR.value,
                     _WORKERS.value)
  groups, skipped = compare.load_runs(run_dirs)
  for warning in skipped:
    logging.warning('%s', warning)
  table = compare.markdown_table(groups)
  paths.write_text_atomic(os.path.join(_WORKDIR.value, 'table.md'), table + '\n')
  print(table)


if __name__ == '__main__':
  hardware.enable_compilation_cache()
  app.run(main)
