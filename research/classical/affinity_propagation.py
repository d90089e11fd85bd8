"""Affinity propagation (Frey & Dueck, "Clustering by passing messages between data points", Science 2007; seed 001).

SIMCO (seed 001 Q2) groups its triplet-loss embeddings of detected objects with affinity propagation, which picks
the number of clusters itself. Messages on a similarity matrix ``S`` (``S[i, k]``: how well ``k`` suits ``i`` as
its exemplar; the diagonal holds the *preferences*):

* responsibility ``r(i, k) <- s(i, k) - max_{k' != k} (a(i, k') + s(i, k'))``;
* availability ``a(i, k) <- min(0, r(k, k) + sum_{i' not in {i, k}} max(0, r(i', k)))`` for ``i != k`` and
  ``a(k, k) <- sum_{i' != k} max(0, r(i', k))``;
* both damped: ``msg <- damping * msg + (1 - damping) * new``; ``i`` is an exemplar when ``a(i, i) + r(i, i) > 0``.

Semantics follow ``sklearn.cluster.AffinityPropagation(affinity="precomputed")`` (scikit-learn 1.x), which the
tests check label for label:

* default preference: ``median`` of the **whole** matrix ``S`` as passed (diagonal included), as scikit-learn does
  (``np.median(affinity_matrix_)``); Frey & Dueck suggest the median of the input similarities;
* stopping: after iteration ``it`` (0-based) with ``it >= convergence_iter``, stop when every point's exemplar
  decision was the same in the last ``convergence_iter`` iterations and there is at least one exemplar;
  ``n_iter = it + 1``; otherwise ``n_iter = max_iter`` and ``converged = False`` (the last exemplars are still
  used, as scikit-learn does after its ConvergenceWarning);
* final labels: each point joins its most similar exemplar (exemplars join themselves); each cluster's exemplar is
  then re-chosen as the member ``j`` maximising ``sum_{i in cluster} S[i, j]`` (preference on the diagonal), and
  the points are assigned once more; labels are numbered by increasing exemplar index. No exemplar: labels -1;
* all similarities equal and all preferences equal (or ``n == 1``): no iterations; every point is its own exemplar
  if the preference exceeds the similarity ``S[0, n-1]``, otherwise point 0 is the single exemplar.

Difference: scikit-learn adds ``(eps * S + 100 * tiny) * N(0, 1)`` noise from its ``random_state`` to break exact
ties; here no noise is added unless ``noise_key`` is given (then the same formula with ``jax.random.normal``).
On data without exact ties the results agree; with exact ties (duplicated points) pass ``noise_key``. Among
equally similar exemplars ``argmax`` takes the lowest point index.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["AffinityPropagationResult", "affinity_propagation", "exemplar_indices"]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["exemplars", "labels", "n_iter", "converged"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class AffinityPropagationResult:
  """exemplars: [n] bool; labels: [n] int32 in [0, #exemplars) by increasing exemplar index (-1: no exemplar);
  n_iter: [] int32 message-passing iterations run; converged: [] bool."""
  exemplars: jax.Array
  labels: jax.Array
  n_iter: jax.Array
  converged: jax.Array


def _colsum(x: jax.Array, sequential: bool) -> jax.Array:
  """x: [n, k] -> [k] column sums; ``sequential`` adds the rows one by one in index order, as numpy does."""
  if not sequential:
    return jnp.sum(x, axis=0)
  return lax.fori_loop(0, x.shape[0], lambda i, acc: acc + x[i], jnp.zeros(x.shape[1:], x.dtype), unroll=4)


def _messages(s: jax.Array, damping: jax.Array, max_iter: jax.Array, convergence_iter: int, sequential: bool):
  """s: [n, n] with preferences on the diagonal -> (exemplar mask [n], n_iter, converged)."""
  n = s.shape[0]
  ind = jnp.arange(n)
  d = damping.astype(s.dtype)

  def cond(state):
    it, _, _, _, _, done = state
    return (it < max_iter) & ~done

  def body(state):
    it, r, a, hist, _, _ = state
    tmp = a + s
    best = jnp.argmax(tmp, axis=1)
    y = tmp[ind, best]
    y2 = jnp.max(tmp.at[ind, best].set(-jnp.inf), axis=1)
    r_new = (s - y[:, None]).at[ind, best].set(s[ind, best] - y2)
    r = r * d + r_new * (1 - d)
    rp = jnp.maximum(r, 0).at[ind, ind].set(jnp.diagonal(r))
    neg_a = rp - _colsum(rp, sequential)  # -a_new before clipping
    da = jnp.diagonal(neg_a)
    neg_a = jnp.maximum(neg_a, 0).at[ind, ind].set(da)
    a = a * d - neg_a * (1 - d)
    e = (jnp.diagonal(a) + jnp.diagonal(r)) > 0
    hist = hist.at[:, it % convergence_iter].set(e)
    se = jnp.sum(hist, axis=1)
    stable = jnp.all((se == convergence_iter) | (se == 0))
    done = (it >= convergence_iter) & stable & jnp.any(e)
    return it + 1, r, a, hist, e, done

  zeros = jnp.zeros_like(s)
  init = (jnp.zeros((), jnp.int32), zeros, zeros, jnp.zeros((n, convergence_iter), jnp.int32),
          jnp.zeros((n,), bool), jnp.zeros((), bool))
  it, _, _, _, e, done = lax.while_loop(cond, body, init)
  return e, it, done


def _assign(s: jax.Array, exemplars: jax.Array) -> jax.Array:
  """Point index of each point's most similar exemplar ([n] int32); exemplars map to themselves."""
  n = s.shape[0]
  nearest = jnp.argmax(jnp.where(exemplars[None, :], s, -jnp.inf), axis=1).astype(jnp.int32)
  return jnp.where(exemplars, jnp.arange(n, dtype=jnp.int32), nearest)


def _finish(s: jax.Array, exemplars: jax.Array, sequential: bool) -> tuple[jax.Array, jax.Array]:
  """Refine exemplars (max within-cluster similarity sum) and label points; s: [n, n] -> (mask [n], labels [n])."""
  n = s.shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)
  owner = _assign(s, exemplars)  # [n]
  same = owner[:, None] == owner[None, :]  # [n, n]: i and j in one cluster
  score = _colsum(jnp.where(same, s, 0), sequential)  # [n]: sum_{i in cluster(j)} S[i, j]
  member = owner[None, :] == idx[:, None]  # [n (exemplar e), n (point j)]
  best = jnp.argmax(jnp.where(member, score[None, :], -jnp.inf), axis=1).astype(jnp.int32)  # [n]
  refined = jnp.zeros((n,), bool).at[jnp.where(exemplars, best, n)].set(True, mode="drop")
  owner = _assign(s, refined)
  rank = jnp.cumsum(refined.astype(jnp.int32)) - 1
  labels = jnp.where(jnp.any(refined), rank[owner], -1).astype(jnp.int32)
  return refined, labels


def _affinity_propagation(s, preference, damping, max_iter, noise_key, convergence_iter, sequential_sums):
  s = jnp.asarray(s)
  s = s.astype(jnp.result_type(s, jnp.float32))
  n = s.shape[0]
  preference = jnp.median(s) if preference is None else preference
  preference = jnp.broadcast_to(jnp.asarray(preference, s.dtype), (n,))
  damping = jnp.asarray(damping, s.dtype)
  off = ~jnp.eye(n, dtype=bool)
  # scikit-learn's degenerate case: all off-diagonal similarities equal and all preferences equal.
  s_off0 = s[0, 1] if n > 1 else s[0, 0]
  all_equal = jnp.all(jnp.where(off, s == s_off0, True)) & jnp.all(preference == preference[0])
  ref_sim = s[0, n - 1]
  s = s.at[jnp.arange(n), jnp.arange(n)].set(preference)
  if noise_key is not None:
    finfo = jnp.finfo(s.dtype)
    s = s + (finfo.eps * s + finfo.tiny * 100) * jax.random.normal(noise_key, s.shape, s.dtype)
  e, n_iter, converged = _messages(s, damping, max_iter, convergence_iter, sequential_sums)
  exemplars, labels = _finish(s, e, sequential_sums)
  if n == 1:
    all_equal = jnp.ones((), bool)
  each_own = preference[0] > ref_sim
  eq_ex = jnp.where(each_own, jnp.ones((n,), bool), jnp.arange(n) == 0)
  eq_labels = jnp.where(each_own, jnp.arange(n, dtype=jnp.int32), 0)
  return AffinityPropagationResult(
      exemplars=jnp.where(all_equal, eq_ex, exemplars),
      labels=jnp.where(all_equal, eq_labels, labels),
      n_iter=jnp.where(all_equal, 0, n_iter).astype(jnp.int32),
      converged=jnp.where(all_equal, True, converged))


_affinity_propagation_jit = jax.jit(_affinity_propagation,
                                    static_argnames=("convergence_iter", "sequential_sums"))


def affinity_propagation(s, *, preference=None, damping: float = 0.5, max_iter: int = 200, convergence_iter: int = 15,
                         noise_key: jax.Array | None = None,
                         sequential_sums: bool = False) -> AffinityPropagationResult:
  """Affinity propagation clustering of a similarity matrix (Frey & Dueck 2007, Science 315; seed 001 Q2).

  Args:
    s: [n, n] similarities (larger = more similar), e.g. ``-||x_i - x_j||^2``; the diagonal is replaced by the
      preferences. Finite.
    preference: scalar or [n]; None: the median of ``s`` (whole matrix, as scikit-learn).
    damping: in [0.5, 1).
    max_iter: maximum number of message-passing iterations (may be traced).
    convergence_iter: number of iterations the exemplar set must stay unchanged to stop (static).
    noise_key: optional PRNG key: add scikit-learn's tiny tie-breaking noise to ``s``.
    sequential_sums: (static) add column sums row by row in index order as numpy does, which makes the messages
      bitwise equal to scikit-learn's in float64 (needed only where exact ties make rounding decide); costs ``n``
      sequential steps per iteration.

  Returns:
    ``AffinityPropagationResult`` (a pytree): ``exemplars`` [n] bool, ``labels`` [n] int32, ``n_iter``, ``converged``.
    Jit- and vmap-able (all arguments but ``convergence_iter``/``sequential_sums`` may be traced).
  """
  shape = tuple(jnp.shape(s))
  if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
    raise ValueError(f"`s` must be a non-empty square similarity matrix [n, n]; got shape {shape}. For points "
                     f"x: [n, d] pass e.g. -squared Euclidean distances.")
  n = shape[0]
  dtype = jnp.result_type(s, jnp.float32)
  if preference is not None and jnp.ndim(preference) != 0 and tuple(jnp.shape(preference)) != (n,):
    raise ValueError(f"`preference` must be a scalar or have shape ({n},) for s of shape {shape}; got shape "
                     f"{jnp.shape(preference)}.")
  if not isinstance(damping, jax.core.Tracer) and not 0.5 <= float(damping) < 1.0:
    raise ValueError(f"`damping` must lie in [0.5, 1); got {damping}. Use e.g. 0.5 (scikit-learn's default) or "
                     f"0.9 when messages oscillate.")
  if (not isinstance(max_iter, jax.core.Tracer) and int(max_iter) < 1) or int(convergence_iter) < 1:
    raise ValueError(f"`max_iter` and `convergence_iter` must be >= 1; got {max_iter} and {convergence_iter}.")
  traced = any(isinstance(x, jax.core.Tracer) for x in (s, preference, damping, max_iter, noise_key))
  if traced:
    return _affinity_propagation(s, preference, damping, max_iter, noise_key, convergence_iter=int(convergence_iter),
                                 sequential_sums=bool(sequential_sums))
  # Concrete input: check and prepare on the host (no small eager device programs), then one jitted call.
  s = np.asarray(s).astype(dtype)
  if not np.all(np.isfinite(s)):
    raise ValueError(f"`s` of shape {shape} holds NaN or inf; use a large negative finite similarity instead.")
  preference = np.median(s) if preference is None else np.asarray(preference)
  preference = np.broadcast_to(preference.astype(dtype), (n,))
  return _affinity_propagation_jit(s, preference, np.asarray(damping, dtype), np.asarray(max_iter, np.int32),
                                   noise_key, convergence_iter=int(convergence_iter),
                                   sequential_sums=bool(sequential_sums))


def exemplar_indices(result: AffinityPropagationResult) -> np.ndarray:
  """Host helper: the exemplar (cluster centre) indices, sorted, [K] int (scikit-learn's cluster_centers_indices_)."""
  return np.flatnonzero(np.asarray(result.exemplars))
