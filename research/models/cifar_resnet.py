"""CIFAR-style pre-activation ResNets (He et al., ECCV 2016) and Wide ResNets (Zagoruyko & Komodakis, BMVC 2016).

Input ``[B, 32, 32, 3]``; 3x3 stem, no max-pool, three (or four) stages, final BN-ReLU, global average pool.
Same backbone API as ``research.models.resnet`` (``features_only``, ``start_stage``; feature keys
``stem``, ``stage{i}``, ``C{k}`` with output stride 2**k, ``pooled``).

WRN-d-k (§2 of the paper): n = (d - 4) / 6 blocks per stage, widths 16, 16k, 32k, 64k; the block type
B(k1, k2, ...) lists the kernel sizes of its convolutions (B(3,3) is the basic block); dropout between
the convolutions of a block. WRN-28-10 with 10 classes has 36,479,194 parameters.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import batch_norm, conv, global_avg_pool, head, stride_key
from research.models.registry import register, register_pattern

Dtype = Any


class PreActBlock(nn.Module):
  """Pre-activation block BN-ReLU-conv repeated for each kernel size in ``block_type``.

  The shortcut is identity, or a strided 1x1 conv of the pre-activated input when shapes change.
  The stride sits on the first conv with a kernel larger than 1 (the first conv if all are 1x1).
  """
  features: int
  strides: int = 1
  block_type: Sequence[int] = (3, 3)
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ks = list(self.block_type)
    stride_at = next((i for i, k in enumerate(ks) if k > 1), 0)
    o = nn.relu(batch_norm(axis_name=self.bn_axis_name, **kw)(x, use_running_average=not train))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = conv(self.features, 1, self.strides, name="shortcut_conv", **kw)(o)
    y = o
    for i, k in enumerate(ks):
      if i > 0:
        y = nn.relu(batch_norm(axis_name=self.bn_axis_name, **kw)(y, use_running_average=not train))
        if self.dropout_rate > 0:
          y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
      y = conv(self.features, k, self.strides if i == stride_at else 1, **kw)(y)
    return y + shortcut


class PreActBottleneck(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-1x1(f), BN-ReLU-3x3(f, stride), BN-ReLU-1x1(4f)."""
  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda: batch_norm(axis_name=self.bn_axis_name, **kw)
    out = self.features * self.expansion
    o = nn.relu(bn()(x, use_running_average=not train))
    shortcut = x
    if x.shape[-1] != out or self.strides != 1:
      shortcut = conv(out, 1, self.strides, name="shortcut_conv", **kw)(o)
    y = conv(self.features, 1, **kw)(o)
    y = conv(self.features, 3, self.strides, **kw)(nn.relu(bn()(y, use_running_average=not train)))
    y = conv(out, 1, **kw)(nn.relu(bn()(y, use_running_average=not train)))
    return y + shortcut


class PreActResNet(nn.Module):
  """CIFAR pre-activation ResNet / Wide ResNet backbone + linear classifier."""
  stage_sizes: Sequence[int]
  stage_widths: Sequence[int]
  stem_width: int = 16
  bottleneck: bool = False
  block_type: Sequence[int] = (3, 3)
  dropout_rate: float = 0.0
  num_classes: int = 10
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  start_stage: int = 0
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feats: dict[str, jnp.ndarray] = {}
    stride = 1
    if self.start_stage == 0:
      x = conv(self.stem_width, 3, name="stem_conv", **kw)(x.astype(self.dtype))
      feats["stem"] = x
    for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      stage = i + 1
      if stage > 1:
        stride *= 2
      if stage < self.start_stage:
        continue
      for j in range(n_blocks):
        s = 2 if (j == 0 and i > 0) else 1
        name = f"stage{stage}_block{j}"
        if self.bottleneck:
          x = PreActBottleneck(width, s, self.dropout_rate, bn_axis_name=self.bn_axis_name, name=name, **kw)(
              x, train=train)
        else:
          x = PreActBlock(width, s, tuple(self.block_type), self.dropout_rate, bn_axis_name=self.bn_axis_name,
                          name=name, **kw)(x, train=train)
      feats[f"stage{stage}"] = x
      feats[stride_key(stride)] = x
    x = nn.relu(batch_norm(axis_name=self.bn_axis_name, name="final_bn", **kw)(x, use_running_average=not train))
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, **kw)(pooled).astype(jnp.float32)


def wide_resnet(depth: int, k: int, *, block_type: Sequence[int] = (3, 3), **kw) -> PreActResNet:
  """WRN-depth-k with blocks B(block_type): n = (depth - 4) / 6 blocks per stage for every block type.

  As in the reference code (szagoruyko/wide-residual-networks, ``n = (depth - 4) / 6``), ``depth`` is the
  nominal depth of the B(3,3) net and fixes the number of blocks, not the number of convs. This reproduces
  the params column of the block-type table (Table 1, WRN-d-2): B(1,3,1)@40 1.43M, B(3,1)@40 1.21M,
  B(1,3)@40 1.30M, B(3,1,1)@40 1.34M, B(3,3)@28 1.47M, B(3,1,3)@22 1.15M (paper: 1.4, 1.2, 1.3, 1.3, 1.5, 1.1M);
  the conv-counting reading (n = (depth-4) / (3 * len(block_type))) gives 0.95M / 0.87M / 0.74M for the
  three-conv blocks instead.
  """
  if (depth - 4) % 6 or depth <= 4:
    raise ValueError(f"WRN depth must be 6n+4, got depth={depth}")
  n = (depth - 4) // 6
  return PreActResNet(stage_sizes=(n, n, n), stage_widths=(16 * k, 32 * k, 64 * k), stem_width=16,
                      block_type=tuple(block_type), **kw)


@register_pattern(r"wrn(\d+)_(\d+)", example="wrn{depth}_{k} (e.g. wrn28_10, wrn16_4)")
def _wrn_from_name(match: re.Match, **kw) -> PreActResNet:
  return wide_resnet(int(match.group(1)), int(match.group(2)), **kw)


for _d, _k in [(16, 4), (16, 8), (22, 8), (28, 10), (40, 2), (40, 4), (40, 10)]:
  register(f"wrn{_d}_{_k}")(lambda _d=_d, _k=_k, **kw: wide_resnet(_d, _k, **kw))


@register("preact_resnet18")
def preact_resnet18(**kw) -> PreActResNet:
  """Pre-activation ResNet-18 for 32x32 inputs: basic blocks [2,2,2,2], widths 64..512."""
  return PreActResNet(stage_sizes=(2, 2, 2, 2), stage_widths=(64, 128, 256, 512), stem_width=64, **kw)


def _preact_bottleneck(depth: int, **kw) -> PreActResNet:
  if (depth - 2) % 9:
    raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n+2, got {depth}")
  n = (depth - 2) // 9
  return PreActResNet(stage_sizes=(n, n, n), stage_widths=(16, 32, 64), stem_width=16, bottleneck=True, **kw)


register("preact_resnet164")(lambda **kw: _preact_bottleneck(164, **kw))
register("preact_resnet1001")(lambda **kw: _preact_bottleneck(1001, **kw))
