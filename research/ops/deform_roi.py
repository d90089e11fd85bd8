"""Deformable RoIAlign: RoIAlign whose bins are translated by per-bin offsets (channels-last, pure JAX).

Dai et al. 2017, "Deformable Convolutional Networks", §2.2 ("deformable RoI pooling", eq. 6), on RoIAlign sampling.

Bin ``(i, j)`` of ROI ``k`` averages the ``sampling_ratio x sampling_ratio`` bilinear samples of ``roi_align`` after
translating the whole bin by ``offsets[k, i, j] = (dx, dy)`` (input pixels, times ``spatial_scale`` into feature
pixels), the RoIAlign form of mmcv's ``DeformRoIPool``: ``roi_start += offset`` and then
``y = roi_start_y + i * bin_h + (iy + 0.5) * bin_h / sampling_ratio`` (same for x). Zero offsets give
``roi_align(..., impl="reference")``. The offsets here are already in pixels: the normalisation of the paper
(``gamma * dp_hat * (w, h)``) is done by the layer, ``research.layers.deform_roi``.

Sampling rules are RoIAlign's (torchvision): a sample outside ``[-1, H] x [-1, W]`` gives 0, otherwise it is
clamped to ``>= 0`` and a sample at or beyond the last row/column puts all its weight there. Non-finite boxes and
out-of-range ``box_indices`` give 0 (and zero gradients).

Implementation: every sample's four bilinear corners are gathered from the flattened feature map and weighted
(``K * ph * pw * S^2 * 4`` gathered rows, chunked over ROIs with ``lax.map`` to bound memory). Unlike the separable
matmul form of ``roi_align``'s reference, this handles a different translation per bin. Autodiff gives gradients
w.r.t. ``features`` (a scatter-add), ``offsets`` and ``boxes`` (through the bilinear weights; ``roi_align`` itself
stops the box gradient). Several feature maps (an FPN pyramid) are pooled in ONE gather from their concatenation,
each box reading its own map (``deform_roi_align_multilevel``). There is no C++ kernel.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.ops._util import HIGHEST, chunked_map, compute_dtype, exact_div, pair
from research.ops.roi import _check_roi_args

_ELEMS_PER_CHUNK = 1 << 23  # bound on the gathered [chunk, ph, pw, taps, C] block (elements)


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
def _check_sampling_ratio(op, sampling_ratio):
  if int(sampling_ratio) != sampling_ratio or int(sampling_ratio) <= 0:
    raise ValueError(f"{op}: sampling_ratio must be a positive int (samples per bin and axis), got "
                     f"{sampling_ratio!r}; the adaptive grid of roi_align (sampling_ratio <= 0) is not supported "
                     f"here, since the sample grid must have a static size")
  return int(sampling_ratio)


def _check_offsets(op, offsets, boxes, ph, pw):
  want = (boxes.shape[0], ph, pw, 2)
  if offsets.ndim != 4 or tuple(offsets.shape) != want:
    raise ValueError(f"{op}: offsets must be [K, ph, pw, 2] = {want} ((dx, dy) per bin, input pixels) for boxes "
                     f"{boxes.shape} and output_size {(ph, pw)}, got shape {offsets.shape}")
  if not jnp.issubdtype(offsets.dtype, jnp.floating):
    raise ValueError(f"{op}: offsets must be floating point, got {offsets.dtype}")


# ----------------------------------------------------------------------------------------------------------
# core: one gather over the (concatenated) flattened feature maps
# ----------------------------------------------------------------------------------------------------------
def _axis_taps(pos, size):
  """Bilinear taps of samples at ``pos`` along an axis of length ``size`` (both float, broadcastable).

  Returns ``(low, high)`` int32 indices and their weights; RoIAlign's rule: a sample outside ``[-1, size]`` has
  weight 0, otherwise it is clamped to ``>= 0``, and at or beyond ``size - 1`` all its weight goes to that row.
  """
  inside = (pos >= -1.0) & (pos <= size)
  p = jnp.where(inside & (pos > 0.0), pos, 0.0)
  p0 = jnp.floor(p)
  top = p0 >= size - 1
  p0 = jnp.where(top, size - 1, p0)
  frac = jnp.where(top, 0.0, p - p0)
  p1 = jnp.where(top, p0, p0 + 1)
  zero = jnp.zeros_like(frac)
  return (p0.astype(jnp.int32), p1.astype(jnp.int32), jnp.where(inside, 1.0 - frac, zero),
          jnp.where(inside, frac, zero))


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _deform_roi_align_core(features, boxes, box_indices, offsets, levels, spatial_scales, ph, pw, sampling_ratio,
                           aligned):
  """``features`` tuple of ``[N, H_l, W_l, C]``; box ``k`` reads map ``levels[k]`` -> ``[K, ph, pw, C]``."""
  n, c = features[0].shape[0], features[0].shape[-1]
  n_maps = len(features)
  dt = compute_dtype(features[0].dtype)
  s = sampling_ratio

  flat = [f.reshape(-1, c) for f in features]
  flat = flat[0] if n_maps == 1 else jnp.concatenate(flat, axis=0)  # [sum_l N*H_l*W_l, C]
  sizes = [f.shape[0] * f.shape[1] * f.shape[2] for f in features]
  if sum(sizes) >= 2 ** 31:
    raise ValueError(f"deform_roi_align: {sum(sizes)} feature positions overflow int32 indices")

  boxes, offsets = boxes.astype(dt), offsets.astype(dt)
  valid = (jnp.all(jnp.isfinite(boxes), axis=-1) & (box_indices >= 0) & (box_indices < n) & (levels >= 0)
           & (levels < n_maps))
  boxes = jnp.where(valid[:, None], boxes, 0.0)
  offsets = jnp.where(valid[:, None, None, None] & jnp.isfinite(offsets), offsets, 0.0)
  img = jnp.clip(box_indices, 0, n - 1).astype(jnp.int32)
  lvl = jnp.clip(levels, 0, n_maps - 1).astype(jnp.int32)

  def per_box(values, dtype):
    return jnp.asarray(np.asarray(values), dtype)[lvl]

  scale = per_box(spatial_scales, dt)
  height, width = per_box([f.shape[1] for f in features], dt), per_box([f.shape[2] for f in features], dt)
  height_i, width_i = height.astype(jnp.int32), width.astype(jnp.int32)
  base = per_box(np.cumsum([0] + sizes[:-1]), jnp.int32)

  # geometry in feature pixels, in roi_align's order of operations (zero offsets reproduce its sample points)
  off = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = [boxes[:, i] * scale - off for i in range(4)]
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = jnp.maximum(rw, 1.0), jnp.maximum(rh, 1.0)
  bin_h, bin_w = exact_div(rh, float(ph)), exact_div(rw, float(pw))
  start_x = x1[:, None, None] + offsets[..., 0] * scale[:, None, None]  # [K, ph, pw]
  start_y = y1[:, None, None] + offsets[..., 1] * scale[:, None, None]
  base_y = start_y + jnp.arange(ph, dtype=dt)[None, :, None] * bin_h[:, None, None]
  base_x = start_x + jnp.arange(pw, dtype=dt)[None, None, :] * bin_w[:, None, None]
  frac = jnp.arange(s, dtype=dt) + 0.5
  ys = base_y[..., None] + exact_div(frac * bin_h[:, None, None, None], float(s))  # [K, ph, pw, S]
  xs = base_x[..., None] + exact_div(frac * bin_w[:, None, None, None], float(s))

  y_lo, y_hi, wy_lo, wy_hi = _axis_taps(ys, height[:, None, None, None])
  x_lo, x_hi, wx_lo, wx_hi = _axis_taps(xs, width[:, None, None, None])
  row0 = (base + img * height_i * width_i)[:, None, None, None]
  w_i = width_i[:, None, None, None]
  rows = [row0 + y_lo * w_i, row0 + y_hi * w_i]  # flat index of (image, row) for each sample row
  idx = jnp.stack([r[..., :, None] + x[..., None, :] for r in rows for x in (x_lo, x_hi)], axis=-1)
  inv_count = jnp.where(valid, 1.0 / float(s * s), 0.0).astype(dt)
  wts = jnp.stack([wy[..., :, None] * wx[..., None, :] for wy in (wy_lo, wy_hi) for wx in (wx_lo, wx_hi)], axis=-1)
  wts = wts * inv_count[:, None, None, None, None, None]
  k = boxes.shape[0]
  taps = s * s * 4
  idx, wts = idx.reshape(k, ph, pw, taps), wts.reshape(k, ph, pw, taps)  # taps ordered (iy, ix, corner)

  def block(idx, wts):
    g = jnp.take(flat, idx, axis=0, mode="clip").astype(dt)  # [k, ph, pw, taps, C]
    return jnp.einsum("kijtc,kijt->kijc", g, wts, precision=HIGHEST)

  chunk = max(1, _ELEMS_PER_CHUNK // (ph * pw * taps * c))
  out = chunked_map(block, (idx, wts), k, chunk)
  return out.astype(features[0].dtype)


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def deform_roi_align(features, boxes, box_indices, offsets, output_size, *, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True):
  """Deformable RoIAlign (Dai et al. 2017, §2.2, eq. 6): RoIAlign with every bin translated by its offset.

  Args:
    features: ``[N, H, W, C]`` float (float64 stays float64; bf16/f16 accumulate in float32).
    boxes: ``[K, 4]`` as (x1, y1, x2, y2) in input coordinates; scaled by ``spatial_scale``.
    box_indices: ``[K]`` int, the image of each box. Out-of-range indices and non-finite boxes give 0.
    offsets: ``[K, ph, pw, 2]`` translation (dx, dy) of each bin in input pixels (scaled by ``spatial_scale``).
      Non-finite offsets count as 0.
    output_size: ``(ph, pw)`` or an int.
    spatial_scale: feature pixels per input pixel (``1 / stride``).
    sampling_ratio: samples per bin and axis, a positive int. The adaptive grid of ``roi_align``
      (``sampling_ratio <= 0``) is not supported (ValueError): the grid must have a static size.
    aligned: shift the box by -0.5 feature pixel (as ``roi_align``); unaligned boxes are at least 1x1.
  Returns:
    ``[K, ph, pw, C]`` in the dtype of ``features``; differentiable w.r.t. ``features``, ``offsets`` and ``boxes``.
  """
  features, boxes, box_indices = jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(box_indices)
  offsets = jnp.asarray(offsets)
  ph, pw = _check_roi_args("deform_roi_align", features, boxes, box_indices, output_size)
  _check_offsets("deform_roi_align", offsets, boxes, ph, pw)
  sr = _check_sampling_ratio("deform_roi_align", sampling_ratio)
  levels = jnp.zeros(box_indices.shape, jnp.int32)
  return _deform_roi_align_core((features,), boxes, box_indices, offsets, levels, (float(spatial_scale),), ph, pw,
                                sr, bool(aligned))


def deform_roi_align_multilevel(features: Sequence, boxes, box_indices, levels, offsets, output_size, *,
                                spatial_scales: Sequence[float], sampling_ratio=2, aligned=True):
  """Deformable RoIAlign of each box on its own feature map (Dai et al. 2017, §2.2, on a pyramid).

  ``features[l]`` is ``[N, H_l, W_l, C]`` with ``spatial_scales[l]``; box ``k`` (``boxes [K, 4]``, ``box_indices
  [K]``, ``offsets [K, ph, pw, 2]``) is pooled from ``features[levels[k]]`` exactly as ``deform_roi_align`` would
  pool it there; ``levels`` ``[K]`` int outside ``[0, L)`` give 0. One gather over the concatenated maps (no
  per-level passes). Returns ``[K, ph, pw, C]``.
  """
  features = [jnp.asarray(f) for f in features]
  boxes, box_indices, levels = jnp.asarray(boxes), jnp.asarray(box_indices), jnp.asarray(levels)
  offsets = jnp.asarray(offsets)
  op = "deform_roi_align_multilevel"
  if not features or len(features) != len(spatial_scales):
    raise ValueError(f"{op}: {len(features)} feature maps for spatial_scales {tuple(spatial_scales)}")
  ph, pw = pair(output_size, "output_size")
  for f in features:
    _check_roi_args(op, f, boxes, box_indices, output_size)
  shapes = [tuple(f.shape) for f in features]
  if len({(s[0], s[3]) for s in shapes}) != 1 or len({f.dtype for f in features}) != 1:
    raise ValueError(f"{op}: feature maps must share N, C and dtype, got shapes {shapes} and dtypes "
                     f"{[str(f.dtype) for f in features]}")
  if levels.shape != box_indices.shape or not jnp.issubdtype(levels.dtype, jnp.integer):
    raise ValueError(f"{op}: levels must be [K] int like box_indices {box_indices.shape}, got {levels.shape} "
                     f"{levels.dtype}")
  _check_offsets(op, offsets, boxes, ph, pw)
  sr = _check_sampling_ratio(op, sampling_ratio)
  return _deform_roi_align_core(tuple(features), boxes, box_indices, offsets, levels,
                                tuple(float(s) for s in spatial_scales), ph, pw, sr, bool(aligned))
