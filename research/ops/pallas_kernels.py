"""Pallas (Triton) kernels for RoIAlign / position-sensitive RoIAlign and deformable convolution (channels-last).

* RoIAlign: He et al. 2017, "Mask R-CNN" (bilinear sampling of each box into a fixed grid, no quantisation).
* Position-sensitive RoIAlign: Dai et al. 2016, "R-FCN" (bin (i, j) reads its own channel group), with RoIAlign
  sampling.
* Deformable convolution: Dai et al. 2017, "Deformable Convolutional Networks" (v1, offsets) and Zhu et al. 2019,
  "Deformable ConvNets v2" (modulation mask).

Semantics are those of the pure-JAX references in ``research/ops/roi.py`` / ``research/ops/deform.py``
(torchvision's rules, see ``research/ops/README.md``). The kernels are written for GPU: Triton lowering
(``CompilerParams(num_warps=4)``), power-of-two blocks, masked loads/stores for ragged edges, loops with data-dependent
trip counts expressed as ``lax.fori_loop`` on traced bounds (``scf.while`` in Triton) and ``lax.cond``. On CPU they run
with ``interpret=True`` (tests only: interpret mode is slow). There are no TPU kernels.

RoIAlign
  forward: grid ``(K, channel blocks)``; a program walks the bins of its ROI and, per bin, only the sample rows /
  columns that can land in ``[-1, H]`` / ``[-1, W]`` (a conservative index range computed from the sample spacing,
  every sample in it is checked exactly). The adaptive grid ``ceil(bin)`` is a per-ROI loop bound, so any box size is
  exact without a static bound on the grid (the loop visits at most ``~2(H+1) + 4`` sample rows per bin since the
  adaptive spacing is ``>= 1/2``).
  backward: **no atomics, deterministic**. Grid ``(N, row tiles, column tiles x channel blocks [x bins for PS])``; each
  program owns a ``[TH, TW, BC]`` tile of the feature gradient, loops over all K ROIs in order, skips (``lax.cond``)
  those on other images or whose row/column extent misses the tile, and adds the separable update
  ``wy[h] * wx[w] * g[k, i, j, c] / count`` for each bin, with ``wy`` / ``wx`` the summed bilinear weights of the bin's
  samples on the tile's rows / columns. For PS-RoIAlign each bin owns its own input channels, so the bin is a grid axis.

Deformable convolution
  forward: deformable im2col kernel (grid ``(B*Ho*Wo, offset_groups x channel blocks)``, a program loops over the
  kernel taps and writes masked bilinear samples) -> columns ``[B, Ho, Wo, kh*kw, Cin]``; XLA does the grouped GEMM
  (``research.ops.deform._grouped_matmul``).
  backward: the columns are recomputed; the column and weight gradients are the GEMM's VJP (XLA). A Pallas kernel
  (grid ``(B*Ho*Wo, offset_groups)``) reduces the column gradient against the bilinear corners for the offset and
  mask gradients. The x gradient is a scatter; it is computed **without atomics, deterministically**: XLA lists every
  (output pixel, tap, corner) contribution with its target input pixel and weight, sorts them by target (stable
  ``argsort``) and a Pallas kernel with one program per (input pixel, offset group, channel block) sums its
  contiguous run of contributions in that fixed order. (Requires ``B*H*W*offset_groups`` and
  ``4*B*Ho*Wo*offset_groups*kh*kw`` < 2**31.)

Numerics: float32 accumulation (bf16/f16 inputs are cast to float32, results cast back). Sample positions use the
reference's order of operations, ``(start + i*bin) + ((s + 0.5)*bin) / grid``. In interpret mode this is IEEE
division, so results match the reference to rounding. On GPU, Triton lowers float32 ``/`` to ``div.full.f32``
(approximate, <= 2 ulp), so a sample that lands *exactly* on a validity boundary (``-1`` or ``H`` for RoIAlign) may
be classified differently from the reference; the adaptive grid size ``ceil(bin)`` and the validity of boxes are
computed in XLA (IEEE) and are not affected.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from research.ops._util import pair
from research.ops.deform import _check as _deform_check
from research.ops.deform import _grouped_matmul
from research.ops.roi import _roi_geometry

_F32 = jnp.float32
_I32 = jnp.int32
_NUM_WARPS = 4
_MAX_CHANNEL_BLOCK = 32  # channels per program (power of two)
_TILE_H, _TILE_W = 8, 16  # RoIAlign backward gradient tile (powers of two)

MODE_ALIGN, MODE_PS = 0, 1


def _pow2(n: int) -> int:
  """Smallest power of two >= n (>= 1)."""
  return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _compiler_params():
  return plgpu.CompilerParams(num_warps=_NUM_WARPS)


def _c(v):
  """A constant int32 index (interpret mode's load/store discharge needs array-typed scalar indices)."""
  return jnp.asarray(v, _I32)


# ----------------------------------------------------------------------------------------------------------
# RoIAlign: shared in-kernel helpers (scalars)
# ----------------------------------------------------------------------------------------------------------
# per-ROI table columns (float32), computed in XLA
_T_Y1, _T_BH, _T_GH, _T_X1, _T_BW, _T_GW, _T_INV, _T_VALID, _T_YLO, _T_YHI, _T_XLO, _T_XHI = range(12)
_T_COLS = 12


def _roi_table(boxes, box_indices, n_images, ph, pw, spatial_scale, sampling_ratio, aligned):
  """[K, 12] float32 per-ROI geometry (start, bin size, grid per axis, 1/count, validity, conservative row/column
  extent of the samples) and [K] int32 image indices clipped into range (invalid ROIs are flagged, not indexed)."""
  (y1, bh, gh), (x1, bw, gw), inv = _roi_geometry(boxes, box_indices, n_images, ph, pw, spatial_scale,
                                                  sampling_ratio, aligned, np.dtype(np.float32))
  b = lax.stop_gradient(boxes.astype(_F32))
  valid = jnp.all(jnp.isfinite(b), axis=-1) & (box_indices >= 0) & (box_indices < n_images)
  # every sample lies in [start, start + n_bins*bin]; it touches rows floor(y) and floor(y) + 1 after clamping
  ylo, yhi = jnp.floor(y1) - 1.0, jnp.floor(y1 + ph * bh) + 2.0
  xlo, xhi = jnp.floor(x1) - 1.0, jnp.floor(x1 + pw * bw) + 2.0
  table = jnp.stack([y1, bh, gh, x1, bw, gw, inv, valid.astype(_F32), ylo, yhi, xlo, xhi], axis=-1).astype(_F32)
  idx = jnp.clip(box_indices.astype(_I32), 0, n_images - 1)
  return table, idx


def _sample_range(base, bin_size, grid, lo, hi):
  """Sample indices ``[s0, s1)`` (int32) of ``base + (s + 0.5)*bin/grid``, ``0 <= s < grid``, that may lie in
  ``[lo, hi]``: conservative by 2 samples on each side (each visited sample is then checked exactly)."""
  step = bin_size / jnp.maximum(grid, 1.0)
  pos = step > 0
  safe = jnp.where(pos, step, 1.0)
  a = jnp.floor((lo - base) / safe - 0.5) - 2.0
  b = jnp.ceil((hi - base) / safe - 0.5) + 2.0
  s0 = jnp.where(pos, jnp.clip(a, 0.0, grid), 0.0)
  s1 = jnp.where(pos, jnp.clip(b, 0.0, grid), grid)
  return s0.astype(_I32), s1.astype(_I32)


def _sample_pos(base, s, bin_size, grid):
  """Position of sample ``s`` (torchvision's order of operations, as the reference)."""
  return base + ((s.astype(_F32) + 0.5) * bin_size) / grid


def _roi_axis(y, size):
  """torchvision's 1-D bilinear rule for one sample: (inside, low index, high index, low weight, high weight).

  Outside ``[-1, size]`` the sample gives nothing; otherwise it is clamped to ``>= 0``, and at or beyond the last
  row all its weight goes to row ``size - 1``."""
  inside = (y >= -1.0) & (y <= size)
  y = jnp.maximum(jnp.where(inside, y, 0.0), 0.0)
  y0 = jnp.floor(y)
  top = y0 >= size - 1
  y0 = jnp.where(top, size - 1.0, y0)
  ly = jnp.where(top, 0.0, y - y0)
  r0 = y0.astype(_I32)
  r1 = jnp.where(top, r0, r0 + 1)
  return inside, r0, r1, 1.0 - ly, ly


# ----------------------------------------------------------------------------------------------------------
# RoIAlign forward kernel
# ----------------------------------------------------------------------------------------------------------
def _roi_fwd_kernel(tab_ref, idx_ref, f_ref, o_ref, *, ph, pw, h, w, bc, ps):
  """One ROI x one channel block. f_ref [N, H, W, Cm, PB] (PB = ph*pw for PS, else 1), o_ref [K, ph, pw, Cm]."""
  k = pl.program_id(0)
  c0 = pl.program_id(1) * bc
  cm = (c0 + jnp.arange(bc)) < o_ref.shape[-1]
  n = idx_ref[k]
  y1, bh, gh = tab_ref[k, _c(_T_Y1)], tab_ref[k, _c(_T_BH)], tab_ref[k, _c(_T_GH)]
  x1, bw, gw = tab_ref[k, _c(_T_X1)], tab_ref[k, _c(_T_BW)], tab_ref[k, _c(_T_GW)]
  inv, valid = tab_ref[k, _c(_T_INV)], tab_ref[k, _c(_T_VALID)] > 0
  hf, wf = float(h), float(w)

  def bin_body(b, carry):
    i, j = lax.div(b, _c(pw)), lax.rem(b, _c(pw))
    pb = b if ps else _c(0)
    base_y = y1 + i.astype(_F32) * bh
    base_x = x1 + j.astype(_F32) * bw
    sy0, sy1 = _sample_range(base_y, bh, gh, -1.0, hf)
    sx0, sx1 = _sample_range(base_x, bw, gw, -1.0, wf)

    def row(sy, acc):
      iny, r0, r1, wy0, wy1 = _roi_axis(_sample_pos(base_y, sy, bh, gh), hf)

      def col(sx, acc):
        inx, q0, q1, wx0, wx1 = _roi_axis(_sample_pos(base_x, sx, bw, gw), wf)
        m = cm & iny & inx

        def ld(r, q):
          return plgpu.load(f_ref.at[n, r, q, pl.ds(c0, bc), pb], mask=m, other=0.0)

        return acc + (wy0 * wx0) * ld(r0, q0) + (wy0 * wx1) * ld(r0, q1) + (wy1 * wx0) * ld(r1, q0) + (
            wy1 * wx1) * ld(r1, q1)

      return lax.fori_loop(sx0, sx1, col, acc)

    acc = lax.fori_loop(sy0, sy1, row, jnp.zeros((bc,), _F32))
    out = jnp.where(valid, acc * inv, 0.0)
    plgpu.store(o_ref.at[k, i, j, pl.ds(c0, bc)], out, mask=cm)
    return carry

  lax.fori_loop(0, ph * pw, bin_body, _c(0))


def _roi_forward(features, table, idx, ph, pw, mode, interpret):
  n, h, w, c = features.shape
  k = table.shape[0]
  pb = ph * pw if mode == MODE_PS else 1
  cm = c // pb
  if k == 0:
    return jnp.zeros((0, ph, pw, cm), _F32)
  f = features.astype(_F32).reshape(n, h, w, cm, pb)  # PS: c_in = c_out*ph*pw + (i*pw + j)
  bc = min(_pow2(cm), _MAX_CHANNEL_BLOCK)
  kernel = functools.partial(_roi_fwd_kernel, ph=ph, pw=pw, h=h, w=w, bc=bc, ps=mode == MODE_PS)
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((k, ph, pw, cm), _F32), grid=(k, _cdiv(cm, bc)),
                        interpret=interpret, compiler_params=_compiler_params(),
                        name="roi_align_fwd")(table, idx, f)


# ----------------------------------------------------------------------------------------------------------
# RoIAlign backward kernel (deterministic, no atomics)
# ----------------------------------------------------------------------------------------------------------
def _tile_axis_weights(base, bin_size, grid, idx, t0, tsize, size):
  """[T] summed bilinear weights that indices ``idx`` (= t0 + arange(T)) receive from one bin's samples."""
  s0, s1 = _sample_range(base, bin_size, grid, t0.astype(_F32) - 1.0, (t0 + tsize).astype(_F32))

  def body(s, acc):
    inside, r0, r1, w0, w1 = _roi_axis(_sample_pos(base, s, bin_size, grid), size)
    contrib = jnp.where(idx == r0, w0, 0.0) + jnp.where(idx == r1, w1, 0.0)
    return acc + jnp.where(inside, contrib, 0.0)

  return lax.fori_loop(s0, s1, body, jnp.zeros((tsize,), _F32))


def _roi_bwd_kernel(tab_ref, idx_ref, g_ref, gf_ref, *, ph, pw, h, w, th, tw, bc, ps, n_wt, n_rois):
  """Owns gf[n, h0:h0+TH, w0:w0+TW, c-block(, bin)]; g_ref [K, ph, pw, Cm], gf_ref [N, H, W, Cm, PB]."""
  n = pl.program_id(0)
  h0 = pl.program_id(1) * th
  rest = pl.program_id(2)
  if ps:
    pbin = lax.rem(rest, _c(ph * pw))
    rest = lax.div(rest, _c(ph * pw))
    i_lo, j_lo = lax.div(pbin, _c(pw)), lax.rem(pbin, _c(pw))
    i_hi, j_hi = i_lo + 1, j_lo + 1
  else:
    pbin = _c(0)
    i_lo, j_lo, i_hi, j_hi = _c(0), _c(0), _c(ph), _c(pw)
  w0 = lax.rem(rest, _c(n_wt)) * tw
  c0 = lax.div(rest, _c(n_wt)) * bc
  rows = h0 + jnp.arange(th, dtype=_I32)
  cols = w0 + jnp.arange(tw, dtype=_I32)
  chans = c0 + jnp.arange(bc, dtype=_I32)
  cm = chans < g_ref.shape[-1]
  hf, wf = float(h), float(w)

  def roi_update(k, acc):
    y1, bh, gh = tab_ref[k, _c(_T_Y1)], tab_ref[k, _c(_T_BH)], tab_ref[k, _c(_T_GH)]
    x1, bw, gw = tab_ref[k, _c(_T_X1)], tab_ref[k, _c(_T_BW)], tab_ref[k, _c(_T_GW)]
    inv = tab_ref[k, _c(_T_INV)]

    def row_bin(i, acc):
      wy = _tile_axis_weights(y1 + i.astype(_F32) * bh, bh, gh, rows, h0, th, hf)

      def col_bin(j, acc):
        wx = _tile_axis_weights(x1 + j.astype(_F32) * bw, bw, gw, cols, w0, tw, wf)

        def add(acc):
          g = plgpu.load(g_ref.at[k, i, j, pl.ds(c0, bc)], mask=cm, other=0.0) * inv
          return acc + wy[:, None, None] * wx[None, :, None] * g[None, None, :]

        return lax.cond(jnp.sum(wx) > 0, add, lambda a: a, acc)

      return lax.cond(jnp.sum(wy) > 0, lambda a: lax.fori_loop(j_lo, j_hi, col_bin, a), lambda a: a, acc)

    return lax.fori_loop(i_lo, i_hi, row_bin, acc)

  def roi(k, acc):
    hit = (idx_ref[k] == n) & (tab_ref[k, _c(_T_VALID)] > 0)
    hit &= (tab_ref[k, _c(_T_YHI)] >= h0.astype(_F32)) & (tab_ref[k, _c(_T_YLO)] <= (h0 + th - 1).astype(_F32))
    hit &= (tab_ref[k, _c(_T_XHI)] >= w0.astype(_F32)) & (tab_ref[k, _c(_T_XLO)] <= (w0 + tw - 1).astype(_F32))
    return lax.cond(hit, functools.partial(roi_update, k), lambda a: a, acc)

  acc = lax.fori_loop(0, n_rois, roi, jnp.zeros((th, tw, bc), _F32))
  m = (rows < h)[:, None, None] & (cols < w)[None, :, None] & cm[None, None, :]
  plgpu.store(gf_ref.at[n, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, bc), pbin], acc, mask=m)


def _roi_backward(g, table, idx, feature_shape, ph, pw, mode, interpret):
  n, h, w, c = feature_shape
  k = table.shape[0]
  ps = mode == MODE_PS
  pb = ph * pw if ps else 1
  cm = c // pb
  if k == 0:
    return jnp.zeros(feature_shape, _F32)
  bc = min(_pow2(cm), _MAX_CHANNEL_BLOCK)
  th, tw = min(_TILE_H, _pow2(h)), min(_TILE_W, _pow2(w))
  n_wt = _cdiv(w, tw)
  grid = (n, _cdiv(h, th), n_wt * _cdiv(cm, bc) * pb)
  kernel = functools.partial(_roi_bwd_kernel, ph=ph, pw=pw, h=h, w=w, th=th, tw=tw, bc=bc, ps=ps, n_wt=n_wt,
                             n_rois=k)
  gf = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((n, h, w, cm, pb), _F32), grid=grid,
                      interpret=interpret, compiler_params=_compiler_params(),
                      name="roi_align_bwd")(table, idx, g.astype(_F32))
  return gf.reshape(n, h, w, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9))
def _roi_align_vjp(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode, interpret):
  return _roi_align_vjp_fwd(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode,
                            interpret)[0]


def _roi_align_vjp_fwd(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode, interpret):
  table, idx = _roi_table(boxes, box_indices, features.shape[0], ph, pw, spatial_scale, sampling_ratio, aligned)
  out = _roi_forward(features, table, idx, ph, pw, mode, interpret)
  return out, (table, idx, features.shape)


def _roi_align_vjp_bwd(ph, pw, spatial_scale, sampling_ratio, aligned, mode, interpret, res, g):
  table, idx, shape = res
  return _roi_backward(g, table, idx, shape, ph, pw, mode, interpret), None, None


_roi_align_vjp.defvjp(_roi_align_vjp_fwd, _roi_align_vjp_bwd)


def roi_align_pallas(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned, mode, *,
                     interpret=False):
  """RoIAlign (mode 0, He et al. 2017) or position-sensitive RoIAlign (mode 1, Dai et al. 2016) as Pallas kernels.

  Args:
    features: ``[N, H, W, C]`` float32/bfloat16/float16 (cast to float32; float32 accumulation).
    boxes: ``[K, 4]`` (x1, y1, x2, y2) in input coordinates, scaled by ``spatial_scale``.
    box_indices: ``[K]`` int image index. Non-finite boxes and out-of-range indices give 0.
    ph, pw: output grid. spatial_scale: float. sampling_ratio: samples per bin and axis, ``<= 0`` = adaptive
      ``ceil(roi_size / output_size)`` per ROI (exact, loop bounds are per ROI).
    aligned: -0.5 pixel shift (ignored in mode 1, which is always aligned).
    mode: 0 = RoIAlign, 1 = PS-RoIAlign (``C = C_out*ph*pw``; output channel ``c`` of bin ``(i, j)`` reads input
      channel ``(c*ph + i)*pw + j``).
    interpret: run the kernels in Pallas interpret mode (CPU testing); False = Triton on GPU.
  Returns:
    ``[K, ph, pw, C]`` (mode 0) or ``[K, ph, pw, C_out]`` (mode 1) in the dtype of ``features``. Differentiable
    w.r.t. ``features`` (deterministic backward kernel without atomics); boxes and indices get no gradient.
  """
  features, boxes, box_indices = jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(box_indices)
  ph, pw, mode = int(ph), int(pw), int(mode)
  if mode not in (MODE_ALIGN, MODE_PS):
    raise ValueError(f"roi_align_pallas: mode must be 0 (RoIAlign) or 1 (PS-RoIAlign), got {mode}")
  if features.ndim != 4 or boxes.ndim != 2 or boxes.shape[-1] != 4 or box_indices.shape != boxes.shape[:1]:
    raise ValueError(f"roi_align_pallas: expected features [N, H, W, C], boxes [K, 4], box_indices [K]; got "
                     f"{features.shape}, {boxes.shape}, {box_indices.shape}")
  if mode == MODE_PS and features.shape[-1] % (ph * pw):
    raise ValueError(f"roi_align_pallas: channels C={features.shape[-1]} of features {features.shape} must be "
                     f"divisible by ph*pw = {ph}*{pw}")
  aligned = True if mode == MODE_PS else bool(aligned)
  out = _roi_align_vjp(features.astype(_F32), boxes, box_indices.astype(_I32), ph, pw, float(spatial_scale),
                       int(sampling_ratio), aligned, mode, bool(interpret))
  return out.astype(features.dtype)


# ----------------------------------------------------------------------------------------------------------
# deformable convolution
# ----------------------------------------------------------------------------------------------------------
def _dcn_tap(off_ref, mask_ref, p, col, t, oy, ox, *, kw, stride, padding, dilation, h, w):
  """Geometry of tap ``t`` (offset column ``col``) of output pixel ``p``: (inside, row, col, ly, lx, mask, corner
  validity flags). Samples with ``y <= -1``, ``y >= H`` (same for x) are outside."""
  dy, dx = off_ref[p, col, _c(0)], off_ref[p, col, _c(1)]
  m = mask_ref[p, col]
  i, j = lax.div(t, _c(kw)), lax.rem(t, _c(kw))
  y = (oy * stride[0] - padding[0] + i * dilation[0]).astype(_F32) + dy
  x = (ox * stride[1] - padding[1] + j * dilation[1]).astype(_F32) + dx
  inside = (y > -1.0) & (y < h) & (x > -1.0) & (x < w)
  y, x = jnp.where(inside, y, 0.0), jnp.where(inside, x, 0.0)
  y0, x0 = jnp.floor(y), jnp.floor(x)
  ly, lx = y - y0, x - x0
  r, q = y0.astype(_I32), x0.astype(_I32)
  ok_r0, ok_r1 = inside & (r >= 0), inside & (r + 1 <= h - 1)
  ok_q0, ok_q1 = q >= 0, q + 1 <= w - 1
  return inside, r, q, ly, lx, m, (ok_r0 & ok_q0, ok_r0 & ok_q1, ok_r1 & ok_q0, ok_r1 & ok_q1)


def _dcn_corners(x_ref, b, r, q, ch0, bc, cm, oks):
  """The 4 bilinear corners [BC] of channels ch0 + arange(BC) (0 where a corner is outside the image)."""
  return [plgpu.load(x_ref.at[b, rr, qq, pl.ds(ch0, bc)], mask=cm & ok, other=0.0)
          for (rr, qq), ok in zip(((r, q), (r, q + 1), (r + 1, q), (r + 1, q + 1)), oks)]


def _pixel(p, ho, wo):
  return lax.div(p, _c(ho * wo)), lax.rem(lax.div(p, _c(wo)), _c(ho)), lax.rem(p, _c(wo))


def _im2col_kernel(x_ref, off_ref, mask_ref, cols_ref, *, geo, ho, wo, kk, cg, bc, ncb):
  """x [B, H, W, Cin], offset [P, og*kk, 2], mask [P, og*kk] -> cols [P, kk, Cin]; program = (pixel, group x cblock)."""
  p = pl.program_id(0)
  g, cb = lax.div(pl.program_id(1), _c(ncb)), lax.rem(pl.program_id(1), _c(ncb))
  b, oy, ox = _pixel(p, ho, wo)
  c0 = cb * bc
  cm = (c0 + jnp.arange(bc)) < cg
  ch0 = g * cg + c0

  def tap(t, carry):
    _, r, q, ly, lx, m, oks = _dcn_tap(off_ref, mask_ref, p, g * kk + t, t, oy, ox, **geo)
    v00, v01, v10, v11 = _dcn_corners(x_ref, b, r, q, ch0, bc, cm, oks)
    val = ((1.0 - ly) * (1.0 - lx)) * v00 + ((1.0 - ly) * lx) * v01 + (ly * (1.0 - lx)) * v10 + (ly * lx) * v11
    plgpu.store(cols_ref.at[p, t, pl.ds(ch0, bc)], val * m, mask=cm)
    return carry

  lax.fori_loop(0, kk, tap, _c(0))


def _offset_mask_grad_kernel(x_ref, off_ref, mask_ref, gcols_ref, goff_ref, gmask_ref, *, geo, ho, wo, kk, cg, bc,
                             ncb):
  """Offset / mask gradients of one (output pixel, offset group): reductions over the group's channels."""
  p, g = pl.program_id(0), pl.program_id(1)
  b, oy, ox = _pixel(p, ho, wo)

  def tap(t, carry):
    col = g * kk + t
    inside, r, q, ly, lx, m, oks = _dcn_tap(off_ref, mask_ref, p, col, t, oy, ox, **geo)

    def cblock(cb, sums):
      c0 = cb * bc
      cm = (c0 + jnp.arange(bc)) < cg
      ch0 = g * cg + c0
      v00, v01, v10, v11 = _dcn_corners(x_ref, b, r, q, ch0, bc, cm, oks)
      gc = plgpu.load(gcols_ref.at[p, t, pl.ds(ch0, bc)], mask=cm, other=0.0)
      val = ((1.0 - ly) * (1.0 - lx)) * v00 + ((1.0 - ly) * lx) * v01 + (ly * (1.0 - lx)) * v10 + (ly * lx) * v11
      dly = (1.0 - lx) * (v10 - v00) + lx * (v11 - v01)
      dlx = (1.0 - ly) * (v01 - v00) + ly * (v11 - v10)
      return sums[0] + jnp.sum(gc * val), sums[1] + jnp.sum(gc * dly), sums[2] + jnp.sum(gc * dlx)

    zero = jnp.zeros((), _F32)
    s_m, s_y, s_x = lax.fori_loop(0, ncb, cblock, (zero, zero, zero))
    goff_ref[p, col, _c(0)] = jnp.where(inside, m * s_y, 0.0)
    goff_ref[p, col, _c(1)] = jnp.where(inside, m * s_x, 0.0)
    gmask_ref[p, col] = s_m
    return carry

  lax.fori_loop(0, kk, tap, _c(0))


def _x_grad_kernel(starts_ref, src_ref, wts_ref, gcols_ref, gx_ref, *, og, cg, bc, ncb):
  """x gradient of one (input pixel, offset group, channel block): its run of sorted contributions, in order.
  gcols [P*kk, Cin], gx [B*H*W, Cin]."""
  qid = pl.program_id(0)
  pix, g = lax.div(qid, _c(og)), lax.rem(qid, _c(og))
  c0 = pl.program_id(1) * bc
  cm = (c0 + jnp.arange(bc)) < cg
  ch0 = g * cg + c0

  def body(s, acc):
    v = plgpu.load(gcols_ref.at[src_ref[s], pl.ds(ch0, bc)], mask=cm, other=0.0)
    return acc + wts_ref[s] * v

  acc = lax.fori_loop(starts_ref[qid], starts_ref[qid + 1], body, jnp.zeros((bc,), _F32))
  plgpu.store(gx_ref.at[pix, pl.ds(ch0, bc)], acc, mask=cm)


def _scatter_plan(offset, mask, h, w, kh, kw, stride, padding, dilation, og):
  """XLA: every (output pixel, tap, corner) contribution to the x gradient, sorted by target (input pixel, group).

  Returns run starts ``[B*H*W*og + 1]``, source column rows ``p*kk + t`` and weights ``mask*bilinear`` in sorted
  order (corners outside the image are dropped: they sort behind every run)."""
  b, ho, wo = offset.shape[:3]
  kk = kh * kw
  off = offset.reshape(b, ho, wo, og, kh, kw, 2)
  base_y = (jnp.arange(ho) * stride[0] - padding[0]).astype(_F32)[None, :, None, None, None, None]
  base_x = (jnp.arange(wo) * stride[1] - padding[1]).astype(_F32)[None, None, :, None, None, None]
  ky = (jnp.arange(kh) * dilation[0]).astype(_F32)[:, None]
  kx = (jnp.arange(kw) * dilation[1]).astype(_F32)[None, :]
  y = base_y + ky + off[..., 0]  # [B, Ho, Wo, og, kh, kw]
  x = base_x + kx + off[..., 1]
  inside = (y > -1) & (y < h) & (x > -1) & (x < w)
  y, x = jnp.where(inside, y, 0.0), jnp.where(inside, x, 0.0)
  y0, x0 = jnp.floor(y), jnp.floor(x)
  ly, lx = y - y0, x - x0
  m = mask.reshape(b, ho, wo, og, kh, kw)
  bidx = jnp.arange(b, dtype=_I32)[:, None, None, None, None, None]
  gidx = jnp.arange(og, dtype=_I32)[None, None, None, :, None, None]
  n_targets = b * h * w * og
  keys, wts = [], []
  for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
    yy, xx = (y0 + dy).astype(_I32), (x0 + dx).astype(_I32)
    ok = inside & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
    target = ((bidx * h + jnp.clip(yy, 0, h - 1)) * w + jnp.clip(xx, 0, w - 1)) * og + gidx
    keys.append(jnp.where(ok, target, n_targets))
    wts.append(wgt * m)
  keys = jnp.stack(keys, -1).reshape(-1)  # entry ((p*og + g)*kk + t)*4 + corner
  wts = jnp.stack(wts, -1).reshape(-1).astype(_F32)
  p = jnp.arange(b * ho * wo, dtype=_I32)[:, None, None, None]
  t = jnp.arange(kk, dtype=_I32)[None, None, :, None]
  src = jnp.broadcast_to(p * kk + t, (b * ho * wo, og, kk, 4)).reshape(-1)
  order = jnp.argsort(keys, stable=True)
  starts = jnp.searchsorted(keys[order], jnp.arange(n_targets + 1, dtype=keys.dtype), side="left").astype(_I32)
  return starts, src[order], wts[order]


def _im2col(x, offset, mask, kh, kw, stride, padding, dilation, og, interpret):
  """x [B, H, W, Cin] float32, offset [B, Ho, Wo, og*kk*2], mask [B, Ho, Wo, og*kk] -> cols [B*Ho*Wo, kk, Cin]."""
  b, ho, wo = offset.shape[:3]
  cin = x.shape[-1]
  kk = kh * kw
  cg = cin // og
  bc = min(_pow2(cg), _MAX_CHANNEL_BLOCK)
  ncb = _cdiv(cg, bc)
  geo = dict(kw=kw, stride=stride, padding=padding, dilation=dilation, h=x.shape[1], w=x.shape[2])
  kernel = functools.partial(_im2col_kernel, geo=geo, ho=ho, wo=wo, kk=kk, cg=cg, bc=bc, ncb=ncb)
  p = b * ho * wo
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((p, kk, cin), _F32), grid=(p, og * ncb),
                        interpret=interpret, compiler_params=_compiler_params(), name="deform_im2col")(
                            x, offset.reshape(p, og * kk, 2), mask.reshape(p, og * kk))


def _col2im(x, offset, mask, gcols, kh, kw, stride, padding, dilation, og, interpret):
  """Column gradient [P, kk, Cin] -> (x gradient [B, H, W, Cin], offset gradient, mask gradient), float32."""
  b, h, w, cin = x.shape
  ho, wo = offset.shape[1:3]
  kk = kh * kw
  cg = cin // og
  bc = min(_pow2(cg), _MAX_CHANNEL_BLOCK)
  ncb = _cdiv(cg, bc)
  p = b * ho * wo
  geo = dict(kw=kw, stride=stride, padding=padding, dilation=dilation, h=h, w=w)
  off2, mask2 = offset.reshape(p, og * kk, 2), mask.reshape(p, og * kk)
  kernel = functools.partial(_offset_mask_grad_kernel, geo=geo, ho=ho, wo=wo, kk=kk, cg=cg, bc=bc, ncb=ncb)
  goff, gmask = pl.pallas_call(
      kernel, out_shape=(jax.ShapeDtypeStruct((p, og * kk, 2), _F32), jax.ShapeDtypeStruct((p, og * kk), _F32)),
      grid=(p, og), interpret=interpret, compiler_params=_compiler_params(),
      name="deform_col2im_coord")(x, off2, mask2, gcols)
  starts, src, wts = _scatter_plan(offset, mask, h, w, kh, kw, stride, padding, dilation, og)
  kernel = functools.partial(_x_grad_kernel, og=og, cg=cg, bc=bc, ncb=ncb)
  gx = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((b * h * w, cin), _F32), grid=(b * h * w * og, ncb),
                      interpret=interpret, compiler_params=_compiler_params(), name="deform_col2im")(
                          starts, src, wts, gcols.reshape(p * kk, cin))
  return gx.reshape(x.shape), goff.reshape(offset.shape), gmask.reshape(mask.shape)


def _dcn_forward(x, offset, weight, mask, bias, stride, padding, dilation, groups, og, interpret):
  kh, kw = weight.shape[:2]
  b, ho, wo = offset.shape[:3]
  cols = _im2col(x, offset, mask, kh, kw, stride, padding, dilation, og, interpret)
  out = _grouped_matmul(cols.reshape(b, ho, wo, kh * kw, x.shape[-1]), weight, groups, _F32)
  if bias is not None:
    out = out + bias
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10))
def _dcn_vjp(x, offset, weight, mask, bias, stride, padding, dilation, groups, og, interpret):
  return _dcn_forward(x, offset, weight, mask, bias, stride, padding, dilation, groups, og, interpret)


def _dcn_vjp_fwd(x, offset, weight, mask, bias, stride, padding, dilation, groups, og, interpret):
  out = _dcn_forward(x, offset, weight, mask, bias, stride, padding, dilation, groups, og, interpret)
  return out, (x, offset, weight, mask, bias)


def _dcn_vjp_bwd(stride, padding, dilation, groups, og, interpret, res, g):
  """Columns recomputed (no column residual); GEMM VJP in XLA; Pallas col2im for x / offset / mask."""
  x, offset, weight, mask, bias = res
  kh, kw = weight.shape[:2]
  b, ho, wo = offset.shape[:3]
  cols = _im2col(x, offset, mask, kh, kw, stride, padding, dilation, og, interpret)
  cols = cols.reshape(b, ho, wo, kh * kw, x.shape[-1])
  _, gemm_vjp = jax.vjp(lambda c, w: _grouped_matmul(c, w, groups, _F32), cols, weight)
  gcols, gw = gemm_vjp(g.astype(_F32))
  gx, goff, gmask = _col2im(x, offset, mask, gcols.reshape(b * ho * wo, kh * kw, -1), kh, kw, stride, padding,
                            dilation, og, interpret)
  gb = None if bias is None else g.astype(_F32).sum(axis=(0, 1, 2))
  return gx, goff, gw, gmask, gb


_dcn_vjp.defvjp(_dcn_vjp_fwd, _dcn_vjp_bwd)


def deform_conv2d_pallas(x, offset, weight, mask, bias, stride, padding, dilation, groups, offset_groups, *,
                         interpret=False):
  """Deformable convolution v1/v2 (Dai et al. 2017; Zhu et al. 2019): Pallas deformable im2col + XLA GEMM.

  Same semantics as ``research.ops.deform._deform_conv2d_reference``.

  Args:
    x: ``[B, H, W, Cin]``.
    offset: ``[B, Ho, Wo, offset_groups*kh*kw*2]`` (dy, dx) pairs ordered (offset group, kernel row, kernel col).
    weight: HWIO ``[kh, kw, Cin/groups, Cout]``.
    mask: ``[B, Ho, Wo, offset_groups*kh*kw]`` (required; pass ones for v1).
    bias: ``[Cout]`` or None.
    stride, padding, dilation: ints or pairs. groups, offset_groups: ints.
    interpret: Pallas interpret mode (CPU testing); False = Triton on GPU.
  Returns:
    ``[B, Ho, Wo, Cout]`` in the dtype of ``x`` (float32 accumulation). Differentiable w.r.t. x, offset, weight,
    mask and bias; the backward pass uses no atomics and is deterministic.
  """
  x, offset, weight, mask = jnp.asarray(x), jnp.asarray(offset), jnp.asarray(weight), jnp.asarray(mask)
  bias = None if bias is None else jnp.asarray(bias)
  stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
  groups, offset_groups = int(groups), int(offset_groups)
  _deform_check(x, offset, weight, mask, bias, stride, padding, dilation, groups, offset_groups)
  out = _dcn_vjp(x.astype(_F32), offset.astype(_F32), weight.astype(_F32), mask.astype(_F32),
                 None if bias is None else bias.astype(_F32), stride, padding, dilation, groups, offset_groups,
                 bool(interpret))
  return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# probes (GPU): compile a tiny instance, forward and backward
# ----------------------------------------------------------------------------------------------------------
def probe_roi_align() -> bool:
  """jit + lower + compile RoIAlign and PS-RoIAlign (value and gradient) on the default backend; raises on failure."""
  f = jnp.zeros((1, 5, 6, 8), _F32)
  boxes = jnp.asarray([[0.5, 0.5, 4.0, 3.0]], _F32)
  idx = jnp.zeros((1,), _I32)
  for mode in (MODE_ALIGN, MODE_PS):
    fn = lambda f: roi_align_pallas(f, boxes, idx, 2, 2, 1.0, -1, True, mode, interpret=False).sum()
    jax.jit(jax.value_and_grad(fn)).lower(f).compile()
  return True


def probe_deform() -> bool:
  """jit + lower + compile a tiny deformable convolution (value and all gradients) on the default backend."""
  x = jnp.zeros((1, 5, 5, 4), _F32)
  offset = jnp.zeros((1, 5, 5, 18), _F32)
  mask = jnp.ones((1, 5, 5, 9), _F32)
  weight = jnp.zeros((3, 3, 4, 4), _F32)
  bias = jnp.zeros((4,), _F32)
  fn = lambda *a: deform_conv2d_pallas(a[0], a[1], a[2], a[3], a[4], 1, 1, 1, 1, 1, interpret=False).sum()
  jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3, 4))).lower(x, offset, weight, mask, bias).compile()
  return True
