"""Discrete cosine transforms (types 1-4, scipy.fft semantics), the 8x8 DCT basis and JPEG quantisation (seed 003 §10).

Seed §10 introduces the DCT as a real unitary transform t_k = <u_k, s> with the basis
u_{k,n} = alpha(k) cos(pi k (2n + 1) / (2N)), alpha(0) = sqrt(1/N), alpha(k) = sqrt(2/N) (the orthonormal DCT-II),
the 2-D separable transform T = C S C^T with basis images U_{k,l} = u_k u_l^T (8x8 in JPEG), and coding by
quantising the coefficients with a table of step sizes scaled by a quality parameter.

Definitions (identical to ``scipy.fft.dct``; N the transform length, x the input, y the output, norm=None):

  type 1: y_k = x_0 + (-1)^k x_{N-1} + 2 sum_{n=1}^{N-2} x_n cos(pi k n / (N - 1))           (N >= 2)
  type 2: y_k = 2 sum_n x_n cos(pi k (2n + 1) / (2N))
  type 3: y_k = x_0 + 2 sum_{n>=1} x_n cos(pi n (2k + 1) / (2N))
  type 4: y_k = 2 sum_n x_n cos(pi (2k + 1)(2n + 1) / (4N))

``norm``: None / "backward" (as above), "ortho" (times 1 / sqrt(2M)) or "forward" (times 1 / (2M)), with M = N - 1
for type 1 and M = N otherwise. ``orthogonalize`` (default: True iff norm == "ortho", as scipy) rescales the
boundary terms so the matrix is orthonormal: type 1 multiplies x_0, x_{N-1} by sqrt(2) and divides y_0, y_{N-1} by
sqrt(2); type 2 divides y_0 by sqrt(2); type 3 multiplies x_0 by sqrt(2). The orthonormal DCT-II is exactly the
seed's u_{k,n}. ``idct(type=t, norm)`` is scipy's inverse: ``dct`` of type 1, 3, 2, 4 (for t = 1, 2, 3, 4) with
"backward" and "forward" swapped.

Implementation: lengths N <= 16 use the dense matrix (``dct_matrix``, a matmul at HIGHEST precision); longer ones
an FFT of the extended sequence (type 1: the even extension of length 2N - 2 through ``rfft``; type 2: a zero
padded length-2N ``rfft`` and a phase twiddle; type 3: its transpose through ``irfft``; type 4: a length-2N
complex FFT of the pre-twiddled input). Everything is jittable and differentiable (the FFTs have transposes).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["dct", "idct", "dctn", "idctn", "dct_matrix", "quantisation_table", "jpeg_quantise", "JpegResult",
           "psnr", "JPEG_LUMINANCE_TABLE", "JPEG_CHROMINANCE_TABLE"]

_NORMS = (None, "backward", "ortho", "forward")
_MATMUL_MAX_N = 16
_INVERSE_TYPE = {1: 1, 2: 3, 3: 2, 4: 4}
_SWAP_NORM = {"backward": "forward", "forward": "backward", "ortho": "ortho"}

# ITU-T T.81 (JPEG) Annex K, Table K.1 (luminance) and Table K.2 (chrominance), row-major (row = vertical freq.).
JPEG_LUMINANCE_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.int32)
JPEG_CHROMINANCE_TABLE = np.array([
    [17, 18, 24, 47, 99, 99, 99, 99],
    [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99],
    [47, 66, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99]], dtype=np.int32)


# ----------------------------------------------------------------------------------------------- argument checks
def _check_type_norm(fn: str, type: int, norm, orthogonalize) -> str:
  if type not in (1, 2, 3, 4) or isinstance(type, bool):
    raise ValueError(f"{fn}: type must be 1, 2, 3 or 4; got {type!r}.")
  if norm not in _NORMS:
    raise ValueError(f"{fn}: norm must be None, 'backward', 'ortho' or 'forward'; got {norm!r}.")
  if orthogonalize not in (None, True, False):
    raise ValueError(f"{fn}: orthogonalize must be None, True or False; got {orthogonalize!r}.")
  return "backward" if norm is None else norm


def _check_length(fn: str, name: str, n, type: int) -> int:
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise ValueError(f"{fn}: {name} must be a positive int; got {n!r}.")
  if type == 1 and n < 2:
    raise ValueError(f"{fn}: the type-1 DCT needs a length >= 2 (it divides by N - 1); got {name}={n}. "
                     "Use type 2, 3 or 4 for length-1 transforms.")
  return int(n)


def _as_float(x) -> jax.Array:
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    return x
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.int32)
  return x.astype(jnp.result_type(x, jnp.float32))


# ------------------------------------------------------------------------------------------------- the matrix
def _dct_matrix_np(n: int, type: int, norm: str, orthogonalize: bool) -> np.ndarray:
  """float64 numpy matrix C with dct(x) = C @ x, from the closed-form definitions (module docstring)."""
  k = np.arange(n, dtype=np.float64)[:, None]
  j = np.arange(n, dtype=np.float64)[None, :]
  if type == 1:
    w = np.full(n, 2.0)
    w[0] = w[-1] = 1.0
    c = w[None, :] * np.cos(np.pi * k * j / (n - 1))
    if orthogonalize:
      c[:, 0] *= math.sqrt(2.0)
      c[:, -1] *= math.sqrt(2.0)
      c[0, :] /= math.sqrt(2.0)
      c[-1, :] /= math.sqrt(2.0)
  elif type == 2:
    c = 2.0 * np.cos(np.pi * k * (2 * j + 1) / (2 * n))
    if orthogonalize:
      c[0, :] /= math.sqrt(2.0)
  elif type == 3:
    w = np.full(n, 2.0)
    w[0] = 1.0
    c = w[None, :] * np.cos(np.pi * j * (2 * k + 1) / (2 * n))
    if orthogonalize:
      c[:, 0] *= math.sqrt(2.0)
  else:
    c = 2.0 * np.cos(np.pi * (2 * k + 1) * (2 * j + 1) / (4 * n))
  return c * _norm_factor(n, type, norm)


def _norm_factor(n: int, type: int, norm: str) -> float:
  m = n - 1 if type == 1 else n
  return {"backward": 1.0, "ortho": 1.0 / math.sqrt(2.0 * m), "forward": 1.0 / (2.0 * m)}[norm]


def dct_matrix(n: int, type: int = 2, norm: str | None = "ortho", *, orthogonalize: bool | None = None,
               dtype=None) -> jax.Array:
  """The [n, n] matrix C of the DCT: ``dct(x, type, norm=norm) == C @ x`` for x: [n] (seed §10).

  With type=2, norm="ortho" the rows are the seed's basis vectors u_k (alpha(k) cos(pi k (2n+1) / (2N))), C is
  orthogonal (C C^T = I), and the 2-D basis images of §10 are ``U[k, l] = outer(C[k], C[l])``.
  dtype: default float64 under ``jax_enable_x64``, else float32. Built in numpy float64 from the closed forms.
  """
  norm = _check_type_norm("dct_matrix", type, norm, orthogonalize)
  n = _check_length("dct_matrix", "n", n, type)
  ortho = (norm == "ortho") if orthogonalize is None else bool(orthogonalize)
  dtype = jnp.result_type(float) if dtype is None else dtype
  return jnp.asarray(_dct_matrix_np(n, type, norm, ortho), dtype=dtype)


# ------------------------------------------------------------------------------------------- 1-D transforms
def _fft_dct_last(x: jax.Array, type: int, norm: str, ortho: bool) -> jax.Array:
  """DCT of a real array along its last axis through the FFT (module docstring)."""
  n = x.shape[-1]
  rdt = x.dtype
  cdt = jnp.complex128 if rdt == jnp.float64 else jnp.complex64
  s2 = math.sqrt(2.0)
  if type == 1:
    if ortho:
      x = x.at[..., 0].multiply(s2).at[..., -1].multiply(s2)
    ext = jnp.concatenate([x, jnp.flip(x[..., 1:n - 1], axis=-1)], axis=-1)  # even extension, length 2N - 2
    y = jnp.real(jnp.fft.rfft(ext, axis=-1))[..., :n]
    if ortho:
      y = y.at[..., 0].divide(s2).at[..., -1].divide(s2)
  elif type == 2:
    k = np.arange(n)
    tw = jnp.asarray(2.0 * np.exp(-1j * np.pi * k / (2 * n)), cdt)
    y = jnp.real(tw * jnp.fft.rfft(x, n=2 * n, axis=-1)[..., :n])
    if ortho:
      y = y.at[..., 0].divide(s2)
  elif type == 3:
    if ortho:
      x = x.at[..., 0].multiply(s2)
    k = np.arange(n)
    # irfft(d, 2N)_k = (1/2N) [d_0 + 2 sum_{n=1}^{N-1} Re(d_n e^{i pi n k / N})] with d_n = 2 x_n e^{i pi n / 2N}
    # (d_N = 0) is y_k / N.
    tw = jnp.asarray(2.0 * np.exp(1j * np.pi * k / (2 * n)), cdt)
    d = jnp.concatenate([tw * x.astype(cdt), jnp.zeros(x.shape[:-1] + (1,), cdt)], axis=-1)  # length N + 1
    y = n * jnp.fft.irfft(d, n=2 * n, axis=-1)[..., :n]
  else:
    k = np.arange(n)
    pre = jnp.asarray(np.exp(-1j * np.pi * k / (2 * n)), cdt)
    post = jnp.asarray(2.0 * np.exp(-1j * np.pi * (2 * k + 1) / (4 * n)), cdt)
    y = jnp.real(post * jnp.fft.fft(pre * x.astype(cdt), n=2 * n, axis=-1)[..., :n])
  return (y * _norm_factor(n, type, norm)).astype(rdt)


def _dct_last(x: jax.Array, type: int, norm: str, ortho: bool) -> jax.Array:
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    return lax.complex(_dct_last(jnp.real(x), type, norm, ortho), _dct_last(jnp.imag(x), type, norm, ortho))
  n = x.shape[-1]
  if n <= _MATMUL_MAX_N:
    c = jnp.asarray(_dct_matrix_np(n, type, norm, ortho), x.dtype)
    return jnp.matmul(x, c.T, precision=lax.Precision.HIGHEST)
  return _fft_dct_last(x, type, norm, ortho)


def _resize(x: jax.Array, n: int, axis: int) -> jax.Array:
  size = x.shape[axis]
  if n < size:
    return lax.slice_in_dim(x, 0, n, axis=axis)
  if n > size:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - size)
    return jnp.pad(x, pad)
  return x


def _dct_axis(fn: str, x, type: int, n, axis: int, norm, orthogonalize, inverse: bool) -> jax.Array:
  norm = _check_type_norm(fn, type, norm, orthogonalize)
  x = _as_float(x)
  if x.ndim == 0:
    raise ValueError(f"{fn}: x must have at least one axis; got a scalar (shape ()). Pass an array like [N].")
  if not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
    raise ValueError(f"{fn}: axis={axis!r} is out of range for x of shape {x.shape}.")
  axis = int(axis) % x.ndim
  if n is None:
    _check_length(fn, f"the length of axis {axis} of x (shape {x.shape})", x.shape[axis], type)
  else:
    _check_length(fn, "n", n, type)
    x = _resize(x, int(n), axis)
  ortho = (norm == "ortho") if orthogonalize is None else bool(orthogonalize)
  if inverse:
    type, norm = _INVERSE_TYPE[type], _SWAP_NORM[norm]
  y = _dct_last(jnp.moveaxis(x, axis, -1), type, norm, ortho)
  return jnp.moveaxis(y, -1, axis)


def dct(x: jax.Array, type: int = 2, n: int | None = None, axis: int = -1, norm: str | None = None, *,
        orthogonalize: bool | None = None) -> jax.Array:
  """DCT of type 1-4 along ``axis`` with exactly ``scipy.fft.dct``'s definition and scaling (module docstring).

  x: [..., N, ...] real (ints are promoted to float; complex transforms real and imaginary parts).
  n: static output length along ``axis`` (x is truncated or zero padded first, as scipy). Returns x's shape with
  ``axis`` of length n, in ``jnp.result_type(x, float32)``. Jittable (type/n/axis/norm static) and differentiable.
  """
  return _dct_axis("dct", x, type, n, axis, norm, orthogonalize, inverse=False)


def idct(x: jax.Array, type: int = 2, n: int | None = None, axis: int = -1, norm: str | None = None, *,
         orthogonalize: bool | None = None) -> jax.Array:
  """Inverse DCT (``scipy.fft.idct``): ``idct(dct(x, t, norm=nm), t, norm=nm) == x`` for every type and norm.

  x: [..., N, ...]; arguments as :func:`dct`.
  """
  return _dct_axis("idct", x, type, n, axis, norm, orthogonalize, inverse=True)


def _dctn(fn: str, x, type: int, s, axes, norm, orthogonalize, inverse: bool) -> jax.Array:
  x = _as_float(x)
  if axes is None:
    axes = tuple(range(x.ndim)) if s is None else tuple(range(x.ndim - len(s), x.ndim))
  elif isinstance(axes, (int, np.integer)):
    axes = (int(axes),)
  axes = tuple(axes)
  for a in axes:
    if not isinstance(a, (int, np.integer)) or not -x.ndim <= a < x.ndim:
      raise ValueError(f"{fn}: axes={axes!r} has an axis out of range for x of shape {x.shape}.")
  if len({a % x.ndim for a in axes}) != len(axes):
    raise ValueError(f"{fn}: axes={axes!r} repeats an axis; give each axis once.")
  if s is None:
    s = (None,) * len(axes)
  elif isinstance(s, (int, np.integer)):
    s = (int(s),)
  if len(s) != len(axes):
    raise ValueError(f"{fn}: s={tuple(s)!r} and axes={axes!r} must have the same length.")
  for a, n in zip(axes, s):
    x = _dct_axis(fn, x, type, n, a, norm, orthogonalize, inverse)
  return x


def dctn(x: jax.Array, type: int = 2, s: Sequence[int] | None = None, axes: Sequence[int] | None = None,
         norm: str | None = None, *, orthogonalize: bool | None = None) -> jax.Array:
  """Separable N-D DCT (``scipy.fft.dctn``, seed §10 "2D separable transform"): the 1-D DCT along each of ``axes``.

  x: any shape; axes: default all axes (or the last len(s)); s: static lengths per axis (truncate / zero pad).
  """
  return _dctn("dctn", x, type, s, axes, norm, orthogonalize, inverse=False)


def idctn(x: jax.Array, type: int = 2, s: Sequence[int] | None = None, axes: Sequence[int] | None = None,
          norm: str | None = None, *, orthogonalize: bool | None = None) -> jax.Array:
  """Inverse separable N-D DCT (``scipy.fft.idctn``); arguments as :func:`dctn`."""
  return _dctn("idctn", x, type, s, axes, norm, orthogonalize, inverse=True)


# ----------------------------------------------------------------------------------------------------- JPEG
def _check_quality(fn: str, quality) -> None:
  if isinstance(quality, jax.core.Tracer):
    return
  q = np.asarray(quality)
  if q.ndim != 0 or not (np.issubdtype(q.dtype, np.integer) or (np.issubdtype(q.dtype, np.floating)
                                                                and float(q) == round(float(q)))):
    raise ValueError(f"{fn}: quality must be an integer scalar in 1..100; got {quality!r}.")
  if not 1 <= int(q) <= 100:
    raise ValueError(f"{fn}: quality must be in 1..100 (IJG scale); got {int(q)}.")


def quantisation_table(quality=50, *, chroma: bool = False) -> jax.Array:
  """The [8, 8] int32 JPEG quantisation table for an IJG ``quality`` in 1..100 (libjpeg ``jpeg_quality_scaling``).

  Base table: ITU-T T.81 Annex K Table K.1 (luminance) or K.2 (``chroma=True``). Integer arithmetic as libjpeg:
  scale = 5000 // q if q < 50 else 200 - 2 q;  Q = clip((base * scale + 50) // 100, 1, 255) (baseline).
  quality 50 gives the base table itself, quality 100 all ones. ``quality`` may be traced (int).
  """
  _check_quality("quantisation_table", quality)
  q = jnp.clip(jnp.asarray(quality).astype(jnp.int32), 1, 100)
  scale = jnp.where(q < 50, 5000 // q, 200 - 2 * q)
  base = jnp.asarray(JPEG_CHROMINANCE_TABLE if chroma else JPEG_LUMINANCE_TABLE)
  return jnp.clip((base * scale + 50) // 100, 1, 255).astype(jnp.int32)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["reconstruction", "coefficients", "tables", "nonzero"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class JpegResult:
  """Result of :func:`jpeg_quantise`.

  reconstruction: the decoded image, same shape as the input ([H, W] or [H, W, 3]), float, integer valued in
    [0, 255] (rounded and clipped as a decoder writing 8-bit samples).
  coefficients: int32 quantised DCT coefficients, [Hb, Wb, 8, 8] for grayscale or [3, Hb, Wb, 8, 8] for colour
    (Y, Cb, Cr planes), Hb = ceil(H / 8), Wb = ceil(W / 8); block [i, j] covers rows 8i..8i+7, cols 8j..8j+7 and
    its [u, v] entry is the vertical frequency u, horizontal frequency v.
  tables: int32 quantisation tables used, [8, 8] (grayscale) or [2, 8, 8] (luminance, chrominance).
  nonzero: [] int32 number of nonzero quantised coefficients (a rate proxy).
  """
  reconstruction: jax.Array
  coefficients: jax.Array
  tables: jax.Array
  nonzero: jax.Array


def _round_half_away(x: jax.Array) -> jax.Array:
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _code_plane(plane: jax.Array, table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """plane: [H, W] in 0..255 (H, W multiples of 8) -> (quantised coefficients [Hb, Wb, 8, 8], decoded plane)."""
  h, w = plane.shape
  c = jnp.asarray(_dct_matrix_np(8, 2, "ortho", True), plane.dtype)
  blocks = (plane - 128.0).reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
  hp = lax.Precision.HIGHEST
  coef = jnp.einsum("uk,ijkl,vl->ijuv", c, blocks, c, precision=hp)  # T = C B C^T per block
  tq = table.astype(plane.dtype)
  q = _round_half_away(coef / tq)
  rec = jnp.einsum("uk,ijuv,vl->ijkl", c, q * tq, c, precision=hp) + 128.0  # B = C^T T C
  return q.astype(jnp.int32), rec.transpose(0, 2, 1, 3).reshape(h, w)


def jpeg_quantise(image: jax.Array, quality=50) -> JpegResult:
  """JPEG's lossy core (seed §10 "how to quantize DCT coefficients"): 8x8 block DCT, table quantisation, decode.

  image: [H, W] grayscale or [H, W, 3] RGB, values in 0..255 (uint8 or float); computed in
    ``jnp.result_type(image, float32)``.
  quality: IJG quality 1..100 (see :func:`quantisation_table`); may be traced.
  Steps: pad H, W to multiples of 8 by edge replication; (colour: RGB -> YCbCr with the JFIF matrix, chroma kept at
  full resolution, i.e. 4:4:4, no subsampling, and not rounded to 8 bits); level shift -128; orthonormal 2-D DCT-II
  per 8x8 block (:func:`dct_matrix`); divide by the table (luminance for Y, chrominance for Cb/Cr) and round half
  away from zero (as libjpeg); dequantise; inverse DCT; +128; (colour: YCbCr -> RGB); crop; round and clip to
  [0, 255]. No entropy coding: ``nonzero`` (or an entropy estimate of ``coefficients``) stands in for the rate.
  Returns a :class:`JpegResult`. Jittable (wrap with ``jax.jit``; quality may be traced).
  """
  image = jnp.asarray(image)
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3) or min(image.shape[:2]) < 1:
    raise ValueError(f"jpeg_quantise: image must be [H, W] (grayscale) or [H, W, 3] (RGB); got shape "
                     f"{image.shape}. Convert other channel layouts first.")
  _check_quality("jpeg_quantise", quality)
  dtype = jnp.result_type(image, jnp.float32)
  x = image.astype(dtype)
  h, w = x.shape[:2]
  ph, pw = -h % 8, -w % 8
  pad = [(0, ph), (0, pw)] + ([(0, 0)] if x.ndim == 3 else [])
  x = jnp.pad(x, pad, mode="edge")
  t_luma = quantisation_table(quality)
  if image.ndim == 2:
    coef, rec = _code_plane(x, t_luma)
    tables = t_luma
  else:
    t_chroma = quantisation_table(quality, chroma=True)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    ycc = [0.299 * r + 0.587 * g + 0.114 * b,
           -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0,
           0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0]
    out = [_code_plane(p, t) for p, t in zip(ycc, (t_luma, t_chroma, t_chroma))]
    coef = jnp.stack([o[0] for o in out])
    yy, cb, cr = (o[1] for o in out)
    rec = jnp.stack([yy + 1.402 * (cr - 128.0),
                     yy - 0.344136286 * (cb - 128.0) - 0.714136286 * (cr - 128.0),
                     yy + 1.772 * (cb - 128.0)], axis=-1)
    tables = jnp.stack([t_luma, t_chroma])
  rec = jnp.clip(jnp.round(rec[:h, :w]), 0, 255)
  return JpegResult(reconstruction=rec, coefficients=coef, tables=tables,
                    nonzero=jnp.sum(coef != 0).astype(jnp.int32))


def psnr(x: jax.Array, ref: jax.Array, peak: float = 255.0) -> jax.Array:
  """Peak signal-to-noise ratio 10 log10(peak^2 / mean((x - ref)^2)) in dB; x, ref: same shape. inf if equal."""
  x, ref = jnp.asarray(x), jnp.asarray(ref)
  if x.shape != ref.shape:
    raise ValueError(f"psnr: x and ref must have the same shape; got {x.shape} and {ref.shape}.")
  dtype = jnp.result_type(x, ref, jnp.float32)
  mse = jnp.mean((x.astype(dtype) - ref.astype(dtype)) ** 2)
  return 10.0 * jnp.log10(peak ** 2 / mse)
