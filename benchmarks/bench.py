"""Training throughput and MFU of each model family, next to the same model in PyTorch.

    python -m benchmarks.bench                           # {mlp, cnn, transformer} x {small, medium}
    python -m benchmarks.bench --models=cnn --sizes=medium --json=bench.json
    python -m benchmarks.bench --no-torch                # jax only (torch is optional)
    python -m benchmarks.bench --device=gpu --dtype=bfloat16 --models=transformer --sizes=bert_base

What is timed is what `research.training` runs: `steps.train_step` with Adam from
`optim.create_optimizer`, jitted with the trainer's shardings and state donation, on one
fixed batch already on the device (the input pipeline is not timed). PyTorch runs the twin
model (`benchmarks.bench_torch`: same shapes, same parameter count, asserted) with
`torch.optim.Adam`, eagerly, in its own process, as a PyTorch user would run it. Repeats
alternate jax, torch, jax, torch, ... so a noisy neighbour slows both, and `jax/torch` is the
median of the per-repeat ratios: quote ratios, not seconds, on a shared machine. Even
ratios move with load: PyTorch's OpenMP threads slow down far more than XLA's when other
processes take the cores, so the machine line records the load average, and
`taskset -c 1 python -m benchmarks.bench` (one core for both) gives load-robust ratios.

MFU = model FLOPs per step / step time / peak, with FLOPs from
`research.models.model_flops_per_example` (the convention in docs/architecture.md). On CPU the peak
is a 2048^3 matmul in the run's dtype, measured before and after the cases (the best
kept); on accelerators the dense peak of the device and dtype (H100: 989 TFLOP/s bf16),
or `--peak_tflops`. `--set KEY=VALUE` overrides a model hyperparameter in every case, e.g.
`--set conv_impl=xla` or `--set attention_impl=reference`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from research import config as config_lib
from research.training import hardware, optim, precision_audit, steps
from research import models, objectives
from research.parallel import sharding

# ---------------------------------------------------------------------------------------
# Cases: every (model family, size) the benchmark knows
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark row: a model config block, one example's shape and a batch size."""
  family: str                    # a name in research.models.MODELS
  size: str
  model: dict[str, Any]          # hyperparameters for models.model_config(family, ...)
  input_shape: tuple[int, ...]   # one example, channels-last, no batch axis
  batch_size: int
  num_classes: int = 10
  why: str = ''

  @property
  def vocab_size(self) -> int:
    """> 0: the inputs are token ids in [1, vocab_size)."""
    return self.model.get('vocab_size', 0) if self.model.get('frontend') == 'text' else 0


def _case(family, size, model, input_shape, batch_size, why, num_classes=10) -> Case:
  return Case(family, size, model, input_shape, batch_size, num_classes, why)


# Pinned, so the cases do not move when the model's defaults do. On an NVIDIA GPU in
# bfloat16, `--set attention_impl=cudnn` asks for cuDNN's flash attention.
_TRANSFORMER_COMMON = dict(position_embedding='learned', attention_impl='fused')

CASES: dict[tuple[str, str], Case] = {(c.family, c.size): c for c in [
    _case('mlp', 'small', dict(hidden_sizes=(100, 100), residual=True), (40,), 100,
          'MNIST-1D paper MLP, recipe batch'),
    _case('mlp', 'medium', dict(hidden_sizes=(1024, 1024), residual=True), (784,), 512,
          '28x28 inputs, 1024 wide: matmul-bound'),
    _case('cnn', 'small', dict(), (40,), 100, 'MNIST-1D paper CNN, recipe batch'),
    _case('cnn', 'medium', dict(features=(32, 64, 128), kernel_sizes=(3, 3, 3),
                                strides=(1, 2, 2), padding=1, pooling='flatten'),
          (28, 28, 1), 128, '28x28 images, 32/64/128 channels: conv-bound'),
    # The model of configs/mnist1d/transformer.py (tests/test_bench.py keeps them equal).
    _case('transformer', 'small', dict(frontend='features', num_layers=2, num_heads=8,
                                       hidden_size=64, mlp_ratio=2.0, dropout_rate=0.0,
                                       position_embedding='relative', pooling='mean',
                                       attention_impl='fused'),
          (40,), 100, 'configs/mnist1d/transformer.py, recipe batch'),
    _case('transformer', 'medium', dict(frontend='text', vocab_size=260, max_length=128,
                                        num_layers=4, num_heads=4, hidden_size=256,
                                        mlp_ratio=4.0, dropout_rate=0.0, pooling='cls',
                                        **_TRANSFORMER_COMMON),
          (128,), 32, 'byte-level text, 4 layers, d=256, seq 128: matmul-bound'),
    _case('transformer', 'bert_base', dict(frontend='text', vocab_size=30522, max_length=512,
                                           num_layers=12, num_heads=12, hidden_size=768,
                                           mlp_ratio=4.0, dropout_rate=0.0, pooling='cls',
                                           **_TRANSFORMER_COMMON),
          (512,), 32, 'BERT-base shapes, seq 512: for accelerators'),
]}
FAMILIES = ('mlp', 'cnn', 'transformer')
DEFAULT_SIZES = ('small', 'medium')

def make_batch(case: Case, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A fixed random batch: float inputs, or token ids in [1, vocab) (no padding)."""
  rng = np.random.default_rng(seed)
  shape = (batch_size,) + tuple(case.input_shape)
  if case.vocab_size:
    inputs = rng.integers(1, case.vocab_size, shape).astype(np.int32)
  else:
    inputs = rng.standard_normal(shape).astype(np.float32)
  labels = rng.integers(0, case.num_classes, batch_size).astype(np.int32)
  return {'inputs': inputs, 'labels': labels, 'mask': np.ones(batch_size, bool)}


def model_block(case: Case, dtype: str | None = None,
                overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The `config.model` block of `case`, with `dtype` and any `overrides` applied."""
  hp = dict(case.model, **(overrides or {}))
  if dtype and dtype != 'float32':
    if 'dtype' not in models.hyperparameters(case.family):
      raise ValueError(f'--dtype={dtype}: model {case.family!r} has no dtype field.')
    hp['dtype'] = dtype
  return models.model_config(case.family, **hp)


# ---------------------------------------------------------------------------------------
# The jax side: the trainer's own step, compiled the trainer's way
# ---------------------------------------------------------------------------------------


class JaxRunner:
  """Builds state and the jitted train_step like `research.training`; `run(n)` takes n steps."""

  def __init__(self, case: Case, model_cfg: ml_collections.ConfigDict, batch: dict,
               device: jax.Device, learning_rate: float = 1e-3, seed: int = 0):
    model = models.build_model(model_cfg, case.num_classes)
    opt_cfg = config_lib.default_config().optimizer
    opt_cfg.name = 'adam'
    opt_cfg.learning_rate = learning_rate
    tx = optim.create_optimizer(opt_cfg, num_train_steps=1000)

    mesh_cfg = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
    self.mesh = sharding.make_mesh(mesh_cfg, devices=[device])
    init_fn = functools.partial(steps.create_train_state, model, tx, batch['inputs'][:1])
    abstract_state = jax.eval_shape(init_fn, jax.random.key(seed))
    state_sharding = sharding.tree_shardings(abstract_state, self.mesh)
    batch_sharding = sharding.batch_sharding(self.mesh)
    with sharding.activate(self.mesh):
      self.state = jax.jit(lambda rng: nn.unbox(init_fn(rng)),
                           out_shardings=state_sharding)(jax.random.key(seed))
      self.batch = jax.device_put(batch, batch_sharding)
      train_fn = jax.jit(functools.partial(steps.train_step, seed=seed,
                                           objective=objectives.lookup('classification')()),
                         in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, sharding.replicated(self.mesh)),
                         donate_argnums=(0,))
      start = time.perf_counter()
      lowered = train_fn.lower(self.state, self.batch)
      self.step_fn = lowered.compile()
      self.compile_s = time.perf_counter() - start
    # Dots and convolutions by operand dtype: in the program handed to XLA, and compiled.
    self.dots_lowered = precision_audit.stablehlo_dots(lowered.as_text())
    self.dots_compiled = precision_audit.compiled_dots(self.step_fn.as_text())
    self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.model = model

  def run(self, num_steps: int) -> float:
    """Seconds for `num_steps` steps, dispatched back to back as the trainer does."""
    state = self.state
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = self.step_fn(state, self.batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    self.state = state
    return elapsed


# ---------------------------------------------------------------------------------------
# The torch side: a worker process running benchmarks.bench_torch
# ---------------------------------------------------------------------------------------


class TorchWorker:
  """`python -m benchmarks.bench_torch --serve`, spoken to in JSON lines over a pipe.

  A separate process: jax and torch each keep their own thread pools and allocator, as in a
  user's program, and a machine without torch just gets a jax-only table.
  """

  def __init__(self, threads: int = 0, device: str = 'cpu'):
    cmd = [sys.executable, '-m', 'benchmarks.bench_torch', '--serve', f'--device={device}']
    if threads:
      cmd.append(f'--threads={threads}')
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, bufsize=1)
    self.info = self.call(op='hello')

  def call(self, **request) -> dict[str, Any]:
    self.proc.stdin.write(json.dumps(request) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'The torch worker exited (code {self.proc.wait()}); see stderr above.')
    reply = json.loads(line)
    if 'error' in reply:
      raise RuntimeError(f"torch worker: {reply['error']}")
    return reply

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.call(op='quit')
      except (RuntimeError, BrokenPipeError, OSError):
        pass
      self.proc.wait(timeout=30)


def start_torch_worker(threads: int = 0, device: str = 'cpu') -> tuple[TorchWorker | None, str]:
  """(worker, '') or (None, why not)."""
  try:  # not imported here: torch lives in the worker process
    found = importlib.util.find_spec('torch') is not None
  except (ImportError, ValueError):
    found = False
  if not found:
    return None, "torch is not installed (pip install -e '.[bench]')"
  try:
    return TorchWorker(threads, device), ''
  except (RuntimeError, OSError) as e:
    return None, f'the torch worker did not start: {e}'


# ---------------------------------------------------------------------------------------
# One case: compile, calibrate, alternate repeats
# ---------------------------------------------------------------------------------------


def _steps_for(seconds_per_step: float, target_s: float) -> int:
  return max(1, int(round(target_s / max(seconds_per_step, 1e-9))))


def bench_case(case: Case, *, device: jax.Device, dtype: str, batch_size: int,
               repeats: int, steps: int, target_s: float, peak_flops: float,
               torch_worker: TorchWorker | None, overrides: dict[str, Any] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times `case` in jax (and torch), alternating repeats; returns one table row."""
  known = models.hyperparameters(case.family)
  overrides = {k: v for k, v in (overrides or {}).items() if k in known}
  if overrides:
    case = dataclasses.replace(case, model={**case.model, **overrides})
  model_cfg = model_block(case, dtype)
  batch = make_batch(case, batch_size)
  jax_runner = JaxRunner(case, model_cfg, batch, device)
  flops_per_example = models.model_flops_per_example(jax_runner.model, case.input_shape)
  row: dict[str, Any] = {
      'model': case.family, 'size': case.size, 'params': int(jax_runner.num_params),
      'batch': batch_size, 'input_shape': list(case.input_shape), 'dtype': dtype,
      'why': case.why,
      'hyperparameters': {k: v for k, v in model_cfg.to_dict().items() if k != 'name'},
      'compile_s': jax_runner.compile_s, 'flops_per_step': flops_per_example * batch_size,
      'dots_lowered': precision_audit.summary(jax_runner.dots_lowered),
      'dots_compiled': precision_audit.summary(jax_runner.dots_compiled),
  }

  torch_steps = 0
  if torch_worker is not None:
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'batch.npz')
      np.savez(path, **batch)
      info = torch_worker.call(op='setup', family=case.family,
                               hyperparameters=row['hyperparameters'],
                               num_classes=case.num_classes, batch_path=path)
    if info['num_params'] != row['params']:
      raise AssertionError(
          f'{case.family}/{case.size}: the torch twin has {info["num_params"]:,} parameters, '
          f'the flax model {row["params"]:,}; fix research/bench_torch.py.')
    torch_worker.call(op='run', steps=2)  # warm-up: allocator, oneDNN primitive caches

  jax_runner.run(2)  # warm-up, after compilation
  if steps:
    jax_steps = torch_steps = steps
  else:  # calibrate: each repeat lasts about target_s
    jax_steps = _steps_for(jax_runner.run(1), target_s)
    if torch_worker is not None:
      torch_steps = _steps_for(torch_worker.call(op='run', steps=1)['seconds'], target_s)

  jax_times, torch_times, ratios = [], [], []
  for _ in range(repeats):
    jax_times.append(jax_runner.run(jax_steps) / jax_steps)
    if torch_worker is not None:
      torch_times.append(torch_worker.call(op='run', steps=torch_steps)['seconds'] / torch_steps)
      ratios.append(torch_times[-1] / jax_times[-1])
  step_s = statistics.median(jax_times)
  row.update({
      'jax_step_s': step_s, 'jax_steps_per_s': 1 / step_s,
      'jax_examples_per_s': batch_size / step_s,
      'jax_step_s_all': jax_times, 'steps_per_repeat': jax_steps,
      'mfu': row['flops_per_step'] / step_s / peak_flops if peak_flops else None,
  })
  if torch_worker is not None:
    torch_s = statistics.median(torch_times)
    row.update({'torch_step_s': torch_s, 'torch_examples_per_s': batch_size / torch_s,
                'torch_step_s_all': torch_times, 'jax_over_torch': statistics.median(ratios),
                'jax_over_torch_all': ratios})
  log(f"  {case.family}/{case.size}: jax {row['jax_examples_per_s']:,.0f} ex/s, "
      f"compile {row['compile_s']:.1f} s"
      + (f", MFU {100 * row['mfu']:.1f}%" if row['mfu'] is not None else '')
      + (f", torch {row['torch_examples_per_s']:,.0f} ex/s, jax/torch "
         f"{row['jax_over_torch']:.2f}" if 'jax_over_torch' in row else ''))
  return row


# ---------------------------------------------------------------------------------------
# Machine, table, command line
# ---------------------------------------------------------------------------------------


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info(device: jax.Device, peak_flops: float, peak_source: str,
                 torch_info: dict[str, Any] | None, torch_note: str,
                 load_at_start: float | None = None) -> dict[str, Any]:
  import flax
  import jaxlib
  return {
      'device': device.device_kind, 'platform': device.platform,
      'cpu': _cpu_name(), 'cores': _usable_cores(), 'machine_cores': os.cpu_count(),
      'peak_gflops': peak_flops / 1e9, 'peak_source': peak_source,
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'torch': (torch_info or {}).get('torch'), 'torch_threads': (torch_info or {}).get('threads'),
      'torch_matmul_gflops': (torch_info or {}).get('matmul_gflops'),
      'torch_note': torch_note,
      'python': platform.python_version(),
      'load_average_start': load_at_start, 'load_average_end': _load_average(),
  }


def _usable_cores() -> int:
  """Cores this process may run on (fewer than the machine's under `taskset`)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _load_average() -> float | None:
  """1-minute load average (a sign of neighbours on a shared machine), if the OS has one."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def _fmt(x: float | None, spec: str = '') -> str:
  """`spec`, or three significant digits (no exponent) when no spec is given."""
  if x is None:
    return '-'
  if spec:
    return format(x, spec)
  if x >= 100:
    return f'{x:,.0f}'
  return f'{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}' if x else '0'


def format_table(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
  lines = ['| model | size | params | batch | jax steps/s | jax ex/s | compile s | MFU % '
           '| torch ex/s | jax/torch |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['size']} | {r['params']:,} | {r['batch']} "
        f"| {_fmt(r['jax_steps_per_s'])} | {_fmt(r['jax_examples_per_s'])} "
        f"| {r['compile_s']:.1f} | {100 * r['mfu']:.1f} "
        f"| {_fmt(r.get('torch_examples_per_s'))} "
        f"| {_fmt(r.get('jax_over_torch'), '.2f')} |")
  m = machine
  threads = f"{m['torch_threads']} thread{'' if m['torch_threads'] == 1 else 's'}"
  torch_part = (f"torch {m['torch']} ({threads}, 2048³ matmul "
                f"{m['torch_matmul_gflops']:,.0f} GFLOP/s)" if m['torch']
                else f"torch: not run ({m['torch_note']})")
  peak = (f"peak {m['peak_gflops']:,.0f} GFLOP/s ({m['peak_source']})")
  lines.append('')
  cores = (f"{m['cores']} cores" if m['cores'] == m['machine_cores']
           else f"{m['cores']} of {m['machine_cores']} cores")
  lines.append(f"Machine: {cores}, {m['cpu']}; device {m['device']}; {peak}; "
               f"jax {m['jax']}, flax {m['flax']}; {torch_part}"
               + (f"; XLA_FLAGS={m['xla_flags']}" if m['xla_flags'] else '')
               + (f"; load average {m['load_average_start']} -> {m['load_average_end']}"
                  if m['load_average_end'] is not None else ''))
  return '\n'.join(lines)


def _csv(value: str) -> list[str]:
  return [v.strip() for v in value.split(',') if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m benchmarks.bench', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--models', default=','.join(FAMILIES),
                 help='comma-separated: mlp,cnn,transformer')
  p.add_argument('--sizes', default=','.join(DEFAULT_SIZES),
                 help='comma-separated: small,medium,bert_base (sizes a model lacks are skipped)')
  p.add_argument('--json', default='', help='write the machine line and rows here')
  p.add_argument('--no-torch', dest='torch', action='store_false', help='jax only')
  p.add_argument('--device', default='cpu', help='cpu, gpu or tpu')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='compute dtype (research.models.precision); params stay float32')
  p.add_argument('--batch_size', type=int, default=0, help='override every case\'s batch')
  p.add_argument('--repeats', type=int, default=5, help='timed repeats per framework')
  p.add_argument('--steps', type=int, default=0,
                 help='steps per repeat (0: calibrate so a repeat lasts --target_s)')
  p.add_argument('--target_s', type=float, default=0.4, help='seconds per calibrated repeat')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help='peak for MFU (default: measured matmul on CPU, table on accelerators)')
  p.add_argument('--torch_threads', type=int, default=0, help='0: torch\'s default')
  p.add_argument('--set', dest='overrides', action='append', default=[],
                 metavar='KEY=VALUE', help='model hyperparameter override, e.g. scan_layers=True')
  args = p.parse_args(argv)
  args.models, args.sizes = _csv(args.models), _csv(args.sizes)
  for m in args.models:
    if m not in FAMILIES:
      p.error(f'unknown model {m!r}; choose from {list(FAMILIES)}')
  known_sizes = sorted({s for _, s in CASES})
  for s in args.sizes:
    if s not in known_sizes:
      p.error(f'unknown size {s!r}; choose from {known_sizes}')
  if args.repeats < 1:
    p.error(f'--repeats must be >= 1, got {args.repeats}')
  return args


def _parse_overrides(items: list[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'--set expects KEY=VALUE, got {item!r}.')
    try:
      out[key] = json.loads(value.replace('True', 'true').replace('False', 'false'))
    except json.JSONDecodeError:
      out[key] = value
    if isinstance(out[key], list):
      out[key] = tuple(out[key])
  return out


def _peak(device: jax.Device, dtype: str, args) -> tuple[float, str]:
  if args.peak_tflops:
    return args.peak_tflops * 1e12, 'given by --peak_tflops'
  if device.platform == 'cpu':
    short = {'float32': 'fp32', 'bfloat16': 'bf16'}[dtype]
    return (hardware.measured_matmul_peak(2048, 5, device, dtype),
            f'measured: jax {short} 2048³ matmul, best of 5')
  known = hardware.accelerator_peak(device.device_kind, dtype)
  if known:
    return known[0], f'{known[1]} {dtype} dense spec'
  raise SystemExit(f'No peak known for {device.device_kind!r} in {dtype}; pass --peak_tflops.')


def run(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the benchmark; returns {'machine': ..., 'rows': [...], 'table': markdown}."""
  args = parse_args(argv)
  overrides = _parse_overrides(args.overrides)
  load_at_start = _load_average()
  try:
    device = jax.devices(args.device)[0]
  except RuntimeError as e:
    raise SystemExit(f'--device={args.device}: no such jax backend here ({e}).') from None
  cases = [CASES[(m, s)] for m in args.models for s in args.sizes if (m, s) in CASES]
  if not cases:
    raise SystemExit(f'No case for models {args.models} x sizes {args.sizes}; known: '
                     f'{sorted(CASES)}.')
  for key in overrides:  # each applies to the models that have it; none at all is a typo
    if not any(key in models.hyperparameters(m) for m in args.models):
      raise SystemExit(f'--set {key}=...: no hyperparameter {key!r} in models {args.models}.')

  worker, torch_note = None, 'disabled by --no-torch'
  if args.torch and device.platform not in ('cpu', 'gpu'):
    torch_note = f'no torch twin on {device.platform}'
  elif args.torch:  # on a GPU, torch runs the twin on the same GPU (cuda)
    worker, torch_note = start_torch_worker(
        args.torch_threads, 'cpu' if device.platform == 'cpu' else 'cuda')
  try:
    torch_info = None
    if worker is not None:
      torch_info = dict(worker.info, **worker.call(op='matmul_peak'))
    peak_flops, peak_source = _peak(device, args.dtype, args)
    rows = []
    for case in cases:
      batch_size = args.batch_size or case.batch_size
      rows.append(bench_case(case, device=device, dtype=args.dtype, batch_size=batch_size,
                             repeats=args.repeats, steps=args.steps, target_s=args.target_s,
                             peak_flops=peak_flops, torch_worker=worker,
                             overrides=overrides, log=log))
    if 'measured' in peak_source:
      # Measured again after the cases, and the best kept: a neighbour's burst during
      # the first measurement would otherwise inflate every MFU.
      peak_flops = max(peak_flops, _peak(device, args.dtype, args)[0])
      peak_source += ', at start and end'
      for row in rows:
        row['mfu'] = row['flops_per_step'] / row['jax_step_s'] / peak_flops
  finally:
    if worker is not None:
      worker.close()
  machine = machine_info(device, peak_flops, peak_source, torch_info, torch_note, load_at_start)
  table = format_table(rows, machine)
  result = {'machine': machine, 'rows': rows, 'table': table, 'argv': list(argv or sys.argv[1:])}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({k: v for k, v in result.items() if k != 'table'}, f, indent=1)
  return result


def main(argv: Sequence[str] | None = None) -> None:
  result = run(argv)
  print()
  print(result['table'])


if __name__ == '__main__':
  main()
