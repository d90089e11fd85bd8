"""Dense-prediction metrics: confusion matrices (mIoU, pixel accuracy, boundary accuracy), optical-flow EPE, depth RMSE.

The device side (``confusion_matrix``, ``boundary_band``, ``endpoint_error_sum``, ``squared_error_sum``) returns SUMS, so
an eval step puts them in its ``sums`` and the loop adds them over devices and processes (``Task.eval_step``); the host
side (``segmentation_scores``) turns the accumulated matrix into scores. Definitions follow Long et al. (FCN, 2015, §5):
pixel accuracy ``sum_i n_ii / sum_i t_i``, mean accuracy ``mean_i n_ii / t_i``, mean IoU
``mean_i n_ii / (t_i + sum_j n_ji - n_ii)`` over the classes present (``t_i + sum_j n_ji > 0``), frequency-weighted IoU.
Boundary ("trimap") accuracy is Kohli et al.'s / Krähenbühl & Koltun's (2011, §5): pixel accuracy restricted to a band of
``width`` pixels around the ground-truth label boundaries.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_LABEL = 255


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int, *, weight: jax.Array | None = None,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """``[C, C]`` float32 counts, rows = ground truth, columns = prediction (sklearn's convention).

  Args:
    pred: int [...] predicted class per pixel (any shape; values outside [0, C) are counted nowhere).
    label: int [...] ground truth, same shape; ``ignore_label`` (and any value outside [0, C)) is skipped.
    num_classes: C.
    weight: optional float [...] broadcastable to ``label`` (e.g. the eval batch's ``valid`` row mask [B, 1, 1] or a
      boundary band); counts are weighted by it.
  """
  if pred.shape != label.shape:
    raise ValueError(f"confusion_matrix: pred {pred.shape} and label {label.shape} must have the same shape")
  label = label.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  ok = (label >= 0) & (label < num_classes) & (label != ignore_label) & (pred >= 0) & (pred < num_classes)
  w = ok.astype(jnp.float32)
  if weight is not None:
    w = w * jnp.broadcast_to(weight, label.shape).astype(jnp.float32)
  index = jnp.where(ok, label * num_classes + pred, 0).reshape(-1)
  counts = jax.ops.segment_sum(w.reshape(-1), index, num_segments=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def boundary_band(label: jax.Array, width: int, *, ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """float32 [B, H, W]: 1 within ``width`` px (Chebyshev distance) of a ground-truth label boundary.

  A pixel is a boundary pixel when one of its 4-neighbours has another label (ignored pixels count as a label); the
  band is that set dilated by a ``(2 width + 1)^2`` square. ``label``: int [B, H, W].
  """
  if label.ndim != 3:
    raise ValueError(f"boundary_band: label must be [B, H, W], got {label.shape}")
  if width < 0:
    raise ValueError(f"boundary_band: width must be >= 0, got {width}")
  del ignore_label  # ignored pixels are a label of their own here: their border is a boundary too
  lab = label.astype(jnp.int32)
  edge = jnp.zeros(lab.shape, bool)
  edge = edge.at[:, 1:, :].set(edge[:, 1:, :] | (lab[:, 1:, :] != lab[:, :-1, :]))
  edge = edge.at[:, :-1, :].set(edge[:, :-1, :] | (lab[:, 1:, :] != lab[:, :-1, :]))
  edge = edge.at[:, :, 1:].set(edge[:, :, 1:] | (lab[:, :, 1:] != lab[:, :, :-1]))
  edge = edge.at[:, :, :-1].set(edge[:, :, :-1] | (lab[:, :, 1:] != lab[:, :, :-1]))
  k = 2 * width + 1
  band = jax.lax.reduce_window(edge.astype(jnp.float32), 0.0, jax.lax.max, (1, k, k), (1, 1, 1), "SAME")
  return band


def segmentation_scores(confusion: np.ndarray, class_names: tuple[str, ...] | None = None,
                        prefix: str = "") -> dict[str, float]:
  """Scores of an accumulated ``[C, C]`` confusion matrix (module docstring): ``pixel_accuracy``, ``mean_accuracy``,
  ``miou``, ``fw_iou`` and ``iou/<class>`` per class (NaN for a class absent from both labels and predictions)."""
  conf = np.asarray(confusion, np.float64)
  if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
    raise ValueError(f"segmentation_scores: confusion must be [C, C], got {conf.shape}")
  tp = np.diag(conf)
  truth = conf.sum(axis=1)
  predicted = conf.sum(axis=0)
  union = truth + predicted - tp
  total = conf.sum()
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = np.where(truth > 0, tp / truth, np.nan)
  present = union > 0
  out = {
      f"{prefix}pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
      f"{prefix}mean_accuracy": float(np.nanmean(acc)) if np.any(truth > 0) else float("nan"),
      f"{prefix}miou": float(np.mean(iou[present])) if present.any() else float("nan"),
      f"{prefix}fw_iou": float(np.sum(truth[present] * iou[present]) / total) if total > 0 else float("nan"),
  }
  names = class_names if class_names is not None else tuple(str(i) for i in range(conf.shape[0]))
  if len(names) != conf.shape[0]:
    raise ValueError(f"segmentation_scores: {len(names)} class names for a {conf.shape[0]}-class confusion matrix")
  for name, v in zip(names, iou):
    out[f"{prefix}iou/{name}"] = float(v)
  return out


def endpoint_error_sum(flow: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(sum of ||flow - target||_2, sum of weights)`` over pixels; flows are ``[..., 2]`` (u, v) in pixels.

  The average end-point error (Baker et al. 2011) is the ratio of the two sums; ``weight [...]`` masks pixels (e.g.
  ``valid`` rows). Differentiable (the square root has a 1e-12 floor), so it is also the EPE training loss.
  """
  if flow.shape != target.shape or flow.shape[-1] != 2:
    raise ValueError(f"endpoint_error_sum: flow {flow.shape} and target {target.shape} must match and end in 2")
  err = jnp.sqrt(jnp.sum(jnp.square(flow.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1) + 1e-12)
  w = jnp.ones(err.shape, jnp.float32) if weight is None else jnp.broadcast_to(weight, err.shape).astype(jnp.float32)
  return jnp.sum(err * w), jnp.sum(w)


def squared_error_sum(pred: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(sum of (pred - target)^2, sum of weights)``; RMSE = sqrt(ratio) (depth maps ``[B, H, W]`` or ``[B, H, W, 1]``)."""
  if pred.shape != target.shape:
    raise ValueError(f"squared_error_sum: pred {pred.shape} and target {target.shape} must have the same shape")
  se = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  w = jnp.ones(se.shape, jnp.float32) if weight is None else jnp.broadcast_to(weight, se.shape).astype(jnp.float32)
  return jnp.sum(se * w), jnp.sum(w)


def ratio(sums: Mapping[str, np.ndarray], num: str, den: str) -> float:
  """``sums[num] / sums[den]`` as a float (NaN when the denominator is 0)."""
  d = float(np.asarray(sums[den]))
  return float(np.asarray(sums[num])) / d if d > 0 else float("nan")
