"""Flax layers built on research.ops: DeformConv (v1/v2) and multi-level RoIAlign (FPN)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ops_npref as npref
from research.layers.deform import DeformConv
from research.layers.roi import MultiLevelRoIAlign, fpn_levels


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_starts_as_plain_conv(modulated):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 6))
  layer = DeformConv(4, kernel_size=3, strides=2, groups=2, offset_groups=3, modulated=modulated)
  params = layer.init(jax.random.key(1), x)
  p = params["params"]
  assert p["offset_conv"]["kernel"].shape == (3, 3, 6, 3 * 9 * (3 if modulated else 2))
  p = jax.tree.map(lambda a: a, p)
  p["bias"] = jnp.arange(4.0)
  out = layer.apply({"params": p}, x)
  conv = jax.lax.conv_general_dilated(x, p["kernel"], (2, 2), [(1, 1), (1, 1)],
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
                                      precision=jax.lax.Precision.HIGHEST)
  want = (0.5 if modulated else 1.0) * conv + p["bias"]  # zero-init offsets; sigmoid(0) = 0.5 mask
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)
  # the offset branch learns: its gradient is non-zero at initialisation
  g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(p)
  assert float(jnp.abs(g["offset_conv"]["kernel"]).max()) > 0
  assert g["kernel"].shape == p["kernel"].shape


def test_deform_conv_matches_numpy_with_predicted_offsets():
  x = np.random.default_rng(0).normal(size=(1, 6, 7, 4)).astype(np.float32)
  layer = DeformConv(3, kernel_size=(3, 3), offset_groups=2, dtype=jnp.bfloat16)
  p = layer.init(jax.random.key(0), x)["params"]
  p["offset_conv"]["kernel"] = jax.random.normal(jax.random.key(2), p["offset_conv"]["kernel"].shape) * 0.3
  out = jax.jit(layer.apply)({"params": p}, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (1, 6, 7, 3)
  om = jax.lax.conv_general_dilated(x, p["offset_conv"]["kernel"], (1, 1), [(1, 1), (1, 1)],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=jax.lax.Precision.HIGHEST) + p["offset_conv"]["bias"]
  om = np.asarray(om)
  xb = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
  kb = np.asarray(p["kernel"].astype(jnp.bfloat16).astype(jnp.float32))
  want = npref.deform_conv2d(xb, om[..., :36], kb, 1 / (1 + np.exp(-om[..., 36:])), None, padding=(1, 1),
                             offset_groups=2)
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), want, rtol=5e-2, atol=5e-2)


def test_fpn_level_assignment():
  s = np.array([20.0, 111.9, 112.0, 224.0, 447.0, 448.0, 5000.0])
  boxes = np.stack([np.zeros_like(s), np.zeros_like(s), s, s], 1)
  np.testing.assert_array_equal(np.asarray(fpn_levels(jnp.asarray(boxes), 2, 5)), [2, 2, 3, 4, 4, 5, 5])


def test_multilevel_roi_align_picks_the_level():
  rng = np.random.default_rng(0)
  strides = (4, 8, 16, 32)
  feats = [rng.normal(size=(2, 512 // s, 640 // s, 3)).astype(np.float32) for s in strides]
  boxes = np.array([[10, 10, 40, 50], [5, 20, 135, 125], [0, 0, 250, 230], [10, 10, 600, 500], [3, 3, 9, 9]],
                   np.float32)
  idx = np.array([0, 1, 0, 1, 1], np.int32)
  layer = MultiLevelRoIAlign(output_size=(3, 2), strides=strides)
  out = jax.jit(lambda f, b, i: layer.apply({}, f, b, i))(feats, boxes, idx)
  levels = np.asarray(fpn_levels(jnp.asarray(boxes), 2, 5))
  assert sorted(set(levels.tolist())) == [2, 3, 4, 5]
  for k, lvl in enumerate(levels):
    l = lvl - 2
    want = npref.roi_align(feats[l], boxes[k:k + 1], idx[k:k + 1], (3, 2), 1 / strides[l], 2, True)
    np.testing.assert_allclose(np.asarray(out[k:k + 1]), want, rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda f: jnp.sum(layer.apply({}, f, boxes, idx)))(feats)
  assert all(np.isfinite(np.asarray(gl)).all() and np.abs(np.asarray(gl)).sum() > 0 for gl in g)
