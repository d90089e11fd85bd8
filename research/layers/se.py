"""Squeeze-and-Excitation block (Hu et al., CVPR 2018, §3): global pool -> FC(C/r) -> ReLU -> FC(C) -> sigmoid -> scale."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class SqueezeExcite(nn.Module):
  """Channel recalibration ``x * sigmoid(W2 relu(W1 mean_hw(x)))``; reduction ratio r = 16 in the paper."""
  reduction: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Dense(max(c // self.reduction, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                         name="fc1")(s))
    s = nn.sigmoid(nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(s))
    return x * s
