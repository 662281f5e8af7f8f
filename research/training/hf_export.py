"""A fine-tuned BERT run as a Hugging Face directory (the library behind
`python -m research.export_hf`): the run restored, LoRA adapters merged, written by
`research.models.hf_bert.write_dir`."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from research.data import tokenizers
from research.errors import ConfigError
from research.models import hf_bert, lora
from research.training import experiment, optim


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
