"""The blocked IoU-bitmask NMS (impl="xla") against the while-loop reference (impl="reference"), bit for bit."""

import importlib
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ops_npref as npref
from research import ops

nms_mod = importlib.import_module("research.ops.nms")  # `research.ops.nms` the attribute is the function
GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "torchvision_golden.npz"))


def _hard_set(n, seed, n_classes=3):
  """Boxes in a few tight clusters (heavy overlap, IoU near every threshold), exact duplicates, exact score
  ties (scores on a 0.1 grid), NaN scores and ``n_classes`` classes: ``boxes [n, 4]``, ``scores [n]``,
  ``classes [n]``."""
  rng = np.random.default_rng(seed)
  centers = rng.uniform(0, 200, size=(max(1, n // 25), 2))
  c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 4, size=(n, 2))
  wh = rng.uniform(10, 40, size=(n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
  if n > 4:
    boxes[1::9] = boxes[0]  # identical boxes
  scores = np.round(rng.uniform(size=n), 1).astype(np.float32)  # many exact ties
  scores[3::11] = np.nan
  classes = rng.integers(0, n_classes, n).astype(np.int32)
  return boxes, scores, classes


def _both(boxes, scores, classes, thr, m, **kw):
  ref = nms_mod._nms_padded_reference(boxes, scores, classes, thr, m)
  blk = nms_mod._nms_padded_blocked(boxes, scores, classes, thr, m, **kw)
  return [np.asarray(a) for a in ref], [np.asarray(a) for a in blk]


@pytest.mark.parametrize("n,precompute", [(1, False), (63, True), (64, False), (65, True), (200, True),
                                          (700, False)])
def test_blocked_equals_reference(n, precompute):
  boxes, scores, classes = _hard_set(n, seed=n)
  thr = 0.5
  for m in (n, n // 7) if n > 64 else (n,):  # all kept / cut at max_output_size
    (ri, rn), (bi, bn) = _both(boxes, scores, classes, thr, m, precompute=precompute)
    assert bi.dtype == np.int32 and bn.dtype == np.int32 and bi.shape == (m,)
    np.testing.assert_array_equal(bi, ri)
    assert int(bn) == int(rn)
    if m == n:  # against the plain-python greedy loop: NaN scores go last, so the finite ones come first
      fin = np.flatnonzero(~np.isnan(scores))
      want = fin[npref.nms(boxes[fin], scores[fin], thr, classes[fin])]
      np.testing.assert_array_equal(bi[:len(want)], want)
      if n >= 64:
        assert 0 < len(want) < len(fin) and int(bn) > len(want)  # the set does suppress; NaN-score boxes kept

def test_blocked_edge_cases():
  boxes, scores, classes = _hard_set(70, seed=1)
  (ri, rn), (bi, bn) = _both(boxes, scores, classes, 0.5, 0)  # max_output_size 0
  assert bi.shape == (0,) and int(bn) == 0 == int(rn)
  z = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)  # N = 0
  (ri, rn), (bi, bn) = _both(*z, 0.5, 3)
  np.testing.assert_array_equal(bi, [-1, -1, -1])
  assert int(bn) == 0
  # all NaN scores: visited in index order; all-identical boxes: only the first survives
  nan = np.full(70, np.nan, np.float32)
  for s, b in ((nan, boxes), (np.ones(70, np.float32), np.tile(boxes[:1], (70, 1)))):
    (ri, rn), (bi, bn) = _both(b, s, np.zeros(70, np.int32), 0.5, 70)
    np.testing.assert_array_equal(bi, ri)
  assert int(bn) == 1
  # other block sizes; a block size that is not a multiple of 32 is refused
  for block in (32, 128):
    (ri, rn), (bi, bn) = _both(boxes, scores, classes, 0.3, 70, block=block, precompute=block == 32)
    np.testing.assert_array_equal(bi, ri)
  with pytest.raises(ValueError, match="multiple of 32"):
    nms_mod._nms_padded_blocked(boxes, scores, classes, 0.5, 4, 48)


@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_xla_impl_matches_torchvision_golden(thr):
  d = GOLDEN
  np.testing.assert_array_equal(np.asarray(ops.nms(d["nms_boxes"], d["nms_scores"], thr, impl="xla")), d[f"nms_{thr}"])
  np.testing.assert_array_equal(
      np.asarray(ops.batched_nms(d["nms_boxes"], d["nms_scores"], d["nms_classes"], thr, impl="xla")),
      d[f"batched_nms_{thr}"])


def test_xla_impl_under_jit_and_vmap_traces_once():
  sets = [_hard_set(130, seed=s) for s in (3, 4, 5)]
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(b, s, c):
    return ops.batched_nms_padded(b, s, c, 0.6, 40, impl="xla")

  for b, s, c in sets[:2]:  # new values, same shapes: no retrace
    idx, num = fn(b, s, c)
    ri, rn = nms_mod._nms_padded_reference(b, s, c, 0.6, 40)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ri))
    assert int(num) == int(rn)
  bb, ss, cc = (np.stack(x) for x in zip(*sets))
  idxs, nums = jax.jit(jax.vmap(lambda b, s, c: ops.batched_nms_padded(b, s, c, 0.6, 40, impl="xla")))(bb, ss, cc)
  for i, (b, s, c) in enumerate(sets):
    ri, rn = nms_mod._nms_padded_reference(b, s, c, 0.6, 40)
    np.testing.assert_array_equal(np.asarray(idxs[i]), np.asarray(ri))
    assert int(nums[i]) == int(rn)


def test_dispatch(monkeypatch):
  boxes, scores, classes = _hard_set(40, seed=7)
  called = []
  real = nms_mod._nms_padded_blocked
  monkeypatch.setattr(nms_mod, "_nms_padded_blocked", lambda *a: called.append(1) or real(*a))
  keep = ops.batched_nms(boxes, scores, classes, 0.5, impl="xla")
  assert called and keep.dtype == jnp.int32
  called.clear()
  np.testing.assert_array_equal(np.asarray(ops.batched_nms(boxes, scores, classes, 0.5, impl="reference")), keep)
  assert not called
  with pytest.raises(ValueError, match="impl must be one of"):
    ops.nms(boxes, scores, 0.5, impl="cuda")
