"""Magnitude pruning as an optax wrapper: masks live in the optimizer state.

`pruned(tx, ...)` wraps the run's optimizer. Every `update_every` steps between
`begin_step` and `end_step` it recomputes the masks of the parameters matching `params`
(kernels by default) so that the smallest-magnitude fraction `sparsity(step)` is zero,
either over all of them together (`scope='global'`) or within each (`'layer'`). After
every update the masks are reapplied: a pruned weight's update is `-weight`, so it is
exactly 0 afterwards. The target follows Zhu & Gupta's cubic schedule,
`s(t) = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3)`, reaching `s_f` at `end_step` and
held there. The masks are part of `opt_state`, so they are checkpointed and resumed with
it.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research.errors import ConfigError
from research.training import optim

SCOPES = ('global', 'layer')


class PruneState(NamedTuple):
  inner: Any       # the wrapped optimizer's state
  masks: Any       # like params: bool, True = kept (all True for unpruned parameters)
  count: jax.Array  # updates applied so far (the step the masks belong to)


def cubic_sparsity(step, target: float, begin_step: int, end_step: int):
  """Zhu & Gupta (2017): 0 before `begin_step`, `target` from `end_step` on, cubic between."""
  span = max(end_step - begin_step, 1)
  progress = jnp.clip((step - begin_step) / span, 0.0, 1.0)
  return target * (1.0 - (1.0 - progress) ** 3)


def _threshold(magnitudes, sparsity):
  """The magnitude below which a `sparsity` fraction of `magnitudes` lies."""
  flat = jnp.sort(magnitudes.ravel())
  k = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  # k == 0 prunes nothing: a threshold below every magnitude.
  return jnp.where(k > 0, flat[jnp.maximum(k - 1, 0)], -1.0)


def magnitude_masks(params, selected, sparsity, scope: str):
  """Boolean masks keeping the largest `1 - sparsity` weights of the selected params."""
  leaves, treedef = jax.tree.flatten(params)
  chosen = jax.tree.leaves(selected)
  if scope == 'global':
    pool = jnp.concatenate([jnp.abs(x).ravel() for x, c in zip(leaves, chosen) if c])
    cut = _threshold(pool, sparsity)
    masks = [jnp.abs(x) > cut if c else jnp.ones(x.shape, bool)
             for x, c in zip(leaves, chosen)]
  else:
    masks = [jnp.abs(x) > _threshold(jnp.abs(x), sparsity) if c else jnp.ones(x.shape, bool)
             for x, c in zip(leaves, chosen)]
  return jax.tree.unflatten(treedef, masks)


def pruned(tx: optax.GradientTransformation, *, sparsity: float, selected_fn,
           scope: str = 'global', begin_step: int = 0, end_step: int = 1,
           update_every: int = 1) -> optax.GradientTransformation:
  """`tx` followed by magnitude pruning of the params `selected_fn(params)` marks True."""
  def init_fn(params):
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    return PruneState(tx.init(params), masks, jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('Pruning needs params in update() (flax TrainState passes them).')
    updates, inner = tx.update(updates, state.inner, params)
    count = state.count + 1
    new_params = optax.apply_updates(params, updates)
    due = ((count >= begin_step) & (count <= end_step) &
           ((count - begin_step) % update_every == 0)) | (count == end_step)
    target = cubic_sparsity(count, sparsity, begin_step, end_step)
    selected = selected_fn(params)
    masks = jax.lax.cond(
        due, lambda: magnitude_masks(new_params, selected, target, scope),
        lambda: state.masks)
    # Kept weights take their update; pruned ones an update of -weight, landing on 0.
    updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
    return updates, PruneState(inner, masks, count)

  return optax.GradientTransformation(init_fn, update_fn)


def enabled(config: ml_collections.ConfigDict) -> bool:
  block = config.get('pruning')
  return bool(block is not None and block.sparsity > 0)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming a bad `config.pruning` value and what is accepted."""
  block = config.get('pruning')
  if block is None:
    return
  if not 0.0 <= block.sparsity < 1.0:
    raise ConfigError(f'config.pruning.sparsity must be in [0, 1), got {block.sparsity}.')
  if block.scope not in SCOPES:
    raise ConfigError(f'config.pruning.scope={block.scope!r}; accepted: {list(SCOPES)}.')
  if block.update_every < 1:
    raise ConfigError(f'config.pruning.update_every must be >= 1, got {block.update_every}.')
  end = end_step(config)
  # The schedule matters only when pruning is on (a 1-step run has no room for one).
  if block.sparsity > 0 and not 0 <= block.begin_step < end <= config.num_train_steps:
    raise ConfigError(f'config.pruning needs 0 <= begin_step < end_step <= num_train_steps; '
                      f'got begin_step={block.begin_step}, end_step={end} '
                      f'(num_train_steps={config.num_train_steps}).')
  try:
    re.compile(block.params)
  except re.error as e:
    raise ConfigError(f'config.pruning.params={block.params!r} is not a valid regex ({e}).') from e


def end_step(config: ml_collections.ConfigDict) -> int:
  end = config.pruning.end_step
  return int(0.75 * config.num_train_steps) if end < 0 else int(end)


def _selector(regex: str, params):
  pattern = re.compile(regex)
  paths = optim.param_paths(params)
  if not any(pattern.search(p) for p in paths):
    raise ConfigError(f'config.pruning.params={regex!r} matches no parameter. Parameter '
                      f'paths: {", ".join(paths[:12])}.')
  return lambda tree: optim._map_paths(lambda p: bool(pattern.search(p)), tree)  # noqa: SLF001


def wrap(tx: optax.GradientTransformation, config: ml_collections.ConfigDict, params
         ) -> optax.GradientTransformation:
  """The run's optimizer, pruned when `config.pruning.sparsity > 0` (else `tx` itself)."""
  if not enabled(config):
    return tx
  check(config)
  block = config.pruning
  return pruned(tx, sparsity=float(block.sparsity), selected_fn=_selector(block.params, params),
                scope=block.scope, begin_step=int(block.begin_step), end_step=end_step(config),
                update_every=int(block.update_every))


def sparsity_report(params, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Per pruned parameter: its zero fraction; plus the overall figure (results.json)."""
  pattern = re.compile(config.pruning.params)
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
  layers, zeros, total = {}, 0, 0
  for path, x in flat:
    name = optim.path_of(path)
    if not pattern.search(name):
      continue
    x = np.asarray(x)
    layers[name] = float((x == 0).mean())
    zeros += int((x == 0).sum())
    total += x.size
  return {'target': float(config.pruning.sparsity), 'scope': config.pruning.scope,
          'overall': zeros / max(total, 1), 'per_layer': layers,
          'nonzero_params': int(sum(np.count_nonzero(np.asarray(x)) for _, x in flat))}
