r"""LINE: large-scale information network embedding (Tang et al., WWW 2015, §4.1 objectives, §4.2 optimisation).

Two models of a weighted graph ``w_ij`` (``d_i = sum_k w_ik``, ``W = sum_ij w_ij``):

* **first order** (undirected edges): ``p1(v_i, v_j) = sigma(u_i . u_j)`` with one vector ``u`` per vertex (the
  ``vertex`` table); ``O1 = -sum_(i,j) w_ij log p1(v_i, v_j)``.
* **second order**: every vertex also has a context vector ``u'`` (the ``context`` table) and
  ``p2(v_j | v_i) = exp(u'_j . u_i) / sum_k exp(u'_k . u_i)``; ``O2 = -sum_(i,j) w_ij log p2(v_j | v_i)``.

The KL form (§4.1.2, eq. 5). With the empirical ``p^(v_j | v_i) = w_ij / d_i`` and weights ``lambda_i = d_i``,

  ``O = sum_i lambda_i KL(p^(.|v_i) || p2(.|v_i))
      = sum_i d_i sum_j (w_ij/d_i) log(w_ij/d_i) - sum_i d_i sum_j (w_ij/d_i) log p2(v_j|v_i)
      = const - sum_(i,j) w_ij log p2(v_j|v_i) = O2 + const``,

the constant being ``-sum_i d_i H(p^(.|v_i))``, independent of the embeddings (same gradient). For first order,
``W KL(p^1 || p1)`` with ``p^1(i,j) = w_ij / W`` reduces to ``O1`` the same way.

Negative sampling (eq. 7) replaces ``log p2(v_j|v_i)`` by
``log sigma(u'_j . u_i) + sum_{k=1..K} E_{v_n ~ P_n} log sigma(-u'_n . u_i)`` with ``P_n(v) ∝ d_v^{3/4}``
(first order: ``u`` instead of ``u'``). Edge sampling (§4.2.2): ``grad O = sum_(i,j) w_ij grad l_ij
= W E_{(i,j) ~ w/W} grad l_ij``, so edges drawn in proportion to their weight (alias table,
``research.ops.alias``) give unweighted per-edge gradients that are an unbiased estimate of ``grad O / W``.

``LINE`` computes the per-edge negative-sampling loss of a batch ``(source [B], target [B], negatives [B, K])``;
initialisation follows the authors' reference code: ``vertex ~ U(-0.5, 0.5) / dim``, ``context = 0``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

ORDERS = ("first", "second")


def vertex_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
  """``U(-0.5, 0.5) / dim`` (the reference implementation's ``InitVector``); shape ``[N, dim]``."""
  return (jax.random.uniform(key, shape, dtype) - 0.5) / shape[-1]


def negative_sampling_loss(pos_logits: jax.Array, neg_logits: jax.Array) -> jax.Array:
  """Per-edge loss ``-log sigma(pos) - sum_k log sigma(-neg_k)`` (LINE eq. 7 negated); ``pos [B]``, ``neg [B, K]``
  -> ``[B]``."""
  return -jax.nn.log_sigmoid(pos_logits) - jnp.sum(jax.nn.log_sigmoid(-neg_logits), axis=-1)


class LINE(nn.Module):
  """LINE embedding tables: ``vertex [num_nodes, dim]`` (and ``context [num_nodes, dim]`` for ``order='second'``).

  ``model.apply(variables, source, target, negatives)`` is the per-edge loss ``[B]``; ``method=LINE.logits`` gives
  ``(pos [B], neg [B, K])``; ``method=LINE.embeddings`` the vertex table ``[N, dim]`` (the embedding, §4.1).
  """
  num_nodes: int
  dim: int
  order: str = "first"

  def setup(self):
    if self.order not in ORDERS:
      raise ValueError(f"LINE: order={self.order!r}; choose one of {ORDERS} (concatenate the two for '1st+2nd')")
    if self.num_nodes <= 0 or self.dim <= 0:
      raise ValueError(f"LINE: num_nodes={self.num_nodes} and dim={self.dim} must be positive")
    self.vertex = self.param("vertex", vertex_init, (self.num_nodes, self.dim))
    if self.order == "second":
      self.context = self.param("context", nn.initializers.zeros, (self.num_nodes, self.dim))

  def _targets(self) -> jax.Array:
    return self.vertex if self.order == "first" else self.context

  def logits(self, source: jax.Array, target: jax.Array, negatives: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``source [B]``, ``target [B]``, ``negatives [B, K]`` int -> ``(u_s . t_t [B], u_s . t_n [B, K])`` where
    ``t`` is the vertex table (first order) or the context table (second order)."""
    if source.ndim != 1 or target.shape != source.shape or negatives.ndim != 2 \
        or negatives.shape[0] != source.shape[0]:
      raise ValueError(f"LINE: expected source [B], target [B], negatives [B, K], got {source.shape}, "
                       f"{target.shape}, {negatives.shape}; reshape the batch (one row per sampled edge)")
    u = self.vertex[source]  # [B, D]
    t = self._targets()
    pos = jnp.sum(u * t[target], axis=-1)  # [B]
    neg = jnp.einsum("bd,bkd->bk", u, t[negatives])  # [B, K]
    return pos, neg

  def __call__(self, source: jax.Array, target: jax.Array, negatives: jax.Array) -> jax.Array:
    """Per-edge negative-sampling loss ``[B]`` (eq. 7 negated; first order uses ``u`` for both ends)."""
    return negative_sampling_loss(*self.logits(source, target, negatives))

  def embeddings(self) -> jax.Array:
    """The vertex embeddings ``[num_nodes, dim]`` (not normalised)."""
    return self.vertex
