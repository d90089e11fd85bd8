"""Divergences and optimal transport: KL, JS, Gaussian KL, exact 1-D Wasserstein, entropic OT (seed 003 §11, §12.2).

Seed 003 §12 defines ``KL(p1||p2) = Σ p1 log(p1/p2)`` and ``JS(p1||p2) = ½ KL(p1||m) + ½ KL(p2||m)``,
``m = (p1 + p2)/2`` (the GAN objective at the optimal discriminator is ``-log 4 + 2 JS``), asks for the "1-D
Gaussian distance" (:func:`kl_gaussian`), and §12.2 (WGAN) the Earth-Mover / Wasserstein distance
``W(P_r, P_g) = inf_{γ ∈ Π(P_r, P_g)} E_{(x,y)~γ} ||x - y||``: exact in 1-D through sorted quantile functions
(:func:`wasserstein_1d`) and, between discrete measures with any cost matrix, the entropic-regularised transport
plan of Sinkhorn's algorithm (:func:`sinkhorn`).

Conventions.

* ``kl``/``js`` take probability vectors along ``axis`` (``0 log 0 = 0``; ``p > 0`` where ``q = 0`` gives
  ``+inf``). They are not renormalised unless ``normalize=True`` (then they match ``scipy.stats.entropy``,
  which always renormalises). ``js`` is the divergence, not scipy's ``jensenshannon`` distance (its square root).
* ``wasserstein_1d(u, v, p)`` is ``W_p = (∫_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p dt)^{1/p}`` with the quantile
  functions of the (weighted) empirical measures, summed exactly over the merged breakpoints of the two
  cumulative weights. For ``p = 1`` it equals ``scipy.stats.wasserstein_distance`` (= ``∫ |F_u - F_v|``).
* ``sinkhorn`` solves ``min_{P 1 = a, Pᵀ 1 = b} <P, C> + ε Σ P_ij (log P_ij - 1)`` (POT's ``ot.sinkhorn``
  problem). The plan is ``P_ij = exp((f_i + g_j - C_ij)/ε)`` with dual potentials ``f, g`` (POT's ``ε log u``,
  ``ε log v``); ``cost = <P, C>`` is what ``ot.sinkhorn2`` returns (no entropy term);
  ``regularized_cost = <P, C> + ε Σ P log P`` adds it. Iterations alternate the exact row and column updates
  ``f = ε log a - ε LSE_j((g_j - C_ij)/ε)``, ``g = ε log b - ε LSE_i((f_i - C_ij)/ε)`` in log domain (stable for
  any ``ε``) inside ``lax.while_loop`` until the row-marginal error ``||P 1 - a||_1 <= tol`` or ``max_iter``.
  ``log_domain=False`` runs the classical scaling iterations ``u = a / (K v)``, ``v = b / (Kᵀ u)``,
  ``K = exp(-(C - min C)/ε)`` (faster; raises when ``K`` would underflow).

Gradients. ``kl``, ``js``, ``kl_gaussian`` and ``wasserstein_1d`` are differentiable (``wasserstein_1d`` w.r.t.
positions and weights; ``W_p`` has an infinite derivative at ``W_p = 0`` for ``p > 1``). :func:`sinkhorn`
differentiates the converged potentials by the implicit function theorem (``jax.custom_vjp``): the fixed point
``F(f, g; a, b, C, ε) = 0`` is linearised and its transposed Jacobian system is solved densely (an ``[n, n]``
Schur complement, made non-singular by the rank-one term ``1 1ᵀ`` that fixes the gauge ``f + c, g - c``), so
gradients of the plan, cost and potentials w.r.t. ``a``, ``b``, ``cost`` and ``epsilon`` are exact at convergence
and cost ``O(n³)`` (fine up to a few thousand points). They require ``a > 0`` and ``b > 0``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp

__all__ = ["kl", "js", "kl_gaussian", "wasserstein_1d", "sinkhorn", "SinkhornResult"]


def _is_traced(v: Any) -> bool:
  return isinstance(v, jax.core.Tracer)


def _float_dtype(*args: Any) -> Any:
  args = [np.asarray(a) if isinstance(a, (list, tuple)) else a for a in args]   # array-likes
  return jnp.promote_types(jnp.result_type(*args, float), jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# KL / JS


def _check_prob(fn: str, name: str, p: Any, axis: int, normalize: bool) -> None:
  if _is_traced(p):
    return
  arr = np.asarray(p, np.float64)
  if arr.ndim == 0:
    raise ValueError(f"{fn}: `{name}` must have at least one axis of probabilities; got shape {arr.shape}. "
                     f"Fix: pass a vector [n] (or [..., n] with axis=-1).")
  if np.isnan(arr).any() or (arr < 0).any():
    raise ValueError(f"{fn}: `{name}` must be non-negative probabilities; got min {np.nanmin(arr):.6g} "
                     f"(NaN: {np.isnan(arr).any()}) in shape {arr.shape}. Fix: pass probabilities >= 0.")
  if not normalize:
    sums = arr.sum(axis=axis)
    if np.any(np.abs(sums - 1.0) > 1e-3):
      raise ValueError(f"{fn}: `{name}` must sum to 1 along axis={axis}; got sums in [{sums.min():.6g}, "
                       f"{sums.max():.6g}] (shape {arr.shape}). Fix: normalise it, or pass normalize=True.")


def _kl_terms(p: jax.Array, q: jax.Array) -> jax.Array:
  """Elementwise ``p log(p/q)`` with 0 log 0 = 0 and +inf where q = 0 < p; NaN-free gradients for p = 0."""
  pos = p > 0
  p_s = jnp.where(pos, p, 1.0)
  q_s = jnp.where(pos, q, 1.0)
  return jnp.where(pos, p_s * (jnp.log(p_s) - jnp.log(q_s)), 0.0)


def _prep_pq(fn: str, p: Any, q: Any, axis: int, normalize: bool) -> tuple[jax.Array, jax.Array]:
  _check_prob(fn, "p", p, axis, normalize)
  _check_prob(fn, "q", q, axis, normalize)
  try:
    shape = np.broadcast_shapes(np.shape(p), np.shape(q))
  except ValueError:
    raise ValueError(f"{fn}: `p` of shape {np.shape(p)} and `q` of shape {np.shape(q)} do not broadcast. "
                     f"Fix: pass distributions of the same shape [..., n].") from None
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"{fn}: axis={axis} is out of range for shape {shape}. Fix: pass an axis in "
                     f"[-{len(shape)}, {len(shape) - 1}].")
  dt = _float_dtype(p, q)
  p, q = jnp.asarray(p, dt), jnp.asarray(q, dt)
  if normalize:
    p = p / jnp.sum(p, axis=axis, keepdims=True)
    q = q / jnp.sum(q, axis=axis, keepdims=True)
  return p, q


def kl(p: Any, q: Any, axis: int = -1, *, normalize: bool = False) -> jax.Array:
  """Discrete ``KL(p || q) = Σ p log(p/q)`` (nats) along ``axis``; ``0 log 0 = 0``; ``p > 0 = q`` gives +inf.

  p, q: [..., n] probability vectors (broadcastable). normalize: divide each by its sum first (scipy's
  ``entropy(p, q)`` convention). Returns [...] (``axis`` reduced).
  """
  p, q = _prep_pq("kl", p, q, axis, normalize)
  return jnp.sum(_kl_terms(p, q), axis=axis)


def js(p: Any, q: Any, base: float = math.e, axis: int = -1, *, normalize: bool = False) -> jax.Array:
  """Jensen–Shannon divergence ``½ KL(p||m) + ½ KL(q||m)``, ``m = (p+q)/2``, in units of ``log(base)``.

  In ``[0, log 2]`` nats (``[0, 1]`` for ``base=2``), 0 iff ``p = q``; equals ``log 2`` for disjoint supports
  (seed 003 §12.2). ``scipy.spatial.distance.jensenshannon`` is its square root. p, q: [..., n]. Returns [...].
  """
  if not (isinstance(base, (int, float)) and base > 0 and base != 1):
    raise ValueError(f"js: `base` must be a positive number != 1; got {base!r}. Fix: pass base=math.e or base=2.")
  p, q = _prep_pq("js", p, q, axis, normalize)
  m = 0.5 * (p + q)
  out = 0.5 * jnp.sum(_kl_terms(p, m), axis=axis) + 0.5 * jnp.sum(_kl_terms(q, m), axis=axis)
  return out / math.log(base)


# ----------------------------------------------------------------------------------------------------------------
# Gaussian KL


def _check_cov(fn: str, name: str, cov: Any, full: bool) -> None:
  if _is_traced(cov):
    return
  arr = np.asarray(cov, np.float64)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{fn}: `{name}` contains NaN or inf (shape {arr.shape}). Fix: pass finite covariances.")
  if full:
    if not np.allclose(arr, np.swapaxes(arr, -1, -2), rtol=1e-6, atol=1e-12 * max(1.0, np.abs(arr).max())):
      raise ValueError(f"{fn}: `{name}` of shape {arr.shape} is not symmetric. Fix: pass (C + Cᵀ)/2.")
    eig_min = np.linalg.eigvalsh(arr).min()
    if eig_min <= 0:
      raise ValueError(f"{fn}: `{name}` of shape {arr.shape} is not positive definite (smallest eigenvalue "
                       f"{eig_min:.3g}); the KL divergence is undefined for a singular Gaussian. Fix: add a ridge "
                       f"`{name} + δ I` (δ > 0).")
  elif (arr <= 0).any():
    raise ValueError(f"{fn}: diagonal `{name}` of shape {arr.shape} must be > 0; got min {arr.min():.3g}. "
                     f"Fix: pass positive variances (add a small δ).")


@jax.jit
def _kl_gaussian_full(mu1, cov1, mu2, cov2):
  d = mu1.shape[-1]
  l1 = jnp.linalg.cholesky(cov1)
  l2 = jnp.linalg.cholesky(cov2)
  solve = functools.partial(jax.scipy.linalg.solve_triangular, lower=True)
  m = solve(l2, l1)                                           # L2^{-1} L1: tr(Σ2^{-1} Σ1) = ||M||_F²
  delta = solve(l2, (mu2 - mu1)[..., None])[..., 0]           # L2^{-1} (μ2 - μ1)
  logdet1 = 2.0 * jnp.sum(jnp.log(jnp.diagonal(l1, axis1=-2, axis2=-1)), axis=-1)
  logdet2 = 2.0 * jnp.sum(jnp.log(jnp.diagonal(l2, axis1=-2, axis2=-1)), axis=-1)
  return 0.5 * (jnp.sum(m * m, axis=(-2, -1)) + jnp.sum(delta * delta, axis=-1) - d + logdet2 - logdet1)


@jax.jit
def _kl_gaussian_diag(mu1, var1, mu2, var2):
  r = var1 / var2
  return 0.5 * jnp.sum(r + (mu2 - mu1) ** 2 / var2 - 1.0 - jnp.log(r), axis=-1)


def kl_gaussian(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> jax.Array:
  """Closed-form Gaussian KL (seed 003 §12 "1-D Gaussian distance", §11):

  ``KL(N(μ1, Σ1) || N(μ2, Σ2)) = ½[tr(Σ2⁻¹Σ1) + (μ2-μ1)ᵀΣ2⁻¹(μ2-μ1) - d + log|Σ2|/|Σ1|]``.

  mu1, mu2: [..., d]. cov1, cov2: [..., d, d] full covariances (via Cholesky) or [..., d] diagonal variances
  (both of the same kind). Batch dimensions broadcast. Returns [...]. For 1-D Gaussians pass ``mu [1]``, ``cov
  [1]`` (the seed's "1-D Gaussian distance"). Singular / non-positive covariances raise when concrete (NaN under
  ``jit``).
  """
  fn = "kl_gaussian"
  mu1_s, mu2_s, c1_s, c2_s = (np.shape(v) for v in (mu1, mu2, cov1, cov2))
  if len(mu1_s) == 0 or len(mu2_s) == 0 or mu1_s[-1] != mu2_s[-1]:
    raise ValueError(f"{fn}: `mu1` and `mu2` must be [..., d] with the same d; got shapes {mu1_s} and {mu2_s}. "
                     f"Fix: pass mean vectors (use shape [1] for 1-D Gaussians).")
  d = mu1_s[-1]
  kinds = []
  for name, cs, ms in (("cov1", c1_s, mu1_s), ("cov2", c2_s, mu2_s)):
    if len(cs) >= 2 and cs[-2:] == (d, d) and len(cs) == len(ms) + 1:
      kinds.append("full")
    elif len(cs) >= 1 and cs[-1] == d and len(cs) == len(ms):
      kinds.append("diag")
    else:
      raise ValueError(f"{fn}: `{name}` must be [..., {d}, {d}] (full) or [..., {d}] (diagonal) to match its mean "
                       f"of shape {ms}; got shape {cs}. Fix: pass a covariance matrix per mean vector.")
  if kinds[0] != kinds[1]:
    raise ValueError(f"{fn}: `cov1` is {kinds[0]} (shape {c1_s}) but `cov2` is {kinds[1]} (shape {c2_s}). "
                     f"Fix: pass both as full [..., d, d] or both as diagonal [..., d].")
  full = kinds[0] == "full"
  _check_cov(fn, "cov1", cov1, full)
  _check_cov(fn, "cov2", cov2, full)
  dt = _float_dtype(mu1, cov1, mu2, cov2)
  mu1, cov1, mu2, cov2 = (jnp.asarray(v, dt) for v in (mu1, cov1, mu2, cov2))
  if full:
    batch = jnp.broadcast_shapes(mu1.shape[:-1], mu2.shape[:-1], cov1.shape[:-2], cov2.shape[:-2])
    mu1, mu2 = (jnp.broadcast_to(v, batch + (d,)) for v in (mu1, mu2))
    cov1, cov2 = (jnp.broadcast_to(v, batch + (d, d)) for v in (cov1, cov2))
    return _kl_gaussian_full(mu1, cov1, mu2, cov2)
  return _kl_gaussian_diag(mu1, cov1, mu2, cov2)


# ----------------------------------------------------------------------------------------------------------------
# exact 1-D Wasserstein


@functools.partial(jax.jit, static_argnames=("p",))
def _wasserstein_1d(u, v, wu, wv, *, p):
  iu = jnp.argsort(u)
  iv = jnp.argsort(v)
  us, vs = u[iu], v[iv]
  cu = jnp.cumsum(wu[iu]) / jnp.sum(wu)
  cv = jnp.cumsum(wv[iv]) / jnp.sum(wv)
  # merged breakpoints of the two CDFs: on (t_{k-1}, t_k] both quantile functions are constant.
  t = jnp.sort(jnp.concatenate([cu, cv]))
  dt = jnp.diff(jnp.concatenate([jnp.zeros((1,), t.dtype), t]))
  ku = jnp.minimum(jnp.searchsorted(lax.stop_gradient(cu), lax.stop_gradient(t), side="left"), u.shape[0] - 1)
  kv = jnp.minimum(jnp.searchsorted(lax.stop_gradient(cv), lax.stop_gradient(t), side="left"), v.shape[0] - 1)
  diff = jnp.abs(us[ku] - vs[kv])
  if p == 1:
    return jnp.sum(dt * diff)
  return jnp.sum(dt * diff ** p) ** (1.0 / p)


def _check_1d(fn: str, name: str, x: Any, weights: bool) -> tuple[int, ...]:
  shape = np.shape(x)
  if len(shape) != 1 or shape[0] == 0:
    raise ValueError(f"{fn}: `{name}` must be a non-empty 1-D array [n]; got shape {shape}. "
                     f"Fix: pass the sample values (or their weights) as a vector.")
  if not _is_traced(x):
    arr = np.asarray(x, np.float64)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{fn}: `{name}` contains NaN or inf (shape {shape}). Fix: pass finite values.")
    if weights and ((arr < 0).any() or arr.sum() <= 0):
      raise ValueError(f"{fn}: `{name}` must be non-negative with a positive sum; got min {arr.min():.3g}, sum "
                       f"{arr.sum():.3g} (shape {shape}). Fix: pass weights >= 0, not all zero.")
  return shape


def wasserstein_1d(u: Any, v: Any, u_weights: Optional[Any] = None, v_weights: Optional[Any] = None,
                   p: float = 1) -> jax.Array:
  """Exact ``W_p`` between two weighted 1-D empirical distributions (seed 003 §12.2, the EM distance).

  u: [n], v: [m] sample values; u_weights: [n], v_weights: [m] non-negative (default uniform; normalised
  internally). p >= 1 (static). Returns [] ``W_p = (∫_0^1 |F_u^{-1} - F_v^{-1}|^p)^{1/p}``; for ``p = 1`` this
  is ``scipy.stats.wasserstein_distance``. Cost ``O((n + m) log(n + m))``.
  """
  fn = "wasserstein_1d"
  if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
    raise ValueError(f"{fn}: `p` must be a finite number >= 1; got {p!r}. Fix: pass p=1 or p=2.")
  (n,) = _check_1d(fn, "u", u, False)
  (m,) = _check_1d(fn, "v", v, False)
  for name, w, k in (("u_weights", u_weights, n), ("v_weights", v_weights, m)):
    if w is not None:
      if np.shape(w) != (k,):
        raise ValueError(f"{fn}: `{name}` must have shape ({k},) like its values; got shape {np.shape(w)}. "
                         f"Fix: pass one weight per value.")
      _check_1d(fn, name, w, True)
  dt = _float_dtype(u, v, *(w for w in (u_weights, v_weights) if w is not None))
  u, v = jnp.asarray(u, dt), jnp.asarray(v, dt)
  wu = jnp.ones((n,), dt) if u_weights is None else jnp.asarray(u_weights, dt)
  wv = jnp.ones((m,), dt) if v_weights is None else jnp.asarray(v_weights, dt)
  return _wasserstein_1d(u, v, wu, wv, p=float(p) if p != 1 else 1)


# ----------------------------------------------------------------------------------------------------------------
# Sinkhorn


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["plan", "cost", "regularized_cost", "f", "g", "n_iter", "error"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SinkhornResult:
  """Output of :func:`sinkhorn`.

  plan: [n, m] transport plan ``P_ij = exp((f_i + g_j - C_ij)/ε)`` (column marginals exact, rows within tol).
  cost: [] ``<P, C>`` (= POT's ``ot.sinkhorn2``). regularized_cost: [] ``<P, C> + ε Σ P log P`` (0 log 0 = 0).
  f: [n], g: [m] dual potentials (``-inf`` where ``a_i = 0`` / ``b_j = 0``); defined up to ``f + c, g - c``.
  n_iter: [] int32 iterations run. error: [] final ``||P 1 - a||_1``.
  """
  plan: jax.Array
  cost: jax.Array
  regularized_cost: jax.Array
  f: jax.Array
  g: jax.Array
  n_iter: jax.Array
  error: jax.Array


def _safe_log(x):
  return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), -jnp.inf)


def _sinkhorn_solve(a, b, cost, eps, max_iter, tol, log_domain):
  """Runs the iterations; returns potentials (f, g) of P = exp((f + g - C)/ε), n_iter and error."""
  dt = cost.dtype
  log_a, log_b = _safe_log(a), _safe_log(b)
  if log_domain:
    def row_lse(g):
      return logsumexp((g[None, :] - cost) / eps, axis=1)

    def col_update(f):
      return eps * (log_b - logsumexp((f[:, None] - cost) / eps, axis=0))

    def error(f, lse):
      return jnp.sum(jnp.abs(jnp.exp(f / eps + lse) - a))

    def body(state):
      f, g, lse, it, _ = state
      f = eps * (log_a - lse)
      g = col_update(f)
      lse = row_lse(g)
      return f, g, lse, it + 1, error(f, lse)

    g0 = jnp.zeros(cost.shape[1], dt)
    lse0 = row_lse(g0)
    f0 = eps * (log_a - lse0)
    init = (f0, g0, lse0, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dt))

    def cond(state):
      return (state[3] < max_iter) & (state[4] > tol)

    f, g, _, it, err = lax.while_loop(cond, body, init)
    return f, g, it, err

  c0 = jnp.min(cost)
  kern = jnp.exp(-(cost - c0) / eps)

  def body_s(state):
    u, v, it, _ = state
    u = a / (kern @ v)
    v = b / (kern.T @ u)
    return u, v, it + 1, jnp.sum(jnp.abs(u * (kern @ v) - a))

  init = (jnp.ones(cost.shape[0], dt), jnp.ones(cost.shape[1], dt), jnp.asarray(0, jnp.int32),
          jnp.asarray(jnp.inf, dt))
  u, v, it, err = lax.while_loop(lambda s: (s[2] < max_iter) & (s[3] > tol), body_s, init)
  # P = diag(u) K diag(v) = exp((f + g - C)/ε) with f = ε log u + c0, g = ε log v.
  return eps * _safe_log(u) + c0, eps * _safe_log(v), it, err


def _fixed_point_residual(f, g, a, b, cost, eps):
  """F(f, g; θ) = 0 at the Sinkhorn fixed point (θ = a, b, C, ε)."""
  log_a, log_b = _safe_log(a), _safe_log(b)
  lse_r = logsumexp((g[None, :] - cost) / eps, axis=1)
  lse_c = logsumexp((f[:, None] - cost) / eps, axis=0)
  r1 = jnp.where(a > 0, f - eps * (log_a - lse_r), 0.0)
  r2 = jnp.where(b > 0, g - eps * (log_b - lse_c), 0.0)
  return r1, r2


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _sinkhorn_potentials(a, b, cost, eps, max_iter, tol, log_domain):
  return _sinkhorn_solve(a, b, cost, eps, max_iter, tol, log_domain)


def _potentials_fwd(a, b, cost, eps, max_iter, tol, log_domain):
  out = _sinkhorn_solve(a, b, cost, eps, max_iter, tol, log_domain)
  return out, (out[0], out[1], a, b, cost, eps)


def _potentials_bwd(max_iter, tol, log_domain, res, cts):
  f, g, a, b, cost, eps = res
  fbar, gbar = cts[0], cts[1]
  fbar = jnp.where(jnp.isfinite(f), fbar, 0.0)
  gbar = jnp.where(jnp.isfinite(g), gbar, 0.0)
  plan = jnp.exp((f[:, None] + g[None, :] - cost) / eps)
  # J = [[I, diag(1/a) P], [diag(1/b) Pᵀ, I]] (∂F/∂(f, g) at the fixed point). Solve Jᵀ w = (f̄, ḡ):
  #   w2 = ḡ - Pᵀ diag(1/a) w1,  S w1 = f̄ - P diag(1/b) ḡ,  S = I - P diag(1/b) Pᵀ diag(1/a).
  # S is singular (gauge f + c, g - c): 1ᵀ S = 0, S a = 0; the right side is projected onto 1^⊥ and S + 1 1ᵀ is
  # solved instead (its solution satisfies 1ᵀ w1 = 0 and S w1 = rhs).
  inv_a = jnp.where(a > 0, 1.0 / jnp.where(a > 0, a, 1.0), 0.0)
  inv_b = jnp.where(b > 0, 1.0 / jnp.where(b > 0, b, 1.0), 0.0)
  n = a.shape[0]
  s_mat = jnp.eye(n, dtype=cost.dtype) - (plan * inv_b[None, :]) @ (plan.T * inv_a[None, :])
  rhs = fbar - plan @ (inv_b * gbar)
  rhs = rhs - jnp.mean(rhs)
  w1 = jnp.linalg.solve(s_mat + jnp.ones((n, n), cost.dtype), rhs)
  w2 = gbar - plan.T @ (inv_a * w1)
  # θ̄ = -(∂F/∂θ)ᵀ w
  _, vjp = jax.vjp(lambda a_, b_, c_, e_: _fixed_point_residual(f, g, a_, b_, c_, e_), a, b, cost, eps)
  da, db, dc, de = vjp((-w1, -w2))
  return da, db, dc, de


_sinkhorn_potentials.defvjp(_potentials_fwd, _potentials_bwd)


@functools.partial(jax.jit, static_argnames=("max_iter", "tol", "log_domain"))
def _sinkhorn(a, b, cost, eps, *, max_iter, tol, log_domain):
  f, g, it, err = _sinkhorn_potentials(a, b, cost, eps, max_iter, tol, log_domain)
  it, err = lax.stop_gradient(it), lax.stop_gradient(err)
  log_plan = (f[:, None] + g[None, :] - cost) / eps
  plan = jnp.exp(log_plan)
  lin = jnp.sum(plan * cost)
  ent = jnp.sum(jnp.where(plan > 0, plan * jnp.where(plan > 0, log_plan, 0.0), 0.0))
  return SinkhornResult(plan=plan, cost=lin, regularized_cost=lin + eps * ent, f=f, g=g, n_iter=it, error=err)


def sinkhorn(a: Any, b: Any, cost: Any, epsilon: Any, *, max_iter: int = 1000, tol: float = 1e-9,
             log_domain: bool = True) -> SinkhornResult:
  """Entropic optimal transport between histograms ``a`` and ``b`` (Sinkhorn; seed 003 §12.2 EM distance).

  a: [n], b: [m] non-negative weights with equal sums (probability vectors). cost: [n, m] cost matrix (e.g.
  ``|x_i - y_j|`` for W1). epsilon: > 0 regularisation (traced is fine). max_iter: iteration cap; tol: stop when
  ``||P 1 - a||_1 <= tol``. log_domain: log-sum-exp updates (stable for small ε; default) or scaling updates.
  Returns :class:`SinkhornResult`. Differentiable w.r.t. ``a, b, cost, epsilon`` (implicit differentiation, see the
  module docstring). Check ``result.error`` for convergence: when ``max_iter`` is hit the plan's row marginals are
  off by ``error``.
  """
  fn = "sinkhorn"
  a_s, b_s, c_s = np.shape(a), np.shape(b), np.shape(cost)
  if len(a_s) != 1 or len(b_s) != 1 or a_s[0] == 0 or b_s[0] == 0:
    raise ValueError(f"{fn}: `a` and `b` must be non-empty 1-D histograms [n], [m]; got shapes {a_s}, {b_s}. "
                     f"Fix: pass weight vectors.")
  if c_s != (a_s[0], b_s[0]):
    raise ValueError(f"{fn}: `cost` must have shape [n, m] = {(a_s[0], b_s[0])} to match a [n] and b [m]; got "
                     f"shape {c_s}. Fix: build cost[i, j] = c(x_i, y_j).")
  if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f"{fn}: `max_iter` must be an int >= 1; got {max_iter!r}.")
  if not (isinstance(tol, (int, float)) and tol >= 0):
    raise ValueError(f"{fn}: `tol` must be a number >= 0; got {tol!r}.")
  sums = []
  for name, w in (("a", a), ("b", b)):
    if not _is_traced(w):
      arr = np.asarray(w, np.float64)
      if not np.all(np.isfinite(arr)) or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"{fn}: `{name}` must be finite, non-negative, with a positive sum; got min "
                         f"{np.nanmin(arr):.3g}, sum {arr.sum():.3g} (shape {arr.shape}). Fix: pass a histogram.")
      sums.append(arr.sum())
  if len(sums) == 2 and abs(sums[0] - sums[1]) > 1e-6 * max(sums):
    raise ValueError(f"{fn}: `a` and `b` must have equal total mass; got sums {sums[0]:.9g} and {sums[1]:.9g}. "
                     f"Fix: normalise both to probability vectors (balanced OT).")
  if not _is_traced(epsilon):
    e = np.asarray(epsilon, np.float64)
    if e.shape != () or not np.isfinite(e) or e <= 0:
      raise ValueError(f"{fn}: `epsilon` must be a positive finite scalar; got {epsilon!r}. Fix: pass e.g. 1e-2 "
                       f"times the typical cost.")
  dt = _float_dtype(a, b, cost, epsilon)
  if not _is_traced(cost):
    c = np.asarray(cost, np.float64)
    if not np.all(np.isfinite(c)):
      raise ValueError(f"{fn}: `cost` of shape {c.shape} contains NaN or inf. Fix: replace forbidden pairs by a "
                       f"large finite cost.")
    if not log_domain and not _is_traced(epsilon):
      limit = -math.log(float(jnp.finfo(dt).tiny)) * 0.9
      if (c.max() - c.min()) / float(epsilon) > limit:
        raise ValueError(f"{fn}: with log_domain=False, exp(-cost/epsilon) underflows (cost range "
                         f"{c.max() - c.min():.3g} / epsilon {float(epsilon):.3g} > {limit:.0f}). Fix: use "
                         f"log_domain=True (default) or a larger epsilon.")
  a, b, cost = jnp.asarray(a, dt), jnp.asarray(b, dt), jnp.asarray(cost, dt)
  return _sinkhorn(a, b, cost, jnp.asarray(epsilon, dt), max_iter=int(max_iter), tol=float(tol),
                   log_domain=bool(log_domain))
