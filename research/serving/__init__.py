"""Serving exported models: `artifact` (the loader, jax + numpy only), `app` (the HTTP
API), `batching` (dynamic batching), `metrics` (Prometheus)."""
