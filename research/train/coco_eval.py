"""COCO detection / instance-segmentation evaluation with pycocotools (Lin et al., "Microsoft COCO", ECCV 2014).

Model outputs (padded, batched arrays) -> COCO result dicts (``detections_to_coco``) -> box and mask AP through the
official ``COCOeval`` (``CocoEvaluator``). Ground truth comes as a COCO dict (``images`` / ``annotations`` /
``categories``, segmentations as RLE or polygons), as ``research.data.coco.to_coco_json`` writes it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from research import fileio

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats indices of the metrics reported (stats: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ...)
METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def encode_masks(masks: np.ndarray) -> list[dict]:
  """Binary masks ``[D, H, W]`` (any dtype; nonzero = foreground) -> ``D`` COCO RLEs ``{"size": [H, W], "counts":
  str}`` (compressed counts decoded to ASCII, so the dicts are JSON-serialisable; pycocotools accepts them back)."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"encode_masks expects [D, H, W] masks, got shape {masks.shape}")
  if masks.shape[0] == 0:
    return []
  rles = mask_util.encode(np.asfortranarray((masks != 0).astype(np.uint8).transpose(1, 2, 0)))
  for rle in rles:
    rle["counts"] = rle["counts"].decode("ascii")
  return rles


def detections_to_coco(image_ids, boxes, scores, labels, valid, *, category_ids: Sequence[int] | None = None,
                       masks=None, image_sizes=None) -> list[dict]:
  """Batched detections -> COCO result dicts, one per valid detection.

  Args:
    image_ids: ``[B]`` COCO image ids.
    boxes: ``[B, D, 4]`` absolute ``(x1, y1, x2, y2)`` pixels.
    scores: ``[B, D]``.
    labels: ``[B, D]`` 0-based class indices.
    valid: ``[B, D]`` bool; rows that are False (padding) are skipped.
    category_ids: COCO category id of each class (``category_id = category_ids[label]``); default ``label + 1``.
    masks: optional ``[B, D, H, W]`` bool / uint8 (nonzero = foreground) or float (foreground where >= 0.5), at
      the (padded) input resolution; each becomes an RLE ``segmentation``.
    image_sizes: optional ``[B, 2]`` true ``(height, width)`` of each image inside its bottom/right padding: masks
      are cropped to ``[:height, :width]`` and boxes clipped to ``[0, width] x [0, height]``.

  Returns:
    ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h] floats, "score": float,
    ("segmentation": RLE)}]`` in batch, then detection order.
  """
  image_ids = np.asarray(image_ids).reshape(-1)
  boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
  labels, valid = np.asarray(labels), np.asarray(valid).astype(bool)
  b, d = valid.shape
  if boxes.shape != (b, d, 4) or scores.shape != (b, d) or labels.shape != (b, d) or image_ids.shape != (b,):
    raise ValueError(f"detections_to_coco: inconsistent shapes image_ids {image_ids.shape}, boxes {boxes.shape}, "
                     f"scores {scores.shape}, labels {labels.shape}, valid {valid.shape}")
  if masks is not None:
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[:2] != (b, d):
      raise ValueError(f"detections_to_coco: masks must be [B, D, H, W] = [{b}, {d}, H, W], got {masks.shape}")
    masks = masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
  sizes = None if image_sizes is None else np.asarray(image_sizes).reshape(b, 2).astype(np.int64)
  cat_map = None if category_ids is None else np.asarray(category_ids)
  results = []
  for i in range(b):
    rows = np.flatnonzero(valid[i])
    if rows.size == 0:
      continue
    bx = boxes[i, rows]
    if sizes is not None:
      h, w = sizes[i]
      bx = np.stack([np.clip(bx[:, 0], 0, w), np.clip(bx[:, 1], 0, h), np.clip(bx[:, 2], 0, w),
                     np.clip(bx[:, 3], 0, h)], axis=-1)
    rles = None
    if masks is not None:
      m = masks[i, rows]
      if sizes is not None:
        m = m[:, :sizes[i, 0], :sizes[i, 1]]
      rles = encode_masks(m)
    for n, r in enumerate(rows):
      label = int(labels[i, r])
      if cat_map is not None and not 0 <= label < len(cat_map):
        raise ValueError(f"detections_to_coco: label {label} outside category_ids (length {len(cat_map)})")
      x1, y1, x2, y2 = (float(v) for v in bx[n])
      det = {"image_id": int(image_ids[i]), "category_id": int(cat_map[label]) if cat_map is not None else label + 1,
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i, r])}
      if rles is not None:
        det["segmentation"] = rles[n]
      results.append(det)
  return results


def _normalised_gt(gt: Mapping[str, Any]) -> dict:
  """Deep copy of a COCO ground-truth dict with the fields COCOeval needs filled in where absent: annotation ``id``
  (1..N), ``iscrowd`` (0), ``bbox`` (from the segmentation), ``area`` (mask area, else box area)."""
  gt = copy.deepcopy(dict(gt))
  for key in ("images", "categories"):
    if key not in gt:
      raise ValueError(f"CocoEvaluator: ground truth has no {key!r}")
  gt.setdefault("annotations", [])
  images = {img["id"]: img for img in gt["images"]}
  for n, ann in enumerate(gt["annotations"]):
    ann.setdefault("id", n + 1)
    ann.setdefault("iscrowd", 0)
    segm = ann.get("segmentation")
    if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
      segm["counts"] = segm["counts"].decode("ascii")  # JSON-serialisable, as pycocotools accepts it
    if segm is not None and isinstance(segm, list):
      img = images[ann["image_id"]]
      segm = mask_util.merge(mask_util.frPyObjects(segm, img["height"], img["width"]))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
      segm = mask_util.frPyObjects(segm, *segm["size"])
    if "bbox" not in ann:
      if segm is None:
        raise ValueError(f"CocoEvaluator: annotation {ann['id']} has neither bbox nor segmentation")
      ann["bbox"] = [float(v) for v in mask_util.toBbox(segm)]
    if "area" not in ann:
      ann["area"] = float(mask_util.area(segm)) if segm is not None else float(ann["bbox"][2] * ann["bbox"][3])
  return gt


class CocoEvaluator:
  """Box / mask AP of COCO result dicts against a fixed ground truth, with pycocotools' ``COCOeval``.

  ``evaluate`` returns ``{"bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "bbox/AR100"}``
  (and the same under ``segm/``) as fractions in [0, 1] (COCOeval's ``stats``: AP averaged over IoU 0.50:0.95,
  101-point interpolation, up to 100 detections per image). A metric with no ground truth to measure — e.g.
  ``APs`` when no object is small (area < 32^2), or everything when the ground truth has no annotation — keeps
  COCO's value -1. An empty detection list is evaluated as such: 0 for every metric that has ground truth (and -1
  where COCO gives -1). Mask AP uses the mask area for the small / medium / large split (the detections' boxes are
  dropped for it, as Detectron2 does). pycocotools' printing is captured; the text of the last ``summarize()``s is
  in ``last_summary`` (and printed when ``verbose=True``).
  """

  def __init__(self, gt: Mapping[str, Any], *, verbose: bool = False):
    self.gt = _normalised_gt(gt)
    self.verbose = verbose
    self.last_summary = ""
    self._has_masks = bool(self.gt["annotations"]) and all("segmentation" in a for a in self.gt["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
      self.coco_gt = COCO()
      self.coco_gt.dataset = copy.deepcopy(self.gt)  # COCOeval marks its annotations (_ignore, ignore)
      self.coco_gt.createIndex()

  def _load_results(self, detections: list[dict]) -> COCO:
    if detections:
      with contextlib.redirect_stdout(io.StringIO()):
        return self.coco_gt.loadRes(detections)
    res = COCO()  # loadRes fails on an empty list: an empty result set by hand
    res.dataset = {"images": list(self.gt["images"]), "categories": copy.deepcopy(self.gt["categories"]),
                   "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
      res.createIndex()
    return res

  def evaluate(self, detections: Sequence[Mapping[str, Any]], iou_types: Sequence[str] = IOU_TYPES
               ) -> dict[str, float]:
    """COCO result dicts (``detections_to_coco``) -> ``{"<iou_type>/<metric>": float}``; see the class docstring.

    ``"segm"`` needs a ``segmentation`` in every detection and in the ground truth. Detections on image ids that
    are not in the ground truth raise a ``ValueError``.
    """
    detections = [dict(d) for d in detections]
    known = set(self.coco_gt.getImgIds())
    unknown = {d["image_id"] for d in detections} - known
    if unknown:
      raise ValueError(f"CocoEvaluator: detections on image ids not in the ground truth: {sorted(unknown)[:10]}")
    metrics, summaries = {}, []
    for iou_type in iou_types:
      if iou_type not in IOU_TYPES:
        raise ValueError(f"CocoEvaluator: iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
      dets = copy.deepcopy(detections)
      if iou_type == "segm":
        if self.gt["annotations"] and not self._has_masks:
          raise ValueError("CocoEvaluator: 'segm' requested but the ground truth has no segmentations")
        if not all("segmentation" in d for d in dets):
          raise ValueError("CocoEvaluator: 'segm' requested but some detections have no 'segmentation' "
                           "(pass masks to detections_to_coco, or iou_types=('bbox',))")
        for d in dets:  # mask area, not box area, for the size ranges
          d.pop("bbox", None)
      else:
        for d in dets:  # box evaluation must not see (and loadRes must not keep) the masks
          segm = d.pop("segmentation", None)
          if "bbox" not in d:
            if segm is None:
              raise ValueError("CocoEvaluator: a detection has neither 'bbox' nor 'segmentation'")
            d["bbox"] = [float(v) for v in mask_util.toBbox(segm)]
      buf = io.StringIO()
      with contextlib.redirect_stdout(buf):
        e = COCOeval(self.coco_gt, self._load_results(dets), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
      summaries.append(f"{iou_type}:\n{buf.getvalue()}")
      metrics.update({f"{iou_type}/{name}": float(e.stats[i]) for name, i in METRICS.items()})
    self.last_summary = "\n".join(summaries)
    if self.verbose:
      print(self.last_summary)
    return metrics

  def write(self, workdir: str | os.PathLike, detections: Sequence[Mapping[str, Any]]) -> None:
    """Writes ``<workdir>/detections.json`` (the result dicts) and ``<workdir>/gt_coco.json`` (the ground truth),
    each atomically, on the main process only (a no-op elsewhere)."""
    if not fileio.main_process():
      return
    os.makedirs(workdir, exist_ok=True)
    fileio.write_json_atomic(os.path.join(workdir, "detections.json"), list(detections))
    fileio.write_json_atomic(os.path.join(workdir, "gt_coco.json"), self.gt)
