"""Pure training and evaluation steps. The trainer compiles them once with `jax.jit`."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from research.evaluation import metrics as metrics_lib

TrainState = train_state.TrainState
Batch = dict[str, jax.Array]


def _masked_loss_and_correct(logits_BxK: jax.Array, labels_B: jax.Array, mask_B: jax.Array):
  losses_B = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxK.astype(jnp.float32), labels_B)
  correct_B = (jnp.argmax(logits_BxK, axis=-1) == labels_B)
  weight_B = mask_B.astype(jnp.float32)
  return (losses_B * weight_B).sum(), (correct_B * weight_B).sum(), weight_B.sum()


def train_step(state: TrainState, batch: Batch, *, seed: int, grad_accum_steps: int = 1,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch`, optionally accumulated over micro-batches.

  The loss is the mean over the batch's real (mask=True) examples, whatever the
  micro-batching, so 4 micro-batches of 16 give the gradient of one batch of 64.
  Dropout keys are derived from (seed, step): no RNG lives in the state, and a resumed
  run draws the same masks. With `skip_nonfinite`, an update whose loss or gradients are
  not finite is dropped (params and optimizer state unchanged, step still advances).
  """
  dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

  def summed_loss(params, micro: Batch, key):
    logits = state.apply_fn({'params': params}, micro['inputs'], train=True,
                            rngs={'dropout': key})
    loss_sum, correct, count = _masked_loss_and_correct(logits, micro['labels'], micro['mask'])
    return loss_sum, (correct, count)

  grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
  if grad_accum_steps == 1:
    (loss_sum, (correct, count)), grad_sum = grad_fn(state.params, batch, dropout_key)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]),
        batch)

    def accumulate(carry, inputs):
      i, micro = inputs
      (l, (c, n)), g = grad_fn(state.params, micro, jax.random.fold_in(dropout_key, i))
      g_acc, l_acc, c_acc, n_acc = carry
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, c_acc + c, n_acc + n), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    (grad_sum, loss_sum, correct, count), _ = jax.lax.scan(
        accumulate, init, (jnp.arange(grad_accum_steps), micro_batches))
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grad_sum)
  grad_norm = optax.tree.norm(grads)
  new_state = state.apply_gradients(grads=grads)
  metrics = {'loss': loss_sum / denom, 'accuracy': correct / denom, 'grad_norm': grad_norm}
  if skip_nonfinite:
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                        (new_state.params, new_state.opt_state), (state.params, state.opt_state))
    new_state = new_state.replace(params=kept[0], opt_state=kept[1])
    metrics['skipped'] = (~finite).astype(jnp.float32)
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, *, num_classes: int) -> dict[str, Any]:
  """Summable statistics of the batch's real examples (`research.evaluation.metrics`); the caller
  adds them up over the split and calls `metrics.summarize` once."""
  logits_BxK = state.apply_fn({'params': state.params}, batch['inputs'], train=False)
  return metrics_lib.batch_statistics(logits_BxK, batch['labels'], batch['mask'],
                                      num_classes=num_classes)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       example_inputs: jax.Array, rng: jax.Array) -> TrainState:
  """The state with params still boxed (`nn.Partitioned`); unbox after sharding."""
  variables = model.init(rng, example_inputs, train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx)
