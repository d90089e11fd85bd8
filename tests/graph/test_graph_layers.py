"""GCNConv / ChebConv / GraphPool against dense formulas, padding and batching, gradients, no-retrace; the graph
models (NodeClassifier, ChebNetPool) and their registry names."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import chebyshev as npcheb

from research.layers.graph import ChebConv, GCNConv, GraphPool
from research.models import graph as graph_models
from research.models import registry
from research.ops import coarsening as C
from research.ops import graph as G


def _adj(rng, n, p=0.4, isolated=None):
  a = np.triu((rng.random((n, n)) < p) * rng.uniform(0.5, 2.0, (n, n)), 1)
  a = a + a.T
  if isolated is not None:
    a[isolated, :] = a[:, isolated] = 0
  return a


def _batch(seed=0, f=3, pad=True):
  rng = np.random.default_rng(seed)
  adjs = [_adj(rng, 5, isolated=1), _adj(rng, 6), _adj(rng, 3, p=1.0)]
  feats = [rng.normal(size=(len(a), f)) for a in adjs]
  g = G.batch_graphs([(x, *G.edges_from_adjacency(a)) for a, x in zip(adjs, feats)],
                     pad_nodes=17 if pad else None, pad_edges=60 if pad else None, pad_graphs=4 if pad else None)
  return adjs, feats, g


def _randomize(params, seed=0):
  """Nonzero biases so that the dense formula checks them too."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def test_gcnconv_matches_dense_formula():
  adjs, feats, g = _batch(0)
  with jax.enable_x64(True):
    layer = GCNConv(4, dtype=jnp.float64, param_dtype=jnp.float64)
    params = _randomize(layer.init(jax.random.key(0), g, g.nodes)["params"])
    y = np.asarray(layer.apply({"params": params}, g, g.nodes))
    chex.assert_shape(y, (17, 4))
    w, b = np.asarray(params["linear"]["kernel"]), np.asarray(params["bias"])
    off = 0
    for a, x in zip(adjs, feats):
      n = len(a)
      at = a + np.eye(n)
      dinv = np.diag(1 / np.sqrt(at.sum(1)))
      np.testing.assert_allclose(y[off:off + n], dinv @ at @ dinv @ x @ w + b, rtol=1e-12, atol=1e-12)
      off += n
    np.testing.assert_allclose(y[off:], np.broadcast_to(b, (17 - off, 4)), rtol=1e-12)  # padding: bias only


def test_chebconv_matches_eigendecomposition():
  adjs, feats, g = _batch(1)
  K, F_out = 4, 2
  with jax.enable_x64(True):
    layer = ChebConv(F_out, K, dtype=jnp.float64, param_dtype=jnp.float64)
    params = _randomize(layer.init(jax.random.key(0), g, g.nodes)["params"])
    x = np.stack([np.asarray(g.nodes), np.asarray(g.nodes)[::-1]])  # [2, N, F]: leading batch axis
    y = np.asarray(layer.apply({"params": params}, g, x))
    chex.assert_shape(y, (2, 17, F_out))
    theta, b = np.asarray(params["kernel"]), np.asarray(params["bias"])  # [K, F, F_out]
    off = 0
    for a in adjs:
      n = len(a)
      d = a.sum(1)
      inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
      lam, u = np.linalg.eigh(np.eye(n) - inv[:, None] * a * inv[None, :])
      for j in range(2):
        xs = x[j, off:off + n]
        want = b + sum(u @ np.diag(npcheb.chebval(lam - 1, np.eye(K)[k])) @ u.T @ xs @ theta[k] for k in range(K))
        np.testing.assert_allclose(y[j, off:off + n], want, rtol=1e-10, atol=1e-10)
      off += n


@pytest.mark.parametrize("layer", [GCNConv(4), ChebConv(4, 3), ChebConv(4, 2, lmax=None)],
                         ids=["gcn", "cheb", "cheb_est"])
def test_batched_graphs_equal_each_graph_alone(layer):
  adjs, feats, g = _batch(2)
  g = g.replace(nodes=g.nodes.astype(np.float32), edge_weight=g.edge_weight.astype(np.float32))
  params = layer.init(jax.random.key(0), g, g.nodes)
  apply = jax.jit(layer.apply)
  y = np.asarray(apply(params, g, g.nodes))
  off = 0
  for a, x in zip(adjs, feats):
    n = len(a)
    s, r, w = G.edges_from_adjacency(a)
    gi = G.from_edges(x.astype(np.float32), s, r, w.astype(np.float32), pad_nodes=17, pad_edges=60)  # 1 compile
    np.testing.assert_allclose(y[off:off + n], np.asarray(apply(params, gi, gi.nodes))[:n], rtol=2e-4, atol=2e-5)
    off += n


def test_gradients_finite_and_no_retrace():
  _, _, g = _batch(3)
  g = jax.tree.map(lambda a: a.astype(np.float32) if a.dtype == np.float64 else a, g)
  gcn, cheb = GCNConv(5), ChebConv(2, 3)
  p1 = gcn.init(jax.random.key(0), g, g.nodes)
  p2 = cheb.init(jax.random.key(1), g, jnp.zeros((17, 5)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grads(p1, p2, g):
    def loss(p1, p2, w, x):
      gg = g.replace(edge_weight=w)
      h = jax.nn.relu(gcn.apply(p1, gg, x))
      return jnp.sum(cheb.apply(p2, gg, h) ** 2)
    return jax.grad(loss, argnums=(0, 1, 2, 3))(p1, p2, g.edge_weight, g.nodes)

  for seed in (3, 4):
    _, _, gs = _batch(seed)
    gs = jax.tree.map(lambda a: a.astype(np.float32) if a.dtype == np.float64 else a, gs)
    out = grads(p1, p2, gs)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(out))
  with pytest.raises(ValueError, match="N = 17"):
    gcn.apply(p1, g, g.nodes[:5])


def test_graph_pool_with_fake_node_mask():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 3)).astype(np.float32)
  mask = np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)
  out_max = np.asarray(GraphPool(4, "max").apply({}, x, mask))
  out_mean = np.asarray(GraphPool(2, "mean").apply({}, x, mask))
  chex.assert_shape(out_max, (2, 2, 3))
  np.testing.assert_allclose(out_max[:, 0], x[:, :3].max(1))
  np.testing.assert_allclose(out_max[:, 1], x[:, 7])
  want_mean = np.stack([x[:, 0:2].mean(1), x[:, 2], np.zeros((2, 3)), x[:, 7]], axis=1)
  np.testing.assert_allclose(out_mean, want_mean, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(GraphPool(2, "max").apply({}, x)), x.reshape(2, 4, 2, 3).max(2))
  with pytest.raises(ValueError, match="power of two"):
    GraphPool(3).apply({}, x)
  with pytest.raises(ValueError, match="divisible by size=16"):
    GraphPool(16).apply({}, x)


# ---------------------------------------------------------------------------------------------------- models


def _rngs(seed):
  return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 100)}


@pytest.mark.parametrize("name", ["gcn", "chebnet", "graph_mlp"])
def test_node_classifiers(name):
  _, _, g = _batch(4, f=6)
  g = jax.tree.map(lambda a: a.astype(np.float32) if a.dtype == np.float64 else a, g)
  model = registry.create(name, num_classes=3, hidden=8)
  assert isinstance(model, graph_models.NodeClassifier)
  variables = model.init(_rngs(0), g, train=False)
  assert set(variables["params"]) == {"layer0", "layer1"}
  apply = jax.jit(model.apply, static_argnames="train")
  ev = apply(variables, g, train=False)
  chex.assert_shape(ev, (17, 3))
  assert ev.dtype == jnp.float32
  chex.assert_trees_all_close(ev, apply(variables, g, train=False, rngs={"dropout": jax.random.key(7)}))
  t1 = apply(variables, g, train=True, rngs={"dropout": jax.random.key(1)})
  t2 = apply(variables, g, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(t1, t2) and not np.allclose(t1, ev)  # dropout only in train
  no_drop = registry.create(name, num_classes=3, hidden=8, dropout=0.0)
  chex.assert_trees_all_close(no_drop.apply(variables, g, train=True, rngs={"dropout": jax.random.key(1)}), ev,
                              rtol=1e-6, atol=1e-6)
  bf = registry.create(name, num_classes=3, hidden=8, dtype=jnp.bfloat16)
  out = bf.apply(variables, g, train=False)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
  np.testing.assert_allclose(out, ev, rtol=0.1, atol=0.1)
  if name == "graph_mlp":  # ignores the edges
    chex.assert_trees_all_close(apply(variables, g.replace(edge_weight=0 * g.edge_weight), train=False), ev)
  else:
    assert not np.allclose(apply(variables, g.replace(edge_weight=0 * g.edge_weight), train=False), ev)


def test_registry_names_and_errors():
  assert {"gcn", "chebnet", "graph_mlp", "chebnet_pool"} <= set(registry.names("graph"))
  assert "gcn" not in registry.names()  # not a classification backbone
  _, _, g = _batch(5)
  with pytest.raises(ValueError, match="conv='gat'"):
    graph_models.NodeClassifier(3, conv="gat").init(_rngs(0), g, train=False)


def test_chebnet_pool_default_registry_model_shapes():
  model = registry.create("chebnet_pool", num_classes=10, features=(4, 8), K=(3, 3), fc=(16,))
  assert isinstance(model, graph_models.ChebNetPool)
  assert len(model.perm) % 16 == 0 and (model.perm >= 0).sum() == 784
  x = jax.ShapeDtypeStruct((2, 784), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_rngs(0), x, train=False), x)
  n_top = len(model.perm) // 16
  chex.assert_shape(variables["params"]["fc0"]["kernel"], (n_top * 8, 16))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}), variables, x)
  assert out.shape == (2, 10) and out.dtype == jnp.float32


def _scrambled_path():
  """Path 0-2-1-3 (+ a pendant 4 on node 3): coarsening reorders the nodes and adds fake nodes."""
  a = np.zeros((5, 5))
  for i, j in ((0, 2), (2, 1), (1, 3), (3, 4)):
    a[i, j] = a[j, i] = 1
  return a


def test_chebnet_pool_runs_on_original_order_and_masks_fake_nodes():
  a = _scrambled_path()
  kw = dict(features=(3, 2), K=(2, 2), pool=(2, 2), fc=(4,))
  model = graph_models.ChebNetPool.from_adjacency(a, num_classes=3, **kw)
  perm = model.perm
  assert (perm < 0).any()  # the tree order needs fake nodes here
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 1)).astype(np.float32)
  v = jax.jit(lambda x: model.init(_rngs(0), x, train=False))(x)
  y = jax.jit(model.apply, static_argnames="train")(v, x, train=False)
  chex.assert_shape(y, (2, 3))
  assert np.all(np.isfinite(y))
  # the same network without perm, fed the reordered signal, pooling fake nodes by hand (they must not count)
  def manual(xp):
    masks = C.real_node_masks(perm, 2)
    p = v["params"]
    h = jnp.asarray(xp)
    for i, lvl in enumerate((0, 1)):
      s, r, w = model.graphs[lvl]
      gg = G.from_edges(np.zeros((len(perm) >> lvl, 0), np.float32), s, r, w)
      h = jax.nn.relu(ChebConv(kw["features"][i], 2).apply({"params": p[f"conv{i}"]}, gg, h))
      m = masks[lvl].reshape(-1, 2)[None, :, :, None]
      hr = h.reshape(h.shape[0], -1, 2, h.shape[-1])
      h = jnp.where(m.any(2), jnp.max(jnp.where(m, hr, -jnp.inf), axis=2), 0)
    h = jax.nn.relu(h.reshape(2, -1) @ p["fc0"]["kernel"] + p["fc0"]["bias"])
    return h @ p["logits"]["kernel"] + p["logits"]["bias"]
  np.testing.assert_allclose(y, jax.jit(manual)(C.permute_signal(x, perm)), rtol=1e-5, atol=1e-6)
  # 2-D input [B, n] is a single feature; bfloat16 compute keeps float32 logits (abstract evaluation: no compile)
  assert jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x[..., 0]).shape == (2, 3)
  bf = graph_models.ChebNetPool.from_adjacency(a, num_classes=3, dtype=jnp.bfloat16, **kw)
  out = jax.eval_shape(lambda v, x: bf.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}), v, x)
  assert out.shape == (2, 3) and out.dtype == jnp.float32
  with pytest.raises(ValueError, match="does not order the 4 nodes"):
    model.apply(v, x[:, :4], train=False)
  with pytest.raises(ValueError, match="power of two"):
    graph_models.ChebNetPool.from_adjacency(a, num_classes=3, pool=(3,))
