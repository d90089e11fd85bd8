"""Pallas kernels (research/ops/pallas_kernels.py) in interpret mode vs the pure-JAX references and float64 loops.

Interpret mode is slow: tiny shapes, few configurations, and small tiles / channel blocks (monkeypatched) so that
ragged edges, several tiles and several channel blocks are exercised. Triton lowering for CUDA is checked without
a GPU (``lowering_platforms=("cuda",)``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ops_npref as npref
from research.ops import pallas_kernels as pk
from research.ops.deform import _deform_conv2d_reference
from research.ops.roi import _ps_roi_align_reference, _roi_align_reference
from test_roi import EDGE_BOXES

# inside, partly outside, fully outside, zero-size, sub-pixel, larger than the map, reversed, NaN, inf,
# bad index (-1 and N), adaptive grids of ~60x70 samples per bin, samples on the validity boundary
BOXES = np.concatenate([EDGE_BOXES[:9], np.array([
    [np.nan, 1.0, 3.0, 4.0],
    [1.0, 1.0, 3.0, np.inf],
    [1.0, 1.0, 4.0, 4.0],
    [1.0, 1.0, 4.0, 4.0],
    [-60.3, -50.2, 80.1, 70.7],
    [0.1, 0.2, 10.9, 8.8],
    [5.5, -1.5, 11.5, 2.5],  # sampling_ratio=2, unaligned, 2x3: samples exactly at y = -1 and x = W (counted)
], np.float32)])
IDX = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, -1, 2, 0, 1, 0], np.int32)
INVALID = [9, 10, 11, 12]  # NaN, inf, index -1, index N


@pytest.fixture
def small_blocks(monkeypatch):
  """Several tiles / channel blocks with ragged edges even on tiny inputs."""
  monkeypatch.setattr(pk, "_TILE_H", 4)
  monkeypatch.setattr(pk, "_TILE_W", 8)
  monkeypatch.setattr(pk, "_MAX_CHANNEL_BLOCK", 2)


def _features(c, seed=0):
  return np.random.default_rng(seed).normal(size=(2, 9, 11, c)).astype(np.float32)


def _vjp_pallas(fn, x, g):
  out, vjp = jax.vjp(fn, jnp.asarray(x))
  return np.asarray(out), np.asarray(vjp(jnp.asarray(g))[0])


@pytest.mark.parametrize("sampling_ratio, aligned, scale", [(-1, True, 1.0), (2, False, 1.0), (-1, False, 0.5)])
def test_roi_align(small_blocks, sampling_ratio, aligned, scale):
  f = _features(3)
  g = np.random.default_rng(1).normal(size=(len(BOXES), 2, 3, 3)).astype(np.float32)
  args = (2, 3, scale, sampling_ratio, aligned)
  fn = jax.jit(lambda f: pk.roi_align_pallas(f, BOXES, IDX, *args, pk.MODE_ALIGN, interpret=True))
  out, gf = _vjp_pallas(fn, f, g)
  want = npref.roi_align(f, BOXES, IDX, (2, 3), scale, sampling_ratio, aligned)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  assert np.all(out[INVALID] == 0) and np.all(out[3] == 0) and np.all(np.abs(out[[0, 1, 2]]).max(axis=(1, 2, 3)) > 0)
  ref_out, ref_g = _vjp_pallas(jax.jit(lambda f: _roi_align_reference(f, BOXES, IDX, *args)), f, g)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gf, ref_g, rtol=1e-5, atol=1e-5)
  assert np.abs(gf).max() > 0
  # the backward kernel has no atomics: bit-identical reruns
  np.testing.assert_array_equal(_vjp_pallas(fn, f, g)[1], gf)


def test_ps_roi_align(small_blocks):
  f = _features(2 * 2 * 3, seed=5)
  g = np.random.default_rng(2).normal(size=(len(BOXES), 2, 3, 2)).astype(np.float32)
  fn = jax.jit(lambda f: pk.roi_align_pallas(f, BOXES, IDX, 2, 3, 1.0, -1, False, pk.MODE_PS, interpret=True))
  out, gf = _vjp_pallas(fn, f, g)
  assert out.shape == (len(BOXES), 2, 3, 2)
  np.testing.assert_allclose(out, npref.ps_roi_align(f, BOXES, IDX, (2, 3), 1.0, -1), rtol=1e-5, atol=1e-5)
  ref_out, ref_g = _vjp_pallas(jax.jit(lambda f: _ps_roi_align_reference(f, BOXES, IDX, 2, 3, 1.0, -1)), f, g)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gf, ref_g, rtol=1e-5, atol=1e-5)


def test_roi_align_no_boxes():
  f = _features(3)
  fn = lambda f: pk.roi_align_pallas(f, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), 2, 2, 1.0, -1, True,
                                     pk.MODE_ALIGN, interpret=True)
  assert fn(f).shape == (0, 2, 2, 3)
  g = jax.grad(lambda f: fn(f).sum())(jnp.asarray(f))
  assert g.shape == f.shape and not np.any(np.asarray(g))


def test_roi_align_low_precision_input():
  f = jnp.asarray(_features(3), jnp.bfloat16)
  out = pk.roi_align_pallas(f, BOXES[:3], IDX[:3], 2, 2, 1.0, 2, True, pk.MODE_ALIGN, interpret=True)
  assert out.dtype == jnp.bfloat16
  want = npref.roi_align(np.asarray(f.astype(jnp.float32)), BOXES[:3], IDX[:3], (2, 2), 1.0, 2, True)
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), want, rtol=1e-2, atol=1e-2)


def _dcn_inputs(cfg, b=1, h=7, w=6, seed=0, offset_scale=3.0):
  (kh, kw), stride, padding, dilation, groups, og, cin, cout = cfg
  rng = np.random.default_rng(seed)
  ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
  wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
  x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
  off = (rng.normal(size=(b, ho, wo, og * kh * kw * 2)) * offset_scale).astype(np.float32)
  mask = rng.uniform(0, 1, size=(b, ho, wo, og * kh * kw)).astype(np.float32)
  weight = rng.normal(size=(kh, kw, cin // groups, cout)).astype(np.float32)
  bias = rng.normal(size=(cout,)).astype(np.float32)
  return (x, off, weight, mask, bias), (stride, padding, dilation, groups, og)


# (kh, kw), stride, padding, dilation, groups, offset_groups, Cin, Cout
@pytest.mark.parametrize("cfg, b", [(((3, 2), (2, 1), (1, 0), (2, 1), 2, 2, 6, 4), 2),
                                    (((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, 3, 2), 1)])
def test_deform_conv2d(small_blocks, cfg, b):
  args, static = _dcn_inputs(cfg, b=b)
  x, off, weight, mask, bias = args
  fn = jax.jit(lambda *a: pk.deform_conv2d_pallas(*a, *static, interpret=True))
  ref = jax.jit(lambda *a: _deform_conv2d_reference(*a, *static))
  out, vjp = jax.vjp(fn, *map(jnp.asarray, args))
  stride, padding, dilation, groups, og = static
  want = npref.deform_conv2d(x, off, weight, mask, bias, stride, padding, dilation, groups, og)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
  ref_out, ref_vjp = jax.vjp(ref, *map(jnp.asarray, args))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5, atol=1e-5)
  g = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), jnp.float32)
  grads = vjp(g)
  for name, a, r in zip(("x", "offset", "weight", "mask", "bias"), grads, ref_vjp(g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=2e-5, err_msg=name)
  # the x-gradient scatter is a sorted gather (no atomics): bit-identical reruns
  for a, r in zip(grads, vjp(g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(r))


def test_deform_offset_gradient_zero_at_minus_one():
  """A sample exactly at y = -1 (or y = H) is outside: value 0 and offset gradient 0; y = -0.75 is inside."""
  x = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32)
  w = np.ones((1, 1, 2, 1), np.float32)
  mask = np.ones((1, 4, 4, 1), np.float32)
  off = np.zeros((1, 4, 4, 2), np.float32)
  off[0, 0, 1, 0] = -1.0  # output (0, 1): y = -1 exactly
  off[0, 3, 2, 0] = 1.0  # output (3, 2): y = 4 = H exactly
  off[0, 2, 2, 0] = -2.75  # output (2, 2): y = -0.75
  off[0, 1, 0, 1] = -1.0  # output (1, 0): x = -1 exactly
  fn = jax.jit(lambda o: pk.deform_conv2d_pallas(x, o, w, mask, None, 1, 0, 1, 1, 1, interpret=True))
  out, vjp = jax.vjp(fn, jnp.asarray(off))
  out = np.asarray(out)
  assert out[0, 0, 1, 0] == 0 and out[0, 3, 2, 0] == 0 and out[0, 1, 0, 0] == 0
  g = np.asarray(vjp(jnp.ones_like(out))[0])
  assert np.all(g[0, 0, 1] == 0) and np.all(g[0, 3, 2] == 0) and np.all(g[0, 1, 0] == 0)
  np.testing.assert_allclose(g[0, 2, 2, 0], x[0, 0, 2].sum(), rtol=1e-5)  # d/dy of (y + 1)*x[0] at y = -0.75


def _lowered_text(fn, *args):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("mode", [pk.MODE_ALIGN, pk.MODE_PS])
def test_roi_align_lowers_to_triton(mode):
  f = jnp.zeros((2, 9, 11, 12), jnp.float32)
  fn = lambda f: pk.roi_align_pallas(f, BOXES, IDX, 2, 3, 0.5, -1, True, mode, interpret=False)
  fwd = _lowered_text(fn, f)
  bwd = _lowered_text(jax.grad(lambda f: fn(f).sum()), f)
  assert "triton" in fwd and "triton" in bwd
  assert fwd.count("__gpu$xla.gpu.triton") == 1 and bwd.count("__gpu$xla.gpu.triton") == 2  # bwd: fwd + bwd kernel


def test_deform_conv2d_lowers_to_triton():
  args, static = _dcn_inputs(((3, 2), (2, 1), (1, 0), (2, 1), 2, 2, 6, 4))
  fn = lambda *a: pk.deform_conv2d_pallas(*a, *static, interpret=False)
  fwd = _lowered_text(fn, *args)
  bwd = _lowered_text(jax.grad(lambda *a: fn(*a).sum(), argnums=(0, 1, 2, 3, 4)), *args)
  assert "triton" in fwd and "triton" in bwd
  # fwd: im2col; bwd: im2col (recomputed columns), offset/mask col2im, x col2im (the fwd im2col is dead code)
  assert fwd.count("__gpu$xla.gpu.triton") == 1 and bwd.count("__gpu$xla.gpu.triton") >= 3


def test_bad_mode_and_channels():
  f = np.zeros((1, 4, 4, 6), np.float32)
  with pytest.raises(ValueError, match="divisible"):
    pk.roi_align_pallas(f, BOXES[:1], IDX[:1], 2, 2, 1.0, 2, True, pk.MODE_PS, interpret=True)
  with pytest.raises(ValueError, match="mode"):
    pk.roi_align_pallas(f, BOXES[:1], IDX[:1], 2, 2, 1.0, 2, True, 3, interpret=True)
