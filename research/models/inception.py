"""GoogLeNet (Inception v1) and Inception v3, with torchvision's layer names and BatchNorm'd convs.

Backbone API as ``research.models.resnet``. With ``aux_logits=True`` and ``train=True`` the call returns
``(logits, aux_logits...)`` (GoogLeNet: ``(logits, aux2, aux1)``; Inception v3: ``(logits, aux)``), as in
torchvision; in eval mode it always returns the main logits only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import ConvBN, adaptive_avg_pool, global_avg_pool, head, max_pool_ceil, stride_key
from research.models.registry import register

Dtype = Any


class _Base(nn.Module):
  def cbr(self, features, kernel, strides=1, padding=0, name=None):
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    p = (padding, padding) if isinstance(padding, int) else padding
    return ConvBN(features, k, strides, padding=[(p[0], p[0]), (p[1], p[1])], bn_epsilon=1e-3,
                  dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name, name=name)


# ---------------------------------------------------------------------------------------------- GoogLeNet


class InceptionV1(_Base):
  """Inception module (Szegedy et al., CVPR 2015, §5, Fig. 2b): 1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1."""
  ch1x1: int
  ch3x3red: int
  ch3x3: int
  ch5x5red: int
  ch5x5: int
  pool_proj: int
  branch3_kernel: int = 5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    b1 = self.cbr(self.ch1x1, 1, name="branch1")(x, train=train)
    b2 = self.cbr(self.ch3x3red, 1, name="branch2_0")(x, train=train)
    b2 = self.cbr(self.ch3x3, 3, padding=1, name="branch2_1")(b2, train=train)
    b3 = self.cbr(self.ch5x5red, 1, name="branch3_0")(x, train=train)
    b3 = self.cbr(self.ch5x5, self.branch3_kernel, padding=self.branch3_kernel // 2, name="branch3_1")(b3, train=train)
    b4 = max_pool_ceil(x, 3, 1, padding=1)
    b4 = self.cbr(self.pool_proj, 1, name="branch4_1")(b4, train=train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAuxV1(_Base):
  """GoogLeNet auxiliary classifier (§5): 5x5/3 avg pool (adaptive 4x4), 1x1 conv 128, FC 1024, dropout 0.7, FC."""
  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.cbr(128, 1, name="conv")(adaptive_avg_pool(x, 4), train=train).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(1024, name="fc1", **kw)(x))
    x = nn.Dropout(0.7, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="fc2", **kw)(x).astype(jnp.float32)


_V1_CFG = [("inception3a", (64, 96, 128, 16, 32, 32)), ("inception3b", (128, 128, 192, 32, 96, 64)), "pool",
           ("inception4a", (192, 96, 208, 16, 48, 64)), ("inception4b", (160, 112, 224, 24, 64, 64)),
           ("inception4c", (128, 128, 256, 24, 64, 64)), ("inception4d", (112, 144, 288, 32, 64, 64)),
           ("inception4e", (256, 160, 320, 32, 128, 128)), "pool",
           ("inception5a", (256, 160, 320, 32, 128, 128)), ("inception5b", (384, 192, 384, 48, 128, 128))]


class GoogLeNet(_Base):
  """GoogLeNet (Szegedy et al., "Going deeper with convolutions", CVPR 2015, Table 1).

  Convs are Conv-BN(eps 1e-3)-ReLU as in torchvision (the paper predates BN and used LRN). The "5x5" branch is a
  5x5 conv as in the paper; ``branch3_kernel=3`` reproduces torchvision's 3x3 (its known deviation, 6,624,904
  params without aux heads). ``aux_logits`` adds the two auxiliary classifiers after 4a and 4d.
  """
  num_classes: int = 1000
  aux_logits: bool = False
  branch3_kernel: int = 5
  dropout_rate: float = 0.2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    feats = {}
    x = self.cbr(64, 7, 2, 3, name="conv1")(x.astype(self.dtype), train=train)
    x = max_pool_ceil(x, 3, 2)
    feats["stem"] = x
    x = self.cbr(64, 1, name="conv2")(x, train=train)
    x = self.cbr(192, 3, padding=1, name="conv3")(x, train=train)
    feats["stage1"] = feats["C2"] = x
    x = max_pool_ceil(x, 3, 2)
    stage, stride, aux = 2, 8, []
    for item in _V1_CFG:
      if item == "pool":
        feats[f"stage{stage}"] = feats[stride_key(stride)] = x
        stage, stride = stage + 1, stride * 2
        x = max_pool_ceil(x, 3, 2) if stage == 3 else max_pool_ceil(x, 2, 2)
        continue
      name, cfg = item
      x = InceptionV1(*cfg, branch3_kernel=self.branch3_kernel, name=name, **kw)(x, train=train)
      if self.aux_logits and train and name in ("inception4a", "inception4d"):
        aux.append(InceptionAuxV1(self.num_classes, name="aux1" if name == "inception4a" else "aux2", **kw)(
            x, train=train))
    feats[f"stage{stage}"] = feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = head(self.num_classes, maxout_pieces=self.maxout_pieces, name="fc", dtype=self.dtype,
                  param_dtype=self.param_dtype)(y).astype(jnp.float32)
    if aux:
      return (logits, aux[1], aux[0])
    return logits


# -------------------------------------------------------------------------------------------- Inception v3


class InceptionA(_Base):
  """35x35 module (Szegedy et al., CVPR 2016, Fig. 5): 5x5 factorised into two 3x3 in the double branch."""
  pool_features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    t = dict(train=train)
    b1 = self.cbr(64, 1, name="branch1x1")(x, **t)
    b5 = self.cbr(48, 1, name="branch5x5_1")(x, **t)
    b5 = self.cbr(64, 5, padding=2, name="branch5x5_2")(b5, **t)
    b3 = self.cbr(64, 1, name="branch3x3dbl_1")(x, **t)
    b3 = self.cbr(96, 3, padding=1, name="branch3x3dbl_2")(b3, **t)
    b3 = self.cbr(96, 3, padding=1, name="branch3x3dbl_3")(b3, **t)
    bp = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = self.cbr(self.pool_features, 1, name="branch_pool")(bp, **t)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Base):
  """35 -> 17 grid reduction (§7, Fig. 10)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    t = dict(train=train)
    b3 = self.cbr(384, 3, 2, name="branch3x3")(x, **t)
    bd = self.cbr(64, 1, name="branch3x3dbl_1")(x, **t)
    bd = self.cbr(96, 3, padding=1, name="branch3x3dbl_2")(bd, **t)
    bd = self.cbr(96, 3, 2, name="branch3x3dbl_3")(bd, **t)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(_Base):
  """17x17 module with n x n factorised into 1 x n and n x 1, n = 7 (§6, Fig. 6)."""
  channels_7x7: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    t, c7 = dict(train=train), self.channels_7x7
    b1 = self.cbr(192, 1, name="branch1x1")(x, **t)
    b7 = self.cbr(c7, 1, name="branch7x7_1")(x, **t)
    b7 = self.cbr(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7, **t)
    b7 = self.cbr(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7, **t)
    bd = self.cbr(c7, 1, name="branch7x7dbl_1")(x, **t)
    bd = self.cbr(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd, **t)
    bd = self.cbr(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd, **t)
    bd = self.cbr(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd, **t)
    bd = self.cbr(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd, **t)
    bp = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = self.cbr(192, 1, name="branch_pool")(bp, **t)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Base):
  """17 -> 8 grid reduction."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    t = dict(train=train)
    b3 = self.cbr(192, 1, name="branch3x3_1")(x, **t)
    b3 = self.cbr(320, 3, 2, name="branch3x3_2")(b3, **t)
    b7 = self.cbr(192, 1, name="branch7x7x3_1")(x, **t)
    b7 = self.cbr(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, **t)
    b7 = self.cbr(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, **t)
    b7 = self.cbr(192, 3, 2, name="branch7x7x3_4")(b7, **t)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(_Base):
  """8x8 module with expanded filter banks (Fig. 7): 3x3 split into parallel 1x3 and 3x1."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    t = dict(train=train)
    b1 = self.cbr(320, 1, name="branch1x1")(x, **t)
    b3 = self.cbr(384, 1, name="branch3x3_1")(x, **t)
    b3 = jnp.concatenate([self.cbr(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3, **t),
                          self.cbr(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3, **t)], axis=-1)
    bd = self.cbr(448, 1, name="branch3x3dbl_1")(x, **t)
    bd = self.cbr(384, 3, padding=1, name="branch3x3dbl_2")(bd, **t)
    bd = jnp.concatenate([self.cbr(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd, **t),
                          self.cbr(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd, **t)], axis=-1)
    bp = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = self.cbr(192, 1, name="branch_pool")(bp, **t)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAuxV3(_Base):
  """Inception v3 auxiliary head on the 17x17 grid (§8): 5x5/3 avg pool, 1x1 conv 128, 5x5 conv 768, FC."""
  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.avg_pool(x, (5, 5), strides=(3, 3))
    x = self.cbr(128, 1, name="conv0")(x, train=train)
    x = self.cbr(768, 5, name="conv1")(x, train=train) if min(x.shape[1:3]) >= 5 else self.cbr(
        768, 5, padding=2, name="conv1")(x, train=train)
    x = global_avg_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x).astype(
        jnp.float32)


class InceptionV3(_Base):
  """Inception v3 (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, Table 1), 299x299 input.

  Layer names and widths follow torchvision; 23,834,568 params without the auxiliary head, 27,161,264 with it.
  Smallest input: 75x75.
  """
  num_classes: int = 1000
  aux_logits: bool = False
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    t = dict(train=train)
    feats = {}
    x = self.cbr(32, 3, 2, name="Conv2d_1a_3x3")(x.astype(self.dtype), **t)
    x = self.cbr(32, 3, name="Conv2d_2a_3x3")(x, **t)
    x = self.cbr(64, 3, padding=1, name="Conv2d_2b_3x3")(x, **t)
    feats["stem"] = feats["stage1"] = feats["C1"] = x
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = self.cbr(80, 1, name="Conv2d_3b_1x1")(x, **t)
    x = self.cbr(192, 3, name="Conv2d_4a_3x3")(x, **t)
    feats["stage2"] = feats["C2"] = x
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = InceptionA(32, name="Mixed_5b", **kw)(x, **t)
    x = InceptionA(64, name="Mixed_5c", **kw)(x, **t)
    x = InceptionA(64, name="Mixed_5d", **kw)(x, **t)
    feats["stage3"] = feats["C3"] = x
    x = InceptionB(name="Mixed_6a", **kw)(x, **t)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name, **kw)(x, **t)
    feats["stage4"] = feats["C4"] = x
    aux = InceptionAuxV3(self.num_classes, name="AuxLogits", **kw)(x, **t) if (self.aux_logits and train) else None
    x = InceptionD(name="Mixed_7a", **kw)(x, **t)
    x = InceptionE(name="Mixed_7b", **kw)(x, **t)
    x = InceptionE(name="Mixed_7c", **kw)(x, **t)
    feats["stage5"] = feats["C5"] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = head(self.num_classes, maxout_pieces=self.maxout_pieces, name="fc", dtype=self.dtype,
                  param_dtype=self.param_dtype)(y).astype(jnp.float32)
    return (logits, aux) if aux is not None else logits


register("googlenet")(lambda **kw: GoogLeNet(**kw))
register("inception_v3")(lambda **kw: InceptionV3(**kw))
