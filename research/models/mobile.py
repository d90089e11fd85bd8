"""Compact ImageNet nets: Xception, MobileNet v1, ShuffleNet v1, SqueezeNet 1.0/1.1.

Backbone API as ``research.models.resnet`` (``features_only`` -> ``stem``, ``stage{i}``, ``C{k}``, ``pooled``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import (ConvBN, batch_norm, channel_shuffle, global_avg_pool, head,
                                    max_pool_ceil, stride_key)
from research.models.registry import register

Dtype = Any


# ----------------------------------------------------------------------------------------------- Xception


class SeparableConv(nn.Module):
  """Depthwise 3x3 conv followed by pointwise 1x1 conv, no bias, no non-linearity between (Keras SeparableConv2D)."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(x.shape[-1], (3, 3), padding="SAME", feature_group_count=x.shape[-1], use_bias=False,
                name="depthwise", **kw)(x)
    return nn.Conv(self.features, (1, 1), use_bias=False, name="pointwise", **kw)(x)


class Xception(nn.Module):
  """Xception (Chollet, CVPR 2017, §4 and Fig. 5): entry flow, 8x middle flow, exit flow; 299x299 input.

  Follows Keras ``applications.Xception`` (22,855,952 trainable params with 1000 classes). Smallest input 71.
  """
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda name: batch_norm(axis_name=self.bn_axis_name, epsilon=1e-3, momentum=0.99, name=name, **kw)
    ura = not train
    feats = {}
    x = nn.Conv(32, (3, 3), (2, 2), padding="VALID", use_bias=False, name="block1_conv1", **kw)(x.astype(self.dtype))
    x = nn.relu(bn("block1_conv1_bn")(x, use_running_average=ura))
    x = nn.Conv(64, (3, 3), padding="VALID", use_bias=False, name="block1_conv2", **kw)(x)
    x = nn.relu(bn("block1_conv2_bn")(x, use_running_average=ura))
    feats["stem"] = feats["stage1"] = feats["C1"] = x
    stride = 2

    def down_block(x, idx, widths, first_relu=True):
      res = nn.Conv(widths[-1], (1, 1), (2, 2), padding="SAME", use_bias=False, name=f"block{idx}_shortcut", **kw)(x)
      res = bn(f"block{idx}_shortcut_bn")(res, use_running_average=ura)
      for j, w in enumerate(widths):
        if j > 0 or first_relu:
          x = nn.relu(x)
        x = SeparableConv(w, name=f"block{idx}_sepconv{j + 1}", **kw)(x)
        x = bn(f"block{idx}_sepconv{j + 1}_bn")(x, use_running_average=ura)
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME") + res

    # Entry flow.
    for idx, w in ((2, 128), (3, 256), (4, 728)):
      x = down_block(x, idx, (w, w), first_relu=idx != 2)
      stride *= 2
      feats[f"stage{idx}"] = feats[stride_key(stride)] = x
    # Middle flow.
    for idx in range(5, 13):
      res = x
      for j in range(3):
        x = SeparableConv(728, name=f"block{idx}_sepconv{j + 1}", **kw)(nn.relu(x))
        x = bn(f"block{idx}_sepconv{j + 1}_bn")(x, use_running_average=ura)
      x = x + res
    # Exit flow.
    x = down_block(x, 13, (728, 1024))
    for j, w in enumerate((1536, 2048)):
      x = SeparableConv(w, name=f"block14_sepconv{j + 1}", **kw)(x)
      x = nn.relu(bn(f"block14_sepconv{j + 1}_bn")(x, use_running_average=ura))
    stride *= 2
    feats["stage5"] = feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, name="predictions", **kw)(pooled).astype(
        jnp.float32)


# --------------------------------------------------------------------------------------------- MobileNet v1

# (pointwise output width, depthwise stride) of the 13 depthwise-separable layers (Table 1).
_MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
  """MobileNet v1 (Howard et al. 2017, §3, Table 1): depthwise separable convs with BN-ReLU; width multiplier α.

  The resolution multiplier ρ is the input size (224ρ); any input >= 32 works. The classifier is a 1x1 conv
  (Dense) with bias after global pooling and dropout, as in Keras: α=1 has 4,231,976 params (1000 classes).
  """
  alpha: float = 1.0
  num_classes: int = 1000
  dropout_rate: float = 1e-3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    feats = {}
    x = ConvBN(int(32 * self.alpha), 3, 2, name="conv1", **kw)(x.astype(self.dtype), train=train)
    feats["stem"] = x
    stride = 2
    for i, (w, s) in enumerate(_MOBILENET_V1):
      c = x.shape[-1]
      if s == 2:
        feats[stride_key(stride)] = x
      x = ConvBN(c, 3, s, groups=c, name=f"conv_dw_{i + 1}", **kw)(x, train=train)
      x = ConvBN(int(w * self.alpha), 1, name=f"conv_pw_{i + 1}", **kw)(x, train=train)
      stride *= s
    feats[stride_key(stride)] = x
    for k in range(1, 6):
      feats[f"stage{k}"] = feats[f"C{k}"]
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, name="conv_preds", dtype=self.dtype,
                param_dtype=self.param_dtype)(y).astype(jnp.float32)


register("mobilenet_v1")(lambda **kw: MobileNetV1(**{"alpha": 1.0, **kw}))
register("mobilenet_v1_050")(lambda **kw: MobileNetV1(**{"alpha": 0.5, **kw}))


# -------------------------------------------------------------------------------------------- ShuffleNet v1

_SHUFFLENET_WIDTHS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                      8: (384, 768, 1536)}


class ShuffleUnit(nn.Module):
  """ShuffleNet unit (Zhang et al., CVPR 2018, §3.2, Fig. 2b/c): 1x1 GConv-BN-ReLU, shuffle, 3x3 DWConv-BN,
  1x1 GConv-BN; add (stride 1) or concat with a 3x3/2 avg-pooled shortcut (stride 2); ReLU."""
  features: int
  strides: int
  groups: int
  first_group: bool = True  # False: the first 1x1 is dense (stage 2's first unit, 24 input channels)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    mid = self.features // 4
    out = self.features - x.shape[-1] if self.strides == 2 else self.features
    g1 = self.groups if self.first_group else 1
    y = ConvBN(mid, 1, groups=g1, name="gconv1", **kw)(x, train=train)
    if g1 > 1:
      y = channel_shuffle(y, g1)
    y = ConvBN(mid, 3, self.strides, groups=mid, act=None, name="dwconv", **kw)(y, train=train)
    y = ConvBN(out, 1, groups=self.groups, act=None, name="gconv2", **kw)(y, train=train)
    if self.strides == 2:
      short = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      return nn.relu(jnp.concatenate([short, y], axis=-1))
    return nn.relu(x + y)


class ShuffleNetV1(nn.Module):
  """ShuffleNet v1 1x (Zhang et al., CVPR 2018, Table 1): 3x3/2 conv 24, max pool, stages of 4/8/4 units."""
  groups: int = 3
  scale: float = 1.0
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    feats = {}
    x = ConvBN(24, 3, 2, name="conv1", **kw)(x.astype(self.dtype), train=train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats["stem"] = feats["stage1"] = feats["C2"] = x
    stride = 4
    for i, (n, w) in enumerate(zip((4, 8, 4), _SHUFFLENET_WIDTHS[self.groups])):
      w = int(w * self.scale)
      stride *= 2
      for j in range(n):
        x = ShuffleUnit(w, 2 if j == 0 else 1, self.groups, first_group=not (i == 0 and j == 0),
                        name=f"stage{i + 2}_unit{j + 1}", **kw)(x, train=train)
      feats[f"stage{i + 2}"] = feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, name="fc", dtype=self.dtype,
                param_dtype=self.param_dtype)(pooled).astype(jnp.float32)


for _g in (1, 2, 3, 4, 8):
  register(f"shufflenet_v1_g{_g}")(lambda _g=_g, **kw: ShuffleNetV1(groups=_g, **kw))


# ----------------------------------------------------------------------------------------------- SqueezeNet


class Fire(nn.Module):
  """Fire module (Iandola et al. 2016, §3.2): squeeze 1x1 -> ReLU -> [expand 1x1 | expand 3x3] -> ReLU."""
  squeeze: int
  expand1x1: int
  expand3x3: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    s = nn.relu(nn.Conv(self.squeeze, (1, 1), name="squeeze", **kw)(x))
    return jnp.concatenate([nn.relu(nn.Conv(self.expand1x1, (1, 1), name="expand1x1", **kw)(s)),
                            nn.relu(nn.Conv(self.expand3x3, (3, 3), padding=((1, 1), (1, 1)), name="expand3x3",
                                            **kw)(s))], axis=-1)


_SQUEEZE_CFG = {
    # (stem kernel, stem width, layout); "M" = 3x3/2 ceil-mode max pool; tuples are Fire(s, e1, e3).
    "1_0": (7, 96, ["M", (16, 64, 64), (16, 64, 64), (32, 128, 128), "M", (32, 128, 128), (48, 192, 192),
                    (48, 192, 192), (64, 256, 256), "M", (64, 256, 256)]),
    "1_1": (3, 64, ["M", (16, 64, 64), (16, 64, 64), "M", (32, 128, 128), (32, 128, 128), "M", (48, 192, 192),
                    (48, 192, 192), (64, 256, 256), (64, 256, 256)]),
}


class SqueezeNet(nn.Module):
  """SqueezeNet (Iandola et al. 2016, §3.3, Table 1; v1.1 from the authors' repo), torchvision layout; no BN."""
  version: str = "1_0"
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm
  features_only: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    k, w, layout = _SQUEEZE_CFG[self.version]
    feats = {}
    x = nn.relu(nn.Conv(w, (k, k), strides=(2, 2), padding="VALID", name="conv1", **kw)(x.astype(self.dtype)))
    feats["stem"] = x
    stride, stage, fire = 2, 1, 2
    for item in layout:
      if item == "M":
        feats[f"stage{stage}"] = feats[stride_key(stride)] = x
        x = max_pool_ceil(x, 3, 2)
        stride, stage = stride * 2, stage + 1
      else:
        x = Fire(*item, name=f"fire{fire}", **kw)(x)
        fire += 1
    feats[f"stage{stage}"] = feats[stride_key(stride)] = x
    if self.features_only:
      feats["pooled"] = global_avg_pool(x)
      return feats
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), name="conv10", **kw)(x))
    return global_avg_pool(x).astype(jnp.float32)


register("squeezenet1_0")(lambda **kw: SqueezeNet(version="1_0", **kw))
register("squeezenet1_1")(lambda **kw: SqueezeNet(version="1_1", **kw))


register("xception")(lambda **kw: Xception(**kw))
