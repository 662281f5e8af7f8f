"""Same losses on 1 device, 8 simulated devices (DP / FSDP / data x tensor), and 2 processes.

8-device runs happen in subprocesses because the device count is fixed when jax starts.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from research import models, objectives, training
from research.training import steps
from tests import multidevice
from tests.helpers import REPO_ROOT

MODELS = ['mlp', 'cnn', 'transformer']
# Equivalence runs compare training losses only: no evaluation (saves its compilation).
NO_EVAL = {'dataset.eval_splits': ''}
MESHES = {
    'dp8': {'mesh.data': 8, 'mesh.fsdp': 1, 'mesh.tensor': 1, **NO_EVAL},
    'fsdp8': {'mesh.data': 1, 'mesh.fsdp': 8, 'mesh.tensor': 1, **NO_EVAL},
    'dp2_tp4': {'mesh.data': 2, 'mesh.fsdp': 1, 'mesh.tensor': 4, **NO_EVAL},
}
RTOL = 1e-5


def _env(devices: int) -> dict:
  return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'PYTHONPATH': REPO_ROOT}


def _run_specs(specs: list[dict], devices: int, tmp_path, tag: str) -> dict:
  spec_path, out_path = tmp_path / f'{tag}_spec.json', tmp_path / f'{tag}_out.json'
  spec_path.write_text(json.dumps(specs))
  proc = subprocess.run([sys.executable, '-m', 'tests.multidevice', str(spec_path), str(out_path)],
                        cwd=REPO_ROOT, env=_env(devices), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out_path.read_text())


def _single_device(model: str, workdir: str, steps_: int = 20, overrides=None) -> list[float]:
  return multidevice.run({'model': model, 'workdir': workdir, 'steps': steps_,
                          'overrides': overrides or {}})['losses']


@pytest.fixture(scope='module')
def eight_device_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('eight')
  specs = [{'name': f'{model}/{mesh}', 'model': model, 'workdir': str(tmp / model / mesh),
            'overrides': overrides}
           for model in MODELS for mesh, overrides in MESHES.items()]
  specs.append({'name': 'cnn_batchnorm/dp8', 'model': 'cnn', 'workdir': str(tmp / 'cnn_bn'),
                'overrides': BATCHNORM_DP8})
  return _run_specs(specs, 8, tmp, 'eight')


# BatchNorm over the global batch: its statistics (and running averages) must not depend
# on how the batch is split over devices. Evaluated at the end, with running averages.
BATCHNORM_DP8 = {'mesh.data': 8, 'mesh.fsdp': 1, 'mesh.tensor': 1, 'model.norm': 'batch',
                 'dataset.eval_splits': 'test'}


def test_batchnorm_data_parallel_matches_single_device(eight_device_runs, tmp_path):
  reference = multidevice.run({'model': 'cnn', 'workdir': str(tmp_path / 'one'),
                               'overrides': {**BATCHNORM_DP8, 'mesh.data': 1}})
  run = eight_device_runs['cnn_batchnorm/dp8']
  assert run['results']['devices'] == 8 and reference['results']['devices'] == 1
  np.testing.assert_allclose(run['losses'], reference['losses'], rtol=RTOL)
  np.testing.assert_allclose(run['test_loss'], reference['test_loss'], rtol=RTOL)
  print(f"BatchNorm CNN, 20 steps: final train loss {run['losses'][-1]:.6f} on 8 devices vs "
        f"{reference['losses'][-1]:.6f} on 1; test loss {run['test_loss']:.6f} vs "
        f"{reference['test_loss']:.6f}")


@pytest.mark.parametrize('model', MODELS)
def test_meshes_match_single_device(model, eight_device_runs, tmp_path):
  reference = _single_device(model, str(tmp_path / 'one'), overrides=NO_EVAL)
  assert len(reference) == 20
  for mesh in MESHES:
    run = eight_device_runs[f'{model}/{mesh}']
    assert run['results']['devices'] == 8
    np.testing.assert_allclose(run['losses'], reference, rtol=RTOL,
                               err_msg=f'{model} on {mesh}')
    assert run['results']['train_step_compilations'] == 1  # compiled once, not per step


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(eight_device_runs, tmp_path):
  """2 processes x 4 CPU devices over loopback (gloo) == 1 process x 8 devices."""
  port = _free_port()
  workdir = str(tmp_path / 'multi')
  procs = []
  try:
    for pid in range(2):
      spec = [{'name': 'mlp', 'model': 'mlp', 'workdir': workdir, 'overrides': {
          **MESHES['dp8'], 'mesh.data': -1, 'dataset.eval_splits': 'test',
          'distributed.coordinator_address': f'127.0.0.1:{port}',
          'distributed.num_processes': 2, 'distributed.process_id': pid,
          'distributed.initialization_timeout_s': 120,
          'eval_batch_size': 128}}]  # 1,000 test examples: the last batch is padded
      spec_path = tmp_path / f'spec{pid}.json'
      spec_path.write_text(json.dumps(spec))
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'tests.multidevice', str(spec_path), str(tmp_path / f'out{pid}.json')],
          cwd=REPO_ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
          start_new_session=True))
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outputs):
      assert p.returncode == 0, err[-4000:]
  finally:
    for p in procs:  # never leave a process (or its port) behind, even on failure
      if p.poll() is None:
        os.killpg(p.pid, 9)
        p.wait()
  result = json.loads((tmp_path / 'out0.json').read_text())['mlp']
  assert result['results']['processes'] == 2 and result['results']['devices'] == 8
  assert not (tmp_path / 'out1.json').exists()  # only process 0 writes
  assert result['test_examples'] == result['test_confusion_total'] == 1000
  np.testing.assert_allclose(result['losses'], eight_device_runs['mlp/dp8']['losses'], rtol=RTOL)


def test_grad_accumulation_equals_one_big_batch():
  import flax.linen as nn
  from research.training import optim
  from research.config import default_config

  model = models.build_model(models.model_config('mlp'), 10)
  tx = optim.create_optimizer(default_config().optimizer, 10)
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(64, 40)).astype(np.float32),
           'labels': rng.integers(0, 10, 64).astype(np.int32),
           'mask': np.ones(64, bool)}
  state = nn.unbox(steps.create_train_state(model, tx, batch['inputs'][:1], jax.random.key(0)))
  objective = objectives.lookup('classification')()
  one, m1 = jax.jit(lambda s, b: steps.train_step(s, b, objective=objective, seed=0))(state, batch)
  four, m4 = jax.jit(lambda s, b: steps.train_step(s, b, objective=objective, seed=0,
                                                   grad_accum_steps=4))(state, batch)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_checkpoint_restores_onto_other_meshes(tmp_path):
  """Save on 8 devices (FSDP) at step 10; resume on 1 and on 4 devices: same losses."""
  half = str(tmp_path / 'half')
  specs = [
      {'name': 'full', 'model': 'mlp', 'workdir': str(tmp_path / 'full'),
       'overrides': MESHES['fsdp8']},
      {'name': 'half', 'model': 'mlp', 'workdir': half, 'steps': 10,
       'overrides': MESHES['fsdp8']},
  ]
  eight = _run_specs(specs, 8, tmp_path, 'save')
  full = eight['full']['losses']
  for devices in (1, 4):
    workdir = str(tmp_path / f'resume{devices}')
    shutil.copytree(half, workdir)
    overrides = {'mesh.data': 1, 'mesh.fsdp': -1, 'mesh.tensor': 1, **NO_EVAL}
    if devices == 1:
      losses = _single_device('mlp', workdir, 20, overrides)
    else:
      losses = _run_specs([{'name': 'r', 'model': 'mlp', 'workdir': workdir,
                            'overrides': overrides}], devices, tmp_path, f'r{devices}')['r']['losses']
    assert len(losses) == 20  # steps 1-10 from the log kept on resume, 11-20 trained here
    np.testing.assert_allclose(losses[10:], full[10:], rtol=RTOL, err_msg=f'{devices} devices')


def test_fsdp_shards_parameters_and_optimizer_state(tmp_path):
  """Per-device params + Adam state under FSDP 8 <= 1/8 of one device's, + 10%."""
  out = tmp_path / 'memory.json'
  proc = subprocess.run([sys.executable, '-m', 'tests.multidevice', 'fsdp_memory', str(out)],
                        cwd=REPO_ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  figures = json.loads(out.read_text())
  single, fsdp = figures['single']['state'], figures['fsdp']['state']
  print(f'train state per device: 1 device {single:,} bytes; FSDP 8 {fsdp:,} bytes '
        f'({fsdp / single:.4f} of it; bound {1.1 / 8:.4f})')
  assert single > 30_000_000  # ~3.2M params x (param + 2 Adam moments) x 4 bytes
  assert fsdp <= single / 8 * 1.1


# A stand-in for `srun` inside an allocation: starts SLURM_NTASKS copies of the command on
# this machine, each with the variables srun gives a task, and fails if any task fails.
FAKE_SRUN = r'''#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done  # srun's own options
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST \
  SLURM_STEP_NUM_NODES=$SLURM_NNODES SLURM_STEP_NUM_TASKS=$SLURM_NTASKS \
    "$@" > "$TASK_LOGS/task$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
'''


def _slurm_job_id_with_free_port() -> int:
  """A job id whose coordinator port (jax: 61440 + id % 4096) is free on loopback."""
  for offset in np.random.default_rng().permutation(4096):
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', 61440 + int(offset)))
      except OSError:
        continue
    return 4096 + int(offset)
  raise RuntimeError('no free port in 61440-65535')


def test_slurm_batch_script_matches_one_process(eight_device_runs, tmp_path):
  """tpu_scripts/slurm_train.sbatch in a 2-task allocation on this machine (4 CPU devices
  per task, jax's SLURM detection, gloo over loopback) == 1 process x 8 devices."""
  bin_dir, logs = tmp_path / 'bin', tmp_path / 'logs'
  bin_dir.mkdir()
  logs.mkdir()
  (bin_dir / 'srun').write_text(FAKE_SRUN)
  (bin_dir / 'srun').chmod(0o755)
  workdir = str(tmp_path / 'slurm')
  allocation = {'SLURM_JOB_ID': str(_slurm_job_id_with_free_port()),
                'SLURM_JOB_NODELIST': '127.0.0.1', 'SLURM_NNODES': '1', 'SLURM_NTASKS': '2',
                'SLURM_NTASKS_PER_NODE': '2', 'SLURM_SUBMIT_DIR': REPO_ROOT}
  env = {**_env(4), **allocation, 'TASK_LOGS': str(logs), 'PYTHON': sys.executable,
         'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'}
  # The overrides make configs/mnist1d/mlp.py the scaling test's MLP (multidevice.py).
  overrides = ['--config.model.hidden_sizes=(128, 128)', '--config.num_train_steps=20',
               '--config.batch_size=64', '--config.eval_batch_size=200',
               '--config.log_every_steps=1', '--config.eval_every_steps=0',
               '--config.checkpoint.every_steps=0', '--config.checkpoint.async_save=False',
               '--config.write_report=False', '--config.distributed.initialization_timeout_s=120']
  proc = subprocess.Popen(['bash', 'tpu_scripts/slurm_train.sbatch', 'configs/mnist1d/mlp.py',
                           workdir, *overrides], cwd=REPO_ROOT, env=env, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    out, _ = proc.communicate(timeout=400)
  finally:
    if proc.poll() is None:  # never leave a task (or its port) behind
      os.killpg(proc.pid, 9)
      proc.wait()
  task_logs = '\n'.join(f'--- {p.name}\n{p.read_text()[-3000:]}' for p in sorted(logs.iterdir()))
  assert proc.returncode == 0, out + task_logs
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert results['processes'] == 2 and results['devices'] == 8, results
  np.testing.assert_allclose(multidevice.train_losses(workdir),
                             eight_device_runs['mlp/dp8']['losses'], rtol=RTOL)
