"""The optimizer from `(config.optimizer, params)`: schedule, parameter groups, clipping, decay.

Parameter groups are regexes over parameter paths such as
`encoder/block_0/attention/query/kernel` (`param_paths(params)` lists them):

- `freeze`: matching parameters are never updated and get no optimizer state
  (`optax.set_to_zero` through `optax.partition`; `optax.masked` alone would pass the raw
  gradient through as the update).
- `lr_multipliers`: `'REGEX=MULT; REGEX=MULT'`, the first match wins, e.g.
  `'^head/=10; ^encoder/=0.1'`; unmatched parameters use the base learning rate.
- `no_weight_decay`: matching parameters get no weight decay (e.g. `'bias$|scale$'`).

Every regex must match at least one parameter: a rule that matches nothing is a typo.
Without groups the optimizer is the plain chain, exactly as before groups existed.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from research.errors import ConfigError

FROZEN = 'frozen'


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  peak = opt.learning_rate
  end = peak * opt.min_learning_rate_ratio
  decay_steps = max(num_train_steps - opt.warmup_steps, 1)
  if opt.schedule == 'constant':
    main = optax.constant_schedule(peak)
  elif opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.min_learning_rate_ratio)
  elif opt.schedule == 'linear':
    main = optax.linear_schedule(peak, end, decay_steps)
  else:
    raise ConfigError(f'Unknown schedule {opt.schedule!r}.')
  if opt.warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, peak, opt.warmup_steps)
  return optax.join_schedules([warmup, main], [opt.warmup_steps])


def path_of(keys) -> str:
  """'encoder/block_0/attention/query/kernel' for a tree path."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in keys)


def parse_multipliers(spec: str) -> list[tuple[str, float]]:
  """`'^head/=10; ^encoder/=0.1'` -> [('^head/', 10.0), ('^encoder/', 0.1)]."""
  rules = []
  for part in [p.strip() for p in spec.split(';') if p.strip()]:
    regex, sep, value = part.rpartition('=')
    try:
      multiplier = float(value)
      re.compile(regex)
    except (ValueError, re.error) as e:
      raise ConfigError(f"config.optimizer.lr_multipliers entry {part!r} must be "
                        f"'REGEX=NUMBER' ({e}).") from e
    if not sep or not regex:
      raise ConfigError(f"config.optimizer.lr_multipliers entry {part!r} must be 'REGEX=NUMBER'.")
    if multiplier < 0:
      raise ConfigError(f'config.optimizer.lr_multipliers entry {part!r}: the multiplier '
                        'must be >= 0 (use optimizer.freeze to freeze).')
    rules.append((regex, multiplier))
  return rules


def _compile(key: str, regex: str) -> re.Pattern:
  try:
    return re.compile(regex)
  except re.error as e:
    raise ConfigError(f'config.optimizer.{key}={regex!r} is not a valid regex ({e}).') from e


def _check_matches(key: str, regex: str, paths: list[str]) -> None:
  if not any(re.search(regex, p) for p in paths):
    shown = ', '.join(paths[:12]) + (', ...' if len(paths) > 12 else '')
    raise ConfigError(f'config.optimizer.{key} rule {regex!r} matches no parameter. '
                      f'Parameter paths: {shown}.')


def _map_paths(fn, tree) -> Any:
  """`fn(path)` at every leaf; a boxed leaf (`nn.Partitioned`, as at init) stays boxed, so
  the result has the structure of whichever tree optax hands over (boxed or unboxed)."""
  def leaf(keys, x):
    if isinstance(x, nn.Partitioned):
      return x.replace_boxed(fn(path_of(keys)))
    return fn(path_of(keys))
  return jax.tree_util.tree_map_with_path(leaf, tree,
                                          is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_paths(params) -> list[str]:
  paths = []
  _map_paths(paths.append, params)
  return paths


def has_groups(opt: ml_collections.ConfigDict) -> bool:
  return bool(opt.freeze or opt.lr_multipliers or opt.no_weight_decay)


def group_labels(opt: ml_collections.ConfigDict, params) -> Any:
  """A tree like `params` of labels: 'frozen' or 'lr_x<multiplier>'; checks every rule
  matches something."""
  paths = param_paths(params)
  freeze = _compile('freeze', opt.freeze) if opt.freeze else None
  if freeze:
    _check_matches('freeze', opt.freeze, paths)
  rules = parse_multipliers(opt.lr_multipliers)
  for regex, _ in rules:
    _check_matches('lr_multipliers', regex, paths)

  def label(path):
    if freeze and freeze.search(path):
      return FROZEN
    for regex, multiplier in rules:
      if re.search(regex, path):
        return f'lr_x{multiplier:g}'
    return 'lr_x1'
  return lambda tree: _map_paths(label, tree)


def frozen_mask(opt: ml_collections.ConfigDict, params) -> Any | None:
  """A tree like `params` of Python bools, True where `opt.freeze` matches (None without
  a freeze rule): the train step differentiates only the others."""
  if not opt.freeze:
    return None
  return jax.tree.map(lambda label: label == FROZEN, group_labels(opt, params)(params))


def _core(opt: ml_collections.ConfigDict, lr, decay_mask=None
          ) -> list[optax.GradientTransformation]:
  """[L2 decay (adam, sgd),] optimizer: as a list, so the chain stays flat."""
  if opt.name == 'adamw':
    core = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                       mask=decay_mask)
  elif opt.name == 'adam':
    core = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == 'sgd':
    core = optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov)
  else:
    raise ConfigError(f"Unknown optimizer {opt.name!r}; available: ['adam', 'adamw', 'sgd'].")
  chain = []
  if opt.weight_decay > 0 and opt.name != 'adamw':
    chain.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))  # L2
  chain.append(core)
  return chain


def create_optimizer(opt: ml_collections.ConfigDict, num_train_steps: int,
                     params=None) -> optax.GradientTransformation:
  """The optimizer; `params` (a tree or its shapes) is needed when groups are configured."""
  lr = learning_rate_schedule(opt, num_train_steps)
  chain = []
  labels = None
  if has_groups(opt):
    if params is None:
      raise ValueError('create_optimizer needs params when optimizer groups are configured.')
    labels = group_labels(opt, params)
    if opt.freeze:  # zero frozen gradients first, so they do not count in the clipping norm
      frozen = lambda tree: jax.tree.map(lambda label: label == FROZEN, labels(tree))  # noqa: E731
      chain.append(optax.masked(optax.set_to_zero(), frozen))
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if not has_groups(opt):
    return optax.chain(*chain, *_core(opt, lr))
  decay_mask = None
  if opt.no_weight_decay:
    no_decay = _compile('no_weight_decay', opt.no_weight_decay)
    _check_matches('no_weight_decay', opt.no_weight_decay, param_paths(params))
    decay_mask = lambda tree: _map_paths(lambda p: not no_decay.search(p), tree)  # noqa: E731
  transforms = {FROZEN: optax.set_to_zero()}
  for name in sorted(set(jax.tree.leaves(labels(params))) - {FROZEN}):
    multiplier = float(name.removeprefix('lr_x'))
    scaled = (lr if multiplier == 1 else
              (lambda step, m=multiplier: m * lr(step)))
    transforms[name] = optax.chain(*_core(opt, scaled, decay_mask))
  chain.append(optax.partition(transforms, labels))
  return optax.chain(*chain)
