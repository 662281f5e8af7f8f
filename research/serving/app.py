"""The prediction server's HTTP API (FastAPI) for one exported model.

- Open Inference Protocol (KServe v2): `GET /v2/health/live`, `GET /v2/health/ready`,
  `GET /v2/models/{m}`, `GET /v2/models/{m}/ready`, `POST /v2/models/{m}/infer`.
- TF Serving's REST: `POST /v1/models/{m}:predict` with `{"instances": [...]}`.
- `POST /predict` with `{"texts": [...]}` (text models) or `{"inputs": [...]}`.
- `GET /metrics`: Prometheus text.

Bodies are parsed here, not by pydantic, so that every bad request is a 4xx
`{"error": "..."}` naming what is wrong and what is accepted; a 5xx means a bug.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from research.serving import artifact
from research.serving.batching import Batcher
from research.serving.metrics import Metrics, MetricsMiddleware


@dataclasses.dataclass
class Limits:
  max_body_bytes: int = 4 << 20   # a request body's size
  max_text_chars: int = 10_000    # one text's length, in characters
  max_examples: int = 1024        # examples in one request


class BadRequest(Exception):
  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


def _json(obj: Any, status: int = 200) -> Response:
  return Response(json.dumps(obj, separators=(',', ':')), status_code=status,
                  media_type='application/json')


def _error(message: str, status: int) -> Response:
  return _json({'error': message}, status)


async def _read_json(request: Request, limit: int) -> Any:
  """The body as JSON, refused once it passes `limit` bytes (before reading it all)."""
  declared = request.headers.get('content-length')
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise BadRequest(f'request body of {declared} bytes exceeds the limit of {limit} bytes.', 413)
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise BadRequest(f'request body exceeds the limit of {limit} bytes.', 413)
    chunks.append(chunk)
  body = b''.join(chunks)
  if not body:
    raise BadRequest('the request body is empty: send a JSON object.')
  try:
    return json.loads(body)
  except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
    raise BadRequest(f'invalid JSON: {e}.') from None


def _field(body: Any, key: str, kind: type, where: str = 'the request body') -> Any:
  if not isinstance(body, dict):
    raise BadRequest(f'{where} must be a JSON object, got {type(body).__name__}.')
  if key not in body:
    raise BadRequest(f'missing field {key!r} in {where}.')
  value = body[key]
  if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
    raise BadRequest(f'field {key!r} must be a {kind.__name__}, got {type(value).__name__}.')
  return value


class Server:
  """The model, its batcher and the request handling behind the routes."""

  def __init__(self, model: artifact.ExportedModel, limits: Limits, batcher: Batcher,
               metrics: Metrics):
    self.model, self.limits, self.batcher, self.metrics = model, limits, batcher, metrics

  def check_model(self, name: str) -> None:
    if name != self.model.name:
      raise BadRequest(f'unknown model {name!r}; this server serves {self.model.name!r}.', 404)

  def _check_texts(self, texts: Any) -> list[str]:
    if not isinstance(texts, list):
      raise BadRequest(f'texts must be a list of strings, got {type(texts).__name__}.')
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise BadRequest(f'texts[{i}] is {type(text).__name__}, not a string.')
      if len(text) > self.limits.max_text_chars:
        raise BadRequest(f'texts[{i}] has {len(text)} characters; the limit is '
                         f'{self.limits.max_text_chars}.')
    return texts

  async def logits(self, raw: Any) -> np.ndarray:
    """Logits `[N, K]` for raw inputs: texts, or nested lists / an array of numbers."""
    if self.model.is_text:
      raw = self._check_texts(raw)
    count = len(raw) if hasattr(raw, '__len__') else 0
    if count > self.limits.max_examples:
      raise BadRequest(f'{count} examples in one request; the limit is '
                       f'{self.limits.max_examples}.')
    try:
      arrays = self.model.prepare(raw)
    except artifact.InputError as e:
      raise BadRequest(str(e)) from None
    out = await self.batcher.infer(*arrays)
    self.metrics.examples.inc(len(out))
    return out

  def outputs(self, logits: np.ndarray) -> dict[str, Any]:
    probabilities = self.model.probabilities(logits)
    labels = probabilities.argmax(axis=-1)
    return {'logits': logits, 'probabilities': probabilities, 'label': labels,
            'class_name': self.model.label_names(labels)}

  def metadata(self) -> dict[str, Any]:
    sig = self.model.signature
    strip = lambda specs: [{k: s[k] for k in ('name', 'datatype', 'shape')} for s in specs]
    return {'name': self.model.name, 'versions': ['1'], 'platform': 'jax_export',
            'inputs': strip(sig['inputs']), 'outputs': strip(sig['outputs']),
            'parameters': {'class_names': self.model.class_names,
                           'max_examples': self.limits.max_examples,
                           'max_text_chars': self.limits.max_text_chars}}

  # ---- Open Inference Protocol ----

  def oip_inputs(self, body: Any) -> Any:
    tensors = _field(body, 'inputs', list)
    spec = self.model.input_spec
    if len(tensors) != 1:
      raise BadRequest(f'this model takes one input tensor ({spec["name"]!r}), got '
                       f'{len(tensors)}.')
    tensor = tensors[0]
    where = 'inputs[0]'
    name = _field(tensor, 'name', str, where)
    if name != spec['name']:
      raise BadRequest(f'unknown input {name!r}; this model takes {spec["name"]!r}.')
    datatype = _field(tensor, 'datatype', str, where)
    if datatype != spec['datatype']:
      raise BadRequest(f'input {name!r} has datatype {datatype!r}; this model takes '
                       f'{spec["datatype"]!r}.')
    shape = _field(tensor, 'shape', list, where)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                            for d in shape):
      raise BadRequest(f'shape must be a non-empty list of non-negative integers, got {shape}.')
    expected = spec['shape'][1:]
    if shape[1:] != expected:
      raise BadRequest(f'input {name!r} has shape {shape}; this model takes '
                       f'[N{"".join(f", {d}" for d in expected)}].')
    data = _field(tensor, 'data', list, where)
    if shape[0] == 0:
      raise BadRequest('the batch is empty: shape[0] must be at least 1.')
    if shape[0] > self.limits.max_examples:
      raise BadRequest(f'{shape[0]} examples in one request; the limit is '
                       f'{self.limits.max_examples}.')
    if self.model.is_text:
      if len(data) != shape[0]:
        raise BadRequest(f'shape {shape} needs {shape[0]} strings in data, got {len(data)}.')
      return data
    try:
      array = np.asarray(data)
    except ValueError:
      raise BadRequest('data is ragged: send a flat list (row-major) or nested lists of '
                       'one shape.') from None
    if array.size != math.prod(shape):
      raise BadRequest(f'shape {shape} needs {math.prod(shape)} values in data, got '
                       f'{array.size}.')
    return array.reshape(shape)

  def oip_response(self, logits: np.ndarray, body: dict) -> dict[str, Any]:
    values = self.outputs(logits)
    specs = {s['name']: s for s in self.model.signature['outputs']}
    requested = body.get('outputs')
    if requested is None:
      names = list(specs)
    else:
      if not isinstance(requested, list) or not all(
          isinstance(o, dict) and isinstance(o.get('name'), str) for o in requested):
        raise BadRequest('outputs must be a list of {"name": ...} objects.')
      names = [o['name'] for o in requested]
      unknown = [n for n in names if n not in specs]
      if unknown:
        raise BadRequest(f'unknown output(s) {unknown}; this model has {list(specs)}.')
    outputs = []
    for name in names:
      value = values[name]
      shape = list(np.shape(value))
      data = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else value
      outputs.append({'name': name, 'datatype': specs[name]['datatype'], 'shape': shape,
                      'data': data})
    response = {'model_name': self.model.name, 'model_version': '1', 'outputs': outputs}
    if isinstance(body.get('id'), str):
      response['id'] = body['id']
    return response


def create_app(model: artifact.ExportedModel, *, limits: Limits | None = None,
               max_batch: int = 16, max_delay_s: float = 0.0, workers: int = 1) -> FastAPI:
  """The app; `model` should be warmed up (`model.warm_up()`) before it takes traffic."""
  limits = limits or Limits()
  metrics = Metrics()
  batcher = Batcher(model.run, max_batch=max_batch, max_delay_s=max_delay_s,
                    workers=workers, on_batch=metrics.batch_size.observe)
  server = Server(model, limits, batcher, metrics)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    batcher.start()
    yield
    await batcher.stop()  # after uvicorn has answered every in-flight request

  app = FastAPI(title=f'{model.name} predictions', lifespan=lifespan, docs_url=None,
                redoc_url=None, openapi_url=None)
  app.state.server = server

  @app.exception_handler(BadRequest)
  async def bad_request(request: Request, e: BadRequest):
    return _error(str(e), e.status)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request: Request, e: StarletteHTTPException):
    message = {404: f'no route {request.url.path!r}; see GET /v2/models/{model.name}',
               405: f'method {request.method} not allowed on {request.url.path!r}'}.get(
                   e.status_code, str(e.detail))
    return _error(message, e.status_code)

  @app.exception_handler(Exception)
  async def internal_error(request: Request, e: Exception):
    return _error(f'internal error: {type(e).__name__}: {e}', 500)

  @app.get('/v2/health/live')
  async def live():
    return _json({'live': True})

  @app.get('/v2/health/ready')
  async def ready():
    return _json({'ready': True})

  @app.get('/v2')
  async def server_metadata():
    return _json({'name': 'research.serve', 'version': '1', 'extensions': []})

  @app.get('/v2/models/{model_name}')
  async def model_metadata(model_name: str):
    server.check_model(model_name)
    return _json(server.metadata())

  @app.get('/v2/models/{model_name}/ready')
  async def model_ready(model_name: str):
    server.check_model(model_name)
    return _json({'name': model.name, 'ready': True})

  @app.post('/v2/models/{model_name}/infer')
  async def infer(model_name: str, request: Request):
    server.check_model(model_name)
    body = await _read_json(request, limits.max_body_bytes)
    logits = await server.logits(server.oip_inputs(body))
    return _json(server.oip_response(logits, body))

  @app.post('/v1/models/{model_name}:predict')
  async def tf_predict(model_name: str, request: Request):
    server.check_model(model_name)
    body = await _read_json(request, limits.max_body_bytes)
    instances = _field(body, 'instances', list)
    values = server.outputs(await server.logits(instances))
    return _json({'predictions': [
        {'label': int(label), 'class_name': name, 'probabilities': p.tolist()}
        for label, name, p in zip(values['label'], values['class_name'],
                                  values['probabilities'])]})

  @app.post('/predict')
  async def predict(request: Request):
    body = await _read_json(request, limits.max_body_bytes)
    key, other = ('texts', 'inputs') if model.is_text else ('inputs', 'texts')
    if isinstance(body, dict) and key not in body and other in body:
      raise BadRequest(f'this model takes {key!r}, not {other!r}.')
    values = server.outputs(await server.logits(_field(body, key, list)))
    return _json({'model_name': model.name, 'labels': values['label'].tolist(),
                  'class_names': values['class_name'],
                  'probabilities': values['probabilities'].tolist()})

  @app.get('/metrics')
  async def prometheus():
    data, content_type = metrics.exposition()
    return Response(data, media_type=content_type)

  app.add_middleware(MetricsMiddleware, metrics=metrics)
  return app
