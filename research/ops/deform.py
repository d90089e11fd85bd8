"""Deformable convolution v1 (Dai et al. 2017) and v2 / modulated (Zhu et al. 2019), channels-last.

``deform_conv2d`` = deformable im2col (bilinear samples at the offset kernel taps, times the mask) followed by
a (grouped) GEMM with the HWIO weight. The pure-JAX reference builds the columns with gathers, one image at a
time (``lax.map``) to bound memory; the FFI path builds them with a multi-threaded C++ kernel and lets XLA do
the GEMMs. Its backward is one C++ kernel (columns -> x, offset and mask gradients) plus XLA GEMMs for the
weight gradient and the column gradient.

Gradient at the border: a sample at exactly ``y = -1`` (or ``y = H``) is outside the image in the forward
pass, so it contributes nothing and its offset gradient is zero. torchvision returns a non-zero offset
gradient there (pytorch/vision issue 6885); we keep the gradient consistent with the forward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.ops import _ffi
from research.ops._util import FFI_DTYPES, HIGHEST, compute_dtype, match_vma, pair


def _out_size(size, k, s, p, d):
  return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _check(x, offset, weight, mask, bias, stride, padding, dilation, groups, offset_groups):
  if x.ndim != 4:
    raise ValueError(f"deform_conv2d: x must be [B, H, W, Cin], got shape {x.shape}")
  if weight.ndim != 4:
    raise ValueError(f"deform_conv2d: weight must be HWIO [kh, kw, Cin/groups, Cout], got shape {weight.shape}")
  if offset.ndim != 4:
    raise ValueError(f"deform_conv2d: offset must be [B, Ho, Wo, 2*offset_groups*kh*kw], got shape {offset.shape}")
  b, h, w, cin = x.shape
  kh, kw, cin_g, cout = weight.shape
  if groups < 1 or offset_groups < 1:
    raise ValueError(f"deform_conv2d: groups={groups} and offset_groups={offset_groups} must be >= 1")
  if cin_g * groups != cin:
    raise ValueError(f"deform_conv2d: weight {weight.shape} has Cin/groups={cin_g}, but x {x.shape} has "
                     f"Cin={cin} with groups={groups}")
  if cout % groups:
    raise ValueError(f"deform_conv2d: Cout={cout} of weight {weight.shape} is not divisible by groups={groups}")
  if cin % offset_groups:
    raise ValueError(f"deform_conv2d: Cin={cin} of x {x.shape} is not divisible by offset_groups={offset_groups}")
  sh, sw = stride
  ph, pw = padding
  dh, dw = dilation
  if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
    raise ValueError(f"deform_conv2d: bad stride={stride}, padding={padding}, dilation={dilation}")
  ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
  if ho <= 0 or wo <= 0:
    raise ValueError(f"deform_conv2d: empty output {(ho, wo)} for x {x.shape}, kernel {(kh, kw)}, "
                     f"stride={stride}, padding={padding}, dilation={dilation}")
  want = (b, ho, wo, offset_groups * kh * kw * 2)
  if tuple(offset.shape) != want:
    raise ValueError(f"deform_conv2d: offset must have shape {want} = [B, Ho, Wo, offset_groups*kh*kw*2] for "
                     f"x {x.shape} and weight {weight.shape}, got {offset.shape}")
  if mask is not None and tuple(mask.shape) != want[:3] + (offset_groups * kh * kw,):
    raise ValueError(f"deform_conv2d: mask must have shape {want[:3] + (offset_groups * kh * kw,)} "
                     f"= [B, Ho, Wo, offset_groups*kh*kw], got {mask.shape}")
  if bias is not None and tuple(bias.shape) != (cout,):
    raise ValueError(f"deform_conv2d: bias must have shape ({cout},), got {bias.shape}")
  return ho, wo


# ----------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------
def _deform_columns(x, offset, mask, kh, kw, stride, padding, dilation, og):
  """One image: x [H, W, Cin], offset [Ho, Wo, og*kh*kw*2], mask [Ho, Wo, og*kh*kw] ->
  columns [Ho, Wo, kh*kw, Cin] (masked bilinear samples, zero outside the image)."""
  h, w, cin = x.shape
  ho, wo = offset.shape[:2]
  cg = cin // og
  dt = x.dtype
  off = offset.reshape(ho, wo, og, kh, kw, 2)
  base_y = (jnp.arange(ho) * stride[0] - padding[0]).astype(dt)[:, None, None, None, None]
  base_x = (jnp.arange(wo) * stride[1] - padding[1]).astype(dt)[None, :, None, None, None]
  ky = (jnp.arange(kh) * dilation[0]).astype(dt)[None, None, None, :, None]
  kx = (jnp.arange(kw) * dilation[1]).astype(dt)[None, None, None, None, :]
  y = base_y + ky + off[..., 0]  # [Ho, Wo, og, kh, kw]
  xx = base_x + kx + off[..., 1]
  inside = (y > -1) & (y < h) & (xx > -1) & (xx < w)
  y = jnp.where(inside, y, 0.0)  # safe values keep NaN/inf out of the gradient
  xx = jnp.where(inside, xx, 0.0)
  y0, x0 = jnp.floor(y), jnp.floor(xx)
  ly, lx = y - y0, xx - x0
  xg = x.reshape(h * w, og, cg)
  gidx = jnp.arange(og)[None, None, :, None, None]
  cols = 0.0
  for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
    yy, xc = y0 + dy, x0 + dx
    ok = inside & (yy >= 0) & (yy <= h - 1) & (xc >= 0) & (xc <= w - 1)
    flat = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xc, 0, w - 1)).astype(jnp.int32)
    vals = xg[flat, gidx]  # [Ho, Wo, og, kh, kw, cg]
    cols = cols + jnp.where(ok, wgt, 0.0)[..., None] * vals
  cols = cols * mask.reshape(ho, wo, og, kh, kw)[..., None]
  return cols.transpose(0, 1, 3, 4, 2, 5).reshape(ho, wo, kh * kw, cin)


def _grouped_matmul(cols, weight, groups, out_dtype):
  """cols [..., kh*kw, Cin] x HWIO weight -> [..., Cout] (a grouped convolution as GEMMs)."""
  kh, kw, cin_g, cout = weight.shape
  lead = cols.shape[:-2]
  m = int(np.prod(lead))
  # group-major K axis: [M, groups, kh*kw*cin_g] so each group's columns are contiguous
  c = cols.reshape(m, kh * kw, groups, cin_g).transpose(0, 2, 1, 3).reshape(m, groups * kh * kw * cin_g)
  wg = weight.reshape(kh * kw, cin_g, groups, cout // groups).transpose(2, 0, 1, 3)  # [g, kk, cin_g, og]
  if groups == 1:
    out = jax.lax.dot_general(c, wg.reshape(kh * kw * cin_g, cout), (((1,), (0,)), ((), ())), precision=HIGHEST,
                              preferred_element_type=out_dtype)
  else:
    outs = [jax.lax.dot_general(cg, wg[i].reshape(kh * kw * cin_g, cout // groups), (((1,), (0,)), ((), ())),
                                precision=HIGHEST, preferred_element_type=out_dtype)
            for i, cg in enumerate(jnp.split(c, groups, axis=1))]
    out = jnp.concatenate(outs, axis=-1)
  return out.reshape(lead + (cout,))


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _deform_conv2d_reference(x, offset, weight, mask, bias, stride, padding, dilation, groups, og):
  kh, kw = weight.shape[:2]
  dt = compute_dtype(x.dtype)
  xs, offs, ms, wt = x.astype(dt), offset.astype(dt), mask.astype(dt), weight.astype(dt)

  def one(args):
    xi, oi, mi = args
    cols = _deform_columns(xi, oi, mi, kh, kw, stride, padding, dilation, og)
    return _grouped_matmul(cols, wt, groups, dt)

  out = jax.lax.map(one, (xs, offs, ms))
  if bias is not None:
    out = out + bias.astype(dt)
  return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# FFI path
# ----------------------------------------------------------------------------------------------------------
def _conv_attrs(kh, kw, stride, padding, dilation, og):
  return dict(kh=np.int32(kh), kw=np.int32(kw), stride_h=np.int32(stride[0]), stride_w=np.int32(stride[1]),
              pad_h=np.int32(padding[0]), pad_w=np.int32(padding[1]), dilation_h=np.int32(dilation[0]),
              dilation_w=np.int32(dilation[1]), offset_groups=np.int32(og))


_CHUNK_BYTES = 8 << 20  # column buffer per chunk: glibc serves < 32 MB from the heap, larger ones page-fault


def _im2col(x, offset, mask, row_offset, kh, kw, stride, padding, dilation, og):
  """x [B, H, W, Cin], offset/mask for output rows [row_offset, row_offset + R) -> columns [B, R, Wo, kk*Cin]."""
  b, r, wo = offset.shape[:3]
  out = jax.ShapeDtypeStruct((b, r, wo, kh * kw * x.shape[-1]), x.dtype)
  call = jax.ffi.ffi_call(_ffi.target("deform_im2col"), out, vmap_method="broadcast_all")
  return call(x, offset, mask, row_offset, **_conv_attrs(kh, kw, stride, padding, dilation, og))


def _col2im(gx_acc, gcols, x, offset, mask, row_offset, kh, kw, stride, padding, dilation, og):
  """Adds the x gradient of a row chunk to gx_acc (float32, updated in place); returns it with the chunk's
  offset and mask gradients."""
  outs = (jax.ShapeDtypeStruct(gx_acc.shape, jnp.float32), jax.ShapeDtypeStruct(offset.shape, jnp.float32),
          jax.ShapeDtypeStruct(mask.shape, jnp.float32))
  call = jax.ffi.ffi_call(_ffi.target("deform_col2im"), outs, vmap_method="broadcast_all",
                          input_output_aliases={0: 0})
  return call(gx_acc, gcols, x, offset, mask, row_offset, **_conv_attrs(kh, kw, stride, padding, dilation, og))


def _row_chunks(x, offset, mask, kh, kw, extra=()):
  """Splits the output rows into chunks of R rows whose column buffer is <= _CHUNK_BYTES.

  Returns (R, n_chunks, per-chunk arrays): offset, mask and ``extra`` ([B, Ho, Wo, *]) as
  [B*n_chunks, R, Wo, *] (rows zero-padded), the image index and the first row of each chunk.
  """
  b, ho, wo = offset.shape[:3]
  row_bytes = wo * kh * kw * x.shape[-1] * np.dtype(x.dtype).itemsize
  r = int(max(1, min(ho, _CHUNK_BYTES // max(1, row_bytes))))
  n = -(-ho // r)
  pad = n * r - ho

  def split(a):
    a = jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return a.reshape((b * n, r) + a.shape[2:])

  image = jnp.repeat(jnp.arange(b, dtype=jnp.int32), n)
  row0 = jnp.tile(jnp.arange(n, dtype=jnp.int32) * r, b)
  return r, n, [split(a) for a in (offset, mask) + tuple(extra)] + [image, row0]


def _unsplit(a, b, ho):
  """[B*n, R, Wo, C] -> [B, Ho, Wo, C]."""
  return a.reshape((b, -1) + a.shape[2:])[:, :ho]


def _weight_grad(cols, g, groups, kh, kw, cin_g):
  """columns [M, kk*Cin] and g [M, Cout] (float32) -> HWIO weight gradient (float32)."""
  m, cout = g.shape
  og_ = cout // groups
  c = cols.reshape(m, kh * kw, groups, cin_g)
  parts = [jax.lax.dot_general(c[:, :, i].reshape(m, kh * kw * cin_g), g[:, i * og_:(i + 1) * og_].astype(c.dtype),
                               (((0,), (0,)), ((), ())), precision=HIGHEST, preferred_element_type=jnp.float32)
           for i in range(groups)]  # [kk*cin_g, og_] each
  return jnp.concatenate([p.reshape(kh, kw, cin_g, og_) for p in parts], axis=-1)


def _cols_grad(g, weight, groups):
  """g [M, Cout] (float32) and HWIO weight -> column gradient [M, kk*Cin] (float32)."""
  kh, kw, cin_g, cout = weight.shape
  m = g.shape[0]
  og_ = cout // groups
  w = weight.astype(jnp.float32)
  parts = [jax.lax.dot_general(g[:, i * og_:(i + 1) * og_], w[..., i * og_:(i + 1) * og_].reshape(kh * kw * cin_g, og_),
                               (((1,), (1,)), ((), ())), precision=HIGHEST, preferred_element_type=jnp.float32)
           .reshape(m, kh * kw, 1, cin_g) for i in range(groups)]
  return jnp.concatenate(parts, axis=2).reshape(m, kh * kw * groups * cin_g)


def _dcn_ffi_forward(x, offset, weight, mask, bias, stride, padding, dilation, groups, og):
  """Forward in row chunks: deformable im2col (C++) + GEMM (XLA) per chunk, inside ``lax.map``."""
  kh, kw, _, cout = weight.shape
  b, ho, wo = offset.shape[:3]
  r, n, (offc, maskc, image, row0) = _row_chunks(x, offset, mask, kh, kw)
  w = weight.astype(x.dtype)

  def chunk(args):
    o, m, i, r0 = args
    xi = jax.lax.dynamic_index_in_dim(x, i, keepdims=True)
    cols = _im2col(xi, o[None], m[None], r0[None], kh, kw, stride, padding, dilation, og)
    return _grouped_matmul(cols.reshape(r, wo, kh * kw, x.shape[-1]), w, groups, jnp.float32)

  out = _unsplit(jax.lax.map(chunk, (offc, maskc, image, row0)), b, ho)
  if bias is not None:
    out = out + bias.astype(jnp.float32)
  return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _deform_conv2d_ffi(x, offset, weight, mask, bias, stride, padding, dilation, groups, og):
  return _dcn_ffi_forward(x, offset, weight, mask, bias, stride, padding, dilation, groups, og)


def _dcn_ffi_fwd(x, offset, weight, mask, bias, stride, padding, dilation, groups, og):
  out = _dcn_ffi_forward(x, offset, weight, mask, bias, stride, padding, dilation, groups, og)
  return out, (x, offset, weight, mask, bias)


def _dcn_ffi_bwd(stride, padding, dilation, groups, og, res, g):
  """Backward in the forward's row chunks: columns are recomputed (cheap) instead of stored."""
  x, offset, weight, mask, bias = res
  kh, kw, cin_g, cout = weight.shape
  b, ho, wo = offset.shape[:3]
  g32 = g.astype(jnp.float32)
  r, n, (offc, maskc, gc, image, row0) = _row_chunks(x, offset, mask, kh, kw, extra=(g32,))

  def step(carry, args):
    gx, gw = carry
    o, m, gch, i, r0 = args
    xi = jax.lax.dynamic_index_in_dim(x, i, keepdims=True)
    cols = _im2col(xi, o[None], m[None], r0[None], kh, kw, stride, padding, dilation, og)
    gflat = gch.reshape(r * wo, cout)
    gw = gw + _weight_grad(cols.reshape(r * wo, -1), gflat, groups, kh, kw, cin_g)
    gcols = _cols_grad(gflat, weight, groups).astype(x.dtype).reshape(cols.shape)
    gxi = jax.lax.dynamic_index_in_dim(gx, i, keepdims=True)
    gxi, go, gm = _col2im(gxi, gcols, xi, o[None], m[None], r0[None], kh, kw, stride, padding, dilation, og)
    gx = jax.lax.dynamic_update_index_in_dim(gx, gxi, i, 0)
    return (gx, gw), (go[0], gm[0])

  init = (jnp.zeros(x.shape, jnp.float32), jnp.zeros(weight.shape, jnp.float32))
  (gx, gw), (goff, gmask) = jax.lax.scan(step, init, (offc, maskc, gc, image, row0))
  goff = _unsplit(goff, b, ho).astype(offset.dtype)
  gmask = _unsplit(gmask, b, ho).astype(mask.dtype)
  gb = None if bias is None else g32.sum(axis=(0, 1, 2)).astype(bias.dtype)
  return match_vma((gx.astype(x.dtype), goff, gw.astype(weight.dtype), gmask, gb), res)


_deform_conv2d_ffi.defvjp(_dcn_ffi_fwd, _dcn_ffi_bwd)


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def deform_conv2d(x, offset, weight, *, mask=None, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  groups=1, offset_groups=1, impl="auto"):
  """Deformable convolution: v1 (Dai et al. 2017) without ``mask``, v2 (Zhu et al. 2019) with it.

  Args:
    x: ``[B, H, W, Cin]``.
    offset: ``[B, Ho, Wo, offset_groups*kh*kw*2]``, (dy, dx) pairs ordered (offset group, kernel row,
      kernel col); tap (i, j) of output (ho, wo) samples ``y = ho*sh - ph + i*dh + dy``,
      ``x = wo*sw - pw + j*dw + dx`` with zero padding outside the image.
    weight: HWIO ``[kh, kw, Cin/groups, Cout]``.
    mask: ``[B, Ho, Wo, offset_groups*kh*kw]`` modulation (v2), or None (all ones, v1).
    bias: ``[Cout]`` or None.
    groups: convolution groups; offset_groups: channel groups sharing one offset field
      (channel c uses group ``c // (Cin/offset_groups)``).
    impl: "auto" | "reference" | "xla" | "ffi" | "pallas": "auto" runs the C++ kernel on CPU, the Pallas
      kernel on GPU when it compiles there, else the gather-based im2col + GEMM ("xla" = "reference" here).
  Returns:
    ``[B, Ho, Wo, Cout]`` in the dtype of ``x`` (float32 accumulation for bf16/f16).
  """
  x, offset, weight = jnp.asarray(x), jnp.asarray(offset), jnp.asarray(weight)
  mask = None if mask is None else jnp.asarray(mask)
  bias = None if bias is None else jnp.asarray(bias)
  stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
  groups, offset_groups = int(groups), int(offset_groups)
  _check(x, offset, weight, mask, bias, stride, padding, dilation, groups, offset_groups)
  if mask is None:
    mask = jnp.ones(offset.shape[:3] + (offset.shape[3] // 2,), offset.dtype)
  path = _ffi.resolve(impl, "deform_conv2d", x.dtype, ffi_dtypes=FFI_DTYPES, pallas_probe=_pallas_probe)
  if path == "ffi":
    return _deform_conv2d_ffi(x, offset.astype(jnp.float32), weight, mask.astype(jnp.float32), bias, stride, padding,
                              dilation, groups, offset_groups).astype(x.dtype)
  if path == "pallas":
    from research.ops import pallas_kernels  # noqa: PLC0415 - optional, imported on first use
    return pallas_kernels.deform_conv2d_pallas(x, offset, weight, mask, bias, stride, padding, dilation, groups,
                                               offset_groups, interpret=jax.default_backend() == "cpu")
  # "reference" and "xla" are the same computation: gather-based im2col (4 corners per tap) + one GEMM per group
  return _deform_conv2d_reference(x, offset, weight, mask, bias, stride, padding, dilation, groups, offset_groups)


def _pallas_probe():
  from research.ops import pallas_kernels  # noqa: PLC0415
  return pallas_kernels.probe_deform()
