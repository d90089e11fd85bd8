"""ResNet v1 (He et al., CVPR 2016) with the ImageNet stem; ResNeXt-style grouped width hooks.

Stride sits on the 3x3 conv of the bottleneck ("v1.5", as in torchvision); parameter counts equal v1:
ResNet-50 with 1000 classes has 25,557,032 parameters.

Also here: ResNeXt (``groups``/``base_width``), SE-ResNet(X)t (``se_reduction``), DRN-A (``stage_dilations``;
dilated stages keep output stride 8, so their ``C{k}`` key is ``C3``), DeepLabV3 multi-grid on the last stage
(``multi_grid``), maxout head (``maxout_pieces``).

Backbone API (shared by every backbone in ``research.models``):
  * ``__call__(x, *, train)`` -> logits ``[B, num_classes]`` (float32).
  * ``features_only=True`` -> dict of feature maps: ``stem``, ``stage1``..``stageS``, the FPN aliases
    ``C{k}`` (output stride 2**k, e.g. ``C2``..``C5`` for ImageNet ResNets) and ``pooled`` ``[B, D]``.
  * ``start_stage=k`` (k >= 1) skips the stem and stages < k: the input is the activation that enters
    stage k (e.g. cached ``stage{k-1}`` features). Parameter names do not depend on it, so the same
    variables apply (Task2Vec's ``skip_layers``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import batch_norm, conv, global_avg_pool, head, max_pool_3x3_s2, stride_key
from research.layers.deform import DeformConv
from research.layers.se import SqueezeExcite
from research.models.registry import register

Dtype = Any


def _conv3x3(block: nn.Module, features: int, strides: int, groups: int = 1, **kw):
  """The block's 3x3 convolution: plain, or deformable (Dai et al. 2017: ``deformable=1``; Zhu et al. 2019,
  modulated: ``deformable=2``) with the same kernel, stride, dilation and groups."""
  if block.deformable:
    return DeformConv(features, 3, strides=strides, dilation=block.dilation, groups=groups,
                      modulated=block.deformable == 2, use_bias=False, **kw)
  return conv(features, 3, strides, groups=groups, dilation=block.dilation, **kw)


def _merge_residual(block: nn.Module, residual, y, *, train: bool):
  """Shared block tail (called inside the block's compact scope): optional squeeze-excitation on the
  branch, strided 1x1 conv + BN projection of the shortcut when shapes differ, add, ReLU."""
  kw = dict(dtype=block.dtype, param_dtype=block.param_dtype)
  if block.se_reduction:
    y = SqueezeExcite(block.se_reduction, name="se", **kw)(y)
  if residual.shape != y.shape:
    residual = conv(y.shape[-1], 1, block.strides, name="downsample_conv", **kw)(residual)
    residual = batch_norm(axis_name=block.bn_axis_name, name="downsample_bn", **kw)(
        residual, use_running_average=not train)
  return nn.relu(y + residual)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  features: int
  strides: int = 1
  groups: int = 1
  base_width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  zero_init_last_bn: bool = False
  dilation: int = 1
  se_reduction: int = 0
  deformable: int = 0  # 0 plain, 1 DCN v1, 2 DCN v2 (the first 3x3 conv)
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda **a: batch_norm(axis_name=self.bn_axis_name, **kw, **a)
    residual = x
    y = _conv3x3(self, self.features, self.strides, **kw)(x)
    y = nn.relu(bn()(y, use_running_average=not train))
    y = conv(self.features, 3, dilation=self.dilation, **kw)(y)
    y = bn(zero_init=self.zero_init_last_bn)(y, use_running_average=not train)
    return _merge_residual(self, residual, y, train=train)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand (x4)."""
  features: int
  strides: int = 1
  groups: int = 1
  base_width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  zero_init_last_bn: bool = False
  dilation: int = 1
  se_reduction: int = 0
  deformable: int = 0  # 0 plain, 1 DCN v1, 2 DCN v2 (the 3x3 conv)
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = lambda **a: batch_norm(axis_name=self.bn_axis_name, **kw, **a)
    width = int(self.features * (self.base_width / 64.0)) * self.groups
    out = self.features * self.expansion
    residual = x
    y = nn.relu(bn()(conv(width, 1, **kw)(x), use_running_average=not train))
    y = nn.relu(bn()(_conv3x3(self, width, self.strides, self.groups, **kw)(y), use_running_average=not train))
    y = bn(zero_init=self.zero_init_last_bn)(conv(out, 1, **kw)(y), use_running_average=not train)
    return _merge_residual(self, residual, y, train=train)


class ResNet(nn.Module):
  """ImageNet ResNet/ResNeXt backbone + linear classifier. Input ``[B, H, W, 3]``."""
  stage_sizes: Sequence[int]
  block_cls: type = Bottleneck
  num_classes: int = 1000
  width: int = 64
  groups: int = 1
  base_width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  zero_init_last_bn: bool = False
  features_only: bool = False
  start_stage: int = 0
  se_reduction: int = 0
  stage_dilations: Sequence[int] = (1, 1, 1, 1)
  maxout_pieces: int = 0
  deform_stages: Sequence[int] = ()  # stages (1-4) whose blocks use deformable 3x3 convs
  deformable: int = 2  # DCN version in those stages: 1 (Dai et al. 2017) or 2 (modulated, Zhu et al. 2019)
  # DeepLabV3 multi-grid (Chen et al. 2017, §3.2): block j of the LAST stage gets dilation
  # stage_dilation * multi_grid[j % len(multi_grid)]; (1,) leaves the network unchanged.
  multi_grid: Sequence[int] = (1,)

  @nn.compact
  def __call__(self, x, *, train: bool):
    if not self.multi_grid or any(int(r) != r or r < 1 for r in self.multi_grid):
      raise ValueError(f"multi_grid={tuple(self.multi_grid)!r} must be a non-empty sequence of positive integers, "
                       f"e.g. (1, 2, 4) (DeepLabV3) or (1,) for none")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feats: dict[str, jnp.ndarray] = {}
    stride = 4
    if self.start_stage == 0:
      x = conv(self.width, 7, 2, padding=[(3, 3), (3, 3)], name="stem_conv", **kw)(x.astype(self.dtype))
      x = batch_norm(axis_name=self.bn_axis_name, name="stem_bn", **kw)(x, use_running_average=not train)
      x = max_pool_3x3_s2(nn.relu(x))
      feats["stem"] = x
    for i, n_blocks in enumerate(self.stage_sizes):
      stage = i + 1
      dil = self.stage_dilations[i]
      step = 2 if (i > 0 and dil == 1) else 1  # DRN-A: dilation replaces the stride (Yu et al. 2017, §2)
      stride *= step
      if stage < self.start_stage:
        continue
      for j in range(n_blocks):
        rate = dil * int(self.multi_grid[j % len(self.multi_grid)]) if stage == len(self.stage_sizes) else dil
        x = self.block_cls(self.width * 2**i, strides=step if j == 0 else 1, groups=self.groups,
                           base_width=self.base_width, bn_axis_name=self.bn_axis_name,
                           zero_init_last_bn=self.zero_init_last_bn, dilation=rate, se_reduction=self.se_reduction,
                           deformable=self.deformable if stage in self.deform_stages else 0,
                           name=f"stage{stage}_block{j}", **kw)(x, train=train)
      feats[f"stage{stage}"] = x
      feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, **kw)(pooled).astype(jnp.float32)


def _resnet(stage_sizes, block_cls, **defaults):
  def factory(**kw):
    return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, **{**defaults, **kw})
  return factory


for _name, _sizes, _block in [
    ("resnet18", (2, 2, 2, 2), BasicBlock),
    ("resnet34", (3, 4, 6, 3), BasicBlock),
    ("resnet50", (3, 4, 6, 3), Bottleneck),
    ("resnet101", (3, 4, 23, 3), Bottleneck),
    ("resnet152", (3, 8, 36, 3), Bottleneck),
]:
  register(_name)(_resnet(_sizes, _block))

# ResNeXt (Xie et al., CVPR 2017, Table 1): cardinality C = groups, bottleneck width d = base_width.
register("resnext50_32x4d")(_resnet((3, 4, 6, 3), Bottleneck, groups=32, base_width=4))
register("resnext101_32x8d")(_resnet((3, 4, 23, 3), Bottleneck, groups=32, base_width=8))
# Wide ResNet-50-2 (Zagoruyko & Komodakis 2016; torchvision): bottleneck width doubled.
register("wide_resnet50_2")(_resnet((3, 4, 6, 3), Bottleneck, base_width=128))
# SE-ResNet / SE-ResNeXt (Hu et al., CVPR 2018, §4, Table 1): SE (r = 16) on every residual branch before the sum.
register("se_resnet50")(_resnet((3, 4, 6, 3), Bottleneck, se_reduction=16))
register("se_resnext50_32x4d")(_resnet((3, 4, 6, 3), Bottleneck, groups=32, base_width=4, se_reduction=16))
# DRN-A-50 (Yu, Koltun & Funkhouser, CVPR 2017, §2): ResNet-50 with stages 4/5 dilated 2/4 instead of strided.
register("drn_a_50")(_resnet((3, 4, 6, 3), Bottleneck, stage_dilations=(1, 1, 2, 4)))
