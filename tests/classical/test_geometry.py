"""Fundamental matrix, 8-point and RANSAC (research.classical.geometry, seed 003 §8) against OpenCV and the truth."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.classical import geometry as G

cv2 = pytest.importorskip("cv2")


def _scene(n, noise, seed):
  """Random 3-D points seen by two cameras K[I|0], K[R|t]; returns x1, x2 [n, 2] and P1, P2 [3, 4]."""
  rng = np.random.default_rng(seed)
  X = np.c_[rng.uniform(-2, 2, (n, 2)), rng.uniform(4, 8, n)]
  K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
  a = 0.2
  R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  t = np.array([-1.0, 0.1, 0.2])
  P1, P2 = K @ np.c_[np.eye(3), np.zeros(3)], K @ np.c_[R, t]

  def proj(P):
    h = np.c_[X, np.ones(n)] @ P.T
    return h[:, :2] / h[:, 2:]

  return proj(P1) + noise * rng.normal(size=(n, 2)), proj(P2) + noise * rng.normal(size=(n, 2)), P1, P2


def _canon(F):
  F = np.asarray(F, np.float64)
  F = F / np.linalg.norm(F)
  return F * np.sign(F.flat[np.argmax(np.abs(F))])


def test_eight_point_matches_opencv_and_satisfies_epipolar_constraint():
  x1, x2, P1, P2 = _scene(60, 0.5, seed=0)
  with jax.enable_x64(True):
    F = G.fundamental_matrix(x1, x2)
    chex.assert_shape(F, (3, 3))
    assert F.dtype == jnp.float64
    F_cv, _ = cv2.findFundamentalMat(x1, x2, cv2.FM_8POINT)
    err = np.abs(np.asarray(F) - _canon(F_cv)).max()
    assert err < 1e-7, err
    assert float(jnp.linalg.norm(F)) == pytest.approx(1.0)
    s = np.linalg.svd(np.asarray(F), compute_uv=False)
    assert s[2] < 1e-14 * s[0] and s[1] > 1e-6 * s[0]  # rank exactly 2
    # x2^T F x1 ~ 0 (algebraic residual of normalised F; pixel coordinates ~ 1e2..1e3)
    h1, h2 = np.c_[x1, np.ones(60)], np.c_[x2, np.ones(60)]
    assert np.abs(np.sum(h2 * (h1 @ np.asarray(F).T), axis=1)).max() < 0.1
    # noise-free data: the 8-point F equals F = [e2]_x P2 P1^+ of seed §8
    y1, y2, _, _ = _scene(30, 0.0, seed=0)
    chex.assert_trees_all_close(G.fundamental_matrix(y1, y2), G.fundamental_from_projections(P1, P2), atol=1e-9)
    # exactly 8 points works (minimal case) and matches OpenCV too
    F8 = G.fundamental_matrix(x1[:8], x2[:8])
    F8_cv, _ = cv2.findFundamentalMat(x1[:8], x2[:8], cv2.FM_8POINT)
    assert np.abs(np.asarray(F8) - _canon(F8_cv)).max() < 1e-6
  # float32
  F32 = G.fundamental_matrix(x1.astype(np.float32), x2.astype(np.float32))
  assert F32.dtype == jnp.float32
  assert np.abs(np.asarray(F32) - _canon(F_cv)).max() < 1e-3


def test_sampson_and_epipolar_lines_match_numpy_and_opencv():
  x1, x2, _, _ = _scene(40, 1.0, seed=1)
  with jax.enable_x64(True):
    F = np.asarray(G.fundamental_matrix(x1, x2))
    d = np.asarray(G.sampson_distance(F, x1, x2))
    h1, h2 = np.c_[x1, np.ones(40)], np.c_[x2, np.ones(40)]
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    direct = np.sum(h2 * Fx1, 1) ** 2 / (Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2)
    np.testing.assert_allclose(d, direct, rtol=1e-12)
    np.testing.assert_allclose(d, [cv2.sampsonDistance(h1[i], h2[i], F) for i in range(40)], rtol=1e-9)
    assert 0.1 < np.sqrt(d).mean() < 3  # ~ the 1 px noise
    for which, pts in ((1, x1), (2, x2)):
      lines = np.asarray(G.epipolar_lines(F, pts, which_image=which))
      ref = cv2.computeCorrespondEpilines(pts.reshape(-1, 1, 2), which, F).reshape(-1, 3)
      np.testing.assert_allclose(lines, ref, atol=1e-10)
    # the matching point lies near its epipolar line
    lines = np.asarray(G.epipolar_lines(F, x1))
    assert np.abs(np.sum(lines * h2, 1)).max() < 5


def test_ransac_recovers_inliers_with_30_percent_outliers():
  x1, x2, P1, P2 = _scene(150, 0.3, seed=2)
  rng = np.random.default_rng(3)
  outlier = rng.random(150) < 0.3
  x2 = x2.copy()
  x2[outlier] = rng.uniform([0, 0], [640, 480], (outlier.sum(), 2))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def solve(a, b, key):
    return G.fundamental_ransac(a, b, key, threshold=1.5, num_iters=200)

  res = solve(x1, x2, jax.random.key(0))
  inl = np.asarray(res.inliers)
  assert inl.shape == (150,) and int(res.num_inliers) == inl.sum()
  recall = (inl & ~outlier).sum() / (~outlier).sum()
  false_pos = (inl & outlier).sum()
  assert recall > 0.95 and false_pos <= 3, (recall, false_pos)
  # geometric accuracy on the noise-free correspondences: RANSAC ~ the noise level, plain least squares on all
  # points (outliers included) is ruined
  y1, y2, _, _ = _scene(150, 0.0, seed=2)
  err_ransac = float(jnp.sqrt(G.sampson_distance(res.F, y1, y2)).mean())
  err_ls = float(jnp.sqrt(G.sampson_distance(G.fundamental_matrix(x1, x2), y1, y2)).mean())
  assert err_ransac < 0.3 and err_ls > 5, (err_ransac, err_ls)
  # weighted refit on the true inlier mask == unweighted fit on the inliers only
  chex.assert_trees_all_close(G.fundamental_matrix(x1, x2, weights=(~outlier).astype(np.float32)),
                              G.fundamental_matrix(x1[~outlier], x2[~outlier]), atol=1e-5)
  solve(x1 + 1.0, x2 + 1.0, jax.random.key(1))  # same shapes: no retrace


def test_bad_inputs_raise_clear_errors():
  x = np.zeros((10, 2))
  with pytest.raises(ValueError, match=r"x1 must be \[n, 2\] .* got shape \(10, 3\)"):
    G.fundamental_matrix(np.zeros((10, 3)), x)
  with pytest.raises(ValueError, match=r"same number of correspondences; got shapes \(10, 2\) and \(9, 2\)"):
    G.fundamental_matrix(x, np.zeros((9, 2)))
  with pytest.raises(ValueError, match="at least 8 correspondences; got 7"):
    G.fundamental_matrix(np.zeros((7, 2)), np.zeros((7, 2)))
  with pytest.raises(ValueError, match="method must be '8point'"):
    G.fundamental_matrix(x, x, method="7point")
  with pytest.raises(ValueError, match=r"F must be a 3x3 matrix; got shape \(2, 2\)"):
    G.sampson_distance(np.eye(2), x, x)
  with pytest.raises(ValueError, match="threshold must be a positive scalar"):
    G.fundamental_ransac(x, x, jax.random.key(0), threshold=-1.0)
  # all points identical: regularised normalisation, no NaN
  F = G.fundamental_matrix(np.ones((9, 2)), np.ones((9, 2)))
  assert np.all(np.isfinite(np.asarray(F)))
