"""Deformable convolution layer: DCN v1 (Dai et al. 2017) and v2 / modulated (Zhu et al. 2019)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.ops import deform_conv2d
from research.ops._util import pair

Dtype = Any


class DeformConv(nn.Module):
  """Deformable 2-D convolution, channels-last: ``[B, H, W, Cin] -> [B, Ho, Wo, features]``.

  A regular convolution (same kernel, stride, padding and dilation) predicts the offsets, and for v2
  (``modulated=True``) the modulation mask through a sigmoid; it is zero-initialised, so training starts
  from a plain convolution (v1) or a convolution scaled by 0.5 (v2), as in both papers. Its output holds
  ``2*offset_groups*kh*kw`` offset channels ((dy, dx) pairs ordered (group, kernel row, kernel col)) followed
  by ``offset_groups*kh*kw`` mask logits. The main kernel is HWIO ``[kh, kw, Cin/groups, features]``.
  """
  features: int
  kernel_size: int | tuple[int, int] = (3, 3)
  strides: int | tuple[int, int] = 1
  padding: int | tuple[int, int] | None = None  # default: dilation * (k - 1) // 2 ("same" for stride 1)
  dilation: int | tuple[int, int] = 1
  groups: int = 1
  offset_groups: int = 1
  modulated: bool = True
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kh, kw = pair(self.kernel_size, "kernel_size")
    stride, dilation = pair(self.strides, "strides"), pair(self.dilation, "dilation")
    padding = ((dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2) if self.padding is None
               else pair(self.padding, "padding"))
    cin = x.shape[-1]
    if cin % self.groups:
      raise ValueError(f"DeformConv: input channels {cin} (x {x.shape}) not divisible by groups={self.groups}")
    dtype = self.dtype or x.dtype
    n_taps = self.offset_groups * kh * kw
    om = nn.Conv(n_taps * (3 if self.modulated else 2), (kh, kw), strides=stride,
                 padding=[(padding[0], padding[0]), (padding[1], padding[1])], kernel_dilation=dilation,
                 kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, dtype=jnp.float32,
                 param_dtype=self.param_dtype, name="offset_conv")(x)
    offset = om[..., :2 * n_taps]
    mask = jax.nn.sigmoid(om[..., 2 * n_taps:]) if self.modulated else None
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // self.groups, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
    return deform_conv2d(x.astype(dtype), offset, kernel.astype(dtype), mask=mask,
                         bias=None if bias is None else bias.astype(dtype), stride=stride, padding=padding,
                         dilation=dilation, groups=self.groups, offset_groups=self.offset_groups, impl=self.impl)
