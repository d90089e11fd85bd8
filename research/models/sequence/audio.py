"""End-to-end audio tagging from raw waveforms: a 1-D ResNet front end and a 2-D ResNet with multi-level
prediction and attention pooling (the raw-waveform Audio Set classification system with mix-training, §2, Fig. 1).

:class:`WaveResNet` (registered as ``"wave_resnet"``, family ``"sequence"``):

1. **1-D ResNet** on the waveform ``x`` [B, T]: a strided stem conv (``stem_kernel``, stride ``stem_stride``) and
   1-D basic residual blocks with strides ``front_strides`` turn samples into a frame-level map [B, T', F]
   (``T' = T / (stem_stride * prod(front_strides))``, ``F = front_features``): a learned filterbank.
2. The map is transposed ``C x 1 x T -> 1 x C x T`` (Fig. 1): here ``[B, T', F] -> [B, T', F, 1]``, an image over
   (time, feature) with one channel.
3. **2-D ResNet**: a 3x3 stem and stages of 2-D basic blocks with channels ``channels`` and strides
   ``stage_strides`` (over time and feature).
4. **Multi-level prediction with attention** (Fig. 1; the multi-level attention model of Kong / Yu et al.): after
   each of the last ``levels`` stages the map is averaged over the feature axis ``[B, T_l, D_l]``; a per-frame
   classifier ``cla = sigmoid(W_c h)`` and an attention ``att = softmax_t(W_a h)`` give the clip probability
   ``p_l = sum_t att * cla`` [B, C]. The output is the mean of the levels' probabilities, ``mean_l p_l`` [B, C]
   in [0, 1] (float32): multi-label, one independent sigmoid per class.

BatchNorm statistics live in ``batch_stats``; ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import batch_norm, conv, kaiming_normal_fan_out
from research.models.registry import register

Dtype = Any


def _conv1d(features: int, kernel: int, strides: int, *, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Conv:
  """A 1-D convolution over [B, T, C] with symmetric 'same'-style padding (k - 1) // 2 and no bias."""
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel,), strides=(strides,), padding=[(pad, kernel - 1 - pad)], use_bias=False,
                 dtype=dtype, param_dtype=param_dtype, kernel_init=kaiming_normal_fan_out, name=name)


class BasicBlock1D(nn.Module):
  """Two 1-D convs (kernel ``kernel``, the first strided) with BN; projection shortcut when shapes change."""
  features: int
  strides: int = 1
  kernel: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = _conv1d(self.features, self.kernel, self.strides, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(name="bn1", **kw)(y, use_running_average=not train))
    y = _conv1d(self.features, self.kernel, 1, name="conv2", **kw)(y)
    y = batch_norm(zero_init=True, name="bn2", **kw)(y, use_running_average=not train)
    if x.shape != y.shape:
      x = _conv1d(self.features, 1, self.strides, name="downsample_conv", **kw)(x)
      x = batch_norm(name="downsample_bn", **kw)(x, use_running_average=not train)
    return nn.relu(x + y)


class BasicBlock2D(nn.Module):
  """Two 3x3 convs with BN (ResNet-18/34 block); projection shortcut when shapes change."""
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = conv(self.features, 3, self.strides, name="conv1", **kw)(x)
    y = nn.relu(batch_norm(name="bn1", **kw)(y, use_running_average=not train))
    y = conv(self.features, 3, 1, name="conv2", **kw)(y)
    y = batch_norm(zero_init=True, name="bn2", **kw)(y, use_running_average=not train)
    if x.shape != y.shape:
      x = conv(self.features, 1, self.strides, name="downsample_conv", **kw)(x)
      x = batch_norm(name="downsample_bn", **kw)(x, use_running_average=not train)
    return nn.relu(x + y)


class AttentionPooling(nn.Module):
  """Frame features ``h`` [B, T, D] -> clip probabilities ``sum_t softmax_t(W_a h) * sigmoid(W_c h)`` [B, C]."""
  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cla = nn.sigmoid(nn.Dense(self.num_classes, name="cla", **kw)(h).astype(jnp.float32))
    att = nn.softmax(nn.Dense(self.num_classes, name="att", **kw)(h).astype(jnp.float32), axis=1)
    return jnp.sum(att * cla, axis=1)


class WaveResNet(nn.Module):
  """Raw waveform [B, T] -> multi-label probabilities [B, num_classes] (module docstring, steps 1-4)."""
  num_classes: int
  stem_features: int = 8
  stem_kernel: int = 11
  stem_stride: int = 4
  front_features: int = 16
  front_strides: Sequence[int] = (4, 4, 2)
  channels: Sequence[int] = (8, 16)
  stage_strides: Sequence[int] = (2, 2)
  levels: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if len(self.channels) != len(self.stage_strides):
      raise ValueError(f"channels {tuple(self.channels)} and stage_strides {tuple(self.stage_strides)} need one "
                       f"entry per 2-D stage")
    if not 1 <= self.levels <= len(self.channels):
      raise ValueError(f"levels={self.levels} must be in 1..{len(self.channels)} (the number of 2-D stages)")
    if x.ndim != 2:
      raise ValueError(f"WaveResNet expects raw waveforms [B, T], got shape {x.shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Step 1: the 1-D ResNet front end, samples -> frames [B, T', F].
    h = x.astype(self.dtype)[..., None]
    h = _conv1d(self.stem_features, self.stem_kernel, self.stem_stride, name="front_stem", **kw)(h)
    h = nn.relu(batch_norm(name="front_stem_bn", **kw)(h, use_running_average=not train))
    for i, s in enumerate(self.front_strides):
      last = i == len(self.front_strides) - 1
      feats = self.front_features if last else max(self.stem_features, self.front_features // 2)
      h = BasicBlock1D(feats, strides=s, name=f"front_block{i + 1}", **kw)(h, train=train)
    # Step 2: C x 1 x T -> 1 x C x T: an image over (time, feature) with one channel [B, T', F, 1].
    h = h[..., None]
    # Steps 3-4: the 2-D ResNet with multi-level attention.
    h = conv(self.channels[0], 3, 1, name="stem", **kw)(h)
    h = nn.relu(batch_norm(name="stem_bn", **kw)(h, use_running_average=not train))
    probs = []
    first_level = len(self.channels) - self.levels
    for i, (c, s) in enumerate(zip(self.channels, self.stage_strides)):
      h = BasicBlock2D(c, strides=s, name=f"stage{i + 1}", **kw)(h, train=train)
      if i >= first_level:  # step 4: one prediction per level
        frame = jnp.mean(h, axis=2)  # [B, T_l, D_l]: average over the feature axis
        probs.append(AttentionPooling(self.num_classes, name=f"attention{i + 1}", **kw)(frame))
    return jnp.mean(jnp.stack(probs), axis=0).astype(jnp.float32)


@register("wave_resnet", family="sequence")
def wave_resnet(*, num_classes: int, **kw) -> WaveResNet:
  """The 1-D + 2-D ResNet with multi-level attention on raw waveforms (module docstring)."""
  return WaveResNet(num_classes=num_classes, **kw)


__all__ = ["AttentionPooling", "BasicBlock1D", "BasicBlock2D", "WaveResNet", "wave_resnet"]
