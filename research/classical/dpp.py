"""Determinantal point processes: exact sampling of DPPs and k-DPPs, log-probabilities, marginal kernel
(seed 003 §16).

An L-ensemble over ``N`` items is given by a symmetric positive semi-definite kernel ``L [N, N]``:
``P(Y) = det(L_Y) / det(L + I)`` (seed 003 §16), with marginal kernel ``K = L (L + I)^{-1}``
(``P(A ⊆ Y) = det(K_A)``). A subset ``Y`` is a boolean mask ``[N]`` (static shape).

Sampling is the spectral algorithm of Hough et al. (2006) / Kulesza & Taskar (2012, Algorithm 1): with
``L = Σ_n λ_n v_n v_n^T``, (1) keep eigenvector ``n`` with probability ``λ_n / (λ_n + 1)`` (for the k-DPP,
Kulesza & Taskar Algorithm 8: exactly ``k`` eigenvectors, chosen with the elementary symmetric polynomials
``e_l^n`` of the eigenvalues), (2) sample the elementary DPP of the kept set ``V`` item by item: pick item ``i``
with probability ``(1/|V|) Σ_{v∈V} (v^T e_i)^2``, then replace ``V`` by an orthonormal basis of its subspace
orthogonal to ``e_i``. Step (2) is done on the projection kernel ``K_V = V V^T`` (static shapes under
``lax.while_loop``): ``P(i) = K_V[i, i] / |V|`` and the orthogonal projection update is the rank-one downdate
``K_V ← K_V - K_V[:, i] K_V[i, :] / K_V[i, i]`` (the projection onto ``span(V) ∩ e_i^⊥``), kept in factored
form (an incremental pivoted Cholesky of ``K_V``): ``O(N M)`` per item with ``M`` the number of eigenvector
columns carried (``k`` for the k-DPP, ``N`` for the DPP), so ``O(N k²)`` per k-DPP sample after the
eigendecomposition.

Numerics. Eigenvalues below ``N · eps · λ_max`` (and tiny negative ones from rounding) are treated as 0: the
numerical rank. The ESPs are computed in log space (no overflow for large ``N``, ``k``). ``log_prob`` of a set
whose ``L_Y`` is numerically singular by the same threshold (a set outside the support) is ``-inf``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["sample", "sample_k", "log_prob", "marginal_kernel", "elementary_symmetric_polynomials"]


def _is_concrete(*xs: Any) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _float_dtype(x: Any) -> Any:
  return jnp.result_type(jnp.asarray(x).dtype, jnp.float32)


def _check_L(L: Any, name: str = "L") -> int:
  """Shape, symmetry and positive semi-definiteness (the latter two on concrete inputs); returns ``N``."""
  shape = tuple(np.shape(L))
  if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
    raise ValueError(f"{name} must be a square kernel matrix [N, N] with N >= 1, got shape {shape}.")
  dt = jnp.asarray(L).dtype
  if not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
    raise ValueError(f"{name} must be a real matrix, got dtype {dt}.")
  if _is_concrete(L):
    x = np.asarray(L, dtype=np.float64)
    if not np.all(np.isfinite(x)):
      raise ValueError(f"{name} must be finite (got inf or NaN).")
    scale = max(float(np.max(np.abs(x))), np.finfo(np.float64).tiny)
    tol = math.sqrt(float(jnp.finfo(_float_dtype(L)).eps)) * scale
    asym = float(np.max(np.abs(x - x.T)))
    if asym > tol:
      raise ValueError(f"{name} must be symmetric, got max |{name} - {name}^T| = {asym:.3g}; symmetrise with "
                       f"({name} + {name}.T) / 2.")
    w_min = float(np.linalg.eigvalsh((x + x.T) / 2)[0])
    if w_min < -tol * shape[0]:
      raise ValueError(f"{name} must be positive semi-definite, got smallest eigenvalue {w_min:.3g}; build it as a "
                       f"Gram matrix B B^T or a positive-definite kernel (e.g. RBF), or add a ridge.")
  return shape[0]


def _numerical_rank(L: Any) -> int:
  x = np.asarray(L, dtype=np.float64)
  w = np.linalg.eigvalsh((x + x.T) / 2)
  return int(np.sum(w > _rank_tol(w.max(initial=0.0), x.shape[0], _float_dtype(L))))


def _rank_tol(w_max, n: int, dtype: Any):
  return n * float(jnp.finfo(dtype).eps) * w_max


def _eigh(L: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (numerically-zero and negative ones set to 0) and eigenvectors of ``(L + L^T)/2``."""
  w, V = jnp.linalg.eigh((L + L.T) / 2)
  w_max = jnp.maximum(jnp.max(w), 0.0)
  w = jnp.where(w > _rank_tol(w_max, L.shape[0], L.dtype), w, 0.0)
  return w, V


def _sample_elementary(key: jax.Array, V: jax.Array, k: jax.Array) -> jax.Array:
  """Sample of the elementary (projection) DPP spanned by the ``k`` orthonormal columns of ``V [N, M]`` (other
  columns are zero): [N] bool with ``k`` True entries.

  The projection kernel ``K_V = V V^T`` is never formed: its successive orthogonal-projection updates
  ``K ← K - K[:, i] K[i, :] / K[i, i]`` are kept in factored form (an incremental pivoted Cholesky
  ``K_j = K_V - Σ_{l<j} c_l c_l^T``), so step ``j`` costs ``O(N M)``: the column ``K_V[:, i] = V V[i]^T``, minus
  the previous factors, gives ``c_j``, and the diagonal ``d = diag(K_j)`` (the unnormalised ``P(i)``) is updated
  by ``d ← d - c_j²``. Item ``j`` is drawn by inverting the CDF of ``d`` with the ``j``-th of ``N`` uniforms
  drawn up front (no random-bit generation inside the loop)."""
  n, m = V.shape
  u = jax.random.uniform(key, (n,), V.dtype)
  d0 = jnp.sum(V * V, axis=1)

  def cond(c):
    return c[0] < k

  def body(c):
    j, C, d, Y = c
    p = jnp.where(Y, 0.0, jnp.clip(d, 0.0, None))
    cum = jnp.cumsum(p)
    i = jnp.sum(cum <= u[j] * cum[-1])  # cum[i-1] <= u·total < cum[i], so p[i] > 0
    i = jnp.minimum(i, n - 1 - jnp.argmax((p > 0)[::-1]))  # u·total rounded up to total: the last possible item
    col = V @ V[i] - C.T @ C[:, i]  # K_j[:, i]
    c_j = col / jnp.sqrt(jnp.maximum(col[i], jnp.finfo(V.dtype).tiny))
    C = lax.dynamic_update_index_in_dim(C, c_j, jnp.minimum(j, m - 1), axis=0)
    return j + 1, C, d - c_j * c_j, Y.at[i].set(True)

  init = (jnp.int32(0), jnp.zeros((m, n), V.dtype), d0, jnp.zeros((n,), bool))
  _, _, _, Y = lax.while_loop(cond, body, init)
  return Y


@jax.jit
def _sample(key, L):
  L = jnp.asarray(L, _float_dtype(L))
  w, V = _eigh(L)
  k1, k2 = jax.random.split(key)
  selected = jax.random.uniform(k1, w.shape, L.dtype) < w / (w + 1.0)
  return _sample_elementary(k2, V * selected.astype(V.dtype), jnp.sum(selected.astype(jnp.int32)))


def sample(key: jax.Array, L: Any) -> jax.Array:
  """One exact sample of the DPP ``P(Y) ∝ det(L_Y)`` by the spectral algorithm (module docstring).

  Args:
    key: PRNG key (``jax.vmap`` over keys for many samples).
    L: [N, N] symmetric PSD kernel.
  Returns:
    Y: [N] bool mask of the sampled subset (its size is random, at most the rank of ``L``).
  """
  _check_L(L)
  return _sample(key, L)


def _log_esp(w: jax.Array, k: int) -> jax.Array:
  """``log e_l^n`` [N+1, k+1] of the first ``n`` eigenvalues, ``l = 0..k`` (``-inf`` where ``e = 0``)."""
  logw = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
  e0 = jnp.full((k + 1,), -jnp.inf, w.dtype).at[0].set(0.0)

  def step(e, lw):
    shifted = jnp.concatenate([jnp.full((1,), -jnp.inf, w.dtype), lw + e[:-1]])
    e = jnp.logaddexp(e, shifted)
    return e, e

  _, rows = lax.scan(step, e0, logw)
  return jnp.concatenate([e0[None], rows], axis=0)


def elementary_symmetric_polynomials(w: Any, k: int) -> jax.Array:
  """Elementary symmetric polynomials ``e_l^n = Σ_{|J|=l, J⊆{1..n}} Π_{j∈J} w_j`` (Kulesza & Taskar Alg. 7).

  Args:
    w: [N] non-negative values (e.g. eigenvalues of ``L``).
    k: largest order ``l`` (Python int >= 0).
  Returns:
    E: [N+1, k+1] with ``E[n, l] = e_l^n`` (computed in log space, then exponentiated).
  """
  if np.ndim(w) != 1:
    raise ValueError(f"w must have shape [N], got shape {tuple(np.shape(w))}.")
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
    raise ValueError(f"k must be a Python int >= 0, got {k!r}.")
  if _is_concrete(w) and np.any(np.asarray(w) < 0):
    raise ValueError(f"w must be non-negative, got min {float(np.min(np.asarray(w)))}.")
  w = jnp.asarray(w, _float_dtype(w))
  return jnp.exp(_log_esp(w, int(k)))


@functools.partial(jax.jit, static_argnames=("k",))
def _sample_k(key, L, k):
  L = jnp.asarray(L, _float_dtype(L))
  w, V = _eigh(L)
  n = w.shape[0]
  E = _log_esp(w, k)
  logw = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
  k1, k2 = jax.random.split(key)
  u = jax.random.uniform(k1, (n,), L.dtype)

  # Kulesza & Taskar Alg. 8: for n = N..1, keep eigenvector n with probability λ_n e_{l-1}^{n-1} / e_l^n.
  def step(l, x):
    idx, lw, u_n = x
    lm1 = jnp.maximum(l - 1, 0)
    p = jnp.exp(lw + E[idx - 1, lm1] - E[idx, l])
    take = (l > 0) & (u_n < p)
    return l - take.astype(jnp.int32), take

  _, take = lax.scan(step, jnp.int32(k), (jnp.arange(1, n + 1), logw, u), reverse=True)
  (idx,) = jnp.nonzero(take, size=k, fill_value=0)
  return _sample_elementary(k2, V[:, idx], jnp.int32(k))  # [N, k] columns: O(N k²) per sample


def sample_k(key: jax.Array, L: Any, k: int) -> jax.Array:
  """One exact sample of the k-DPP ``P(Y) ∝ det(L_Y)``, ``|Y| = k`` (Kulesza & Taskar Alg. 8 + Alg. 1).

  Args:
    key: PRNG key (``jax.vmap`` over keys for many samples).
    L: [N, N] symmetric PSD kernel.
    k: subset size, a Python int with ``0 <= k <= rank(L)`` (static: each ``k`` compiles once). The rank is
      checked on a concrete ``L``; under ``jit`` with a traced ``L`` a ``k`` above the numerical rank is not
      detected and the result is then not a valid sample.
  Returns:
    Y: [N] bool mask with exactly ``k`` True entries.
  """
  n = _check_L(L)
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0 or k > n:
    raise ValueError(f"k must be a Python int in [0, N={n}], got {k!r}.")
  if _is_concrete(L):
    rank = _numerical_rank(L)
    if k > rank:
      raise ValueError(f"k = {k} exceeds the numerical rank {rank} of L: a k-DPP needs det(L_Y) > 0 for some "
                       f"|Y| = k; choose k <= {rank} or add a ridge to L.")
  return _sample_k(key, L, int(k))


@jax.jit
def _log_prob(L, Y):
  L = jnp.asarray(L, _float_dtype(L))
  L = (L + L.T) / 2
  n = L.shape[0]
  w = jnp.linalg.eigvalsh(L)
  c = jnp.maximum(jnp.max(w), jnp.finfo(L.dtype).tiny)
  # det(L_Y) = det(M) / c^(N - |Y|) with M = L on Y x Y and c I elsewhere (eigenvalues of the same scale as L_Y).
  both = Y[..., :, None] & Y[..., None, :]
  m = jnp.linalg.eigvalsh(jnp.where(both, L, c * jnp.eye(n, dtype=L.dtype)))
  singular = m[..., 0] <= _rank_tol(c, n, L.dtype)
  log_det_y = jnp.sum(jnp.log(jnp.where(singular[..., None], 1.0, m)), axis=-1) - (
      n - jnp.sum(Y, axis=-1)) * jnp.log(c)
  log_norm = jnp.sum(jnp.log1p(jnp.clip(w, 0.0, None)))
  return jnp.where(singular, -jnp.inf, log_det_y) - log_norm


def log_prob(L: Any, subset_mask: Any) -> jax.Array:
  """``log P(Y) = log det(L_Y) - log det(L + I)`` (seed 003 §16).

  ``det(L_Y)`` (``det(L_∅) = 1``) comes from the eigenvalues of ``L_Y`` (embedded in an ``[N, N]`` matrix for a
  static shape, ``O(N³)`` per subset); it is taken as 0 (``log P = -inf``, ``Y`` outside the support) when the
  smallest one is below the numerical-rank threshold ``N · eps · λ_max(L)`` used by the samplers.

  Args:
    L: [N, N] symmetric PSD kernel.
    subset_mask: [..., N] bool masks (any leading batch shape).
  Returns:
    [...] log-probabilities.
  """
  n = _check_L(L)
  if np.ndim(subset_mask) < 1 or np.shape(subset_mask)[-1] != n:
    raise ValueError(f"subset_mask must have shape [..., N={n}] (a boolean mask per subset), got shape "
                     f"{tuple(np.shape(subset_mask))}.")
  if jnp.asarray(subset_mask).dtype != jnp.bool_:
    raise ValueError(f"subset_mask must be boolean, got dtype {jnp.asarray(subset_mask).dtype}; use mask.astype(bool).")
  return _log_prob(L, subset_mask)


@jax.jit
def _marginal_kernel(L):
  L = jnp.asarray(L, _float_dtype(L))
  w, V = _eigh(L)
  return (V * (w / (w + 1.0))) @ V.T


def marginal_kernel(L: Any) -> jax.Array:
  """Marginal kernel ``K = L (L + I)^{-1}`` [N, N] (``P(A ⊆ Y) = det(K_A)``; seed 003 §16, Kulesza & Taskar
  Eq. 15), computed from the eigendecomposition (``K = Σ λ/(λ+1) v v^T``: symmetric, eigenvalues in [0, 1)).

  Args:
    L: [N, N] symmetric PSD kernel.
  Returns:
    K: [N, N].
  """
  _check_L(L)
  return _marginal_kernel(L)
