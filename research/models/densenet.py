"""DenseNet-BC (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017, §3 and Table 1).

BN-ReLU-Conv composite layers, bottleneck 1x1 conv to ``bn_size * k`` channels, growth rate k, transitions with
compression 0.5 (BN-ReLU-1x1 conv-2x2 avg pool). Layer names follow torchvision; parameter counts equal
torchvision's (DenseNet-121: 7,978,856). ``features_only``: ``stage{i}`` is the output of dense block i
(``C2..C5``; the last after the final BN-ReLU), ``stem`` the stride-4 map after the max pool.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import batch_norm, conv, global_avg_pool, head, max_pool_3x3_s2, stride_key
from research.models.registry import register

Dtype = Any


class DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1(bn_size*k) -> BN-ReLU-Conv3x3(k); returns the k new channels."""
  growth_rate: int
  bn_size: int = 4
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda name: batch_norm(axis_name=self.bn_axis_name, name=name, **kw)
    y = conv(self.bn_size * self.growth_rate, 1, name="conv1", **kw)(nn.relu(bn("norm1")(x, use_running_average=not train)))
    y = conv(self.growth_rate, 3, name="conv2", **kw)(nn.relu(bn("norm2")(y, use_running_average=not train)))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return y


class DenseNet(nn.Module):
  """DenseNet-BC for ImageNet: 7x7/2 conv, 3x3/2 max pool, four dense blocks, BN-ReLU, global pool, FC."""
  block_config: Sequence[int]
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  dropout_rate: float = 0.0
  num_classes: int = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda name: batch_norm(axis_name=self.bn_axis_name, name=name, **kw)
    feats = {}
    x = conv(self.num_init_features, 7, 2, name="conv0", **kw)(x.astype(self.dtype))
    x = max_pool_3x3_s2(nn.relu(bn("norm0")(x, use_running_average=not train)))
    feats["stem"] = x
    stride = 4
    for i, n_layers in enumerate(self.block_config):
      for j in range(n_layers):
        y = DenseLayer(self.growth_rate, self.bn_size, self.dropout_rate, bn_axis_name=self.bn_axis_name,
                       name=f"denseblock{i + 1}_denselayer{j + 1}", **kw)(x, train=train)
        x = jnp.concatenate([x, y], axis=-1)
      if i == len(self.block_config) - 1:
        x = nn.relu(bn("norm5")(x, use_running_average=not train))
      feats[f"stage{i + 1}"] = feats[stride_key(stride)] = x
      if i < len(self.block_config) - 1:
        name = f"transition{i + 1}"
        x = nn.relu(bn(f"{name}_norm")(x, use_running_average=not train))
        x = conv(int(x.shape[-1] * self.compression), 1, name=f"{name}_conv", **kw)(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        stride *= 2
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, name="classifier", **kw)(pooled).astype(
        jnp.float32)


for _name, _cfg, _k, _init in [("densenet121", (6, 12, 24, 16), 32, 64), ("densenet169", (6, 12, 32, 32), 32, 64),
                               ("densenet201", (6, 12, 48, 32), 32, 64), ("densenet161", (6, 12, 36, 24), 48, 96)]:
  register(_name)(lambda _cfg=_cfg, _k=_k, _init=_init, **kw: DenseNet(
      block_config=_cfg, growth_rate=_k, num_init_features=_init, **kw))
