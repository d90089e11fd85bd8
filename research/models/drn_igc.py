"""Dilated Residual Networks DRN-C (Yu, Koltun & Funkhouser, CVPR 2017, §4, Fig. 5c) and IGC nets (Zhang et al.,
ICCV 2017, §4.1). DRN-A-50 lives in ``research.models.resnet`` (``drn_a_50``).

Backbone API as ``research.models.resnet``; DRN keeps output stride 8 (levels 5-8 are dilated, so ``C3`` is the
last level's output); ``stage{i}`` is level i (DRN) or stage i (IGC).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import ConvBN, batch_norm, conv, global_avg_pool, head, stride_key
from research.layers.igc import IGCBlock
from research.models.registry import register, register_pattern

Dtype = Any


class DRNBasicBlock(nn.Module):
  """Residual basic block with per-conv dilations (fyu/drn ``BasicBlock``); projection shortcut on shape change."""
  features: int
  strides: int = 1
  dilation: tuple[int, int] = (1, 1)
  residual: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda name: batch_norm(axis_name=self.bn_axis_name, name=name, **kw)
    y = conv(self.features, 3, self.strides, dilation=self.dilation[0], name="conv1", **kw)(x)
    y = nn.relu(bn("bn1")(y, use_running_average=not train))
    y = conv(self.features, 3, dilation=self.dilation[1], name="conv2", **kw)(y)
    y = bn("bn2")(y, use_running_average=not train)
    if self.residual:
      short = x
      if self.strides != 1 or x.shape[-1] != self.features:
        short = conv(self.features, 1, self.strides, name="downsample_conv", **kw)(x)
        short = bn("downsample_bn")(short, use_running_average=not train)
      y = y + short
    return nn.relu(y)


class DRNC(nn.Module):
  """DRN-C (fyu/drn ``arch='C'``): 7x7 conv, levels 1-2 residual blocks replacing the max pool, levels 3-6
  residual (5/6 dilated 2/4), levels 7-8 basic blocks *without* residual connections, dilation 2 then 1
  (degridding, §4). Classifier: 1x1 conv (= Dense after global pooling)."""
  layers: Sequence[int]
  channels: Sequence[int] = (16, 32, 64, 128, 256, 512, 512, 512)
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    ch, L = self.channels, self.layers
    feats = {}
    x = ConvBN(ch[0], 7, name="layer0", **kw)(x.astype(self.dtype), train=train)
    feats["stem"] = x
    stride = 1
    # (level, stride, dilation, residual)
    plan = [(1, 1, 1, True), (2, 2, 1, True), (3, 2, 1, True), (4, 2, 1, True), (5, 1, 2, True),
            (6, 1, 4, True), (7, 1, 2, False), (8, 1, 1, False)]
    for level, s, d, residual in plan:
      n, w = L[level - 1], ch[level - 1]
      for j in range(n):
        x = DRNBasicBlock(w, s if j == 0 else 1, (d, d), residual, name=f"layer{level}_{j}", **kw)(x, train=train)
      stride *= s
      feats[f"stage{level}"] = feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, name="fc", dtype=self.dtype,
                param_dtype=self.param_dtype)(pooled).astype(jnp.float32)


register("drn_c_26")(lambda **kw: DRNC(layers=(1, 1, 2, 2, 2, 2, 1, 1), **kw))
register("drn_c_42")(lambda **kw: DRNC(layers=(1, 1, 3, 4, 6, 3, 1, 1), **kw))


class IGCResidualBlock(nn.Module):
  """ResNet basic block with both 3x3 convs replaced by IGC blocks: IGC-BN-ReLU-IGC-BN, plus the identity or, when
  the shape changes, a 1x1 projection grouped into L partitions + BN (the authors' ``resnet_igc``); then ReLU."""
  L: int
  M: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda name: batch_norm(axis_name=self.bn_axis_name, name=name, **kw)
    width = self.L * self.M
    y = IGCBlock(self.L, self.M, strides=self.strides, name="igc1", **kw)(x)
    y = nn.relu(bn("bn1")(y, use_running_average=not train))
    y = bn("bn2")(IGCBlock(self.L, self.M, name="igc2", **kw)(y), use_running_average=not train)
    short = x
    if self.strides != 1 or x.shape[-1] != width:
      short = bn("shortcut_bn")(conv(width, 1, self.strides, groups=self.L, name="shortcut_conv", **kw)(x),
                                use_running_average=not train)
    return nn.relu(y + short)


class IGCNet(nn.Module):
  """IGC-L{L}M{M} CIFAR network (§4.1; the authors' ``resnet_igc``): 3x3 stem conv to L*M channels, three stages of
  (depth-2)/6 IGC residual blocks, stride 2 at stages 2 and 3, global average pool, FC. L stays fixed and M doubles
  per stage (widths L*M, 2L*M, 4L*M). At depth 20, L=16 M=32 and L=32 M=26 have 17.7M and 24.1M parameters, the
  paper's CIFAR-10 figures."""
  L: int = 24
  M: int = 2
  depth: int = 20
  num_classes: int = 10
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f"IGC net depth must be 6n+2 with n >= 1, got {self.depth}")
    n = (self.depth - 2) // 6
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    feats = {}
    x = ConvBN(self.L * self.M, 3, name="stem", **kw)(x.astype(self.dtype), train=train)
    feats["stem"] = x
    stride = 1
    for i in range(3):
      for j in range(n):
        s = 2 if (i > 0 and j == 0) else 1
        x = IGCResidualBlock(self.L, self.M * 2 ** i, s, name=f"stage{i + 1}_block{j}", **kw)(x, train=train)
      stride *= 2 if i > 0 else 1
      feats[f"stage{i + 1}"] = feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, dtype=self.dtype,
                param_dtype=self.param_dtype)(pooled).astype(jnp.float32)


@register_pattern(r"igc_l(\d+)m(\d+)", example="igc_l{L}m{M} (e.g. igc_l24m2, igc_l4m8)")
def _igc_from_name(match, **kw) -> IGCNet:
  return IGCNet(L=int(match.group(1)), M=int(match.group(2)), **kw)


register("igc_l24m2")(lambda **kw: IGCNet(L=24, M=2, **kw))
register("igc_l16m32")(lambda **kw: IGCNet(L=16, M=32, **kw))
register("igc_l32m26")(lambda **kw: IGCNet(L=32, M=26, **kw))
