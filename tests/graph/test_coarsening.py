"""Graclus coarsening and the binary-tree ordering (research.ops.coarsening): hand-computed tiny graphs, matching
validity on random graphs, W' = P^T W P, and pooling after the permutation vs pooling the clusters by a loop."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from research.ops import coarsening as C


def _ring(n):
  a = np.zeros((n, n))
  for i in range(n):
    a[i, (i + 1) % n] = a[(i + 1) % n, i] = 1
  return a


def _random_graph(seed, n=23, p=0.15):
  rng = np.random.default_rng(seed)
  a = np.triu((rng.random((n, n)) < p) * rng.uniform(0.1, 1.0, (n, n)), 1)
  a = a + a.T
  a[3, :] = a[:, 3] = 0  # an isolated node
  return a


def test_path_graph_one_level():
  a = np.diag(np.ones(3), 1)
  a = a + a.T  # path 0-1-2-3
  parent, n = C.graclus_match(a)
  np.testing.assert_array_equal(parent, [0, 0, 1, 1])
  assert n == 2
  graphs, perm = C.coarsen(a, 1)
  np.testing.assert_array_equal(perm, [0, 1, 2, 3])
  np.testing.assert_allclose(graphs[1].toarray(), [[2, 1], [1, 2]])  # intra-cluster weight -> self loop


def test_matching_maximises_normalized_cut_not_weight():
  # edges 0-1 (w 1), 0-2 (w 1), 1-3 (w 5): d = [2, 6, 1, 5]; node 0 scores 1*(1/2+1/6) for 1, 1*(1/2+1/1) for 2
  a = np.zeros((4, 4))
  for i, j, w in ((0, 1, 1.0), (0, 2, 1.0), (1, 3, 5.0)):
    a[i, j] = a[j, i] = w
  parent, n = C.graclus_match(a)
  np.testing.assert_array_equal(parent, [0, 1, 0, 1])
  assert n == 2


def test_ring_of_five_two_levels_fake_nodes_and_perm():
  # level 0: (0,1) -> c0, (2,3) -> c1, 4 alone -> c2; level 1 visits the smallest cluster c2 first: ties between
  # c0 and c1 (both 1 * (1/2 + 1/4)) go to c0 -> d0 = {c2, c0}, d1 = {c1}. Tree order: level 1 [c0, c2, c1, fake],
  # level 0 [0, 1, 4, fake, 2, 3, fake, fake] (fake = -1 in perm).
  graphs, perm = C.coarsen(_ring(5), 2)
  np.testing.assert_array_equal(perm, [0, 1, 4, -1, 2, 3, -1, -1])
  assert [g.shape[0] for g in graphs] == [8, 4, 2]
  w1 = graphs[1].toarray()
  np.testing.assert_allclose(w1, [[2, 1, 1, 0], [1, 0, 1, 0], [1, 1, 2, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(graphs[2].toarray(), [[4, 2], [2, 2]])
  masks = C.real_node_masks(perm, 2)
  np.testing.assert_array_equal(masks[0], [1, 1, 1, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(masks[1], [1, 1, 1, 0])
  np.testing.assert_array_equal(masks[2], [1, 1])


def _check_levels(a, graphs, perm, levels):
  n = a.shape[0]
  n_top = graphs[-1].shape[0]
  assert len(graphs) == levels + 1
  assert [g.shape[0] for g in graphs] == [n_top * 2 ** (levels - l) for l in range(levels + 1)]
  np.testing.assert_array_equal(np.sort(perm[perm >= 0]), np.arange(n))  # every original node once
  masks = C.real_node_masks(perm, levels)
  # level 0 is the input graph, permuted
  real = perm >= 0
  w0 = graphs[0].toarray()
  np.testing.assert_allclose(w0[np.ix_(real, real)], a[np.ix_(perm[real], perm[real])])
  for l in range(levels + 1):
    w = graphs[l].toarray()
    m = masks[l]
    assert np.all(w[~m] == 0) and np.all(w[:, ~m] == 0), f"level {l}: fake nodes must be isolated"
    np.testing.assert_allclose(w, w.T)
    if l == levels:
      continue
    pairs = m.reshape(-1, 2)
    parent_real = masks[l + 1]
    assert np.all(pairs.any(1) == parent_real), "a real coarse node has 1-2 real children, a fake one none"
    # matched children are neighbours
    both = np.nonzero(pairs.all(1))[0]
    assert np.all(w[2 * both, 2 * both + 1] > 0)
    # greedy maximality: two singletons are never adjacent
    single = np.nonzero(pairs.sum(1) == 1)[0]
    s_nodes = np.where(pairs[single, 0], 2 * single, 2 * single + 1)
    assert np.all(w[np.ix_(s_nodes, s_nodes)][~np.eye(len(s_nodes), dtype=bool)] == 0)
    # coarse adjacency = P^T W P with P[k, k // 2] = 1
    p = np.zeros((w.shape[0], w.shape[0] // 2))
    p[np.arange(w.shape[0]), np.arange(w.shape[0]) // 2] = 1
    np.testing.assert_allclose(graphs[l + 1].toarray(), p.T @ w @ p, rtol=1e-12)


@pytest.mark.parametrize("seed,levels", [(0, 1), (1, 3), (2, 4)])
def test_random_graph_levels_are_valid(seed, levels):
  a = _random_graph(seed)
  graphs, perm = C.coarsen(a, levels)
  _check_levels(a, graphs, perm, levels)
  # sparse input and a random visit order give valid levels too
  graphs_s, perm_s = C.coarsen(sp.csr_matrix(a), levels)
  np.testing.assert_array_equal(perm_s, perm)
  _check_levels(a, *C.coarsen(sp.coo_matrix(a), levels, rng=seed), levels)


def test_pooling_after_perm_equals_pooling_the_clusters():
  a = _random_graph(5, n=30, p=0.12)
  levels = 3
  graphs, perm = C.coarsen(a, levels)
  # independent replay of the matchings, clusters followed by a numpy loop
  w, sizes, member = a.copy(), np.ones(30), np.arange(30)
  for _ in range(levels):
    parent, k = C.graclus_match(w, sizes)
    p = np.zeros((len(parent), k))
    p[np.arange(len(parent)), parent] = 1
    w, sizes, member = p.T @ w @ p, p.T @ sizes, parent[member]
  x = np.random.default_rng(0).normal(size=(2, 30, 3))
  n_top = w.shape[0]
  want_max = np.stack([np.max(x[:, member == c], axis=1) for c in range(n_top)], axis=1)
  want_mean = np.stack([np.mean(x[:, member == c], axis=1) for c in range(n_top)], axis=1)
  xp = C.permute_signal(x, perm, fill=-np.inf)
  assert xp.shape == (2, len(perm), 3)
  got = xp.reshape(2, n_top, 2 ** levels, 3).max(axis=2)
  np.testing.assert_allclose(got, want_max)
  x0 = C.permute_signal(x, perm)  # fill 0
  m = C.real_node_masks(perm, levels)[0].reshape(n_top, 2 ** levels)[None, :, :, None]
  got_mean = (x0.reshape(2, n_top, 2 ** levels, 3) * m).sum(2) / m.sum(2)
  np.testing.assert_allclose(got_mean, want_mean)
  # signals along another axis
  np.testing.assert_array_equal(C.permute_signal(x[:, :, 0], perm, axis=-1), x0[:, :, 0])


def test_grid_adjacency():
  a = C.grid_adjacency(4, 5).toarray()
  assert a.shape == (20, 20)
  np.testing.assert_allclose(a, a.T)
  np.testing.assert_allclose(a[6].sum(), 4 * np.exp(-0.5) + 4 * np.exp(-1))  # interior pixel (1, 1)
  assert (a[0] > 0).sum() == 3  # corner
  assert a[0, 1] == np.exp(-0.5) and a[0, 6] == np.exp(-1) and a[0, 2] == 0


@pytest.mark.parametrize("adj,match", [
    (np.triu(np.ones((4, 4)), 1), "not symmetric"),
    (-np.ones((3, 3)), "negative"),
    (np.ones((3, 4)), "square"),
    (np.ones(3), "square"),
])
def test_bad_adjacency_raises(adj, match):
  with pytest.raises(ValueError, match=match):
    C.coarsen(adj, 1)


def test_bad_perm_and_levels_raise():
  with pytest.raises(ValueError, match="levels=-1"):
    C.coarsen(_ring(4), -1)
  _, perm = C.coarsen(_ring(5), 2)
  with pytest.raises(ValueError, match="does not order the 6 nodes"):
    C.permute_signal(np.zeros((6, 1)), perm)
  with pytest.raises(ValueError, match="does not order the 4 nodes"):
    C.permute_signal(np.zeros((4, 1)), perm)
  with pytest.raises(ValueError, match="does not order"):
    C.permute_signal(np.zeros((5, 1)), perm.astype(np.float32))
