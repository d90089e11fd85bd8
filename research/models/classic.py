"""Plain conv nets: AlexNet, ZFNet, VGG and SPP-net (ZF-5 + spatial pyramid pooling).

Same backbone API as ``research.models.resnet``: ``__call__(x, *, train)`` -> float32 logits, ``features_only``
returns ``stem``, ``stage{i}``/``C{k}`` (the activation after the i-th max pool, output stride 2**k) and
``pooled`` (the flattened input of the first FC layer). Dropout in the FC head uses the ``'dropout'`` rng.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import (adaptive_avg_pool, batch_norm, head, local_response_norm, stride_key)
from research.layers.spp import spatial_pyramid_pool
from research.models.registry import register

Dtype = Any
_fc_init = nn.initializers.normal(0.01)


def _conv(features, kernel, strides=1, padding=0, *, kw, name=None, use_bias=True):
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=[(padding, padding)] * 2,
                 use_bias=use_bias, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                 name=name, **kw)


class _FCHead(nn.Module):
  """Dropout-FC-ReLU, Dropout-FC-ReLU, FC (AlexNet/VGG ordering), or without the dropouts before (``vgg``)."""
  hidden: int
  num_classes: int
  dropout_rate: float = 0.5
  vgg_order: bool = False
  maxout_pieces: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    for i in (6, 7):
      if not self.vgg_order:
        x = drop(x)
      x = nn.relu(nn.Dense(self.hidden, kernel_init=_fc_init, name=f"fc{i}", **kw)(x))
      if self.vgg_order:
        x = drop(x)
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, kernel_init=_fc_init, name="fc8", **kw)(x)


class AlexNet(nn.Module):
  """AlexNet (Krizhevsky et al., NIPS 2012, §3.5), torchvision's single-tower variant (64-192-384-256-256, no LRN)."""
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm; accepted for API uniformity
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2))
    feats = {}
    x = nn.relu(_conv(64, 11, 4, 2, kw=kw, name="conv1")(x.astype(self.dtype)))
    feats["stem"] = x
    x = pool(x); feats["stage1"] = feats["C3"] = x
    x = pool(nn.relu(_conv(192, 5, 1, 2, kw=kw, name="conv2")(x))); feats["stage2"] = feats["C4"] = x
    x = nn.relu(_conv(384, 3, 1, 1, kw=kw, name="conv3")(x))
    x = nn.relu(_conv(256, 3, 1, 1, kw=kw, name="conv4")(x))
    x = pool(nn.relu(_conv(256, 3, 1, 1, kw=kw, name="conv5")(x))); feats["stage3"] = feats["C5"] = x
    pooled = adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return _FCHead(4096, self.num_classes, self.dropout_rate, maxout_pieces=self.maxout_pieces, name="classifier",
                   **kw)(pooled, train=train).astype(jnp.float32)


class ZFNet(nn.Module):
  """ZFNet (Zeiler & Fergus, ECCV 2014, §4 and Fig. 3): 7x7/2 conv1, widths 96-256-384-384-256, FC 4096-4096.

  Layer sizes at 224: 110 -> pool 55 -> 26 -> pool 13 -> 13 -> 13 -> pool 6 (6x6x256 into fc6); the
  local contrast normalisation after conv1/conv2 is cross-channel LRN. ``conv_widths`` scales the convs
  (SPP-net's ZF-5 is this network).
  """
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm
  features_only: bool = False
  maxout_pieces: int = 0
  spp_levels: Sequence[int] | None = None  # set -> SPP-net head instead of the fixed 6x6 pool

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pool = lambda y, p: nn.max_pool(y, (3, 3), strides=(2, 2), padding=[(p, p), (p, p)])
    feats = {}
    x = nn.relu(_conv(96, 7, 2, 1, kw=kw, name="conv1")(x.astype(self.dtype)))
    x = local_response_norm(x); feats["stem"] = x
    x = pool(x, 1); feats["stage1"] = feats["C2"] = x
    x = local_response_norm(nn.relu(_conv(256, 5, 2, 0, kw=kw, name="conv2")(x)))
    x = pool(x, 1); feats["stage2"] = feats["C4"] = x
    x = nn.relu(_conv(384, 3, 1, 1, kw=kw, name="conv3")(x))
    x = nn.relu(_conv(384, 3, 1, 1, kw=kw, name="conv4")(x))
    x = nn.relu(_conv(256, 3, 1, 1, kw=kw, name="conv5")(x))
    if self.spp_levels is not None:
      feats["stage3"] = feats["C4_conv5"] = x
      pooled = spatial_pyramid_pool(x, tuple(self.spp_levels), "max")
    else:
      x = pool(x, 0) if min(x.shape[1:3]) >= 3 else x
      feats["stage3"] = feats["C5"] = x
      pooled = adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return _FCHead(4096, self.num_classes, self.dropout_rate, maxout_pieces=self.maxout_pieces, name="classifier",
                   **kw)(pooled, train=train).astype(jnp.float32)


_VGG_CFG = {
    "vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4),
}


class VGG(nn.Module):
  """VGG (Simonyan & Zisserman, ICLR 2015, Table 1 configs A/B/D/E); ``batch_norm`` adds BN after each conv."""
  convs_per_stage: Sequence[int]
  batch_norm: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feats = {}
    x = x.astype(self.dtype)
    for i, (n, w) in enumerate(zip(self.convs_per_stage, (64, 128, 256, 512, 512))):
      for j in range(n):
        x = _conv(w, 3, 1, 1, kw=kw, name=f"conv{i + 1}_{j + 1}")(x)
        if self.batch_norm:
          x = batch_norm(axis_name=self.bn_axis_name, name=f"bn{i + 1}_{j + 1}", **kw)(
              x, use_running_average=not train)
        x = nn.relu(x)
        if i == 0 and j == 0:
          feats["stem"] = x
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      feats[f"stage{i + 1}"] = feats[stride_key(2 ** (i + 1))] = x
    pooled = adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return _FCHead(4096, self.num_classes, self.dropout_rate, vgg_order=True, maxout_pieces=self.maxout_pieces,
                   name="classifier", **kw)(pooled, train=train).astype(jnp.float32)


register("alexnet")(lambda **kw: AlexNet(**kw))
register("zfnet")(lambda **kw: ZFNet(**kw))
for _name, _cfg in _VGG_CFG.items():
  register(_name)(lambda _cfg=_cfg, **kw: VGG(convs_per_stage=_cfg, **kw))
  register(f"{_name}_bn")(lambda _cfg=_cfg, **kw: VGG(convs_per_stage=_cfg, batch_norm=True, **kw))


@register("sppnet")
def sppnet(levels: Sequence[int] = (1, 2, 4), **kw) -> ZFNet:
  """SPP-net (He et al., ECCV 2014, §2.3/§3.1): ZF-5 convs + {1,2,4} spatial pyramid max-pool + fc6/fc7; any input size."""
  return ZFNet(spp_levels=tuple(levels), **kw)
