"""Region-of-interest feature extraction: RoIAlign, position-sensitive RoIAlign and RoIPool (channels-last).

Semantics match torchvision's C++ kernels (see ``research/ops/README.md``). Each op has a pure-JAX reference
(differentiable, any backend, memory bounded by chunking over ROIs) and a C++ XLA FFI fast path on CPU
joined to its backward kernel with ``jax.custom_vjp``. Gradients flow to ``features`` only.

Reference formulation: bilinear RoIAlign is separable. For ROI k, output bin (i, j) is
``sum_{h,w} Wy[k,i,h] Wx[k,j,w] F[n_k,h,w,:] / count``, where ``Wy[k,i,h]`` sums the bilinear weights that
row h receives from the bin's sample rows (zero for samples outside ``[-1, H]``). The weights are computed
exactly for any (data-dependent) adaptive grid ``ceil(roi/output)`` without a static bound on the grid:
each row only sees the few samples within distance 1 of it. The contraction is two batched matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.ops import _ffi
from research.ops._util import FFI_DTYPES, HIGHEST, chunked_map, compute_dtype, exact_div, match_vma, pair

_ELEMS_PER_CHUNK = 1 << 23  # bound on the per-chunk intermediate of the references (elements)


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
def _check_roi_args(op, features, boxes, box_indices, output_size):
  if features.ndim != 4:
    raise ValueError(f"{op}: features must be [N, H, W, C], got shape {features.shape}")
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"{op}: boxes must be [K, 4] (x1, y1, x2, y2), got shape {boxes.shape}")
  if box_indices.ndim != 1 or box_indices.shape[0] != boxes.shape[0]:
    raise ValueError(f"{op}: box_indices must be [K] with K = boxes.shape[0]; got box_indices "
                     f"{box_indices.shape} for boxes {boxes.shape}")
  if not jnp.issubdtype(box_indices.dtype, jnp.integer):
    raise ValueError(f"{op}: box_indices must be integer, got {box_indices.dtype}")
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise ValueError(f"{op}: features must be floating point, got {features.dtype}")
  ph, pw = pair(output_size, "output_size")
  if ph <= 0 or pw <= 0:
    raise ValueError(f"{op}: output_size must be positive, got {(ph, pw)}")
  return ph, pw


def _pallas_probe_roi():
  from research.ops import pallas_kernels  # noqa: PLC0415 - optional, imported on first use
  return pallas_kernels.probe_roi_align()


def _path(impl, op, features, pallas=True):
  """The implementation that runs (see ``research.ops._ffi.resolve``); raises before tracing on misuse."""
  return _ffi.resolve(impl, op, features.dtype, ffi_dtypes=FFI_DTYPES,
                      pallas_probe=_pallas_probe_roi if pallas else None)


def _check_bound(op, bound):
  if int(bound) < 1:
    raise ValueError(f"{op}: adaptive_grid_bound must be a positive int, got {bound}")
  return int(bound)


# ----------------------------------------------------------------------------------------------------------
# reference: separable sampling weights
# ----------------------------------------------------------------------------------------------------------
def _axis_contrib(y, rows, size):
  """Weight that integer row(s) ``rows`` receive from samples at ``y`` (torchvision's bilinear rule, 1-D).

  A sample outside ``[-1, size]`` gives nothing; otherwise it is clamped to ``>= 0``, and a sample at or
  beyond the last row puts all its weight on row ``size - 1``.
  """
  inside = (y >= -1.0) & (y <= size)
  y = jnp.where(inside, y, 0.0)
  y = jnp.maximum(y, 0.0)
  y0 = jnp.floor(y)
  top = y0 >= size - 1
  y0 = jnp.where(top, size - 1, y0)
  ly = jnp.where(top, 0.0, y - y0)
  y1 = jnp.where(top, y0, y0 + 1)
  w = jnp.where(rows == y0, 1.0 - ly, 0.0) + jnp.where(rows == y1, ly, 0.0)
  return jnp.where(inside, w, 0.0)


def _axis_weights(start, bin_size, grid, n_bins, size, sampling_ratio):
  """[K] start, bin size and samples per bin -> [K, n_bins, size] summed sampling weights along one axis.

  Sample ``iy`` of bin ``i`` sits at ``(start + i*bin) + (iy + 0.5)*bin/grid`` (torchvision's order of
  operations). For a fixed ``sampling_ratio`` every sample is enumerated; for the adaptive grid each row
  gathers the <= 5 samples within distance 1 of it (spacing ``bin/ceil(bin) >= 1/2``), found from the row
  index, so any box size is exact without a static bound on the grid.
  """
  dt = start.dtype
  base = start[:, None] + jnp.arange(n_bins, dtype=dt)[None, :] * bin_size[:, None]  # [K, nb]
  rows = jnp.arange(size, dtype=dt)
  if sampling_ratio > 0:
    iy = jnp.arange(sampling_ratio, dtype=dt)
    y = base[..., None] + exact_div((iy + 0.5) * bin_size[:, None, None], float(sampling_ratio))  # [K, nb, S]
    return _axis_contrib(y[..., None], rows, size).sum(axis=-2)
  g = grid[:, None, None]
  g_safe = jnp.maximum(g, 1.0)
  spacing = bin_size[:, None, None] / g_safe
  centre = jnp.floor((rows - base[..., None]) / spacing - 0.5)  # [K, nb, size]
  centre = jnp.clip(jnp.nan_to_num(centre, nan=0.0, posinf=0.0, neginf=0.0), 0.0, g - 1.0)
  cand = centre[..., None] + jnp.arange(-3, 4, dtype=dt)  # [K, nb, size, 7]
  valid = (cand >= 0) & (cand < g[..., None])
  y = base[..., None, None] + exact_div((cand + 0.5) * bin_size[:, None, None, None], g_safe[..., None])
  w = _axis_contrib(y, rows[:, None], size)
  return jnp.where(valid, w, 0.0).sum(axis=-1)


def _roi_geometry(boxes, box_indices, n_images, ph, pw, spatial_scale, sampling_ratio, aligned, dt):
  """Scaled ROI start/bin sizes/grid per axis, 1/count and a validity mask (NaN box or bad index -> 0)."""
  boxes = jax.lax.stop_gradient(boxes.astype(dt))
  valid = jnp.all(jnp.isfinite(boxes), axis=-1) & (box_indices >= 0) & (box_indices < n_images)
  boxes = jnp.where(valid[:, None], boxes, 0.0)
  off = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = [boxes[:, i] * jnp.asarray(spatial_scale, dt) - off for i in range(4)]
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = jnp.maximum(rw, 1.0), jnp.maximum(rh, 1.0)
  bin_h, bin_w = exact_div(rh, float(ph)), exact_div(rw, float(pw))
  if sampling_ratio > 0:
    gh = gw = jnp.full_like(rh, float(sampling_ratio))
  else:
    gh, gw = jnp.ceil(bin_h), jnp.ceil(bin_w)
  inv_count = jnp.where(valid, 1.0 / jnp.maximum(gh * gw, 1.0), 0.0)
  return (y1, bin_h, gh), (x1, bin_w, gw), inv_count


def _separable_weights(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned):
  n, h, w, _ = features.shape
  dt = compute_dtype(features.dtype)
  (y1, bh, gh), (x1, bw, gw), inv_count = _roi_geometry(
      boxes, box_indices, n, ph, pw, spatial_scale, sampling_ratio, aligned, dt)
  wy = _axis_weights(y1, bh, gh, ph, h, sampling_ratio)  # [K, ph, H]
  wx = _axis_weights(x1, bw, gw, pw, w, sampling_ratio) * inv_count[:, None, None]  # [K, pw, W]
  onehot = (box_indices[:, None] == jnp.arange(n)[None, :]).astype(dt)  # [K, N]
  return wy, wx, onehot, dt


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _roi_align_reference(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned):
  wy, wx, onehot, dt = _separable_weights(features, boxes, box_indices, ph, pw, spatial_scale,
                                          sampling_ratio, aligned)
  f = features.astype(dt)
  _, _, w, c = features.shape

  def block(wy, wx, onehot):
    a = jnp.einsum("kih,kn->kinh", wy, onehot)
    t = jnp.einsum("kinh,nhwc->kiwc", a, f, precision=HIGHEST)
    return jnp.einsum("kjw,kiwc->kijc", wx, t, precision=HIGHEST)

  chunk = max(1, _ELEMS_PER_CHUNK // (ph * w * c))
  out = chunked_map(block, (wy, wx, onehot), boxes.shape[0], chunk)
  return out.astype(features.dtype)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _ps_roi_align_reference(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio):
  wy, wx, onehot, dt = _separable_weights(features, boxes, box_indices, ph, pw, spatial_scale,
                                          sampling_ratio, True)
  n, h, w, c = features.shape
  co = c // (ph * pw)
  f = features.astype(dt).reshape(n, h, w, co, ph, pw)  # c_in = (c_out*ph + i)*pw + j

  def block(wy, wx, onehot):
    a = jnp.einsum("kih,kn->kinh", wy, onehot)
    t = jnp.einsum("kinh,nhwcij->kiwcj", a, f, precision=HIGHEST)
    return jnp.einsum("kjw,kiwcj->kijc", wx, t, precision=HIGHEST)

  chunk = max(1, _ELEMS_PER_CHUNK // (ph * w * co * pw))
  out = chunked_map(block, (wy, wx, onehot), boxes.shape[0], chunk)
  return out.astype(features.dtype)


# ----------------------------------------------------------------------------------------------------------
# XLA path: gathers of the 4 bilinear corners of each sample (cost ~ K*ph*pw*samples*C, not ~ H*W)
# ----------------------------------------------------------------------------------------------------------
ADAPTIVE_GRID_BOUND = 4  # default static bound on the adaptive grid per bin and axis (see roi_align)


def _axis_taps(start, bin_size, grid, n_bins, size, sampling_ratio, bound):
  """[K] start, bin size, samples per bin -> rows ``[K, nb, G, 2]`` int32 and weights ``[K, nb, G, 2]``.

  ``G`` is ``sampling_ratio`` or the static ``bound`` on the adaptive grid; samples ``iy >= grid`` get weight 0.
  The two taps are the bilinear corners ``floor(y)`` and ``floor(y) + 1`` under torchvision's rules (see
  ``_axis_contrib``): samples outside ``[-1, size]`` give nothing, ``y`` is clamped to ``>= 0``, and a sample at
  or beyond the last row puts all its weight on row ``size - 1``.
  """
  dt = start.dtype
  base = start[:, None] + jnp.arange(n_bins, dtype=dt)[None, :] * bin_size[:, None]  # [K, nb]
  if sampling_ratio > 0:
    iy = jnp.arange(sampling_ratio, dtype=dt)
    y = base[..., None] + exact_div((iy + 0.5) * bin_size[:, None, None], float(sampling_ratio))
    used = jnp.ones(y.shape, bool)
  else:
    iy = jnp.arange(bound, dtype=dt)
    g = jnp.maximum(grid, 1.0)[:, None, None]
    y = base[..., None] + exact_div((iy + 0.5) * bin_size[:, None, None], g)
    used = iy < grid[:, None, None]
  inside = used & (y >= -1.0) & (y <= size)
  y = jnp.maximum(jnp.where(inside, y, 0.0), 0.0)
  y0 = jnp.floor(y)
  top = y0 >= size - 1
  y0 = jnp.where(top, size - 1, y0)
  ly = jnp.where(top, 0.0, y - y0)
  y1 = jnp.where(top, y0, y0 + 1)
  rows = jnp.stack([y0, y1], axis=-1).astype(jnp.int32)
  wts = jnp.where(inside[..., None], jnp.stack([1.0 - ly, ly], axis=-1), 0.0)
  return rows, wts


def _axis_window(start, bin_size, grid, n_bins, size, win):
  """Adaptive grid: per bin, the first row ``r0 [K, nb]`` of a window of ``win`` rows and the summed sampling
  weights ``[K, nb, win]`` those rows receive (rows past the map get 0).

  Bin ``i``'s samples lie in ``(base, base + bin)`` with ``bin <= grid``, so they touch rows
  ``floor(max(base, 0)) .. floor(base + bin) + 1``: at most ``grid + 2`` rows. The weights are those of
  ``_axis_weights`` (each row gathers the <= 5 samples within distance 1 of it), on the window's rows only.
  """
  dt = start.dtype
  base = start[:, None] + jnp.arange(n_bins, dtype=dt)[None, :] * bin_size[:, None]  # [K, nb]
  r0 = jnp.clip(jnp.floor(jnp.maximum(base, 0.0)), 0, size - 1)
  rows = r0[..., None] + jnp.arange(win, dtype=dt)  # [K, nb, win]
  g = grid[:, None, None]
  g_safe = jnp.maximum(g, 1.0)
  spacing = bin_size[:, None, None] / g_safe
  centre = jnp.floor((rows - base[..., None]) / spacing - 0.5)
  centre = jnp.clip(jnp.nan_to_num(centre, nan=0.0, posinf=0.0, neginf=0.0), 0.0, g - 1.0)
  cand = centre[..., None] + jnp.arange(-3, 4, dtype=dt)  # [K, nb, win, 7]
  valid = (cand >= 0) & (cand < g[..., None])
  y = base[..., None, None] + exact_div((cand + 0.5) * bin_size[:, None, None, None], g_safe[..., None])
  wts = jnp.where(valid, _axis_contrib(y, rows[..., None], size), 0.0).sum(axis=-1)
  return r0.astype(jnp.int32), wts


def _window_pool(flat, r0y, wy, r0x, wx, n_idx, inv_count, h, w, ps):
  """Separable weights on a window per bin: ``[k, ph, win]`` x ``[k, pw, win]`` -> ``[k, ph, pw, C]``."""
  k, ph, win = wy.shape
  pw = wx.shape[1]
  ry = jnp.minimum(r0y[..., None] + jnp.arange(win), h - 1)  # [k, ph, win] (clamped rows carry weight 0)
  rx = jnp.minimum(r0x[..., None] + jnp.arange(win), w - 1)
  pix = (n_idx[:, None, None, None, None] * h + ry[:, :, None, :, None]) * w + rx[:, None, :, None, :]
  if ps:
    ij = (jnp.arange(ph)[:, None] * pw + jnp.arange(pw)[None, :])[None, :, :, None, None]
    pix = pix * (ph * pw) + ij
  vals = flat[pix]  # [k, ph, pw, win, win, C]
  wgt = wy[:, :, None, :, None] * wx[:, None, :, None, :] * inv_count[:, None, None, None, None]
  return jnp.einsum("kijtu,kijtuc->kijc", wgt, vals, precision=HIGHEST)


def _gather_pool(flat, rows_y, wy, rows_x, wx, n_idx, inv_count, h, w, ps):
  """Weighted 4-corner gather for a chunk of ROIs.

  flat ``[N*H*W, C]`` (or ``[N*H*W*ph*pw, C_out]`` when ``ps``), rows/weights ``[k, ph, G, 2]`` / ``[k, pw, G, 2]``
  -> ``[k, ph, pw, C]``.
  """
  k, ph = rows_y.shape[:2]
  pw = rows_x.shape[1]
  pix = (n_idx[:, None, None, None, None, None, None] * h + rows_y[:, :, None, :, :, None, None]) * w \
      + rows_x[:, None, :, None, None, :, :]  # [k, ph, pw, Gy, 2, Gx, 2]
  if ps:  # channel block (i, j) of the position-sensitive layout
    ij = (jnp.arange(ph)[:, None] * pw + jnp.arange(pw)[None, :])[None, :, :, None, None, None, None]
    pix = pix * (ph * pw) + ij
  wgt = wy[:, :, None, :, :, None, None] * wx[:, None, :, None, None, :, :] * inv_count[:, None, None, None, None,
                                                                                         None, None]
  vals = flat[pix]  # [k, ph, pw, Gy, 2, Gx, 2, C]
  return jnp.einsum("kijyaxb,kijyaxbc->kijc", wgt, vals, precision=HIGHEST)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8, 9, 10))
def _roi_align_xla(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, ps, bound,
                   fallback=True):
  """Fixed grid: 4-corner gathers per sample. Adaptive grid (bounded by ``bound``): separable weights on a
  ``(bound + 2)^2`` window of cells per bin. ``fallback=False`` drops the exact ``lax.cond`` branch (for counting
  the gather path's cost alone; wrong for grids beyond the bound)."""
  n, h, w, c = features.shape
  dt = compute_dtype(features.dtype)
  (y1, bh, gh), (x1, bw, gw), inv_count = _roi_geometry(
      boxes, box_indices, n, ph, pw, spatial_scale, sampling_ratio, aligned, dt)
  n_idx = jnp.clip(box_indices, 0, n - 1).astype(jnp.int32)
  if ps:
    co = c // (ph * pw)
    flat = features.astype(dt).reshape(n, h, w, co, ph * pw).transpose(0, 1, 2, 4, 3).reshape(n * h * w * ph * pw, co)
  else:
    co = c
    flat = features.astype(dt).reshape(n * h * w, c)
  if sampling_ratio > 0:  # fixed grid: the 4 bilinear corners of each of the S x S samples
    g = sampling_ratio
    ry, wy = _axis_taps(y1, bh, gh, ph, h, sampling_ratio, g)
    rx, wx = _axis_taps(x1, bw, gw, pw, w, sampling_ratio, g)
    pool, per_roi = _gather_pool, ph * pw * g * g * 4 * co
  else:  # adaptive grid <= bound: summed weights on a (bound + 2)^2 window per bin (<= 4 bound^2 corners)
    win = bound + 2
    ry, wy = _axis_window(y1, bh, gh, ph, h, win)
    rx, wx = _axis_window(x1, bw, gw, pw, w, win)
    pool, per_roi = _window_pool, ph * pw * win * win * co
  chunk = max(1, _ELEMS_PER_CHUNK // per_roi)
  out = chunked_map(lambda *a: pool(flat, *a, h, w, ps), (ry, wy, rx, wx, n_idx, inv_count),
                    boxes.shape[0], chunk)
  if sampling_ratio <= 0 and fallback:  # a grid beyond the static bound: the exact separable path for this call
    over = jnp.any((inv_count > 0) & ((gh > bound) | (gw > bound)))
    exact = ((lambda: _ps_roi_align_reference(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio))
             if ps else
             (lambda: _roi_align_reference(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio,
                                           aligned)))
    out = jax.lax.cond(over, lambda: exact().astype(dt), lambda: out)
  return out.astype(features.dtype)


# ----------------------------------------------------------------------------------------------------------
# FFI path
# ----------------------------------------------------------------------------------------------------------
def _roi_attrs(ph, pw, spatial_scale, sampling_ratio, aligned, mode):
  return dict(pooled_h=np.int32(ph), pooled_w=np.int32(pw), spatial_scale=np.float32(spatial_scale),
              sampling_ratio=np.int32(sampling_ratio), aligned=bool(aligned), mode=np.int32(mode))


_MODE_ALIGN, _MODE_PS = 0, 1


def _roi_align_ffi_call(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode):
  k = boxes.shape[0]
  c = features.shape[-1] // (ph * pw) if mode == _MODE_PS else features.shape[-1]
  out = jax.ShapeDtypeStruct((k, ph, pw, c), features.dtype)
  call = jax.ffi.ffi_call(_ffi.target("roi_align_fwd"), out, vmap_method="broadcast_all")
  return call(features, boxes.astype(jnp.float32), box_indices.astype(jnp.int32),
              **_roi_attrs(ph, pw, spatial_scale, sampling_ratio, aligned, mode))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _roi_align_ffi(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode):
  return _roi_align_ffi_call(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode)


def _roi_align_ffi_fwd(features, boxes, box_indices, *static):
  return _roi_align_ffi_call(features, boxes, box_indices, *static), (features, boxes, box_indices)


def _roi_align_ffi_bwd(ph, pw, spatial_scale, sampling_ratio, aligned, mode, res, g):
  features, boxes, box_indices = res
  out = jax.ShapeDtypeStruct(features.shape, features.dtype)
  call = jax.ffi.ffi_call(_ffi.target("roi_align_bwd"), out, vmap_method="broadcast_all")
  gf = call(g, boxes.astype(jnp.float32), box_indices.astype(jnp.int32),
            **_roi_attrs(ph, pw, spatial_scale, sampling_ratio, aligned, mode))
  return match_vma((gf, None, None), res)


_roi_align_ffi.defvjp(_roi_align_ffi_fwd, _roi_align_ffi_bwd)


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def roi_align(features, boxes, box_indices, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
              aligned=True, impl="auto", adaptive_grid_bound=ADAPTIVE_GRID_BOUND):
  """RoIAlign (He et al. 2017, Mask R-CNN): bilinear average pooling of each box into a fixed grid.

  Args:
    features: ``[N, H, W, C]`` float32/bfloat16/float16 (float64 on the reference path).
    boxes: ``[K, 4]`` as (x1, y1, x2, y2) in input coordinates; scaled by ``spatial_scale``.
    box_indices: ``[K]`` int, the image of each box. Out-of-range indices and non-finite boxes give 0.
    output_size: ``(ph, pw)`` or an int.
    sampling_ratio: samples per bin and axis; ``<= 0`` uses ``ceil(roi_size / output_size)`` per ROI.
    aligned: shift by -0.5 pixel (the Detectron2 / torchvision ``aligned=True`` convention).
    impl: "auto" | "reference" | "xla" | "ffi" | "pallas" (see ``research/ops/README.md``): "auto" runs the C++
      kernel on CPU, the Pallas kernel on GPU when it compiles there, else "xla" (4-corner gathers).
    adaptive_grid_bound: static bound on the adaptive grid per bin and axis for the "xla"/"pallas" paths. A
      call whose grid exceeds it anywhere takes the exact separable path instead (``lax.cond``; under ``vmap``
      over boxes both run), so the bound changes speed, never the result. 4 covers FPN-assigned boxes.
  Returns:
    ``[K, ph, pw, C]`` in the dtype of ``features`` (float32 accumulation).
  """
  features, boxes, box_indices = jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(box_indices)
  ph, pw = _check_roi_args("roi_align", features, boxes, box_indices, output_size)
  bound = _check_bound("roi_align", adaptive_grid_bound)
  args = (ph, pw, float(spatial_scale), int(sampling_ratio), bool(aligned))
  return _dispatch_align("roi_align", features, boxes, box_indices, args, _MODE_ALIGN, impl, bound)


def _dispatch_align(op, features, boxes, box_indices, args, mode, impl, bound):
  path = _path(impl, op, features)
  ph, pw, scale, sr, aligned = args
  if path == "ffi":
    return _roi_align_ffi(features, boxes, box_indices, ph, pw, scale, sr, aligned, mode)
  if path == "pallas":
    from research.ops import pallas_kernels  # noqa: PLC0415
    out = pallas_kernels.roi_align_pallas(features, boxes, box_indices.astype(jnp.int32), ph, pw, scale, sr,
                                          aligned, mode, interpret=jax.default_backend() == "cpu")
    return out.astype(features.dtype)
  if path == "xla":
    return _roi_align_xla(features, boxes, box_indices, ph, pw, scale, sr, aligned, mode == _MODE_PS, bound)
  if mode == _MODE_PS:
    return _ps_roi_align_reference(features, boxes, box_indices, ph, pw, scale, sr)
  return _roi_align_reference(features, boxes, box_indices, ph, pw, scale, sr, aligned)


def ps_roi_align(features, boxes, box_indices, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                 impl="auto", adaptive_grid_bound=ADAPTIVE_GRID_BOUND):
  """Position-sensitive RoIAlign (Dai et al. 2016, R-FCN, with RoIAlign sampling); always aligned.

  ``features`` ``[N, H, W, C]`` with ``C = C_out * ph * pw``; output bin (i, j) of channel ``c_out`` reads
  input channel ``(c_out * ph + i) * pw + j``. Returns ``[K, ph, pw, C_out]``. Empty grids give 0
  (torchvision divides by a zero count there). ``impl`` and ``adaptive_grid_bound`` as in ``roi_align``.
  """
  features, boxes, box_indices = jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(box_indices)
  ph, pw = _check_roi_args("ps_roi_align", features, boxes, box_indices, output_size)
  if features.shape[-1] % (ph * pw):
    raise ValueError(f"ps_roi_align: channels C={features.shape[-1]} of features {features.shape} must be "
                     f"divisible by ph*pw = {ph}*{pw}")
  bound = _check_bound("ps_roi_align", adaptive_grid_bound)
  args = (ph, pw, float(spatial_scale), int(sampling_ratio), True)
  return _dispatch_align("ps_roi_align", features, boxes, box_indices, args, _MODE_PS, impl, bound)


# ----------------------------------------------------------------------------------------------------------
# RoIPool
# ----------------------------------------------------------------------------------------------------------
def _round_half_away(x):
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _roi_pool_windows(boxes, ph, pw, spatial_scale, h, w):
  """Integer bin windows [start, end) per ROI and bin (torchvision: rounded box, floor/ceil bin edges)."""
  boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
  b = _round_half_away(boxes * jnp.float32(spatial_scale))
  x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
  rw = jnp.maximum(x2 - x1 + 1, 1.0)
  rh = jnp.maximum(y2 - y1 + 1, 1.0)

  def edges(start, size, n_bins, limit):
    binsz = exact_div(size, float(n_bins))
    i = jnp.arange(n_bins, dtype=jnp.float32)
    lo = jnp.floor(i[None] * binsz[:, None]) + start[:, None]
    hi = jnp.ceil((i[None] + 1) * binsz[:, None]) + start[:, None]
    return jnp.clip(lo, 0, limit), jnp.clip(hi, 0, limit)

  return edges(y1, rh, ph, h), edges(x1, rw, pw, w)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _roi_pool_reference(features, boxes, box_indices, ph, pw, spatial_scale):
  n, h, w, c = features.shape
  (hs, he), (ws, we) = _roi_pool_windows(boxes, ph, pw, spatial_scale, h, w)
  valid = jnp.all(jnp.isfinite(boxes), axis=-1) & (box_indices >= 0) & (box_indices < n)
  idx = jnp.clip(box_indices, 0, n - 1).astype(jnp.int32)
  lowest = jnp.finfo(jnp.float32).min
  hh, ww = jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32)

  def one(hs, he, ws, we, idx, valid):
    f = jax.lax.dynamic_index_in_dim(features, idx, keepdims=False).astype(jnp.float32)  # [H, W, C]
    fs = jax.lax.stop_gradient(jnp.where(jnp.isnan(f), -jnp.inf, f))
    colm = (ww[None] >= ws[:, None]) & (ww[None] < we[:, None])  # [pw, W]
    rowm = (hh[None] >= hs[:, None]) & (hh[None] < he[:, None])  # [ph, H]
    v = jnp.where(colm[:, None, :, None], fs[None], -jnp.inf)  # [pw, H, W, C]
    rmax = v.max(axis=2)  # [pw, H, C]
    rarg = jnp.argmax(v, axis=2)  # first w attaining the max
    u = jnp.where(rowm[:, None, :, None], rmax[None], -jnp.inf)  # [ph, pw, H, C]
    bmax = u.max(axis=2)
    harg = jnp.argmax(u, axis=2)  # [ph, pw, C]: first row attaining the max -> row-major first
    warg = jnp.take_along_axis(rarg[None], harg[:, :, None, :], axis=2)[:, :, 0, :]
    picked = f[harg, warg, jnp.arange(c)[None, None, :]]
    empty = (he <= hs)[:, None, None] | (we <= ws)[None, :, None]
    out = jnp.where(bmax > lowest, picked, lowest)
    return jnp.where(empty | ~valid, 0.0, out)

  chunk = max(1, _ELEMS_PER_CHUNK // (pw * h * w * c))
  out = chunked_map(lambda *a: jax.vmap(one)(*a), (hs, he, ws, we, idx, valid), boxes.shape[0], chunk)
  return out.astype(features.dtype)


POOL_WINDOW_BOUND = 8  # default static bound on the cells per bin and axis of RoIPool's "xla" path


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _roi_pool_xla(features, boxes, box_indices, ph, pw, spatial_scale, bound, fallback=True):
  """RoIPool by gathering each bin's window (at most ``bound`` x ``bound`` cells), masked; the first maximum
  in row-major order is picked (so the gradient goes there). A window beyond the bound anywhere in the call
  takes the exact reference path (``lax.cond``)."""
  n, h, w, c = features.shape
  (hs, he), (ws, we) = _roi_pool_windows(boxes, ph, pw, spatial_scale, h, w)  # [K, ph], [K, pw]
  valid = jnp.all(jnp.isfinite(boxes), axis=-1) & (box_indices >= 0) & (box_indices < n)
  idx = jnp.clip(box_indices, 0, n - 1).astype(jnp.int32)
  steps = jnp.arange(bound, dtype=jnp.float32)
  rows, cols = hs[..., None] + steps, ws[..., None] + steps  # [K, ph, B], [K, pw, B]
  row_ok, col_ok = rows < he[..., None], cols < we[..., None]
  flat = features.reshape(n * h * w, c)
  lowest = jnp.finfo(jnp.float32).min

  def block(rows, cols, row_ok, col_ok, idx, valid, hs, he, ws, we):
    r = jnp.clip(rows, 0, h - 1).astype(jnp.int32)
    q = jnp.clip(cols, 0, w - 1).astype(jnp.int32)
    pix = (idx[:, None, None, None, None] * h + r[:, :, None, :, None]) * w + q[:, None, :, None, :]
    k = pix.shape[0]
    vals = flat[pix.reshape(k, ph, pw, bound * bound)].astype(jnp.float32)  # [k, ph, pw, B*B, C] row-major
    ok = (row_ok[:, :, None, :, None] & col_ok[:, None, :, None, :]).reshape(k, ph, pw, bound * bound, 1)
    fs = jax.lax.stop_gradient(jnp.where(ok & ~jnp.isnan(vals), vals, -jnp.inf))
    arg = jnp.argmax(fs, axis=3)  # first maximum in row-major order
    bmax = jnp.max(fs, axis=3)
    picked = jnp.take_along_axis(vals, arg[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    out = jnp.where(bmax > lowest, picked, lowest)
    empty = (he <= hs)[:, :, None, None] | (we <= ws)[:, None, :, None]
    return jnp.where(empty | ~valid[:, None, None, None], 0.0, out)

  chunk = max(1, _ELEMS_PER_CHUNK // (ph * pw * bound * bound * c))
  out = chunked_map(block, (rows, cols, row_ok, col_ok, idx, valid, hs, he, ws, we), boxes.shape[0], chunk)
  if not fallback:  # cost counting only (see _roi_align_xla)
    return out.astype(features.dtype)
  over = jnp.any(valid & (jnp.any(he - hs > bound, axis=-1) | jnp.any(we - ws > bound, axis=-1)))
  out = jax.lax.cond(over, lambda: _roi_pool_reference(features, boxes, box_indices, ph, pw,
                                                       spatial_scale).astype(jnp.float32), lambda: out)
  return out.astype(features.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _roi_pool_ffi(features, boxes, box_indices, ph, pw, spatial_scale):
  return _roi_pool_ffi_fwd(features, boxes, box_indices, ph, pw, spatial_scale)[0]


def _roi_pool_ffi_fwd(features, boxes, box_indices, ph, pw, spatial_scale):
  k, c = boxes.shape[0], features.shape[-1]
  outs = (jax.ShapeDtypeStruct((k, ph, pw, c), features.dtype),
          jax.ShapeDtypeStruct((k, ph, pw, c), jnp.int32))
  call = jax.ffi.ffi_call(_ffi.target("roi_pool_fwd"), outs, vmap_method="broadcast_all")
  out, argmax = call(features, boxes.astype(jnp.float32), box_indices.astype(jnp.int32),
                     pooled_h=np.int32(ph), pooled_w=np.int32(pw), spatial_scale=np.float32(spatial_scale))
  return out, (features, box_indices, argmax)


def _roi_pool_ffi_bwd(ph, pw, spatial_scale, res, g):
  features, box_indices, argmax = res
  call = jax.ffi.ffi_call(_ffi.target("roi_pool_bwd"), jax.ShapeDtypeStruct(features.shape, features.dtype),
                          vmap_method="broadcast_all")
  return match_vma((call(g, box_indices.astype(jnp.int32), argmax), None, None), (features, None, None))


_roi_pool_ffi.defvjp(_roi_pool_ffi_fwd, _roi_pool_ffi_bwd)


def roi_pool(features, boxes, box_indices, output_size, *, spatial_scale=1.0, impl="auto",
             window_bound=POOL_WINDOW_BOUND):
  """RoIPool (Girshick 2015, Fast R-CNN): max over integer bins of the rounded, scaled box.

  ``features`` ``[N, H, W, C]``, ``boxes`` ``[K, 4]``, ``box_indices`` ``[K]`` -> ``[K, ph, pw, C]``.
  torchvision rules: corners rounded half away from zero, size ``max(x2 - x1 + 1, 1)``, bin edges
  ``floor(i * bin)`` / ``ceil((i + 1) * bin)`` clipped to the map, empty bins give 0, the gradient goes to
  the first maximum in row-major order. NaN features are ignored; non-finite boxes give 0.
  ``impl``: "auto" | "reference" | "xla" | "ffi" (no Pallas kernel). ``window_bound``: static bound on the cells
  per bin and axis of the "xla" path; a larger window anywhere takes the exact reference path (speed only).
  """
  features, boxes, box_indices = jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(box_indices)
  ph, pw = _check_roi_args("roi_pool", features, boxes, box_indices, output_size)
  if int(window_bound) < 1:
    raise ValueError(f"roi_pool: window_bound must be a positive int, got {window_bound}")
  path = _path(impl, "roi_pool", features, pallas=False)
  if path == "ffi":
    return _roi_pool_ffi(features, boxes, box_indices, ph, pw, float(spatial_scale))
  if path == "xla":
    return _roi_pool_xla(features, boxes, box_indices, ph, pw, float(spatial_scale), int(window_bound))
  return _roi_pool_reference(features, boxes, box_indices, ph, pw, float(spatial_scale))
