"""The baseline of benchmarks/loadtest.py: the usual tutorial pattern, a Flask app that
loads the run with the package (`Predictor.from_workdir`) at start and calls it once per
request, on Flask's threaded server.

  python -m benchmarks.flask_app --workdir=runs/demo --port=8001

`POST /predict` takes `{"inputs": [...]}` or `{"texts": [...]}` like research.serve's.
Flask is a benchmark-only dependency (the `bench` extra).
"""
from __future__ import annotations

import argparse

import numpy as np
from flask import Flask, jsonify, request

from research.predict import Predictor


def create_app(workdir: str, eval_batch_size: int = 0) -> Flask:
  predictor = Predictor.from_workdir(workdir)
  if eval_batch_size:  # the run's eval batch (each call is padded to it), or a smaller one
    predictor.exp.config.eval_batch_size = eval_batch_size
  text = predictor.exp.preprocess.tokenizes
  app = Flask(__name__)

  @app.post('/predict')
  def predict():
    body = request.get_json()
    inputs = body['texts'] if text else np.asarray(body['inputs'], np.float32)
    out = predictor.predict(inputs)
    return jsonify(labels=out['labels'].tolist(), class_names=out['names'],
                   probabilities=out['probabilities'].tolist())

  @app.get('/v2/health/ready')
  def ready():
    return jsonify(ready=True)

  return app


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--host', default='127.0.0.1')
  parser.add_argument('--port', type=int, default=8001)
  parser.add_argument('--eval_batch_size', type=int, default=0,
                      help="0: the run's config.eval_batch_size")
  args = parser.parse_args()
  create_app(args.workdir, args.eval_batch_size).run(args.host, args.port, threaded=True)


if __name__ == '__main__':
  main()
