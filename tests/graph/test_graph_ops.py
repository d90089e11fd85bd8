"""research.ops.graph against dense numpy references: propagation, GCN normalisation, Chebyshev filters (vs the
eigendecomposition U g(Lambda) U^T x), reductions, lambda_max, padding and batching."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import chebyshev as npcheb

from research.ops import graph as G

# jitted once per shape: op-by-op dispatch would compile every primitive separately (slow on a loaded CPU)
cheb = jax.jit(G.chebyshev_basis, static_argnums=(2,), static_argnames=("normalized",))


def random_adjacency(rng: np.random.Generator, n: int, p: float = 0.4, isolated: int | None = None,
                     self_loop: bool = False) -> np.ndarray:
  """Symmetric weighted adjacency [n, n] (weights in [0.5, 2]); node ``isolated`` has no edges."""
  a = np.triu((rng.random((n, n)) < p) * rng.uniform(0.5, 2.0, (n, n)), 1)
  a = a + a.T
  if self_loop:
    a[0, 0] = 1.5
  if isolated is not None:
    a[isolated, :] = 0
    a[:, isolated] = 0
  return a


def graph_tuple(a: np.ndarray, feats: np.ndarray):
  s, r, w = G.edges_from_adjacency(a)
  return feats, s, r, w


def np_laplacian(a: np.ndarray, normalized: bool) -> np.ndarray:
  d = a.sum(1)
  if normalized:
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    return np.eye(len(a)) - inv[:, None] * a * inv[None, :]
  return np.diag(d) - a


def np_spectral_filter(a, x, theta, lmax, normalized=True):
  """U g(Lambda) U^T x with g(lambda) = sum_k theta_k T_k(2 lambda / lmax - 1): [n, F]."""
  lam, u = np.linalg.eigh(np_laplacian(a, normalized))
  gl = npcheb.chebval(2 * lam / lmax - 1, theta)
  return u @ (gl[:, None] * (u.T @ x))


def _graphs(seed=0, f=3):
  rng = np.random.default_rng(seed)
  sizes = (5, 7, 4)
  adjs = [random_adjacency(rng, 5, isolated=2), random_adjacency(rng, 7, self_loop=True),
          random_adjacency(rng, 4, p=0.9)]
  feats = [rng.normal(size=(n, f)) for n in sizes]
  return adjs, feats


def _with_garbage_padding(g: G.GraphBatch) -> G.GraphBatch:
  """Padding edges with large weights and padding nodes with features: must change nothing."""
  w = np.where(np.asarray(g.edge_mask), np.asarray(g.edge_weight), 7.0)
  x = np.where(np.asarray(g.node_mask)[:, None], np.asarray(g.nodes), 3.0)
  return g.replace(edge_weight=w, nodes=x)


def test_builders_layout_and_padding():
  adjs, feats = _graphs()
  g = G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=20, pad_edges=60, pad_graphs=4)
  n_edges = [int((a != 0).sum()) for a in adjs]
  chex.assert_shape(g.nodes, (20, 3))
  chex.assert_shape([g.senders, g.receivers, g.edge_weight, g.edge_mask], (60,))
  np.testing.assert_array_equal(g.n_node, [5, 7, 4, 0])
  np.testing.assert_array_equal(g.n_edge, n_edges + [0])
  np.testing.assert_array_equal(g.graph_mask, [True, True, True, False])
  np.testing.assert_array_equal(g.node_graph, [0] * 5 + [1] * 7 + [2] * 4 + [4] * 4)
  assert g.node_mask.sum() == 16 and g.edge_mask.sum() == sum(n_edges)
  pad = ~g.edge_mask
  assert np.all(g.edge_weight[pad] == 0) and np.all(g.senders[pad] == 16) and np.all(g.receivers[pad] == 16)
  # node indices are offset per graph
  e0 = n_edges[0]
  assert g.senders[e0:e0 + n_edges[1]].min() >= 5 and g.senders[e0:e0 + n_edges[1]].max() < 12
  assert g.senders.dtype == np.int32 and g.node_graph.dtype == np.int32
  # the dense adjacency is block diagonal
  a = np.asarray(G.dense_adjacency(g))
  np.testing.assert_allclose(a[:5, :5], adjs[0], rtol=1e-6)
  np.testing.assert_allclose(a[5:12, 5:12], adjs[1], rtol=1e-6)
  assert np.all(a[:5, 5:] == 0) and np.all(a[16:] == 0)
  # no padding node: padding edges point at node 0 with weight 0
  g1 = G.from_edges(feats[0], *G.edges_from_adjacency(adjs[0]), pad_edges=30)
  assert g1.num_graphs == 1 and np.all(g1.senders[~g1.edge_mask] == 0)


@pytest.mark.parametrize("call,match", [
    (lambda n, s, r: G.from_edges(n, s, r, pad_nodes=3), "pad_nodes=3 is smaller"),
    (lambda n, s, r: G.from_edges(n, s, r, pad_edges=1), "pad_edges=1 is smaller"),
    (lambda n, s, r: G.batch_graphs([(n, s, r)] * 3, pad_graphs=2), "pad_graphs=2"),
    (lambda n, s, r: G.from_edges(n[:, 0], s, r), "nodes must be a"),
    (lambda n, s, r: G.from_edges(n, s, r + 4), r"indices must lie in \[0, 5\)"),
    (lambda n, s, r: G.from_edges(n, s, r[:-1]), "same shape"),
    (lambda n, s, r: G.from_edges(n, s.astype(np.float32), r), "integer"),
    (lambda n, s, r: G.from_edges(n, s, r, np.ones(2)), "edge_weight must have shape"),
])
def test_builders_raise_one_clear_error(call, match):
  n = np.zeros((5, 2))
  s, r = np.array([0, 1, 2, 3]), np.array([1, 0, 3, 2])
  with pytest.raises(ValueError, match=match):
    call(n, s, r)


def test_propagate_and_degree_match_dense_loops():
  adjs, feats = _graphs(1)
  g = _with_garbage_padding(G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=19,
                                           pad_edges=70, pad_graphs=4))
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    w = rng.normal(size=g.num_edges)
    x = rng.normal(size=(2, g.num_nodes, 3))  # two signals on the same graph
    y = np.asarray(G.propagate(g, w, x))
    want = np.zeros_like(x)
    for e in range(g.num_edges):
      if g.edge_mask[e]:
        want[:, g.receivers[e]] += w[e] * x[:, g.senders[e]]
    chex.assert_shape(y, (2, 19, 3))
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    a = np.asarray(G.dense_adjacency(g, w))
    np.testing.assert_allclose(a @ x[0], want[0], rtol=1e-12, atol=1e-12)
    deg = np.asarray(G.degree(g))
    real_w = np.where(g.edge_mask, g.edge_weight, 0)
    np.testing.assert_allclose(deg, np.bincount(g.receivers, real_w, minlength=19), rtol=1e-12)


def test_aggregate_and_readout_match_numpy_loops():
  adjs, feats = _graphs(2)
  g = _with_garbage_padding(G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=18,
                                           pad_edges=64, pad_graphs=5))
  rng = np.random.default_rng(1)
  msg = rng.normal(size=(g.num_edges, 2)).astype(np.float32)
  for reduce in ("sum", "mean", "max"):
    out = np.asarray(G.aggregate(g, msg, reduce))
    want = np.zeros((g.num_nodes, 2), np.float32)
    for i in range(g.num_nodes):
      sel = g.edge_mask & (g.receivers == i)
      if sel.any():
        want[i] = {"sum": np.sum, "mean": np.mean, "max": np.max}[reduce](msg[sel], axis=0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6, err_msg=reduce)
    x = np.asarray(g.nodes, np.float32)
    ro = np.asarray(G.graph_readout(g, x, reduce))
    chex.assert_shape(ro, (5, 3))
    want = np.zeros((5, 3), np.float32)
    for k in range(3):
      want[k] = {"sum": np.sum, "mean": np.mean, "max": np.max}[reduce](x[g.node_graph == k], axis=0)
    np.testing.assert_allclose(ro, want, rtol=1e-5, atol=1e-6, err_msg=reduce)
  assert np.all(np.asarray(G.aggregate(g, msg, "max"))[2] == 0)  # isolated node of graph 0: no message -> 0
  with pytest.raises(ValueError, match="reduce='min'"):
    G.aggregate(g, msg, "min")
  with pytest.raises(ValueError, match=r"messages must be \[E, ...\] with E = 64"):
    G.aggregate(g, msg[:3])


def test_gcn_norm_is_kipf_renormalisation():
  adjs, feats = _graphs(3)
  g = _with_garbage_padding(G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=17,
                                           pad_edges=64))
  with jax.enable_x64(True):
    x = np.asarray(g.nodes)
    for self_loops in (True, False):
      edge, self_w = G.gcn_norm(g, add_self_loops=self_loops)
      y = np.asarray(G.propagate(g, edge, x) + self_w[:, None] * x)
      off = 0
      for a in adjs:
        n = len(a)
        at = a + np.eye(n) if self_loops else a
        d = at.sum(1)
        inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
        want = (inv[:, None] * at * inv[None, :]) @ x[off:off + n]
        np.testing.assert_allclose(y[off:off + n], want, rtol=1e-12, atol=1e-12)
        off += n
      assert np.all(np.isfinite(y)) and np.all(np.asarray(self_w)[16:] == 0)


@pytest.mark.parametrize("normalized", [True, False])
def test_chebyshev_filter_matches_eigendecomposition_on_a_padded_batch(normalized):
  adjs, feats = _graphs(4)
  g = _with_garbage_padding(G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=18,
                                           pad_edges=66, pad_graphs=4))
  K = 5
  theta = np.random.default_rng(5).normal(size=K)
  true_lmax = [np.linalg.eigvalsh(np_laplacian(a, normalized)).max() for a in adjs]
  lmaxes = [("true", np.array(true_lmax + [1.0]))]
  if normalized:
    lmaxes.append(("2", 2.0))
  with jax.enable_x64(True):
    for name, lmax in lmaxes:
      basis = np.asarray(cheb(g, g.nodes, K, lmax=lmax, normalized=normalized))
      chex.assert_shape(basis, (K, 18, 3))
      y = np.tensordot(theta, basis, axes=1)
      off = 0
      for i, a in enumerate(adjs):
        n = len(a)
        lm = lmax if np.ndim(lmax) == 0 else lmax[i]
        want = np_spectral_filter(a, feats[i], theta, lm, normalized)
        np.testing.assert_allclose(y[off:off + n], want, rtol=1e-9, atol=1e-9, err_msg=f"graph {i}, lmax {name}")
        off += n
      assert np.all(np.isfinite(basis))


def test_chebyshev_leading_batch_dims_and_single_graph_equal_batch():
  adjs, feats = _graphs(6)
  g = G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=20, pad_edges=70)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 20, 3)).astype(np.float32)
  b = np.asarray(cheb(g, x, 4))
  chex.assert_shape(b, (4, 2, 20, 3))
  for j in range(2):
    np.testing.assert_allclose(b[:, j], np.asarray(cheb(g, x[j], 4)), rtol=1e-6, atol=1e-6)
  off = 0
  for i, a in enumerate(adjs):
    n = len(a)
    gi = G.from_edges(x[0, off:off + n], *G.edges_from_adjacency(a))
    np.testing.assert_allclose(b[:, 0, off:off + n], np.asarray(cheb(gi, gi.nodes, 4)), rtol=1e-5,
                               atol=1e-6)
    off += n
  with pytest.raises(ValueError, match="K=0"):
    G.chebyshev_basis(g, x, 0)
  with pytest.raises(ValueError, match=r"x must be \[..., N, F\] with N = 20"):
    G.chebyshev_basis(g, x[:, :5], 3)


def test_lambda_max_power_iteration_matches_eigvalsh():
  adjs, feats = _graphs(7)
  g = G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=19, pad_edges=66, pad_graphs=4)

  @jax.jit
  def run(g):
    out = {}
    for normalized in (True, False):
      lam = G.lambda_max(g, normalized, num_iters=500)
      out[normalized] = (lam, G.scaled_laplacian(g, None, normalized),
                         G.scaled_laplacian(g, G.lambda_max(g, normalized), normalized))
    return out

  with jax.enable_x64(True):
    out = run(g)
    for normalized in (True, False):
      lam, (e1, d1), (e2, d2) = jax.tree.map(np.asarray, out[normalized])
      want = [np.linalg.eigvalsh(np_laplacian(a, normalized)).max() for a in adjs]
      np.testing.assert_allclose(lam[:3], want, rtol=1e-4)
      assert lam[3] == 2.0  # padding graph
      np.testing.assert_allclose(e1, e2, rtol=1e-12)  # lmax=None uses the (default 100-step) estimate
      np.testing.assert_allclose(d1, d2, rtol=1e-12)


def test_gradients_are_finite_with_isolated_nodes_and_padding():
  adjs, feats = _graphs(8)
  g = G.batch_graphs([graph_tuple(a, x) for a, x in zip(adjs, feats)], pad_nodes=19, pad_edges=66, pad_graphs=4)
  g = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if a.dtype == np.float64 else jnp.asarray(a), g)

  def loss(w, x):
    gg = g.replace(edge_weight=w)
    e, s = G.gcn_norm(gg)
    y = G.propagate(gg, e, x) + s[:, None] * x
    return jnp.sum(G.chebyshev_basis(gg, y, 3, lmax=None) ** 2) + jnp.sum(G.graph_readout(gg, y, "max"))

  gw, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(g.edge_weight, g.nodes)
  assert np.all(np.isfinite(gw)) and np.all(np.isfinite(gx))
  assert np.all(np.asarray(gx)[~np.asarray(g.node_mask)] == 0)  # padding nodes do not influence the loss


def test_jitted_ops_trace_once_per_padded_size():
  adjs, feats = _graphs(9)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(g):
    e, s = G.gcn_norm(g)
    return G.graph_readout(g, G.chebyshev_basis(g, G.propagate(g, e, g.nodes), 3)[-1], "mean")

  for seed in (0, 1):  # different graphs, same padded sizes
    rng = np.random.default_rng(seed)
    a = [random_adjacency(rng, len(x)) for x in feats]
    g = G.batch_graphs([graph_tuple(ai, x.astype(np.float32)) for ai, x in zip(a, feats)], pad_nodes=20,
                       pad_edges=80, pad_graphs=4)
    g = g.replace(edge_weight=g.edge_weight.astype(np.float32))
    chex.assert_shape(f(g), (4, 3))
