"""LoRA on a Hugging Face BERT: only the adapters (and the head) train, the checkpoints leave
the base out yet resume exactly, merging changes no output, a rule that matches nothing
fails, the merged export loads in transformers, and 8 devices train like one."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import models, training
from research.training import hf_export
from research.errors import ConfigError
from research.models import hf_bert, lora
from research.training import experiment, optim
from tests import checkpoint_utils as cu
from tests import multidevice, tiny_bert
from tests.helpers import tiny_config

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TARGETS = 'attention/(query|value)$; mlp_in'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('lora')
  return {'hf_dir': tiny_bert.write_dir(str(tmp / 'bert')),
          'data': tiny_bert.write_dataset(str(tmp / 'data.npz'))}


def overrides(files, **extra) -> dict:
  """Dotted config keys for a LoRA fine-tune of the tiny BERT (also sent to tests.multidevice)."""
  return {'dataset.name': f"npz:{files['data']}",
          'dataset.preprocess': 'tokenize_pretrained(max_len=16)',
          'init_from.hf_dir': files['hf_dir'], 'init_from.skip': '^head/',
          'model.pooling': 'first', 'model.pooler': True, 'lora.rank': 4, 'lora.alpha': 8.0,
          'lora.dropout': 0.1, 'lora.targets': TARGETS, 'lora.trainable': '^(head|pooler)/',
          **extra}


def lora_config(files, steps: int = 6, **extra):
  config = tiny_config('transformer', steps=steps)
  multidevice.apply_overrides(config, overrides(files, **extra))
  config.batch_size, config.eval_batch_size = 32, 64
  config.optimizer.learning_rate = 1e-3
  config.eval_every_steps = 0
  config.dataset.eval_splits = ''  # no evaluation: one compilation less per run
  config.log_every_steps = 1
  config.checkpoint.every_steps = 3
  config.checkpoint.async_save = False
  return config


def _flat(tree) -> dict[str, np.ndarray]:
  return {optim.path_of(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope='module')
def uninterrupted(files, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('lora_run'))
  results = training.train_and_evaluate(lora_config(files), workdir)
  return workdir, results


def test_only_adapters_and_head_train_and_the_checkpoint_leaves_the_base_out(files,
                                                                             uninterrupted):
  workdir, _ = uninterrupted
  tensors = hf_bert.read_tensors(files['hf_dir'])
  base, _, _ = hf_bert.to_ours(tensors, hf_bert.encoder_fields(hf_bert.read_config(
      files['hf_dir']), tensors))
  _, _, state, step = experiment.restore_run(workdir)
  ours = _flat(state.params)
  adapters = [p for p in ours if p.endswith(('/lora_a', '/lora_b'))]
  assert len(adapters) == 2 * 3 * 2  # 3 targets per layer, 2 layers
  for path, value in base.items():  # the frozen base: exactly the checkpoint's values
    if not path.startswith(('head/', 'pooler/')):
      np.testing.assert_array_equal(ours[path], value, err_msg=path)
  assert not np.array_equal(ours['pooler/kernel'], base['pooler/kernel'])
  assert all(np.abs(ours[p]).max() > 0 for p in adapters if p.endswith('lora_b'))  # trained
  saved = _flat(cu.read_state(workdir, step)['params'])
  assert sorted(saved) == sorted(adapters + ['head/bias', 'head/kernel', 'pooler/bias',
                                             'pooler/kernel'])


@pytest.mark.slow  # two more compilations of the train step (about 30 s on a busy CPU)
def test_resume_is_exact(files, uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  training.train_and_evaluate(lora_config(files, steps=3), str(tmp_path))
  resumed = training.train_and_evaluate(lora_config(files), str(tmp_path))
  assert resumed['resumed_from_step'] == 3
  assert multidevice.train_losses(str(tmp_path)) == multidevice.train_losses(workdir)
  cu.assert_trees_bitwise_equal(cu.read_state(str(tmp_path), 6)['params'],
                                cu.read_state(workdir, 6)['params'])


def test_merged_weights_give_the_unmerged_outputs():
  cfg = models.model_config('transformer', frontend='text', num_layers=2, hidden_size=32,
                            num_heads=4, vocab_size=50, max_length=8, norm_position='post',
                            type_vocab_size=2, pooler=True, pooling='first')
  lora_cfg = ml_collections.ConfigDict(dict(rank=4, alpha=8.0, dropout=0.0,
                                            targets=TARGETS, trainable=''))
  for scan in (False, True):
    cfg.scan_layers = scan
    model = models.build_model(cfg, 3, lora_cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 8)), jnp.int32)
    params = jax.tree.map(np.asarray, nn.unbox(
        jax.jit(model.init)(jax.random.key(0), ids)['params']))
    rng = np.random.default_rng(1)
    flat = {p: (v + rng.normal(0, 0.1, v.shape).astype(v.dtype)) if p.endswith('lora_b') else v
            for p, v in _flat(params).items()}  # lora_b starts at 0: make the update real
    with_adapters = jax.jit(model.apply)({'params': hf_bert.nest(flat)}, ids)
    plain = jax.jit(models.build_model(cfg, 3).apply)
    merged = plain({'params': hf_bert.nest(lora.merge(flat, lora_cfg))}, ids)
    base_only = plain({'params': hf_bert.nest(
        {p: v for p, v in flat.items() if 'lora_' not in p})}, ids)
    np.testing.assert_allclose(merged, with_adapters, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(base_only - with_adapters)).max() > 1e-3


def test_a_rule_matching_nothing_lists_the_module_paths(files, tmp_path):
  config = lora_config(files, **{'lora.targets': 'attention/query$; attention/nope'})
  with pytest.raises(ConfigError, match=r"rule 'attention/nope' matches no module with a "
                                        r"kernel\. Module paths: block_0/attention/key, "):
    training.train_and_evaluate(config, str(tmp_path))


def test_lora_needs_a_base_and_no_own_freeze(files, tmp_path):
  config = lora_config(files, **{'init_from.hf_dir': ''})
  with pytest.raises(ConfigError, match='LoRA.*adapts a pretrained base'):
    training.train_and_evaluate(config, str(tmp_path))
  config = lora_config(files)
  config.optimizer.freeze = '^block_0/'
  with pytest.raises(ConfigError, match="optimizer.freeze='\\^block_0/' cannot be combined"):
    training.train_and_evaluate(config, str(tmp_path))


def test_export_merges_and_transformers_gives_our_logits(files, uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  out = str(tmp_path / 'hf')
  hf_export.export_run(workdir, out)
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors', 'tokenizer.json']
  _, exp, state, _ = experiment.restore_run(workdir)
  texts = ['w1 w2 w3', 'w600 w700 w800 w9 w10 w11 w12']
  batch = exp.preprocess.eval_fn({'inputs': np.array(texts), 'labels': np.zeros(2, np.int64),
                                  'mask': np.ones(2, bool)}, 0)
  ours = exp.model.apply({'params': state.params}, batch['inputs'],
                         mask_BxL=batch['input_mask'])
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(batch['inputs'], dtype=torch.long),
                attention_mask=torch.tensor(batch['input_mask'], dtype=torch.long)).logits
  np.testing.assert_allclose(theirs.numpy(), np.asarray(ours), atol=1e-5, rtol=0)
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['architectures'] == [
        'BertForSequenceClassification']


MESHES = {'fsdp8': {'mesh.data': 1, 'mesh.fsdp': 8, 'mesh.tensor': 1},
          'dp2_tp4': {'mesh.data': 2, 'mesh.fsdp': 1, 'mesh.tensor': 4}}


@pytest.mark.slow  # 3 more compilations, 8 simulated devices: about 80 s of CPU
def test_eight_devices_give_the_losses_of_one(files, tmp_path):
  """FSDP 8 and data 2 x tensor 4 (the adapters sharded like their kernels) vs 1 device."""
  from tests.test_scaling import _run_specs  # the project's 8-device subprocess runner
  base = overrides(files, **{'dataset.eval_splits': ''})
  specs = [{'name': name, 'model': 'transformer', 'steps': 8,
            'workdir': str(tmp_path / name), 'overrides': {**base, **mesh}}
           for name, mesh in MESHES.items()]
  runs = _run_specs(specs, 8, tmp_path, 'lora')
  reference = multidevice.run({'model': 'transformer', 'steps': 8, 'workdir': str(tmp_path / 'one'),
                               'overrides': {**base, 'mesh.data': 1}})
  assert reference['results']['devices'] == 1 and len(reference['losses']) == 8
  for name in MESHES:
    assert runs[name]['results']['devices'] == 8
    np.testing.assert_allclose(runs[name]['losses'], reference['losses'], rtol=1e-5, atol=0,
                               err_msg=name)
