"""Orbax checkpoints holding the sharded train state and the grain iterator position.

Layout: `WORKDIR/checkpoints/<step>/{state,data,trainer}`. `state` is a plain Orbax PyTree
(`step`, `params`, `opt_state`) readable without this package; `data` is grain's JSON;
`trainer` is JSON of the loop's own state (early stopping's best value and patience
count), so a resumed run stops where an uninterrupted one would.
Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it
when complete), so a process killed mid-save leaves the previous checkpoint as the latest.
A checkpoint that fails to restore is moved to `WORKDIR/checkpoints_quarantine/` (never
deleted) and the previous one is used.
A LoRA run's checkpoints leave out its frozen base (`leave_out`: param paths, None in the
saved tree): they hold the adapters, the trained head and the optimizer state, and the
run's config names the base (`init_from`), which `init_from.restore_base` reloads.
Orbax accepts only absolute paths: `absolute()` is the one place that turns a user's
(relative, `~`-prefixed) workdir into one, for this module and `init_from`. A `gs://`
workdir is left as it is: Orbax and TensorStore write the bucket directly.
"""
from __future__ import annotations

import os
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from research import paths
from research.training import optim


def absolute(path: str) -> str:
  """`path` as Orbax requires it: absolute, with `~` expanded (relative to the current
  directory, so `--workdir=runs/demo` works from wherever the command runs); a `gs://`
  URI unchanged."""
  return paths.absolute(path)


class Checkpointer:
  """Saves and restores `(state, data iterator, trainer JSON)`; keeps the last `keep` plus
  the best."""

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = '',
               best_mode: str = 'max', async_save: bool = True,
               leave_out: frozenset[str] = frozenset()):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}.")
    if keep < 1:
      raise ValueError(f'checkpoint.keep must be >= 1, got {keep}.')
    workdir = absolute(workdir)
    self.directory = os.path.join(workdir, 'checkpoints')
    self.quarantine = os.path.join(workdir, 'checkpoints_quarantine')
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.leave_out = leave_out
    keep_policies: list[Any] = [policies.LatestN(n=keep)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: metrics[best_metric]  # noqa: E731
      keep_policies.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == 'min',
                                          n=1, keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            best_fn=best_fn,  # Orbax stores per-step metrics only when this is set
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True),  # half-written saves of a killed process
        item_names=('state', 'data', 'trainer'))

  @classmethod
  def for_run(cls, workdir: str, config: ml_collections.ConfigDict) -> 'Checkpointer':
    """Configured from a run's config. Early stopping's metric ranks the checkpoints
    (so its best one is kept) unless checkpoint.best_metric names another."""
    ckpt, early = config.checkpoint, config.early_stopping
    return cls(workdir, keep=ckpt.keep,
               best_metric=ckpt.best_metric or early.metric,
               best_mode=ckpt.best_mode if ckpt.best_metric else early.mode,
               async_save=ckpt.async_save)

  def _without_base(self, state):
    """`state` (values or shapes) with the `leave_out` params as None (not saved)."""
    if not self.leave_out:
      return state
    params = jax.tree_util.tree_map_with_path(
        lambda keys, x: None if optim.path_of(keys) in self.leave_out else x, state.params)
    return state.replace(params=params)

  def save(self, step: int, state, data_iterator, metrics: dict[str, float] | None = None,
           trainer: dict[str, Any] | None = None) -> None:
    if step in self._manager.all_steps():
      return  # e.g. the final save right after a periodic one
    if self.best_metric and metrics is not None and self.best_metric not in metrics:
      raise KeyError(f'checkpoint.best_metric {self.best_metric!r} is not among the eval '
                     f'metrics {sorted(metrics)}.')
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(self._without_base(state)),
                                data=grain.checkpoint.CheckpointSave(data_iterator),
                                trainer=ocp.args.JsonSave(trainer or {})),
        metrics=metrics if self.best_metric else None,
        force=True)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best `best_metric` among kept checkpoints (None if none has it)."""
    if not self.best_metric:
      return None
    return self._manager.best_step()

  def restore(self, abstract_state, data_iterator, step: int | None = None):
    """Restores `step` (default: the newest that restores) onto `abstract_state`'s shardings.

    Returns `(state, step, trainer)` (`trainer`: the JSON saved with it, `{}` for a
    checkpoint written before it existed), or `(None, None, {})` when there is no
    checkpoint. With `step` None, a damaged checkpoint is reported, quarantined and the
    previous one tried.
    """
    candidates = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for candidate in candidates:
      try:
        items = dict(state=ocp.args.StandardRestore(self._without_base(abstract_state)),
                     data=grain.checkpoint.CheckpointRestore(data_iterator))
        has_trainer = paths.isdir(os.path.join(self.directory, str(candidate), 'trainer'))
        if has_trainer:
          items['trainer'] = ocp.args.JsonRestore()
        restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
        return restored['state'], candidate, (restored['trainer'] if has_trainer else {})
      except Exception as e:  # Orbax/tensorstore raise many types for damaged files
        if step is not None:
          raise
        logging.error('Checkpoint at step %d cannot be restored (%s: %s); moving it to %s '
                      'and trying the previous one.', candidate, type(e).__name__,
                      str(e)[:500], self.quarantine)
        self._quarantine(candidate)
    return None, None, {}

  def restore_state(self, abstract_state, step: int):
    """Only the train state of `step` (no data iterator), e.g. for evaluation."""
    if step not in self.all_steps():
      raise FileNotFoundError(f'No checkpoint at step {step} in {self.directory}; available '
                              f'steps: {self.all_steps()}.')
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(self._without_base(abstract_state))))
    return restored['state']

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      paths.makedirs(self.quarantine)
      paths.move(os.path.join(self.directory, str(step)),
                 os.path.join(self.quarantine, f'{step}-{int(time.time())}'))
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
