"""Evaluates a saved run without training.

  python -m research.evaluate --workdir=DIR [--checkpoint=latest|best|STEP] [--split=test]

Rebuilds the run from DIR/config.json, restores the chosen checkpoint onto the current
devices, evaluates the split and writes DIR/eval/<split>-<step>.json.
"""
from __future__ import annotations

import os
from typing import Any

from absl import app, flags, logging

from research.training import experiment, hardware
from research import writers
from research.errors import one_line_errors

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by research.main.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.")
_SPLIT = flags.DEFINE_string('split', 'test', 'The tfds split to evaluate.')


def evaluate_run(workdir: str, checkpoint: str = 'latest', split: str = 'test') -> dict[str, Any]:
  """Metrics of `split` at a saved checkpoint; also written to WORKDIR/eval/<split>-<step>.json."""
  _, exp, state, step = experiment.restore_run(workdir, checkpoint,
                                               eval_split_names=[split])
  result = {'step': step, 'checkpoint': checkpoint, 'split': split,
            **exp.evaluate(state, split)}
  out_dir = writers.prepare_workdir(os.path.join(workdir, 'eval'))
  writers.write_json_atomic(os.path.join(out_dir, f'{split}-{step}.json'), result)
  return result


@one_line_errors
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  result = evaluate_run(_WORKDIR.value, _CHECKPOINT.value, _SPLIT.value)
  shown = [f'{k} {result[k]:.4f}' for k in ('loss', 'accuracy', 'macro_f1', 'masked_accuracy',
                                             'perplexity') if k in result]
  count = next((f'({int(result[k])} {k[4:]})' for k in ('num_examples', 'num_tokens')
                if k in result), '')
  print(f"{_SPLIT.value} at step {result['step']} ({_CHECKPOINT.value}): "
        f"{'  '.join(shown)}  {count}")
  out_path = os.path.join(_WORKDIR.value, 'eval', f"{_SPLIT.value}-{result['step']}.json")
  print(f'Written to {out_path}')


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  hardware.enable_compilation_cache()
  app.run(main)
