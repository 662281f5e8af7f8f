"""Writes a fine-tuned BERT run back as a Hugging Face directory.

  python -m research.export_hf --workdir=RUN --out=DIR [--checkpoint=latest|best|STEP]

Restores the run's checkpoint (a LoRA run: its adapters merged into the base's kernels),
and writes DIR/config.json (`BertForSequenceClassification`), DIR/model.safetensors and,
when the run tokenized with `tokenize_pretrained`, DIR/tokenizer.json:
`transformers.AutoModelForSequenceClassification.from_pretrained(DIR)` loads it.
"""
from __future__ import annotations

from absl import app, flags, logging

from research.errors import one_line_errors
from research.training.hf_export import export_run

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by research.main.')
_OUT = flags.DEFINE_string('out', None, 'The Hugging Face directory to write.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.")


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
