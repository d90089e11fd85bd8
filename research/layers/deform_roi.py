"""Deformable RoI pooling layers, single map and FPN pyramid, on top of research.ops.deform_roi (RoIAlign sampling).

Dai et al. 2017, "Deformable Convolutional Networks", §2.2 (deformable RoI pooling, eq. 6 and the offset fc).

(a) plain RoIAlign pools each RoI to ``[K, ph, pw, C]``; (b) fc layer(s) on it predict normalised offsets
``dp_hat`` ``[K, ph, pw, 2]`` (dx, dy), the last fc zero-initialised so training starts from plain RoIAlign (the
paper initialises the offset fc to zero); (c) ``offsets = gamma * dp_hat * (roi_w, roi_h)`` in input pixels
(``gamma = 0.1``: the normalisation makes the offsets invariant to the RoI size); (d) ``deform_roi_align``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.layers.roi import fpn_levels, multilevel_roi_align
from research.ops import roi_align
from research.ops._util import pair
from research.ops.deform_roi import deform_roi_align, deform_roi_align_multilevel

Dtype = Any


def _pyramid_levels(op, features, strides):
  if len(features) != len(strides) or not features:
    raise ValueError(f"{op}: {len(features)} feature maps for strides {tuple(strides)}")
  levels = [int(round(math.log2(s))) for s in strides]
  if any(2 ** l != s for l, s in zip(levels, strides)):
    raise ValueError(f"{op}: strides must be powers of two, got {tuple(strides)}")
  if len(set(levels)) != len(levels):
    raise ValueError(f"{op}: strides must be distinct, got {tuple(strides)}")
  return levels


def multilevel_deform_roi_align(features: Sequence[jnp.ndarray], strides: Sequence[int], boxes, box_indices, offsets,
                                output_size, *, sampling_ratio: int = 2, aligned: bool = True,
                                canonical_size: float = 224.0, canonical_level: int = 4) -> jnp.ndarray:
  """Deformable RoIAlign of each box ``[K, 4]`` on its FPN level (Lin et al. 2017, eq. 1) -> ``[K, ph, pw, C]``.

  The level is chosen exactly as ``multilevel_roi_align`` does (``fpn_levels`` clipped to the levels
  ``log2(strides)``; a box whose level is missing from a non-contiguous ``strides`` gives 0 there as well).
  ``offsets`` ``[K, ph, pw, 2]`` are (dx, dy) in input pixels. One gather over the concatenated pyramid.
  """
  levels = _pyramid_levels("multilevel_deform_roi_align", features, strides)
  boxes = jnp.asarray(boxes)
  lo, hi = min(levels), max(levels)
  target = fpn_levels(boxes, lo, hi, canonical_size, canonical_level)
  table = np.full(hi - lo + 1, -1, np.int32)  # pyramid level -> position in `features` (-1: absent -> 0)
  for pos, lvl in enumerate(levels):
    table[lvl - lo] = pos
  which = jnp.asarray(table)[target - lo]
  return deform_roi_align_multilevel(features, boxes, box_indices, which, offsets, output_size,
                                     spatial_scales=[1.0 / s for s in strides], sampling_ratio=sampling_ratio,
                                     aligned=aligned)


class RoIOffsetHead(nn.Module):
  """Offset branch: pooled RoI features ``[K, ph, pw, C]`` -> normalised offsets ``dp_hat`` ``[K, ph, pw, 2]``.

  ``fc_dims`` hidden fc layers (ReLU) then one fc to ``ph*pw*2`` outputs, zero-initialised (Dai et al. 2017,
  §2.2: "a fc layer generates the normalized offsets", initialised to zero). ``fc_dims=()`` is the paper's single
  fc; mmcv's ``DeformRoIPoolPack`` uses ``(1024, 1024)``. Computed in float32 (float64 for float64 inputs).
  """
  output_size: int | tuple[int, int] = 7
  fc_dims: tuple[int, ...] = ()
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jnp.ndarray) -> jnp.ndarray:
    ph, pw = pair(self.output_size, "output_size")
    dt = jnp.promote_types(pooled.dtype, jnp.float32)
    h = pooled.reshape(pooled.shape[0], -1).astype(dt)
    for i, d in enumerate(self.fc_dims):
      h = nn.relu(nn.Dense(d, dtype=dt, param_dtype=self.param_dtype, name=f"fc{i}")(h))
    h = nn.Dense(ph * pw * 2, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, dtype=dt,
                 param_dtype=self.param_dtype, name="offset_fc")(h)
    return h.reshape(pooled.shape[0], ph, pw, 2)


def _scale_offsets(dp_hat, boxes, gamma):
  """``gamma * dp_hat * (w, h)``: normalised ``[K, ph, pw, 2]`` -> input pixels (paper eq. 6, Delta p_ij)."""
  boxes = jnp.asarray(boxes).astype(dp_hat.dtype)
  wh = jnp.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=-1)  # [K, 2]
  return gamma * dp_hat * wh[:, None, None, :]


class DeformRoIAlign(nn.Module):
  """Deformable RoI pooling on one feature map: ``(features [N, H, W, C], boxes [K, 4], box_indices [K]) ->
  [K, ph, pw, C]`` (Dai et al. 2017, §2.2). Starts as plain RoIAlign (zero-initialised offset fc).

  ``spatial_scale`` is feature pixels per input pixel (``1 / stride``). The pooling runs in ``dtype`` (default:
  that of ``features``); ``impl`` selects the plain RoIAlign of the offset branch. Sows ``intermediates``
  ``offsets`` (input pixels) and ``normalized_offsets`` (``dp_hat``), both ``[K, ph, pw, 2]`` (dx, dy).
  """
  output_size: int | tuple[int, int] = 7
  sampling_ratio: int = 2
  aligned: bool = True
  gamma: float = 0.1
  fc_dims: tuple[int, ...] = ()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, features: jnp.ndarray, boxes, box_indices, *, spatial_scale: float) -> jnp.ndarray:
    features = jnp.asarray(features)
    features = features.astype(self.dtype or features.dtype)
    size = pair(self.output_size, "output_size")
    plain = roi_align(features, boxes, box_indices, size, spatial_scale=spatial_scale,
                      sampling_ratio=self.sampling_ratio, aligned=self.aligned, impl=self.impl)
    dp_hat = RoIOffsetHead(size, self.fc_dims, self.param_dtype, name="offset_head")(plain)
    offsets = _scale_offsets(dp_hat, boxes, self.gamma)
    self.sow("intermediates", "normalized_offsets", dp_hat)
    self.sow("intermediates", "offsets", offsets)
    return deform_roi_align(features, boxes, box_indices, offsets, size, spatial_scale=spatial_scale,
                            sampling_ratio=self.sampling_ratio, aligned=self.aligned)


class MultiLevelDeformRoIAlign(nn.Module):
  """Deformable RoI pooling on an FPN pyramid: ``(features [N, H_l, W_l, C] per stride, boxes [K, 4],
  box_indices [K]) -> [K, ph, pw, C]`` (Dai et al. 2017, §2.2 with Lin et al. 2017, eq. 1).

  Each box is pooled on the level ``multilevel_roi_align`` picks for it. ONE offset branch is shared by all
  levels: it sees the plain multi-level RoIAlign of the box (already from the box's own level) and predicts
  size-normalised offsets, which do not depend on the level's stride. Sows ``offsets`` and ``normalized_offsets``
  like ``DeformRoIAlign``. Starts as ``multilevel_roi_align`` (zero-initialised offset fc).
  """
  output_size: int | tuple[int, int] = 7
  strides: tuple[int, ...] = (4, 8, 16, 32)
  sampling_ratio: int = 2
  aligned: bool = True
  canonical_size: float = 224.0
  canonical_level: int = 4
  gamma: float = 0.1
  fc_dims: tuple[int, ...] = ()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], boxes, box_indices) -> jnp.ndarray:
    features = [jnp.asarray(f) for f in features]
    features = [f.astype(self.dtype or f.dtype) for f in features]
    size = pair(self.output_size, "output_size")
    kw = dict(sampling_ratio=self.sampling_ratio, aligned=self.aligned, canonical_size=self.canonical_size,
              canonical_level=self.canonical_level)
    plain = multilevel_roi_align(features, self.strides, boxes, box_indices, size, impl=self.impl, **kw)
    dp_hat = RoIOffsetHead(size, self.fc_dims, self.param_dtype, name="offset_head")(plain)
    offsets = _scale_offsets(dp_hat, boxes, self.gamma)
    self.sow("intermediates", "normalized_offsets", dp_hat)
    self.sow("intermediates", "offsets", offsets)
    return multilevel_deform_roi_align(features, self.strides, boxes, box_indices, offsets, size, **kw)
