"""The accelerator-friendly "xla" paths (4-corner gathers) and the implementation resolver's errors.

The "xla" paths also run through every case of test_roi.py (parametrised there); this file checks what is
specific to them: the static bound on the adaptive grid changes speed but never the result, their cost does
not grow with the feature map (XLA's own FLOP count), and misuse fails before tracing with one clear message.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ops_npref as npref
from research import ops
from research.ops import _ffi
from test_roi import EDGE_BOXES, EDGE_IDX, _features


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_xla_adaptive_within_and_beyond_bound(aligned):
  """Bound 64 (every grid fits: the gather path alone) and bound 1 (most grids overflow: the exact fallback)."""
  f = _features()
  want = npref.roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0, -1, aligned)
  for bound in (64, 1, 3):
    out = ops.roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), sampling_ratio=-1, aligned=aligned, impl="xla",
                        adaptive_grid_bound=bound)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


def test_ps_roi_align_xla_matches_oracle_and_reference_gradient():
  f = _features(n=2, h=9, w=11, c=2 * 2 * 3)
  for sr in (-1, 2):
    out = ops.ps_roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), sampling_ratio=sr, impl="xla", adaptive_grid_bound=64)
    want = npref.ps_roi_align(f, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0, sr)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  g = np.random.default_rng(3).normal(size=out.shape).astype(np.float32)
  grads = [jax.grad(lambda x, i=impl: jnp.sum(ops.ps_roi_align(x, EDGE_BOXES, EDGE_IDX, (2, 3), impl=i) * g))(f)
           for impl in ("xla", "reference")]
  np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), rtol=1e-5, atol=1e-5)


def test_roi_pool_xla_bound_and_tie_gradient():
  """Integer-valued features make ties: the gradient goes to the first maximum in row-major order."""
  rng = np.random.default_rng(4)
  f = rng.integers(0, 3, size=(2, 9, 11, 3)).astype(np.float32)
  want, _ = npref.roi_pool(f, EDGE_BOXES, EDGE_IDX, (2, 3), 1.0)
  g = rng.normal(size=want.shape).astype(np.float32)
  ref_grad = jax.grad(lambda x: jnp.sum(ops.roi_pool(x, EDGE_BOXES, EDGE_IDX, (2, 3), impl="reference") * g))(f)
  for bound in (16, 1):
    out = ops.roi_pool(f, EDGE_BOXES, EDGE_IDX, (2, 3), impl="xla", window_bound=bound)
    np.testing.assert_array_equal(np.asarray(out), want)
    grad = jax.grad(lambda x, b=bound: jnp.sum(ops.roi_pool(x, EDGE_BOXES, EDGE_IDX, (2, 3), impl="xla",
                                                            window_bound=b) * g))(f)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-6, atol=1e-6)


def _flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_xla_path_cost_does_not_scale_with_the_feature_map():
  """XLA's FLOP count: the separable reference grows with H*W, the gather path does not."""
  rng = np.random.default_rng(5)
  boxes = jnp.asarray(rng.uniform(0, 100, size=(64, 2)).repeat(2, axis=1) + [0, 0, 20, 20], jnp.float32)
  boxes = boxes[:, [0, 1, 2, 3]]
  idx = jnp.zeros(64, jnp.int32)
  counts = {}
  for hw in (32, 128):
    f = jnp.zeros((1, hw, hw, 32), jnp.float32)
    for impl in ("reference", "xla"):
      counts[impl, hw] = _flops(lambda x, b, i, m=impl: ops.roi_align(x, b, i, 7, spatial_scale=0.25,
                                                                       sampling_ratio=2, impl=m), f, boxes, idx)
  assert counts["reference", 128] > 3 * counts["reference", 32]
  assert counts["xla", 128] < 1.2 * counts["xla", 32]
  assert counts["reference", 128] > 20 * counts["xla", 128]


def test_resolver_paths_and_probe(monkeypatch):
  assert _ffi.resolve("reference", "op", "float32") == "reference"
  assert _ffi.resolve("xla", "op", "float64") == "xla"
  monkeypatch.setattr(_ffi.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(_ffi, "_PROBES", {})
  assert _ffi.resolve("auto", "a", "float32", pallas_probe=lambda: True) == "pallas"
  assert _ffi.resolve("auto", "b", "float32", pallas_probe=lambda: False) == "xla"
  assert _ffi.resolve("auto", "c", "float32") == "xla"

  def broken():
    raise RuntimeError("does not lower")

  assert _ffi.resolve("auto", "d", "float32", pallas_probe=broken) == "xla"
  monkeypatch.setattr(_ffi.jax, "default_backend", lambda: "tpu")
  assert _ffi.resolve("auto", "a", "float32", pallas_probe=lambda: True) == "xla"  # GPU kernels only


@pytest.mark.skipif(not ops.ffi_available(), reason="extension not built")
def test_ffi_off_cpu_fails_before_tracing_with_one_message(monkeypatch):
  f = jnp.zeros((1, 8, 8, 4), jnp.float32)
  boxes, idx = jnp.zeros((2, 4), jnp.float32), jnp.zeros(2, jnp.int32)
  monkeypatch.setattr(_ffi.jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match=r"roi_align\(impl='ffi'\).*CPU backend only.*'gpu'.*impl='auto'"):
    ops.roi_align(f, boxes, idx, 2, impl="ffi")
  with pytest.raises(ValueError, match=r"roi_pool\(impl='ffi'\).*'gpu'"):
    ops.roi_pool(f, boxes, idx, 2, impl="ffi")
  x = jnp.zeros((1, 6, 6, 2), jnp.float32)
  with pytest.raises(ValueError, match=r"deform_conv2d\(impl='ffi'\).*'gpu'"):
    ops.deform_conv2d(x, jnp.zeros((1, 4, 4, 18)), jnp.zeros((3, 3, 2, 2)), impl="ffi")


def test_impl_misuse_messages(monkeypatch):
  f64 = np.zeros((1, 8, 8, 4))
  boxes, idx = np.zeros((2, 4), np.float32), np.zeros(2, np.int32)
  if ops.ffi_available():
    with jax.enable_x64(True), pytest.raises(ValueError, match=r"roi_align\(impl='ffi'\).*float64.*impl='xla'"):
      ops.roi_align(f64, boxes, idx, 2, impl="ffi")
  with pytest.raises(ValueError, match=r"roi_pool\(impl='pallas'\): there is no Pallas kernel"):
    ops.roi_pool(f64.astype(np.float32), boxes, idx, 2, impl="pallas")
  with pytest.raises(ValueError, match=r"impl must be one of .*'gpu_fast'"):
    ops.roi_align(f64, boxes, idx, 2, impl="gpu_fast")
  with pytest.raises(ValueError, match="adaptive_grid_bound"):
    ops.roi_align(f64, boxes, idx, 2, impl="xla", adaptive_grid_bound=0)
  monkeypatch.setattr(_ffi, "_ext", None)
  with pytest.raises(RuntimeError, match=r"roi_align\(impl='ffi'\).*pip install -e \."):
    ops.roi_align(f64.astype(np.float32), boxes, idx, 2, impl="ffi")


@pytest.mark.parametrize("aligned", [True, False])
def test_adaptive_window_is_exact_at_the_tightest_bound(aligned):
  """The (bound + 2)-row window per bin holds every touched row: with the bound equal to the largest grid of the
  call and the fallback branch removed, the window path alone equals the float64 oracle (random boxes, partly
  outside, sub-pixel, grids 1..3)."""
  from research.ops import roi as roi_mod
  rng = np.random.default_rng(7)
  f = rng.normal(size=(2, 13, 17, 3)).astype(np.float32)
  xy = rng.uniform(-4, 16, size=(40, 2))
  wh = rng.uniform(0.2, 8.5, size=(40, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  idx = rng.integers(0, 2, 40).astype(np.int32)
  want = npref.roi_align(f, boxes, idx, (3, 2), 1.0, -1, aligned)
  rh = np.maximum(wh[:, 1], 0 if aligned else 1) / 3
  rw = np.maximum(wh[:, 0], 0 if aligned else 1) / 2
  bound = int(max(np.ceil(rh).max(), np.ceil(rw).max()))
  assert bound >= 3
  out = roi_mod._roi_align_xla(jnp.asarray(f), jnp.asarray(boxes), jnp.asarray(idx), 3, 2, 1.0, -1, aligned, False,
                               bound, False)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  # worst case: bin = grid = 3 with the first sample's row fraction > 1/2 touches grid + 2 = 5 rows (binary-exact
  # coordinates, so float32 and the float64 oracle agree on the grid)
  tight = np.array([[1.25, 1.25, 10.25, 10.25], [0.875, 2.75, 9.875, 11.75], [3.75, 0.25, 12.75, 9.25]], np.float32)
  tidx = np.zeros(3, np.int32)
  want = npref.roi_align(f, tight, tidx, (3, 3), 1.0, -1, True)
  out = roi_mod._roi_align_xla(jnp.asarray(f), jnp.asarray(tight), jnp.asarray(tidx), 3, 3, 1.0, -1, True, False, 3,
                               False)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
