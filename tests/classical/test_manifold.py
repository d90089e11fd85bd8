"""Tests of research.classical.manifold (seed 003 §9) against scikit-learn and scipy.

Embeddings are compared up to sign / rotation / scale by the Procrustes disparity (scipy.spatial.procrustes) and,
where the sign convention is the same as scikit-learn's, entry by entry. Data shapes are shared with the quick
worked example (swiss roll n = 300 with 5 neighbours, digits n = 500, moons n = 200) so jit compilations are
reused within the session.
"""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.csgraph import shortest_path
from scipy.spatial import procrustes
from sklearn import cluster, datasets, decomposition, metrics
from sklearn import manifold as skm
from threadpoolctl import threadpool_limits

from research.classical import manifold as M

ROLL_X, ROLL_T = datasets.make_swiss_roll(300, noise=0.05, random_state=0)
IRIS = datasets.load_iris().data
_DIGITS = datasets.load_digits()
_IDX = np.random.default_rng(0).permutation(len(_DIGITS.target))[:500]
DIGITS = _DIGITS.data[_IDX].astype(np.float64)
MOONS_X, MOONS_Y = datasets.make_moons(200, noise=0.06, random_state=0)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
  # Multi-threaded OpenBLAS (used by numpy, scipy and XLA's CPU eigh/svd) is 10-100x slower on a contended 2-core
  # runner; one thread changes no result.
  with threadpool_limits(1):
    yield


def _disparity(a, b) -> float:
  return float(procrustes(np.asarray(a, np.float64), np.asarray(b, np.float64))[2])


# ------------------------------------------------------------------------------------------------ PCA, kernel PCA

@pytest.mark.parametrize("solver", ["svd", "covariance"])
def test_pca_matches_sklearn_float64(solver):
  with jax.enable_x64(True):
    r = M.pca(IRIS, 3, solver=solver)
  s = decomposition.PCA(3, svd_solver="full").fit(IRIS)
  chex.assert_shape(r.embedding, (150, 3))
  chex.assert_shape(r.components, (3, 4))
  assert r.embedding.dtype == jnp.float64
  # Same sign convention as scikit-learn >= 1.5 (largest |loading| positive): equal entry by entry.
  chex.assert_trees_all_close(np.asarray(r.embedding), s.transform(IRIS), atol=1e-10)
  chex.assert_trees_all_close(np.asarray(r.components), s.components_, atol=1e-12)
  chex.assert_trees_all_close(np.asarray(r.explained_variance), s.explained_variance_, rtol=1e-12)
  chex.assert_trees_all_close(np.asarray(r.explained_variance_ratio), s.explained_variance_ratio_, rtol=1e-12)
  chex.assert_trees_all_close(np.asarray(r.singular_values), s.singular_values_, rtol=1e-12)
  assert _disparity(r.embedding, s.transform(IRIS)) < 1e-12


def test_pca_float32_jit_vmap_digits():  # (a name ending in "vmap" confuses chex.assert_max_traces)
  x = DIGITS.astype(np.float32)
  s = decomposition.PCA(2, svd_solver="full").fit(DIGITS)
  r = M.pca(x, 2)
  assert r.embedding.dtype == jnp.float32
  assert _disparity(r.embedding, s.transform(DIGITS)) < 1e-6
  chex.assert_trees_all_close(np.asarray(r.explained_variance_ratio), s.explained_variance_ratio_, rtol=1e-4)

  chex.clear_trace_counter()
  f = jax.jit(chex.assert_max_traces(lambda x: M.pca(x, 2).embedding, n=1))
  e0 = f(x)
  e1 = f(x + 3.0)  # new data, same shape: no retrace; PCA is shift invariant
  chex.assert_trees_all_close(e0, e1, atol=2e-3)
  chex.assert_trees_all_close(e0, r.embedding, atol=2e-3)

  xs = jnp.stack([x[:100], 2.0 * x[:100]])
  e = jax.vmap(lambda x: M.pca(x, 2).embedding)(xs)
  chex.assert_shape(e, (2, 100, 2))
  chex.assert_trees_all_close(e[1], 2.0 * e[0], rtol=1e-4, atol=1e-3)


def test_pca_constant_data_is_zero_not_nan():
  r = M.pca(np.ones((10, 3)), 2)
  assert np.all(np.asarray(r.embedding) == 0)
  assert np.all(np.asarray(r.explained_variance_ratio) == 0)


@pytest.mark.parametrize("kernel,x,k", [("rbf", DIGITS, 2), ("poly", IRIS, 3), ("linear", IRIS, 3)])
def test_kernel_pca_matches_sklearn(kernel, x, k):
  gamma = 1e-3 if kernel == "rbf" else None  # digits: pixel values 0..16, squared distances ~1e3
  with jax.enable_x64(True):
    r = M.kernel_pca(x, k, kernel, gamma=gamma)
  s = decomposition.KernelPCA(k, kernel=kernel, gamma=gamma, eigen_solver="dense").fit(x)
  chex.assert_shape(r.embedding, (len(x), k))
  chex.assert_trees_all_close(np.asarray(r.eigenvalues), s.eigenvalues_, rtol=1e-9)
  chex.assert_trees_all_close(np.asarray(r.embedding), s.transform(x), atol=1e-8 * np.abs(s.transform(x)).max())
  assert _disparity(r.embedding, s.transform(x)) < 1e-12


# ------------------------------------------------------------------------------------------------ Isomap

@pytest.mark.parametrize("directed", [False, True])
def test_floyd_warshall_matches_scipy(directed):
  rng = np.random.default_rng(1)
  n = 25
  g = np.where(rng.random((n, n)) < 0.12, rng.uniform(0.1, 2.0, (n, n)), np.inf)
  g[-1, :] = g[:, -1] = np.inf  # an isolated node: unreachable pairs stay inf
  np.fill_diagonal(g, 0.0)
  with jax.enable_x64(True):
    d = np.asarray(M.floyd_warshall(g, directed=directed))
  ref = shortest_path(np.where(np.isinf(g), 0.0, g), method="FW", directed=directed)
  assert np.array_equal(np.isinf(d), np.isinf(ref))
  np.testing.assert_allclose(d[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-12)
  assert np.isfinite(ref).sum() > n * (n - 1) // 2  # the comparison covers many reachable pairs


def test_isomap_matches_sklearn_float64():
  with jax.enable_x64(True):
    r = M.isomap(ROLL_X, 2, n_neighbors=5)
  s = skm.Isomap(n_neighbors=5, n_components=2, path_method="FW", eigen_solver="dense").fit(ROLL_X)
  chex.assert_shape(r.embedding, (300, 2))
  assert int(r.n_graph_components) == 1
  np.testing.assert_allclose(np.asarray(r.dist_matrix), s.dist_matrix_, rtol=1e-12, atol=1e-12)
  chex.assert_trees_all_close(np.asarray(r.eigenvalues), s.kernel_pca_.eigenvalues_, rtol=1e-9)
  assert _disparity(r.embedding, s.embedding_) < 1e-12
  # the 5-NN graph of 300 points unrolls the roll: the first coordinate follows the roll parameter
  assert abs(np.corrcoef(np.argsort(np.argsort(r.embedding[:, 0])), np.argsort(np.argsort(ROLL_T)))[0, 1]) > 0.7


def test_isomap_float32():
  s = skm.Isomap(n_neighbors=5, n_components=2, path_method="D").fit(ROLL_X)
  r = M.isomap(ROLL_X.astype(np.float32), 2, n_neighbors=5)
  assert r.embedding.dtype == jnp.float32
  assert _disparity(r.embedding, s.embedding_) < 1e-5


# ------------------------------------------------------------------------------------------------ LLE

def test_lle_matches_sklearn_float64():
  with jax.enable_x64(True):
    r = M.lle(ROLL_X, 2, n_neighbors=10, reg=1e-3)  # (5 neighbours: near-degenerate bottom eigenvalues)
  s = skm.LocallyLinearEmbedding(n_neighbors=10, n_components=2, method="standard", eigen_solver="dense",
                                 reg=1e-3).fit(ROLL_X)
  chex.assert_shape(r.embedding, (300, 2))
  chex.assert_shape(r.weights, (300, 10))
  chex.assert_trees_all_close(np.asarray(r.weights).sum(1), np.ones(300), atol=1e-12)
  np.testing.assert_allclose(np.sum(np.asarray(r.eigenvalues)), s.reconstruction_error_, rtol=1e-4, atol=1e-14)
  assert _disparity(r.embedding, s.embedding_) < 1e-8
  # sklearn does not flip signs: compare the unit-norm eigenvectors up to sign
  chex.assert_trees_all_close(np.abs(np.asarray(r.embedding)), np.abs(s.embedding_), atol=1e-6)


# ------------------------------------------------------------------------------------------------ Laplacian eigenmaps

@pytest.mark.parametrize("affinity", ["nearest_neighbors", "rbf"])
def test_laplacian_eigenmaps_matches_sklearn(affinity):
  with jax.enable_x64(True):
    r = M.laplacian_eigenmaps(ROLL_X, 2, n_neighbors=5, affinity=affinity, gamma=0.05)
  s = skm.SpectralEmbedding(2, affinity=affinity, n_neighbors=5, gamma=0.05, eigen_solver="arpack",
                            random_state=0).fit(ROLL_X)
  ref_aff = s.affinity_matrix_.toarray() if hasattr(s.affinity_matrix_, "toarray") else s.affinity_matrix_
  np.fill_diagonal(ref_aff, 0.0)
  np.testing.assert_allclose(np.asarray(r.affinity), ref_aff, atol=1e-12)
  chex.assert_shape(r.embedding, (300, 2))
  assert _disparity(r.embedding, s.embedding_) < 1e-9
  chex.assert_trees_all_close(np.asarray(r.embedding), s.embedding_, atol=1e-6 * np.abs(s.embedding_).max())
  assert np.all(np.asarray(r.eigenvalues) > 0) and np.all(np.asarray(r.eigenvalues) < 2)


# ------------------------------------------------------------------------------------------------ normalized cut

def test_normalized_cut_matches_sklearn_spectral_clustering():
  with jax.enable_x64(True):
    r = M.normalized_cut(MOONS_X, 2, jax.random.key(0), affinity="nearest_neighbors", n_neighbors=10)
    aff = M.laplacian_eigenmaps(MOONS_X, 2, n_neighbors=10).affinity
    r_pre = M.normalized_cut(np.asarray(aff), 2, jax.random.key(0), affinity="precomputed")
    r_njw = M.normalized_cut(MOONS_X, 2, jax.random.key(1), affinity="nearest_neighbors", n_neighbors=10,
                             method="njw")
    # same shapes as the moons (200 x 2, 2 clusters): only the rbf affinity compiles anew
    xb, yb = datasets.make_blobs(200, centers=[[0, 0], [4, 1]], cluster_std=1.2, random_state=3)
    r_rbf = M.normalized_cut(xb, 2, jax.random.key(0), gamma=0.5)
  s = cluster.SpectralClustering(2, affinity="nearest_neighbors", n_neighbors=10, random_state=0).fit(MOONS_X)
  s_rbf = cluster.SpectralClustering(2, gamma=0.5, random_state=0).fit(xb)
  chex.assert_shape(r.labels, (200,))
  chex.assert_shape(r.embedding, (200, 2))
  assert metrics.adjusted_rand_score(np.asarray(r.labels), s.labels_) == 1.0
  assert metrics.adjusted_rand_score(np.asarray(r.labels), MOONS_Y) == 1.0
  assert metrics.adjusted_rand_score(np.asarray(r_njw.labels), MOONS_Y) > 0.99
  np.testing.assert_array_equal(np.asarray(r_pre.labels), np.asarray(r.labels))
  assert metrics.adjusted_rand_score(np.asarray(r_rbf.labels), s_rbf.labels_) > 0.99
  assert metrics.adjusted_rand_score(np.asarray(r_rbf.labels), yb) > 0.8
  # the first eigenvalue of L_sym is the trivial 0
  assert abs(float(r.eigenvalues[0])) < 1e-10 and float(r.inertia) >= 0


# ------------------------------------------------------------------------------------------------ errors

def _two_far_blobs():
  rng = np.random.default_rng(0)  # 300 x 3 as the swiss roll: the isomap / affinity compilations are reused
  return np.concatenate([rng.normal(size=(150, 3)), 100.0 + rng.normal(size=(150, 3))])


def test_disconnected_graph_raises_and_is_reported_under_jit():
  x = _two_far_blobs()
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match=r"isomap: .* 2 connected components.*n_neighbors=5 is too small"):
      M.isomap(x, 2, n_neighbors=5)
    with pytest.raises(ValueError, match=r"laplacian_eigenmaps: .* 2 connected components.*n_neighbors=5 is too"):
      M.laplacian_eigenmaps(x, 2, n_neighbors=5)
    with pytest.raises(ValueError, match=r"2 connected components.*rbf affinity underflows.*decrease gamma"):
      M.laplacian_eigenmaps(x, 2, affinity="rbf", gamma=0.05)
  # inside an outer jit nothing can raise: the component count is returned and the embedding stays finite
  r = jax.jit(lambda x: M.isomap(x, 2, 5))(x)
  assert int(r.n_graph_components) == 2
  assert np.all(np.isfinite(np.asarray(r.embedding))) and np.all(np.isfinite(np.asarray(r.dist_matrix)))


_X = np.random.default_rng(0).normal(size=(12, 3))


@pytest.mark.parametrize("call,match", [
  (lambda: M.pca(np.ones(5), 1), r"x must be a 2-D array \[n, d\].*got shape \(5,\)"),
  (lambda: M.pca(_X, 4), r"n_components must be in \[1, 3\]; got 4"),
  (lambda: M.pca(_X, 2.0), r"n_components must be a Python int"),
  (lambda: M.pca(_X, 2, solver="qr"), r"solver must be one of"),
  (lambda: M.pca(_X.astype(np.complex64), 2), r"x must be a real-valued array"),
  (lambda: M.kernel_pca(_X, 2, kernel="sigmoid"), r"kernel must be one of"),
  (lambda: M.kernel_pca(_X, 2, "precomputed"), r"square kernel matrix \[n, n\].*\(12, 3\)"),
  (lambda: M.kernel_pca(_X, 2, gamma=-1.0), r"gamma must be finite and >= 0"),
  (lambda: M.isomap(_X, 2, n_neighbors=12), r"n_neighbors must be in \[1, 11\]; got 12"),
  (lambda: M.lle(_X, 4, 3), r"n_components must be in \[1, 3\]"),
  (lambda: M.lle(_X, 2, 3, reg=-1.0), r"reg must be finite and >= 0"),
  (lambda: M.laplacian_eigenmaps(_X, 2, affinity="cosine"), r"affinity must be one of"),
  (lambda: M.laplacian_eigenmaps(_X, 2, n_neighbors=1), r"n_neighbors must be in \[2, 12\]"),
  (lambda: M.laplacian_eigenmaps(-np.ones((4, 4)), 1, affinity="precomputed"), r"must be non-negative"),
  (lambda: M.normalized_cut(_X, 1, jax.random.key(0)), r"n_clusters must be in \[2, 12\]"),
  (lambda: M.normalized_cut(_X, 2, 0), r"key must be a jax PRNG key"),
  (lambda: M.normalized_cut(_X, 2, jax.random.key(0), method="kmeans"), r"method must be one of"),
  (lambda: M.floyd_warshall(np.ones((3, 4))), r"graph must be a square"),
  (lambda: M.floyd_warshall(-np.ones((3, 3))), r"non-negative edge weights"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ------------------------------------------------------------------------------------------------ worked example

@pytest.mark.slow  # suite time; `python -m experiments.classical --flagfile=experiments/configs/classical_smoke.flags` runs it
def test_worked_example_quick(tmp_path):
  from research.methods.classical import manifold as example
  r = example.run(str(tmp_path), quick=True)
  assert r["swiss_roll_n"] == 300 and r["digits_n"] == 500
  for name in r["figures"]:
    assert os.path.getsize(tmp_path / name) > 10_000
  assert r["normalized_cut_ari"]["moons"] > 0.95 and r["normalized_cut_ari"]["circles"] > 0.95
  assert r["kmeans_ari"]["moons"] < 0.6 and r["kmeans_ari"]["circles"] < 0.2  # k-means cannot cut these
  assert r["swiss_roll_spearman_best"]["laplacian_eigenmaps"] > 0.9
  assert r["swiss_roll_spearman_best"]["isomap"] > 0.7
  assert r["swiss_roll_spearman_best"]["pca"] < 0.5
  acc = r["digits_knn5_accuracy"]
  assert all(0.0 <= v <= 1.0 for v in acc.values())
  assert acc["laplacian_eigenmaps"] > 0.7 and acc["pca"] > 0.4 and r["digits_knn5_accuracy_raw_64d"] > 0.95
