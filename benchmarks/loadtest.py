"""Load test: research.serve against a Flask app that calls the model per request.

  python -m benchmarks.loadtest --workdir=runs/demo --workdir=runs/rt [--seconds=10]

For each run: exports it (research.export) to a temporary directory, then starts each
server in turn on 127.0.0.1 (alone on the machine: they never compete), and at each
concurrency (1, 8, 64) keeps that many clients (httpx + asyncio, one connection each)
sending `POST /predict` with one test example, for --seconds after a warm-up. Prints
requests/s and p50/p95/p99 latency per server, side by side, and the ratio at the top
concurrency. The client runs on the same machine and takes CPU from the servers; its own
ceiling (GET /v2/health/live, no model call) is measured too.

The Flask app's Predictor runs batches of --flask_eval_batch_size (default 1: each
request's one example, unpadded); 0 keeps the run's eval_batch_size, to which the
Predictor pads every request.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

from research import writers
from research.data import sources

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _server(args: list[str], log_path: str, timeout_s: float = 300):
  """A server subprocess on a free port; yields its URL once ready; always stopped."""
  port = _free_port()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, *args, f'--port={port}'], cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, 'PYTHONPATH': REPO_ROOT})
    url = f'http://127.0.0.1:{port}'
    try:
      deadline = time.monotonic() + timeout_s
      while True:
        if proc.poll() is not None:
          raise RuntimeError(f'{args} exited with {proc.returncode}; see {log_path}')
        with contextlib.suppress(httpx.HTTPError):
          if httpx.get(f'{url}/v2/health/ready', timeout=1).status_code == 200:
            break
        if time.monotonic() > deadline:
          raise RuntimeError(f'{args} not ready after {timeout_s} s; see {log_path}')
        time.sleep(0.2)
      yield url
    finally:
      proc.send_signal(signal.SIGTERM)
      try:
        proc.wait(30)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _payloads(workdir: str, count: int = 256) -> tuple[list[dict], bool]:
  """One-example request bodies from the run's first evaluation split."""
  config = writers.read_config(workdir)
  builder = sources.open_builder(config.dataset)
  info = sources.dataset_info(builder, config.dataset)
  split = config.dataset.eval_splits.split(',')[0].strip()
  inputs = sources.load_split(builder, info, split).inputs[:count]
  if inputs.dtype.kind in 'OSU':
    texts = [t.decode('utf-8', 'replace') if isinstance(t, bytes) else str(t) for t in inputs]
    return [{'texts': [t]} for t in texts], True
  return [{'inputs': [x.tolist()]} for x in np.asarray(inputs, np.float32)], False


async def _load(url: str, payloads: list[dict] | None, concurrency: int, seconds: float,
                warmup_s: float) -> dict[str, float]:
  """`concurrency` clients in a closed loop, each with its own connection: one shared
  httpx pool slows down with its size (58 req/s at 64 connections against a trivial
  endpoint, 277 with a client each). `payloads=None`: GET /v2/health/live instead (the
  client's own ceiling). Statistics over the measured window."""
  latencies, errors = [], 0
  clients = [httpx.AsyncClient(base_url=url, timeout=120) for _ in range(concurrency)]
  start = time.perf_counter()
  measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

  async def worker(w: int, client: httpx.AsyncClient):
    nonlocal errors
    i = w
    while (now := time.perf_counter()) < stop_at:
      try:
        if payloads is None:
          r = await client.get('/v2/health/live')
        else:
          r = await client.post('/predict', json=payloads[i % len(payloads)])
        ok = r.status_code == 200
      except httpx.HTTPError:
        ok = False
      i += concurrency
      end = time.perf_counter()
      if now >= measure_from:
        if ok:
          latencies.append(end - now)
        else:
          errors += 1
  try:
    await asyncio.gather(*(worker(w, c) for w, c in enumerate(clients)))
  finally:
    for client in clients:
      await client.aclose()
  elapsed = time.perf_counter() - measure_from
  lat_ms = np.asarray(latencies) * 1000 if latencies else np.full(1, np.nan)
  return {'rps': len(latencies) / elapsed, 'p50': float(np.percentile(lat_ms, 50)),
          'p95': float(np.percentile(lat_ms, 95)), 'p99': float(np.percentile(lat_ms, 99)),
          'requests': len(latencies), 'errors': errors}


def _servers(workdir: str, model_dir: str, args) -> dict[str, list[str]]:
  flask = ['-m', 'benchmarks.flask_app', f'--workdir={workdir}']
  if args.flask_eval_batch_size:
    flask.append(f'--eval_batch_size={args.flask_eval_batch_size}')
  return {'research.serve': ['-m', 'research.serve', f'--model={model_dir}',
                             f'--max_batch={args.max_batch}'],
          'flask per request': flask}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', action='append', required=True,
                      help='A run directory (repeatable).')
  parser.add_argument('--concurrency', default='1,8,64')
  parser.add_argument('--seconds', type=float, default=10.0, help='Measured per level.')
  parser.add_argument('--warmup_s', type=float, default=2.0)
  parser.add_argument('--max_batch', type=int, default=16, help="research.serve's --max_batch.")
  parser.add_argument('--flask_eval_batch_size', type=int, default=1,
                      help="The Flask app's Predictor batch: 1 (a request's one example, "
                           "unpadded) or 0, the run's eval_batch_size (each request padded "
                           "to it).")
  parser.add_argument('--ceiling', action=argparse.BooleanOptionalAction, default=True,
                      help="Also measure the client's ceiling: GET /v2/health/live on "
                           "research.serve (no model call), on the first run.")
  args = parser.parse_args()
  levels = [int(c) for c in args.concurrency.split(',')]
  from research.serving.exporter import export_run  # after argument parsing: jax imports are slow

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for workdir in args.workdir:
      name = os.path.basename(os.path.normpath(workdir))
      model_dir = os.path.join(tmp, name)
      export_run(workdir, model_dir)
      payloads, _ = _payloads(workdir)
      for server, cmd in _servers(workdir, model_dir, args).items():
        with _server(cmd, os.path.join(tmp, f'{name}-{len(rows)}.log')) as url:
          measured = [(server, payloads)]
          if args.ceiling and not rows and server == 'research.serve':
            measured.append(('client ceiling (GET /v2/health/live)', None))
          for label, bodies in measured:
            for c in levels:
              stats = asyncio.run(_load(url, bodies, c, args.seconds, args.warmup_s))
              rows.append((name, label, c, stats))
              print(f'  {name:>12} {label:>18} c={c:<3} {stats["rps"]:8.1f} req/s  '
                    f'p50 {stats["p50"]:7.1f} ms  p99 {stats["p99"]:7.1f} ms', flush=True)
  print()
  print('| model | server | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |')
  print('|---|---|---:|---:|---:|---:|---:|---:|')
  for name, server, c, s in rows:
    print(f"| {name} | {server} | {c} | {s['rps']:,.1f} | {s['p50']:.1f} | {s['p95']:.1f} | "
          f"{s['p99']:.1f} | {s['errors']} |")
  top = max(levels)
  for name in dict.fromkeys(r[0] for r in rows):
    ours = next(s for n, srv, c, s in rows if n == name and srv == 'research.serve' and c == top)
    base = next(s for n, srv, c, s in rows if n == name and srv == 'flask per request'
                and c == top)
    ratio = ours['rps'] / base['rps'] if base['rps'] else float('inf')
    print(f'{name}, concurrency {top}: {ratio:.1f}x the throughput of Flask per request, '
          f'p99 {ours["p99"]:.1f} vs {base["p99"]:.1f} ms')


if __name__ == '__main__':
  main()
