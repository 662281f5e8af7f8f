"""Starts a run from another run's weights (e.g. fine-tune a classifier on a pretrained encoder),
or from a Hugging Face BERT-family directory (`hf_dir`, converted by `research.models.hf_bert`).

`config.init_from.workdir` names the source run; its checkpoint (`step`, -1 = latest) is read
with plain Orbax. Parameters are matched by path ('encoder/layer_0/attention/query/kernel').
Those matching `load` (a regex) and not `skip` are copied; the rest keep their fresh
initialisation (e.g. skip='^head/' to reinitialise the classifier). Loaded params that are
missing from the source or differ in shape fail with a list of every mismatch (for
`hf_dir`, also every tensor that was not understood). The optimizer state starts fresh.
LoRA adapters are never loaded (they start at zero update); a LoRA run's checkpoints
leave its frozen base out and `restore_base` reloads it from the same source.
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
from research.models import hf_bert, lora
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


def _hf_source(hf_dir: str, ours: dict) -> tuple[dict[str, np.ndarray], list[str]]:
  """A Hugging Face directory's tensors at our paths, and what could not be used."""
  tensors = hf_bert.read_tensors(hf_dir)
  fields = hf_bert.encoder_fields(hf_bert.read_config(hf_dir), tensors)
  source, unused, bad = hf_bert.to_ours(tensors, fields)
  if any(p.startswith('blocks/') for p in ours):  # scan_layers: one stacked tree
    source = hf_bert.stack_blocks(source)
  problems = [f'not converted: {b}' for b in bad]
  problems += [f'a Hugging Face tensor this encoder has no place for: {n}' for n in unused]
  return source, problems


def _source(init_cfg: ml_collections.ConfigDict, ours: dict):
  """`(flat source params, 'what' for messages, step or None, problems)`."""
  if init_cfg.hf_dir:
    source, problems = _hf_source(init_cfg.hf_dir, ours)
    return source, f'init_from.hf_dir {init_cfg.hf_dir}', None, problems
  directory = os.path.join(checkpoint_lib.absolute(init_cfg.workdir), 'checkpoints')
  step = _source_step(directory, init_cfg.step)
  source = _flatten(ocp.StandardCheckpointer().restore(
      os.path.join(directory, str(step), 'state'))['params'])
  return source, f'init_from {init_cfg.workdir} (step {step})', step, []


def wanted(init_cfg: ml_collections.ConfigDict, paths) -> set[str]:
  """Params the rules load; LoRA adapters never come from a source."""
  load, skip = re.compile(init_cfg.load), re.compile(init_cfg.skip) if init_cfg.skip else None
  return {k for k in paths if load.search(k) and not (skip and skip.search(k))
          and not lora.ADAPTER_PATH.search(k)}


def load_params(state, init_cfg: ml_collections.ConfigDict, param_shardings):
  """`state` with params replaced per the rules; returns (state, report dict)."""
  ours = _flatten(state.params)
  source, what, step, problems = _source(init_cfg, ours)
  load, skip = re.compile(init_cfg.load), re.compile(init_cfg.skip) if init_cfg.skip else None
  to_load = wanted(init_cfg, ours)
  missing = sorted(k for k in to_load if k not in source)
  misshaped = sorted(f'{k}: ours {tuple(ours[k].shape)} vs source {tuple(source[k].shape)}'
                     for k in to_load if k in source and source[k].shape != ours[k].shape)
  unexpected = sorted(k for k in source if load.search(k) and not (skip and skip.search(k))
                      and k not in ours)
  if missing or misshaped or unexpected or problems:
    raise ValueError(
        f'{what} does not fit this model '
        f'(load={init_cfg.load!r}, skip={init_cfg.skip!r}).\n'
        f'  missing in the source ({len(missing)}): {missing}\n'
        f'  mis-shaped ({len(misshaped)}): {misshaped}\n'
        f'  unexpected, in the source but not in this model ({len(unexpected)}): {unexpected}\n'
        + ''.join(f'  {p}\n' for p in problems) +
        'Adjust config.init_from.load / skip (regexes over these paths).')
  flat_shardings = _flatten(param_shardings)
  # `ours` follows the params' flattening order, so it rebuilds the same tree.
  leaves = [jax.device_put(source[p].astype(ours[p].dtype), flat_shardings[p]) if p in to_load
            else leaf for p, leaf in ours.items()]
  params = jax.tree.unflatten(jax.tree.structure(state.params), leaves)
  report = {'source': init_cfg.workdir or init_cfg.hf_dir, 'step': step,
            'loaded': sorted(to_load), 'initialised': sorted(set(ours) - to_load)}
  logging.info('%s: loaded %d params, kept %d freshly initialised (%s).', what, len(to_load),
               len(report['initialised']), report['initialised'][:10])
  return state.replace(params=params), report


def restore_base(params, abstract_params, init_cfg: ml_collections.ConfigDict):
  """`params` (restored from a LoRA run's checkpoint, None where the frozen base was left
  out) completed from the base that `init_cfg` names, onto `abstract_params`' shardings:
  the same values the run started from, so resuming is exact."""
  abstract = _flatten(abstract_params)
  have = {optim.path_of(keys) for keys, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  absent = [p for p in abstract if p not in have]
  if not absent:
    return params
  source, what, _, _ = _source(init_cfg, abstract)
  missing = [p for p in absent if p not in source]
  if missing:
    raise ValueError(f'The checkpoint leaves out the frozen base, but {what} lacks {missing}.')
  restored = dict(_flatten(params))
  leaves = [restored[p] if p in restored else
            jax.device_put(source[p].astype(a.dtype), a.sharding) for p, a in abstract.items()]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)
