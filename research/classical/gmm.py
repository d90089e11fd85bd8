"""Gaussian mixture model fitted by EM (seed 003 §2 Algorithm 1, §3.1).

E-step: responsibilities ``gamma_jk = P(z_j = k | x_j, theta)`` by log-sum-exp over ``log alpha_k + log N(x_j |
mu_k, Sigma_k)``; M-step: the closed-form argmax of Q, ``alpha_k = n_k / n``, ``mu_k = sum_j gamma_jk x_j / n_k``,
``Sigma_k = sum_j gamma_jk (x_j - mu_k)(x_j - mu_k)^T / n_k + reg_covar I`` (``n_k = sum_j gamma_jk``; diagonal
variant keeps only the diagonal). Log densities use the Cholesky factor ``Sigma = L L^T``:
``log N = -(d log 2 pi + |L^{-1}(x - mu)|^2) / 2 - sum log diag L``. Stopping rule as scikit-learn's
``GaussianMixture``: stop when the mean log-likelihood (computed in the E-step, i.e. under the parameters before
the M-step) changes by less than ``tol``.

Regularisation: ``reg_covar`` is added to every covariance diagonal, so a component that collapses onto a single
point or a lower-dimensional subspace gets covariance ``~ reg_covar I`` instead of a singular matrix; a component
with no responsibility left keeps ``n_k = 10 eps`` (as scikit-learn) so it gets mean ~0, covariance reg_covar I
and weight ~0 rather than NaN. If a covariance is still not positive definite (``reg_covar = 0`` with
duplicated points), ``fit`` raises a ValueError asking for a larger ``reg_covar`` (when called outside ``jit``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.classical import clustering

__all__ = ["GaussianMixture", "fit", "e_step", "m_step", "log_prob", "predict", "predict_proba",
           "estimate_log_gaussian_prob"]

_COV_TYPES = ("full", "diag")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["weights", "means", "covariances", "mean_log_likelihood", "converged", "num_iter",
                                "log_likelihood_history"],
                   meta_fields=["covariance_type"])
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """A fitted Gaussian mixture.

  weights: [k] mixing weights alpha (sum 1); means: [k, d]; covariances: [k, d, d] ("full") or [k, d] ("diag",
  variances); mean_log_likelihood: [] mean log-likelihood of the training data under the final parameters;
  converged: [] bool; num_iter: [] int32 EM iterations run; log_likelihood_history: [max_iter] mean log-likelihood
  computed in the E-step of each iteration (non-decreasing, the EM guarantee of seed 003 §2.2), NaN after
  num_iter; covariance_type: "full" | "diag" (static).
  """
  weights: jax.Array
  means: jax.Array
  covariances: jax.Array
  mean_log_likelihood: jax.Array
  converged: jax.Array
  num_iter: jax.Array
  log_likelihood_history: jax.Array
  covariance_type: str = "full"


# ----------------------------------------------------------------------------------------------------------------
# E and M steps
# ----------------------------------------------------------------------------------------------------------------


def estimate_log_gaussian_prob(x: jax.Array, means: jax.Array, covariances: jax.Array,
                               covariance_type: str = "full") -> jax.Array:
  """log N(x_j | mu_k, Sigma_k): [n, k] for x: [n, d], means: [k, d], covariances [k, d, d] / [k, d]."""
  d = x.shape[1]
  const = d * math.log(2.0 * math.pi)
  if covariance_type == "full":
    chol = jnp.linalg.cholesky(covariances)  # [k, d, d] lower
    eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), covariances.shape)
    chol_inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)  # L^{-1}: [k, d, d]
    y = jnp.einsum("kij,nj->nki", chol_inv, x) - jnp.einsum("kij,kj->ki", chol_inv, means)[None]  # [n, k, d]
    half_log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # [k]
    return -0.5 * (const + jnp.sum(y * y, axis=-1)) - half_log_det[None, :]
  prec = 1.0 / covariances  # [k, d]
  maha = ((x * x) @ prec.T - 2.0 * x @ (means * prec).T + jnp.sum(means * means * prec, axis=1)[None, :])
  return -0.5 * (const + jnp.maximum(maha, 0.0) + jnp.sum(jnp.log(covariances), axis=1)[None, :])


def _weighted_log_prob(x, weights, means, covariances, covariance_type):
  return estimate_log_gaussian_prob(x, means, covariances, covariance_type) + jnp.log(weights)[None, :]


def e_step(x: jax.Array, weights: jax.Array, means: jax.Array, covariances: jax.Array,
           covariance_type: str = "full") -> tuple[jax.Array, jax.Array]:
  """E-step. x: [n, d] -> (mean log-likelihood [], log responsibilities log gamma [n, k])."""
  wlp = _weighted_log_prob(x, weights, means, covariances, covariance_type)
  log_norm = jax.nn.logsumexp(wlp, axis=1)  # [n] log p(x_j)
  return jnp.mean(log_norm), wlp - log_norm[:, None]


def _m_step_resp(x, resp, covariance_type, reg_covar):
  n, d = x.shape
  nk = jnp.sum(resp, axis=0) + 10 * jnp.finfo(x.dtype).eps  # [k]
  means = (resp.T @ x) / nk[:, None]
  if covariance_type == "full":
    diff = x[None, :, :] - means[:, None, :]  # [k, n, d]
    cov = jnp.einsum("nk,kni,knj->kij", resp, diff, diff) / nk[:, None, None]
    cov = cov + reg_covar * jnp.eye(d, dtype=x.dtype)[None]
  else:
    avg_x2 = (resp.T @ (x * x)) / nk[:, None]
    cov = jnp.maximum(avg_x2 - means * means, 0.0) + reg_covar
  weights = nk / n
  return weights / jnp.sum(weights), means, cov


def m_step(x: jax.Array, log_resp: jax.Array, covariance_type: str = "full",
           reg_covar: float = 1e-6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """M-step. x: [n, d], log_resp: [n, k] -> (weights [k], means [k, d], covariances [k, d, d] | [k, d])."""
  return _m_step_resp(x, jnp.exp(log_resp), covariance_type, reg_covar)


# ----------------------------------------------------------------------------------------------------------------
# EM loop
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("covariance_type", "max_iter"))
def _em(x, weights, means, covariances, tol, reg_covar, covariance_type, max_iter):
  dtype = x.dtype

  def cond(state):
    *_, i, converged, _ = state
    return (i < max_iter) & ~converged

  def body(state):
    w, mu, cov, prev_ll, i, _, history = state
    ll, log_resp = e_step(x, w, mu, cov, covariance_type)
    w, mu, cov = m_step(x, log_resp, covariance_type, reg_covar)
    return w, mu, cov, ll, i + 1, jnp.abs(ll - prev_ll) < tol, history.at[i].set(ll)

  init = (weights, means, covariances, jnp.asarray(-jnp.inf, dtype), jnp.zeros((), jnp.int32),
          jnp.zeros((), bool), jnp.full((max_iter,), jnp.nan, dtype))
  w, mu, cov, _, num_iter, converged, history = lax.while_loop(cond, body, init)
  ll, _ = e_step(x, w, mu, cov, covariance_type)
  return GaussianMixture(weights=w, means=mu, covariances=cov, mean_log_likelihood=ll, converged=converged,
                         num_iter=num_iter, log_likelihood_history=history, covariance_type=covariance_type)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _init_from_means(x, means, reg_covar, covariance_type):
  """Weights and covariances from the hard assignment of every point to its nearest mean."""
  d2 = jnp.sum((x[:, None, :] - means[None, :, :]) ** 2, axis=-1)
  resp = jax.nn.one_hot(jnp.argmin(d2, axis=1), means.shape[0], dtype=x.dtype)
  weights, _, cov = _m_step_resp(x, resp, covariance_type, reg_covar)
  return weights, cov


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def fit(x, num_components: int, *, key: jax.Array | None = None, init_means=None, init_weights=None,
        init_covariances=None, covariance_type: str = "full", max_iter: int = 100, tol: float = 1e-3,
        reg_covar: float = 1e-6, init_params: str = "kmeans") -> GaussianMixture:
  """Fit a Gaussian mixture by EM.

  Args:
    x: [n, d] data.
    num_components: k, 1 <= k <= n.
    key: PRNG key for the initialisation (needed when ``init_means`` is None).
    init_means: [k, d] initial means, or None: ``init_params="kmeans"`` (k-means, k-means++ seeded, as
      scikit-learn's default) or ``"k-means++"`` (the seeds only). Points are then hard-assigned to the nearest
      initial mean to get the initial weights and covariances (each overridden by ``init_weights`` /
      ``init_covariances`` when given, as scikit-learn's ``weights_init`` / ``precisions_init``).
    init_weights: [k] non-negative, summing to 1, or None.
    init_covariances: [k, d, d] symmetric positive definite ("full") or [k, d] positive ("diag"), or None.
    covariance_type: "full" | "diag".
    max_iter: maximum EM iterations (static). tol: convergence threshold on the mean log-likelihood change.
    reg_covar: added to the covariance diagonals (>= 0).

  Returns:
    GaussianMixture.
  """
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"`x` must be a non-empty 2-D array [n, d]; got shape {x.shape}. Reshape it to [n, d].")
  x = x.astype(jnp.result_type(x, jnp.float32))
  n, d = x.shape
  k = num_components
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
    raise ValueError(f"`num_components` must be an int with 1 <= num_components <= n = {n}; got {k!r}.")
  if covariance_type not in _COV_TYPES:
    raise ValueError(f"`covariance_type` must be one of {_COV_TYPES}; got {covariance_type!r}.")
  if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f"`max_iter` must be an int >= 1; got {max_iter!r}.")
  if float(tol) < 0 or float(reg_covar) < 0:
    raise ValueError(f"`tol` and `reg_covar` must be >= 0; got tol={tol}, reg_covar={reg_covar}.")
  if init_means is None:
    if key is None:
      raise ValueError("`key` (a jax.random key) is required when `init_means` is None; "
                       "pass key=jax.random.key(0) or init_means of shape [k, d].")
    if init_params == "kmeans":
      means = clustering.kmeans(x, k, key).centers
    elif init_params == "k-means++":
      means = clustering.kmeans_plus_plus(x, k, key)
    else:
      raise ValueError(f"`init_params` must be 'kmeans' or 'k-means++'; got {init_params!r}.")
  else:
    means = jnp.asarray(init_means)
    if means.shape != (k, d):
      raise ValueError(f"`init_means` must have shape [num_components, d] = {(k, d)}; got shape {means.shape}.")
  means = means.astype(x.dtype)
  if init_weights is None or init_covariances is None:
    weights, cov = _init_from_means(x, means, reg_covar, covariance_type)
  if init_weights is not None:
    w0 = jnp.asarray(init_weights)
    if w0.shape != (k,):
      raise ValueError(f"`init_weights` must have shape [num_components] = ({k},); got shape {w0.shape}.")
    if _is_concrete(w0) and (bool(jnp.any(w0 < 0)) or abs(float(jnp.sum(w0)) - 1.0) > 1e-5):
      raise ValueError(f"`init_weights` must be non-negative probabilities summing to 1; got sum "
                       f"{float(jnp.sum(w0)):.6g}, min {float(jnp.min(w0)):.6g}.")
    weights = w0.astype(x.dtype)
  if init_covariances is not None:
    c0 = jnp.asarray(init_covariances)
    want = (k, d, d) if covariance_type == "full" else (k, d)
    if c0.shape != want:
      raise ValueError(f"`init_covariances` must have shape {want} for covariance_type={covariance_type!r}; "
                       f"got shape {c0.shape}.")
    if _is_concrete(c0):
      ok = (bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(c0)))) if covariance_type == "full"
            else bool(jnp.all(c0 > 0)))
      if not ok:
        raise ValueError("`init_covariances` must be positive definite (full) or positive (diag).")
    cov = c0.astype(x.dtype)
  result = _em(x, weights, means, cov, tol, reg_covar, covariance_type=covariance_type, max_iter=int(max_iter))
  if _is_concrete(result.mean_log_likelihood) and not bool(jnp.isfinite(result.mean_log_likelihood)):
    raise ValueError(f"EM produced a non-finite log-likelihood (a covariance became singular) with reg_covar="
                     f"{reg_covar}; increase `reg_covar` (e.g. 1e-4) or use fewer components.")
  return result


# ----------------------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------------------


def _check_points(result: GaussianMixture, x) -> jax.Array:
  x = jnp.asarray(x)
  d = result.means.shape[-1]
  if x.ndim != 2 or x.shape[1] != d:
    raise ValueError(f"`x` must have shape [n, d] with d = {d} (the mixture's dimension); got shape {x.shape}.")
  return x.astype(jnp.result_type(x, result.means.dtype))


@jax.jit
def _log_prob(result, x):
  wlp = _weighted_log_prob(x, result.weights, result.means, result.covariances, result.covariance_type)
  return jax.nn.logsumexp(wlp, axis=1), wlp


def log_prob(result: GaussianMixture, x) -> jax.Array:
  """Per-point log density log p(x_j) = logsumexp_k (log alpha_k + log N(x_j | mu_k, Sigma_k)): [n]."""
  return _log_prob(result, _check_points(result, x))[0]


def predict_proba(result: GaussianMixture, x) -> jax.Array:
  """Posterior responsibilities P(z = k | x_j): [n, k]."""
  lp, wlp = _log_prob(result, _check_points(result, x))
  return jnp.exp(wlp - lp[:, None])


def predict(result: GaussianMixture, x) -> jax.Array:
  """Most probable component per point: [n] int32."""
  _, wlp = _log_prob(result, _check_points(result, x))
  return jnp.argmax(wlp, axis=1).astype(jnp.int32)
