"""Batch normalisation forward pass written from its formula (Ioffe & Szegedy 2015, Alg. 1; seed 003 §6.4).

``FormulaBatchNorm`` has the same variables and update rule as ``flax.linen.BatchNorm`` (params ``scale``/``bias``,
``batch_stats`` ``mean``/``var``; ``ra = momentum * ra + (1 - momentum) * batch``, biased batch variance), so the
two are interchangeable; it exists to check ``nn.BatchNorm`` against the textbook formula.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


def batch_norm_forward(x, gamma, beta, mean, var, epsilon: float = 1e-5):
  """y = gamma * (x - mean) / sqrt(var + eps) + beta, broadcasting over the last (channel) axis."""
  return gamma * (x - mean) / jnp.sqrt(var + epsilon) + beta


def batch_moments(x, axes=None, axis_name: str | None = None):
  """mu_B = mean(x), sigma_B^2 = mean((x - mu_B)^2) over every axis but the last (and across ``axis_name``)."""
  axes = tuple(range(x.ndim - 1)) if axes is None else axes
  mu = jnp.mean(x, axis=axes)
  if axis_name is not None:
    mu = lax.pmean(mu, axis_name)
  var = jnp.mean(jnp.square(x - mu), axis=axes)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  return mu, var


class FormulaBatchNorm(nn.Module):
  """Drop-in ``nn.BatchNorm`` (channels-last) computed from the formula in float32."""
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    c = x.shape[-1]
    gamma = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    beta = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    xf = x.astype(jnp.float32)
    if use_running_average:
      mu, var = ra_mean.value, ra_var.value
    else:
      mu, var = batch_moments(xf, axis_name=None if self.is_initializing() else self.axis_name)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mu
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    y = batch_norm_forward(xf, gamma.astype(jnp.float32), beta.astype(jnp.float32), mu, var, self.epsilon)
    return y.astype(self.dtype)
