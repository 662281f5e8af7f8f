"""Device mesh from the config, and logical-axis rules that turn model axes into shardings.

Models name their parameter axes (`embed`, `mlp`, `heads`, ...); these rules map the names
onto mesh axes. Data parallelism shards `batch` over ('data', 'fsdp'); FSDP shards
parameters' `embed` axis over 'fsdp'; tensor parallelism shards `mlp`/`heads`/`vocab`
over 'tensor'. A dimension that a mesh axis does not divide stays replicated on it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('length', None),
    ('classes', None),
    ('conv_window', None),
    ('conv_window_1', None),
    ('conv_window_2', None),
    ('conv_in', 'fsdp'),
    ('layers', None),    # scan_layers' stacked axis
    ('patch', None),     # ViT patch pixels
    ('relative', None),  # relative-position bias offsets
    ('token_types', None),  # BERT's segment embeddings
    ('embed_out', None),  # the pooler's output (its input is 'embed')
    ('lora_rank', None),  # LoRA adapters' inner axis (the others follow their kernel)
    ('conv_out', 'tensor'),
)


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes, with at most one -1 filled by the remaining devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f'At most one mesh axis may be -1; got {dict(zip(MESH_AXES, sizes))}.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'Mesh axis sizes must be positive or -1; got {dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not '
                       f'divisible by the fixed axes (product {known}).')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
                     f'but {num_devices} are available.')
  return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: jit's in/out shardings and logical constraints drive the partitioner (the
  # pjit model); Explicit axes would demand an out_sharding on every op.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension (those stay replicated)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes_tuple = axes if isinstance(axes, tuple) else (axes,)
    kept = []
    for axis in axes_tuple:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
    fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*fitted)


def tree_shardings(abstract_boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a tree whose params are `nn.Partitioned` boxes (from eval_shape).

  The result has the *unboxed* tree's structure: each box becomes one sharding.
  """
  def leaf_sharding(x):
    if isinstance(x, nn.Partitioned) and not hasattr(x.value, 'shape'):
      return x.value  # e.g. optax's MaskedNode for a frozen parameter: no array, no sharding
    if isinstance(x, nn.Partitioned):
      spec = nn.logical_to_mesh_axes(x.names, rules)
      return NamedSharding(mesh, _fit_spec(spec, x.value.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(leaf_sharding, abstract_boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """The mesh and the logical-axis rules, for tracing steps: without the rules the
  models' activation constraints (`nn.with_logical_constraint`) would do nothing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's slice of it (multi-host safe)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
