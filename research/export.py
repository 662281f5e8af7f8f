"""Command line: exports a finished run as a self-contained model directory for serving.

  python -m research.export --workdir=runs/demo [--checkpoint=latest|best|STEP] --out=runs/export/demo
  python -m research.export --workdir=runs/demo --quantize=w8a8 --out=runs/export/demo_w8a8

The directory (format: `research/serving/artifact.py`; built by `research/serving/exporter.py`)
holds a `jax.export` module with a symbolic batch size for cpu, cuda and tpu, its weights,
`signature.json`, the run's tokenizer, a model card and a sha256 manifest;
`python -m research.serve --model=DIR` serves it.
"""
from __future__ import annotations

import os

from absl import app, flags, logging

from research.errors import one_line_errors
from research.serving.exporter import export_run

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by research.main.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.")
_OUT = flags.DEFINE_string('out', None, 'The directory to write (replaces an earlier export).')
_QUANTIZE = flags.DEFINE_string('quantize', '', "'' (float32), 'int8' (int8 weights) or 'w8a8' "
                                "(int8 weights and activations: s8 x s8 dots).")
_NAME = flags.DEFINE_string('name', None, "The model's name in the API (default: the "
                            "workdir's base name).")


@one_line_errors
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  signature = export_run(_WORKDIR.value, _OUT.value, _CHECKPOINT.value, _NAME.value,
                         _QUANTIZE.value)
  size = sum(os.path.getsize(os.path.join(_OUT.value, f)) for f in os.listdir(_OUT.value))
  print(f"Exported {signature['name']!r} ({signature['inputs'][0]['datatype']} "
        f"{signature['inputs'][0]['shape']} -> {signature['outputs'][0]['shape'][1]} classes, "
        f"{', '.join(signature['platforms'])}) to {_OUT.value} ({size / 1024:.0f} KB)")


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
