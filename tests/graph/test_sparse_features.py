"""Sparse input features (Kipf & Welling's sparse X with sparse dropout) and ChebConv's Clenshaw path."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.layers import graph as glayers
from research.models import graph as graph_models  # noqa: F401  (registers the graph family)
from research.ops import graph as gops


def _graph(n=12, f=30, seed=0, density=0.2):
  rng = np.random.default_rng(seed)
  a = np.triu(rng.random((n, n)) < 0.3, 1)
  a = a | a.T
  r, s = np.nonzero(a)
  x = (rng.random((n, f)) < density) * rng.random((n, f))
  x[3] = 0.0  # a node without features
  return gops.from_edges(x.astype(np.float32), s.astype(np.int32), r.astype(np.int32)), x


def test_from_dense_round_trip_and_matmul():
  _, x = _graph()
  sf = gops.SparseFeatures.from_dense(x.astype(np.float32))
  assert sf.shape == x.shape and sf.index.shape[1] == (x != 0).sum(1).max()
  np.testing.assert_allclose(np.asarray(sf.to_dense()), x, rtol=1e-6)
  w = np.random.default_rng(1).normal(size=(x.shape[1], 5)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(gops.sparse_matmul(sf, w)), x @ w, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="kernel must be"):
    gops.sparse_matmul(sf, w[:-1])
  with pytest.raises(ValueError, match="max_nonzero"):
    gops.SparseFeatures.from_dense(x, max_nonzero=1)


def test_sparse_dropout_keeps_the_expected_fraction_and_scales():
  sf = gops.SparseFeatures.from_dense(np.ones((200, 100), np.float32))
  out = gops.sparse_dropout(jax.random.key(0), sf, 0.5)
  kept = np.asarray(out.value) != 0
  assert abs(kept.mean() - 0.5) < 0.01
  np.testing.assert_allclose(np.asarray(out.value)[kept], 2.0)
  assert gops.sparse_dropout(jax.random.key(0), sf, 0.0) is sf


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_clenshaw_filter_equals_the_chebyshev_basis_sum(K):
  g, x = _graph()
  theta = np.random.default_rng(2).normal(size=(K, x.shape[1], 4))
  with jax.enable_x64(True):
    g64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == np.float32 else jnp.asarray(a), g)
    want = jnp.einsum("knf,kfo->no", gops.chebyshev_basis(g64, jnp.asarray(x), K), jnp.asarray(theta))
    got = gops.chebyshev_filter(g64, jnp.einsum("nf,kfo->kno", jnp.asarray(x), jnp.asarray(theta)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", ["gcn", "cheb_wide", "cheb_narrow", "linear"])
def test_layers_give_the_same_output_for_sparse_and_dense_input(layer):
  g, x = _graph()
  x = x.astype(np.float32)
  sf = gops.SparseFeatures.from_dense(x)
  mod = {"gcn": glayers.GCNConv(4), "cheb_wide": glayers.ChebConv(4, K=3),  # F=30 > 4: Clenshaw path
         "cheb_narrow": glayers.ChebConv(64, K=3), "linear": glayers.Linear(4)}[layer]
  graph_args = () if layer == "linear" else (g,)
  variables = mod.init(jax.random.key(0), *graph_args, jnp.asarray(x))
  dense = mod.apply(variables, *graph_args, jnp.asarray(x))
  sparse = mod.apply(variables, *graph_args, sf)
  chex.assert_trees_all_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gcn", "chebnet", "graph_mlp"])
def test_node_classifier_with_sparse_features_matches_dense_in_eval(name):
  g, x = _graph()
  sf = gops.SparseFeatures.from_dense(x.astype(np.float32))
  model = models.create(name, num_classes=3, hidden=8)
  variables = model.init(jax.random.key(0), g, train=False)
  g0 = g.replace(nodes=np.zeros((g.num_nodes, 0), np.float32))
  dense = model.apply(variables, g, train=False)
  sparse = model.apply(variables, g0, train=False, features=sf)
  chex.assert_trees_all_close(sparse, dense, rtol=1e-5, atol=1e-5)
  out = model.apply(variables, g0, train=True, features=sf, rngs={"dropout": jax.random.key(1)})
  assert np.isfinite(np.asarray(out)).all()
