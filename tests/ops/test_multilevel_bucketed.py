"""Bucketed multi-level RoIAlign (each box pooled on its FPN level only) against the all-levels sum."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.roi import POOLERS, MultiLevelRoIAlign, fpn_levels, multilevel_roi_align

STRIDES = (4, 8, 16, 32)
IMAGE = 96
SIZE = (3, 2)


def _inputs(k=24, c=3, n=2, seed=0):
  """FPN features of an ``IMAGE``-pixel image pair and ``k`` boxes whose sizes span all four levels."""
  rng = np.random.default_rng(seed)
  feats = [rng.normal(size=(n, IMAGE // s, IMAGE // s, c)).astype(np.float32) for s in STRIDES]
  side = np.exp(rng.uniform(np.log(6.0), np.log(90.0), size=(k, 2)))  # canonical size 28: levels 2..5
  xy = rng.uniform(0, IMAGE - side)
  boxes = np.concatenate([xy, xy + side], 1).astype(np.float32)
  idx = rng.integers(0, n, k).astype(np.int32)
  return feats, boxes, idx


KW = dict(canonical_size=28.0, sampling_ratio=2, impl="reference")


@pytest.mark.parametrize("pooler,impl", [(p, "reference") for p in POOLERS] + [("align", "auto")])
def test_bucketed_equals_all_levels_values_and_feature_grads(pooler, impl):
  feats, boxes, idx = _inputs()
  levels = np.asarray(fpn_levels(jnp.asarray(boxes), 2, 5, canonical_size=28.0))
  assert set(levels.tolist()) == {2, 3, 4, 5}  # the boxes span every level
  g = np.random.default_rng(1).normal(size=(len(boxes),) + SIZE + (3,)).astype(np.float32)

  def loss(feats, bucketed):
    out = multilevel_roi_align(feats, STRIDES, boxes, idx, SIZE, pooler=pooler, bucketed=bucketed,
                               **{**KW, "impl": impl})
    return jnp.sum(out * g), out

  f = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, want), gwant = f(feats, False)
  (_, got), ggot = f(feats, True)
  assert got.shape == (len(boxes),) + SIZE + (3,)
  assert float(jnp.abs(want).min(axis=(1, 2, 3)).max()) > 0  # every box got non-zero features
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  for a, b in zip(ggot, gwant):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(b).max()) > 0


def test_capacity_per_level_and_overflow_count():
  feats, boxes, idx = _inputs(k=24, seed=2)
  levels = np.asarray(fpn_levels(jnp.asarray(boxes), 2, 5, canonical_size=28.0))
  counts = np.array([(levels == lv).sum() for lv in (2, 3, 4, 5)])
  full = np.asarray(jax.jit(lambda f, b, i: multilevel_roi_align(f, STRIDES, b, i, SIZE, **KW))(feats, boxes, idx))
  # per-level capacities at (or above) the counts: same values, nothing dropped
  run = jax.jit(lambda f, b, i, caps: multilevel_roi_align(f, STRIDES, b, i, SIZE, bucketed=True, level_capacity=caps,
                                                           return_overflow=True, **KW), static_argnums=3)
  out, over = run(feats, boxes, idx, tuple(int(c) + d for c, d in zip(counts, (0, 3, 0, 1))))
  np.testing.assert_allclose(np.asarray(out), full, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(over), [0, 0, 0, 0])
  # one short on the first level, none on the last, 2 on every level: the first `cap` boxes of a level (in box
  # order) are pooled, the rest give zeros and are counted
  for caps in ((int(counts[0]) - 1, int(counts[1]), int(counts[2]), 0), 2):
    out, over = run(feats, boxes, idx, caps)
    cap = np.broadcast_to(np.asarray(caps), (4,))
    np.testing.assert_array_equal(np.asarray(over), np.maximum(counts - cap, 0))
    rank = np.array([(levels[:i] == levels[i]).sum() for i in range(len(boxes))])
    dropped = rank >= cap[levels - 2]
    assert dropped.sum() == np.maximum(counts - cap, 0).sum() > 0
    np.testing.assert_array_equal(np.asarray(out)[dropped], 0.0)
    np.testing.assert_allclose(np.asarray(out)[~dropped], full[~dropped], rtol=1e-6, atol=1e-6)


def test_module_and_argument_checks():
  feats, boxes, idx = _inputs(k=10, seed=3)
  base = MultiLevelRoIAlign(output_size=SIZE, strides=STRIDES, canonical_size=28.0)  # impl "auto"
  bucketed = base.clone(bucketed=True)
  want = jax.jit(base.apply)({}, feats, boxes, idx)
  np.testing.assert_allclose(np.asarray(jax.jit(bucketed.apply)({}, feats, boxes, idx)), np.asarray(want), rtol=1e-6,
                             atol=1e-6)
  out, over = jax.jit(base.clone(bucketed=True, level_capacity=(4, 4, 4, 4), return_overflow=True).apply)(
      {}, feats, boxes, idx)
  assert out.shape == want.shape and over.shape == (4,) and over.dtype == jnp.int32
  with pytest.raises(ValueError, match="return_overflow=True"):  # a capacity below K must not be silent
    bucketed.clone(level_capacity=3).apply({}, feats, boxes, idx)
  with pytest.raises(ValueError, match="one per level"):
    multilevel_roi_align(feats, STRIDES, boxes, idx, SIZE, bucketed=True, level_capacity=(4, 4), **KW)
  with pytest.raises(ValueError, match="bucketed=True only"):
    multilevel_roi_align(feats, STRIDES, boxes, idx, SIZE, level_capacity=4, **KW)
  assert isinstance(base, nn.Module)
