"""Segmentation task: confusion-matrix metrics vs sklearn/numpy, the data transform, the Task on the one loop (1 and 4
devices agree), a prepared TFDS dataset through tfds.testing.mock_data, and one-line errors for bad settings."""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data.memory import ArrayBatches
from research.train import dense_metrics as dm
from research.train import loop
from research.train import segmentation as seg
from research.train import task as task_lib


def test_confusion_matrix_matches_sklearn():
  from sklearn.metrics import confusion_matrix as sk_confusion
  rng = np.random.default_rng(0)
  label = rng.integers(0, 5, (3, 9, 11))
  label[0, :2] = dm.IGNORE_LABEL
  pred = rng.integers(0, 5, label.shape)
  row = np.array([1.0, 1.0, 0.0])  # the third row is eval padding
  got = jax.jit(lambda p, l, w: dm.confusion_matrix(p, l, 5, weight=w))(pred, label, row[:, None, None])
  keep = (label != dm.IGNORE_LABEL) & (row[:, None, None] > 0)
  want = sk_confusion(label[keep], pred[keep], labels=range(5))
  chex.assert_trees_all_close(np.asarray(got), want.astype(np.float32))


def test_segmentation_scores_by_hand():
  conf = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]], np.float64)  # class 2 absent everywhere: excluded from mIoU
  s = dm.segmentation_scores(conf, ("a", "b", "c"))
  iou_a, iou_b = 5 / (6 + 7 - 5), 3 / (5 + 4 - 3)
  assert s["pixel_accuracy"] == pytest.approx(8 / 11)
  assert s["miou"] == pytest.approx((iou_a + iou_b) / 2)
  assert s["mean_accuracy"] == pytest.approx((5 / 6 + 3 / 5) / 2)
  assert s["fw_iou"] == pytest.approx((6 * iou_a + 5 * iou_b) / 11)
  assert np.isnan(s["iou/c"]) and s["iou/a"] == pytest.approx(iou_a)


def test_boundary_band_matches_a_numpy_loop():
  rng = np.random.default_rng(1)
  label = np.zeros((2, 12, 13), np.int32)
  label[0, 3:8, 4:10] = 2
  label[1] = rng.integers(0, 2, (12, 13)) * (np.arange(13) > 6)
  for width in (0, 1, 2):
    got = np.asarray(dm.boundary_band(jnp.asarray(label), width))
    want = np.zeros(label.shape, np.float32)
    for b in range(2):
      edge = np.zeros((12, 13), bool)
      for y in range(12):
        for x in range(13):
          for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < 12 and 0 <= xx < 13 and label[b, yy, xx] != label[b, y, x]:
              edge[y, x] = True
      for y in range(12):
        for x in range(13):
          want[b, y, x] = edge[max(0, y - width):y + width + 1, max(0, x - width):x + width + 1].any()
    np.testing.assert_array_equal(got, want)


def test_epe_and_rmse_sums():
  rng = np.random.default_rng(2)
  f, g = rng.normal(size=(2, 5, 6, 2)), rng.normal(size=(2, 5, 6, 2))
  s, n = dm.endpoint_error_sum(jnp.asarray(f), jnp.asarray(g), jnp.asarray([1.0, 0.0])[:, None, None])
  assert float(s) == pytest.approx(np.linalg.norm(f[0] - g[0], axis=-1).sum(), rel=1e-5) and float(n) == 30
  d, e = rng.normal(size=(3, 4, 4)), rng.normal(size=(3, 4, 4))
  s, n = dm.squared_error_sum(jnp.asarray(d), jnp.asarray(e))
  assert np.sqrt(float(s) / float(n)) == pytest.approx(np.sqrt(np.mean((d - e) ** 2)), rel=1e-5)
  with pytest.raises(ValueError, match="end in 2"):
    dm.endpoint_error_sum(jnp.zeros((2, 3)), jnp.zeros((2, 3)))


def _record(size=40, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 255, (size, size, 3), np.uint8)
  instance = np.zeros((size, size, 1), np.uint8)
  instance[5:15, 5:25] = 1   # 200 px object (small bucket: <= 256)
  instance[20:40, 0:40] = 2  # 800 px object (medium)
  semantic = np.where(instance == 1, 3, np.where(instance == 2, 7, 0)).astype(np.uint8)
  return {"image": image, "semantic": semantic, "instance": instance}


def test_transform_labels_sizes_and_augmentation():
  raw = _record()
  tf = seg.SegmentationTransform(32, 13, sizes=True)
  out = tf(raw)
  chex.assert_shape(out["image"], (32, 32, 3))
  chex.assert_shape(out["label"], (32, 32))
  assert set(np.unique(out["label"])) == {0, 3, 7}
  areas = set(np.unique(out["object_area"]).tolist())
  assert areas == {0.0, 200.0, 800.0}  # areas in original pixels, carried to every pixel of the object
  np.testing.assert_array_equal(out["object_area"] > 0, out["label"] > 0)
  # labels outside [0, num_classes) are ignored
  out = seg.SegmentationTransform(32, 5)(raw)
  assert set(np.unique(out["label"])) == {0, 3, seg.IGNORE}
  # augmentation moves the labels with the image: a flipped copy of a left/right-split scene stays consistent
  aug = seg.SegmentationTransform(32, 13, min_scale=0.5, max_scale=1.5, hflip=True)
  for s in range(6):
    o = aug(raw, np.random.default_rng(s))
    chex.assert_shape(o["label"], (32, 32))
    present = set(np.unique(o["label"]).tolist())
    assert present <= {0, 3, 7, seg.IGNORE}
  with pytest.raises(ValueError, match="label_key"):
    seg.SegmentationTransform(32, 13, label_key="segmentation_mask")(raw)


class _TinySegmenter(nn.Module):
  """Two convs (and a BatchNorm), output at input size: enough to exercise the task."""
  num_classes: int
  bn: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.Conv(8, (3, 3))(x)
    y = nn.relu(nn.BatchNorm(use_running_average=not train)(y) if self.bn else y)
    return {"logits": nn.Conv(self.num_classes, (1, 1))(y), "aux_logits": nn.Conv(self.num_classes, (1, 1))(x)}


def _toy_arrays(n=16, size=16):
  rng = np.random.default_rng(0)
  labels = np.zeros((n, size, size), np.int32)
  images = np.zeros((n, size, size, 3), np.float32)
  for i in range(n):
    c = 1 + i % 2
    y0, x0 = rng.integers(0, size // 2, 2)
    labels[i, y0:y0 + 6, x0:x0 + 6] = c
    images[i, ..., c] = (labels[i] == c) * 2.0
  images += rng.normal(0, 0.1, images.shape)
  return {"image": images.astype(np.float32), "label": labels}


def _train(devices, steps=30, workdir=None, bn=True):
  cfg = seg.SegmentationConfig(num_steps=steps, learning_rate=0.1, warmup_steps=0, batch_size=8, boundary_width=1)
  task = seg.SegmentationTask(_TinySegmenter(3, bn), cfg, 3, ("bg", "a", "b"))
  data = _toy_arrays()
  batches = ArrayBatches(data, global_batch_size=8, seed=0)

  def eval_data():
    return iter([{**{k: v[:8] for k, v in data.items()}, "valid": np.ones(8, np.float32)}])
  mesh = task_lib.make_mesh(jax.devices()[:devices])
  return loop.train(task, batches, config=loop.LoopConfig(num_steps=steps, eval_every=steps, progress_bar=False),
                    mesh=mesh, eval_data=eval_data, workdir=workdir)


def test_task_trains_on_the_loop_and_devices_agree():
  _, r = _train(1)  # with BatchNorm (statistics in model_state)
  assert r["eval_pixel_accuracy"] > 0.9 and r["eval_miou"] > 0.5
  # without per-replica BatchNorm the (sum, count) loss makes 1 and 4 devices train the same parameters
  state1, r1 = _train(1, bn=False)
  state4, r4 = _train(4, bn=False)
  for k in ("eval_miou", "eval_pixel_accuracy", "eval_boundary_accuracy"):
    assert r1[k] == pytest.approx(r4[k], abs=1e-4), k
  chex.assert_trees_all_close(state1.params, state4.params, atol=1e-4)


def test_bad_settings_fail_with_the_flag_name():
  with pytest.raises(ValueError, match="--model="):
    seg.validate(seg.SegmentationConfig(model="unet9000"))
  with pytest.raises(ValueError, match="--output_stride"):
    seg.validate(seg.SegmentationConfig(output_stride=4))
  with pytest.raises(ValueError, match="--image_size"):
    seg.validate(seg.SegmentationConfig(image_size=100))
  with pytest.raises(ValueError, match="--min_scale"):
    seg.validate(seg.SegmentationConfig(min_scale=2.0, max_scale=1.0))
  with pytest.raises(ValueError, match="--conditions"):
    seg.conditions_from_names(("fcn", "nope"), seg.SegmentationConfig())


def test_prepared_tfds_dataset_through_mock_data(tmp_path):
  """A user's prepared TFDS segmentation set (oxford_iiit_pet: trimap labels 1..3) reads through the same code."""
  cfg = seg.SegmentationConfig(dataset="oxford_iiit_pet", data_dir=str(tmp_path), label_key="segmentation_mask",
                               label_offset=-1, num_classes=3, image_size=32, eval_split="test")
  with tfds.testing.mock_data(num_examples=4):
    d = seg.prepare_data(cfg)
    assert d.class_names == ("0", "1", "2") and not d.sizes
    tf = seg.SegmentationTransform(32, 3, label_key="segmentation_mask", label_offset=-1)
    raw = dict(d.train_source[0])
    h, w = raw["image"].shape[:2]
    if np.shape(raw["segmentation_mask"])[:2] != (h, w):  # mock_data draws the image and mask sizes independently
      with pytest.raises(ValueError, match="expected"):
        tf(raw)
    # a real record's mask has the image's size
    raw["segmentation_mask"] = np.random.default_rng(0).integers(1, 4, (h, w, 1)).astype(np.uint8)
    out = tf(raw, np.random.default_rng(0))
    chex.assert_shape(out["label"], (32, 32))
    assert set(np.unique(out["label"]).tolist()) <= {0, 1, 2, seg.IGNORE}
    with pytest.raises(ValueError, match="--label_key"):
      seg.prepare_data(dataclasses.replace(cfg, label_key="semantic"))
