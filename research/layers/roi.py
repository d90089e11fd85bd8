"""Multi-level RoIAlign for feature pyramids (Lin et al. 2017, FPN, eq. 1) on top of research.ops.roi_align."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.ops import roi_align, roi_pool

POOLERS = ("align", "pool")


def fpn_levels(boxes: jnp.ndarray, min_level: int, max_level: int, canonical_size: float = 224.0,
               canonical_level: int = 4, eps: float = 1e-6) -> jnp.ndarray:
  """FPN level of each box ``[K, 4]``: ``floor(k0 + log2(sqrt(w*h) / 224) + eps)`` clipped to the pyramid."""
  area = jnp.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * jnp.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
  lvl = jnp.floor(canonical_level + jnp.log2(jnp.sqrt(area) / canonical_size) + eps)
  return jnp.clip(lvl, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(features: Sequence[jnp.ndarray], strides: Sequence[int], boxes, box_indices, output_size,
                         *, sampling_ratio: int = 2, aligned: bool = True, canonical_size: float = 224.0,
                         canonical_level: int = 4, impl: str = "auto", pooler: str = "align") -> jnp.ndarray:
  """RoIAlign each box ``[K, 4]`` (image coordinates) on its FPN level -> ``[K, ph, pw, C]``.

  ``pooler="pool"`` uses RoIPool (Girshick 2015: quantised bins, max) instead of RoIAlign -- Mask R-CNN's
  Table 2c ablation; ``sampling_ratio`` and ``aligned`` then do not apply.

  ``features[l]`` is ``[N, H_l, W_l, C]`` with stride ``strides[l]`` (a power of two, level ``log2(stride)``).
  Works under ``jit``: every level pools all boxes, with the boxes of other levels replaced by NaN boxes
  (which give exactly 0 and cost nothing in the C++ kernel), and the levels are summed.
  """
  if pooler not in POOLERS:
    raise ValueError(f"multilevel_roi_align: pooler={pooler!r}; choose one of {POOLERS}")
  if len(features) != len(strides) or not features:
    raise ValueError(f"multilevel_roi_align: {len(features)} feature maps for strides {tuple(strides)}")
  levels = [int(round(math.log2(s))) for s in strides]
  if any(2 ** l != s for l, s in zip(levels, strides)):
    raise ValueError(f"multilevel_roi_align: strides must be powers of two, got {tuple(strides)}")
  boxes = jnp.asarray(boxes)
  target = fpn_levels(boxes, min(levels), max(levels), canonical_size, canonical_level)
  out = None
  for feat, lvl, stride in zip(features, levels, strides):
    b = jnp.where((target == lvl)[:, None], boxes, jnp.nan)
    if pooler == "pool":
      o = roi_pool(feat, b, box_indices, output_size, spatial_scale=1.0 / stride, impl=impl)
    else:
      o = roi_align(feat, b, box_indices, output_size, spatial_scale=1.0 / stride, sampling_ratio=sampling_ratio,
                    aligned=aligned, impl=impl)
    out = o if out is None else out + o
  return out


class MultiLevelRoIAlign(nn.Module):
  """Flax wrapper of ``multilevel_roi_align`` (no parameters): ``(features, boxes, box_indices) -> [K, ph, pw, C]``."""
  output_size: int | tuple[int, int] = 7
  strides: tuple[int, ...] = (4, 8, 16, 32)
  sampling_ratio: int = 2
  aligned: bool = True
  canonical_size: float = 224.0
  canonical_level: int = 4
  impl: str = "auto"

  def __call__(self, features: Sequence[jnp.ndarray], boxes, box_indices) -> jnp.ndarray:
    return multilevel_roi_align(features, self.strides, boxes, box_indices, self.output_size,
                                sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                                canonical_size=self.canonical_size, canonical_level=self.canonical_level,
                                impl=self.impl)
