"""TCC embedding network (Dwibedi et al. 2019, §4 "Encoder" / "Embedder"): a per-frame VGG-like CNN from scratch
giving a spatial feature map, then an embedder that stacks the map of a frame with those of its ``k - 1``
preceding context frames, applies 3-D convolutions, 3-D global max pooling and fully connected layers to give one
embedding per frame.

``TCCNet(...)(frames [B, T, H, W, 3], train=..., steps=None) -> embeddings [B, S, D]`` with ``S = T`` (every
frame) or ``S = steps.shape[1]`` (the frames ``steps`` [B, S], e.g. randomly sampled ones). Context frame ``j``
of step ``s`` is frame ``max(s - (k - 1 - j) * context_stride, 0)`` (a clip's first frames repeat frame 0). The
paper uses ResNet-50 conv4 or a VGG-M-like encoder at 224 px, two 3-D convolutions of 512 channels and FCs to a
128-d embedding; the defaults here are narrow for CPU (widths are arguments).

Deviation (``coord_channels=True``, the default): two input channels with the pixel coordinates (CoordConv).
Global max pooling makes the embedding nearly translation invariant, but the synthetic ``shapes_video`` actions
(lift, jump forward, ...) are largely WHERE the actor is; with coordinates the pooled features can encode it.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import kaiming_normal_fan_in


def coordinate_channels(shape: tuple[int, int, int], dtype=jnp.float32) -> jnp.ndarray:
  """[N, H, W, 2]: pixel-centre (x, y) scaled to [-1, 1] (CoordConv inputs)."""
  n, h, w = shape
  ys = (jnp.arange(h, dtype=dtype) + 0.5) / h * 2 - 1
  xs = (jnp.arange(w, dtype=dtype) + 0.5) / w * 2 - 1
  grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)
  return jnp.broadcast_to(grid, (n, h, w, 2))


class FrameEncoder(nn.Module):
  """VGG-like: per stage ``convs_per_stage`` 3x3 conv + GroupNorm + ReLU, then 2x2 max pooling (not after the last
  stage). x [N, H, W, C] -> [N, H / 2^(stages-1), W / 2^(stages-1), widths[-1]]."""
  widths: Sequence[int] = (16, 32, 32)
  convs_per_stage: int = 1
  groups: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for s, width in enumerate(self.widths):
      for _ in range(self.convs_per_stage):
        x = nn.Conv(width, (3, 3), padding="SAME", kernel_init=kaiming_normal_fan_in, dtype=self.dtype)(x)
        x = nn.GroupNorm(num_groups=min(self.groups, width), dtype=self.dtype)(x)
        x = nn.relu(x)
      if s < len(self.widths) - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


class Embedder(nn.Module):
  """§4 embedder: [N, k, h, w, C] -> 3x3x3 3-D convs (+ GroupNorm, ReLU), 3-D global max pool, FCs -> [N, D]."""
  conv_widths: Sequence[int] = (32,)
  fc_widths: Sequence[int] = (64,)
  embedding_dim: int = 32
  groups: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for width in self.conv_widths:
      x = nn.Conv(width, (3, 3, 3), padding="SAME", kernel_init=kaiming_normal_fan_in, dtype=self.dtype)(x)
      x = nn.GroupNorm(num_groups=min(self.groups, width), dtype=self.dtype)(x)
      x = nn.relu(x)
    x = jnp.max(x, axis=(1, 2, 3))  # 3-D global max pooling over (context, height, width)
    for width in self.fc_widths:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.embedding_dim, dtype=jnp.float32)(x).astype(jnp.float32)


class TCCNet(nn.Module):
  """Frame encoder + temporal-context embedder (§4); ``num_context`` = k (the paper's default 2)."""
  encoder_widths: Sequence[int] = (16, 32, 32)
  convs_per_stage: int = 1
  conv3d_widths: Sequence[int] = (32,)
  fc_widths: Sequence[int] = (64,)
  embedding_dim: int = 32
  num_context: int = 2
  context_stride: int = 1
  coord_channels: bool = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.num_context < 1 or self.context_stride < 1:
      raise ValueError(f"TCCNet: num_context={self.num_context} and context_stride={self.context_stride} must be "
                       f">= 1")
    self.encoder = FrameEncoder(self.encoder_widths, self.convs_per_stage, dtype=self.dtype)
    self.embedder = Embedder(self.conv3d_widths, self.fc_widths, self.embedding_dim, dtype=self.dtype)

  def context_indices(self, steps: jnp.ndarray) -> jnp.ndarray:
    """int32 [B, S, k]: the frames each step's embedding sees (its ``k - 1`` predecessors, then itself)."""
    offsets = (jnp.arange(self.num_context) - (self.num_context - 1)) * self.context_stride
    return jnp.maximum(steps[..., None] + offsets, 0).astype(jnp.int32)

  def __call__(self, frames: jnp.ndarray, *, train: bool = False, steps: jnp.ndarray | None = None) -> jnp.ndarray:
    """frames [B, T, H, W, C] (normalised floats); steps [B, S] int (default all T frames) -> [B, S, D]."""
    del train  # no dropout or batch statistics: train and eval apply are the same function
    if frames.ndim != 5:
      raise ValueError(f"TCCNet expects frames [B, T, H, W, C], got shape {frames.shape}")
    b, t = frames.shape[:2]
    if steps is None:
      steps = jnp.broadcast_to(jnp.arange(t), (b, t))
    if steps.ndim != 2 or steps.shape[0] != b:
      raise ValueError(f"steps must be [B, S] = [{b}, S] frame indices, got shape {steps.shape}")
    x = frames.reshape((b * t,) + frames.shape[2:]).astype(self.dtype)
    if self.coord_channels:
      x = jnp.concatenate([x, coordinate_channels(x.shape[:3], x.dtype)], axis=-1)
    feats = self.encoder(x)
    feats = feats.reshape((b, t) + feats.shape[1:])  # [B, T, h, w, C]
    idx = self.context_indices(jnp.clip(steps, 0, t - 1))  # [B, S, k]
    ctx = jnp.take_along_axis(feats, idx.reshape(b, -1)[:, :, None, None, None], axis=1)
    ctx = ctx.reshape((b * steps.shape[1], self.num_context) + feats.shape[2:])  # [B*S, k, h, w, C]
    return self.embedder(ctx).reshape(b, steps.shape[1], -1)
