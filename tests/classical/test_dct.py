"""DCT types 1-4 and JPEG quantisation (research.classical.dct, seed 003 §10) against scipy.fft and OpenCV."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft as sfft

from research.classical import dct as D

LENGTHS = (1, 2, 5, 8, 17, 32, 33)  # <= 16: matrix path, > 16: FFT path; odd and even
NORMS = (None, "ortho", "forward")


def _all_norms(x, t, inverse_too):
  """One jitted program per (shape, type): dct (and idct) for every norm, plus the round trip."""
  fns = [functools.partial(D.dct, type=t, norm=nm) for nm in NORMS]
  if inverse_too:
    fns += [functools.partial(D.idct, type=t, norm=nm) for nm in NORMS]
    fns += [lambda v, nm=nm: D.idct(D.dct(v, t, norm=nm), t, norm=nm) for nm in NORMS]
  return jax.jit(lambda v: [f(v) for f in fns])(x)


def test_dct_idct_match_scipy_float64_all_types_norms_lengths():
  rng = np.random.default_rng(0)
  worst = 0.0
  with jax.enable_x64(True):
    for n, t in itertools.product(LENGTHS, (1, 2, 3, 4)):
      if t == 1 and n == 1:
        continue
      x = rng.normal(size=(3, n))
      inverse_too = n in (2, 5, 33)
      outs = _all_norms(x, t, inverse_too)
      refs = [sfft.dct(x, t, norm=nm) for nm in NORMS]
      if inverse_too:
        refs += [sfft.idct(x, t, norm=nm) for nm in NORMS] + [x] * len(NORMS)
      for y, ref in zip(outs, refs):
        assert y.dtype == jnp.float64
        err = float(np.max(np.abs(np.asarray(y) - ref)))
        worst = max(worst, err / max(1.0, float(np.max(np.abs(ref)))))
        assert err < 1e-12 * max(1.0, n), (n, t, err)
  assert worst < 1e-13


def test_fft_path_equals_matrix_path_and_orthogonalize_flag():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    cases = [(t, norm, ortho) for t in (1, 2, 3, 4)
             for norm, ortho in (("backward", False), ("ortho", True), ("ortho", False), ("forward", True))]
    for n in (2, 7):  # short lengths normally take the matrix path: force the FFT path
      x = rng.normal(size=(2, n))
      outs = jax.jit(lambda v: [D._fft_dct_last(v, t, nm, o) for t, nm, o in cases])(x)
      for (t, norm, ortho), y in zip(cases, outs):
        chex.assert_trees_all_close(y, sfft.dct(x, t, norm=norm, orthogonalize=ortho), atol=1e-12)
    x = rng.normal(size=(2, 20))
    outs = jax.jit(lambda v: [D.dct(v, t, norm="ortho", orthogonalize=False) for t in (1, 2, 3, 4)])(x)
    for t, y in zip((1, 2, 3, 4), outs):
      chex.assert_trees_all_close(y, sfft.dct(x, t, norm="ortho", orthogonalize=False), atol=1e-12)


def test_float32_axes_n_and_dctn_match_scipy():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4, 33, 6)).astype(np.float32)
  cases = [(t, norm, axis) for t in (1, 2, 3, 4) for norm, axis in ((None, 0), ("ortho", 1), ("forward", -1))]
  outs = jax.jit(lambda v: [D.dct(v, t, axis=a, norm=nm) for t, nm, a in cases])(x)
  for (t, norm, axis), y in zip(cases, outs):
    assert y.dtype == jnp.float32
    ref = sfft.dct(x.astype(np.float64), t, axis=axis, norm=norm)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  # n: truncation and zero padding, as scipy
  for n in (20, 40):
    chex.assert_trees_all_close(D.dct(x, 2, n=n, axis=1), sfft.dct(x, 2, n=n, axis=1), rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_close(D.idct(x, 3, n=n, axis=1, norm="ortho"),
                                sfft.idct(x, 3, n=n, axis=1, norm="ortho"), rtol=1e-5, atol=1e-5)
  with jax.enable_x64(True):
    x64 = x.astype(np.float64)
    pairs = tuple(zip((1, 2, 3, 4), (None, "ortho", "forward", "ortho")))
    outs = jax.jit(lambda v: [(D.dctn(v, t, norm=nm), D.idctn(v, t, axes=(0, 2), norm=nm)) for t, nm in pairs])(x64)
    for (t, norm), (y, yi) in zip(pairs, outs):
      chex.assert_trees_all_close(y, sfft.dctn(x64, t, norm=norm), atol=1e-11)
      chex.assert_trees_all_close(yi, sfft.idctn(x64, t, axes=(0, 2), norm=norm), atol=1e-11)
    chex.assert_trees_all_close(D.dctn(x64, 2, s=(8, 5)), sfft.dctn(x64, 2, s=(8, 5)), atol=1e-11)
    chex.assert_trees_all_close(D.dct(x64 + 2j * x64, 4), sfft.dct(x64 + 2j * x64, 4), atol=1e-11)


def test_grad_is_the_transpose_and_jit_does_not_retrace():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    n = 24
    x = jnp.asarray(rng.normal(size=n))
    w = jnp.asarray(rng.normal(size=(4, n)))
    # d <w_t, C_t x> / dx = C_t^T w_t, with C_t from scipy applied to the identity (all four types at once)
    g = jax.jit(jax.grad(lambda v: sum(jnp.dot(w[t - 1], D.dct(v, t)) for t in (1, 2, 3, 4))))(x)
    ref = sum(sfft.dct(np.eye(n), t, axis=0).T @ np.asarray(w[t - 1]) for t in (1, 2, 3, 4))
    chex.assert_trees_all_close(g, ref, atol=1e-10)
    x = jnp.asarray(rng.normal(size=20))
    fd = (D.dct(x.at[3].add(1e-6), 4, norm="ortho") - D.dct(x.at[3].add(-1e-6), 4, norm="ortho")) / 2e-6
    jac = jax.jacfwd(lambda v: D.dct(v, 4, norm="ortho"))(x)
    chex.assert_trees_all_close(jac[:, 3], fd, atol=1e-8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(v):
    return D.idct(D.dct(v, 2, norm="ortho"), 2, norm="ortho")

  a = jnp.asarray(rng.normal(size=(5, 40)), jnp.float32)
  chex.assert_trees_all_close(f(a), a, atol=1e-5)
  chex.assert_trees_all_close(f(2 * a), 2 * a, atol=1e-5)


def test_dct_matrix_is_the_seed_basis_and_orthogonal():
  with jax.enable_x64(True):
    for n in (4, 8, 9):
      for t in (1, 2, 3, 4):
        C = np.asarray(D.dct_matrix(n, t, "ortho"))
        chex.assert_trees_all_close(C @ C.T, np.eye(n), atol=1e-13)
        chex.assert_trees_all_close(C, sfft.dct(np.eye(n), t, axis=0, norm="ortho"), atol=1e-13)
    C4 = np.asarray(D.dct_matrix(4))
    # seed §10 "Example: 4-point DCT": u_1 = (0.9239, 0.3827, -0.3827, -0.9239) / sqrt(2), u_2 = (1,-1,-1,1) / 2
    chex.assert_trees_all_close(C4[1], np.array([0.9239, 0.3827, -0.3827, -0.9239]) / np.sqrt(2), atol=1e-4)
    chex.assert_trees_all_close(C4[2], np.array([1, -1, -1, 1]) / 2.0, atol=1e-13)
    # its worked vector s = (2, 4, 5, 3): t_0 = 7, reconstruction from all coefficients is exact
    t = C4 @ np.array([2.0, 4.0, 5.0, 3.0])
    assert t[0] == pytest.approx(7.0)
    chex.assert_trees_all_close(C4.T @ t, np.array([2.0, 4.0, 5.0, 3.0]), atol=1e-13)
  assert D.dct_matrix(8).dtype == jnp.float32


def test_jpeg_tables_quality_and_rate():
  np.testing.assert_array_equal(np.asarray(D.quantisation_table(50)), D.JPEG_LUMINANCE_TABLE)
  np.testing.assert_array_equal(np.asarray(D.quantisation_table(50, chroma=True)), D.JPEG_CHROMINANCE_TABLE)
  np.testing.assert_array_equal(np.asarray(D.quantisation_table(100)), np.ones((8, 8)))
  # libjpeg integer arithmetic: quality 10 -> scale 500; quality 75 -> scale 50; quality 3 -> 5000 // 3 = 1666
  np.testing.assert_array_equal(np.asarray(D.quantisation_table(10)),
                                np.clip((D.JPEG_LUMINANCE_TABLE * 500 + 50) // 100, 1, 255))
  np.testing.assert_array_equal(np.asarray(D.quantisation_table(75)), (D.JPEG_LUMINANCE_TABLE * 50 + 50) // 100)
  assert int(D.quantisation_table(3)[0, 0]) == min(255, (16 * 1666 + 50) // 100)

  rng = np.random.default_rng(4)
  yy, xx = np.mgrid[0:37, 0:45]
  img = np.clip(128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 8, xx.shape), 0, 255).round()
  code = jax.jit(D.jpeg_quantise)
  results = [code(img, q) for q in (10, 30, 50, 75, 95, 100)]
  for r in results:
    chex.assert_shape(r.reconstruction, img.shape)
    chex.assert_shape(r.coefficients, (5, 6, 8, 8))
    assert float(r.reconstruction.min()) >= 0 and float(r.reconstruction.max()) <= 255
  psnrs = [float(D.psnr(r.reconstruction, img)) for r in results]
  rates = [int(r.nonzero) for r in results]
  assert all(np.diff(psnrs) > 0), psnrs
  assert all(np.diff(rates) > 0), rates
  assert psnrs[-1] > 50  # quality 100 (all steps 1) is only rounding error away from lossless
  assert float(jnp.max(jnp.abs(results[-1].reconstruction - img))) <= 2
  # quantised coefficients are multiples of the table on dequantisation: check one block by hand
  block = img[:8, :8] - 128.0
  C = D._dct_matrix_np(8, 2, "ortho", True)
  q50 = np.sign(C @ block @ C.T / D.JPEG_LUMINANCE_TABLE) * np.floor(
      np.abs(C @ block @ C.T / D.JPEG_LUMINANCE_TABLE) + 0.5)
  np.testing.assert_array_equal(np.asarray(results[2].coefficients[0, 0]), q50)


def test_jpeg_matches_opencv_grayscale_and_colour_shapes():
  cv2 = pytest.importorskip("cv2")
  yy, xx = np.mgrid[0:64, 0:80]
  img = np.clip(128 + 70 * np.sin(xx / 6.0 + yy / 9.0) + 30 * np.cos(yy / 3.0), 0, 255).astype(np.uint8)
  code = jax.jit(D.jpeg_quantise)
  for q in (25, 75):
    ours = np.asarray(code(img, q).reconstruction)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    theirs = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float64)
    # libjpeg uses a fixed-point (islow) DCT: the decoded images agree up to rare +-1 rounding flips
    assert abs(float(D.psnr(ours, img)) - float(D.psnr(theirs, img))) < 0.1
    assert np.mean(ours == theirs) > 0.9 and np.abs(ours - theirs).max() <= 8
  rgb = np.stack([img, img[::-1], 255 - img], axis=-1)
  r = code(rgb, 90)
  chex.assert_shape(r.reconstruction, rgb.shape)
  chex.assert_shape(r.coefficients, (3, 8, 10, 8, 8))
  chex.assert_shape(r.tables, (2, 8, 8))
  assert float(D.psnr(r.reconstruction, rgb)) > 35


def test_bad_inputs_raise_clear_errors():
  x = np.ones(8)
  with pytest.raises(ValueError, match="type must be 1, 2, 3 or 4; got 5"):
    D.dct(x, 5)
  with pytest.raises(ValueError, match="norm must be None, 'backward', 'ortho' or 'forward'; got 'unitary'"):
    D.idct(x, norm="unitary")
  with pytest.raises(ValueError, match="type-1 DCT needs a length >= 2"):
    D.dct(np.ones(1), 1)
  with pytest.raises(ValueError, match=r"axis=2 is out of range for x of shape \(8,\)"):
    D.dct(x, axis=2)
  with pytest.raises(ValueError, match="n must be a positive int; got 0"):
    D.dct(x, n=0)
  with pytest.raises(ValueError, match="repeats an axis"):
    D.dctn(np.ones((4, 4)), axes=(0, -2))
  with pytest.raises(ValueError, match=r"image must be \[H, W\] .* got shape \(4, 4, 2\)"):
    D.jpeg_quantise(np.ones((4, 4, 2)))
  with pytest.raises(ValueError, match="quality must be in 1..100"):
    D.jpeg_quantise(np.ones((8, 8)), 0)
  with pytest.raises(ValueError, match="quality must be an integer"):
    D.quantisation_table(50.5)


def test_worked_example_quick(tmp_path):
  from research.methods.classical import dct as example
  out = example.run(str(tmp_path), quick=True)
  for name, ks in out["energy_compaction"].items():
    assert ks["k1"]["dct_topk"] > 0.8 > 0.1 > ks["k1"]["pixels_topk"], name
    assert ks["k16"]["dct_topk"] >= ks["k16"]["dct_zigzag"] > ks["k16"]["pixels_topk"]
  for name, rows in out["rate_distortion"].items():
    psnrs = [r["psnr_db"] for r in rows]
    bpps = [r["entropy_bpp"] for r in rows]
    assert np.all(np.diff(psnrs) > 0) and np.all(np.diff(bpps) > 0), name
    assert 0.05 < bpps[0] < bpps[-1] < 8
  for name in out["figures"]:
    assert (tmp_path / name).stat().st_size > 1000
