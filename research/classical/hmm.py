"""Hidden Markov models: forward–backward, Viterbi, Baum–Welch (EM) for categorical emissions (seed 003 §3.2).

The model is ``λ = (π, A, B)`` (seed 003 §3.2): initial distribution ``π [S]``, transition matrix ``A [S, S]``
(``A[i, j] = P(i_{t+1} = j | i_t = i)``) and, for categorical emissions, ``B [S, M]`` (``B[i, k] = P(o_t = k |
i_t = i)``). Inference takes the emission term as a matrix ``log_emission [T, S]`` (``log b_{i}(o_t)``), so any
emission model can be plugged in; :func:`baum_welch` fits the categorical one by maximising the seed's Q function
(the M-step is the Lagrangian solution under ``Σ π = 1``, ``Σ_j a_ij = 1``, ``Σ_k b_ik = 1``).

Numerics. The forward–backward recursion runs in probability space with per-step normalisation (Rabiner's
scaling) inside ``lax.scan`` — one ``[S] @ [S, S]`` product per step — but every exponential is taken after
subtracting a maximum in log space, so emission log-probabilities of any magnitude (e.g. ``-1e4``) do not
underflow. Zero probabilities (``log 0 = -inf`` in ``log_pi``, ``log_A`` or ``log_emission``) are allowed and
never produce NaN. A sequence of probability zero under the model gets ``log_likelihood = -inf`` and all-zero
posteriors. Viterbi runs in log space (max-product).

Variable lengths. Every inference function takes an optional ``length`` (a Python or traced int): steps
``t >= length`` are padding and are ignored, so a batch of padded sequences ``[N, T]`` with ``lengths [N]`` gives,
under ``jax.vmap``, exactly the per-sequence results. :func:`baum_welch` uses this for multiple sequences.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "ForwardBackwardResult", "ViterbiResult", "BaumWelchResult", "forward_backward", "viterbi", "baum_welch",
  "sample",
]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["log_likelihood", "posteriors", "trans_counts", "filtered"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ForwardBackwardResult:
  """Output of :func:`forward_backward`.

  log_likelihood: [] ``log P(O | λ)`` (``-inf`` if the sequence is impossible under the model).
  posteriors: [T, S] smoothed ``γ_t(i) = P(i_t = i | O, λ)``; rows ``t >= length`` are 0.
  trans_counts: [S, S] expected transition counts ``Σ_{t} ξ_t(i, j)``, ``ξ_t(i, j) = P(i_t = i, i_{t+1} = j | O,
    λ)`` summed over ``t = 0 .. length-2`` (zeros when ``compute_trans_counts=False``).
  filtered: [T, S] filtered ``P(i_t = i | o_1..o_t, λ)`` (normalised forward variables α); rows ``t >= length``
    repeat the last valid row.
  """
  log_likelihood: jax.Array
  posteriors: jax.Array
  trans_counts: jax.Array
  filtered: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["path", "log_prob"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ViterbiResult:
  """Output of :func:`viterbi`.

  path: [T] int32 most probable state sequence ``argmax_I P(I, O | λ)``; entries ``t >= length`` are -1.
  log_prob: [] ``max_I log P(I, O | λ)`` (``-inf`` if no path has positive probability; the path is then
    arbitrary).
  """
  path: jax.Array
  log_prob: jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["log_pi", "log_A", "log_B", "log_likelihood", "log_likelihood_history", "converged",
                                "num_iter"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class BaumWelchResult:
  """Output of :func:`baum_welch`.

  log_pi: [S], log_A: [S, S], log_B: [S, M] fitted log parameters.
  log_likelihood: [] total log-likelihood of all sequences under the returned parameters.
  log_likelihood_history: [max_iter] entry ``i`` = total log-likelihood under the parameters at the start of
    iteration ``i`` (before its M-step); entries ``i >= num_iter`` are ``-inf`` (padding).
  converged: [] bool, True if the log-likelihood gain of an iteration fell below ``tol`` before ``max_iter``.
  num_iter: [] int32 number of EM iterations (E-step + M-step) performed.
  """
  log_pi: jax.Array
  log_A: jax.Array
  log_B: jax.Array
  log_likelihood: jax.Array
  log_likelihood_history: jax.Array
  converged: jax.Array
  num_iter: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers (Python, static shapes only).


def _float_dtype(*xs: Any) -> Any:
  return jnp.result_type(*xs, jnp.float32)


def _check_model(log_pi: Any, log_A: Any, log_emission: Any) -> tuple[int, int]:
  for name, x in (("log_pi", log_pi), ("log_A", log_A), ("log_emission", log_emission)):
    if not hasattr(x, "shape"):
      raise ValueError(f"{name} must be an array, got {type(x).__name__}; pass jnp.asarray({name}).")
  if log_pi.ndim != 1 or log_pi.shape[0] < 1:
    raise ValueError(f"log_pi must have shape [S] with S >= 1, got shape {tuple(log_pi.shape)}; pass the log "
                     "initial-state distribution as a vector (vmap over a leading batch axis).")
  s = log_pi.shape[0]
  if tuple(log_A.shape) != (s, s):
    raise ValueError(f"log_A must have shape [S, S] = {(s, s)} to match log_pi [S={s}], got shape "
                     f"{tuple(log_A.shape)}; pass the log transition matrix with rows indexed by the source state.")
  if log_emission.ndim != 2 or log_emission.shape[1] != s or log_emission.shape[0] < 1:
    raise ValueError(f"log_emission must have shape [T, S] with T >= 1 and S = {s}, got shape "
                     f"{tuple(log_emission.shape)}; pass log b_i(o_t) with time on axis 0 and states on axis 1 "
                     "(vmap over sequences).")
  for name, x in (("log_pi", log_pi), ("log_A", log_A), ("log_emission", log_emission)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must be a floating-point array of log-probabilities, got dtype {x.dtype}; "
                       f"pass jnp.log(probabilities).")
  return int(log_emission.shape[0]), s


def _check_length(length: Any, t: int) -> None:
  if length is None:
    return
  if hasattr(length, "shape") and tuple(length.shape) != ():
    raise ValueError(f"length must be a scalar int (per sequence), got shape {tuple(length.shape)}; "
                     "use jax.vmap over (log_emission, length) for several sequences.")
  if not isinstance(length, jax.core.Tracer):
    v = int(np.asarray(length))
    if not 1 <= v <= t:
      raise ValueError(f"length must lie in [1, T={t}], got {v}; pass the number of valid (unpadded) steps.")


# ----------------------------------------------------------------------------------------------------------------
# Forward–backward.


def _safe_shift(u: jax.Array, axis: int = -1) -> jax.Array:
  """max(u) along ``axis`` with non-finite maxima (all -inf) replaced by 0, so ``exp(u - m)`` never gives NaN."""
  m = jnp.max(u, axis=axis, keepdims=True)
  return jnp.where(jnp.isfinite(m), m, 0.0)


def _safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
  return a / jnp.where(b > 0, b, 1.0)


@functools.partial(jax.jit, static_argnames=("compute_trans_counts",))
def _forward_backward(log_pi, log_A, log_emission, length, compute_trans_counts):
  dtype = _float_dtype(log_pi, log_A, log_emission)
  log_pi, log_A, log_e = (jnp.asarray(v, dtype) for v in (log_pi, log_A, log_emission))
  t_len, s = log_e.shape
  A = jnp.exp(log_A)
  ts = jnp.arange(t_len)
  # Per-step offsets m_t = max_i log b_i(o_t), taken out before anything is added to the emission terms (so large
  # magnitudes, e.g. -1e4 in float32, lose no precision) and added back to the log-likelihood.
  e_shift = _safe_shift(log_e)
  log_e = log_e - e_shift
  e_total = jnp.sum(jnp.where(ts < length, e_shift[:, 0], 0.0))

  def normalise(log_u):
    # log_u [S] = log(predicted) + log b(o_t); returns normalised α_t and log c_t = log Σ_i exp(log_u_i).
    m = _safe_shift(log_u)
    ex = jnp.exp(log_u - m)
    c = jnp.sum(ex)
    return _safe_div(ex, c), jnp.log(c) + m[0]

  alpha0, logc0 = normalise(log_pi + log_e[0])

  def fwd(alpha_prev, inp):
    log_e_t, t = inp
    pred = alpha_prev @ A
    alpha, logc = normalise(jnp.log(pred) + log_e_t)
    valid = t < length
    alpha = jnp.where(valid, alpha, alpha_prev)
    return alpha, (alpha, jnp.where(valid, logc, 0.0))

  _, (alphas, logcs) = lax.scan(fwd, alpha0, (log_e[1:], ts[1:]))
  alphas = jnp.concatenate([alpha0[None], alphas], axis=0)
  log_likelihood = logc0 + jnp.sum(logcs) + e_total

  # Backward pass with β_t normalised to sum 1 (any per-step constant cancels in γ and ξ below).
  uniform = jnp.full((s,), 1.0 / s, dtype)

  def bwd(beta_next, inp):
    log_e_next, t = inp  # step t uses o_{t+1}
    log_w = log_e_next + jnp.log(beta_next)
    w = jnp.exp(log_w - _safe_shift(log_w))
    b = A @ w
    sb = jnp.sum(b)
    valid = t + 1 < length
    beta = jnp.where(valid, _safe_div(b, sb), uniform)
    return beta, (beta, jnp.where(valid, w, 0.0), jnp.where(valid, sb, 0.0))

  _, (betas, ws, sbs) = lax.scan(bwd, uniform, (log_e[1:], ts[:-1]), reverse=True)
  betas = jnp.concatenate([betas, uniform[None]], axis=0)

  gamma = alphas * betas
  gamma = _safe_div(gamma, jnp.sum(gamma, axis=1, keepdims=True))
  gamma = jnp.where((ts < length)[:, None], gamma, 0.0)

  if compute_trans_counts and t_len > 1:
    # ξ_t(i, j) = α_t(i) A_ij w_{t+1}(j) / Z_t with Z_t = α_t · (A w_{t+1}) = sb_t (α_t · β_t).
    z = sbs * jnp.sum(alphas[:-1] * betas[:-1], axis=1)
    trans_counts = A * (alphas[:-1].T @ _safe_div(ws, z[:, None]))
  else:
    trans_counts = jnp.zeros((s, s), dtype)
  # An impossible sequence: keep the documented all-zero posteriors.
  possible = log_likelihood > -jnp.inf
  gamma = jnp.where(possible, gamma, 0.0)
  trans_counts = jnp.where(possible, trans_counts, 0.0)
  return ForwardBackwardResult(log_likelihood=log_likelihood, posteriors=gamma, trans_counts=trans_counts,
                               filtered=alphas)


def forward_backward(log_pi: jax.Array, log_A: jax.Array, log_emission: jax.Array, *,
                     length: Optional[Any] = None, compute_trans_counts: bool = True) -> ForwardBackwardResult:
  """Forward–backward smoothing of one sequence (jitted; vmap over sequences).

  Args:
    log_pi: [S] log initial-state probabilities ``log π``.
    log_A: [S, S] log transition matrix, ``log_A[i, j] = log P(i_{t+1} = j | i_t = i)``.
    log_emission: [T, S] ``log b_i(o_t)`` for the observed sequence (for categorical emissions
      ``log_B[:, obs].T``).
    length: optional scalar int in ``[1, T]`` (may be traced): number of valid steps; later steps are padding.
    compute_trans_counts: also return the expected transition counts ``Σ_t ξ_t`` ([S, S]; one extra
      ``[S, T] @ [T, S]`` product).

  Returns:
    :class:`ForwardBackwardResult` (log_likelihood [], posteriors [T, S], trans_counts [S, S], filtered [T, S]).
  """
  t, _ = _check_model(log_pi, log_A, log_emission)
  _check_length(length, t)
  length = jnp.asarray(t if length is None else length, jnp.int32)
  return _forward_backward(log_pi, log_A, log_emission, length, compute_trans_counts=compute_trans_counts)


# ----------------------------------------------------------------------------------------------------------------
# Viterbi.


@jax.jit
def _viterbi(log_pi, log_A, log_emission, length):
  dtype = _float_dtype(log_pi, log_A, log_emission)
  log_pi, log_A, log_e = (jnp.asarray(v, dtype) for v in (log_pi, log_A, log_emission))
  t_len, s = log_e.shape
  ts = jnp.arange(t_len)
  states = jnp.arange(s, dtype=jnp.int32)
  # δ_t is kept relative to its maximum (offsets summed separately), and the emission terms relative to their
  # per-step maximum, so that no large magnitude is ever added to a small one (precision in float32).
  e_shift = _safe_shift(log_e)
  log_e = log_e - e_shift
  e_total = jnp.sum(jnp.where(ts < length, e_shift[:, 0], 0.0))
  new0 = log_pi + log_e[0]
  off0 = _safe_shift(new0)[0]

  def fwd(rel_prev, inp):
    log_e_t, t = inp
    scores = rel_prev[:, None] + log_A  # [S_from, S_to]
    psi = jnp.argmax(scores, axis=0).astype(jnp.int32)
    new = jnp.max(scores, axis=0) + log_e_t
    off = _safe_shift(new)[0]
    valid = t < length
    # Padding steps carry δ unchanged and point every state to itself, so backtracking passes through them.
    return jnp.where(valid, new - off, rel_prev), (jnp.where(valid, psi, states), jnp.where(valid, off, 0.0))

  rel_last, (psis, offs) = lax.scan(fwd, new0 - off0, (log_e[1:], ts[1:]))
  last = jnp.argmax(rel_last).astype(jnp.int32)
  log_prob = jnp.max(rel_last) + off0 + jnp.sum(offs) + e_total

  def back(state, psi_t):
    prev = psi_t[state]
    return prev, prev

  _, path = lax.scan(back, last, psis, reverse=True)
  path = jnp.concatenate([path, last[None]])
  path = jnp.where(ts < length, path, -1).astype(jnp.int32)
  return ViterbiResult(path=path, log_prob=log_prob)


def viterbi(log_pi: jax.Array, log_A: jax.Array, log_emission: jax.Array, *,
            length: Optional[Any] = None) -> ViterbiResult:
  """Most probable state path ``argmax_I P(I, O | λ)`` by max-product dynamic programming (jitted; vmap-able).

  Ties are broken towards the lowest state index (as ``np.argmax``).

  Args:
    log_pi: [S] log initial-state probabilities.
    log_A: [S, S] log transition matrix (rows: source state).
    log_emission: [T, S] ``log b_i(o_t)``.
    length: optional scalar int in ``[1, T]`` (may be traced); path entries ``t >= length`` are -1.

  Returns:
    :class:`ViterbiResult` (path [T] int32, log_prob []).
  """
  t, _ = _check_model(log_pi, log_A, log_emission)
  _check_length(length, t)
  length = jnp.asarray(t if length is None else length, jnp.int32)
  return _viterbi(log_pi, log_A, log_emission, length)


# ----------------------------------------------------------------------------------------------------------------
# Baum–Welch (EM) for categorical emissions.


def _normalise_rows(counts: jax.Array, fallback: jax.Array) -> jax.Array:
  """Rows of ``counts`` normalised to sum 1; an all-zero row (state never visited) keeps its ``fallback`` row."""
  tot = jnp.sum(counts, axis=-1, keepdims=True)
  return jnp.where(tot > 0, _safe_div(counts, tot), fallback)


def _e_step(log_pi, log_A, log_B, obs, lengths):
  """Sufficient statistics summed over sequences: (start [S], trans [S, S], emit [S, M], total log-likelihood)."""
  m = log_B.shape[1]
  log_e = jnp.moveaxis(log_B[:, obs], 0, -1)  # [N, T, S]
  fb = jax.vmap(lambda le, n: _forward_backward(log_pi, log_A, le, n, compute_trans_counts=True))(log_e, lengths)
  start = jnp.sum(fb.posteriors[:, 0], axis=0)
  trans = jnp.sum(fb.trans_counts, axis=0)
  s = log_pi.shape[0]
  emit = jax.ops.segment_sum(fb.posteriors.reshape(-1, s), obs.reshape(-1), num_segments=m).T  # [S, M]
  return start, trans, emit, jnp.sum(fb.log_likelihood)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _baum_welch(pi, A, B, obs, lengths, tol, max_iter):
  dtype = pi.dtype
  obs = jnp.clip(obs.astype(jnp.int32), 0, B.shape[1] - 1)  # padded entries may hold anything

  # One E-step per loop iteration (so the forward–backward graph is compiled once): iterations 0 .. num_iter-1
  # are EM iterations (E-step, record, M-step); the last loop iteration only evaluates the final parameters.
  def body(carry):
    params, i, history, prev_ll, converged, fitting, _ = carry
    log_pi, log_A, log_B = (jnp.log(v) for v in params)
    start, trans, emit, ll = _e_step(log_pi, log_A, log_B, obs, lengths)
    new = (_normalise_rows(start, params[0]), _normalise_rows(trans, params[1]), _normalise_rows(emit, params[2]))
    params = jax.tree.map(lambda a, b: jnp.where(fitting, a, b), new, params)
    history = jnp.where(fitting, history.at[i].set(ll), history)
    converged = jnp.where(fitting, (i > 0) & (ll - prev_ll < tol), converged)
    still = fitting & ~converged & (i + 1 < max_iter)
    return params, jnp.where(fitting, i + 1, i), history, ll, converged, still, fitting

  def cond(carry):
    return carry[-1]  # a loop iteration ran in fitting mode: run once more (fitting, or the final evaluation)

  history0 = jnp.full((max_iter,), -jnp.inf, dtype)
  init = ((pi, A, B), jnp.int32(0), history0, jnp.asarray(-jnp.inf, dtype), jnp.asarray(False), jnp.asarray(True),
          jnp.asarray(True))
  params, num_iter, history, ll, converged, _, _ = lax.while_loop(cond, body, init)
  log_pi, log_A, log_B = (jnp.log(v) for v in params)
  return BaumWelchResult(log_pi=log_pi, log_A=log_A, log_B=log_B, log_likelihood=ll,
                         log_likelihood_history=history, converged=converged, num_iter=num_iter)


@functools.partial(jax.jit, static_argnames=("s", "m"))
def _random_init(key, s, m):
  """Rows drawn uniformly from the simplex (Dirichlet(1) = normalised Exp(1) draws)."""
  dtype = _float_dtype(jnp.zeros((), float))
  k1, k2, k3 = jax.random.split(key, 3)
  rows = [jax.random.exponential(k, shape, dtype) for k, shape in ((k1, (s,)), (k2, (s, s)), (k3, (s, m)))]
  return tuple(r / jnp.sum(r, axis=-1, keepdims=True) for r in rows)


def _check_prob(name: str, p: Any, shape: tuple[int, ...]) -> None:
  if tuple(np.shape(p)) != shape:
    raise ValueError(f"{name} must have shape {shape}, got {tuple(np.shape(p))}; pass probabilities "
                     "(not logs) with rows indexed by the state.")
  if not isinstance(p, jax.core.Tracer):
    a = np.asarray(p, np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
      raise ValueError(f"{name} must hold finite non-negative probabilities, got min {np.nanmin(a):.3g} "
                       f"(non-finite: {int(np.sum(~np.isfinite(a)))}); pass probabilities, not logs.")
    rows = a.reshape(-1, shape[-1]).sum(-1)
    if np.any(np.abs(rows - 1.0) > 1e-4):
      raise ValueError(f"{name} rows must sum to 1, got row sums in [{rows.min():.4g}, {rows.max():.4g}]; "
                       f"normalise with p / p.sum(-1, keepdims=True).")


def baum_welch(obs: Any, num_states: int, num_symbols: int, *, key: Optional[jax.Array] = None,
               init: Optional[Sequence[Any]] = None, max_iter: int = 100, tol: float = 1e-4,
               lengths: Optional[Any] = None) -> BaumWelchResult:
  """Fit a categorical-emission HMM ``λ = (π, A, B)`` by Baum–Welch (EM) on one or several sequences.

  E-step: forward–backward on every sequence (vmapped, padded steps masked) gives the expected start counts
  ``Σ_n γ_0``, transition counts ``Σ_n Σ_t ξ_t`` and emission counts ``Σ_n Σ_t γ_t(i) [o_t = k]``; M-step: each
  normalised (the maximiser of the seed's Q function). A state whose counts are all zero keeps its previous row
  (documented regularisation; no NaN). The loop stops after ``max_iter`` iterations, or after the first iteration
  whose log-likelihood gain over the previous one is below ``tol`` (that iteration's M-step is still applied, as in
  hmmlearn). EM never decreases the log-likelihood, so ``log_likelihood_history`` is non-decreasing up to rounding.

  Args:
    obs: [T] or [N, T] int symbols in ``[0, num_symbols)``; with [N, T], steps ``t >= lengths[n]`` are padding
      (any value).
    num_states: S (static).
    num_symbols: M (static).
    key: PRNG key for the random initial parameters (rows uniform on the simplex, i.e. Dirichlet(1)); needed when
      ``init`` is None.
    init: optional ``(pi [S], A [S, S], B [S, M])`` initial probabilities (entries that are 0 stay 0).
    max_iter: maximum number of EM iterations (static).
    tol: convergence threshold on the gain of the total log-likelihood (nats).
    lengths: optional [N] ints in ``[1, T]`` (default: all T).

  Returns:
    :class:`BaumWelchResult`.
  """
  if not hasattr(obs, "shape"):
    obs = np.asarray(obs)
  if obs.ndim not in (1, 2) or obs.shape[-1] < 1 or (obs.ndim == 2 and obs.shape[0] < 1):
    raise ValueError(f"obs must have shape [T] or [N, T] with N, T >= 1, got shape {tuple(obs.shape)}; pad "
                     "sequences of different lengths to [N, T] and pass lengths=[N].")
  if not jnp.issubdtype(obs.dtype, jnp.integer):
    raise ValueError(f"obs must hold integer symbols, got dtype {obs.dtype}; pass obs.astype(int).")
  if int(num_states) < 1 or int(num_symbols) < 1:
    raise ValueError(f"num_states and num_symbols must be >= 1, got {num_states} and {num_symbols}.")
  if int(max_iter) < 1:
    raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
  s, m = int(num_states), int(num_symbols)
  obs2 = obs[None] if obs.ndim == 1 else obs
  n, t = obs2.shape
  if lengths is None:
    lengths = np.full((n,), t, np.int32)
  else:
    if obs.ndim == 1:
      raise ValueError("lengths is only meaningful with padded obs [N, T]; got obs of shape "
                       f"{tuple(obs.shape)}: pass obs[None] or drop lengths.")
    if tuple(np.shape(lengths)) != (n,):
      raise ValueError(f"lengths must have shape [N] = ({n},) to match obs {tuple(obs.shape)}, got shape "
                       f"{tuple(np.shape(lengths))}.")
  if not isinstance(lengths, jax.core.Tracer):
    ln = np.asarray(lengths)
    if np.any(ln < 1) or np.any(ln > t):
      raise ValueError(f"lengths must lie in [1, T={t}], got values in [{ln.min()}, {ln.max()}]; every sequence "
                       "needs at least one observation.")
  if not isinstance(obs2, jax.core.Tracer):
    o = np.asarray(obs2)
    valid = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    ov = o[valid]
    if ov.size and (ov.min() < 0 or ov.max() >= m):
      raise ValueError(f"obs symbols must lie in [0, num_symbols={m}), got values in [{ov.min()}, {ov.max()}]; "
                       "increase num_symbols or re-index the symbols.")
  if init is None:
    if key is None:
      raise ValueError("baum_welch needs key= (a PRNG key) for the random initial parameters, or init=(pi, A, B).")
    pi, A, B = _random_init(key, s, m)
    dtype = pi.dtype
  else:
    if len(init) != 3:
      raise ValueError(f"init must be a tuple (pi [S], A [S, S], B [S, M]), got {len(init)} items.")
    _check_prob("init pi", init[0], (s,))
    _check_prob("init A", init[1], (s, s))
    _check_prob("init B", init[2], (s, m))
    dtype = _float_dtype(*init)
    pi, A, B = (jnp.asarray(v, dtype) for v in init)
  return _baum_welch(pi, A, B, obs2, jnp.asarray(lengths, jnp.int32), jnp.asarray(tol, dtype),
                     max_iter=int(max_iter))


# ----------------------------------------------------------------------------------------------------------------
# Sampling.


@functools.partial(jax.jit, static_argnames=("T",))
def _sample(key, pi, A, B, T):
  dtype = _float_dtype(pi, A, B)
  log_pi, log_A, log_B = (jnp.log(jnp.asarray(v, dtype)) for v in (pi, A, B))
  k0, kt = jax.random.split(key)
  keys = jax.random.split(kt, T)

  def step(state, k):
    ks, ko = jax.random.split(k)
    o = jax.random.categorical(ko, log_B[state]).astype(jnp.int32)
    nxt = jax.random.categorical(ks, log_A[state]).astype(jnp.int32)
    return nxt, (state, o)

  first = jax.random.categorical(k0, log_pi).astype(jnp.int32)
  _, (states, obs) = lax.scan(step, first, keys)
  return states, obs


def sample(key: jax.Array, pi: jax.Array, A: jax.Array, B: jax.Array, T: int) -> tuple[jax.Array, jax.Array]:
  """Draw one state/observation sequence of length ``T`` from a categorical HMM (jitted; vmap over ``key``).

  Args:
    key: PRNG key.
    pi: [S] initial probabilities; A: [S, S] transition matrix (rows: source); B: [S, M] emission matrix.
    T: sequence length (static).

  Returns:
    (states [T] int32, obs [T] int32).
  """
  if int(T) < 1:
    raise ValueError(f"T must be >= 1, got {T}.")
  s = np.shape(pi)[0] if np.ndim(pi) == 1 else None
  if s is None:
    raise ValueError(f"pi must have shape [S], got shape {tuple(np.shape(pi))}.")
  _check_prob("A", A, (s, s))
  if np.ndim(B) != 2 or np.shape(B)[0] != s:
    raise ValueError(f"B must have shape [S={s}, M], got shape {tuple(np.shape(B))}.")
  _check_prob("pi", pi, (s,))
  _check_prob("B", B, tuple(np.shape(B)))
  return _sample(key, jnp.asarray(pi), jnp.asarray(A), jnp.asarray(B), T=int(T))
