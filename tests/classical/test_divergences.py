"""Tests of research.classical.divergences against scipy (entropy, jensenshannon, wasserstein_distance) and POT."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
import scipy.spatial.distance as ssd
import scipy.special as sps
import scipy.stats as st

from research.classical import divergences as V

RNG = np.random.default_rng(0)


def _simplex(*shape):
  x = RNG.random(shape)
  return x / x.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# KL / JS


def test_kl_matches_scipy_entropy():
  with jax.enable_x64(True):
    p, q = _simplex(4, 7), _simplex(4, 7)
    got = V.kl(p, q)
    chex.assert_shape(got, (4,))
    np.testing.assert_allclose(np.asarray(got), st.entropy(p, q, axis=-1), rtol=1e-13)
    # axis=0, unnormalised input with normalize=True (scipy always normalises)
    np.testing.assert_allclose(np.asarray(V.kl(3.0 * p.T, q.T, axis=0, normalize=True)),
                               st.entropy(3.0 * p.T, q.T, axis=0), rtol=1e-13)
  # float32
  got32 = V.kl(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32))
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got32), st.entropy(p, q, axis=-1), rtol=1e-5, atol=1e-6)


def test_kl_zero_conventions_and_gradient():
  with jax.enable_x64(True):
    p = jnp.array([0.5, 0.5, 0.0])
    q = jnp.array([0.25, 0.25, 0.5])
    np.testing.assert_allclose(float(V.kl(p, q)), st.entropy(p, q), rtol=1e-14)   # 0 log 0 = 0
    assert float(V.kl(q, p)) == np.inf                                            # q > 0 = p
    g = jax.grad(lambda p_: V.kl(p_, q))(p)
    chex.assert_tree_all_finite(g)
    np.testing.assert_allclose(np.asarray(g[:2]), np.log(0.5 / 0.25) + 1.0, rtol=1e-14)


def test_js_matches_scipy_jensenshannon_squared():
  with jax.enable_x64(True):
    p, q = _simplex(3, 9), _simplex(3, 9)
    np.testing.assert_allclose(np.asarray(V.js(p, q)), ssd.jensenshannon(p, q, axis=-1) ** 2, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(V.js(p, q, base=2)), ssd.jensenshannon(p, q, base=2, axis=-1) ** 2,
                               rtol=1e-12)
    # disjoint supports: JS = log 2 (seed §12.2), symmetric, zero on equal inputs
    a, b = jnp.array([0.5, 0.5, 0.0, 0.0]), jnp.array([0.0, 0.0, 0.3, 0.7])
    np.testing.assert_allclose(float(V.js(a, b)), math.log(2.0), rtol=1e-15)
    np.testing.assert_allclose(float(V.js(a, b, base=2)), 1.0, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(V.js(p, q)), np.asarray(V.js(q, p)), rtol=1e-14)
    assert float(V.js(p[0], p[0])) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Gaussian KL


def test_kl_gaussian_1d_vs_numerical_integration():
  with jax.enable_x64(True):
    m1, s1, m2, s2 = 0.3, 0.7, -1.1, 1.9
    x = np.linspace(-12, 12, 200001)
    p1, p2 = st.norm(m1, s1), st.norm(m2, s2)
    want = np.trapezoid(p1.pdf(x) * (p1.logpdf(x) - p2.logpdf(x)), x)
    got = V.kl_gaussian(jnp.array([m1]), jnp.array([[s1 ** 2]]), jnp.array([m2]), jnp.array([[s2 ** 2]]))
    np.testing.assert_allclose(float(got), want, rtol=1e-9)
    # diagonal form gives the same
    got_d = V.kl_gaussian([m1], [s1 ** 2], [m2], [s2 ** 2])             # Python lists are accepted
    np.testing.assert_allclose(float(got_d), want, rtol=1e-9)


def test_kl_gaussian_3d_vs_monte_carlo_and_batch():
  with jax.enable_x64(True):
    d = 3
    a1, a2 = RNG.normal(size=(d, d)), RNG.normal(size=(d, d))
    c1, c2 = a1 @ a1.T + 0.5 * np.eye(d), a2 @ a2.T + 0.5 * np.eye(d)
    m1, m2 = RNG.normal(size=d), RNG.normal(size=d)
    got = float(V.kl_gaussian(m1, c1, m2, c2))
    x = RNG.multivariate_normal(m1, c1, size=200000)
    lr = st.multivariate_normal(m1, c1).logpdf(x) - st.multivariate_normal(m2, c2).logpdf(x)
    assert abs(got - lr.mean()) < 4 * lr.std() / np.sqrt(len(lr)), (got, lr.mean())
    assert abs(float(V.kl_gaussian(m1, c1, m1, c1))) < 1e-12
    # batched (broadcast over a leading axis) equals the per-pair values
    batch = V.kl_gaussian(np.stack([m1, m2]), np.stack([c1, c2]), m2, c2)
    chex.assert_shape(batch, (2,))
    np.testing.assert_allclose(np.asarray(batch), [got, 0.0], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# 1-D Wasserstein


def test_wasserstein_1d_matches_scipy_and_pot():
  with jax.enable_x64(True):
    u, v = RNG.normal(size=30), RNG.normal(1.0, 2.0, size=45)
    wu, wv = RNG.random(30), RNG.random(45)
    np.testing.assert_allclose(float(V.wasserstein_1d(u, v)), st.wasserstein_distance(u, v), rtol=1e-13)
    np.testing.assert_allclose(float(V.wasserstein_1d(u, v, wu, wv)), st.wasserstein_distance(u, v, wu, wv),
                               rtol=1e-13)
    # ties and zero weights
    ut = np.array([0.0, 0.0, 1.0, 2.0, 2.0])
    wt = np.array([1.0, 0.0, 2.0, 1.0, 0.5])
    np.testing.assert_allclose(float(V.wasserstein_1d(ut, v, wt)), st.wasserstein_distance(ut, v, wt), rtol=1e-13)
    # p = 2: POT's wasserstein_1d returns W_p^p; also the exact LP (ot.emd2) with squared cost
    w2 = float(V.wasserstein_1d(u, v, wu, wv, p=2))
    a, b = wu / wu.sum(), wv / wv.sum()
    np.testing.assert_allclose(w2 ** 2, ot.wasserstein_1d(u, v, a, b, p=2), rtol=1e-12)
    np.testing.assert_allclose(w2 ** 2, ot.emd2(a, b, (u[:, None] - v[None, :]) ** 2), rtol=1e-10)
  # float32
  w32 = V.wasserstein_1d(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32))
  assert w32.dtype == jnp.float32
  np.testing.assert_allclose(float(w32), st.wasserstein_distance(u, v), rtol=1e-5)


def test_wasserstein_1d_translation_and_gradient():
  with jax.enable_x64(True):
    y = RNG.random(50)
    # W1 between P0 and P0 shifted by θ is |θ| (seed §12.2)
    for theta in (0.0, 0.3, 5.0):
      np.testing.assert_allclose(float(V.wasserstein_1d(y, y + theta)), theta, atol=1e-14)
    u, v, wu = RNG.normal(size=12), RNG.normal(0.5, 1.0, size=9), RNG.random(12) + 0.1
    f = lambda u_, w_: V.wasserstein_1d(u_, v, w_, None, p=2)
    gu, gw = jax.grad(f, argnums=(0, 1))(jnp.asarray(u), jnp.asarray(wu))
    h = 1e-6
    du, dw = RNG.normal(size=12), RNG.normal(size=12)
    fd_u = (f(u + h * du, wu) - f(u - h * du, wu)) / (2 * h)
    fd_w = (f(u, wu + h * dw) - f(u, wu - h * dw)) / (2 * h)
    np.testing.assert_allclose(float(gu @ du), float(fd_u), rtol=1e-6)
    np.testing.assert_allclose(float(gw @ dw), float(fd_w), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Sinkhorn


def _problem(n=20, m=15):
  x, y = RNG.normal(size=(n, 2)), RNG.normal(0.5, 1.0, size=(m, 2))
  a, b = _simplex(n), _simplex(m)
  cost = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
  return a, b, cost


A, B, C = _problem()


@pytest.mark.parametrize("eps", [0.5, 0.05, 0.005])
def test_sinkhorn_matches_pot(eps):
  with jax.enable_x64(True):
    r = V.sinkhorn(A, B, C, eps, max_iter=200000, tol=1e-12)
    assert isinstance(r, V.SinkhornResult)
    chex.assert_shape([r.plan, r.f, r.g], [(20, 15), (20,), (15,)])
    assert float(r.error) <= 1e-12 and int(r.n_iter) < 200000
    plan = ot.sinkhorn(A, B, C, eps, method="sinkhorn_log", numItermax=200000, stopThr=1e-14)
    cost = ot.sinkhorn2(A, B, C, eps, method="sinkhorn_log", numItermax=200000, stopThr=1e-14)
    np.testing.assert_allclose(np.asarray(r.plan), plan, atol=1e-11)
    np.testing.assert_allclose(float(r.cost), float(cost), rtol=1e-10)
    # marginals
    np.testing.assert_allclose(np.asarray(r.plan).sum(1), A, atol=1e-12)
    np.testing.assert_allclose(np.asarray(r.plan).sum(0), B, atol=1e-12)
    # regularised objective = <P, C> + ε Σ P log P; the exact OT cost is a lower bound of <P, C>
    p_np = np.asarray(r.plan)
    np.testing.assert_allclose(float(r.regularized_cost), (p_np * C).sum() + eps * sps.xlogy(p_np, p_np).sum(),
                               rtol=1e-10)
    assert float(r.cost) >= ot.emd2(A, B, C) - 1e-12


def test_sinkhorn_scaling_variant_and_float32():
  with jax.enable_x64(True):
    r_log = V.sinkhorn(A, B, C, 0.5, max_iter=10000, tol=1e-12)
    r_sc = V.sinkhorn(A, B, C, 0.5, max_iter=10000, tol=1e-12, log_domain=False)
    np.testing.assert_allclose(np.asarray(r_sc.plan), np.asarray(r_log.plan), atol=1e-12)
    np.testing.assert_allclose(float(r_sc.cost), float(r_log.cost), rtol=1e-11)
  a32, b32, c32 = (jnp.asarray(v, jnp.float32) for v in (A, B, C))
  r32 = V.sinkhorn(a32, b32, c32, 0.05, tol=1e-6)
  assert r32.plan.dtype == jnp.float32 and float(r32.error) <= 1e-6
  np.testing.assert_allclose(float(r32.cost), ot.sinkhorn2(A, B, C, 0.05, method="sinkhorn_log", stopThr=1e-12),
                             rtol=1e-4)
  # tiny ε in float32 stays finite in log domain (exp(-C/ε) underflows for the scaling form)
  r_small = V.sinkhorn(a32, b32, c32, 1e-3, max_iter=3000, tol=1e-5)
  chex.assert_tree_all_finite(r_small.plan)
  assert float(r_small.cost) >= ot.emd2(A, B, C) - 1e-4


def test_sinkhorn_zero_mass_entries_and_max_iter():
  with jax.enable_x64(True):
    a = A.copy()
    a[:3] = 0.0
    a /= a.sum()
    r = V.sinkhorn(a, B, C, 0.1, max_iter=20000, tol=1e-12)
    assert np.all(np.isneginf(np.asarray(r.f)[:3]))
    chex.assert_tree_all_finite(r.plan)
    np.testing.assert_allclose(np.asarray(r.plan)[:3], 0.0)
    np.testing.assert_allclose(
      float(r.cost), float(ot.sinkhorn2(a[3:], B, C[3:], 0.1, method="sinkhorn_log", numItermax=20000,
                                        stopThr=1e-14)), rtol=1e-9)   # = the problem without the empty rows
    r2 = V.sinkhorn(A, B, C, 0.005, max_iter=5, tol=0.0)
    assert int(r2.n_iter) == 5 and float(r2.error) > 0


def test_sinkhorn_gradients_match_finite_differences():
  with jax.enable_x64(True):
    eps, kw = 0.1, dict(max_iter=100000, tol=1e-14)
    h = 1e-6
    f_c = lambda c: V.sinkhorn(A, B, c, eps, **kw).cost
    g_c = jax.grad(f_c)(jnp.asarray(C))
    d_c = RNG.normal(size=C.shape)
    np.testing.assert_allclose(float(jnp.sum(g_c * d_c)), float((f_c(C + h * d_c) - f_c(C - h * d_c)) / (2 * h)),
                               rtol=1e-6)
    # w.r.t. a along a mass-preserving direction, and w.r.t. ε of the regularised objective
    f_a = lambda a: V.sinkhorn(a, B, C, eps, **kw).cost
    d_a = np.zeros(20)
    d_a[[0, 5]] = [1.0, -1.0]
    np.testing.assert_allclose(float(jax.grad(f_a)(jnp.asarray(A)) @ d_a),
                               float((f_a(A + h * d_a) - f_a(A - h * d_a)) / (2 * h)), rtol=1e-6)
    f_e = lambda e: V.sinkhorn(A, B, C, e, **kw).regularized_cost
    np.testing.assert_allclose(float(jax.grad(f_e)(eps)), float((f_e(eps + h) - f_e(eps - h)) / (2 * h)), rtol=1e-6)


def test_sinkhorn_jit_no_retrace_and_batched():
  with jax.enable_x64(True):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(a, b, c, eps):
      return V.sinkhorn(a, b, c, eps, max_iter=5000, tol=1e-10).cost

    c1 = solve(A, B, C, 0.5)
    c2 = solve(A, B, 2.0 * C, 0.5)                      # new values, no retrace
    np.testing.assert_allclose([float(c1), float(c2)], [float(V.sinkhorn(A, B, C, 0.5, max_iter=5000,
                                                                         tol=1e-10).cost),
                                                        float(V.sinkhorn(A, B, 2 * C, 0.5, max_iter=5000,
                                                                         tol=1e-10).cost)], rtol=1e-9)
    # a batch of target histograms
    bs = jnp.stack([jnp.asarray(B), jnp.asarray(_simplex(15))])
    costs = jax.vmap(lambda b: V.sinkhorn(A, b, C, 0.5, max_iter=5000, tol=1e-10).cost)(bs)
    chex.assert_shape(costs, (2,))
    np.testing.assert_allclose(float(costs[0]), float(c1), rtol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("call,match", [
  (lambda: V.kl(np.array([0.5, -0.1, 0.6]), np.ones(3) / 3), "non-negative"),
  (lambda: V.kl(np.array([0.5, 0.6]), np.array([0.5, 0.5])), "sum to 1.*normalize=True"),
  (lambda: V.kl(np.ones(3) / 3, np.ones(4) / 4), "do not broadcast"),
  (lambda: V.js(np.ones(3) / 3, np.ones(3) / 3, base=1), "base"),
  (lambda: V.kl_gaussian(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, 0.0])), "positive definite"),
  (lambda: V.kl_gaussian(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), r"cov1.*shape \(3, 3\)"),
  (lambda: V.kl_gaussian(np.zeros(2), np.eye(2), np.zeros(2), np.ones(2)), "both as full"),
  (lambda: V.wasserstein_1d(np.zeros((2, 2)), np.zeros(3)), r"`u`.*shape \(2, 2\)"),
  (lambda: V.wasserstein_1d(np.zeros(3), np.zeros(3), np.array([1.0, -1.0, 1.0])), "non-negative"),
  (lambda: V.wasserstein_1d(np.zeros(3), np.zeros(3), np.ones(2)), r"shape \(3,\)"),
  (lambda: V.wasserstein_1d(np.zeros(3), np.zeros(3), p=0.5), "p"),
  (lambda: V.sinkhorn(A, B, C[:, :3], 0.1), r"shape \[n, m\]"),
  (lambda: V.sinkhorn(A, B, C, 0.0), "epsilon"),
  (lambda: V.sinkhorn(A, 2 * B, C, 0.1), "equal total mass"),
  (lambda: V.sinkhorn(A, B, C, 1e-3, log_domain=False), "underflows"),
  (lambda: V.sinkhorn(A, B, np.where(C > 1, np.inf, C), 0.1), "NaN or inf"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------------------------------------------------------
# worked example


@pytest.mark.slow  # the default run covers it: tests/classical/test_classical_cli.py runs this example
def test_worked_example_quick(tmp_path):
  from research.methods.classical import divergences as example
  out = example.run(str(tmp_path), quick=True)
  assert (tmp_path / "divergences.png").exists() and out["figures"] == ["divergences.png"]
  # forward KL is mean-seeking (μ ≈ 0, σ ≈ 2.09), reverse KL mode-seeking (μ ≈ ±2, σ ≈ 0.6, KL ≈ log 2)
  assert abs(out["forward_kl_fit"]["mu"]) < 0.05 and abs(out["forward_kl_fit"]["sigma"] - 2.088) < 0.15
  assert abs(abs(out["reverse_kl_fit"]["mu"]) - 2.0) < 0.25 and abs(out["reverse_kl_fit"]["sigma"] - 0.6) < 0.15
  assert abs(out["reverse_kl_fit"]["kl"] - math.log(2)) < 0.05
  # JS saturates at log 2 while W1 grows linearly with slope 1
  assert abs(out["js_saturation"] - math.log(2)) < 1e-3 and abs(out["w1_slope"] - 1.0) < 0.02
  assert out["seed2d_js"][0] == 0.0 and all(abs(v - math.log(2)) < 1e-3 for v in out["seed2d_js"][1:])
  np.testing.assert_allclose(out["seed2d_sinkhorn_w"], out["seed2d_thetas"], atol=0.05)
