"""Learning-rate schedules and optimizers chosen by name (flags), with BN/bias excluded from weight decay."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "step", "onecycle", "linear", "poly")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def make_schedule(name: str, learning_rate: float, num_steps: int, *, warmup_steps: int = 0,
                  step_boundaries: Sequence[float] = (0.5, 0.75), step_factor: float = 0.1,
                  warmup_init: float = 0.0, final_fraction: float = 0.0,
                  onecycle_pct_start: float = 0.3, onecycle_div_factor: float = 25.0,
                  onecycle_final_div_factor: float = 1e4) -> optax.Schedule:
  """``name`` in SCHEDULES; linear warmup from ``warmup_init*lr`` over ``warmup_steps`` (Goyal et al. 2017).

  ``step``: multiply by ``step_factor`` at each fraction of ``num_steps`` in ``step_boundaries``.
  ``onecycle``: Smith & Topin's one-cycle policy (super-convergence), peak ``learning_rate``.
  ``poly``: ``lr * (1 - t/T)^0.9`` (the "poly" policy of DeepLab and PSPNet, Zhao et al. 2017 §4.1).
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
  if num_steps <= 0:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  if not 0 <= warmup_steps < max(num_steps, 1) + (1 if name == "constant" else 0):
    raise ValueError(f"warmup_steps={warmup_steps} must be in [0, num_steps={num_steps})")
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(num_steps, learning_rate, pct_start=onecycle_pct_start,
                                          div_factor=onecycle_div_factor,
                                          final_div_factor=onecycle_final_div_factor)
  decay_steps = num_steps - warmup_steps
  if name == "constant":
    main = optax.constant_schedule(learning_rate)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(learning_rate, max(decay_steps, 1), alpha=final_fraction)
  elif name == "linear":
    main = optax.linear_schedule(learning_rate, learning_rate * final_fraction, max(decay_steps, 1))
  elif name == "poly":
    main = optax.polynomial_schedule(learning_rate, learning_rate * final_fraction, 0.9, max(decay_steps, 1))
  else:  # step
    bounds = {int(round(f * num_steps)) - warmup_steps: step_factor for f in step_boundaries}
    main = optax.piecewise_constant_schedule(learning_rate, {b: v for b, v in bounds.items() if b > 0})
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(warmup_init * learning_rate, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params, *, decay_bn_and_bias: bool = False):
  """True for leaves that get weight decay: conv/dense kernels (ndim > 1); not BN γ/β nor biases."""
  return jax.tree.map(lambda p: bool(decay_bn_and_bias or jnp.ndim(p) > 1), params)


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0, momentum: float = 0.9,
                   decay_bn_and_bias: bool = False, grad_clip_norm: float | None = None,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """``name`` in OPTIMIZERS. SGD variants use coupled L2 (added to the gradient, as in the ResNet/WRN
  papers); ``adamw`` uses decoupled decay (Loshchilov & Hutter). Decay skips BN and biases by default."""
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  mask = lambda p: decay_mask(p, decay_bn_and_bias=decay_bn_and_bias)
  chain = []
  if grad_clip_norm:
    chain.append(optax.clip_by_global_norm(grad_clip_norm))
  if name == "adamw":
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask))
    return optax.chain(*chain)
  if weight_decay:
    chain.append(optax.add_decayed_weights(weight_decay, mask))
  if name == "adam":
    chain.append(optax.adam(schedule, b1=b1, b2=b2))
  elif name == "sgd":
    chain.append(optax.sgd(schedule))
  else:
    chain.append(optax.sgd(schedule, momentum=momentum, nesterov=name == "nesterov"))
  return optax.chain(*chain)
