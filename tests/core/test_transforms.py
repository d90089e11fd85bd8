"""Geometric augmentations (research.data.transforms): hand-computed cases and box/mask consistency."""

import numpy as np
import pytest

from research import data
from research.data import transforms as T


def _scene():
  """4x6 image, one box [1,0,3,2] (columns 1-2, rows 0-1) with a mask that is 1 exactly inside it."""
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  masks = np.zeros((1, 4, 6), np.uint8)
  masks[0, 0:2, 1:3] = 1
  # keypoint 0 = "left" on the centre of pixel (row 0, col 1); keypoint 1 = "right" on pixel (row 1, col 2);
  # keypoint 2 unlabelled.
  keypoints = np.array([[[1.5, 0.5, 2], [2.5, 1.5, 2], [4.5, 3.5, 0]]], np.float32)
  return {"image": image, "boxes": np.array([[1, 0, 3, 2]], np.float32), "masks": masks,
          "semantic": masks[0] * 7, "keypoints": keypoints, "labels": np.array([5], np.int32), "id": b"x"}


def test_hflip_hand_computed():
  ex = _scene()
  out = T.hflip(ex, flip_permutation=[1, 0, 2])
  np.testing.assert_array_equal(out["boxes"], [[3, 0, 5, 2]])
  expected = np.zeros((4, 6), np.uint8)
  expected[0:2, 3:5] = 1
  np.testing.assert_array_equal(out["masks"][0], expected)  # exactly inside the flipped box
  np.testing.assert_array_equal(out["semantic"], expected * 7)
  np.testing.assert_array_equal(out["image"], ex["image"][:, ::-1])
  # x -> W - x, then left/right swapped: the new "left" is the old "right" mirrored, and so on.
  np.testing.assert_array_equal(out["keypoints"], [[[3.5, 1.5, 2], [4.5, 0.5, 2], [1.5, 3.5, 0]]])
  # a keypoint on a pixel centre lands on the centre of the mirrored pixel (col j -> W-1-j): no 1-pixel shift
  col, row = (out["keypoints"][0, 1, :2] - 0.5).astype(int)
  assert out["image"][row, col].tolist() == ex["image"][0, 1].tolist()
  assert out["labels"].tolist() == [5] and out["id"] == b"x"
  np.testing.assert_array_equal(ex["boxes"], [[1, 0, 3, 2]])  # the input is not modified
  twice = T.hflip(out, flip_permutation=[1, 0, 2])
  for k in ("image", "boxes", "masks", "keypoints"):
    np.testing.assert_array_equal(twice[k], ex[k])
  with pytest.raises(ValueError, match="permutation"):
    T.hflip(ex, flip_permutation=[0, 0, 1])


def test_pixel_index_keypoints_and_tfds_boxes():
  kp = T.keypoints_from_pixel_indices([[[2, 1, 2]]])  # COCO: column 2, row 1
  np.testing.assert_array_equal(kp, [[[2.5, 1.5, 2]]])
  assert T.hflip({"image": np.zeros((4, 6, 1)), "keypoints": kp})["keypoints"][0, 0, 0] == 6 - 1 - 2 + 0.5
  b = T.boxes_from_tfds([[0.0, 0.25, 0.5, 0.75]], height=4, width=8)  # ymin, xmin, ymax, xmax
  np.testing.assert_array_equal(b, [[2, 0, 6, 2]])
  np.testing.assert_allclose(T.boxes_to_tfds(b, 4, 8), [[0.0, 0.25, 0.5, 0.75]])
  np.testing.assert_array_equal(T.boxes_from_masks(_scene()["masks"]), [[1, 0, 3, 2]])


def test_crop_drops_and_clips_boxes_consistently():
  ex = _scene()
  ex["boxes"] = np.array([[0, 0, 2, 2], [2, 1, 5, 3]], np.float32)  # A fully left of the crop, B partly inside
  ex["masks"] = np.zeros((2, 4, 6), np.uint8)
  ex["masks"][0, 0:2, 0:2] = 1
  ex["masks"][1, 1:3, 2:5] = 1
  ex["keypoints"] = np.array([[[0.5, 0.5, 2]], [[4.5, 2.5, 2]]], np.float32)
  ex["labels"] = np.array([1, 2], np.int32)
  out = T.crop(ex, 0, 3, 4, 3)  # columns 3..5
  np.testing.assert_array_equal(out["boxes"], [[0, 1, 2, 3]])  # B: [2,1,5,3] - 3 in x, clipped at 0
  assert out["labels"].tolist() == [2] and out["masks"].shape == (1, 4, 3) and out["keypoints"].shape == (1, 1, 3)
  expected = np.zeros((4, 3), np.uint8)
  expected[1:3, 0:2] = 1
  np.testing.assert_array_equal(out["masks"][0], expected)
  np.testing.assert_array_equal(out["keypoints"], [[[1.5, 2.5, 2]]])
  np.testing.assert_array_equal(out["image"], ex["image"][:, 3:])
  # a keypoint outside the crop becomes invisible; its instance survives
  out2 = T.crop(ex, 0, 0, 2, 4)
  assert out2["labels"].tolist() == [1, 2]
  np.testing.assert_array_equal(out2["boxes"], [[0, 0, 2, 2], [2, 1, 4, 2]])
  assert out2["keypoints"][:, 0, 2].tolist() == [2, 0]


def test_crop_pads_when_image_is_smaller():
  ex = _scene()
  out = T.crop(ex, -1, -2, 8, 8, fill=9)
  assert out["image"].shape == (8, 8, 3) and out["masks"].shape == (1, 8, 8)
  np.testing.assert_array_equal(out["image"][1:5, 2:8], ex["image"])
  assert (out["image"][0] == 9).all() and (out["image"][:, :2] == 9).all() and (out["image"][5:] == 9).all()
  assert (out["semantic"][0] == 255).all() and out["masks"][0, 1:3, 3:5].all() and out["masks"].sum() == 4
  np.testing.assert_array_equal(out["boxes"], [[3, 1, 5, 3]])
  np.testing.assert_array_equal(out["keypoints"][0, :2], [[3.5, 1.5, 2], [4.5, 2.5, 2]])
  rng = np.random.default_rng(0)
  for _ in range(10):
    r = T.random_crop(ex, rng, (6, 9))
    assert r["image"].shape == (6, 9, 3) and r["masks"].sum() == 4  # the whole image is always inside
    np.testing.assert_array_equal(T.boxes_from_masks(r["masks"]), r["boxes"])


def test_scale_by_two_and_resize_to():
  ex = _scene()
  out = T.resize_to(ex, (8, 12))
  np.testing.assert_array_equal(out["boxes"], [[2, 0, 6, 4]])
  assert out["masks"].sum() == 4 * ex["masks"].sum() and out["masks"][0, 0:4, 2:6].all()
  np.testing.assert_array_equal(out["keypoints"][0, :, :2], [[3, 1], [5, 3], [9, 7]])
  assert out["image"].shape == (8, 12, 3) and out["image"].dtype == np.uint8
  # bilinear, pixel-centre aligned: a constant image stays constant; a horizontal ramp stays a ramp
  flat = T.resize_bilinear(np.full((4, 6, 1), 7, np.uint8), 5, 9)
  assert (flat == 7).all() and flat.shape == (5, 9, 1)
  ramp = T.resize_bilinear(np.tile(np.arange(6, dtype=np.float32), (2, 1)), 2, 12)
  np.testing.assert_allclose(ramp[0, 1:-1], np.arange(0.25, 5, 0.5)[:10])
  rng = np.random.default_rng(1)
  s = T.random_scale(ex, rng, 2.0, 2.0)
  np.testing.assert_array_equal(s["boxes"], out["boxes"])
  half = T.resize_to(ex, (2, 3))  # non-integer factors per axis: boxes scaled by (W'/W, H'/H)
  np.testing.assert_allclose(half["boxes"], [[0.5, 0, 1.5, 1]])
  gray = T.resize_to({"image": np.zeros((4, 6), np.uint8)}, (3, 5))
  assert gray["image"].shape == (3, 5)


def test_pad_to_and_pad_instances():
  x, m = data.pad_to(np.array([3, 4, 5]), 5, value=-1)
  assert x.tolist() == [3, 4, 5, -1, -1] and m.tolist() == [1, 1, 1, 0, 0] and m.dtype == np.float32
  x, m = data.pad_to(np.ones((2, 3)), 4, axis=1)
  assert x.shape == (2, 4) and m.tolist() == [1, 1, 1, 0]
  with pytest.raises(ValueError, match="'tokens' has 3 items.*length 2"):
    data.pad_to(np.arange(3), 2, name="tokens")
  x, m = data.pad_to(np.arange(3), 2, truncate=True)
  assert x.tolist() == [0, 1] and m.tolist() == [1, 1]
  out = data.pad_instances(_scene(), 3, pad_values={"labels": -1})
  assert out["boxes"].shape == (3, 4) and out["masks"].shape == (3, 4, 6) and out["keypoints"].shape == (3, 3, 3)
  assert out["labels"].tolist() == [5, -1, -1] and out["instance_mask"].tolist() == [1, 0, 0]
  assert out["image"].shape == (4, 6, 3) and out["semantic"].shape == (4, 6)
  with pytest.raises(ValueError, match="'boxes' has 1 items"):
    data.pad_instances(_scene(), 0)
  bad = dict(_scene(), labels=np.array([1, 2]))
  with pytest.raises(ValueError, match="disagree"):
    data.pad_instances(bad, 4)
  empty = {"image": np.zeros((4, 6, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32)}
  assert data.pad_instances(empty, 2)["instance_mask"].tolist() == [0, 0]


@pytest.mark.parametrize("seed", range(8))
def test_random_chain_keeps_boxes_on_masks(seed):
  """flip + scale + crop in random order: each mask's tight box stays within 1 pixel of its transformed box.

  Rectangles go through the whole chain (clipping a box is exact for them); ellipses through flip + scale only
  (a crop through an ellipse leaves a mask narrower than its clipped box, as in every detection pipeline).
  One resize per chain: nearest-neighbour masks err by up to ~1 pixel per resize, so chained resizes drift."""
  rng = np.random.default_rng(seed)
  h, w, n = int(rng.integers(12, 30)), int(rng.integers(12, 30)), 6
  yy, xx = np.mgrid[:h, :w]
  masks = np.zeros((n, h, w), np.uint8)
  for i in range(n):
    if i % 2:  # ellipse
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      ry, rx = rng.uniform(1.5, h / 2), rng.uniform(1.5, w / 2)
      masks[i] = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1
      masks[i, int(cy) % h, int(cx) % w] = 1  # never empty
    else:  # rectangle
      y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
      masks[i, y0:rng.integers(y0 + 1, h + 1), x0:rng.integers(x0 + 1, w + 1)] = 1
  ex = {"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "masks": masks,
        "boxes": T.boxes_from_masks(masks), "labels": np.arange(n)}
  ops = [lambda e: T.random_hflip(e, rng, p=0.7), lambda e: T.random_scale(e, rng, 0.6, 1.8),
         lambda e: T.random_crop(e, rng, (int(rng.integers(10, 32)), int(rng.integers(10, 32))))]
  order = rng.permutation(3)
  for k in order:
    if k == 2:  # no ellipse through the crop
      ex = T.select_instances(ex, ex["labels"] % 2 == 0)
    ex = ops[k](ex)
  assert ex["masks"].shape[1:] == ex["image"].shape[:2] and len(ex["boxes"]) == len(ex["labels"])
  for box, mask in zip(ex["boxes"], ex["masks"]):
    if mask.any():
      np.testing.assert_allclose(T.boxes_from_masks(mask[None])[0], box, atol=1.0)
    else:  # a sliver that covers no pixel centre
      assert min(box[2] - box[0], box[3] - box[1]) < 1.0


@pytest.mark.parametrize("seed", range(4))
def test_random_flip_upscale_keeps_boxes_on_any_mask(seed):
  """Upscaling never loses a mask pixel (downscaling may drop isolated ones: nearest-neighbour)."""
  rng = np.random.default_rng(100 + seed)
  h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
  masks = (rng.random((4, h, w)) < 0.05).astype(np.uint8)  # scattered pixels
  masks[:, h // 2, w // 2] = 1
  ex = {"image": np.zeros((h, w, 1), np.float32), "masks": masks, "boxes": T.boxes_from_masks(masks)}
  ex = T.random_scale(T.random_hflip(ex, rng), rng, 1.0, 2.5)
  for box, mask in zip(ex["boxes"], ex["masks"]):
    np.testing.assert_allclose(T.boxes_from_masks(mask[None])[0], box, atol=1.0)
