"""Knowledge distillation: a classifier taught by a frozen teacher loaded from a run directory.

Per example, with student logits s, teacher logits t, temperature T and weight alpha:

  loss = alpha * T^2 * CE(softmax(t / T), s / T) + (1 - alpha) * CE(label, s)

(Hinton et al. 2015; T^2 keeps the soft term's gradient scale independent of T). The
teacher (`teacher`: a run written by research.main, its `teacher_checkpoint`) is restored
once, its parameters closed over as constants and its logits stopped from gradients; it
must read the same inputs as the student (same dataset and preprocessing). Evaluation
reports the student's plain classification metrics.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from research.errors import ConfigError
from research.objectives.base import Batch
from research.objectives.classification import Classification


def distillation_loss(student_BxK: jax.Array, teacher_BxK: jax.Array, labels_B: jax.Array,
                      temperature: float, alpha: float) -> jax.Array:
  """Per-example loss `loss_B` (see the module docstring)."""
  soft_BxK = jax.nn.softmax(jax.lax.stop_gradient(teacher_BxK) / temperature, axis=-1)
  soft_B = optax.softmax_cross_entropy(student_BxK / temperature, soft_BxK)
  hard_B = optax.softmax_cross_entropy_with_integer_labels(student_BxK, labels_B)
  return alpha * temperature ** 2 * soft_B + (1.0 - alpha) * hard_B


class Distillation(Classification):
  """Classification whose training loss also matches a teacher's softened predictions."""

  def __init__(self, *, teacher: str = '', teacher_checkpoint: str = 'latest',
               temperature: float = 4.0, alpha: float = 0.9, info: Any = None,
               preprocess: Any = None, seed: int = 0):
    super().__init__(info=info, preprocess=preprocess, seed=seed)
    if not teacher:
      raise ConfigError('Objective distillation needs config.objective_args.teacher: the '
                        'directory of a finished run (e.g. runs/mnist1d_cnn).')
    if temperature <= 0:
      raise ConfigError(f'config.objective_args.temperature must be > 0, got {temperature}.')
    if not 0.0 <= alpha <= 1.0:
      raise ConfigError(f'config.objective_args.alpha must be in [0, 1], got {alpha}.')
    self.temperature, self.alpha = float(temperature), float(alpha)
    self.teacher_dir = teacher
    self._teacher = None
    if info is not None:  # a built objective (not only its hyperparameters being listed)
      self._teacher = self._load_teacher(teacher, teacher_checkpoint, info)

  def _load_teacher(self, workdir: str, checkpoint: str, info):
    from research import writers
    from research.data import preprocess as preprocess_lib
    from research.training import experiment, steps  # experiment builds objectives
    teacher_config = writers.read_config(workdir)
    def deterministic(spec):  # train-only random ops (augmentation) may differ
      return [(name, args) for name, args in spec if not preprocess_lib.OPS[name].random]
    theirs = (teacher_config.dataset.name,
              deterministic(preprocess_lib.parse_spec(teacher_config.dataset.preprocess)))
    ours = (info.name, deterministic(self.preprocess.spec) if self.preprocess is not None
            else theirs[1])
    if theirs != ours:
      raise ConfigError(
          f'The teacher {workdir!r} read dataset {theirs[0]!r} with preprocessing '
          f'{teacher_config.dataset.preprocess!r}; the student reads {ours[0]!r} with '
          f'{ours[1]}: a teacher must see the same inputs.')
    _, exp, state, _ = experiment.restore_run(workdir, checkpoint)
    variables = {'params': state.params, **state.model_state}
    model, fields = exp.model, exp.input_fields

    def logits(batch: Batch) -> jax.Array:
      out = model.apply(variables, batch['inputs'], train=False,
                        **steps.model_inputs(batch, fields))
      return jax.lax.stop_gradient(out.astype(jnp.float32))
    return logits

  def loss(self, logits_BxK, batch):
    weight_B = batch['mask'].astype(jnp.float32)
    logits_BxK = logits_BxK.astype(jnp.float32)
    teacher_BxK = self._teacher(batch)
    losses_B = distillation_loss(logits_BxK, teacher_BxK, batch['labels'], self.temperature,
                                 self.alpha)
    correct_B = jnp.argmax(logits_BxK, axis=-1) == batch['labels']
    agree_B = jnp.argmax(logits_BxK, axis=-1) == jnp.argmax(teacher_BxK, axis=-1)
    return ((losses_B * weight_B).sum(), weight_B.sum(),
            {'accuracy': (correct_B * weight_B).sum(),
             'teacher_agreement': (agree_B * weight_B).sum()})
