"""Robust PCA by inexact ALM / ADMM (research.classical.rpca, seed 003 §7): exact recovery, penalty rule, proxes."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.classical import rpca


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
  """LAPACK (jnp.linalg.svd calls scipy's OpenBLAS) with 2 threads on 2 shared, busy cores is ~50x slower."""
  try:
    import threadpoolctl
  except ImportError:  # only a speed matter
    yield
    return
  jax.block_until_ready(jnp.linalg.svd(jnp.eye(2)))  # loads the LAPACK that jax calls, so the limit reaches it
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    yield


def _planted(m=100, n=80, rank=5, frac=0.07, seed=0):
  rng = np.random.default_rng(seed)
  L0 = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
  mask = rng.random((m, n)) < frac
  S0 = np.where(mask, rng.uniform(-50, 50, (m, n)), 0.0)
  return L0, S0


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_recovers_planted_low_rank_plus_sparse_float64_and_adaptive_beats_fixed():
  L0, S0 = _planted()
  with jax.enable_x64(True):
    res = rpca.rpca_admm(jnp.asarray(L0 + S0))
    chex.assert_shape([res.L, res.S, res.Y], (100, 80))
    assert res.L.dtype == jnp.float64
    assert bool(res.converged) and float(res.residual) < 1e-7
    assert _rel(res.L, L0) < 1e-5 and _rel(res.S, S0) < 1e-5
    assert int(res.rank) == 5
    k = int(res.num_iter)
    hist = np.asarray(res.residuals)
    assert hist[k - 1] == pytest.approx(float(res.residual)) and np.all(hist[k:] == 0)
    mus = np.asarray(res.mus)[:k]
    assert mus[0] == pytest.approx(1.25 / np.linalg.norm(L0 + S0, 2))
    assert np.all(np.diff(mus) >= 0) and mus[-1] > 10 * mus[0]  # the §7.2 rule grew mu
    # Fixed penalty (plain ADMM at mu_0): same problem, far more iterations (does not reach tol in 150).
    fixed = rpca.rpca_admm(jnp.asarray(L0 + S0), adaptive=False, max_iter=150)
    assert not bool(fixed.converged) and int(fixed.num_iter) == 150 > k
    assert np.all(np.asarray(fixed.mus) == np.asarray(fixed.mus)[0])
    assert float(fixed.residual) > float(res.residual)


def test_float32_recovery_and_scale_invariance():
  L0, S0 = _planted(m=60, n=50, rank=3, frac=0.05, seed=1)
  D = (L0 + S0).astype(np.float32)
  res = rpca.rpca_admm(D, tol=1e-6)
  assert res.L.dtype == jnp.float32
  assert _rel(res.L, L0) < 1e-4 and _rel(res.S, S0) < 1e-4
  # The scale-free §7.2 condition makes the iteration count independent of the units of D.
  res100 = rpca.rpca_admm(D * 100.0, tol=1e-6)
  assert abs(int(res100.num_iter) - int(res.num_iter)) <= 1


def test_jit_vmap_and_no_retrace():
  L0, S0 = _planted(m=30, n=20, rank=2, frac=0.05, seed=2)
  D = jnp.asarray(L0 + S0, jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def solve(d, lam):
    return rpca.rpca_admm(d, lam=lam, max_iter=100, tol=1e-6).L

  a = solve(D, 0.2)
  b = solve(D * 2.0, 0.25)  # new values, same shapes: no retrace
  chex.assert_shape([a, b], (30, 20))
  batched = jax.vmap(lambda d: rpca.rpca_admm(d, max_iter=100, tol=1e-6).L)(jnp.stack([D, 2 * D]))
  chex.assert_trees_all_close(batched[1], 2 * batched[0], rtol=1e-3, atol=1e-3)


def test_svt_and_shrink_match_numpy_definitions():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(7, 5))
  with jax.enable_x64(True):
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    ref = (u * np.maximum(s - 0.8, 0)) @ vt
    chex.assert_trees_all_close(rpca.svt(x, 0.8), ref, atol=1e-12)
    chex.assert_trees_all_close(rpca.shrink(x, 0.5), np.sign(x) * np.maximum(np.abs(x) - 0.5, 0), atol=0)
    assert np.linalg.matrix_rank(np.asarray(rpca.svt(x, s[2] + 1e-9))) == 2
    chex.assert_trees_all_close(rpca.svt(x, 0.0), x, atol=1e-12)
  with pytest.raises(ValueError, match=r"svt: x must be a matrix .* shape \(5,\)"):
    rpca.svt(np.ones(5), 0.1)


def test_zero_matrix_and_bad_inputs():
  res = rpca.rpca_admm(np.zeros((4, 3)))
  assert bool(res.converged) and int(res.num_iter) == 0
  assert not np.any(np.isnan(np.asarray(res.L))) and float(jnp.abs(res.L).max()) == 0.0
  with pytest.raises(ValueError, match=r"D must be a non-empty matrix \[m, n\]; got shape \(10,\)"):
    rpca.rpca_admm(np.ones(10))
  with pytest.raises(ValueError, match=r"D must be a non-empty matrix .* got shape \(2, 3, 4\)"):
    rpca.rpca_admm(np.ones((2, 3, 4)))
  with pytest.raises(ValueError, match="lam must be a finite positive number; got -1.0"):
    rpca.rpca_admm(np.ones((4, 3)), lam=-1.0)
  with pytest.raises(ValueError, match="rho must be >= 1"):
    rpca.rpca_admm(np.ones((4, 3)), rho=0.5)
  with pytest.raises(ValueError, match="max_iter must be a positive int"):
    rpca.rpca_admm(np.ones((4, 3)), max_iter=0)


def test_worked_example_quick(tmp_path):
  from research.methods.classical import rpca as example
  out = example.run(str(tmp_path), quick=True)
  video, image = out["video"], out["image"]
  assert video["converged"] and video["foreground_f1"] > 0.95 and video["foreground_iou"] > 0.9
  assert video["background_rel_error"] < 1e-2 and video["rank_L"] == 1
  assert video["iterations"] <= video["fixed_penalty_iterations"]
  # a natural image is only approximately low rank: L still removes most of the impulse noise
  assert image["psnr_L_db"] > image["psnr_corrupted_db"] + 5 and image["impulse_recall"] > 0.8
  for name in out["figures"]:
    assert (tmp_path / name).stat().st_size > 1000
