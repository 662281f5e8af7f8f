"""Starts a run from another run's weights (e.g. fine-tune a classifier on a pretrained encoder).

`config.init_from.workdir` names the source run; its checkpoint (`step`, -1 = latest) is read
with plain Orbax. Parameters are matched by path ('encoder/layer_0/attention/query/kernel').
Those matching `load` (a regex) and not `skip` are copied; the rest keep their fresh
initialisation (e.g. skip='^head/' to reinitialise the classifier). Loaded params that are
missing from the source or differ in shape fail with a list of every mismatch. The
optimizer state starts fresh.
"""
from __future__ import annotations

import os
import re

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from research import paths
from research.training import checkpoint as checkpoint_lib
from research.training import optim


def _flatten(params) -> dict[str, np.ndarray]:
  return {optim.path_of(keys): leaf for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _source_step(directory: str, step: int) -> int:
  steps = sorted(int(d) for d in paths.listdir(directory) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f'config.init_from.workdir has no checkpoints in {directory}.')
  if step == -1:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f'config.init_from.step={step} is not in {directory}; available: {steps}.')
  return step


def load_params(state, init_cfg: ml_collections.ConfigDict, param_shardings):
  """`state` with params replaced per the rules; returns (state, report dict)."""
  directory = os.path.join(checkpoint_lib.absolute(init_cfg.workdir), 'checkpoints')
  step = _source_step(directory, init_cfg.step)
  source = _flatten(ocp.StandardCheckpointer().restore(
      os.path.join(directory, str(step), 'state'))['params'])
  load, skip = re.compile(init_cfg.load), re.compile(init_cfg.skip) if init_cfg.skip else None
  ours = _flatten(state.params)
  wanted = {k for k in ours if load.search(k) and not (skip and skip.search(k))}
  missing = sorted(k for k in wanted if k not in source)
  misshaped = sorted(f'{k}: ours {tuple(ours[k].shape)} vs source {tuple(source[k].shape)}'
                     for k in wanted if k in source and source[k].shape != ours[k].shape)
  unexpected = sorted(k for k in source if load.search(k) and not (skip and skip.search(k))
                      and k not in ours)
  if missing or misshaped or unexpected:
    raise ValueError(
        f'init_from {init_cfg.workdir} (step {step}) does not fit this model '
        f'(load={init_cfg.load!r}, skip={init_cfg.skip!r}).\n'
        f'  missing in the source ({len(missing)}): {missing}\n'
        f'  mis-shaped ({len(misshaped)}): {misshaped}\n'
        f'  unexpected, in the source but not in this model ({len(unexpected)}): {unexpected}\n'
        'Adjust config.init_from.load / skip (regexes over these paths).')
  flat_shardings = _flatten(param_shardings)
  # `ours` follows the params' flattening order, so it rebuilds the same tree.
  leaves = [jax.device_put(source[p].astype(ours[p].dtype), flat_shardings[p]) if p in wanted
            else leaf for p, leaf in ours.items()]
  params = jax.tree.unflatten(jax.tree.structure(state.params), leaves)
  report = {'source': init_cfg.workdir, 'step': step, 'loaded': sorted(wanted),
            'initialised': sorted(set(ours) - wanted)}
  logging.info('init_from %s step %d: loaded %d params, kept %d freshly initialised (%s).',
               init_cfg.workdir, step, len(wanted), len(report['initialised']),
               report['initialised'][:10])
  return state.replace(params=params), report
