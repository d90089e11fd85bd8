"""Tests of research.classical.gmm: EM from identical parameters == sklearn GaussianMixture; log_prob == scipy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture

from research.classical import gmm

K = 3


@pytest.fixture(scope="module")
def data():
  # Standardised iris, as in the worked example (same shapes: the tests and the example share compiled programs).
  x, _ = load_iris(return_X_y=True)
  x = (x - x.mean(0)) / x.std(0)
  rng = np.random.default_rng(0)
  means0 = x[rng.choice(len(x), K, replace=False)]
  weights0 = np.array([0.2, 0.3, 0.5])
  return x, means0, weights0


def _init_cov(cov_type):
  a = np.array([[2.0, 0.3, 0.0, 0.1], [0.3, 1.5, 0.2, 0.0], [0.0, 0.2, 1.0, 0.0], [0.1, 0.0, 0.0, 1.0]])
  return np.stack([a] * K) if cov_type == "full" else np.tile(np.diag(a), (K, 1))


def _fit_both(data, cov_type):
  x, means0, weights0 = data
  cov0 = _init_cov(cov_type)
  with jax.enable_x64(True):
    res = gmm.fit(x, K, init_means=means0, init_weights=weights0, init_covariances=cov0, covariance_type=cov_type)
  prec0 = np.linalg.inv(cov0) if cov_type == "full" else 1.0 / cov0
  ref = GaussianMixture(K, covariance_type=cov_type, weights_init=weights0, means_init=means0,
                        precisions_init=prec0, tol=1e-3, max_iter=100, reg_covar=1e-6).fit(x)
  return res, ref


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_em_matches_sklearn_from_identical_parameters(data, cov_type):
  x = data[0]
  res, ref = _fit_both(data, cov_type)
  with jax.enable_x64(True):
    chex.assert_shape((res.weights, res.means), ((K,), (K, 4)))
    chex.assert_shape(res.covariances, (K, 4, 4) if cov_type == "full" else (K, 4))
    assert res.means.dtype == jnp.float64
    assert abs(float(res.mean_log_likelihood) - ref.score(x)) < 1e-4
    np.testing.assert_array_equal(np.asarray(gmm.predict(res, x)), ref.predict(x))
    assert int(res.num_iter) == ref.n_iter_ and bool(res.converged) == ref.converged_
    chex.assert_trees_all_close((np.asarray(res.weights), np.asarray(res.means), np.asarray(res.covariances)),
                                (ref.weights_, ref.means_, ref.covariances_), atol=1e-8)
    # log-likelihood history: the E-step value of the last iteration is sklearn's lower_bound_; EM is monotone.
    hist = np.asarray(res.log_likelihood_history)
    n_it = int(res.num_iter)
    assert abs(hist[n_it - 1] - ref.lower_bound_) < 1e-8
    assert np.all(np.diff(hist[:n_it]) >= -1e-10) and np.all(np.isnan(hist[n_it:]))
    proba = np.asarray(gmm.predict_proba(res, x))
    np.testing.assert_allclose(proba, ref.predict_proba(x), atol=1e-8)


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_log_prob_matches_scipy_mixture(data, cov_type):
  x = data[0]
  res, _ = _fit_both(data, cov_type)
  w, mu, cov = map(np.asarray, (res.weights, res.means, res.covariances))
  dens = sum(w[k] * multivariate_normal(mu[k], cov[k] if cov_type == "full" else np.diag(cov[k])).pdf(x)
             for k in range(K))
  with jax.enable_x64(True):
    lp = np.asarray(gmm.log_prob(res, x))
  chex.assert_shape(lp, (len(x),))
  np.testing.assert_allclose(lp, np.log(dens), rtol=0, atol=1e-10)


def test_float32_fit(data):
  x, means0, weights0 = data
  res = gmm.fit(x, K, init_means=means0, init_weights=weights0, init_covariances=_init_cov("full"))  # x64 off
  assert res.means.dtype == jnp.float32
  ref, _ = _fit_both(data, "full")
  assert abs(float(res.mean_log_likelihood) - float(ref.mean_log_likelihood)) < 1e-3
  np.testing.assert_allclose(np.asarray(gmm.predict_proba(res, x)).sum(1), 1.0, rtol=1e-5)


def test_kmeans_initialisation(data):
  x = data[0]
  with jax.enable_x64(True):
    res = gmm.fit(x, K, key=jax.random.key(0))
    assert bool(res.converged)
    ref = GaussianMixture(K, random_state=0, n_init=5).fit(x)
    assert float(res.mean_log_likelihood) > ref.score(x) - 0.05  # a local optimum as good as sklearn's best of 5


def test_singular_component_is_regularised(data):
  x = data[0].copy()
  x[:50] = x[0]  # 50 identical points: their component collapses onto one point
  res = gmm.fit(x, K, init_means=x[[0, 60, 120]], init_weights=np.full(K, 1 / K),
                init_covariances=_init_cov("full"), reg_covar=1e-4)
  np.testing.assert_allclose(np.asarray(res.covariances[0]), 1e-4 * np.eye(4), rtol=1e-2, atol=1e-7)
  assert np.isfinite(float(res.mean_log_likelihood))


def test_em_steps_do_not_retrace(data):
  x = data[0]
  res, _ = _fit_both(data, "full")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def em_step(x, w, mu, cov):
    _, log_resp = gmm.e_step(x, w, mu, cov, "full")
    return gmm.m_step(x, log_resp, "full", 1e-6)

  args = tuple(jnp.asarray(a, jnp.float32) for a in (res.weights, res.means, res.covariances))
  em_step(jnp.asarray(x, jnp.float32), *args)
  em_step(jnp.asarray(x, jnp.float32) + 1.0, *args)


def test_bad_inputs(data):
  x, means0, _ = data
  with pytest.raises(ValueError, match="num_components"):
    gmm.fit(x[:2], 3, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"`init_means` must have shape"):
    gmm.fit(x, K, init_means=means0[:, :2])
  with pytest.raises(ValueError, match="init_weights"):
    gmm.fit(x, K, init_means=means0, init_weights=np.array([-0.5, 0.5, 1.0]))
  with pytest.raises(ValueError, match="covariance_type"):
    gmm.fit(x, K, init_means=means0, covariance_type="tied")
  with pytest.raises(ValueError, match="`key`"):
    gmm.fit(x, K)
  with pytest.raises(ValueError, match=r"2-D array \[n, d\]"):
    gmm.fit(x[:, 0], K, key=jax.random.key(0))
  with pytest.raises(ValueError, match="positive definite"):
    gmm.fit(x, K, init_means=means0, init_covariances=-np.stack([np.eye(4)] * K))
  res = gmm.fit(x, K, init_means=means0)
  with pytest.raises(ValueError, match="d = 4"):
    gmm.log_prob(res, x[:, :3])


def test_gmm_worked_example_quick(tmp_path):
  from research.methods.classical import gmm as example
  out = example.run(str(tmp_path), quick=True)
  assert out["figures"] and all((tmp_path / f).exists() for f in out["figures"])
  assert out["iris"]["ari"] > 0.4
  assert abs(out["iris"]["mean_log_likelihood_diff"]) < 1e-4
  assert out["iris"]["em_monotone"]
