"""Predictions from a finished run: `Predictor.from_workdir(DIR).predict(inputs)`.

  from research.predict import Predictor
  predictor = Predictor.from_workdir('runs/rt_ft')           # the latest checkpoint
  predictor.predict(['a gripping, beautifully acted film'])   # labels, names, probabilities

The run is rebuilt from DIR/config.json with its own preprocessing (the tokenizer it
trained is reused from DIR), its checkpoint restored onto the current devices, and the
inputs go through the same evaluation pipeline as a test split: batches of
`eval_batch_size`, the last one padded, so one compiled function serves every call.
Classification runs return the argmax label, its class name and the softmax
probabilities. The dataset's first evaluation split is read once, for the model's input
shapes.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from research.data import pipeline, sources
from research.errors import ConfigError
from research.parallel import sharding
from research.training import experiment


class Predictor:
  """A restored run that maps raw inputs (texts, arrays) to predictions."""

  def __init__(self, exp: experiment.Experiment, state, step: int):
    self.exp, self.state, self.step = exp, state, step
    self.class_names = exp.info.class_names

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str | int = 'latest') -> 'Predictor':
    _, exp, state, step = experiment.restore_run(workdir, checkpoint)
    return cls(exp, state, step)

  def outputs(self, inputs: Sequence[Any] | np.ndarray) -> np.ndarray:
    """The model's raw outputs (logits) for `inputs`, one row per input."""
    if isinstance(inputs, (str, bytes)):
      raise ConfigError('predict() takes a sequence of inputs, e.g. [text], not one string.')
    if len(inputs) == 0:
      return np.zeros((0,), np.float32)
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind not in 'OSU':
      array = inputs
    else:
      array = np.empty(len(inputs), dtype=object)
      array[:] = list(inputs)
    split = sources.SplitArrays(inputs=array, labels=np.zeros(len(array), np.int32))
    rows = []
    with sharding.activate(self.exp.mesh):
      for local in pipeline.eval_dataset(split, self.exp.config.eval_batch_size,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count(),
                                         preprocess=self.exp.preprocess.eval_fn):
        batch = sharding.global_batch(local, self.exp.batch_sharding)
        out = np.asarray(jax.device_get(self.exp.predict_fn(self.state, batch)))
        rows.append(out[np.asarray(local['mask'])])
    return np.concatenate(rows)

  def predict(self, inputs: Sequence[Any] | np.ndarray) -> dict[str, Any]:
    """`{'labels': int[N], 'names': [str] * N, 'probabilities': float[N, K]}`."""
    logits = self.outputs(inputs)
    if logits.ndim != 2:
      raise ConfigError(f'predict() returns class probabilities; this run\'s model returns '
                        f'outputs of shape {logits.shape[1:]} per input (objective '
                        f'{self.exp.config.objective!r}). Use outputs() instead.')
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    labels = probabilities.argmax(axis=-1)
    names = [self.class_names[i] if self.class_names else str(i) for i in labels]
    return {'labels': labels, 'names': names, 'probabilities': probabilities}
