"""Greedy non-maximum suppression (as in Girshick et al. 2014, R-CNN; torchvision semantics).

Boxes are visited by decreasing score (stable: ties keep the lower index first); a box is dropped when its
IoU with an already kept box is strictly greater than ``iou_threshold``; area is ``(x2-x1)*(y2-y1)``.
``batched_nms`` only suppresses within a class. torchvision shifts each class by an offset to get this;
here the IoU is masked by class equality instead, which is the same decision without the loss of float
precision that large offsets cause.

``nms``/``batched_nms`` return a variable-length index array and need concrete inputs; inside ``jit`` use
``nms_padded``/``batched_nms_padded``, which return ``(indices [max_output_size] padded with -1,
num_valid)``.
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


def _nms_padded_ffi(boxes, scores, classes, iou_threshold, max_output_size):
  outs = (jax.ShapeDtypeStruct((max_output_size,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
  call = jax.ffi.ffi_call(_ffi.target("nms"), outs, vmap_method="broadcast_all")
  return call(boxes.astype(jnp.float32), scores.astype(jnp.float32), classes.astype(jnp.int32),
              iou_threshold=np.float32(iou_threshold))


def batched_nms_padded(boxes, scores, classes, iou_threshold, max_output_size, *, impl="auto"):
  """Class-aware NMS with a static output size, usable inside ``jit``/``vmap``.

  ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``classes`` ``[N]`` int -> ``(indices [max_output_size] int32,
  num_valid int32)``; indices of kept boxes by decreasing score, padded with -1.
  """
  boxes, scores, classes = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes)
  _check("batched_nms_padded", boxes, scores, classes)
  max_output_size = int(max_output_size)
  if max_output_size < 0:
    raise ValueError(f"max_output_size must be >= 0, got {max_output_size}")
  if _ffi.use_ffi(impl, "nms"):
    return _nms_padded_ffi(boxes, scores, classes, float(iou_threshold), max_output_size)
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
