"""One-off: write tests/detection/data/detection_golden.npz with torchvision's detection utilities' outputs.

Run with an interpreter that has torch + torchvision (never a dependency of this project):

    /work/tvenv/bin/python tests/detection/make_torchvision_golden.py

The arrays are small (< 100 KB); tests/detection/test_detection_golden.py compares research.ops.boxes and
research.models.detection (anchors, matching) against them without torch. Stored:

* ``AnchorGenerator`` anchors of a 64x96 image: FPN-style (sizes (8,), (16,), (32,) at strides 4, 8, 16) and
  C4-style (sizes (8, 16, 32, 64) at stride 16), ratios (0.5, 1, 2);
* ``BoxCoder`` ``encode_single`` / ``decode_single`` with weights (10, 10, 5, 5) and (1, 1, 1, 1) on random
  boxes, the decode inputs including log-size deltas far above the ``log(1000/16)`` clamp;
* ``Matcher(0.7, 0.3, allow_low_quality_matches=True)`` and ``Matcher(0.5, 0.5)`` on IoU matrices from
  ``torchvision.ops.box_iou`` with no exact ties and every ground truth overlapping some prediction, plus one
  matrix with a ground truth that overlaps nothing (where the documented difference applies).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "detection_golden.npz")
IMAGE = (64, 96)  # (H, W)
RATIOS = (0.5, 1.0, 2.0)
ANCHOR_CONFIGS = {  # name -> (sizes per level, strides)
    "fpn": (((8,), (16,), (32,)), (4, 8, 16)),
    "c4": (((8, 16, 32, 64),), (16,)),
}
MATCHERS = {"rpn": (0.7, 0.3, True), "roi": (0.5, 0.5, False)}


def anchors(sizes, strides):
  """``AnchorGenerator`` on zero feature maps of the strides' grid sizes (one image)."""
  gen = AnchorGenerator(sizes=sizes, aspect_ratios=(RATIOS,) * len(sizes))
  h, w = IMAGE
  images = ImageList(torch.zeros(1, 3, h, w), [IMAGE])
  feats = [torch.zeros(1, 1, h // s, w // s) for s in strides]
  (out,) = gen(images, feats)
  return out.numpy()


def random_boxes(rng, n, lo=2.0, hi=40.0):
  """``n`` boxes inside the image, log-uniform sides in ``[lo, hi]``."""
  h, w = IMAGE
  wh = np.exp(rng.uniform(np.log(lo), np.log(hi), size=(n, 2)))
  xy = rng.uniform(0, 1, size=(n, 2)) * (np.array([w, h]) - wh)
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def jitter(rng, boxes, scale):
  """Boxes near ``boxes``: centre and size perturbed by ``scale`` (relative)."""
  wh = boxes[:, 2:] - boxes[:, :2]
  c = boxes[:, :2] + 0.5 * wh + rng.normal(size=wh.shape) * scale * wh
  wh = wh * np.exp(rng.normal(size=wh.shape) * scale)
  return np.concatenate([c - 0.5 * wh, c + 0.5 * wh], 1).astype(np.float32)


def no_ties(iou):
  """True when no tie can change a match: the best IoU of every prediction with positive best is unique, and
  the best IoU of every ground truth is positive and attained once."""
  s = np.sort(iou, axis=0)
  cols_ok = np.all((s[-1] == 0) | (s[-1] > s[-2]))
  rows_ok = np.all([(r.max() > 0) and np.sum(r == r.max()) == 1 for r in iou])
  return bool(cols_ok and rows_ok)


def matcher_inputs(rng, g=6, n=300):
  """GT boxes, predictions (half jittered copies of GT at several scales, half random) and their IoU. The last
  two ground truths get only coarse copies, so that some have no prediction of IoU >= 0.7 (low-quality matches)."""
  while True:
    gt = random_boxes(rng, g, lo=6.0, hi=40.0)
    near = np.concatenate([jitter(rng, gt[rng.integers(0, g - 2, n // 6)], s) for s in (0.03, 0.1)]
                          + [jitter(rng, gt[rng.integers(0, g, n // 6)], 0.3)])
    pred = np.concatenate([near, random_boxes(rng, n - len(near))])
    iou = torchvision.ops.box_iou(torch.from_numpy(gt), torch.from_numpy(pred)).numpy()
    if no_ties(iou) and (iou.max(0) >= 0.7).sum() >= 10 and iou.max(1).min() < 0.7:
      return gt, pred, iou


def main():
  rng = np.random.default_rng(2025)
  d = {"torch": np.array(torch.__version__), "torchvision": np.array(torchvision.__version__),
       "image_size": np.array(IMAGE), "ratios": np.array(RATIOS, np.float32)}
  # --- anchors
  for name, (sizes, strides) in ANCHOR_CONFIGS.items():
    d[f"anchors_{name}"] = anchors(sizes, strides)
  # --- box coder: anchors of positive size, targets anywhere near them (also far, also much larger/smaller)
  n = 400
  ref = random_boxes(rng, n, lo=1.0, hi=60.0)
  gt = np.concatenate([jitter(rng, ref[: n // 2], 0.2), random_boxes(rng, n - n // 2, lo=0.5, hi=64.0)])
  d.update(coder_anchors=ref, coder_gt=gt)
  deltas = rng.normal(size=(n, 4)).astype(np.float32)
  deltas[: n // 4, 2:] *= 20  # |dw|, |dh| up to ~60 before the division by the weights: many hit the clamp
  deltas[n // 4: n // 2, :2] *= 30
  d["coder_deltas"] = deltas
  for wname, weights in (("10_10_5_5", (10.0, 10.0, 5.0, 5.0)), ("1_1_1_1", (1.0, 1.0, 1.0, 1.0))):
    coder = det_utils.BoxCoder(weights=weights)
    d[f"encode_{wname}"] = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(ref)).numpy()
    d[f"decode_{wname}"] = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(ref)).numpy()
    clipped = np.minimum(deltas[:, 2:] / np.array(weights[2:], np.float32), math.log(1000.0 / 16))
    d[f"decode_{wname}_clamped_rows"] = np.int32(np.any(clipped == math.log(1000.0 / 16), 1).sum())
  # --- matcher
  for case in range(3):
    gt_b, pred_b, iou = matcher_inputs(rng)
    d[f"match{case}_gt"], d[f"match{case}_pred"], d[f"match{case}_iou"] = gt_b, pred_b, iou
    for name, (high, low, allow) in MATCHERS.items():
      m = det_utils.Matcher(high, low, allow_low_quality_matches=allow)
      d[f"match{case}_{name}"] = m(torch.from_numpy(iou)).numpy().astype(np.int32)
  # a ground truth far from every prediction (torchvision then low-quality-matches every IoU-0 prediction)
  gt_b, pred_b, _ = matcher_inputs(rng)
  gt_b = np.concatenate([gt_b, np.array([[200.0, 200.0, 210.0, 210.0]], np.float32)])
  iou = torchvision.ops.box_iou(torch.from_numpy(gt_b), torch.from_numpy(pred_b)).numpy()
  d["match_lonely_iou"] = iou
  d["match_lonely_rpn"] = det_utils.Matcher(0.7, 0.3, True)(torch.from_numpy(iou)).numpy().astype(np.int32)
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, **d)
  print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
  main()
