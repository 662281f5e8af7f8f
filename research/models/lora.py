"""LoRA (Hu et al., 2021): low-rank adapters beside chosen kernels, the base frozen.

`config.lora`: `rank` (0: off), `alpha` (the update is scaled by alpha / rank), `dropout`
(on the adapter's input, in training), `targets` (regexes over module paths such as
`block_0/attention/query`, separated by `;`; each must match a module with a kernel) and
`trainable` (a regex of other parameters trained with the adapters, e.g. the classifier
`^head/`). Everything else is frozen through the optimizer's parameter groups.

A module `m` with kernel `W` (input axes I..., output axes O...) and input `x` gets
`lora_a` (I..., r), initialised like a kernel, and `lora_b` (r, O...), zeros, so training
starts at the base model: `y = m(x) + alpha/r * (dropout(x) . lora_a) . lora_b`. The
adapters take the kernel's logical axis names (with 'lora_rank' for r), so they shard
as the kernel does under FSDP and tensor parallelism. `merge` folds them into plain
kernels, `W + alpha/r * lora_a . lora_b` (for export).

Why our own and not qwix's `apply_lora_to_model`: qwix intercepts the matmul primitives,
so it adds nothing to `layers.dense`'s CPU custom-VJP `matmul` and fails on the einsum in
`HeadsProjection` (the attention projections, the usual LoRA targets). Here a
`flax.linen.intercept_methods` hook wraps any module's `__call__` whose path matches and
that has a `kernel`, so it works with every layer the models use, without editing them.
"""
from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.errors import ConfigError
from research.models import precision

ADAPTERS = ('lora_a', 'lora_b')
ADAPTER_PATH = re.compile(r'(^|/)lora_[ab]$')


def enabled(lora_cfg: ml_collections.ConfigDict | None) -> bool:
  return bool(lora_cfg is not None and lora_cfg.rank > 0)


def parse_targets(spec: str) -> list[str]:
  targets = [t.strip() for t in spec.split(';') if t.strip()]
  for t in targets:
    try:
      re.compile(t)
    except re.error as e:
      raise ConfigError(f'config.lora.targets entry {t!r} is not a valid regex ({e}).') from e
  return targets


def check_config(lora_cfg: ml_collections.ConfigDict, optimizer_freeze: str) -> None:
  if lora_cfg.rank < 0:
    raise ConfigError(f'config.lora.rank must be >= 0 (0: no LoRA), got {lora_cfg.rank}.')
  if not enabled(lora_cfg):
    return
  if not parse_targets(lora_cfg.targets):
    raise ConfigError("config.lora.rank > 0 needs config.lora.targets, regexes over module "
                      "paths, e.g. 'attention/(query|value)$'.")
  if not 0 <= lora_cfg.dropout < 1:
    raise ConfigError(f'config.lora.dropout must be in [0, 1), got {lora_cfg.dropout}.')
  if optimizer_freeze:
    raise ConfigError(f'config.optimizer.freeze={optimizer_freeze!r} cannot be combined with '
                      'LoRA, which freezes everything but the adapters and config.lora.trainable.')


def _module_path(module: nn.Module) -> str:
  return '/'.join(str(p) for p in module.path)


def _axis_names(module: nn.Module, ndim: int) -> tuple:
  """The kernel's logical axis names (boxed at init; afterwards the init is not called)."""
  boxed = module.scope.get_variable('params', 'kernel')
  names = getattr(boxed, 'names', None)
  return tuple(names) if names is not None else (None,) * ndim


def _interceptor(next_fun, args, kwargs, context, *, targets, rank, alpha, dropout, train):
  y = next_fun(*args, **kwargs)
  module = context.module
  if (context.method_name != '__call__' or not module.has_variable('params', 'kernel')
      or not any(re.search(t, _module_path(module)) for t in targets)):
    return y
  x = args[0]
  kernel = module.get_variable('params', 'kernel')
  kernel = getattr(kernel, 'value', kernel)
  n_in = (kernel.ndim + x.ndim - y.ndim) // 2  # the trailing axes of x the kernel contracts
  names = _axis_names(module, kernel.ndim)
  in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
  a_init = nn.initializers.lecun_normal(in_axis=tuple(range(n_in)), out_axis=n_in)
  lora_a = module.param('lora_a', nn.with_logical_partitioning(
      a_init, names[:n_in] + ('lora_rank',)), in_shape + (rank,), jnp.float32)
  lora_b = module.param('lora_b', nn.with_logical_partitioning(
      nn.initializers.zeros_init(), ('lora_rank',) + names[n_in:]), (rank,) + out_shape,
      jnp.float32)
  h = x
  if dropout > 0 and train:
    keep = jax.random.bernoulli(module.make_rng('dropout'), 1 - dropout, x.shape)
    h = jnp.where(keep, x / (1 - dropout), 0).astype(x.dtype)
  # The layer's compute dtype (bfloat16 under the mixed-precision policy), float32 sums.
  compute = jnp.dtype(getattr(module, 'dtype', None) or y.dtype)
  lead, ins = 'abcdefgh'[:x.ndim - n_in], 'ijkl'[:n_in]
  outs = 'mnop'[:kernel.ndim - n_in]
  low_BxR = precision.einsum(f'{lead}{ins},{ins}r->{lead}r', h.astype(compute),
                             lora_a.astype(compute))
  delta = precision.einsum(f'{lead}r,r{outs}->{lead}{outs}', low_BxR, lora_b.astype(compute))
  return y + (alpha / rank) * delta.astype(y.dtype)


class _LoRAMixin:
  """Runs the wrapped model's `__call__` with the adapters' interceptor installed."""

  def __call__(self, *args, train: bool = False, **kwargs):
    hook = functools.partial(_interceptor, targets=parse_targets(self.lora_targets),
                             rank=self.lora_rank, alpha=self.lora_alpha,
                             dropout=self.lora_dropout, train=train)
    with nn.intercept_methods(hook):
      return super().__call__(*args, train=train, **kwargs)


@functools.cache
def with_lora(cls: type[nn.Module]) -> type[nn.Module]:
  """`cls` with LoRA fields; its parameter paths are `cls`'s plus the adapters."""
  return type(f'{cls.__name__}WithLoRA', (_LoRAMixin, cls), {
      '__annotations__': {'lora_rank': int, 'lora_alpha': float, 'lora_dropout': float,
                          'lora_targets': str},
      'lora_rank': 8, 'lora_alpha': 16.0, 'lora_dropout': 0.0, 'lora_targets': '',
      '__module__': __name__})


def wrap_kwargs(lora_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  return {'lora_rank': int(lora_cfg.rank), 'lora_alpha': float(lora_cfg.alpha),
          'lora_dropout': float(lora_cfg.dropout), 'lora_targets': lora_cfg.targets}


def check_targets(lora_cfg: ml_collections.ConfigDict, param_paths: list[str]) -> None:
  """Every target regex matched some module (the adapters exist): a rule that matches
  nothing is a typo; the error lists the module paths that have a kernel."""
  adapted = {p.rsplit('/', 1)[0] for p in param_paths if ADAPTER_PATH.search(p)}
  candidates = sorted({p.rsplit('/', 1)[0] for p in param_paths if p.endswith('/kernel')})
  for target in parse_targets(lora_cfg.targets):
    if not any(re.search(target, m) for m in adapted):
      raise ConfigError(f'config.lora.targets rule {target!r} matches no module with a '
                        f'kernel. Module paths: {", ".join(candidates)}.')


def freeze_regex(lora_cfg: ml_collections.ConfigDict) -> str:
  """`optimizer.freeze` for LoRA: every parameter but the adapters and `trainable`."""
  keep = r'/lora_[ab]$'
  if lora_cfg.trainable:
    keep += f'|{lora_cfg.trainable}'
  return rf'^(?!.*(?:{keep}))'


def optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.optimizer`, with LoRA's freeze rule when LoRA is on."""
  if not enabled(config.lora):
    return config.optimizer
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt.freeze = freeze_regex(config.lora)
  return opt


def merge(flat_params: dict[str, Any], lora_cfg: ml_collections.ConfigDict
          ) -> dict[str, Any]:
  """Params by path with each adapter pair folded into its kernel and removed."""
  scale = lora_cfg.alpha / lora_cfg.rank
  out = {p: v for p, v in flat_params.items() if not ADAPTER_PATH.search(p)}
  for path in flat_params:
    if not path.endswith('/lora_a'):
      continue
    module = path.rsplit('/', 1)[0]
    a, b, kernel = (jnp.asarray(flat_params[f'{module}/{n}'])
                    for n in ('lora_a', 'lora_b', 'kernel'))
    outer = lambda a_, b_: jnp.tensordot(a_, b_, axes=1)  # noqa: E731
    if a.ndim + b.ndim - 2 == kernel.ndim + 1:  # scanned layers: a leading layer axis
      outer = jax.vmap(outer)
    out[f'{module}/kernel'] = kernel + scale * outer(a, b).astype(kernel.dtype)
  return out
