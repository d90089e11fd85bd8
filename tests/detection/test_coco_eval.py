"""COCO evaluation (pycocotools) on a hand-made ground truth: exact AP for perfect, shifted, extra and missing
detections, category-id mapping, RLE round trip and the JSON files."""

import json

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_util  # noqa: E402

from research import fileio  # noqa: E402
from research.train import coco_eval  # noqa: E402
from research.train.coco_eval import CocoEvaluator, detections_to_coco, encode_masks  # noqa: E402

CATEGORY_IDS = [1, 3]  # label 0 -> category 1 ("box"), label 1 -> category 3 ("disc"): ids are not label + 1
SIZES = {11: (48, 64), 12: (40, 40), 13: (32, 32)}  # image id -> (height, width); image 13 has no objects


def _rect(h, w, x1, y1, x2, y2):
  m = np.zeros((h, w), np.uint8)
  m[y1:y2, x1:x2] = 1
  return m


def _disc(h, w, cx, cy, r):
  yy, xx = np.mgrid[:h, :w]
  return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


# image id -> [(label, mask)]: two small objects on 11 (box 12x10 = 120 px, disc r=6), a medium box (35x35) on 12
OBJECTS = {11: [(0, _rect(48, 64, 5, 8, 17, 18)), (1, _disc(48, 64, 40, 30, 6))],
           12: [(0, _rect(40, 40, 2, 3, 37, 38))], 13: []}


def _gt():
  images = [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, (h, w) in SIZES.items()]
  anns = []
  for i, objs in OBJECTS.items():
    for label, m in objs:
      rle = encode_masks(m[None])[0]
      anns.append({"id": len(anns) + 1, "image_id": i, "category_id": CATEGORY_IDS[label], "iscrowd": 0,
                   "bbox": [float(v) for v in mask_util.toBbox(rle)], "area": float(m.sum()), "segmentation": rle})
  return {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "box"}, {"id": 3, "name": "disc"}]}


def _gt_as_batch(d=3):
  """The ground truth as a padded batch of model outputs: [B=3, D=3] with masks at the padded size 48 x 64."""
  b, hp, wp = len(SIZES), 48, 64
  boxes, scores = np.zeros((b, d, 4), np.float32), np.zeros((b, d), np.float32)
  labels, valid = np.zeros((b, d), np.int32), np.zeros((b, d), bool)
  masks = np.zeros((b, d, hp, wp), np.uint8)
  for n, (i, objs) in enumerate(OBJECTS.items()):
    for k, (label, m) in enumerate(objs):
      x, y, w, h = mask_util.toBbox(encode_masks(m[None])[0])
      boxes[n, k], scores[n, k], labels[n, k], valid[n, k] = (x, y, x + w, y + h), 0.9, label, True
      masks[n, k, :m.shape[0], :m.shape[1]] = m
  boxes[:, -1], scores[:, -1], masks[:, -1] = (1, 1, 30, 30), 0.99, 1  # padding rows (valid False): must be skipped
  return dict(image_ids=np.array(list(SIZES)), boxes=boxes, scores=scores, labels=labels, valid=valid, masks=masks,
              image_sizes=np.array(list(SIZES.values())))


@pytest.fixture(scope="module")
def evaluator():
  return CocoEvaluator(_gt())


def test_ground_truth_as_detections_is_perfect(evaluator, capsys):
  dets = detections_to_coco(**_gt_as_batch(), category_ids=CATEGORY_IDS)
  assert len(dets) == 3 and {d["image_id"] for d in dets} == {11, 12}
  m = evaluator.evaluate(dets)
  for t in ("bbox", "segm"):
    for k in ("AP", "AP50", "AP75", "APs", "APm", "AR100"):
      assert m[f"{t}/{k}"] == pytest.approx(1.0), (t, k)
    assert m[f"{t}/APl"] == -1.0  # no large object in the ground truth: COCO's -1 is kept
  assert set(m) == {f"{t}/{k}" for t in ("bbox", "segm") for k in coco_eval.METRICS}
  assert capsys.readouterr().out == ""  # pycocotools' printing is captured ...
  assert "Average Precision" in evaluator.last_summary and "segm" in evaluator.last_summary  # ... and kept


def test_shifted_boxes_known_ap(evaluator):
  """Each box shifted right so that IoU = 0.72: matched at IoU thresholds 0.50..0.70 (5 of 10) -> AP 0.5."""
  batch = _gt_as_batch()
  b = batch["boxes"]
  w = b[..., 2] - b[..., 0]
  dx = w * (1 - 0.72) / (1 + 0.72)  # (w - dx) / (w + dx) = 0.72
  b[..., 0] += dx
  b[..., 2] += dx
  batch.pop("masks"), batch.pop("image_sizes")  # no clipping: the shifted box on image 12 leaves the image
  m = evaluator.evaluate(detections_to_coco(**batch, category_ids=CATEGORY_IDS), iou_types=("bbox",))
  assert m["bbox/AP"] == pytest.approx(0.5) and m["bbox/AP50"] == pytest.approx(1.0)
  assert m["bbox/AP75"] == pytest.approx(0.0) and m["bbox/AR100"] == pytest.approx(0.5)
  assert not any(k.startswith("segm") for k in m)


def test_empty_detections(evaluator):
  m = evaluator.evaluate([])
  for t in ("bbox", "segm"):
    for k in ("AP", "AP50", "AP75", "APs", "APm", "AR100"):
      assert m[f"{t}/{k}"] == 0.0
    assert m[f"{t}/APl"] == -1.0


def test_false_positive_on_empty_image_lowers_precision(evaluator):
  dets = detections_to_coco(**_gt_as_batch(), category_ids=CATEGORY_IDS)
  fp = {"image_id": 13, "category_id": 1, "bbox": [4.0, 4.0, 10.0, 10.0], "score": 0.99,
        "segmentation": encode_masks(_rect(32, 32, 4, 4, 14, 14)[None])[0]}
  m = evaluator.evaluate(dets + [fp])
  # category 1 (two objects): FP ranked first -> precision 2/3 at every recall; category 3 stays 1
  assert m["bbox/AP"] == pytest.approx((2 / 3 + 1) / 2) and m["segm/AP"] == pytest.approx((2 / 3 + 1) / 2)
  assert m["bbox/APs"] == pytest.approx((1 / 2 + 1) / 2)  # small range: FP, then the one small box
  assert m["bbox/AR100"] == pytest.approx(1.0)
  m = evaluator.evaluate(dets + [dict(fp, score=0.1)])  # ranked after all true positives: no precision lost
  assert m["bbox/AP"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="not in the ground truth"):
    evaluator.evaluate([dict(fp, image_id=99)])


def test_category_id_mapping(evaluator):
  batch = _gt_as_batch()
  dets = detections_to_coco(**batch, category_ids=CATEGORY_IDS)
  assert sorted(d["category_id"] for d in dets) == [1, 1, 3]
  plain = detections_to_coco(**batch)  # label + 1: the disc lands on category 2, which the ground truth lacks
  assert sorted(d["category_id"] for d in plain) == [1, 1, 2]
  m = evaluator.evaluate(plain, iou_types=("bbox",))
  assert m["bbox/AP"] == pytest.approx(0.5)  # category 3 found nothing
  with pytest.raises(ValueError):
    detections_to_coco(**batch, category_ids=[1])


def test_detections_format():
  batch = _gt_as_batch()
  dets = detections_to_coco(**batch, category_ids=CATEGORY_IDS)
  d = dets[0]
  assert set(d) == {"image_id", "category_id", "bbox", "score", "segmentation"}
  assert d["image_id"] == 11 and d["bbox"] == [5.0, 8.0, 12.0, 10.0] and d["score"] == pytest.approx(0.9)
  assert all(isinstance(v, float) for v in d["bbox"]) and isinstance(d["image_id"], int)
  assert dets[-1]["segmentation"]["size"] == [40, 40]  # cropped to the true image size
  json.dumps(dets)
  batch["boxes"][1, 0] = (-3, 5, 45, 41)  # clipped to the 40 x 40 image
  assert detections_to_coco(**batch)[-1]["bbox"] == [0.0, 5.0, 40.0, 35.0]
  no_masks = detections_to_coco(**{k: v for k, v in batch.items() if k != "masks"})
  assert "segmentation" not in no_masks[0]
  with pytest.raises(ValueError, match="segmentation"):
    CocoEvaluator(_gt()).evaluate(no_masks)  # segm requested without masks


def test_rle_round_trip():
  rng = np.random.default_rng(0)
  masks = (rng.uniform(size=(4, 17, 23)) > 0.6).astype(np.uint8)
  masks[1] = 0
  rles = json.loads(json.dumps(encode_masks(masks)))
  assert all(isinstance(r["counts"], str) and r["size"] == [17, 23] for r in rles)
  np.testing.assert_array_equal(mask_util.decode(rles).transpose(2, 0, 1), masks)
  np.testing.assert_array_equal(mask_util.area(rles), masks.sum((1, 2)))
  assert encode_masks(np.zeros((0, 5, 5), bool)) == []


def test_write_json_files(evaluator, tmp_path, monkeypatch):
  dets = detections_to_coco(**_gt_as_batch(), category_ids=CATEGORY_IDS)
  evaluator.write(tmp_path / "eval", dets)
  assert json.loads((tmp_path / "eval" / "detections.json").read_text()) == dets
  gt = json.loads((tmp_path / "eval" / "gt_coco.json").read_text())
  assert gt == _gt()
  assert CocoEvaluator(gt).evaluate(dets)["segm/AP"] == pytest.approx(1.0)  # the written files evaluate again
  assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["detections.json", "gt_coco.json"]
  monkeypatch.setattr(fileio, "main_process", lambda: False)
  evaluator.write(tmp_path / "other", dets)
  assert not (tmp_path / "other").exists()


def test_gt_fields_filled_and_verbose(capsys):
  gt = _gt()
  for a in gt["annotations"]:
    del a["area"], a["bbox"], a["id"], a["iscrowd"]
  ev = CocoEvaluator(gt, verbose=True)
  assert [a["bbox"] for a in ev.gt["annotations"]] == [a["bbox"] for a in _gt()["annotations"]]
  assert [a["area"] for a in ev.gt["annotations"]] == [a["area"] for a in _gt()["annotations"]]
  assert ev.evaluate(detections_to_coco(**_gt_as_batch(), category_ids=CATEGORY_IDS))["bbox/AP"] == pytest.approx(1)
  assert "Average Precision" in capsys.readouterr().out
