"""Writes a fine-tuned BERT run back as a Hugging Face directory.

  python -m research.export_hf --workdir=RUN --out=DIR [--checkpoint=latest|best|STEP]

Restores the run's checkpoint (a LoRA run: its adapters merged into the base's kernels),
and writes DIR/config.json (`BertForSequenceClassification`), DIR/model.safetensors and,
when the run tokenized with `tokenize_pretrained`, DIR/tokenizer.json:
`transformers.AutoModelForSequenceClassification.from_pretrained(DIR)` loads it.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from research.data import tokenizers
from research.errors import ConfigError, one_line_errors
from research.models import hf_bert, lora
from research.training import experiment, optim

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by research.main.')
_OUT = flags.DEFINE_string('out', None, 'The Hugging Face directory to write.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.")


def plain_params(params, lora_cfg) -> dict[str, np.ndarray]:
  """Params by path on the host, LoRA adapters (if any) merged into their kernels."""
  flat = {optim.path_of(keys): np.asarray(jax.device_get(leaf))
          for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  if lora.enabled(lora_cfg):
    flat = {k: np.asarray(v) for k, v in lora.merge(flat, lora_cfg).items()}
  return flat


def export_run(workdir: str, out: str, checkpoint: str = 'latest') -> dict[str, Any]:
  config, exp, state, step = experiment.restore_run(workdir, checkpoint)
  if exp.objective.num_outputs(exp.info) < 1 or config.objective != 'classification':
    raise ConfigError(f'research.export_hf writes sequence classifiers; this run\'s objective '
                      f'is {config.objective!r}.')
  hf_bert.check_exportable(config.model)
  tokenizer = exp.preprocess.tokenizer
  tokenizer_json = (tokenizer.json if isinstance(tokenizer, tokenizers.PretrainedTokenizer)
                    else None)
  names = exp.info.class_names
  num_labels = exp.model.num_classes
  id2label = {i: str(n) for i, n in enumerate(names)} if len(names) == num_labels else None
  hf_bert.write_dir(out, plain_params(state.params, config.lora), config.model, num_labels,
                    tokenizer_json, id2label)
  return {'workdir': workdir, 'step': step, 'out': out, 'num_labels': num_labels,
          'tokenizer': tokenizer_json is not None}


@one_line_errors
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  result = export_run(_WORKDIR.value, _OUT.value, _CHECKPOINT.value)
  print(f"Step {result['step']} of {result['workdir']} written to {result['out']} "
        f"({result['num_labels']} labels{', with tokenizer.json' if result['tokenizer'] else ''}).")


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  flags.mark_flag_as_required('out')
  app.run(main)
