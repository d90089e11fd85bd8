"""GLMNet: Graph Learning-Matching Network (Jiang, Wang, Tang, Luo 2019; seed 001 Q6).

Three parts (the paper's three contributions, §3-§4), written from its description:

1. **Graph learning** (``GraphLearning``): one learned, dense adjacency per graph from its node attributes, with
   parameters shared by both graphs. ``'concat'`` (default, the paper's attention-style form):
   ``A_ij = softmax_j ReLU(a^T [W x_i || W x_j])`` over the valid ``j != i``; ``'absdiff'`` (Jiang et al.'s GLCN,
   CVPR 2019, form): ``A_ij = softmax_j ReLU(a^T |W x_i - W x_j|)``. Our choice: the row-stochastic ``A`` is
   symmetrised, ``(A + A^T) / 2``, so that the (normalised) Laplacian of the next step is symmetric.
2. **Laplacian-sharpening graph convolution** (``SharpeningConv``), the counterpart of Kipf & Welling's smoothing
   ``A_s = D~^-1/2 (A + I) D~^-1/2`` (``D~ = diag((A + I) 1)``): ``H' = ((1 + gamma) I - gamma A_s) H W + b``. With
   ``gamma = 1`` this is ``2I - A_s = I + L~`` (L~ the renormalised Laplacian): the spectrum ``[1, 3)`` amplifies the
   high graph frequencies where smoothing (``SmoothingConv``: ``H' = A_s H W + b``, spectrum ``(-1, 1]``) damps
   them, i.e. each embedding moves away from its neighbours' mean instead of towards it (Park et al. 2019's
   Laplacian sharpening ``(1 + gamma) x_i - gamma sum_j A_ij / D_ii x_j``, symmetric renormalised form).
3. **Matching**: a bilinear cross-graph affinity ``M = exp(h1 Lambda h2^T / tau)`` with a learned positive
   semi-definite ``Lambda = K K^T`` (``K`` initialised to I; ``h`` L2-normalised) (``CrossAffinity``), then Sinkhorn
   normalisation to a doubly-stochastic matrix in the log domain, a fixed number of iterations, masked for padding
   (``log_sinkhorn`` / ``Sinkhorn``).

``GLMNet(num_layers, hidden, graph='learned'|'knn'|'delaunay'|'none', conv='sharpen'|'smooth')(batch, train=...)`` returns
``log S`` [B, n1, n2], ``S`` doubly stochastic on the valid block (exactly: rows sum to ``min(1, n2/n1)`` and columns
to ``min(1, n1/n2)``, i.e. 1 for equal sizes; padded entries are ``NEG``). The learned (or given) adjacencies are
sown into the ``intermediates`` collection (``adj1``, ``adj2``). The losses (permutation cross-entropy, the
one-to-one constraint term) and Hungarian evaluation are in ``research.train.matching``.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG = -1e9  # log-value of masked entries (finite: no inf - inf in gradients)
GRAPHS = ("learned", "knn", "delaunay", "none")  # none: no edges (control: the convolutions become linear maps)
CONVS = ("sharpen", "smooth")
GRAPH_LEARNING = ("concat", "absdiff")


def _pair_mask(mask1: jax.Array, mask2: jax.Array) -> jax.Array:
  """[B, n1], [B, n2] -> bool [B, n1, n2]."""
  return (mask1[..., :, None] > 0) & (mask2[..., None, :] > 0)


def log_sinkhorn(log_alpha: jax.Array, mask1: jax.Array, mask2: jax.Array, num_iters: int) -> jax.Array:
  """Masked log-domain Sinkhorn normalisation (GLMNet §3.3; Adams & Zemel 2011), fixed iterations.

  log_alpha: [..., n1, n2] log-affinities; mask1: [..., n1], mask2: [..., n2] (1 = real node). Each iteration
  normalises rows to ``log r = log min(1, m/n)`` then columns to ``log c = log min(1, n/m)`` (``n, m`` the valid
  counts), on the valid block only. Returns log S [..., n1, n2] with ``NEG`` outside the valid block.
  """
  if log_alpha.ndim < 2 or mask1.shape != log_alpha.shape[:-1] or mask2.shape != log_alpha.shape[:-2] + \
      log_alpha.shape[-1:]:
    raise ValueError(f"log_sinkhorn: log_alpha [..., n1, n2] = {log_alpha.shape} needs mask1 [..., n1] and mask2 "
                     f"[..., n2], got {mask1.shape} and {mask2.shape}; pass the node masks of both graphs")
  if num_iters < 1:
    raise ValueError(f"log_sinkhorn: num_iters must be >= 1, got {num_iters}")
  valid = _pair_mask(mask1, mask2)
  n = jnp.sum(mask1 > 0, -1).astype(log_alpha.dtype)[..., None, None]
  m = jnp.sum(mask2 > 0, -1).astype(log_alpha.dtype)[..., None, None]
  log_r = jnp.log(jnp.minimum(1.0, m / jnp.maximum(n, 1)))
  log_c = jnp.log(jnp.minimum(1.0, n / jnp.maximum(m, 1)))
  x = jnp.where(valid, log_alpha, NEG)

  def body(_, x):
    x = jnp.where(valid, x - jax.nn.logsumexp(x, axis=-1, keepdims=True) + log_r, NEG)
    return jnp.where(valid, x - jax.nn.logsumexp(x, axis=-2, keepdims=True) + log_c, NEG)
  return jax.lax.fori_loop(0, num_iters, body, x)


def smoothing_operator(adj: jax.Array, mask: jax.Array) -> jax.Array:
  """Kipf & Welling's renormalised propagation ``D~^-1/2 (A + I) D~^-1/2`` on the valid nodes.

  adj: [..., n, n] non-negative (symmetric) weights; mask: [..., n]. Returns [..., n, n], zero on padding.
  """
  valid = _pair_mask(mask, mask)
  eye = jnp.eye(adj.shape[-1], dtype=adj.dtype) * (mask[..., :, None] > 0)
  a = jnp.where(valid, adj, 0.0) + eye
  deg = a.sum(-1)
  inv = jnp.where(deg > 0, jax.lax.rsqrt(jnp.maximum(deg, 1e-12)), 0.0)
  return inv[..., :, None] * a * inv[..., None, :]


def sharpening_operator(adj: jax.Array, mask: jax.Array, gamma: float = 1.0) -> jax.Array:
  """Laplacian sharpening ``(1 + gamma) I - gamma D~^-1/2 (A + I) D~^-1/2`` (GLMNet §3.2) on the valid nodes.

  adj: [..., n, n]; mask: [..., n]. Returns [..., n, n] (``2I - A_s = I + L~`` for gamma = 1), zero on padding.
  """
  eye = jnp.eye(adj.shape[-1], dtype=adj.dtype) * (mask[..., :, None] > 0)
  return (1.0 + gamma) * eye - gamma * smoothing_operator(adj, mask)


class GraphLearning(nn.Module):
  """Learned adjacency of one graph (GLMNet §3.1); share the module between the two graphs.

  x: [B, n, F], mask: [B, n] -> A [B, n, n], symmetric, non-negative, zero diagonal and padding.
  """
  features: int = 32
  variant: str = "concat"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    if self.variant not in GRAPH_LEARNING:
      raise ValueError(f"GraphLearning.variant={self.variant!r}; choose one of {GRAPH_LEARNING}")
    h = nn.Dense(self.features, use_bias=False, name="W")(x)
    if self.variant == "concat":  # a^T [h_i || h_j] = a1^T h_i + a2^T h_j
      e = nn.Dense(1, use_bias=False, name="a_i")(h) + jnp.swapaxes(nn.Dense(1, use_bias=False, name="a_j")(h), -1, -2)
    else:
      e = nn.Dense(1, use_bias=False, name="a")(jnp.abs(h[..., :, None, :] - h[..., None, :, :]))[..., 0]
    e = nn.relu(e)
    n = x.shape[-2]
    allowed = _pair_mask(mask, mask) & ~jnp.eye(n, dtype=bool)
    e = jnp.where(allowed, e, NEG)
    a = jnp.where(allowed, jax.nn.softmax(e, axis=-1), 0.0)
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


class SharpeningConv(nn.Module):
  """``H' = ((1 + gamma) I - gamma A_s) H W + b`` (GLMNet §3.2). h: [B, n, F], adj: [B, n, n], mask: [B, n]
  -> [B, n, features] (zero rows for padding)."""
  features: int
  gamma: float = 1.0

  @nn.compact
  def __call__(self, h: jax.Array, adj: jax.Array, mask: jax.Array) -> jax.Array:
    hw = nn.Dense(self.features, use_bias=False)(h)
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return (sharpening_operator(adj, mask, self.gamma) @ hw + b) * mask[..., None]


class SmoothingConv(nn.Module):
  """Kipf & Welling's ``H' = A_s H W + b`` (the ablation of GLMNet §5). h: [B, n, F], adj: [B, n, n],
  mask: [B, n] -> [B, n, features]."""
  features: int

  @nn.compact
  def __call__(self, h: jax.Array, adj: jax.Array, mask: jax.Array) -> jax.Array:
    hw = nn.Dense(self.features, use_bias=False)(h)
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return (smoothing_operator(adj, mask) @ hw + b) * mask[..., None]


class CrossAffinity(nn.Module):
  """Bilinear node affinity ``log M = h1 K K^T h2^T / tau`` with ``h`` L2-normalised (GLMNet §3.3).

  h1: [B, n1, d], h2: [B, n2, d] -> [B, n1, n2] log-affinities.
  """
  tau: float = 0.1

  @nn.compact
  def __call__(self, h1: jax.Array, h2: jax.Array) -> jax.Array:
    d = h1.shape[-1]
    k = self.param("K", lambda _, s: jnp.eye(*s), (d, d))
    unit = lambda h: h * jax.lax.rsqrt(jnp.maximum(jnp.sum(h * h, -1, keepdims=True), 1e-12))  # noqa: E731
    u1, u2 = unit(h1) @ k, unit(h2) @ k
    return jnp.einsum("...id,...jd->...ij", u1, u2) / self.tau


class Sinkhorn(nn.Module):
  """``log_sinkhorn`` as a (parameter-free) layer. log_alpha: [B, n1, n2], mask1: [B, n1], mask2: [B, n2]
  -> log S [B, n1, n2] (GLMNet §3.3)."""
  num_iters: int = 20

  def __call__(self, log_alpha: jax.Array, mask1: jax.Array, mask2: jax.Array) -> jax.Array:
    return log_sinkhorn(log_alpha, mask1, mask2, self.num_iters)


class GLMNet(nn.Module):
  """Graph learning + ``num_layers`` Siamese graph convolutions (ReLU between) + affinity + Sinkhorn.

  batch: ``x1`` [B, n1, F], ``x2`` [B, n2, F], ``mask1`` [B, n1], ``mask2`` [B, n2] and, for a fixed graph,
  ``adj1`` [B, n1, n1], ``adj2`` [B, n2, n2]. Returns log S [B, n1, n2] (see the module docstring).
  """
  num_layers: int = 2
  hidden: int = 64
  graph: str = "learned"
  conv: str = "sharpen"
  gamma: float = 1.0
  graph_features: int = 32
  graph_learning: str = "concat"
  tau: float = 0.1
  sinkhorn_iters: int = 20

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
    del train  # no dropout / BatchNorm
    if self.graph not in GRAPHS:
      raise ValueError(f"GLMNet.graph={self.graph!r}; choose one of {GRAPHS}")
    if self.conv not in CONVS:
      raise ValueError(f"GLMNet.conv={self.conv!r}; choose one of {CONVS}")
    if self.num_layers < 1 or self.hidden < 1:
      raise ValueError(f"GLMNet needs num_layers >= 1 and hidden >= 1, got {self.num_layers}, {self.hidden}")
    fixed = self.graph in ("knn", "delaunay")
    missing = [k for k in ("x1", "x2", "mask1", "mask2") + (("adj1", "adj2") if fixed else ()) if k not in batch]
    if missing:
      raise ValueError(f"GLMNet(graph={self.graph!r}): batch lacks {missing} (has {sorted(batch)}); build it with "
                       f"research.data.keypoint_pairs (graph='{self.graph if fixed else 'none'}')")
    x1, x2 = batch["x1"].astype(jnp.float32), batch["x2"].astype(jnp.float32)
    m1, m2 = batch["mask1"].astype(jnp.float32), batch["mask2"].astype(jnp.float32)
    if x1.ndim != 3 or x2.ndim != 3 or x1.shape[-1] != x2.shape[-1] or m1.shape != x1.shape[:2] \
        or m2.shape != x2.shape[:2]:
      raise ValueError(f"GLMNet: x1 [B, n1, F] = {x1.shape}, x2 [B, n2, F] = {x2.shape}, mask1 [B, n1] = {m1.shape},"
                       f" mask2 [B, n2] = {m2.shape} do not agree; pad both graphs with their masks")
    if self.graph == "learned":
      learner = GraphLearning(self.graph_features, self.graph_learning, name="graph_learning")
      a1, a2 = learner(x1, m1), learner(x2, m2)
    elif self.graph == "none":
      a1 = jnp.zeros(x1.shape[:2] + x1.shape[1:2], jnp.float32)
      a2 = jnp.zeros(x2.shape[:2] + x2.shape[1:2], jnp.float32)
    else:
      a1, a2 = batch["adj1"].astype(jnp.float32), batch["adj2"].astype(jnp.float32)
    self.sow("intermediates", "adj1", a1)
    self.sow("intermediates", "adj2", a2)
    h1, h2 = x1, x2
    for i in range(self.num_layers):
      layer = (SharpeningConv(self.hidden, self.gamma, name=f"conv{i}") if self.conv == "sharpen"
               else SmoothingConv(self.hidden, name=f"conv{i}"))
      h1, h2 = layer(h1, a1, m1), layer(h2, a2, m2)
      if i < self.num_layers - 1:
        h1, h2 = nn.relu(h1), nn.relu(h2)
    log_alpha = CrossAffinity(self.tau, name="affinity")(h1, h2)
    return Sinkhorn(self.sinkhorn_iters, name="sinkhorn")(log_alpha, m1, m2)
