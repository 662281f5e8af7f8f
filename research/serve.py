"""Serves an exported model (`python -m research.export`) over HTTP.

  python -m research.serve --model=runs/export/demo [--port=8000] [--max_batch=16]

Loads and checks the artifact (its sha256 manifest), compiles the batch sizes it will
call (powers of two up to --max_batch), then serves the Open Inference Protocol, TF
Serving's `:predict`, `POST /predict` and `/metrics` (research/serving/app.py) with
uvicorn. SIGTERM or Ctrl-C: stop accepting connections, answer the requests already
received, exit.
"""
from __future__ import annotations

import os
import time

from absl import app, flags, logging

from research.errors import ConfigError, one_line_errors

_MODEL = flags.DEFINE_string('model', None, 'An exported model directory.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to bind (0.0.0.0: every interface).')
_PORT = flags.DEFINE_integer('port', 8000, 'TCP port.')
_MAX_BATCH = flags.DEFINE_integer(
    'max_batch', 16, 'Most examples in one batch (dynamic batching; 1: off). A batch runs '
    'as calls of powers of two up to this (and this), each size compiled at start.')
_MAX_DELAY_MS = flags.DEFINE_float(
    'max_delay_ms', 0.0, 'How long a batch waits for more requests (0: it takes only the '
    'requests already waiting, so a lone request never waits).')
_MAX_BODY_BYTES = flags.DEFINE_integer('max_body_bytes', 4 << 20, 'Largest request body.')
_MAX_TEXT_CHARS = flags.DEFINE_integer('max_text_chars', 10_000, 'Longest text, in characters.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 1024, 'Most examples in one request.')
_GRACE_S = flags.DEFINE_float('shutdown_grace_s', 30.0, 'On SIGTERM, how long in-flight '
                              'requests may take before they are cancelled.')
_MODEL_THREADS = flags.DEFINE_integer(
    'model_threads', 0, 'Batches that run at once, each on its own thread (0: one per CPU '
    'core, at most 4).')
_ONE_THREAD = flags.DEFINE_bool(
    'single_threaded_cpu', True, 'On CPU, run each model call on one thread (parallelism '
    'comes from --model_threads batches at once): small models lose nothing to thread '
    'hand-offs. False: XLA\'s thread pool in each call, for large models on many cores.')

_ONE_THREAD_XLA_FLAGS = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


def batch_buckets(max_batch: int) -> list[int]:
  """1, 2, 4, ... up to and including `max_batch`."""
  sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
  return sizes + [max_batch]


@one_line_errors
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if _MODEL_THREADS.value < 0:
    raise ConfigError(f'--model_threads={_MODEL_THREADS.value} must be >= 0.')
  for flag in (_MAX_BATCH, _MAX_BODY_BYTES, _MAX_TEXT_CHARS, _MAX_EXAMPLES):
    if flag.value < 1:
      raise ConfigError(f'--{flag.name}={flag.value} must be at least 1.')
  if _MAX_DELAY_MS.value < 0:
    raise ConfigError(f'--max_delay_ms={_MAX_DELAY_MS.value} must be >= 0.')
  if not os.path.isdir(_MODEL.value):
    raise ConfigError(f'--model={_MODEL.value} is not a directory; export a run first: '
                      f'python -m research.export --workdir=RUN --out=DIR.')
  if _ONE_THREAD.value:  # read when jax starts its CPU backend, which is below
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_ONE_THREAD_XLA_FLAGS}".strip()
  import uvicorn  # after the flag checks: a typo fails fast

  from research.serving import app as app_lib
  from research.serving import artifact

  start = time.perf_counter()
  try:
    model = artifact.load(_MODEL.value, batch_buckets=batch_buckets(_MAX_BATCH.value))
  except artifact.ArtifactError as e:
    raise ConfigError(str(e)) from None
  model.warm_up()
  limits = app_lib.Limits(max_body_bytes=_MAX_BODY_BYTES.value,
                          max_text_chars=_MAX_TEXT_CHARS.value,
                          max_examples=_MAX_EXAMPLES.value)
  threads = _MODEL_THREADS.value or min(os.cpu_count() or 1, 4)
  api = app_lib.create_app(model, limits=limits, max_batch=_MAX_BATCH.value,
                           max_delay_s=_MAX_DELAY_MS.value / 1000, workers=threads)
  print(f'Serving {model.name!r} from {_MODEL.value} on http://{_HOST.value}:{_PORT.value} '
        f'(loaded and compiled batch sizes {list(model.batch_buckets)} in '
        f'{time.perf_counter() - start:.1f} s; {threads} model thread(s))', flush=True)
  # uvicorn handles SIGTERM/SIGINT: it closes the listening socket, lets every request
  # already received finish (up to the grace period), then runs the app's shutdown.
  uvicorn.run(api, host=_HOST.value, port=_PORT.value, log_level='warning',
              timeout_graceful_shutdown=_GRACE_S.value, access_log=False)


if __name__ == '__main__':
  flags.mark_flag_as_required('model')
  app.run(main)
