"""Prometheus metrics of the prediction server, and the ASGI middleware that records them.

Requests are counted by route template (`/v2/models/{model_name}/infer`, not each URL, so
a scan of random paths cannot grow the label set) and status code.
"""
from __future__ import annotations

import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
  """One registry per server (tests run several apps in one process)."""

  def __init__(self):
    self.registry = CollectorRegistry()
    self.requests = Counter('requests', 'HTTP requests by route and status code.',
                            ['endpoint', 'status'], registry=self.registry)
    self.latency = Histogram('request_latency_seconds', 'Time from request to response end.',
                             ['endpoint'], buckets=LATENCY_BUCKETS, registry=self.registry)
    self.in_flight = Gauge('requests_in_flight', 'Requests received and not yet answered.',
                           registry=self.registry)
    self.batch_size = Histogram('batch_size', 'Examples per model call (before padding).',
                                buckets=BATCH_BUCKETS, registry=self.registry)
    self.examples = Counter('examples', 'Examples predicted.', registry=self.registry)

  def exposition(self) -> tuple[bytes, str]:
    return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
  """Pure ASGI (no per-request task or body copy): counts, times and tracks in-flight."""

  def __init__(self, app, metrics: Metrics):
    self.app, self.metrics = app, metrics

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    start = time.perf_counter()
    status = [500]

    async def send_recording(message):
      if message['type'] == 'http.response.start':
        status[0] = message['status']
      await send(message)

    self.metrics.in_flight.inc()
    try:
      await self.app(scope, receive, send_recording)
    finally:
      self.metrics.in_flight.dec()
      route = scope.get('route')
      endpoint = getattr(route, 'path', None) or 'unmatched'
      self.metrics.requests.labels(endpoint, str(status[0])).inc()
      self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
