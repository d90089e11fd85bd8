"""research.ops vs torchvision 0.28 outputs and gradients stored in data/torchvision_golden.npz.

The file is written by make_torchvision_golden.py (run once in a separate interpreter with torch); this test
does not need torch.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import ops

FFI = pytest.param("ffi", marks=pytest.mark.skipif(not ops.ffi_available(), reason="extension not built"))
IMPLS = ["reference", "xla", FFI]
GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "torchvision_golden.npz"))


def _vjp(fn, *args, g):
  out, vjp = jax.vjp(fn, *map(jnp.asarray, args))
  return np.asarray(out), [np.asarray(v) for v in vjp(jnp.asarray(g))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align(impl, aligned, sampling_ratio, scale):
  d = GOLDEN
  key = f"roi_align_a{int(aligned)}_sr{sampling_ratio}_s{scale}"
  fn = lambda f: ops.roi_align(f, d["roi_boxes"], d["roi_idx"], (3, 2), spatial_scale=scale,
                               sampling_ratio=sampling_ratio, aligned=aligned, impl=impl)
  out, (gf,) = _vjp(fn, d["roi_features"][..., :4], g=d[key + "_g"])
  np.testing.assert_allclose(out, d[key], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gf, d[key + "_gf"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_roi_align(impl, sampling_ratio):
  d = GOLDEN
  key = f"ps_roi_align_sr{sampling_ratio}"
  fn = lambda f: ops.ps_roi_align(f, d["roi_boxes"], d["roi_idx"], 3, spatial_scale=0.5,
                                  sampling_ratio=sampling_ratio, impl=impl)
  out, (gf,) = _vjp(fn, d["roi_features"], g=d[key + "_g"])
  finite = np.isfinite(d[key])  # torchvision divides by a zero sample count for empty adaptive grids
  np.testing.assert_allclose(out[finite], d[key][finite], rtol=1e-5, atol=1e-5)
  assert np.all(out[~finite] == 0)
  if finite.all():
    np.testing.assert_allclose(gf, d[key + "_gf"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_pool(impl):
  d = GOLDEN
  fn = lambda f: ops.roi_pool(f, d["roi_boxes"], d["roi_idx"], (3, 2), spatial_scale=0.5, impl=impl)
  out, (gf,) = _vjp(fn, d["roi_features"][..., :4], g=d["roi_pool_g"])
  np.testing.assert_array_equal(out, d["roi_pool"])
  np.testing.assert_allclose(gf, d["roi_pool_gf"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_deform_conv2d(impl):
  d = GOLDEN
  fn = lambda x, o, m, w, b: ops.deform_conv2d(x, o, w, mask=m, bias=b, padding=(1, 1), groups=2, offset_groups=2,
                                               impl=impl)
  out, grads = _vjp(fn, d["dcn_x"], d["dcn_offset"], d["dcn_mask"], d["dcn_weight"], d["dcn_bias"], g=d["dcn_g"])
  np.testing.assert_allclose(out, d["dcn_out"], rtol=1e-4, atol=1e-4)
  for name, got in zip(("gx", "goffset", "gmask", "gweight", "gbias"), grads):
    np.testing.assert_allclose(got, d["dcn_" + name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms(impl, thr):
  d = GOLDEN
  np.testing.assert_array_equal(np.asarray(ops.nms(d["nms_boxes"], d["nms_scores"], thr, impl=impl)), d[f"nms_{thr}"])
  np.testing.assert_array_equal(
      np.asarray(ops.batched_nms(d["nms_boxes"], d["nms_scores"], d["nms_classes"], thr, impl=impl)),
      d[f"batched_nms_{thr}"])
