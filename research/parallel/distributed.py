"""Joins a multi-process run (`jax.distributed.initialize`) before jax is used.

- TPU pod / Cloud / SLURM (`distributed.auto=True`, or TPU worker env vars present): no
  arguments, jax discovers the coordinator itself (under SLURM from SLURM_JOB_ID,
  SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; see
  tpu_scripts/slurm_train.sbatch).
- Elsewhere (GPU hosts, CPU processes on one machine in tests): coordinator address,
  process count and id from `config.distributed`, or from the environment variables
  RESEARCH_COORDINATOR_ADDRESS, RESEARCH_NUM_PROCESSES, RESEARCH_PROCESS_ID.
Single-process runs do nothing here.
"""
from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging


def _setting(cfg: ml_collections.ConfigDict, key: str, env: str, empty):
  value = cfg[key]
  if value == empty and env in os.environ:
    value = type(empty)(os.environ[env])
  return value


def _cpu_collectives(cfg: ml_collections.ConfigDict) -> None:
  """CPU devices in several processes talk through gloo (the default has no collectives);
  the setting concerns CPU devices only, so TPU and GPU runs are unaffected."""
  if cfg.cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cfg.cpu_collectives)


def initialize(cfg: ml_collections.ConfigDict) -> None:
  if jax.distributed.is_initialized():
    return
  on_tpu_pod = 'TPU_WORKER_HOSTNAMES' in os.environ and ',' in os.environ['TPU_WORKER_HOSTNAMES']
  if cfg.auto or on_tpu_pod:
    _cpu_collectives(cfg)
    jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout_s)
    logging.info('Joined a %d-process run as process %d.', jax.process_count(), jax.process_index())
    return
  address = _setting(cfg, 'coordinator_address', 'RESEARCH_COORDINATOR_ADDRESS', '')
  num_processes = _setting(cfg, 'num_processes', 'RESEARCH_NUM_PROCESSES', 0)
  process_id = _setting(cfg, 'process_id', 'RESEARCH_PROCESS_ID', -1)
  if not address and num_processes <= 1:
    return
  if not address or num_processes < 2 or not 0 <= process_id < num_processes:
    raise ValueError(
        f'A multi-process run needs distributed.coordinator_address (host:port), '
        f'num_processes >= 2 and 0 <= process_id < num_processes; got address={address!r}, '
        f'num_processes={num_processes}, process_id={process_id}.')
  _cpu_collectives(cfg)
  jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                             process_id=process_id,
                             initialization_timeout=cfg.initialization_timeout_s)
  logging.info('Joined a %d-process run as process %d (coordinator %s).', num_processes,
               process_id, address)
