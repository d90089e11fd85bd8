"""Multi-label tagging metrics (Audio Set's evaluation: mean average precision and ROC-AUC over classes), numpy.

* :func:`average_precision`: for one class, ``AP = sum_n (R_n - R_{n-1}) P_n`` over the DISTINCT score thresholds
  in decreasing order (tied scores form one threshold), ``P_n`` / ``R_n`` the precision / recall of predicting
  "positive" for scores ``>= threshold_n`` -- the step-wise (non-interpolated) definition.
* :func:`roc_auc`: the area under the ROC curve = the probability that a random positive scores above a random
  negative, ties counting 1/2 (Mann-Whitney U with mid-ranks).
* :func:`tagging_metrics`: ``mAP`` and ``auc`` (means over the classes where they are defined: AP needs a positive,
  AUC a positive and a negative), their per-class arrays and the number of classes used.

Scores ``[N, C]`` (any real values, e.g. probabilities), targets ``[N, C]`` in {0, 1}.
"""

from __future__ import annotations

import numpy as np


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
  """Step-wise AP of one class (module docstring); ``nan`` without positives. ``y_true``, ``scores``: [N]."""
  y = np.asarray(y_true, np.float64).reshape(-1) > 0
  s = np.asarray(scores, np.float64).reshape(-1)
  positives = int(y.sum())
  if positives == 0:
    return float("nan")
  order = np.argsort(-s, kind="mergesort")
  s, y = s[order], y[order]
  tp, fp = np.cumsum(y), np.cumsum(~y)
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last row of each group of tied scores
  precision = tp[last] / (tp[last] + fp[last])
  recall = tp[last] / positives
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _midranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of ``x`` with ties given the mean of their ranks."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  ranks = np.empty(len(x), np.float64)
  starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
  ends = np.r_[starts[1:], len(x)]
  for a, b in zip(starts, ends):
    ranks[order[a:b]] = 0.5 * (a + 1 + b)
  return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
  """ROC-AUC of one class (module docstring); ``nan`` unless both positives and negatives occur."""
  y = np.asarray(y_true, np.float64).reshape(-1) > 0
  s = np.asarray(scores, np.float64).reshape(-1)
  p, n = int(y.sum()), int((~y).sum())
  if p == 0 or n == 0:
    return float("nan")
  r = _midranks(s)
  return float((r[y].sum() - p * (p + 1) / 2) / (p * n))


def tagging_metrics(targets: np.ndarray, scores: np.ndarray) -> dict:
  """``{'mAP', 'auc', 'ap' [C], 'auc_per_class' [C], 'classes_ap', 'classes_auc'}`` of ``scores`` [N, C]."""
  targets, scores = np.asarray(targets), np.asarray(scores)
  if targets.shape != scores.shape or targets.ndim != 2:
    raise ValueError(f"targets {targets.shape} and scores {scores.shape} must both be [N, C]")
  ap = np.array([average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])
  auc = np.array([roc_auc(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])
  ok_ap, ok_auc = ~np.isnan(ap), ~np.isnan(auc)
  return {"mAP": float(ap[ok_ap].mean()) if ok_ap.any() else float("nan"),
          "auc": float(auc[ok_auc].mean()) if ok_auc.any() else float("nan"),
          "ap": ap, "auc_per_class": auc, "classes_ap": int(ok_ap.sum()), "classes_auc": int(ok_auc.sum())}


__all__ = ["average_precision", "roc_auc", "tagging_metrics"]
