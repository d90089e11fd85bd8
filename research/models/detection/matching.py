"""Matching anchors/proposals to ground truth and balanced sampling, with static shapes (jittable, vmappable).

``match`` follows the R-CNN family's rule (Ren et al. 2015, §3.1.2) with torchvision's ``Matcher`` codes;
``sample_balanced`` draws a fixed number of examples with at most a fixed fraction of positives (§3.1.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BELOW_LOW_THRESHOLD = -1  # negative (background)
BETWEEN_THRESHOLDS = -2   # ignored


def match(iou: jnp.ndarray, gt_valid: jnp.ndarray, high: float, low: float, *,
          allow_low_quality_matches: bool = False) -> jnp.ndarray:
  """Matched ground-truth index per prediction ``[N]`` int32 from ``iou [G, N]`` and ``gt_valid [G]`` bool.

  Prediction ``n`` gets ``argmax_g iou[g, n]`` when that IoU is ``>= high``, ``BELOW_LOW_THRESHOLD`` (-1) when it
  is ``< low`` and ``BETWEEN_THRESHOLDS`` (-2) in between. ``allow_low_quality_matches`` (RPN) also matches each
  ground truth to the predictions of highest IoU with it (ties included) -- the match they get is their own
  argmax, as in torchvision. Differences: padding ground truths (``gt_valid`` False) never match, and a ground
  truth that overlaps no prediction (best IoU 0) creates no low-quality match (in torchvision every
  prediction has IoU 0 = that ground truth's best with it, so EVERY prediction becomes a low-quality match to its
  own argmax: all predictions turn positive). With no valid
  ground truth every prediction is -1.
  """
  iou = jnp.where(gt_valid[:, None], iou, -1.0)
  best = jnp.max(iou, axis=0)
  arg = jnp.argmax(iou, axis=0).astype(jnp.int32)
  matches = jnp.where(best >= high, arg, jnp.where(best < low, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS))
  if allow_low_quality_matches:
    best_per_gt = jnp.max(iou, axis=1, keepdims=True)
    is_best = (iou == best_per_gt) & (best_per_gt > 0) & gt_valid[:, None]
    matches = jnp.where(jnp.any(is_best, axis=0), arg, matches)
  return matches.astype(jnp.int32)


def sample_balanced(labels: jnp.ndarray, num_samples: int, positive_fraction: float,
                    rng: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Fixed-size balanced sample of ``labels [N]`` (1 positive, 0 negative, -1 ignored).

  Draws ``min(#pos, int(num_samples * positive_fraction))`` positives and fills up to ``num_samples`` with
  negatives, uniformly at random (``rng``). Returns ``(indices [S], is_positive [S], valid [S])`` with the
  positives first, then the negatives, then padding (``valid`` False) when there are too few candidates;
  ``S = num_samples``. The first ``int(num_samples * positive_fraction)`` slots therefore hold every sampled
  positive (the mask head reads only those).
  """
  n = labels.shape[0]
  if num_samples > n:  # fewer candidates than slots: the extra slots are padding (index 0, valid False)
    idx, is_pos, valid = sample_balanced(jnp.pad(labels, (0, num_samples - n), constant_values=-1), num_samples,
                                         positive_fraction, rng)
    return jnp.where(valid, idx, 0), is_pos, valid
  max_pos = int(num_samples * positive_fraction)
  u = jax.random.uniform(rng, (n,))
  pos, neg = labels == 1, labels == 0
  num_pos = jnp.minimum(jnp.sum(pos), max_pos)
  num_neg = jnp.minimum(jnp.sum(neg), num_samples - num_pos)
  # Rank inside each group by a random priority; keep the first num_pos / num_neg of each group.
  pos_rank = jnp.argsort(jnp.argsort(jnp.where(pos, u, 2.0)))
  neg_rank = jnp.argsort(jnp.argsort(jnp.where(neg, u, 2.0)))
  take_pos = pos & (pos_rank < num_pos)
  take_neg = neg & (neg_rank < num_neg)
  key = jnp.where(take_pos, u, jnp.where(take_neg, 1.0 + u, 3.0))
  order = jnp.argsort(key)[:num_samples].astype(jnp.int32)
  chosen_key = key[order]
  valid = chosen_key < 2.0
  is_pos = chosen_key < 1.0
  return order, is_pos, valid
