"""Graclus-style multilevel graph coarsening and the binary-tree node ordering that turns graph pooling into 1-D
pooling (Defferrard et al., NeurIPS 2016, §2.3; host-side numpy/scipy, run once per fixed graph).

Greedy normalized-cut matching, one level: visit the unmarked nodes (smallest cluster first, ties in index order
or in a random order when ``rng`` is given), mark the node and match it with the unmarked neighbour ``j``
maximising ``W_ij (1/d_i + 1/d_j)``; a node without unmarked neighbours stays a singleton. The coarse graph is
``W' = P^T W P`` with ``P [n, n']`` the 0/1 child -> parent assignment (intra-cluster weight becomes a self loop,
as in the paper's code, so degrees are preserved from level to level).

``coarsen`` then orders every level so that the children of coarse node ``i`` sit at indices ``2i, 2i+1``: a
singleton gets a *fake* partner, and a fake coarse node gets two fake children. Fake nodes are isolated (no
edges). After ``permute_signal`` a pooling of size ``2**p`` is a reshape ``[..., N/2**p, 2**p, F]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp


def _as_csr(adjacency, name: str = "adjacency") -> sp.csr_matrix:
  if sp.issparse(adjacency):
    w = sp.csr_matrix(adjacency, dtype=np.float64)
  else:
    a = np.asarray(adjacency, np.float64)
    if a.ndim != 2:
      raise ValueError(f"{name} must be a square [N, N] matrix (dense or scipy.sparse), got shape {a.shape}")
    w = sp.csr_matrix(a)
  if w.shape[0] != w.shape[1]:
    raise ValueError(f"{name} must be a square [N, N] matrix, got shape {w.shape}")
  w.eliminate_zeros()
  if w.nnz and w.data.min() < 0:
    raise ValueError(f"{name} has negative weights (min {w.data.min()}); Graclus needs nonnegative similarities")
  asym = abs(w - w.T)
  if asym.nnz and asym.max() > 1e-8 * max(1.0, abs(w).max()):
    raise ValueError(f"{name} of shape {w.shape} is not symmetric (max |W - W^T| = {asym.max():.3g}); coarsening "
                     "needs an undirected graph: pass (W + W.T) / 2")
  w.sort_indices()
  return w


def graclus_match(adjacency, sizes: np.ndarray | None = None, *, rng: np.random.Generator | int | None = None
                  ) -> tuple[np.ndarray, int]:
  """One level of greedy normalized-cut matching. Returns ``(parent [n] int64, n_coarse)``: node ``i`` belongs to
  coarse node ``parent[i]``; coarse ids are given in visit order. ``sizes [n]`` (default 1) orders the visit
  (smallest cluster first); ``rng`` shuffles ties (the paper visits level 0 in random order)."""
  w = _as_csr(adjacency)
  n = w.shape[0]
  sizes = np.ones(n) if sizes is None else np.asarray(sizes, np.float64)
  if sizes.shape != (n,):
    raise ValueError(f"sizes must have shape [n] = ({n},), got {sizes.shape}")
  if rng is None:
    order = np.argsort(sizes, kind="stable")
  else:
    shuffle = np.random.default_rng(rng).permutation(n)
    order = shuffle[np.argsort(sizes[shuffle], kind="stable")]
  deg = np.asarray(w.sum(axis=1)).ravel()
  inv_deg = np.where(deg > 0, 1 / np.where(deg > 0, deg, 1), 0.0)
  marked = np.zeros(n, bool)
  parent = np.full(n, -1, np.int64)
  cid = 0
  for i in order:
    if marked[i]:
      continue
    marked[i] = True
    lo, hi = w.indptr[i], w.indptr[i + 1]
    nbrs, wij = w.indices[lo:hi], w.data[lo:hi]
    ok = (nbrs != i) & ~marked[nbrs]
    if ok.any():
      cand = nbrs[ok]
      j = cand[np.argmax(wij[ok] * (inv_deg[i] + inv_deg[cand]))]
      marked[j] = True
      parent[j] = cid
    parent[i] = cid
    cid += 1
  return parent, cid


def _assignment(parent: np.ndarray, n_coarse: int) -> sp.csr_matrix:
  n = parent.shape[0]
  return sp.csr_matrix((np.ones(n), (np.arange(n), parent)), shape=(n, n_coarse))


def _tree_orders(parents: Sequence[np.ndarray], sizes: Sequence[int]) -> list[np.ndarray]:
  """Per level, the node at each position (fake nodes numbered from the level's real size upwards)."""
  levels = len(parents)
  orders = [None] * (levels + 1)
  orders[levels] = np.arange(sizes[levels])
  for lvl in range(levels - 1, -1, -1):
    n = sizes[lvl]
    children: list[list[int]] = [[] for _ in range(sizes[lvl + 1])]
    for i, p in enumerate(parents[lvl]):
      children[p].append(i)
    fake = n
    out = []
    for c in orders[lvl + 1]:
      ch = list(children[c]) if c < sizes[lvl + 1] else []
      while len(ch) < 2:
        ch.append(fake)
        fake += 1
      out.extend(ch)
    orders[lvl] = np.asarray(out, np.int64)
  return orders


def _permute_adjacency(w: sp.csr_matrix, order: np.ndarray) -> sp.csr_matrix:
  n, big = w.shape[0], order.shape[0]
  pos = np.empty(n, np.int64)
  real = order < n
  pos[order[real]] = np.nonzero(real)[0]
  coo = w.tocoo()
  out = sp.csr_matrix((coo.data, (pos[coo.row], pos[coo.col])), shape=(big, big))
  out.sort_indices()
  return out


def coarsen(adjacency, levels: int, *, rng: np.random.Generator | int | None = None
            ) -> tuple[list[sp.csr_matrix], np.ndarray]:
  """Coarsens ``adjacency [n, n]`` (symmetric, nonnegative; dense or scipy.sparse) ``levels`` times.

  Returns ``(graphs, perm)``: ``graphs[l]`` is level ``l``'s adjacency (csr, ``graphs[0]`` the finest) in the
  binary-tree order, of size ``N_l = n_levels * 2**(levels - l)`` with isolated fake nodes; the children of node
  ``i`` of level ``l+1`` are nodes ``2i, 2i+1`` of level ``l`` and ``graphs[l+1] = P^T graphs[l] P`` with
  ``P[k, k // 2] = 1``. ``perm [N_0]`` (int64): position ``k`` of the finest level holds original node ``perm[k]``,
  or a fake node when ``perm[k] == -1`` (use ``permute_signal``).
  """
  if int(levels) != levels or levels < 0:
    raise ValueError(f"levels={levels} must be a nonnegative int (the number of coarsenings, log2 of total pooling)")
  w = _as_csr(adjacency)
  graphs, parents, sizes = [w], [], [w.shape[0]]
  cluster = np.ones(w.shape[0])
  for lvl in range(int(levels)):
    parent, n_new = graclus_match(w, cluster, rng=rng if lvl == 0 else None)
    p = _assignment(parent, n_new)
    w = (p.T @ w @ p).tocsr()
    w.eliminate_zeros()
    cluster = p.T @ cluster
    graphs.append(w)
    parents.append(parent)
    sizes.append(n_new)
  orders = _tree_orders(parents, sizes)
  perm = np.where(orders[0] < sizes[0], orders[0], -1)
  return [_permute_adjacency(g, o) for g, o in zip(graphs, orders)], perm


def permute_signal(x: np.ndarray, perm: np.ndarray, *, axis: int = -2, fill: float = 0.0) -> np.ndarray:
  """Reorders the node ``axis`` of ``x`` (default -2: ``[..., n, F]``) by ``perm`` from ``coarsen``: [..., N_0, F].

  Fake nodes get ``fill``. The default 0 is what a network input needs (a finite value; ``GraphPool`` with the
  node masks of ``real_node_masks`` then ignores fake nodes). To max-pool a raw signal directly use
  ``fill=-np.inf`` (``np.inf`` for min): the max over a real node and its fake partner is then the real value.
  """
  x = np.asarray(x)
  axis = axis % x.ndim
  n = x.shape[axis]
  perm = check_perm(perm, n, f"x of shape {x.shape} (node axis {axis})")
  pad_shape = list(x.shape)
  pad_shape[axis] = 1
  dtype = np.result_type(x.dtype, np.float32) if not np.isfinite(fill) else x.dtype
  xx = np.concatenate([x.astype(dtype), np.full(pad_shape, fill, dtype)], axis=axis)
  return np.take(xx, np.where(perm >= 0, perm, n), axis=axis)


def check_perm(perm: np.ndarray, num_nodes: int, what: str = "the signal") -> np.ndarray:
  """Validates ``perm`` from ``coarsen`` against a graph of ``num_nodes`` nodes; returns it as an int64 array."""
  perm = np.asarray(perm)
  real = perm[perm >= 0] if perm.ndim == 1 else perm
  if (perm.ndim != 1 or not np.issubdtype(perm.dtype, np.integer) or perm.min(initial=0) < -1
      or real.size != num_nodes or not np.array_equal(np.sort(real), np.arange(num_nodes))):
    raise ValueError(f"perm (shape {perm.shape}) does not order the {num_nodes} nodes of {what}: it must be the 1-D "
                     "array from coarsen (each original node once, -1 for fake nodes) of the graph the signal lives on")
  return perm.astype(np.int64)


def real_node_masks(perm: np.ndarray, levels: int) -> list[np.ndarray]:
  """Per level ``l = 0..levels``, a bool mask [N_l] of real (not fake) nodes in the binary-tree order."""
  m = np.asarray(perm) >= 0
  out = [m]
  for _ in range(levels):
    if m.shape[0] % 2:
      raise ValueError(f"perm of length {len(perm)} does not support {levels} levels of size-2 pooling")
    m = m.reshape(-1, 2).any(axis=1)
    out.append(m)
  return out


def grid_adjacency(rows: int, cols: int | None = None) -> sp.csr_matrix:
  """8-neighbour (king-move) graph of a ``rows x cols`` pixel grid with Gaussian weights ``exp(-d^2 / sigma^2)``,
  ``sigma^2 = 2`` pixel^2 (axial 0.61, diagonal 0.37), in row-major node order: [rows*cols, rows*cols].

  A stand-in for the paper's 8-NN grid graph of MNIST (Defferrard et al. §5.1), which also links border pixels to
  pixels two steps away."""
  cols = rows if cols is None else cols
  if rows < 1 or cols < 1:
    raise ValueError(f"grid_adjacency needs rows, cols >= 1, got {rows} x {cols}")
  idx = np.arange(rows * cols).reshape(rows, cols)
  r_list, c_list, w_list = [], [], []
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      if dy == dx == 0:
        continue
      src = idx[max(0, -dy):rows - max(0, dy), max(0, -dx):cols - max(0, dx)]
      dst = idx[max(0, dy):rows + min(0, dy), max(0, dx):cols + min(0, dx)]
      r_list.append(dst.ravel())
      c_list.append(src.ravel())
      w_list.append(np.full(src.size, np.exp(-(dy * dy + dx * dx) / 2.0)))
  n = rows * cols
  return sp.csr_matrix((np.concatenate(w_list), (np.concatenate(r_list), np.concatenate(c_list))), shape=(n, n))
