"""The prediction server, started for real on 127.0.0.1 and called over HTTP."""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time

import httpx
import numpy as np
import pytest

from research.data import sources
from research.serving import artifact
from research.serve import batch_buckets
from tests import serving_runs
from tests.helpers import tiny_config

BODY_LIMIT, TEXT_LIMIT = 65_536, 300


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
  """A CNN server and a text server, started together; always stopped."""
  base = tmp_path_factory.mktemp('serve')
  runs = serving_runs.runs_dir(tmp_path_factory)
  exports = {kind: serving_runs.trained_and_exported(kind, runs)[1] for kind in ('cnn', 'text')}
  limits = (f'--max_body_bytes={BODY_LIMIT}', f'--max_text_chars={TEXT_LIMIT}', '--max_batch=8')
  started = {
      'cnn': serving_runs.ServerProcess(exports['cnn'], str(base / 'cnn.log'), *limits),
      'text': serving_runs.ServerProcess(exports['text'], str(base / 'text.log'), *limits),
  }
  try:
    for server in started.values():
      server.wait_ready()
    yield started, exports
  finally:
    for server in started.values():
      server.stop()


@pytest.fixture(scope='module')
def cnn_examples(servers):
  """Test inputs and the exported model's own predictions for them (the reference)."""
  _, exports = servers
  config = tiny_config('cnn')
  builder = sources.open_builder(config.dataset)
  split = sources.load_split(builder, sources.dataset_info(builder, config.dataset), 'test[:200]')
  reference = artifact.load(exports['cnn']).predict(split.inputs)
  return split.inputs.astype(np.float32), reference


def _error(response: httpx.Response) -> str:
  assert 400 <= response.status_code < 500, (response.status_code, response.text)
  body = response.json()
  assert set(body) == {'error'}, body
  return body['error']


def test_health_metadata_and_every_inference_endpoint(servers, cnn_examples):
  (started, _), (x, reference) = servers, cnn_examples
  url = started['cnn'].url
  with httpx.Client(base_url=url, timeout=30) as client:
    assert client.get('/v2/health/live').json() == {'live': True}
    assert client.get('/v2/health/ready').json() == {'ready': True}
    assert client.get('/v2/models/cnn/ready').json() == {'name': 'cnn', 'ready': True}
    meta = client.get('/v2/models/cnn').json()
    assert meta['name'] == 'cnn' and meta['platform'] == 'jax_export'
    assert meta['inputs'] == [{'name': 'inputs', 'datatype': 'FP32', 'shape': [-1, 40]}]
    assert [o['name'] for o in meta['outputs']] == ['logits', 'probabilities', 'label', 'class_name']

    # Open Inference Protocol: flat row-major data, every output
    r = client.post('/v2/models/cnn/infer', json={'id': 'q1', 'inputs': [
        {'name': 'inputs', 'shape': [3, 40], 'datatype': 'FP32', 'data': x[:3].ravel().tolist()}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['model_name'] == 'cnn' and body['id'] == 'q1'
    out = {o['name']: o for o in body['outputs']}
    assert out['probabilities']['shape'] == [3, 10] and out['probabilities']['datatype'] == 'FP32'
    np.testing.assert_allclose(np.reshape(out['probabilities']['data'], (3, 10)),
                               reference['probabilities'][:3], atol=1e-6)
    assert out['label'] == {'name': 'label', 'datatype': 'INT64', 'shape': [3],
                            'data': reference['labels'][:3].tolist()}
    assert out['class_name']['data'] == reference['names'][:3]
    # requested outputs only
    r = client.post('/v2/models/cnn/infer', json={
        'inputs': [{'name': 'inputs', 'shape': [1, 40], 'datatype': 'FP32', 'data': x[:1].tolist()}],
        'outputs': [{'name': 'label'}]})
    assert [o['name'] for o in r.json()['outputs']] == ['label']

    # TF Serving
    r = client.post('/v1/models/cnn:predict', json={'instances': x[:2].tolist()})
    assert r.status_code == 200, r.text
    predictions = r.json()['predictions']
    assert [p['label'] for p in predictions] == reference['labels'][:2].tolist()
    assert [p['class_name'] for p in predictions] == reference['names'][:2]
    np.testing.assert_allclose([p['probabilities'] for p in predictions],
                               reference['probabilities'][:2], atol=1e-6)

    # plain /predict, a batch larger than the biggest compiled batch (8)
    r = client.post('/predict', json={'inputs': x[:19].tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['labels'] == reference['labels'][:19].tolist()
    assert body['class_names'] == reference['names'][:19]
    np.testing.assert_allclose(body['probabilities'], reference['probabilities'][:19], atol=1e-6)

    metrics = client.get('/metrics')
    assert metrics.headers['content-type'].startswith('text/plain')
    text = metrics.text
    assert re.search(r'requests_total\{endpoint="/v2/models/\{model_name\}/infer",status="200"\} 2\.0', text)
    assert 'request_latency_seconds_bucket{endpoint="/predict",le="+Inf"} 1.0' in text
    assert re.search(r'^batch_size_count \d', text, re.M)
    assert re.search(r'^examples_total 25\.0', text, re.M)


def test_text_model_endpoints_and_text_limit(servers):
  started, exports = servers
  texts = ['A gripping, beautifully acted film.', 'Dull, lifeless and far too long.', 'ok']
  reference = artifact.load(exports['text']).predict(texts)
  with httpx.Client(base_url=started['text'].url, timeout=30) as client:
    meta = client.get('/v2/models/text').json()
    assert meta['inputs'] == [{'name': 'text', 'datatype': 'BYTES', 'shape': [-1]}]
    assert meta['parameters']['class_names'] == ['rotten', 'fresh']
    r = client.post('/predict', json={'texts': texts})
    assert r.status_code == 200, r.text
    assert r.json()['class_names'] == reference['names']
    np.testing.assert_allclose(r.json()['probabilities'], reference['probabilities'], atol=1e-6)
    r = client.post('/v2/models/text/infer', json={'inputs': [
        {'name': 'text', 'shape': [3], 'datatype': 'BYTES', 'data': texts}]})
    out = {o['name']: o['data'] for o in r.json()['outputs']}
    assert out['class_name'] == reference['names']
    r = client.post('/v1/models/text:predict', json={'instances': texts})
    assert [p['label'] for p in r.json()['predictions']] == reference['labels'].tolist()

    long = 'x' * (TEXT_LIMIT + 1)
    message = _error(client.post('/predict', json={'texts': ['fine', long]}))
    assert message == f'texts[1] has {TEXT_LIMIT + 1} characters; the limit is {TEXT_LIMIT}.'
    assert 'not a string' in _error(client.post('/predict', json={'texts': ['a', 3]}))
    assert "this model takes 'texts', not 'inputs'" in _error(
        client.post('/predict', json={'inputs': [[1.0]]}))
    assert "datatype 'FP32'" in _error(client.post('/v2/models/text/infer', json={'inputs': [
        {'name': 'text', 'shape': [1], 'datatype': 'FP32', 'data': [1.0]}]}))


def test_bad_requests_are_4xx_naming_the_problem(servers, cnn_examples):
  (started, _), (x, _) = servers, cnn_examples
  row = x[0].tolist()

  def infer(tensor: dict) -> dict:
    return {'inputs': [{'name': 'inputs', 'shape': [1, 40], 'datatype': 'FP32', 'data': row,
                        **tensor}]}
  with httpx.Client(base_url=started['cnn'].url, timeout=30) as client:
    post = lambda path, **kw: client.post(path, **kw)
    cases = [
        (post('/predict', content=b'{"inputs": [[1, 2'), 'invalid JSON'),
        (post('/predict', content=b''), 'request body is empty'),
        (post('/predict', content=b'\xff\xfe'), 'invalid JSON'),
        (post('/predict', json=[1, 2]), 'must be a JSON object'),
        (post('/predict', json={'input': [row]}), "missing field 'inputs'"),
        (post('/predict', json={'inputs': 'abc'}), "field 'inputs' must be a list"),
        (post('/predict', json={'inputs': [['a'] * 40]}), 'inputs must be numbers (FP32), got strings'),
        (post('/predict', json={'inputs': [[True] * 40]}), 'got booleans'),
        (post('/predict', json={'inputs': [row[:39]]}), 'inputs have shape [1, 39]; this model takes [N, 40]'),
        (post('/predict', json={'inputs': [row, row[:3]]}), 'ragged'),
        (post('/predict', json={'inputs': []}), 'the batch is empty'),
        (post('/predict', content=b'{"inputs": [[' + b','.join([b'NaN'] * 40) + b']]}'),
         'NaN, infinity'),
        (post('/predict', json={'inputs': [[1e39] * 40]}), 'beyond the range of float32'),
        (post('/predict', json={'inputs': [[0]] * 1025}), '1025 examples in one request; the limit is 1024'),
        (post('/v2/models/cnn/infer', json=infer({'datatype': 'INT32'})),
         "input 'inputs' has datatype 'INT32'; this model takes 'FP32'"),
        (post('/v2/models/cnn/infer', json=infer({'shape': [1, 41]})),
         "input 'inputs' has shape [1, 41]; this model takes [N, 40]"),
        (post('/v2/models/cnn/infer', json=infer({'shape': [2, 40]})), 'needs 80 values in data, got 40'),
        (post('/v2/models/cnn/infer', json=infer({'shape': [0, 40], 'data': []})), 'the batch is empty'),
        (post('/v2/models/cnn/infer', json=infer({'name': 'pixels'})), "unknown input 'pixels'"),
        (post('/v2/models/cnn/infer', json={'inputs': [{'name': 'inputs', 'shape': [1, 40],
                                                         'datatype': 'FP32'}]}),
         "missing field 'data' in inputs[0]"),
        (post('/v2/models/cnn/infer', json={**infer({}), 'outputs': [{'name': 'logit'}]}),
         "unknown output(s) ['logit']"),
        (post('/v2/models/resnet/infer', json=infer({})), "unknown model 'resnet'; this server serves 'cnn'"),
        (client.get('/v2/models/resnet'), "unknown model 'resnet'"),
        (post('/v1/models/resnet:predict', json={'instances': [row]}), "unknown model 'resnet'"),
        (post('/v1/models/cnn:predict', json={'instances': [row[:5]]}), 'this model takes [N, 40]'),
        (client.get('/v3/anything'), "no route '/v3/anything'"),
        (client.get('/predict'), 'method GET not allowed'),
    ]
    for response, expected in cases:
      message = _error(response)
      assert expected in message, (expected, message)
    codes = {r.status_code for r, e in cases if 'unknown model' in e}
    assert codes == {404}
    # Bodies over the limit are refused, whether the size is declared or streamed.
    big = b'{"inputs": [' + b'0.5,' * (BODY_LIMIT // 4) + b'0.5]}'
    r = client.post('/predict', content=big)
    assert r.status_code == 413 and f'exceeds the limit of {BODY_LIMIT} bytes' in _error(r)
    r = client.post('/predict', content=iter([big[:40_000], big[40_000:]]))  # chunked
    assert r.status_code == 413 and f'exceeds the limit of {BODY_LIMIT} bytes' in _error(r)


async def _gather(url: str, requests: list[tuple[str, dict | bytes]], concurrency: int
                  ) -> list[httpx.Response]:
  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
    async def one(path, body):
      if isinstance(body, bytes):
        return await client.post(path, content=body, headers={'content-type': 'application/json'})
      return await client.post(path, json=body)
    return await asyncio.gather(*(one(p, b) for p, b in requests))


def _model_calls(url: str) -> float:
  metrics = httpx.get(f'{url}/metrics', timeout=30).text
  return float(re.search(r'^batch_size_count (\S+)', metrics, re.M).group(1))


def test_200_concurrent_requests_are_all_answered_correctly(servers, cnn_examples):
  (started, _), (x, reference) = servers, cnn_examples
  requests = [('/predict', {'inputs': [x[i].tolist()]}) for i in range(200)]
  calls_before = _model_calls(started['cnn'].url)
  responses = asyncio.run(_gather(started['cnn'].url, requests, concurrency=200))
  assert [r.status_code for r in responses] == [200] * 200
  labels = [r.json()['labels'][0] for r in responses]
  assert labels == reference['labels'].tolist()
  np.testing.assert_allclose([r.json()['probabilities'][0] for r in responses],
                             reference['probabilities'], atol=1e-6)
  # They shared model calls: fewer calls than requests.
  assert _model_calls(started['cnn'].url) - calls_before < 200


def _malformed(rng: random.Random, row: list[float]) -> tuple[str, bytes]:
  """One random bad request: broken JSON, wrong types, shapes, fields or model."""
  path = rng.choice(['/predict', '/v2/models/cnn/infer', '/v1/models/cnn:predict',
                     '/v2/models/nope/infer'])
  valid = {'/predict': {'inputs': [row]},
           '/v2/models/cnn/infer': {'inputs': [{'name': 'inputs', 'shape': [1, 40],
                                                'datatype': 'FP32', 'data': row}]},
           '/v1/models/cnn:predict': {'instances': [row]},
           '/v2/models/nope/infer': {'inputs': []}}[path]
  text = json.dumps(valid)
  junk = [None, True, -1, 1e308, 'x', '', [], {}, [[[]]], [None], ['1'], [1] * 39, [row[:20]] * 3]
  not_a_number = [None, 1e308, 'x', '', [], {}, [[[]]], [None], ['1']]
  kind = rng.randrange(6)
  if kind == 0:    # truncated or corrupted JSON
    cut = rng.randrange(len(text))
    body = text[:cut] + rng.choice(['', '}', ']', 'NaN', '\x00', '"', ',,'])
  elif kind == 1:  # random bytes
    return path, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
  elif kind == 2:  # a field replaced by junk
    obj = json.loads(text)
    target = obj['inputs'][0] if path.endswith('infer') and obj['inputs'] else obj
    target[rng.choice(list(target))] = rng.choice(junk)
    body = json.dumps(obj)
  elif kind == 3:  # a field removed
    obj = json.loads(text)
    target = obj['inputs'][0] if path.endswith('infer') and obj['inputs'] else obj
    del target[rng.choice(list(target))]
    body = json.dumps(obj)
  elif kind == 4:  # one number replaced by junk
    bad = list(row)
    bad[rng.randrange(40)] = rng.choice(not_a_number)
    body = text.replace(json.dumps(row), json.dumps(bad))
  else:            # the wrong top-level type
    body = json.dumps(rng.choice(junk))
  if body == text:
    body = text[:-1]
  return path, body.encode()


def test_1000_malformed_requests_then_valid_ones_still_correct(servers, cnn_examples):
  (started, _), (x, reference) = servers, cnn_examples
  rng = random.Random(0)
  bad = [_malformed(rng, x[0].tolist()) for _ in range(1000)]
  # One connection, in turn: httpx's sync client costs a tenth of the CPU of its async one.
  with httpx.Client(base_url=started['cnn'].url, timeout=30) as client:
    responses = [client.post(path, content=body, headers={'content-type': 'application/json'})
                 for path, body in bad]
  statuses = [r.status_code for r in responses]
  assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
  assert all(isinstance(r.json().get('error'), str) and r.json()['error'] for r in responses)
  r = httpx.post(f"{started['cnn'].url}/predict", json={'inputs': x[:50].tolist()}, timeout=30)
  assert r.status_code == 200 and r.json()['labels'] == reference['labels'][:50].tolist()


def test_batch_buckets_are_powers_of_two_up_to_the_maximum():
  assert batch_buckets(1) == [1]
  assert batch_buckets(8) == [1, 2, 4, 8]
  assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


def test_sigterm_under_load_answers_every_request_in_flight(servers, cnn_examples):
  """Last: it stops the CNN server. 20 requests are received (headers read, bodies still
  streaming) when SIGTERM arrives; each still gets its correct answer, then it exits."""
  (started, _), (x, reference) = servers, cnn_examples
  server = started['cnn']

  async def scenario():
    release = asyncio.Event()

    async def body(i: int):
      text = json.dumps({'inputs': [x[i].tolist()]}).encode()
      yield text[:10]
      await release.wait()
      yield text[10:]
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client, \
        httpx.AsyncClient(base_url=server.url, timeout=10) as monitor:
      tasks = [asyncio.create_task(client.post('/predict', content=body(i),
                                               headers={'content-type': 'application/json'}))
               for i in range(20)]
      deadline = time.monotonic() + 30
      while time.monotonic() < deadline:  # all 20 received (the scrape itself is the 21st)
        metrics = (await monitor.get('/metrics')).text
        if re.search(r'^requests_in_flight 21\.0', metrics, re.M):
          break
        await asyncio.sleep(0.05)
      else:
        raise AssertionError(f'requests never all in flight:\n{metrics[-1000:]}')
      server.terminate()
      await asyncio.sleep(0.5)  # the server is shutting down while they wait
      assert server.proc.poll() is None
      release.set()
      return await asyncio.gather(*tasks)
  responses = asyncio.run(scenario())
  assert [r.status_code for r in responses] == [200] * 20
  assert [r.json()['labels'][0] for r in responses] == reference['labels'][:20].tolist()
  # uvicorn re-raises the signal once it has shut down: terminated by SIGTERM, as asked.
  assert server.proc.wait(30) == -signal.SIGTERM, server.log()
  assert 'Traceback' not in server.log()
  with pytest.raises(httpx.ConnectError):  # it stopped accepting
    httpx.get(f'{server.url}/v2/health/live', timeout=2)
