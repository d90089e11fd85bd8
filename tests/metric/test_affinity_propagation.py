"""affinity_propagation vs sklearn.cluster.AffinityPropagation(affinity="precomputed") on blob data."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import AffinityPropagation
from sklearn.datasets import make_blobs

from research.classical import affinity_propagation as ap

N = 60  # one size for every dataset: one compilation


def _similarity(x: np.ndarray) -> np.ndarray:
  return -np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)


def _sklearn(s: np.ndarray, **kw) -> AffinityPropagation:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ConvergenceWarning / equal-similarity warning
    return AffinityPropagation(affinity="precomputed", random_state=0, **kw).fit(s)


def _assert_same(res: ap.AffinityPropagationResult, ref: AffinityPropagation):
  np.testing.assert_array_equal(ap.exemplar_indices(res), ref.cluster_centers_indices_)
  np.testing.assert_array_equal(np.asarray(res.labels), ref.labels_)
  assert int(res.n_iter) == ref.n_iter_


@pytest.mark.parametrize("seed,centers,std", [(0, 3, 1.0), (1, 4, 0.8), (2, 5, 1.5), (3, 2, 2.5)])
def test_matches_sklearn_on_blobs(seed, centers, std):
  x, _ = make_blobs(n_samples=N, centers=centers, cluster_std=std, random_state=seed)
  s = _similarity(x)
  with jax.enable_x64(True):
    for damping, preference in [(0.5, None), (0.8, 3 * np.median(s)), (0.9, np.linspace(-80.0, -20.0, N))]:
      ref = _sklearn(s, damping=damping, preference=preference)
      res = ap.affinity_propagation(s, preference=preference, damping=damping)  # one compilation for all
      chex.assert_shape((res.exemplars, res.labels), ((N,), (N,)))
      _assert_same(res, ref)
      assert bool(res.converged)


def test_exact_ties_with_sklearns_noise_reproduced():
  """Duplicated points (exact ties): feed sklearn's own tie-breaking noise, then the runs agree to the iteration."""
  x, _ = make_blobs(n_samples=N // 2, centers=3, cluster_std=1.0, random_state=5)
  x = np.concatenate([x, x])  # every point twice
  s = _similarity(x)
  pref = np.median(s)
  ref = _sklearn(s)
  noisy = s.copy()
  np.fill_diagonal(noisy, pref)
  eps, tiny = np.finfo(np.float64).eps, np.finfo(np.float64).tiny
  noisy += (eps * noisy + tiny * 100) * np.random.RandomState(0).standard_normal(size=s.shape)
  with jax.enable_x64(True):
    res = ap.affinity_propagation(noisy, preference=np.diagonal(noisy), sequential_sums=True)
    _assert_same(res, ref)


def test_no_convergence_degenerate_and_vmap():
  x, _ = make_blobs(n_samples=N, centers=3, random_state=0)
  s = _similarity(x)
  with jax.enable_x64(True):
    # Too few iterations: sklearn keeps the last exemplars (or none) and reports max_iter.
    for max_iter in (1, 5):
      ref = _sklearn(s, max_iter=max_iter)
      res = ap.affinity_propagation(s, max_iter=max_iter)
      assert not bool(res.converged)
      if len(ref.cluster_centers_indices_) == 0:
        assert not bool(jnp.any(res.exemplars)) and bool(jnp.all(res.labels == -1))
        assert int(res.n_iter) == max_iter
      else:
        _assert_same(res, ref)
    # All similarities and preferences equal: no iterations, 1 or n clusters depending on the preference.
    flat = np.full((N, N), -1.0)
    for pref in (-2.0, 0.0):
      ref = _sklearn(flat, preference=pref)
      res = ap.affinity_propagation(flat, preference=pref)
      _assert_same(res, ref)
    # A batch of similarity matrices under vmap equals the one-by-one runs.
    batch = np.stack([_similarity(make_blobs(n_samples=N, centers=3, random_state=k)[0]) for k in range(3)])
    res = jax.jit(jax.vmap(ap.affinity_propagation))(jnp.asarray(batch))
    for k in range(3):
      _assert_same(jax.tree.map(lambda v: v[k], res), _sklearn(batch[k]))


def test_float32_no_retrace_and_bad_inputs():
  x, _ = make_blobs(n_samples=N, centers=4, cluster_std=0.5, random_state=9)
  s = _similarity(x).astype(np.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(s, key):
    return ap.affinity_propagation(s, noise_key=key)  # scikit-learn's tie-breaking noise, from a JAX key

  res = run(s, jax.random.key(0))
  run(s * 1.01, jax.random.key(1))  # same shape: no retrace
  assert res.labels.dtype == jnp.int32
  _assert_same(res, _sklearn(s.astype(np.float64)))
  with pytest.raises(ValueError, match="square similarity matrix"):
    ap.affinity_propagation(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="preference"):
    ap.affinity_propagation(s, preference=np.zeros(3))
  with pytest.raises(ValueError, match="damping"):
    ap.affinity_propagation(s, damping=0.2)
  with pytest.raises(ValueError, match="NaN or inf"):
    ap.affinity_propagation(np.array([[0.0, -np.inf], [-1.0, 0.0]]))
