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


def _capacities(level_capacity, n_levels: int, k: int) -> tuple[int, ...]:
  """Static per-level bucket sizes: None -> ``K`` on every level; an int -> the same on every level."""
  if level_capacity is None:
    return (k,) * n_levels
  caps = (level_capacity,) * n_levels if isinstance(level_capacity, int) else tuple(level_capacity)
  if len(caps) != n_levels or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in caps):
    raise ValueError(f"multilevel_roi_align: level_capacity must be an int >= 0 or one per level ({n_levels}), "
                     f"got {level_capacity!r}")
  return tuple(min(c, k) for c in caps)


def multilevel_roi_align(features: Sequence[jnp.ndarray], strides: Sequence[int], boxes, box_indices, output_size,
                         *, sampling_ratio: int = 2, aligned: bool = True, canonical_size: float = 224.0,
                         canonical_level: int = 4, impl: str = "auto", pooler: str = "align",
                         bucketed: bool = False, level_capacity: int | Sequence[int] | None = None,
                         return_overflow: bool = False):
  """RoIAlign each box ``[K, 4]`` (image coordinates) on its FPN level -> ``[K, ph, pw, C]``.

  ``pooler="pool"`` uses RoIPool (Girshick 2015: quantised bins, max) instead of RoIAlign -- Mask R-CNN's
  Table 2c ablation; ``sampling_ratio`` and ``aligned`` then do not apply.

  ``features[l]`` is ``[N, H_l, W_l, C]`` with stride ``strides[l]`` (a power of two, level ``log2(stride)``).
  The level of a box is ``fpn_levels`` (FPN eq. 1). Two ways to get there, both under ``jit`` and ``grad``:

  * ``bucketed=False`` (default): every level pools all ``K`` boxes, with the boxes of other levels replaced by
    NaN boxes (which give exactly 0 and cost nothing in the C++ kernel), and the levels are summed. On the
    pure-JAX paths each level costs ``K`` boxes.
  * ``bucketed=True``: each level pools only its own boxes: the rows of the boxes of level ``l`` (in box order)
    are gathered into a static ``[level_capacity[l], 4]`` bucket, padded with NaN boxes, and the pooled rows
    are gathered back into box order. ``level_capacity``: an int for every level or one per level (levels in
    the order of ``strides``); default ``K`` on every level, which is exact (same values as ``bucketed=False``)
    but no cheaper. A smaller capacity makes level ``l`` cost ``level_capacity[l]`` boxes instead of ``K``.
    **Overflow**: boxes of a level beyond its first ``level_capacity[l]`` (in box order) are not pooled and
    give zeros. A capacity below ``K`` therefore requires ``return_overflow=True``, which returns
    ``(out, num_overflow)`` with ``num_overflow`` ``[L]`` int32, the boxes dropped per level (0 = exact).

  Returns ``[K, ph, pw, C]`` or, with ``return_overflow``, ``([K, ph, pw, C], [L] int32)``.
  """
  if pooler not in POOLERS:
    raise ValueError(f"multilevel_roi_align: pooler={pooler!r}; choose one of {POOLERS}")
  if len(features) != len(strides) or not features:
    raise ValueError(f"multilevel_roi_align: {len(features)} feature maps for strides {tuple(strides)}")
  levels = [int(round(math.log2(s))) for s in strides]
  if any(2 ** l != s for l, s in zip(levels, strides)):
    raise ValueError(f"multilevel_roi_align: strides must be powers of two, got {tuple(strides)}")
  if not bucketed and (level_capacity is not None or return_overflow):
    raise ValueError("multilevel_roi_align: level_capacity / return_overflow apply to bucketed=True only")
  boxes, box_indices = jnp.asarray(boxes), jnp.asarray(box_indices)
  k = boxes.shape[0]
  target = fpn_levels(boxes, min(levels), max(levels), canonical_size, canonical_level)

  def pool(feat, b, idx, stride):
    if pooler == "pool":
      return roi_pool(feat, b, idx, output_size, spatial_scale=1.0 / stride, impl=impl)
    return roi_align(feat, b, idx, output_size, spatial_scale=1.0 / stride, sampling_ratio=sampling_ratio,
                     aligned=aligned, impl=impl)

  if not bucketed:
    out = None
    for feat, lvl, stride in zip(features, levels, strides):
      o = pool(feat, jnp.where((target == lvl)[:, None], boxes, jnp.nan), box_indices, stride)
      out = o if out is None else out + o
    return out

  caps = _capacities(level_capacity, len(levels), k)
  if min(caps) < k and not return_overflow:
    raise ValueError(f"multilevel_roi_align: level_capacity {caps} is below K={k} on some level, so boxes can be "
                     f"dropped (they give zeros); pass return_overflow=True to get the count per level")
  boxes_pad = jnp.concatenate([boxes, jnp.full((1, 4), jnp.nan, boxes.dtype)])  # row K: the NaN box of empty slots
  idx_pad = jnp.concatenate([box_indices, jnp.zeros((1,), box_indices.dtype)])
  pooled, overflow = [], []
  src = jnp.full((k,), sum(caps), jnp.int32)  # row of each box in concat(pooled) + [zero row]; default: zero row
  offset = 0
  for feat, lvl, stride, cap in zip(features, levels, strides, caps):
    member = target == lvl
    rank = jnp.cumsum(member, dtype=jnp.int32) - 1  # position of each box in its level's bucket
    count = jnp.sum(member, dtype=jnp.int32)
    overflow.append(jnp.maximum(count - cap, 0))
    if cap == 0:
      continue
    slot = jnp.nonzero(member, size=cap, fill_value=k)[0]  # [cap] box rows of the bucket, K = empty
    pooled.append(pool(feat, boxes_pad[slot], idx_pad[slot], stride))  # [cap, ph, pw, C]
    src = jnp.where(member & (rank < cap), offset + rank, src)
    offset += cap
  if not pooled:  # every capacity 0
    o = pool(features[0], boxes_pad[:1], idx_pad[:1], strides[0])
    pooled.append(jnp.zeros((0,) + o.shape[1:], o.dtype))
  rows = jnp.concatenate(pooled + [jnp.zeros((1,) + pooled[0].shape[1:], pooled[0].dtype)])
  out = rows[src]
  return (out, jnp.stack(overflow)) if return_overflow else out


class MultiLevelRoIAlign(nn.Module):
  """Flax wrapper of ``multilevel_roi_align`` (no parameters): ``(features, boxes, box_indices) -> [K, ph, pw, C]``.

  ``bucketed`` / ``level_capacity`` / ``return_overflow`` as in ``multilevel_roi_align`` (with
  ``return_overflow`` the call returns ``(out [K, ph, pw, C], num_overflow [L])``).
  """
  output_size: int | tuple[int, int] = 7
  strides: tuple[int, ...] = (4, 8, 16, 32)
  sampling_ratio: int = 2
  aligned: bool = True
  canonical_size: float = 224.0
  canonical_level: int = 4
  impl: str = "auto"
  bucketed: bool = False
  level_capacity: int | tuple[int, ...] | None = None
  return_overflow: bool = False

  def __call__(self, features: Sequence[jnp.ndarray], boxes, box_indices):
    return multilevel_roi_align(features, self.strides, boxes, box_indices, self.output_size,
                                sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                                canonical_size=self.canonical_size, canonical_level=self.canonical_level,
                                impl=self.impl, bucketed=self.bucketed, level_capacity=self.level_capacity,
                                return_overflow=self.return_overflow)
