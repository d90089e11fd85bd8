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


max_pool_3x3_s2 = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
  """PyTorch adaptive-pool bins: [floor(i*size/out), ceil((i+1)*size/out)) — every bin non-empty."""
  return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive_pool(x: jnp.ndarray, out_hw: int | tuple[int, int], reduce) -> jnp.ndarray:
  oh, ow = (out_hw, out_hw) if isinstance(out_hw, int) else out_hw
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:  # uniform bins: one reshape-reduce
    return reduce(x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[3]), axis=(2, 4))
  rows = [jnp.stack([reduce(x[:, h0:h1, w0:w1, :], axis=(1, 2)) for (w0, w1) in _adaptive_bins(w, ow)], axis=1)
          for (h0, h1) in _adaptive_bins(h, oh)]
  return jnp.stack(rows, axis=1)


def adaptive_avg_pool(x: jnp.ndarray, out_hw: int | tuple[int, int]) -> jnp.ndarray:
  """``torch.nn.AdaptiveAvgPool2d`` for ``[B, H, W, C]`` (bins may overlap; works when H < out)."""
  return _adaptive_pool(x, out_hw, jnp.mean)


def adaptive_max_pool(x: jnp.ndarray, out_hw: int | tuple[int, int]) -> jnp.ndarray:
  """``torch.nn.AdaptiveMaxPool2d`` for ``[B, H, W, C]``."""
  return _adaptive_pool(x, out_hw, jnp.max)


def max_pool_ceil(x: jnp.ndarray, window: int, stride: int, padding: int = 0) -> jnp.ndarray:
  """Max pool with PyTorch's ``ceil_mode=True`` output size (extra right/bottom padding with -inf)."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * padding - window) // stride) + 1
    if (out - 1) * stride >= size + padding:  # last window must start inside the input or left padding
      out -= 1
    pads.append((padding, (out - 1) * stride + window - size - padding))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """ShuffleNet channel shuffle (Zhang et al. 2018, §3.1): reshape C -> (g, C/g), transpose, flatten.

  Channel ``i * (C/g) + j`` moves to ``j * g + i``. It is also the IGC permutation P (Zhang et al. 2017, §3.1) with
  ``groups`` = the number of primary partitions; ``channel_shuffle(channel_shuffle(x, g), C/g)`` is ``x``.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h, w, groups, c // groups).swapaxes(3, 4).reshape(b, h, w, c)


def local_response_norm(x: jnp.ndarray, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0) -> jnp.ndarray:
  """Cross-channel LRN (Krizhevsky et al. 2012, §3.3), PyTorch convention (alpha divided by ``size``)."""
  sq = jnp.square(x.astype(jnp.float32))
  half = size // 2
  sq = jnp.pad(sq, [(0, 0)] * 3 + [(half, size - 1 - half)])
  window = sum(sq[..., i:i + x.shape[-1]] for i in range(size))
  return (x / jnp.power(k + alpha / size * window, beta).astype(x.dtype)).astype(x.dtype)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> activation (``act=None`` for none)."""
  features: int
  kernel: Any = 3
  strides: int = 1
  padding: Any = None
  dilation: int = 1
  groups: int = 1
  act: Any = nn.relu
  bn_epsilon: float = 1e-5
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(self.features, self.kernel, self.strides, padding=self.padding, dilation=self.dilation,
             groups=self.groups, name="conv", **kw)(x)
    x = batch_norm(axis_name=self.bn_axis_name, epsilon=self.bn_epsilon, zero_init=self.zero_init, name="bn",
                   **kw)(x, use_running_average=not train)
    return self.act(x) if self.act is not None else x


def head(num_classes: int, *, dtype: Dtype, param_dtype: Dtype, maxout_pieces: int = 0, name: str = "head",
         kernel_init=nn.initializers.lecun_normal()):
  """Linear classifier, or a maxout head (Dense to ``pieces * num_classes`` then channel max) when pieces > 1."""
  if maxout_pieces and maxout_pieces > 1:
    from research.layers.maxout import MaxoutDense  # local import: maxout imports this module
    return MaxoutDense(num_classes, maxout_pieces, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                       name=name)
  return nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, name=name)
