"""ChebNet on images seen as graph signals: pixels are the nodes of an 8-neighbour grid graph, coarsened by Graclus,
filtered by Chebyshev polynomials of the Laplacian and pooled on the binary tree (Defferrard et al., NeurIPS 2016,
§2.3 and the MNIST experiment of §5.1), behind the image-classification API of ``research.train.classify``.

Registered in the model family ``"graph"`` (not a classification backbone, so ``research.models.names()`` does
not list them, but ``create`` and ``experiments.classify --model=...`` find them):

* ``chebnet_grid`` (``ChebNetGrid``): the paper's GC32-P4-GC64-P4-FC512 on the pixel graph of ``image_size``.
* ``cnn_grid`` (``GridCNN``): the paper's control, "a classical CNN with the same architecture": the same widths,
  pools and FC head with 5x5 convolutions (25 weights per filter pair, as ChebNet's K = 25) and 2x2 max pools.

Both take ``images [B, H, W, C]`` and ``train`` and return float32 logits ``[B, num_classes]``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models.graph.gcn import ChebNetPool
from research.models.registry import register
from research.ops import coarsening
from research.ops import graph as gops

Dtype = Any
COARSEN_SEED = 0  # fixed: the coarsened graph (and so the parameter shapes) must be the same in every process


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
  """``image_size`` (an int or ``(H, W)``) as ``(H, W)``."""
  hw = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
  if len(hw) != 2 or any(int(s) != s or s < 1 for s in hw):
    raise ValueError(f"image_size={image_size!r} must be a positive int or (H, W) of positive ints")
  return int(hw[0]), int(hw[1])


def _levels(pool: Sequence[int]) -> int:
  """Total coarsening levels ``sum(log2(pool))``; each pooling by 2**p is p levels of Graclus."""
  total = 0
  for p in pool:
    p = int(p)
    if p < 1 or p & (p - 1):
      raise ValueError(f"pool={tuple(pool)}: every entry must be a power of two (2**p = p coarsening levels), got {p}")
    total += int(math.log2(p))
  return total


@functools.lru_cache(maxsize=16)
def coarsened_grid(rows: int, cols: int, levels: int, seed: int = COARSEN_SEED) -> tuple[tuple, np.ndarray]:
  """The ``rows x cols`` 8-neighbour pixel graph (``coarsening.grid_adjacency``) coarsened ``levels`` times by
  Graclus with the fixed ``seed``; cached per size (the matching is a host-side Python loop).

  Returns ``(graphs, perm)``: ``graphs[l] = (senders [E_l], receivers [E_l], weights [E_l])`` of level ``l`` in the
  binary-tree order (``N_l = N_0 / 2**l`` nodes, fake nodes isolated) and ``perm [N_0]``: tree position ``k`` holds
  pixel ``perm[k]`` (row-major ``y * cols + x``) or a fake node (``-1``). Arrays are read-only (shared cache).
  """
  adjs, perm = coarsening.coarsen(coarsening.grid_adjacency(rows, cols), levels, rng=seed)
  graphs = tuple(gops.edges_from_adjacency(a) for a in adjs)
  for arr in (perm, *(a for g in graphs for a in g)):
    arr.flags.writeable = False
  return graphs, perm


class ChebNetGrid(nn.Module):
  """ChebNet classifier of images on their pixel grid graph (Defferrard et al. §5.1, MNIST: GC32-P4-GC64-P4-FC512).

  ``__call__(images [B, H, W, C], *, train) -> logits [B, num_classes]`` (float32), ``(H, W) = image_size``.
  Pixels are flattened row-major to nodes (``[B, H*W, C]``, the C channels are the node features) and fed to
  ``ChebNetPool`` on ``coarsened_grid(H, W, sum(log2(pool)))``: per layer ``ChebConv(features[i], K[i]) -> ReLU ->
  GraphPool(pool[i], max)`` (fake nodes ignored), then ``[Dense -> ReLU -> Dropout(dropout)] * len(fc) ->
  Dense``. ``lmax`` is ChebNetPool's convention (2.0: ``L~ = L - I`` of the normalized Laplacian; the true
  largest eigenvalue of the grid graph is slightly below 2). Parameters live under ``chebnet/`` (``conv{i}``,
  ``fc{j}``, ``logits``). Dropout uses the ``'dropout'`` rng.

  ``bn_axis_name`` is accepted for the classification pipeline's uniform call and ignored: there is no BatchNorm.
  """
  num_classes: int = 10
  image_size: int | Sequence[int] = 32
  features: Sequence[int] = (32, 64)
  K: Sequence[int] | int = 25
  pool: Sequence[int] = (4, 4)
  fc: Sequence[int] = (512,)
  dropout: float = 0.5
  lmax: float | None = 2.0
  coarsen_seed: int = COARSEN_SEED
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm; accepted for API uniformity

  def coarsened(self) -> tuple[tuple, np.ndarray]:
    """``(graphs, perm)`` of this model's pixel graph (see ``coarsened_grid``)."""
    h, w = _size(self.image_size)
    return coarsened_grid(h, w, _levels(self.pool), int(self.coarsen_seed))

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    h, w = _size(self.image_size)
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[1:3] != (h, w):
      raise ValueError(f"ChebNetGrid: images must be [B, H, W, C] with (H, W) = image_size = {(h, w)}, got shape "
                       f"{images.shape}; build the model with image_size=(H, W) of your data")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"ChebNetGrid: dropout={self.dropout} must be in [0, 1)")
    graphs, perm = self.coarsened()
    x = images.reshape(images.shape[0], h * w, images.shape[3])  # node y * W + x, as grid_adjacency numbers them
    return ChebNetPool(self.num_classes, graphs=graphs, perm=perm, features=tuple(self.features),
                       K=self.K if isinstance(self.K, int) else tuple(self.K), pool=tuple(self.pool),
                       fc=tuple(self.fc), dropout=self.dropout, lmax=self.lmax, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="chebnet")(x, train=train)


class GridCNN(nn.Module):
  """The classical CNN matched to ``ChebNetGrid`` (Defferrard et al. §5.1's control, C32-P4-C64-P4-FC512):
  ``[Conv(features[i], kernel x kernel, SAME) -> ReLU -> MaxPool(sqrt(pool[i]) x sqrt(pool[i]))] * L -> flatten ->
  [Dense -> ReLU -> Dropout] * len(fc) -> Dense``. A pooling of ``pool[i]`` pixels is a square window, so each entry
  must be a square (4 -> 2x2, 16 -> 4x4).

  ``__call__(images [B, H, W, C], *, train) -> logits [B, num_classes]`` (float32). ``image_size`` is only checked
  (the convolutions work on any size). ``bn_axis_name`` is accepted and ignored: there is no BatchNorm.
  """
  num_classes: int = 10
  image_size: int | Sequence[int] | None = None
  features: Sequence[int] = (32, 64)
  kernel: int = 5
  pool: Sequence[int] = (4, 4)
  fc: Sequence[int] = (512,)
  dropout: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm; accepted for API uniformity

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or (self.image_size is not None and images.shape[1:3] != _size(self.image_size)):
      raise ValueError(f"GridCNN: images must be [B, H, W, C] (H, W = image_size={self.image_size}), got shape "
                       f"{images.shape}")
    if len(self.features) != len(self.pool):
      raise ValueError(f"GridCNN: features {tuple(self.features)} and pool {tuple(self.pool)} must have the same "
                       "length (one entry per conv layer)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)
    for i, (f, p) in enumerate(zip(self.features, self.pool)):
      s = math.isqrt(int(p))
      if s * s != int(p) or s < 1:
        raise ValueError(f"GridCNN: pool={tuple(self.pool)}; each entry must be a square number of pixels (4 = 2x2)")
      x = nn.relu(nn.Conv(int(f), (self.kernel, self.kernel), padding="SAME", name=f"conv{i}", **kw)(x))
      if s > 1:
        x = nn.max_pool(x, (s, s), strides=(s, s))
    x = x.reshape(x.shape[0], -1)
    for j, h in enumerate(self.fc):
      x = nn.relu(nn.Dense(int(h), name=f"fc{j}", **kw)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits", **kw)(x).astype(jnp.float32)


@register("chebnet_grid", family="graph")
def chebnet_grid(num_classes: int = 10, image_size: int | Sequence[int] = 32, **kw) -> ChebNetGrid:
  """``ChebNetGrid`` (kwargs: ``features``, ``K``, ``pool``, ``fc``, ``dropout``, ``lmax``, ``dtype``,
  ``bn_axis_name`` (ignored)). Coarsens the pixel graph now (cached per size) so bad sizes fail at construction."""
  model = ChebNetGrid(num_classes=num_classes, image_size=image_size, **kw)
  model.coarsened()
  return model


@register("cnn_grid", family="graph")
def cnn_grid(num_classes: int = 10, **kw) -> GridCNN:
  """``GridCNN``: the classical CNN with ChebNetGrid's architecture (kwargs: ``features``, ``kernel``, ``pool``,
  ``fc``, ``dropout``, ``image_size``, ``dtype``, ``bn_axis_name`` (ignored))."""
  return GridCNN(num_classes=num_classes, **kw)
