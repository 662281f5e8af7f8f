"""Peak FLOP/s per device, for MFU: a table of accelerators, or a measured CPU matmul peak."""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp

# Dense bf16 peaks per chip/GPU (vendor figures), matched against `device_kind`.
KNOWN_PEAKS = (
    ('H100', 989e12),
    ('H200', 989e12),
    ('A100', 312e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),
)


def accelerator_peak(device_kind: str, dtype: str = 'bfloat16') -> tuple[float, str] | None:
  """(dense FLOP/s, name) from the vendor table, or None (unknown device, or not bf16)."""
  if dtype != 'bfloat16':
    return None
  for name, peak in KNOWN_PEAKS:
    if name.lower() in device_kind.lower():
      return peak, name
  return None


def measured_matmul_peak(n: int = 1024, repeats: int = 5, device=None,
                         dtype: str = 'float32') -> float:
  """Best observed FLOP/s of an n^3 matmul on `device` (default: the first; all its cores)."""
  a = jax.device_put(jnp.ones((n, n), jnp.dtype(dtype)), device or jax.devices()[0])
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


@functools.lru_cache(maxsize=None)  # measured once per process, not once per run
def peak_flops_per_device() -> tuple[float, str]:
  """(FLOP/s, where the number comes from)."""
  kind = jax.devices()[0].device_kind
  known = accelerator_peak(kind)
  if known:
    return known[0], f'{kind}: {known[0] / 1e12:.0f} TFLOP/s bf16 dense (vendor)'
  if jax.devices()[0].platform == 'cpu':
    # Forced host devices (XLA_FLAGS) share the same cores: the measured peak is for all.
    peak = measured_matmul_peak() / jax.local_device_count()
    return peak, f'cpu: {peak / 1e9:.0f} GFLOP/s per device (measured fp32 matmul)'
  return 0.0, f'{kind}: unknown peak (MFU not reported)'


def enable_compilation_cache() -> None:
  """Compiled programs persist across runs, so a rerun, a resume after preemption or the
  next seed of a sweep skips most of its compilation: in $JAX_COMPILATION_CACHE_DIR when
  set (jax reads it itself), else in $RESEARCH_CACHE_DIR/jax or ~/.cache/research/jax.
  The command lines call this first; a notebook may too."""
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  root = os.environ.get('RESEARCH_CACHE_DIR') or os.path.expanduser('~/.cache/research')
  jax.config.update('jax_compilation_cache_dir', os.path.join(root, 'jax'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
