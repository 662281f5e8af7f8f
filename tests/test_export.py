"""Exported models: self-contained, equal to the run's predictions, checked on load."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from research.data import preprocess as preprocess_lib
from research.data import sources
from research.errors import ConfigError
from research.serving.exporter import Exportable, export_run, write_artifact
from research.predict import Predictor
from research.serving import artifact
from tests import serving_runs
from tests.helpers import run_module

# Runs in a process where `research` cannot be imported: the artifact's own loader.py.
_STANDALONE = r'''
import json, sys
sys.modules['research'] = None
try:
  import research
  raise SystemExit('research is importable')
except ImportError:
  pass
directory = sys.argv[1]
sys.path.insert(0, directory)
import loader
model = loader.load(directory)
batches = json.load(sys.stdin)
print(json.dumps([model.outputs(b).tolist() for b in batches]))
'''


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = serving_runs.runs_dir(tmp_path_factory)
  return {kind: serving_runs.trained_and_exported(kind, base) for kind in ('cnn', 'text')}


def _jsonable(inputs: np.ndarray):
  if inputs.dtype.kind in 'OS':
    return [t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in inputs]
  return inputs.tolist()


@pytest.mark.parametrize('kind', ['cnn', 'text'])
def test_artifact_runs_without_the_package_and_equals_the_run(runs, kind, tmp_path):
  workdir, out = runs[kind]
  predictor = Predictor.from_workdir(workdir)
  split = next(iter(predictor.exp.eval_splits.values()))
  batches = [split.inputs[:1], split.inputs[10:17], split.inputs[:64]]
  # A copy elsewhere: nothing may depend on the repository's path.
  moved = shutil.copytree(out, tmp_path / 'moved')
  proc = subprocess.run([sys.executable, '-c', _STANDALONE, str(moved)], cwd=tmp_path,
                        input=json.dumps([_jsonable(b) for b in batches]), capture_output=True,
                        text=True, timeout=120,
                        env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  outputs = json.loads(proc.stdout)
  for batch, got in zip(batches, outputs):
    expected = predictor.outputs(list(batch) if batch.dtype.kind in 'OS' else batch)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
    assert len(got) == len(batch)


def test_signature_model_card_and_manifest(runs):
  cnn_sig = json.load(open(os.path.join(runs['cnn'][1], 'signature.json')))
  assert cnn_sig['inputs'] == [{'name': 'inputs', 'datatype': 'FP32', 'shape': [-1, 40],
                                'numpy_dtype': 'float32'}]
  assert cnn_sig['outputs'][0] == {'name': 'logits', 'datatype': 'FP32', 'shape': [-1, 10]}
  assert cnn_sig['platforms'] == ['cpu', 'cuda', 'tpu']
  assert cnn_sig['class_names'] == [str(i) for i in range(10)]
  # standardize's fitted statistics travel with the weights
  assert any(v.startswith('preprocess/0_standardize/') for v in cnn_sig['variables'])
  text_dir = runs['text'][1]
  text_sig = json.load(open(os.path.join(text_dir, 'signature.json')))
  assert text_sig['inputs'][0]['datatype'] == 'BYTES'
  assert text_sig['text'] == {'tokenizer': 'wordpiece', 'file': 'tokenizer.json',
                              'max_len': 32, 'cls': True}
  assert text_sig['class_names'] == ['rotten', 'fresh']
  card = json.load(open(os.path.join(text_dir, 'model_card.json')))
  assert card['config']['dataset']['name'] == 'rotten_tomatoes' and card['step'] == 10
  assert 'accuracy' in card['results']['test[:100]']
  manifest = json.load(open(os.path.join(text_dir, 'manifest.json')))['files']
  assert set(manifest) == set(os.listdir(text_dir)) - {'manifest.json'}
  assert {'model.jaxexport', 'weights.npz', 'tokenizer.json', 'loader.py'} <= set(manifest)


@pytest.mark.parametrize('victim', ['weights.npz', 'model.jaxexport', 'tokenizer.json'])
def test_a_corrupted_artifact_fails_its_checksum_naming_the_file(runs, tmp_path, victim):
  copy = shutil.copytree(runs['text'][1], tmp_path / 'copy')
  path = copy / victim
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(artifact.ArtifactError, match=f'Checksum mismatch for .*{victim}'):
    artifact.load(str(copy))
  path.unlink()
  with pytest.raises(artifact.ArtifactError, match=f'{victim} is listed in manifest.json but missing'):
    artifact.load(str(copy))


def test_serve_refuses_a_corrupted_artifact_in_one_line(runs, tmp_path):
  copy = shutil.copytree(runs['cnn'][1], tmp_path / 'copy')
  (copy / 'signature.json').write_text((copy / 'signature.json').read_text().replace('FP32', 'FP64'))
  proc = run_module('research.serve', f'--model={copy}', '--port=1', timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('Error: ')]
  assert len(errors) == 1 and 'Checksum mismatch' in errors[0] and 'signature.json' in errors[0]
  assert 'Traceback' not in proc.stderr


def test_export_errors_name_the_bad_value_and_keep_what_exists(runs, tmp_path):
  workdir, _ = runs['cnn']
  with pytest.raises(ConfigError, match="--checkpoint must be 'latest', 'best' or a step"):
    export_run(workdir, str(tmp_path / 'a'), checkpoint='newest')
  with pytest.raises(ConfigError, match='no checkpoint at step 7'):
    export_run(workdir, str(tmp_path / 'a'), checkpoint=7)
  with pytest.raises(ConfigError, match='not a run directory'):
    export_run(str(tmp_path), str(tmp_path / 'a'))
  precious = tmp_path / 'precious'
  precious.mkdir()
  (precious / 'notes.txt').write_text('keep me')
  with pytest.raises(ConfigError, match='exists and is not an exported model'):
    export_run(workdir, str(precious))
  assert (precious / 'notes.txt').read_text() == 'keep me'
  assert not (tmp_path / 'a').exists()


def _identity_exportable(pp, raw: np.ndarray, text: bool) -> Exportable:
  """A 'model' that returns its preprocessed inputs (and mask), flattened, as logits."""
  import jax.numpy as jnp

  def apply_fn(variables, x, mask_BxL=None):
    parts = [x.reshape(x.shape[0], -1).astype(jnp.float32)]
    if mask_BxL is not None:
      parts.append(mask_BxL.astype(jnp.float32))
    return jnp.concatenate(parts, axis=1)
  return Exportable(name='identity', apply_fn=apply_fn, variables={}, preprocess=pp,
                    input_fields={'input_mask': 'mask_BxL'} if text else {},
                    raw_shape=() if text else raw.shape[1:], raw_dtype=raw.dtype,
                    class_names=[], card={})


def _pipeline_rows(pp, raw: np.ndarray) -> np.ndarray:
  batch = pp.eval_fn({'inputs': raw, 'labels': np.zeros(len(raw), np.int32),
                      'mask': np.ones(len(raw), bool)}, 0)
  parts = [batch['inputs'].reshape(len(raw), -1).astype(np.float32)]
  if 'input_mask' in batch:
    parts.append(batch['input_mask'].astype(np.float32))
  return np.concatenate(parts, axis=1)


_TEXTS = np.array(['A gripping, beautifully acted film.', 'dull', '', 'Ünïcödé façade naïve',
                   'the the the [MASK] ' * 10, 'x' * 300] * 4, dtype=object)


@pytest.mark.parametrize('spec', [
    'random_crop(pad=2, size=6)|flip|scale|standardize(per=channel)',
    'random_shift(max=1)|to_float|standardize(per=feature)',
    'tokenize_bytes(max_len=24)',
    'tokenize_wordpiece(vocab_size=120, max_len=16, cls=True)',
    'tokenize_spm(vocab_size=60, max_len=20)',
])
def test_exported_preprocessing_equals_the_evaluation_pipeline(spec, tmp_path):
  text = spec.startswith('tokenize')
  rng = np.random.default_rng(0)
  raw = _TEXTS if text else rng.integers(0, 256, (40, 8, 8, 3)).astype(np.uint8)
  split = sources.SplitArrays(inputs=raw, labels=np.zeros(len(raw), np.int32))
  pp = preprocess_lib.build_preprocess(spec, split, seed=0, cache_dir=str(tmp_path))
  write_artifact(_identity_exportable(pp, raw, text), str(tmp_path / 'out'))
  model = artifact.load(str(tmp_path / 'out'), batch_buckets=(4, 16))
  got = model.outputs(list(raw) if text else raw[:21])  # 21: two chunks, the last padded
  np.testing.assert_allclose(got, _pipeline_rows(pp, raw if text else raw[:21]), atol=1e-5, rtol=0)


def test_int8_artifact_runs_without_the_package_and_equals_the_quantized_model(runs, tmp_path):
  """`--quantize=w8a8`: int8 weights in weights.npz, s8 dots inside, and the standalone
  loader gives the quantized model's outputs (research.compress.quantize) exactly."""
  import jax
  workdir, _ = runs['cnn']
  out = tmp_path / 'w8a8'
  result = run_module('research.export', f'--workdir={workdir}', f'--out={out}',
                      '--quantize=w8a8')
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(out / 'weights.npz') as weights:
    assert any(weights[k].dtype == np.int8 for k in weights.files)
  assert json.load(open(out / 'model_card.json'))['quantization'] == 'w8a8'
  # The same function in this process: the model (preprocessing inside) the file holds.
  from research.serving import exporter
  fn, variables = exporter.serving_function(exporter.from_run(workdir, quantize='w8a8'))
  predictor = Predictor.from_workdir(workdir)  # the float32 run, for the int8 error
  split = next(iter(predictor.exp.eval_splits.values()))
  batches = [split.inputs[:1], split.inputs[10:17], split.inputs[:64]]
  proc = subprocess.run([sys.executable, '-c', _STANDALONE, str(out)], cwd=tmp_path,
                        input=json.dumps([_jsonable(b) for b in batches]), capture_output=True,
                        text=True, timeout=120,
                        env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  for batch, got in zip(batches, json.loads(proc.stdout)):
    expected = np.asarray(jax.jit(fn)(variables, batch.astype(np.float32)))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
    float32 = predictor.outputs(batch)
    assert np.abs(np.asarray(got) - float32).max() < 0.1 * np.abs(float32).max()
  bad = run_module('research.export', f'--workdir={workdir}', f'--out={tmp_path / "x"}',
                   '--quantize=int4')
  assert bad.returncode == 2 and "'int4'" in bad.stderr and 'w8a8' in bad.stderr
