"""An optax optimizer from `config.optimizer`: schedule -> optimizer -> clipping/decay."""
from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  peak = opt.learning_rate
  end = peak * opt.min_learning_rate_ratio
  decay_steps = max(num_train_steps - opt.warmup_steps, 1)
  if opt.schedule == 'constant':
    main = optax.constant_schedule(peak)
  elif opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.min_learning_rate_ratio)
  elif opt.schedule == 'linear':
    main = optax.linear_schedule(peak, end, decay_steps)
  else:
    raise ValueError(f'Unknown schedule {opt.schedule!r}.')
  if opt.warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, peak, opt.warmup_steps)
  return optax.join_schedules([warmup, main], [opt.warmup_steps])


def create_optimizer(opt: ml_collections.ConfigDict,
                     num_train_steps: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(opt, num_train_steps)
  if opt.name == 'adamw':
    core = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
  elif opt.name == 'adam':
    core = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == 'sgd':
    core = optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov)
  else:
    raise ValueError(f"Unknown optimizer {opt.name!r}; available: ['adam', 'adamw', 'sgd'].")
  chain = []
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0 and opt.name != 'adamw':
    chain.append(optax.add_decayed_weights(opt.weight_decay))  # L2 on the gradient
  chain.append(core)
  return optax.chain(*chain)
