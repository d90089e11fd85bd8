"""NMS / batched NMS against a plain-python greedy loop (torchvision rules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ops_npref as npref
from research import ops

FFI = pytest.param("ffi", marks=pytest.mark.skipif(not ops.ffi_available(), reason="extension not built"))
IMPLS = ["reference", "xla", FFI]


def _random_boxes(n, seed, lo=-50.0, hi=150.0):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(lo, hi, size=(n, 2))
  wh = rng.uniform(5, 60, size=(n, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.uniform(size=n).astype(np.float32)
  scores[::7] = scores[0]  # score ties: stable order (lower index first)
  return boxes, scores


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_random(impl, thr):
  boxes, scores = _random_boxes(300, seed=int(thr * 10))
  keep = ops.nms(boxes, scores, thr, impl=impl)
  want = npref.nms(boxes, scores, thr)
  assert keep.dtype == jnp.int32 and 10 < len(want) < 300
  np.testing.assert_array_equal(np.asarray(keep), want)
  np.testing.assert_array_equal(np.asarray(ops.nms(boxes, scores, thr, max_output_size=7, impl=impl)), want[:7])


@pytest.mark.parametrize("impl", IMPLS)
def test_nms_iou_exactly_at_threshold_is_kept(impl):
  # IoU(A, B) = 1/2 exactly (kept at 0.5), IoU(A, C) = 0.83, IoU(B, C) = 0.42
  boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 2, 1.2], [5, 5, 6, 6]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  np.testing.assert_array_equal(np.asarray(ops.nms(boxes, scores, 0.5, impl=impl)), [0, 1, 3])
  np.testing.assert_array_equal(np.asarray(ops.nms(boxes, scores, 0.49, impl=impl)), [0, 3])
  # equal scores: lower index first; identical boxes suppress each other (IoU 1 > thr)
  boxes2 = np.array([[0, 0, 1, 1]] * 3, np.float32)
  np.testing.assert_array_equal(np.asarray(ops.nms(boxes2, np.ones(3, np.float32), 0.5, impl=impl)), [0])
  # zero-area boxes: IoU is 0/0 (NaN), never > thr, both kept
  boxes3 = np.array([[1, 1, 1, 1], [1, 1, 1, 1]], np.float32)
  np.testing.assert_array_equal(np.asarray(ops.nms(boxes3, np.array([0.2, 0.3], np.float32), 0.5, impl=impl)), [1, 0])


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_nms_class_isolation_negative_coordinates(impl):
  boxes, scores = _random_boxes(200, seed=5, lo=-400.0, hi=-100.0)
  classes = np.random.default_rng(0).integers(0, 4, 200).astype(np.int32)
  keep = ops.batched_nms(boxes, scores, classes, 0.5, impl=impl)
  np.testing.assert_array_equal(np.asarray(keep), npref.nms(boxes, scores, 0.5, classes))
  # identical boxes in two classes: both survive
  b = np.array([[-10, -10, -5, -5], [-10, -10, -5, -5], [-10, -10, -5, -5]], np.float32)
  keep = ops.batched_nms(b, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 0], np.int32), 0.5, impl=impl)
  np.testing.assert_array_equal(np.asarray(keep), [0, 1])


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_under_jit_and_vmap(impl):
  boxes, scores = _random_boxes(120, seed=2)
  fn = jax.jit(lambda b, s: ops.nms_padded(b, s, 0.5, 50, impl=impl))
  idx, n = fn(boxes, scores)
  want = npref.nms(boxes, scores, 0.5)
  assert idx.shape == (50,) and int(n) == min(len(want), 50)
  np.testing.assert_array_equal(np.asarray(idx[:int(n)]), want[:50])
  assert np.all(np.asarray(idx[int(n):]) == -1)
  bb = np.stack([boxes, boxes[::-1].copy()])
  ss = np.stack([scores, scores[::-1].copy()])
  idxs, ns = jax.vmap(lambda b, s: ops.nms_padded(b, s, 0.5, 200, impl=impl))(bb, ss)
  for i in range(2):
    np.testing.assert_array_equal(np.asarray(idxs[i, :int(ns[i])]), npref.nms(bb[i], ss[i], 0.5))
  idx0, n0 = ops.nms_padded(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 4, impl=impl)
  assert int(n0) == 0 and np.all(np.asarray(idx0) == -1)
  with pytest.raises(ValueError, match="nms_padded"):
    jax.jit(lambda b, s: ops.nms(b, s, 0.5))(boxes, scores)


def test_bad_input():
  with pytest.raises(ValueError, match=r"\(3, 5\)"):
    ops.nms(np.zeros((3, 5)), np.zeros(3), 0.5)
  with pytest.raises(ValueError, match=r"\(2,\)"):
    ops.nms(np.zeros((3, 4)), np.zeros(2), 0.5)
