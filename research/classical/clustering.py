"""k-means (Lloyd + k-means++), the Hungarian algorithm and Cnak, Cluster Number Assisted K-means (seed 000 Q7).

* ``kmeans``: Lloyd's algorithm from k-means++ (Arthur & Vassilvitskii 2007, greedy variant with
  ``2 + floor(log k)`` candidates per centre as in scikit-learn), random-point or user-given centres; ``n_init``
  restarts run in parallel (``vmap``) and the lowest inertia wins. Stopping rule as scikit-learn: labels unchanged
  between two iterations, or total squared centre shift ``<= tol * mean(var(x, axis=0))``.
  **Empty cluster**: a centre that loses all its points KEEPS its previous position (no reseeding; scikit-learn
  instead moves it to a far-away point). It may win points back in a later iteration.
* ``linear_sum_assignment``: Kuhn–Munkres / Hungarian algorithm with row and column potentials (the O(n^2 m)
  shortest-augmenting-path form), one row added per outer step, for square or rectangular cost matrices;
  output convention of ``scipy.optimize.linear_sum_assignment``. Jit- and vmap-able.
* ``cnak``: Saha & Mukherjee, "CNAK: Cluster Number Assisted K-means", Pattern Recognition 110 (2021). For each
  candidate k: k-means (k-means++ seeding) on the whole data gives the reference centroids; ``num_samples`` (T)
  random subsamples of size ``floor(sample_fraction * n)`` (gamma n, drawn without replacement) are clustered
  with k-means; each sample's centroids are matched one-to-one to the reference centroids with Kuhn–Munkres on
  the Euclidean distance matrix; the sample's score is the mean matched centroid distance and the KM score of k
  is its mean over the T samples. The chosen k minimises the KM score. Choices (documented differences to the
  authors' code, github.com/Jayasree-Saha/CNAK): the reference is k-means on the full data (their code matches
  every pair of sample centroid sets instead); T is fixed (their code grows T until a coefficient-of-variation
  threshold is met); ``k_max`` is inclusive. The T samples run in parallel under ``vmap``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["KMeansResult", "CnakResult", "kmeans", "kmeans_plus_plus", "linear_sum_assignment", "cnak"]


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _float_dtype(x) -> jnp.dtype:
  return jnp.result_type(x, jnp.float32)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_data(x, name: str = "x") -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"`{name}` must be a 2-D array [n, d] of points; got shape {x.shape}. "
                     f"Reshape it, e.g. x.reshape(n, -1).")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"`{name}` must hold at least one point with at least one feature; got shape {x.shape}.")
  return x.astype(_float_dtype(x))


def _sq_dists(x: jax.Array, x_sq: jax.Array, c: jax.Array) -> jax.Array:
  """Squared Euclidean distances ``[n, k]`` between x: [n, d] (x_sq: [n] = |x|^2) and c: [k, d], clamped >= 0."""
  d2 = x_sq[:, None] - 2.0 * (x @ c.T) + jnp.sum(c * c, axis=1)[None, :]
  return jnp.maximum(d2, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass, data_fields=["centers", "labels", "inertia", "num_iter"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class KMeansResult:
  """k-means result. centers: [k, d]; labels: [n] int32 (nearest final centre); inertia: [] (weighted) sum of
  squared distances to the nearest centre; num_iter: [] int32 Lloyd iterations run (of the best restart)."""
  centers: jax.Array
  labels: jax.Array
  inertia: jax.Array
  num_iter: jax.Array


# The private k-means functions take point weights w: [n] (0 = point absent, which is how Cnak's subsamples are
# represented without changing shapes) and ``num_centers`` static centre slots of which the first ``k`` (static or
# traced) are active; inactive slots never receive points and are left at zero.


def _masked_sq_dists(x, x_sq, c, active):
  return jnp.where(active[None, :], _sq_dists(x, x_sq, c), jnp.inf)


def _kmeans_plus_plus(x: jax.Array, w: jax.Array, num_centers: int, k, key: jax.Array,
                      n_local_trials: int) -> jax.Array:
  """Greedy k-means++ seeding. x: [n, d], w: [n] -> centres [num_centers, d]; the first k are data points."""
  n, d = x.shape
  x_sq = jnp.sum(x * x, axis=1)
  log_w = jnp.log(w)  # -inf for absent points
  key, sub = jax.random.split(key)
  first = jax.random.categorical(sub, log_w)
  centers = jnp.zeros((num_centers, d), x.dtype).at[0].set(x[first])
  closest = _sq_dists(x, x_sq, x[first][None])[:, 0]  # [n] squared distance to the nearest chosen centre

  def body(c, carry):
    centers, closest, key = carry
    key, sub = jax.random.split(key)
    potential = jnp.sum(w * closest)
    # D^2 sampling; if every point already sits on a centre (fewer distinct points than k), sample by weight.
    logits = jnp.where(potential > 0, log_w + jnp.log(closest), log_w)
    cand = jax.random.categorical(sub, logits, shape=(n_local_trials,))  # [L]
    new_closest = jnp.minimum(closest[:, None], _sq_dists(x, x_sq, x[cand]))  # [n, L]
    best = jnp.argmin(w @ new_closest)
    return centers.at[c].set(x[cand[best]]), new_closest[:, best], key

  centers, _, _ = lax.fori_loop(1, k, body, (centers, closest, key))
  return centers


def _default_local_trials(k: int) -> int:
  return 2 + int(math.log(k))


def _random_init(x: jax.Array, w: jax.Array, num_centers: int, key: jax.Array) -> jax.Array:
  idx = jax.random.choice(key, x.shape[0], (num_centers,), replace=False, p=w / jnp.sum(w))
  return x[idx]


def _tolerance(x: jax.Array, w: jax.Array, tol) -> jax.Array:
  """scikit-learn's absolute tolerance: tol * mean feature variance (of the weighted points)."""
  w_sum = jnp.sum(w)
  mean = (w @ x) / w_sum
  var = (w @ (x - mean) ** 2) / w_sum
  return jnp.asarray(tol, x.dtype) * jnp.mean(var)


def _lloyd(x: jax.Array, w: jax.Array, centers: jax.Array, active: jax.Array, max_iter: int,
           tol_abs: jax.Array) -> KMeansResult:
  """Lloyd iterations from centers: [K, d] (active: [K] bool). Stops when labels repeat or the squared centre
  shift <= tol_abs."""
  n = x.shape[0]
  num_centers = centers.shape[0]
  x_sq = jnp.sum(x * x, axis=1)

  def assign(c):
    return jnp.argmin(_masked_sq_dists(x, x_sq, c, active), axis=1).astype(jnp.int32)

  def cond(state):
    _, _, i, done = state
    return (i < max_iter) & ~done

  def body(state):
    c, labels_old, i, _ = state
    labels = assign(c)
    sums = jax.ops.segment_sum(w[:, None] * x, labels, num_segments=num_centers)
    counts = jax.ops.segment_sum(w, labels, num_segments=num_centers)
    # Empty cluster: keep the previous centre.
    c_new = jnp.where(counts[:, None] > 0, sums / jnp.where(counts > 0, counts, 1.0)[:, None], c)
    strict = jnp.all((labels == labels_old) | (w == 0))
    shift = jnp.sum((c_new - c) ** 2)
    return c_new, labels, i + 1, strict | (shift <= tol_abs)

  init = (centers, jnp.full((n,), -1, jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
  centers, _, num_iter, _ = lax.while_loop(cond, body, init)
  labels = assign(centers)
  inertia = jnp.sum(w * jnp.sum((x - centers[labels]) ** 2, axis=1))
  return KMeansResult(centers=centers, labels=labels, inertia=inertia, num_iter=num_iter)


def _kmeans_seeded(x: jax.Array, w: jax.Array, key: jax.Array, num_centers: int, k, n_init: int, max_iter: int,
                   tol, init: str, n_local_trials: int) -> KMeansResult:
  """k-means with ``n_init`` vmapped restarts from ``init`` seeding; the lowest inertia wins. Not jitted."""
  tol_abs = _tolerance(x, w, tol)
  active = jnp.arange(num_centers) < k

  def one(key):
    if init == "k-means++":
      c0 = _kmeans_plus_plus(x, w, num_centers, k, key, n_local_trials)
    else:
      c0 = _random_init(x, w, num_centers, key)
    return _lloyd(x, w, c0, active, max_iter, tol_abs)

  runs = jax.vmap(one)(jax.random.split(key, n_init))
  best = jnp.argmin(runs.inertia)
  return jax.tree_util.tree_map(lambda a: a[best], runs)


def kmeans_core(x: jax.Array, k: int, key: jax.Array, *, n_init: int = 1, max_iter: int = 100,
                tol=1e-4) -> KMeansResult:
  """``kmeans`` without its argument checks, for use inside another jitted function (``x`` may be traced):
  k-means++ seeding, ``n_init`` vmapped restarts, unit weights. x: [n, d] -> centers [k, d], labels [n]."""
  return _kmeans_seeded(x, jnp.ones((x.shape[0],), x.dtype), key, k, k, n_init, max_iter, tol, "k-means++",
                        _default_local_trials(k))


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter", "init", "n_local_trials"))
def _kmeans_seeded_jit(x, w, key, k, n_init, max_iter, tol, init, n_local_trials):
  return _kmeans_seeded(x, w, key, k, k, n_init, max_iter, tol, init, n_local_trials)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _kmeans_from_centers_jit(x, w, centers, max_iter, tol):
  active = jnp.ones((centers.shape[0],), bool)
  return _lloyd(x, w, centers, active, max_iter, _tolerance(x, w, tol))


@functools.partial(jax.jit, static_argnames=("k", "n_local_trials"))
def _kmeans_plus_plus_jit(x, w, key, k, n_local_trials):
  return _kmeans_plus_plus(x, w, k, k, key, n_local_trials)


def _check_k(k, n: int, name: str = "k") -> None:
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise ValueError(f"`{name}` must be a Python int; got {type(k).__name__} {k!r}.")
  if not 1 <= k <= n:
    raise ValueError(f"`{name}` must satisfy 1 <= {name} <= n = {n} (number of points); got {name}={k}. "
                     f"Use fewer clusters or more points.")


def _check_weights(sample_weight, n: int, dtype) -> jax.Array:
  if sample_weight is None:
    return jnp.ones((n,), dtype)
  w = jnp.asarray(sample_weight)
  if w.shape != (n,):
    raise ValueError(f"`sample_weight` must have shape [n] = ({n},); got shape {w.shape}.")
  w = w.astype(dtype)
  if _is_concrete(w) and (bool(jnp.any(w < 0)) or not bool(jnp.all(jnp.isfinite(w))) or float(jnp.sum(w)) <= 0):
    raise ValueError("`sample_weight` must be finite and >= 0 with a positive sum; got negative, non-finite or "
                     "all-zero weights.")
  return w


def kmeans_plus_plus(x, k: int, key: jax.Array, *, n_local_trials: int | None = None,
                     sample_weight=None) -> jax.Array:
  """Greedy k-means++ seeding (each new centre: best of ``n_local_trials`` D^2-sampled candidates).

  x: [n, d]; k <= n; key: PRNG key; sample_weight: [n] or None. Returns centres [k, d] (rows of x).
  ``n_local_trials`` defaults to ``2 + floor(log k)`` (scikit-learn's choice); 1 gives the original k-means++.
  """
  x = _check_data(x)
  _check_k(k, x.shape[0])
  w = _check_weights(sample_weight, x.shape[0], x.dtype)
  trials = _default_local_trials(k) if n_local_trials is None else int(n_local_trials)
  if trials < 1:
    raise ValueError(f"`n_local_trials` must be >= 1; got {n_local_trials}.")
  return _kmeans_plus_plus_jit(x, w, key, k=k, n_local_trials=trials)


def kmeans(x, k: int, key: jax.Array | None = None, *, max_iter: int = 100, tol: float = 1e-4, n_init: int = 1,
           init="k-means++", n_local_trials: int | None = None, sample_weight=None) -> KMeansResult:
  """k-means clustering (Lloyd's algorithm).

  Args:
    x: [n, d] points.
    k: number of clusters, 1 <= k <= n (static).
    key: PRNG key (required unless ``init`` is an array).
    max_iter: maximum Lloyd iterations per restart (static).
    tol: relative tolerance: stop when the total squared centre shift <= tol * mean(var(x, axis=0)) (or the
      labels do not change).
    n_init: number of restarts (vmapped); the one with the lowest inertia is returned. Must be 1 for array init.
    init: ``"k-means++"`` (greedy), ``"random"`` (k distinct data points) or an array of centres [k, d].
    n_local_trials: k-means++ candidates per centre (default ``2 + floor(log k)``).
    sample_weight: [n] non-negative point weights or None (all 1).

  Returns:
    KMeansResult(centers [k, d], labels [n], inertia [], num_iter []). An empty cluster keeps its previous centre.
  """
  x = _check_data(x)
  n, d = x.shape
  _check_k(k, n)
  w = _check_weights(sample_weight, n, x.dtype)
  if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f"`max_iter` must be an int >= 1; got {max_iter!r}.")
  if not isinstance(n_init, (int, np.integer)) or n_init < 1:
    raise ValueError(f"`n_init` must be an int >= 1; got {n_init!r}.")
  if isinstance(tol, (int, float)) and tol < 0:
    raise ValueError(f"`tol` must be >= 0; got {tol}.")
  if isinstance(init, str):
    if init not in ("k-means++", "random"):
      raise ValueError(f"`init` must be 'k-means++', 'random' or an array of centres [k, d]; got {init!r}.")
    if key is None:
      raise ValueError(f"`key` (a jax.random key) is required for init={init!r}; pass key=jax.random.key(0).")
    trials = _default_local_trials(k) if n_local_trials is None else int(n_local_trials)
    return _kmeans_seeded_jit(x, w, key, k=k, n_init=int(n_init), max_iter=int(max_iter), tol=tol, init=init,
                              n_local_trials=trials)
  centers = jnp.asarray(init)
  if centers.shape != (k, d):
    raise ValueError(f"`init` centres must have shape [k, d] = {(k, d)}; got shape {centers.shape}.")
  if n_init != 1:
    raise ValueError(f"`n_init` must be 1 when `init` is an array of centres (the run is deterministic); "
                     f"got n_init={n_init}.")
  return _kmeans_from_centers_jit(x, w, centers.astype(x.dtype), max_iter=int(max_iter), tol=tol)


# ----------------------------------------------------------------------------------------------------------------
# Hungarian algorithm
# ----------------------------------------------------------------------------------------------------------------


def _hungarian(cost: jax.Array) -> jax.Array:
  """Kuhn–Munkres with potentials for cost: [n, m], n <= m. Returns the column assigned to each row, [n] int32.

  Rows are added one by one; each addition grows a shortest-augmenting-path tree over the columns (Dijkstra on
  reduced costs ``cost[i, j] - u[i] - v[j]``), updates the potentials and flips the path. Index 0 of ``u``/``v``/
  ``p`` is a sentinel (1-based rows and columns), so every loop is a fixed-shape ``lax`` loop.
  """
  n, m = cost.shape
  dtype = cost.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  a = jnp.zeros((n + 1, m + 1), dtype).at[1:, 1:].set(cost)
  cols = jnp.arange(m + 1, dtype=jnp.int32)
  # Zeros computed from `cost`: loop carries started from them vary exactly as the cost does, so the loops also
  # trace inside shard_map (a constant initial carry would be device-invariant while the body's output varies).
  zero = a[0, 0]
  zero_i = zero.astype(jnp.int32)

  def add_row(i, carry):
    u, v, p, way = carry
    p = p.at[0].set(i)
    minv = jnp.full((m + 1,), inf) + zero
    used = jnp.zeros((m + 1,), bool) | (zero_i != 0)

    def grow_cond(s):
      _, _, p, _, _, _, j0 = s
      return p[j0] != 0

    def grow(s):
      u, v, p, way, minv, used, j0 = s
      used = used.at[j0].set(True)
      i0 = p[j0]
      cur = a[i0] - u[i0] - v  # reduced costs of row i0, [m + 1]
      better = ~used & (cur < minv)
      minv = jnp.where(better, cur, minv)
      way = jnp.where(better, j0, way)
      free_minv = jnp.where(used, inf, minv)
      j1 = jnp.argmin(free_minv).astype(jnp.int32)
      delta = free_minv[j1]
      u = u.at[p].add(jnp.where(used, delta, 0.0).astype(dtype))  # rows matched to tree columns
      v = jnp.where(used, v - delta, v)
      minv = jnp.where(used, minv, minv - delta)
      return u, v, p, way, minv, used, j1

    u, v, p, way, _, _, j0 = lax.while_loop(grow_cond, grow, (u, v, p, way, minv, used, zero_i))

    def flip_cond(s):
      return s[1] != 0

    def flip(s):
      p, j0 = s
      j1 = way[j0]
      return p.at[j0].set(p[j1]), j1

    p, _ = lax.while_loop(flip_cond, flip, (p, j0))
    return u, v, p, way

  init = (jnp.zeros((n + 1,), dtype) + zero, jnp.zeros((m + 1,), dtype) + zero, jnp.zeros((m + 1,), jnp.int32) + zero_i,
          jnp.zeros((m + 1,), jnp.int32) + zero_i)
  _, _, p, _ = lax.fori_loop(1, n + 1, add_row, init)
  row_of_col = p[1:]  # 1-based row assigned to each column, 0 = unassigned
  target = jnp.where(row_of_col > 0, row_of_col - 1, n)
  return jnp.zeros((n,), jnp.int32).at[target].set(cols[:-1], mode="drop")


def _lsa(cost: jax.Array, maximize: bool = False) -> tuple[jax.Array, jax.Array]:
  """Unjitted core of ``linear_sum_assignment`` for a non-empty cost: [n, m]."""
  n, m = cost.shape
  if maximize:
    cost = -cost
  if n <= m:
    return jnp.arange(n, dtype=jnp.int32), _hungarian(cost)
  row_for_col = _hungarian(cost.T)  # [m]
  order = jnp.argsort(row_for_col)
  return row_for_col[order], jnp.arange(m, dtype=jnp.int32)[order]


_lsa_jit = jax.jit(_lsa, static_argnames=("maximize",))


def linear_sum_assignment(cost, *, maximize: bool = False) -> tuple[jax.Array, jax.Array]:
  """Minimum-cost one-to-one assignment of rows to columns (Kuhn–Munkres / Hungarian algorithm).

  Args:
    cost: [n, m] finite costs (square or rectangular; integers are cast to float).
    maximize: maximise the total instead.

  Returns:
    ``(row_ind, col_ind)``, each [min(n, m)] int32, row_ind increasing, as ``scipy.optimize.linear_sum_assignment``:
    the optimum is ``cost[row_ind, col_ind].sum()``. Under ties any optimal assignment may be returned (it can
    differ from scipy's). Jit- and vmap-able (``vmap`` over a leading axis of cost matrices of one shape); with
    concrete input, non-finite costs raise (under ``jit`` they are the caller's responsibility).
  """
  cost = jnp.asarray(cost)
  if cost.ndim != 2:
    raise ValueError(f"`cost` must be a 2-D cost matrix [n, m]; got shape {cost.shape}. "
                     f"For a batch use jax.vmap(linear_sum_assignment).")
  cost = cost.astype(_float_dtype(cost))
  if min(cost.shape) == 0:
    empty = jnp.zeros((0,), jnp.int32)
    return empty, empty
  if _is_concrete(cost) and not bool(jnp.all(jnp.isfinite(cost))):
    raise ValueError(f"`cost` of shape {cost.shape} contains NaN or inf; replace forbidden pairs with a large "
                     f"finite cost.")
  if isinstance(cost, jax.core.Tracer):
    return _lsa(cost, maximize)
  return _lsa_jit(cost, maximize=maximize)


# ----------------------------------------------------------------------------------------------------------------
# Cnak
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["k", "k_values", "scores", "score_std", "sample_scores", "centers", "labels"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class CnakResult:
  """Cnak result. k: [] chosen number of clusters (argmin of scores; the smallest k on ties); k_values: [K]
  candidates k_min..k_max; scores: [K] KM score (mean matched centroid distance over the T samples); score_std: [K]
  its standard deviation over the samples; sample_scores: [K, T]; centers: [k, d] reference centroids of the
  chosen k (k-means on the full data); labels: [n] nearest-centre labels for them."""
  k: jax.Array
  k_values: jax.Array
  scores: jax.Array
  score_std: jax.Array
  sample_scores: jax.Array
  centers: jax.Array
  labels: jax.Array


def _matched_distance(ref: jax.Array, c: jax.Array, active: jax.Array) -> jax.Array:
  """Mean Euclidean distance of the Kuhn–Munkres matching between the active rows of ref: [K, d] and c: [K, d]."""
  dist = jnp.sqrt(jnp.sum((ref[:, None, :] - c[None, :, :]) ** 2, axis=-1))  # [K, K]
  both = active[:, None] & active[None, :]
  # Pairs of one active and one inactive slot cost more than any all-active matching, so the optimum matches
  # active to active (and inactive to inactive, at cost 0).
  big = jnp.sum(jnp.where(both, dist, 0.0)) + 1.0
  cost = jnp.where(both, dist, jnp.where(active[:, None] == active[None, :], 0.0, big))
  rows, cols = _lsa(cost)
  return jnp.sum(jnp.where(active, dist[rows, cols], 0.0)) / jnp.sum(active)


@functools.partial(jax.jit, static_argnames=("k_max", "sample_size", "num_samples", "n_init", "max_iter",
                                             "n_local_trials"))
def _cnak_k(x, key, k, k_max, sample_size, num_samples, n_init, max_iter, tol, n_local_trials):
  """KM scores of one (traced) k <= k_max: [T] matched mean centroid distances, plus the reference k-means.

  The reference run (all weights 1) and the T subsample runs (weight 1 on floor(gamma n) points drawn without
  replacement, 0 elsewhere) are one vmapped k-means with ``k_max`` centre slots of which ``k`` are active, so a
  single compiled program serves every candidate k.
  """
  n = x.shape[0]
  key_w, key_km = jax.random.split(key)

  def sample_weights(key):
    idx = jax.random.permutation(key, n)[:sample_size]
    return jnp.zeros((n,), x.dtype).at[idx].set(1.0)

  w = jnp.concatenate([jnp.ones((1, n), x.dtype), jax.vmap(sample_weights)(jax.random.split(key_w, num_samples))])
  runs = jax.vmap(lambda w, key: _kmeans_seeded(x, w, key, k_max, k, n_init, max_iter, tol, "k-means++",
                                                n_local_trials))(w, jax.random.split(key_km, num_samples + 1))
  active = jnp.arange(k_max) < k
  ref = jax.tree_util.tree_map(lambda a: a[0], runs)
  scores = jax.vmap(lambda c: _matched_distance(ref.centers, c, active))(runs.centers[1:])
  return scores, ref


def cnak(x, key: jax.Array, k_max: int, *, k_min: int = 1, sample_fraction: float = 0.7, num_samples: int = 20,
         n_init: int = 3, max_iter: int = 100, tol: float = 1e-4) -> CnakResult:
  """Cnak: choose the number of clusters by the stability of k-means centroids under subsampling.

  Args:
    x: [n, d] points.
    key: PRNG key.
    k_max: largest candidate k (inclusive).
    k_min: smallest candidate k (default 1: Cnak can report a single cluster).
    sample_fraction: gamma, subsample size = floor(gamma * n) (without replacement), 0 < gamma < 1.
    num_samples: T, subsamples per k (vmapped).
    n_init: k-means++ restarts of every k-means run (reference and samples).
    max_iter, tol: k-means stopping rule (see ``kmeans``).

  Returns:
    CnakResult. One compiled program (k_max centre slots, k of them active) serves every candidate k; the
    Python loop runs over the candidates only. ``cnak`` itself is not jittable (the chosen k sets a shape).
    k-means++ uses ``2 + floor(log k_max)`` candidates per centre for every k.
  """
  x = _check_data(x)
  n = x.shape[0]
  for name, val in (("k_min", k_min), ("k_max", k_max), ("num_samples", num_samples), ("n_init", n_init),
                    ("max_iter", max_iter)):
    if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1:
      raise ValueError(f"`{name}` must be an int >= 1; got {val!r}.")
  if not 0.0 < float(sample_fraction) < 1.0:
    raise ValueError(f"`sample_fraction` (gamma) must be in (0, 1); got {sample_fraction}. "
                     f"With gamma = 1 every sample is the full data and all scores collapse.")
  sample_size = int(math.floor(sample_fraction * n))
  if k_min > k_max:
    raise ValueError(f"`k_min` must be <= `k_max`; got k_min={k_min}, k_max={k_max}.")
  if k_max > sample_size:
    raise ValueError(f"`k_max`={k_max} exceeds the subsample size floor(sample_fraction * n) = {sample_size} "
                     f"(x has shape {x.shape}); lower k_max or raise sample_fraction.")
  k_values = list(range(int(k_min), int(k_max) + 1))
  keys = jax.random.split(key, len(k_values))
  all_scores, refs = [], []
  for kk, key_k in zip(k_values, keys):
    scores, ref = _cnak_k(x, key_k, jnp.asarray(kk, jnp.int32), k_max=int(k_max), sample_size=sample_size,
                          num_samples=int(num_samples), n_init=int(n_init), max_iter=int(max_iter), tol=tol,
                          n_local_trials=_default_local_trials(int(k_max)))
    all_scores.append(scores)
    refs.append(ref)
  sample_scores = jnp.stack(all_scores)  # [K, T]
  mean = jnp.mean(sample_scores, axis=1)
  best = int(jnp.argmin(mean))
  k_hat = k_values[best]
  return CnakResult(k=jnp.asarray(k_hat, jnp.int32), k_values=jnp.asarray(k_values, jnp.int32),
                    scores=mean, score_std=jnp.std(sample_scores, axis=1), sample_scores=sample_scores,
                    centers=refs[best].centers[:k_hat], labels=refs[best].labels)
