"""Box arithmetic shared by every detector: areas, pairwise IoU, the R-CNN box coder, clipping.

Boxes are ``(x1, y1, x2, y2)`` in absolute continuous pixel coordinates (the frame of
``research.data.transforms``: the image covers ``[0, W] x [0, H]``), width ``x2 - x1`` (no ``+1``), as in
torchvision >= 0.3 and detectron2. All functions are jittable, broadcast over leading axes, and never divide
by zero (empty or degenerate boxes give IoU 0).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

# Largest log-scale a predicted delta may have: boxes grow at most 1000/16 = 62.5x (Girshick's
# ``bbox_xform_clip``, kept by detectron2 and torchvision).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """``[..., 4] -> [...]``; degenerate boxes (x2 < x1 or y2 < y1) have area 0."""
  return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def box_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise IoU ``[..., N, 4] x [..., M, 4] -> [..., N, M]`` (0 where the union is empty)."""
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes: jnp.ndarray, height: float, width: float) -> jnp.ndarray:
  """Clips ``[..., 4]`` boxes to the image ``[0, W] x [0, H]``."""
  x = jnp.clip(boxes[..., 0::2], 0.0, width)
  y = jnp.clip(boxes[..., 1::2], 0.0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def _centre_size(boxes):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: jnp.ndarray, anchors: jnp.ndarray,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jnp.ndarray:
  """R-CNN regression targets (Girshick et al. 2014, App. C; Ren et al. 2015, eq. 2) of ``boxes`` w.r.t.
  ``anchors`` (both ``[..., 4]``) -> ``[..., 4]`` ``(wx·dx, wy·dy, ww·dw, wh·dh)``:
  ``dx = (x - xa) / wa``, ``dy = (y - ya) / ha``, ``dw = log(w / wa)``, ``dh = log(h / ha)``.

  Anchors must have positive size; a degenerate target box gives ``-inf`` log-sizes, so callers mask such
  rows out (padding boxes) before using the result: this is where torchvision's ``BoxCoder.encode`` agrees.
  """
  wx, wy, ww, wh = weights
  ax, ay, aw, ah = _centre_size(anchors)
  gx, gy, gw, gh = _centre_size(boxes)
  aw_safe = jnp.where(aw > 0, aw, 1.0)
  ah_safe = jnp.where(ah > 0, ah, 1.0)
  return jnp.stack([wx * (gx - ax) / aw_safe, wy * (gy - ay) / ah_safe,
                    ww * jnp.log(gw / aw_safe), wh * jnp.log(gh / ah_safe)], axis=-1)


def decode_boxes(deltas: jnp.ndarray, anchors: jnp.ndarray, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = BBOX_XFORM_CLIP) -> jnp.ndarray:
  """Inverse of :func:`encode_boxes`: ``deltas [..., 4]`` applied to ``anchors [..., 4]`` -> boxes ``[..., 4]``.

  ``dw``/``dh`` are clamped to ``clip`` (``log(1000/16)``) before ``exp`` so a wild prediction cannot overflow.
  """
  wx, wy, ww, wh = weights
  ax, ay, aw, ah = _centre_size(anchors)
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clip)
  dh = jnp.minimum(deltas[..., 3] / wh, clip)
  cx, cy = dx * aw + ax, dy * ah + ay
  w, h = jnp.exp(dw) * aw, jnp.exp(dh) * ah
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_xywh(boxes: jnp.ndarray) -> jnp.ndarray:
  """``(x1, y1, x2, y2) -> (x, y, w, h)`` (COCO's box format)."""
  return jnp.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
  """``(x, y, w, h) -> (x1, y1, x2, y2)``."""
  return jnp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)
