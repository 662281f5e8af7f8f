"""Pure training and evaluation steps; the objective supplies the loss and the statistics.

The trainer compiles them once with `jax.jit`. Randomness comes from keys derived from
(seed, step) (training) or (seed, batch index) (evaluation): no RNG lives in the state,
so a resumed run draws the same dropout and masking as an uninterrupted one.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from research.objectives.base import Objective

Batch = dict[str, jax.Array]

# Streams folded into the (seed, step) key, so dropout and objective draws are independent.
_OBJECTIVE_STREAM = 1
_EVAL_STREAM = 2


class TrainState(train_state.TrainState):
  """Params, optimizer state, and the model's other variable collections (`model_state`,
  e.g. BatchNorm's `batch_stats`), which training updates and evaluation reads."""
  model_state: flax.core.FrozenDict[str, Any] | dict[str, Any] = flax.struct.field(
      default_factory=dict)


def model_inputs(batch: Batch, input_fields: dict[str, str]) -> dict[str, jax.Array]:
  """Keyword arguments for the model from batch fields it declared (e.g. input_mask)."""
  return {kwarg: batch[field] for field, kwarg in input_fields.items() if field in batch}


def apply_model(state: TrainState, params, batch: Batch, *, train: bool,
                input_fields: dict[str, str], dropout_key: jax.Array | None = None,
                model_state=None):
  """`(outputs, new_model_state)`; collections in model_state are mutable in training."""
  model_state = state.model_state if model_state is None else model_state
  variables = {'params': params, **model_state}
  kwargs = model_inputs(batch, input_fields)
  if train:
    rngs = {'dropout': dropout_key}
    if model_state:
      return state.apply_fn(variables, batch['inputs'], train=True, rngs=rngs,
                            mutable=list(model_state), **kwargs)
    return state.apply_fn(variables, batch['inputs'], train=True, rngs=rngs, **kwargs), {}
  return state.apply_fn(variables, batch['inputs'], train=False, **kwargs), model_state


def train_step(state: TrainState, batch: Batch, *, objective: Objective, seed: int,
               input_fields: dict[str, str] | None = None, grad_accum_steps: int = 1,
               skip_nonfinite: bool = False,
               frozen: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch`, optionally accumulated over micro-batches.

  The loss is the objective's sum over the batch divided by its total weight (real
  examples, or chosen tokens), whatever the micro-batching. With `skip_nonfinite`, an
  update whose loss or gradients are not finite is dropped (params and optimizer state
  unchanged, step still advances). `frozen` (a tree like the params of Python bools, from
  `optim.frozen_mask`) stops the gradient at frozen parameters: their weight gradients
  are never computed (a LoRA or linear-probe step skips the frozen kernels' share of the
  backward pass) and come out as zeros, which the optimizer ignores.
  """
  input_fields = input_fields or {}
  step_key = jax.random.fold_in(jax.random.key(seed), state.step)
  dropout_key = step_key
  batch = objective.prepare(batch, jax.random.fold_in(step_key, _OBJECTIVE_STREAM), True)

  def summed_loss(params, model_state, micro: Batch, key):
    if frozen is not None:
      params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
    outputs, new_model_state = apply_model(state, params, micro, train=True,
                                           input_fields=input_fields, dropout_key=key,
                                           model_state=model_state)
    loss_sum, weight, sums = objective.loss(outputs, micro)
    return loss_sum, (weight, sums, new_model_state)

  grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
  if grad_accum_steps == 1:
    (loss_sum, (weight, sums, model_state)), grad_sum = grad_fn(
        state.params, state.model_state, batch, dropout_key)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]),
        batch)

    def accumulate(carry, inputs):
      i, micro = inputs
      g_acc, l_acc, w_acc, s_acc, m_state = carry
      (l, (w, s, m_state)), g = grad_fn(state.params, m_state, micro,
                                        jax.random.fold_in(dropout_key, i))
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, w_acc + w,
              jax.tree.map(jnp.add, s_acc, s), m_state), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    _, (_, sums_shape, _) = jax.eval_shape(
        lambda: summed_loss(state.params, state.model_state, first, dropout_key))
    init = (zeros, jnp.zeros(()), jnp.zeros(()),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape), state.model_state)
    (grad_sum, loss_sum, weight, sums, model_state), _ = jax.lax.scan(
        accumulate, init, (jnp.arange(grad_accum_steps), micro_batches))
  denom = jnp.maximum(weight, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grad_sum)
  grad_norm = optax.tree.norm(grads)
  new_state = state.apply_gradients(grads=grads)
  if model_state:
    new_state = new_state.replace(model_state=model_state)
  metrics = {'loss': loss_sum / denom, **{k: v / denom for k, v in sums.items()},
             'grad_norm': grad_norm}
  if skip_nonfinite:
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                        (new_state.params, new_state.opt_state, new_state.model_state),
                        (state.params, state.opt_state, state.model_state))
    new_state = new_state.replace(params=kept[0], opt_state=kept[1], model_state=kept[2])
    metrics['skipped'] = (~finite).astype(jnp.float32)
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, batch_index: jax.Array, *,
              objective: Objective, seed: int,
              input_fields: dict[str, str] | None = None) -> dict[str, Any]:
  """The objective's summable statistics of the batch's real examples; the evaluator adds
  them up over the split and summarises once."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM), batch_index)
  batch = objective.prepare(batch, key, False)
  outputs, _ = apply_model(state, state.params, batch, train=False,
                           input_fields=input_fields or {})
  return objective.eval_statistics(outputs, batch)


def predict_step(state: TrainState, batch: Batch, *,
                 input_fields: dict[str, str] | None = None) -> jax.Array:
  """The model's outputs in evaluation mode (for evaluators and export)."""
  outputs, _ = apply_model(state, state.params, batch, train=False,
                           input_fields=input_fields or {})
  return outputs


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       example_inputs: jax.Array, rng: jax.Array, *,
                       model_kwargs: dict[str, Any] | None = None) -> TrainState:
  """The state from `model.init` on an example batch (`model_kwargs`: its other inputs,
  e.g. `mask_BxL`), params still boxed (`nn.Partitioned`); unbox after sharding.
  Collections other than 'params' (BatchNorm's `batch_stats`) become `model_state`."""
  variables = dict(model.init(rng, example_inputs, train=False, **(model_kwargs or {})))
  params = variables.pop('params')
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           model_state=variables)
