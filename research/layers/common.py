"""Shared building blocks: initialisers, conv/BN factories, pooling used across model families."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# He et al. 2015 ("Delving deep into rectifiers"), fan-out normal as in torchvision's ResNets.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv(features: int, kernel: int | tuple[int, int], strides: int = 1, *, dtype: Dtype, param_dtype: Dtype,
         groups: int = 1, use_bias: bool = False, padding: Any = None, dilation: int = 1,
         kernel_init=kaiming_normal_fan_out, name: str | None = None) -> nn.Conv:
  """A 2-D convolution with torchvision-style symmetric padding (k // 2 * dilation) by default."""
  k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  if padding is None:
    padding = [((kk - 1) // 2 * dilation, (kk - 1) // 2 * dilation) for kk in k]
  return nn.Conv(features, k, strides=(strides, strides), padding=padding, use_bias=use_bias,
                 feature_group_count=groups, kernel_dilation=(dilation, dilation), dtype=dtype,
                 param_dtype=param_dtype, kernel_init=kernel_init, name=name)


def batch_norm(*, dtype: Dtype, param_dtype: Dtype, axis_name: str | None = None, zero_init: bool = False,
               momentum: float = 0.9, epsilon: float = 1e-5, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm (Ioffe & Szegedy 2015) with statistics in the ``batch_stats`` collection.

  ``axis_name`` (e.g. ``"data"``) makes it cross-replica when run under ``shard_map``;
  ``zero_init`` sets γ=0 (Goyal et al. 2017: zero-init the last BN of each residual branch).
  """
  return nn.BatchNorm(momentum=momentum, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                      axis_name=axis_name, scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                      name=name)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, C] -> [B, C]."""
  return jnp.mean(x, axis=(1, 2))


def stride_key(stride: int) -> str:
  """Feature-pyramid name of a map with output stride ``stride``: C_k has stride 2**k (FPN, Lin et al. 2017)."""
  return f"C{int(round(math.log2(stride)))}"


def classifier(num_classes: int, *, dtype: Dtype, param_dtype: Dtype, name: str = "head",
               zero_init: bool = False) -> nn.Dense:
  init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype, kernel_init=init, name=name)


max_pool_3x3_s2 = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
