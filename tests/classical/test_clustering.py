"""Tests of research.classical.clustering: k-means vs sklearn, Hungarian vs scipy, Cnak on blobs."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from research.classical import clustering


@pytest.fixture(scope="module")
def blobs():
  x, y = make_blobs(n_samples=150, n_features=2, centers=4, cluster_std=0.7, center_box=(-10, 10), random_state=3)
  return x, y


# ----------------------------------------------------------------------------------------------------------------
# Hungarian
# ----------------------------------------------------------------------------------------------------------------


_batched_lsa = jax.jit(jax.vmap(clustering.linear_sum_assignment))


@pytest.mark.parametrize("shape", [(6, 6), (4, 7), (7, 4)])
def test_lsa_matches_scipy_on_random_matrices(shape):
  rng = np.random.default_rng(sum(shape))
  costs = rng.normal(size=(8, *shape))
  with jax.enable_x64(True):
    rows, cols = _batched_lsa(jnp.asarray(costs))
    r = min(shape)
    chex.assert_shape((rows, cols), (8, r))
    for b in range(8):
      ref_r, ref_c = scipy_lsa(costs[b])  # continuous costs: the optimum is unique
      np.testing.assert_array_equal(np.asarray(rows[b]), ref_r)
      np.testing.assert_array_equal(np.asarray(cols[b]), ref_c)


def test_lsa_with_ties_reaches_scipy_optimum():
  rng = np.random.default_rng(0)
  costs = rng.integers(0, 3, size=(24, 5, 7)).astype(np.float64)  # many ties
  with jax.enable_x64(True):
    for batch in (costs, np.swapaxes(costs, 1, 2)):  # wide and tall
      rows, cols = map(np.asarray, _batched_lsa(jnp.asarray(batch)))
      for b in range(len(batch)):
        ref_r, ref_c = scipy_lsa(batch[b])
        assert len(set(rows[b])) == len(rows[b]) == 5 and len(set(cols[b])) == 5
        assert np.all(np.diff(rows[b]) > 0)
        assert batch[b][rows[b], cols[b]].sum() == batch[b][ref_r, ref_c].sum()


def test_lsa_single_matrix_maximize_and_float32():
  rng = np.random.default_rng(1)
  cost = rng.uniform(size=(5, 5))
  rows, cols = clustering.linear_sum_assignment(cost, maximize=True)  # float32 (x64 off)
  assert rows.dtype == jnp.int32
  ref_r, ref_c = scipy_lsa(cost, maximize=True)
  np.testing.assert_array_equal(np.asarray(cols), ref_c)
  rows, cols = clustering.linear_sum_assignment(np.zeros((0, 3)))
  assert rows.shape == cols.shape == (0,)


# ----------------------------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------------------------


def test_kmeans_matches_sklearn_from_same_init(blobs):
  x, _ = blobs
  with jax.enable_x64(True):
    init = np.asarray(clustering.kmeans_plus_plus(x, 4, jax.random.key(0), n_local_trials=1))
    # Seeds are data points.
    assert all(np.any(np.all(np.isclose(x, c), axis=1)) for c in init)
    res = clustering.kmeans(x, 4, init=init)
    chex.assert_shape((res.centers, res.labels), ((4, 2), (150,)))
    ref = KMeans(4, init=init, n_init=1, tol=1e-4, max_iter=100).fit(x)
    assert float(res.inertia) <= ref.inertia_ * (1 + 1e-6)
    np.testing.assert_allclose(float(res.inertia), ref.inertia_, rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(res.labels), ref.labels_)
    chex.assert_trees_all_close(np.asarray(res.centers), ref.cluster_centers_, atol=1e-9)
    assert int(res.num_iter) == ref.n_iter_


def test_kmeans_plus_plus_restarts_float32(blobs):
  x, _ = blobs
  res = clustering.kmeans(x, 4, jax.random.key(1), n_init=3)
  assert res.centers.dtype == jnp.float32
  ref = KMeans(4, n_init=10, random_state=0).fit(x)
  np.testing.assert_allclose(float(res.inertia), ref.inertia_, rtol=1e-4)


def test_kmeans_empty_cluster_keeps_its_centre_and_no_retrace(blobs):
  x, _ = blobs
  init = np.array([[0.0, 0.0], [5.0, 5.0], [1e3, 1e3]])
  res = clustering.kmeans(x, 3, init=init)
  np.testing.assert_allclose(np.asarray(res.centers[2]), init[2])
  assert not np.any(np.asarray(res.labels) == 2)
  assert np.all(np.isfinite(np.asarray(res.centers)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(x):
    return clustering.kmeans(x, 3, init=init).inertia

  run(x)
  run(x + 1.0)  # same shape: no retrace


def test_kmeans_bad_inputs(blobs):
  x, _ = blobs
  with pytest.raises(ValueError, match="1 <= k <= n"):
    clustering.kmeans(x[:3], 4, jax.random.key(0))
  with pytest.raises(ValueError, match=r"2-D array \[n, d\]"):
    clustering.kmeans(x[:, 0], 2, jax.random.key(0))
  with pytest.raises(ValueError, match="init` centres must have shape"):
    clustering.kmeans(x, 2, init=np.zeros((3, 2)))
  with pytest.raises(ValueError, match="`key`"):
    clustering.kmeans(x, 2)
  with pytest.raises(ValueError, match="sample_weight"):
    clustering.kmeans(x, 2, jax.random.key(0), sample_weight=-np.ones(150))
  with pytest.raises(ValueError, match="2-D cost matrix"):
    clustering.linear_sum_assignment(np.zeros((2, 3, 3)))
  with pytest.raises(ValueError, match="NaN or inf"):
    clustering.linear_sum_assignment(np.array([[1.0, np.nan], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="sample_fraction"):
    clustering.cnak(x, jax.random.key(0), 5, sample_fraction=1.0)
  with pytest.raises(ValueError, match="k_max"):
    clustering.cnak(x[:10], jax.random.key(0), 8, sample_fraction=0.5)


# ----------------------------------------------------------------------------------------------------------------
# Cnak
# ----------------------------------------------------------------------------------------------------------------


def test_cnak_recovers_k_on_blobs(blobs):
  x, y = blobs
  # Same static configuration as the quick worked example below, so both share one compiled program.
  res = clustering.cnak(x, jax.random.key(0), 7, num_samples=4, n_init=1)
  chex.assert_shape((res.scores, res.sample_scores, res.k_values), ((7,), (7, 4), (7,)))
  assert int(res.k) == 4
  assert np.all(np.isfinite(np.asarray(res.scores)))
  chex.assert_shape(res.centers, (4, 2))
  # The chosen partition is the true one up to relabelling.
  labels = np.asarray(res.labels)
  table = np.zeros((4, 4))
  np.add.at(table, (labels, y), 1)
  assert table.max(axis=1).sum() == len(y)


def test_cnak_worked_example_quick(tmp_path):
  from research.methods.classical import cnak as example
  out = example.run(str(tmp_path), quick=True)
  assert out["figures"] and all((tmp_path / f).exists() for f in out["figures"])
  assert out["accuracy"] >= 0.5
  assert len(out["chosen_k"]) == len(out["true_k"])
