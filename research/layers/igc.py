"""Interleaved group convolution (Zhang et al., "Interleaved Group Convolutions", ICCV 2017, §3.1, Fig. 1)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import channel_shuffle, conv


class IGCBlock(nn.Module):
  """x -> P^T W^d P W^p x (§3.1, Eq. 4): primary group conv W^p (L partitions of M channels, spatial ``kernel``),
  permutation P (the m-th secondary partition takes the m-th channel of every primary partition), secondary group
  conv W^d (M partitions of L channels, 1x1), permutation back. Linear (no normalisation or nonlinearity inside, as
  the paper and the authors' code); output width L*M. The input width must divide by L.

  (B, H, W, C_in) -> (B, H/strides, W/strides, L*M).
  """
  L: int
  M: int
  kernel: int = 3
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] % self.L:
      raise ValueError(f"IGCBlock: input channels {x.shape[-1]} must divide by L={self.L}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.L * self.M
    y = conv(width, self.kernel, self.strides, groups=self.L, name="primary", **kw)(x)
    # P = channel_shuffle(., L): channel l*M + m (m-th of primary partition l) moves to m*L + l; P^T = shuffle(., M).
    y = conv(width, 1, groups=self.M, name="secondary", **kw)(channel_shuffle(y, self.L))
    return channel_shuffle(y, self.M)
