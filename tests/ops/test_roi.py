"""RoIAlign / PS-RoIAlign / RoIPool against float64 numpy loops written from torchvision's semantics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ops_npref as npref
from research import ops

FFI = pytest.param("ffi", marks=pytest.mark.skipif(not ops.ffi_available(), reason="extension not built"))
IMPLS = ["reference", "xla", FFI]
# float16 on the reference path is the float32 computation again (as bf16): slow-only there
LOW_PRECISION = [("reference", jnp.bfloat16), pytest.param("reference", jnp.float16, marks=pytest.mark.slow)] + [
    pytest.param("ffi", d, marks=pytest.mark.skipif(not ops.ffi_available(), reason="extension not built"))
    for d in (jnp.bfloat16, jnp.float16)]


def test_extension_built():
  """The C++ kernels are part of the package: a missing extension is a build failure, not a skip."""
  if os.environ.get("RESEARCH_OPS_ALLOW_NO_FFI") == "1":
    pytest.skip("RESEARCH_OPS_ALLOW_NO_FFI=1")
  assert ops.ffi_available(), "`_research_kernels` is not importable; run `pip install -e .`"


def _features(n=2, h=9, w=11, c=3, seed=0):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


# boxes (x1, y1, x2, y2) in input coordinates: inside, partly outside, fully outside, zero-size, sub-pixel,
# larger than the map, reversed, touching the far border, negative.
EDGE_BOXES = np.array([
    [1.3, 2.2, 7.9, 6.1],
    [-3.1, -2.6, 4.2, 3.3],
    [6.1, 5.2, 15.7, 12.3],
    [20.1, 20.2, 30.3, 25.4],
    [-9.1, -8.2, -2.3, -1.4],
    [4.1, 4.1, 4.1, 4.1],
    [3.1, 2.4, 3.6, 2.9],
    [-20.3, -15.1, 31.2, 27.4],
    [7.1, 6.2, 2.3, 1.4],
    [0.1, 0.2, 10.9, 8.8],
    [10.2, 8.4, 11.1, 9.3],
], np.float32)
EDGE_IDX = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1], np.int32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_edge_cases(impl, sampling_ratio, aligned):
  f = _features()
  out = ops.roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), sampling_ratio=sampling_ratio, aligned=aligned, impl=impl)
  want = npref.roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0, sampling_ratio, aligned)
  assert out.shape == (len(EDGE_BOXES), 2, 3, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  assert np.abs(want[3]).max() == 0 and np.all(np.abs(want[:3]).max(axis=(1, 2, 3)) > 0)  # both kinds


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_spatial_scale_sixteenth(impl):
  f = _features(n=1, h=8, w=10, c=4, seed=1)
  boxes = EDGE_BOXES * 16 + np.float32(3)
  idx = np.zeros(len(boxes), np.int32)
  for sr in (-1, 2):
    out = ops.roi_align(f, boxes, idx, 3, spatial_scale=1 / 16, sampling_ratio=sr, impl=impl)
    want = npref.roi_align(f, boxes, idx, (3, 3), 1 / 16, sr, True)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_adaptive_grid_large_boxes(impl):
  """Adaptive sampling with a grid of up to 60x70 samples per bin is exact (no static bound)."""
  f = _features(n=1, h=6, w=7, c=2, seed=2)
  boxes = np.array([[-60.3, -50.2, 80.1, 70.7], [-1.1, -0.9, 7.1, 6.2], [2.1, 1.2, 2.6, 40.3]], np.float32)
  idx = np.zeros(3, np.int32)
  out = ops.roi_align(f, boxes, idx, 2, sampling_ratio=-1, impl=impl)
  want = npref.roi_align(f, boxes, idx, (2, 2), 1.0, -1, True)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_empty_nan_and_bad_index(impl):
  f = _features()
  out = ops.roi_align(f, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), 7, impl=impl)
  assert out.shape == (0, 7, 7, 3)
  g = jax.grad(lambda f: ops.roi_align(f, jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32), 7, impl=impl).sum())(f)
  assert g.shape == f.shape and not np.any(np.asarray(g))
  boxes = np.array([[np.nan, 1, 3, 4], [1, 1, 3, np.inf], [1, 1, 4, 4], [1, 1, 4, 4]], np.float32)
  idx = np.array([0, 0, 5, 1], np.int32)
  out = np.asarray(ops.roi_align(f, boxes, idx, 2, impl=impl))
  assert np.all(out[:3] == 0) and np.all(np.isfinite(out)) and np.abs(out[3]).max() > 0
  g = jax.grad(lambda f: ops.roi_align(f, boxes, idx, 2, impl=impl).sum())(f)
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("impl, dtype", LOW_PRECISION)
def test_roi_align_low_precision(impl, dtype):
  f = _features(c=8)
  out = ops.roi_align(jnp.asarray(f, dtype), EDGE_BOXES, EDGE_IDX, 3, sampling_ratio=2, impl=impl)
  assert out.dtype == dtype
  want = npref.roi_align(np.asarray(jnp.asarray(f, dtype).astype(jnp.float32)), EDGE_BOXES, EDGE_IDX, (3, 3), 1.0,
                         2, True)
  tol = 1e-2 if dtype == jnp.bfloat16 else 2e-3
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), want, rtol=tol, atol=tol)


def test_roi_align_reference_gradient_finite_differences():
  f = _features(n=2, h=5, w=6, c=2)
  boxes = np.array([[0.3, 0.7, 4.2, 3.9], [-1.0, 1.5, 8.0, 4.0], [2.0, 2.0, 2.6, 2.4]], np.float32)
  idx = np.array([0, 1, 0], np.int32)
  with jax.enable_x64(True):
    for sr in (-1, 2):
      check_grads(lambda f: ops.roi_align(f, boxes, idx, (2, 2), sampling_ratio=sr, impl="reference"),
                  (jnp.asarray(f, jnp.float64),), order=1, modes=("rev",), eps=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_gradient_is_adjoint(impl):
  """<g, J v> (by finite differences of the linear map) == <J^T g, v> (the backward kernel)."""
  f = _features()
  rng = np.random.default_rng(3)
  v = rng.normal(size=f.shape).astype(np.float32)
  gout = rng.normal(size=(len(EDGE_BOXES), 3, 2, 3)).astype(np.float32)
  for sr in (-1, 2):
    fn = lambda f: ops.roi_align(f, EDGE_BOXES, EDGE_IDX, (3, 2), sampling_ratio=sr, impl=impl)
    jv = (npref.roi_align(f + v, EDGE_BOXES, EDGE_IDX, (3, 2), 1.0, sr) -
          npref.roi_align(f - v, EDGE_BOXES, EDGE_IDX, (3, 2), 1.0, sr)) / 2
    _, vjp = jax.vjp(fn, jnp.asarray(f))
    jtg = np.asarray(vjp(jnp.asarray(gout))[0])
    np.testing.assert_allclose(np.sum(jtg * v), np.sum(gout * jv), rtol=1e-4)


@pytest.mark.skipif(not ops.ffi_available(), reason="extension not built")
def test_roi_align_ffi_matches_reference_random():
  rng = np.random.default_rng(4)
  f = rng.normal(size=(3, 20, 24, 5)).astype(np.float32)
  xy = rng.uniform(-8, 28, size=(40, 2))
  wh = rng.exponential(6, size=(40, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32) * 4
  idx = rng.integers(0, 3, 40).astype(np.int32)
  g = rng.normal(size=(40, 7, 7, 5)).astype(np.float32)
  for sr in (-1, 2):
    for aligned in (True, False):
      outs = []
      for impl in ("reference", "ffi"):
        fn = lambda f: ops.roi_align(f, boxes, idx, 7, spatial_scale=0.25, sampling_ratio=sr, aligned=aligned,
                                     impl=impl)
        y, vjp = jax.vjp(fn, jnp.asarray(f))
        outs.append((np.asarray(y), np.asarray(vjp(jnp.asarray(g))[0])))
      np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_jit_vmap_grad(impl):
  f = np.stack([_features(seed=s) for s in range(3)])  # [V, N, H, W, C]
  boxes = np.stack([EDGE_BOXES + s for s in range(3)])
  idx = np.stack([EDGE_IDX] * 3)
  fn = lambda f, b, i: ops.roi_align(f, b, i, 2, sampling_ratio=-1, impl=impl)
  out = jax.jit(jax.vmap(fn))(f, boxes, idx)
  for s in range(3):
    np.testing.assert_allclose(np.asarray(out[s]), npref.roi_align(f[s], boxes[s], idx[s], (2, 2)),
                               rtol=1e-5, atol=1e-5)
  # vmap over the features only (boxes shared), then grad of a scalar through jit
  out2 = jax.vmap(fn, in_axes=(0, None, None))(f, boxes[0], idx[0])
  np.testing.assert_allclose(np.asarray(out2[2]), npref.roi_align(f[2], boxes[0], idx[0], (2, 2)), rtol=1e-5,
                             atol=1e-5)
  gv = jax.jit(jax.vmap(jax.grad(lambda f, b, i: fn(f, b, i).sum())))(f, boxes, idx)
  g0 = jax.grad(lambda f: fn(f, boxes[1], idx[1]).sum())(jnp.asarray(f[1]))
  np.testing.assert_allclose(np.asarray(gv[1]), np.asarray(g0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_roi_align(impl, sampling_ratio):
  f = _features(c=2 * 2 * 3, seed=5)
  out = ops.ps_roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), sampling_ratio=sampling_ratio, impl=impl)
  want = npref.ps_roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0, sampling_ratio)
  assert out.shape == (len(EDGE_BOXES), 2, 3, 2)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  rng = np.random.default_rng(0)
  v = rng.normal(size=f.shape).astype(np.float32)
  g = rng.normal(size=out.shape).astype(np.float32)
  jv = (npref.ps_roi_align(f + v, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0, sampling_ratio) -
        npref.ps_roi_align(f - v, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0, sampling_ratio)) / 2
  _, vjp = jax.vjp(lambda f: ops.ps_roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), sampling_ratio=sampling_ratio,
                                              impl=impl), jnp.asarray(f))
  np.testing.assert_allclose(np.sum(np.asarray(vjp(jnp.asarray(g))[0]) * v), np.sum(g * jv), rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_pool(impl):
  f = _features(c=4, seed=6)
  f[0, 3, 4, :] = f[0, 3, 5, :] = 9.0  # a tie: the gradient goes to the first in row-major order
  boxes = np.concatenate([EDGE_BOXES, [[2.5, 1.5, 6.5, 5.5]], [[0.49, 0.5, 2.5, -3.5]]]).astype(np.float32)
  idx = np.concatenate([EDGE_IDX, [0, 1]]).astype(np.int32)
  for scale in (1.0, 0.5):
    out = ops.roi_pool(f, boxes, idx, (2, 3), spatial_scale=scale, impl=impl)
    want, arg = npref.roi_pool(f, boxes, idx, (2, 3), scale)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=0)
    g = np.random.default_rng(1).normal(size=want.shape).astype(np.float32)
    gf = np.asarray(jax.grad(lambda f: jnp.sum(ops.roi_pool(f, boxes, idx, (2, 3), spatial_scale=scale,
                                                            impl=impl) * g))(jnp.asarray(f)))
    want_g = np.zeros(f.shape)
    n, h, w, c = f.shape
    for k, i, j, ch in zip(*np.nonzero(arg >= 0)):
      a = arg[k, i, j, ch]
      want_g[idx[k], a // w, a % w, ch] += g[k, i, j, ch]
    np.testing.assert_allclose(gf, want_g, rtol=1e-6, atol=1e-6)
    if scale == 1.0:  # box 11 has a bin holding both tied maxima (row 3, columns 4 and 5): first one wins
      assert want[11, 0, 1, 0] == 9.0 and np.all(arg[11, 0, 1] == 3 * w + 4)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_pool_and_ps_roi_align_vmap_grad(impl):
  f = np.stack([_features(c=4, seed=s) for s in range(2)])
  boxes = np.stack([EDGE_BOXES[:6], EDGE_BOXES[5:] * 0.7])
  idx = np.stack([EDGE_IDX[:6], EDGE_IDX[5:]])
  for op, ref in ((ops.roi_pool, lambda f, b, i: npref.roi_pool(f, b, i, (2, 2))[0]),
                  (ops.ps_roi_align, lambda f, b, i: npref.ps_roi_align(f, b, i, (2, 2)))):
    fn = lambda f, b, i: op(f, b, i, 2, impl=impl)
    out = jax.jit(jax.vmap(fn))(f, boxes, idx)
    gv = jax.vmap(jax.grad(lambda f, b, i: jnp.sum(fn(f, b, i) ** 2)))(f, boxes, idx)
    for s in range(2):
      np.testing.assert_allclose(np.asarray(out[s]), ref(f[s], boxes[s], idx[s]), rtol=1e-5, atol=1e-5)
      g1 = jax.grad(lambda f: jnp.sum(fn(f, boxes[s], idx[s]) ** 2))(jnp.asarray(f[s]))
      np.testing.assert_allclose(np.asarray(gv[s]), np.asarray(g1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", [ops.roi_align, ops.ps_roi_align, ops.roi_pool])
def test_roi_bad_input(op):
  f = np.zeros((1, 4, 4, 4), np.float32)
  with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
    op(f[0], np.zeros((1, 4)), np.zeros(1, np.int32), 2)
  with pytest.raises(ValueError, match=r"\(3, 5\)"):
    op(f, np.zeros((3, 5)), np.zeros(3, np.int32), 2)
  with pytest.raises(ValueError, match=r"\(2,\)"):
    op(f, np.zeros((3, 4)), np.zeros(2, np.int32), 2)
  with pytest.raises(ValueError, match="divisible"):
    ops.ps_roi_align(f, np.zeros((1, 4)), np.zeros(1, np.int32), 3)
  with pytest.raises(ValueError, match="impl"):
    op(f, np.zeros((1, 4)), np.zeros(1, np.int32), 2, impl="cuda")
