"""tpu_scripts/: the gcloud commands of the TPU VM scripts (DRY_RUN=1), their errors, and
shellcheck. The SLURM script runs for real in tests/test_scaling.py.

A stand-in `gcloud` comes first on PATH in every test: in dry runs it must never be called,
and without DRY_RUN it records its arguments, which must equal what the dry run printed.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess

import pytest

from tests.helpers import REPO_ROOT

SCRIPTS = os.path.join(REPO_ROOT, 'tpu_scripts')
CONFIG = 'configs/mnist1d/transformer.py'
WORKDIR = 'gs://my-bucket/runs/exp 1'  # a space: quoting must survive the remote shell
EXTRA = ('--config.seed=3', "--config.model.name=it's")

# accelerator -> (gcloud accelerator type, hosts, zone, runtime version)
SLICES = {
    'v4-8': ('v4-8', 1, 'us-central2-b', 'tpu-ubuntu2204-base'),
    'v4-32': ('v4-32', 4, 'us-central2-b', 'tpu-ubuntu2204-base'),
    'v5e-16': ('v5litepod-16', 4, 'us-west4-a', 'v2-alpha-tpuv5-lite'),
}


@pytest.fixture
def fake_gcloud(tmp_path):
  """A `gcloud` first on PATH that appends its arguments, shell-quoted on one line, to a
  log file and succeeds."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'gcloud_calls'
  script = bin_dir / 'gcloud'
  script.write_text('#!/usr/bin/env bash\nprintf "gcloud" >> "$FAKE_GCLOUD_LOG"\n'
                    'printf " %q" "$@" >> "$FAKE_GCLOUD_LOG"\necho >> "$FAKE_GCLOUD_LOG"\n')
  script.chmod(0o755)
  return {'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'FAKE_GCLOUD_LOG': str(log),
          'log': log}


def _run(script: str, *args: str, env: dict, **settings: str) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items()
           if k not in ('TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'REPO_URL',
                        'REPO_DIR', 'DRY_RUN')}
  full_env = {**clean, 'PATH': env['PATH'], 'FAKE_GCLOUD_LOG': env['FAKE_GCLOUD_LOG'],
              **settings}
  return subprocess.run(['bash', os.path.join(SCRIPTS, script), *args], env=full_env,
                        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


def _commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if line.startswith('gcloud ')]


def _flag(argv: list[str], name: str) -> str:
  values = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.mark.parametrize('accelerator', sorted(SLICES))
def test_dry_run_prints_the_gcloud_commands_of_each_slice(accelerator, fake_gcloud):
  gcloud_type, hosts, zone, runtime = SLICES[accelerator]
  settings = dict(ACCELERATOR_TYPE=accelerator, DRY_RUN='1', TPU_NAME='my-tpu')

  create = _run('create.sh', env=fake_gcloud, **settings)
  assert create.returncode == 0, create.stderr
  (argv,) = _commands(create.stdout)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'my-tpu']
  assert _flag(argv, 'zone') == zone
  assert _flag(argv, 'accelerator-type') == gcloud_type
  assert _flag(argv, 'version') == runtime

  setup = _run('setup.sh', env=fake_gcloud, REPO_URL='https://example.com/r.git', **settings)
  assert setup.returncode == 0, setup.stderr
  (argv,) = _commands(setup.stdout)
  assert _flag(argv, 'worker') == 'all' and _flag(argv, 'zone') == zone
  remote = _flag(argv, 'command')
  assert 'git clone https://example.com/r.git research' in remote
  assert "-e '.[gcs]'" in remote  # Cloud Storage support for gs:// workdirs

  launch = _run('launch.sh', CONFIG, WORKDIR, *EXTRA, env=fake_gcloud, **settings)
  assert launch.returncode == 0, launch.stderr
  assert f'the same command on all {hosts} worker(s)' in launch.stdout
  (argv,) = _commands(launch.stdout)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
  assert _flag(argv, 'worker') == 'all'  # one command, run by every host
  assert _flag(argv, 'zone') == zone
  # What each host's shell runs: the same config and workdir everywhere, quoting intact.
  remote = shlex.split(_flag(argv, 'command'))
  assert remote[:3] == ['cd', 'research', '&&']
  assert remote[3:6] == ['.venv/bin/python', '-m', 'research.main']
  assert _flag(remote, 'config') == CONFIG
  assert _flag(remote, 'workdir') == WORKDIR
  assert '--config.distributed.auto=True' in remote
  assert remote[-2:] == list(EXTRA)

  teardown = _run('teardown.sh', env=fake_gcloud, **settings)
  assert teardown.returncode == 0, teardown.stderr
  (argv,) = _commands(teardown.stdout)
  assert argv[4:6] == ['delete', 'my-tpu'] and _flag(argv, 'zone') == zone

  assert not fake_gcloud['log'].exists()  # a dry run never calls gcloud


def test_without_dry_run_gcloud_gets_exactly_the_printed_commands(fake_gcloud):
  settings = dict(ACCELERATOR_TYPE='v4-32')
  dry = _run('launch.sh', CONFIG, WORKDIR, *EXTRA, env=fake_gcloud, DRY_RUN='1', **settings)
  real = _run('launch.sh', CONFIG, WORKDIR, *EXTRA, env=fake_gcloud, **settings)
  assert real.returncode == 0, real.stderr
  assert _commands(fake_gcloud['log'].read_text()) == _commands(dry.stdout)


@pytest.mark.parametrize('script, args, settings, message', [
    ('launch.sh', (CONFIG, 'runs/exp1'), {'ACCELERATOR_TYPE': 'v4-32'},
     'WORKDIR=runs/exp1: v4-32 has 4 hosts, so the workdir must be a gs://BUCKET/path'),
    ('create.sh', (), {'ACCELERATOR_TYPE': 'v3-8'},
     'ACCELERATOR_TYPE=v3-8 is not supported: use v4-N'),
    ('create.sh', (), {'ACCELERATOR_TYPE': 'v4-12'},
     'ACCELERATOR_TYPE=v4-12: v4 slices are v4-8, v4-16, v4-32'),
    ('create.sh', (), {'ACCELERATOR_TYPE': 'v5e-12'},
     'ACCELERATOR_TYPE=v5e-12: v5e slices have 1, 4, 8, 16'),
    ('setup.sh', (), {'ACCELERATOR_TYPE': 'v4-8'}, 'set REPO_URL'),
    ('launch.sh', (CONFIG,), {'ACCELERATOR_TYPE': 'v4-8'}, 'usage: tpu_scripts/launch.sh'),
])
def test_bad_settings_fail_with_one_clear_line(script, args, settings, message, fake_gcloud):
  proc = _run(script, *args, env=fake_gcloud, DRY_RUN='1', **settings)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not _commands(proc.stdout) and not fake_gcloud['log'].exists()


def test_a_single_host_slice_may_use_a_local_workdir(fake_gcloud):
  proc = _run('launch.sh', CONFIG, 'runs/exp1', env=fake_gcloud, DRY_RUN='1',
              ACCELERATOR_TYPE='v4-8')
  assert proc.returncode == 0, proc.stderr
  assert _flag(shlex.split(_flag(_commands(proc.stdout)[0], 'command')), 'workdir') == 'runs/exp1'


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck is not installed (.ci/run installs it)')
def test_scripts_are_shellcheck_clean():
  scripts = sorted(glob.glob(os.path.join(SCRIPTS, '*.sh')) +
                   glob.glob(os.path.join(SCRIPTS, '*.sbatch')))
  assert len(scripts) >= 6
  proc = subprocess.run(['shellcheck', *scripts], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
