"""Maxout (Goodfellow et al., ICML 2013): max over groups of ``pieces`` linear units — "max pooling over channels"."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def maxout(x: jnp.ndarray, pieces: int, axis: int = -1) -> jnp.ndarray:
  """Channel max: splits ``axis`` (size ``units * pieces``) into ``[units, pieces]`` and takes the max.

  Unit ``u`` is the max of channels ``u*pieces .. u*pieces + pieces - 1`` (contiguous groups).
  """
  axis = axis % x.ndim
  c = x.shape[axis]
  if c % pieces:
    raise ValueError(f"maxout: {c} channels do not divide into {pieces} pieces")
  shape = x.shape[:axis] + (c // pieces, pieces) + x.shape[axis + 1:]
  return jnp.max(x.reshape(shape), axis=axis + 1)


class MaxoutDense(nn.Module):
  """Dense layer to ``features * pieces`` units followed by ``maxout`` (seed 003 §6.3.1: FC -> Maxout -> softmax)."""
  features: int
  pieces: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.features * self.pieces, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=self.kernel_init, name="dense")(x)
    return maxout(y, self.pieces)
