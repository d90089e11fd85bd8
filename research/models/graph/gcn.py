"""Spectral graph networks: Kipf & Welling's node classifier (ICLR 2017, §3.1 eq. 9) and ChebNet's graph-signal
classifier with coarsening and pooling (Defferrard et al., NeurIPS 2016, §2.3 and §5.1).

Registered in the model family ``"graph"``: ``gcn``, ``chebnet``, ``graph_mlp`` (``NodeClassifier`` with
``conv='gcn' | 'cheb' | 'mlp'``) and ``chebnet_pool`` (``ChebNetPool``; default graph: a coarsened 28x28 grid).
Both return float32 logits.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.graph import ChebConv, GCNConv, GraphPool, Linear, fixed_graph
from research.models.registry import register
from research.ops import coarsening
from research.ops import graph as gops

Dtype = Any
CONVS = ("gcn", "cheb", "mlp")


class NodeClassifier(nn.Module):
  """``num_layers`` graph layers with ReLU between them and dropout before each (Kipf & Welling §3.1:
  ``Z = softmax(A^ ReLU(A^ X W0) W1)``, dropout on the input of both layers).

  ``__call__(g, *, train) -> logits [N, num_classes]`` (float32) from ``g.nodes [N, F]``. ``conv``: ``'gcn'``
  (renormalised propagation), ``'cheb'`` (Chebyshev filter with ``K`` terms, ``lmax`` convention of
  ``research.ops.graph``) or ``'mlp'`` (ignores the edges: the paper's MLP baseline). Logits of padding nodes
  are not meaningful: mask them in the loss. ``features`` (a ``research.ops.graph.SparseFeatures``) replaces
  ``g.nodes`` with sparse input features; dropout then drops only their stored entries (the paper's sparse dropout).
  Dropout uses the ``'dropout'`` rng. Layers are named
  ``layer0..layer{L-1}`` (L2 on the first layer only, as in the paper, selects ``layer0``).
  """
  num_classes: int
  conv: str = "gcn"
  hidden: int = 16
  num_layers: int = 2
  K: int = 2
  lmax: float | None = 2.0
  dropout: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, g: gops.GraphBatch, *, train: bool, features: gops.SparseFeatures | None = None) -> jax.Array:
    if self.conv not in CONVS:
      raise ValueError(f"NodeClassifier: conv={self.conv!r}; choose one of {CONVS}")
    if self.num_layers < 1:
      raise ValueError(f"NodeClassifier: num_layers={self.num_layers} must be >= 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"NodeClassifier: dropout={self.dropout} must be in [0, 1)")
    # features: sparse node features used instead of g.nodes (Kipf & Welling's sparse input with sparse dropout)
    x = jnp.asarray(g.nodes, self.dtype) if features is None else features
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      feats = self.num_classes if last else self.hidden
      if isinstance(x, gops.SparseFeatures):
        if train and self.dropout > 0:
          x = gops.sparse_dropout(self.make_rng("dropout"), x, self.dropout)
      else:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      if self.conv == "gcn":
        x = GCNConv(feats, name=f"layer{i}", **kw)(g, x)
      elif self.conv == "cheb":
        x = ChebConv(feats, self.K, lmax=self.lmax, name=f"layer{i}", **kw)(g, x)
      else:
        x = Linear(feats, kernel_init=nn.initializers.glorot_uniform(), name=f"layer{i}", **kw)(x)
      if not last:
        x = nn.relu(x)
    return x.astype(jnp.float32)


def _log2(p: int, name: str) -> int:
  if p < 1 or p & (p - 1):
    raise ValueError(f"ChebNetPool: {name}={p} must be a power of two (each factor 2 is one coarsening level)")
  return int(math.log2(p))


class ChebNetPool(nn.Module):
  """ChebNet graph-signal classifier on ONE fixed graph (Defferrard et al. §5.1, MNIST: GC32-P4-GC64-P4-FC512):
  ``[ChebConv(features[i], K[i]) -> ReLU -> GraphPool(pool[i], max)] * L -> flatten -> [Dense -> ReLU ->
  Dropout] * len(fc) -> Dense(num_classes)``.

  ``graphs``: per coarsening level ``l`` (``l = 0`` finest) the edge lists ``(senders, receivers, weights)`` of the
  binary-tree ordered graph with ``N_0 / 2**l`` nodes (``coarsen`` + ``edges_from_adjacency``; the static helper
  ``ChebNetPool.from_adjacency`` does both). Conv ``i`` runs on level ``sum(log2(pool[:i]))``.
  ``perm`` (optional, from ``coarsen``): then x is given in the ORIGINAL node order, ``[B, n]`` or ``[B, n, F]``;
  the model reorders it, feeds fake nodes 0 and pools over real nodes only. Without ``perm`` x is already in
  tree order with ``N_0`` nodes, all real. ``__call__(x, *, train) -> logits [B, num_classes]`` (float32).
  """
  num_classes: int
  graphs: tuple = ()
  perm: Any = None
  features: Sequence[int] = (32, 64)
  K: Sequence[int] | int = (25, 25)
  pool: Sequence[int] = (4, 4)
  fc: Sequence[int] = (512,)
  dropout: float = 0.5
  lmax: float | None = 2.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def from_adjacency(adjacency, *, num_classes: int, pool: Sequence[int] = (4, 4),
                     rng: np.random.Generator | int | None = None, **kwargs) -> "ChebNetPool":
    """Coarsens ``adjacency [n, n]`` (dense or scipy.sparse, symmetric) ``sum(log2(pool))`` times and builds the
    model; its input is then x [B, n(, F)] in the adjacency's node order."""
    levels = sum(_log2(int(p), "pool") for p in pool)
    adjs, perm = coarsening.coarsen(adjacency, levels, rng=rng)
    graphs = tuple(gops.edges_from_adjacency(a) for a in adjs)
    return ChebNetPool(num_classes=num_classes, graphs=graphs, perm=perm, pool=tuple(pool), **kwargs)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    feats, pools = tuple(self.features), tuple(self.pool)
    ks = (self.K,) * len(feats) if isinstance(self.K, int) else tuple(self.K)
    if not (len(feats) == len(ks) == len(pools)):
      raise ValueError(f"ChebNetPool: features {feats}, K {ks} and pool {pools} must have the same length "
                       "(one entry per graph conv layer)")
    steps = [_log2(int(p), "pool") for p in pools]
    level_of = np.cumsum([0] + steps)  # level of conv i, and the final level
    if len(self.graphs) < level_of[-2] + 1:
      raise ValueError(f"ChebNetPool: {len(self.graphs)} graph levels given, the convs need levels 0..{level_of[-2]};"
                       " pass coarsen(adjacency, levels=sum(log2(pool))) edge lists or use from_adjacency")
    x = jnp.asarray(x)
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f"ChebNetPool: x must be [B, N] or [B, N, F], got shape {x.shape}")
    masks = None
    if self.perm is not None:
      n = x.shape[1]
      perm = coarsening.check_perm(self.perm, n, f"ChebNetPool's input x of shape {x.shape}")
      x = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)
      x = jnp.take(x, np.where(perm >= 0, perm, n), axis=1)  # fake nodes read the zero row
      masks = coarsening.real_node_masks(perm, int(level_of[-1]))
    n0 = x.shape[1]
    if n0 % (1 << int(level_of[-1])):
      raise ValueError(f"ChebNetPool: {n0} nodes cannot be pooled by {math.prod(pools)}; the tree order of coarsen "
                       "pads the graph to a multiple of 2**levels")
    x = x.astype(self.dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, (f, k, p) in enumerate(zip(feats, ks, pools)):
      lvl = int(level_of[i])
      s, r, w = self.graphs[lvl]
      g = fixed_graph(n0 >> lvl, s, r, w)
      x = nn.relu(ChebConv(f, int(k), lmax=self.lmax, name=f"conv{i}", **kw)(g, x))
      x = GraphPool(int(p), "max")(x, None if masks is None else masks[lvl])
    x = x.reshape(x.shape[0], -1)
    for j, h in enumerate(self.fc):
      x = nn.relu(nn.Dense(int(h), name=f"fc{j}", **kw)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits", **kw)(x).astype(jnp.float32)


class GraphClassifier(nn.Module):
  """Whole-graph classification on a batch of small graphs (the batched mode of ``GraphBatch``): ``num_layers`` GCN
  (or ChebNet) layers with ReLU, a per-graph ``readout`` (``mean``/``sum``/``max`` over real nodes,
  ``research.ops.graph.graph_readout``), dropout and a linear classifier. ``__call__(g, *, train) -> [G, C]``
  (float32; rows of padding graphs are not meaningful)."""
  num_classes: int
  conv: str = "gcn"
  hidden: int = 32
  num_layers: int = 2
  K: int = 2
  readout: str = "mean"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, g: gops.GraphBatch, *, train: bool) -> jax.Array:
    if self.conv not in ("gcn", "cheb"):
      raise ValueError(f"GraphClassifier: conv={self.conv!r}; choose 'gcn' or 'cheb'")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(g.nodes, self.dtype)
    for i in range(self.num_layers):
      conv = (GCNConv(self.hidden, name=f"layer{i}", **kw) if self.conv == "gcn"
              else ChebConv(self.hidden, self.K, name=f"layer{i}", **kw))
      x = nn.relu(conv(g, x))
    x = gops.graph_readout(g, x, self.readout)  # [G, hidden]
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits", **kw)(x).astype(jnp.float32)


register("gcn", family="graph")(lambda num_classes=7, **kw: NodeClassifier(num_classes, conv="gcn", **kw))
register("gcn_graph_classifier", family="graph")(lambda num_classes=2, **kw: GraphClassifier(num_classes, **kw))
register("chebnet", family="graph")(lambda num_classes=7, **kw: NodeClassifier(num_classes, conv="cheb", **kw))
register("graph_mlp", family="graph")(lambda num_classes=7, **kw: NodeClassifier(num_classes, conv="mlp", **kw))


@register("chebnet_pool", family="graph")
def chebnet_pool(num_classes: int = 10, adjacency=None, grid: int = 28, **kw) -> ChebNetPool:
  """ChebNetPool on ``adjacency`` (default: the 8-neighbour ``grid x grid`` pixel graph of the paper's MNIST
  experiment), coarsened for ``pool``; input x [B, n] or [B, n, F] in the adjacency's node order."""
  if adjacency is None:
    adjacency = coarsening.grid_adjacency(grid, grid)
  return ChebNetPool.from_adjacency(adjacency, num_classes=num_classes, **kw)
