"""Spectral graph convolutions and graph pooling: GCN (Kipf & Welling, ICLR 2017, eq. 2 and 8), ChebNet
(Defferrard et al., NeurIPS 2016, §2.1-2.3). Message passing lives in ``research.ops.graph`` (our own padded
``GraphBatch`` + ``segment_sum``; no jraph)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.ops import graph as gops

Dtype = Any


def _check_x(layer: str, g: gops.GraphBatch, x):
  """x as an array (or the given ``SparseFeatures``), checked to be [..., N, F] with N = g.num_nodes."""
  if not isinstance(x, gops.SparseFeatures):
    x = jnp.asarray(x)
  if len(x.shape) < 2 or x.shape[-2] != g.num_nodes:
    raise ValueError(f"{layer}: x must be [..., N, F] with N = {g.num_nodes}, got shape {x.shape}")
  return x


class Linear(nn.Module):
  """``x W (+ b)`` for dense x [..., F] or ``SparseFeatures`` [..., N, F] (same parameters as ``nn.Dense``:
  ``kernel [F, features]``, ``bias [features]``)."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array | gops.SparseFeatures) -> jax.Array:
    if not isinstance(x, gops.SparseFeatures):
      return self._dense(x)
    kernel = self.param("kernel", self.kernel_init, (x.num_features, self.features), self.param_dtype)
    y = gops.sparse_matmul(x, kernel.astype(self.dtype))
    return self._bias(y)

  def _dense(self, x):
    x = jnp.asarray(x, self.dtype)
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    return self._bias(jnp.dot(x, kernel.astype(self.dtype)))

  def _bias(self, y):
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
      y = y + b.astype(y.dtype)
    return y


class GCNConv(nn.Module):
  """``D~^-1/2 (A + I) D~^-1/2 X W + b`` (Kipf & Welling eq. 2). x: [..., N, F_in] (dense or ``SparseFeatures``)
  -> [..., N, features].

  ``add_self_loops=False`` uses ``D^-1/2 A D^-1/2``. Glorot-uniform kernel (as in the paper), zero bias. The
  product with X W is done after the dense transform; padding nodes receive only the bias.
  """
  features: int
  use_bias: bool = True
  add_self_loops: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.glorot_uniform()

  @nn.compact
  def __call__(self, g: gops.GraphBatch, x: jax.Array | gops.SparseFeatures) -> jax.Array:
    x = _check_x("GCNConv", g, x)
    h = Linear(self.features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
               kernel_init=self.kernel_init, name="linear")(x)
    edge, self_w = gops.gcn_norm(g, self.add_self_loops)
    y = gops.propagate(g, edge, h) + (self_w[:, None] * h.astype(self_w.dtype)).astype(h.dtype)
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
      y = y + b.astype(y.dtype)
    return y


class ChebConv(nn.Module):
  """Chebyshev spectral filter ``y_j = sum_i sum_k theta_{k,i,j} T_k(L~) x_i + b_j`` (Defferrard et al. eq. 4-5).

  x: [..., N, F_in] -> [..., N, features]. ``K`` = number of terms T_0..T_{K-1} (filter order K-1; Kipf &
  Welling's "K" is the order). ``lmax``: 2.0 (default), a per-graph array [G] or None (power-iteration
  estimate); see ``research.ops.graph`` on this convention. Kernel [K, F_in, features], fan-in K * F_in.
  """
  features: int
  K: int
  lmax: float | None = 2.0
  normalized: bool = True
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1),
                                                      out_axis=2)

  @nn.compact
  def __call__(self, g: gops.GraphBatch, x: jax.Array | gops.SparseFeatures) -> jax.Array:
    x = _check_x("ChebConv", g, x)
    if int(self.K) != self.K or self.K < 1:
      raise ValueError(f"ChebConv: K={self.K} must be a positive int (the number of Chebyshev terms)")
    kernel = self.param("kernel", self.kernel_init, (self.K, x.shape[-1], self.features), self.param_dtype)
    kernel = kernel.astype(self.dtype)
    if isinstance(x, gops.SparseFeatures) or x.shape[-1] > self.features:
      # project first, then filter the narrow signals (Clenshaw): the same result, K-1 products at width `features`
      if isinstance(x, gops.SparseFeatures):
        proj = jnp.stack([gops.sparse_matmul(x, kernel[k]) for k in range(self.K)])
      else:
        proj = jnp.einsum("...nf,kfo->k...no", jnp.asarray(x, self.dtype), kernel)
      y = gops.chebyshev_filter(g, proj, self.lmax, self.normalized)
    else:
      x = jnp.asarray(x, self.dtype)
      tx = gops.chebyshev_basis(g, x, self.K, self.lmax, self.normalized)  # [K, ..., N, F]
      y = jnp.einsum("k...nf,kfo->...no", tx, kernel)
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
      y = y + b.astype(y.dtype)
    return y


class GraphPool(nn.Module):
  """Pooling of ``size = 2**p`` consecutive nodes on a binary-tree ordered node axis (Defferrard et al. §2.3):
  x [..., N, F] -> [..., N / size, F] by ``reshape [..., N/size, size, F]``.

  ``node_mask [N]`` (optional, bool): False marks fake nodes added by ``coarsen``; they are ignored (``max``:
  excluded; ``mean``: averaged over real nodes only; a group without a real node gives 0).
  """
  size: int
  reduce: str = "max"

  @nn.compact
  def __call__(self, x: jax.Array, node_mask: Any = None) -> jax.Array:
    if self.reduce not in ("max", "mean"):
      raise ValueError(f"GraphPool: reduce={self.reduce!r}; choose 'max' or 'mean'")
    if self.size < 1 or self.size & (self.size - 1):
      raise ValueError(f"GraphPool: size={self.size} must be a power of two (2**p, p coarsening levels)")
    x = jnp.asarray(x)
    n = x.shape[-2] if x.ndim >= 2 else -1
    if x.ndim < 2 or n % self.size:
      raise ValueError(f"GraphPool: x must be [..., N, F] with N divisible by size={self.size}, got shape {x.shape};"
                       " order and pad the nodes with research.ops.coarsening.coarsen/permute_signal")
    y = x.reshape(x.shape[:-2] + (n // self.size, self.size, x.shape[-1]))
    if node_mask is None:
      return jnp.max(y, axis=-2) if self.reduce == "max" else jnp.mean(y, axis=-2)
    m = jnp.asarray(node_mask)
    if m.shape != (n,):
      raise ValueError(f"GraphPool: node_mask must have shape [N] = ({n},), got {m.shape}")
    m = m.reshape(n // self.size, self.size, 1)
    any_real = jnp.any(m, axis=-2)
    if self.reduce == "max":
      low = jnp.finfo(y.dtype).min
      out = jnp.max(jnp.where(m, y, low), axis=-2)
      return jnp.where(any_real, out, jnp.zeros((), y.dtype))
    s = jnp.sum(jnp.where(m, y, jnp.zeros((), y.dtype)), axis=-2)
    return s / jnp.maximum(jnp.sum(m, axis=-2), 1).astype(y.dtype)


def fixed_graph(num_nodes: int, senders: np.ndarray, receivers: np.ndarray, weights: np.ndarray | None = None
                ) -> gops.GraphBatch:
  """A signal-only ``GraphBatch`` (no node features, F = 0) for layers applied to many signals x [B, N, F] on one
  fixed graph; built on the host at trace time (its arrays become constants of the jitted program)."""
  return gops.from_edges(np.zeros((num_nodes, 0), np.float32), senders, receivers, weights)
