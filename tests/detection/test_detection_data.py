"""DetectionTransform: the one place raw records become fixed-shape detector inputs."""

import numpy as np
import pytest

from research.data import transforms as T
from research.train.detection import DetectionTransform


def _example(h=40, w=80):
  masks = np.zeros((4, h, w), np.uint8)
  masks[0, 5:15, 10:30] = 1
  masks[1, 20:30, 40:44] = 1
  masks[2, 0:40, 0:80] = 1  # crowd
  masks[3, 10:11, 60:60] = 1  # empty -> degenerate box
  boxes = T.boxes_from_masks(masks)
  boxes[3] = [60, 10, 60.5, 10.2]
  return {"image": np.full((h, w, 3), 128, np.uint8), "image_id": 7, "boxes": boxes,
          "labels": np.array([0, 2, 1, 1], np.int32), "masks": masks, "is_crowd": np.array([0, 0, 1, 0], bool),
          "area": masks.sum((1, 2)).astype(np.float32)}


def test_resize_pad_drop_crowd_and_degenerate_keep_masks_and_boxes_consistent():
  out = DetectionTransform(64, 5, 3, True)(_example())
  assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
  np.testing.assert_array_equal(out["instance_mask"], [1, 1, 0, 0, 0])  # crowd and the sub-pixel box dropped
  np.testing.assert_allclose(out["scale"], 0.8)
  np.testing.assert_array_equal(out["orig_size"], [40, 80])
  np.testing.assert_allclose(out["boxes"][:2], [[8, 4, 24, 12], [32, 16, 35.2, 24]], atol=1e-5)
  assert out["masks"].shape == (5, 64, 64) and out["masks"][:, 32:].sum() == 0  # padded bottom rows are empty
  np.testing.assert_allclose(T.boxes_from_masks(out["masks"][:1]), [[8, 4, 24, 12]])
  assert out["image_id"] == 7 and out["labels"][1] == 2


def test_hflip_moves_boxes_and_masks_together():
  tf = DetectionTransform(64, 5, 3, True, hflip=True)
  flipped = None
  for seed in range(8):
    out = tf(_example(64, 64), np.random.default_rng(seed))
    if out["boxes"][0, 0] != 10:
      flipped = out
  assert flipped is not None
  np.testing.assert_allclose(flipped["boxes"][0], [64 - 30, 5, 64 - 10, 15])
  np.testing.assert_allclose(T.boxes_from_masks(flipped["masks"][:2]), flipped["boxes"][:2])


def test_bad_records_are_clear_errors():
  with pytest.raises(ValueError, match=r"labels \[0, 1, 2\] outside \[0, 2\)"):
    DetectionTransform(64, 5, 2, False)(_example())
  ex = _example()
  del ex["masks"]
  with pytest.raises(ValueError, match="no instance masks"):
    DetectionTransform(64, 5, 3, True)(ex)
  empty = {**_example(), "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int32),
           "masks": np.zeros((0, 40, 80), np.uint8), "is_crowd": np.zeros((0,), bool)}
  out = DetectionTransform(64, 5, 3, True)(empty)
  assert out["instance_mask"].sum() == 0 and out["boxes"].shape == (5, 4)
