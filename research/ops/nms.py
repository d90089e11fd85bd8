"""Greedy non-maximum suppression (as in Girshick et al. 2014, R-CNN; torchvision semantics).

Boxes are visited by decreasing score (stable: ties keep the lower index first; NaN scores last); a box is
dropped when its IoU with an already kept box is strictly greater than ``iou_threshold``; area is
``(x2-x1)*(y2-y1)``. ``batched_nms`` only suppresses within a class. torchvision shifts each class by an offset
to get this; here the IoU is masked by class equality instead, which is the same decision without the loss of
float precision that large offsets cause.

``nms``/``batched_nms`` return a variable-length index array and need concrete inputs; inside ``jit`` use
``nms_padded``/``batched_nms_padded``, which return ``(indices [max_output_size] padded with -1,
num_valid)``.

Paths (``impl``, resolved by ``research.ops._ffi.resolve``); all give the same indices:

* ``"reference"``: one ``lax.while_loop`` step per sorted box, each an IoU of that box against all ``N``
  (``N`` sequential ``O(N)`` steps; stops once ``max_output_size`` boxes are kept). The exactness oracle.
* ``"xla"``: the blocked IoU-bitmask algorithm of the CUDA NMS kernels (torchvision, Detectron): the
  suppression matrix ``S[i, j] = IoU(i, j) > thr & class_i == class_j & j > i`` (sorted order, packed into
  uint32 words) and a short sequential pass over blocks of 64 boxes: inside a block the kept boxes are
  resolved on a ``[64]`` vector (rounds of one ``[64, 64]`` AND/OR until nothing changes -- exact, at most
  64 rounds, one or two on detector outputs), then the kept rows are ORed into the suppressed bits of all
  later boxes with one reduction; the pass stops once ``max_output_size`` boxes are kept. The rows of a
  block are built when the pass reaches it (``O(64 N)`` memory; no IoU work after the stop); the private
  ``precompute=True`` builds all ``N^2 / 8`` bytes first with ``lax.map`` over row blocks, as the CUDA kernels
  do. ``ceil(N / 64)`` sequential steps instead of ``N``; the IoU work is the reference's, in parallel.
* ``"ffi"``: the C++ CPU kernel. ``"auto"`` takes it on CPU when the extension is built, else ``"xla"``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.ops import _ffi


def _check(op, boxes, scores, classes=None):
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"{op}: boxes must be [N, 4] (x1, y1, x2, y2), got shape {boxes.shape}")
  if scores.shape != boxes.shape[:1]:
    raise ValueError(f"{op}: scores must be [N] for boxes {boxes.shape}, got shape {scores.shape}")
  if classes is not None and classes.shape != boxes.shape[:1]:
    raise ValueError(f"{op}: classes must be [N] for boxes {boxes.shape}, got shape {classes.shape}")


@functools.partial(jax.jit, static_argnums=(4,))
def _nms_padded_reference(boxes, scores, classes, iou_threshold, max_output_size):
  n = boxes.shape[0]
  if n == 0 or max_output_size == 0:
    return jnp.full((max_output_size,), -1, jnp.int32), jnp.zeros((), jnp.int32)
  order = jnp.argsort(-scores.astype(jnp.float32), stable=True)  # NaN scores last
  b = boxes.astype(jnp.float32)[order]
  cls = classes[order]
  x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
  area = (x2 - x1) * (y2 - y1)
  pos = jnp.arange(n)
  thr = jnp.asarray(iou_threshold, jnp.float32)

  def cond(state):
    i, _, count = state
    return (i < n) & (count < max_output_size)

  def body(state):
    i, suppressed, count = state
    keep = ~suppressed[i]
    w = jnp.maximum(0.0, jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1))
    h = jnp.maximum(0.0, jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1))
    inter = w * h
    iou = inter / (area[i] + area - inter)
    hit = keep & (pos > i) & (iou > thr) & (cls == cls[i])
    return i + 1, suppressed | hit, count + keep.astype(jnp.int32)

  i_end, suppressed, count = jax.lax.while_loop(
      cond, body, (jnp.int32(0), jnp.zeros((n,), bool), jnp.int32(0)))
  kept = ~suppressed & (pos < i_end)
  slot = jnp.where(kept, jnp.cumsum(kept) - 1, max_output_size)
  out = jnp.full((max_output_size,), -1, jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
  return out, count


def _pack_bits(m):
  """``[..., 32 k]`` bool -> ``[..., k]`` uint32 (bit ``b`` of word ``w`` is column ``32 w + b``)."""
  m = m.reshape(*m.shape[:-1], m.shape[-1] // 32, 32).astype(jnp.uint32)
  return jnp.sum(m << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)  # disjoint bits: sum == OR


def _unpack_bits(w):
  """``[..., k]`` uint32 -> ``[..., 32 k]`` bool (inverse of ``_pack_bits``)."""
  bits = (w[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
  return bits.reshape(*w.shape[:-1], w.shape[-1] * 32).astype(bool)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _nms_padded_blocked(boxes, scores, classes, iou_threshold, max_output_size, block=64, precompute=False):
  """Blocked-bitmask NMS; same result as ``_nms_padded_reference`` (see the module docstring, path "xla").

  ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``classes`` ``[N]`` int32 -> ``(indices [max_output_size] int32
  padded with -1, num_valid int32)``. ``block`` (a multiple of 32) boxes per step of the sequential pass.
  """
  if block <= 0 or block % 32:
    raise ValueError(f"_nms_padded_blocked: block must be a positive multiple of 32, got {block}")
  n = boxes.shape[0]
  if n == 0 or max_output_size == 0:
    return jnp.full((max_output_size,), -1, jnp.int32), jnp.zeros((), jnp.int32)
  nb = -(-n // block)
  npad = nb * block
  wpb = block // 32  # uint32 words per block of columns
  order = jnp.argsort(-scores.astype(jnp.float32), stable=True)  # NaN scores last, as the reference
  b = jnp.pad(boxes.astype(jnp.float32)[order], ((0, npad - n), (0, 0)))
  cls = jnp.pad(classes[order], (0, npad - n))
  x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
  area = (x2 - x1) * (y2 - y1)
  pos = jnp.arange(npad)
  valid = pos < n
  thr = jnp.asarray(iou_threshold, jnp.float32)

  def row_block(r):  # packed rows [block * r, block * (r + 1)) of the suppression matrix -> [block, npad / 32]
    rows = r * block + jnp.arange(block)
    bx1, by1, bx2, by2, barea, bcls = (jax.lax.dynamic_slice_in_dim(v, r * block, block)[:, None]
                                       for v in (x1, y1, x2, y2, area, cls))
    # the same float ops, in the same order, as one step of the reference (row = the kept box)
    w = jnp.maximum(0.0, jnp.minimum(bx2, x2) - jnp.maximum(bx1, x1))
    h = jnp.maximum(0.0, jnp.minimum(by2, y2) - jnp.maximum(by1, y1))
    inter = w * h
    iou = inter / (barea + area - inter)
    hit = (iou > thr) & (bcls == cls) & (pos > rows[:, None]) & valid
    return _pack_bits(hit)

  mask = jax.lax.map(row_block, jnp.arange(nb)) if precompute else None  # [nb, block, npad / 32] uint32

  def cond(state):
    r, _, _, count = state
    return (r < nb) & (count < max_output_size)

  def body(state):
    r, sup_words, kept, count = state
    rows = mask[r] if precompute else row_block(r)  # [block, npad / 32]
    intra = _unpack_bits(jax.lax.dynamic_slice_in_dim(rows, r * wpb, wpb, axis=1))  # [block, block]
    sup = _unpack_bits(jax.lax.dynamic_slice_in_dim(sup_words, r * wpb, wpb))  # [block]
    ok = jax.lax.dynamic_slice_in_dim(valid, r * block, block)

    # Greedy inside the block: box t is kept iff no kept box s < t of the block suppresses it. Solved by rounds
    # k <- k0 & ~OR_s(k_s & intra[s]) from k = k0: intra is strictly upper triangular, so after m rounds boxes
    # 0..m are final and the first round that changes nothing has the greedy answer (at most `block` rounds;
    # one or two on typical detector outputs, instead of `block` dependent steps).
    k0 = ~sup & ok

    def round_(c):
      k, i, _ = c
      k_new = k0 & ~jnp.any(intra & k[:, None], axis=0)
      return k_new, i + 1, jnp.any(k_new != k) & (i < block)

    k, _, _ = jax.lax.while_loop(lambda c: c[2], round_, (k0, jnp.int32(0), jnp.bool_(True)))
    k = k & (count + jnp.cumsum(k, dtype=jnp.int32) <= max_output_size)  # stop at max_output_size
    hits = jax.lax.reduce(jnp.where(k[:, None], rows, jnp.uint32(0)), jnp.uint32(0), jax.lax.bitwise_or, (0,))
    kept = jax.lax.dynamic_update_slice_in_dim(kept, k, r * block, 0)
    return r + 1, sup_words | hits, kept, count + jnp.sum(k, dtype=jnp.int32)

  init = (jnp.int32(0), jnp.zeros((npad // 32,), jnp.uint32), jnp.zeros((npad,), bool), jnp.int32(0))
  _, _, kept, count = jax.lax.while_loop(cond, body, init)
  kept = kept[:n]
  slot = jnp.where(kept, jnp.cumsum(kept) - 1, max_output_size)
  out = jnp.full((max_output_size,), -1, jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
  return out, count


def _nms_padded_ffi(boxes, scores, classes, iou_threshold, max_output_size):
  outs = (jax.ShapeDtypeStruct((max_output_size,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
  call = jax.ffi.ffi_call(_ffi.target("nms"), outs, vmap_method="broadcast_all")
  return call(boxes.astype(jnp.float32), scores.astype(jnp.float32), classes.astype(jnp.int32),
              iou_threshold=np.float32(iou_threshold))


def batched_nms_padded(boxes, scores, classes, iou_threshold, max_output_size, *, impl="auto"):
  """Class-aware NMS with a static output size, usable inside ``jit``/``vmap``.

  ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``classes`` ``[N]`` int -> ``(indices [max_output_size] int32,
  num_valid int32)``; indices of kept boxes by decreasing score, padded with -1. ``impl``: "auto" | "reference"
  | "xla" | "ffi" (see the module docstring; all give the same indices).
  """
  boxes, scores, classes = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes)
  _check("batched_nms_padded", boxes, scores, classes)
  max_output_size = int(max_output_size)
  if max_output_size < 0:
    raise ValueError(f"max_output_size must be >= 0, got {max_output_size}")
  path = _ffi.resolve(impl, "nms", boxes.dtype, has_xla=True)
  if path == "ffi":
    return _nms_padded_ffi(boxes, scores, classes, float(iou_threshold), max_output_size)
  if path == "xla":
    return _nms_padded_blocked(boxes, scores, classes.astype(jnp.int32), float(iou_threshold), max_output_size)
  return _nms_padded_reference(boxes, scores, classes.astype(jnp.int32), float(iou_threshold), max_output_size)


def nms_padded(boxes, scores, iou_threshold, max_output_size, *, impl="auto"):
  """NMS with a static output size (``jit``-able): ``(indices [max_output_size] padded with -1, num_valid)``."""
  boxes = jnp.asarray(boxes)
  return batched_nms_padded(boxes, scores, jnp.zeros(boxes.shape[:1], jnp.int32), iou_threshold,
                            max_output_size, impl=impl)


def _concrete(op, *xs):
  if any(isinstance(x, jax.core.Tracer) for x in xs):
    raise ValueError(f"{op} returns a data-dependent number of indices and cannot be traced; inside jit/vmap "
                     f"use {op}_padded(..., max_output_size=...)")


def batched_nms(boxes, scores, classes, iou_threshold, *, max_output_size=None, impl="auto"):
  """Class-aware greedy NMS: ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``classes`` ``[N]`` int ->
  kept indices ``[M]`` (int32) by decreasing score, at most ``max_output_size`` of them."""
  _concrete("batched_nms", boxes, scores, classes)
  boxes = jnp.asarray(boxes)
  m = boxes.shape[0] if max_output_size is None else min(int(max_output_size), boxes.shape[0])
  idx, count = batched_nms_padded(boxes, scores, classes, iou_threshold, m, impl=impl)
  return idx[: int(count)]


def nms(boxes, scores, iou_threshold, *, max_output_size=None, impl="auto"):
  """Greedy NMS: ``boxes`` ``[N, 4]`` (x1, y1, x2, y2), ``scores`` ``[N]`` -> kept indices ``[M]`` (int32)
  by decreasing score, at most ``max_output_size``; suppression when IoU > ``iou_threshold``."""
  _concrete("nms", boxes, scores)
  boxes = jnp.asarray(boxes)
  return batched_nms(boxes, scores, jnp.zeros(boxes.shape[:1], jnp.int32), iou_threshold,
                     max_output_size=max_output_size, impl=impl)
