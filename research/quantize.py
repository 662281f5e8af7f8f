"""Post-training int8 quantization of a finished run, written as a new run directory.

  python -m research.quantize --workdir=RUN --mode=int8|w8a8 --out=NEWRUN [--checkpoint=latest]

Restores RUN's checkpoint, quantizes it with qwix (`research.compress.quantize`: 'int8'
weights only, or 'w8a8' int8 weights and activations), evaluates it with RUN's own
evaluators and writes NEWRUN/{quantized_params.npz, config.json, results.json}.
"""
from __future__ import annotations

import os

from absl import app, flags, logging

from research.compress import quantize
from research.errors import one_line_errors

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished run written by research.main.')
_MODE = flags.DEFINE_string('mode', 'w8a8', f'One of {list(quantize.MODES)}.')
_OUT = flags.DEFINE_string('out', None, 'The new run directory for the quantized model.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.")


@one_line_errors
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  quantize.check_mode(_MODE.value)
  results = quantize.quantize_run(_WORKDIR.value, _MODE.value, _OUT.value, _CHECKPOINT.value)
  headline = results.get('headline_metric') or 'loss'
  for split in results['eval_splits']:
    key = 'train_eval' if split == 'train' else split
    if key in results and headline in results[key]:
      print(f'{split} {headline} ({_MODE.value}): {results[key][headline]:.4f}')
  print(f"{results['num_params']:,} weights, {results['bytes_on_disk']:,} bytes on disk; "
        f"written to {os.path.join(_OUT.value, 'results.json')}")


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
