"""Interleaved group convolution (Zhang et al., "Interleaved Group Convolutions", ICCV 2017, §3.1, Fig. 1)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import batch_norm, conv


def interleave(x: jnp.ndarray, rows: int) -> jnp.ndarray:
  """Permutation P: channels viewed as ``[rows, C/rows]`` are transposed, so channel ``r*M + m`` moves to ``m*rows + r``."""
  b, h, w, c = x.shape
  return x.reshape(b, h, w, rows, c // rows).swapaxes(3, 4).reshape(b, h, w, c)


class IGCBlock(nn.Module):
  """Primary group conv (L partitions of M channels, spatial ``kernel``), permutation, secondary group conv
  (M partitions of L channels, 1x1), permutation back: x -> P^T W^d P W^p x, output width L*M. The input width
  must divide by L. BN sits between the two group convolutions.
  """
  L: int
  M: int
  kernel: int = 3
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.L * self.M
    y = conv(width, self.kernel, self.strides, groups=self.L, name="primary", **kw)(x)
    y = batch_norm(axis_name=self.bn_axis_name, name="primary_bn", **kw)(y, use_running_average=not train)
    y = interleave(y, self.L)
    y = conv(width, 1, groups=self.M, name="secondary", **kw)(y)
    return interleave(y, self.M)
