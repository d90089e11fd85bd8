"""Markov decision processes: policy evaluation, policy iteration, value iteration, and model-free prediction by
Monte Carlo, TD(0), n-step TD and TD(λ) on sampled episodes (seed 003 §13).

Model-based (seed 003 §13.1). A finite MDP is ``P [S, A, S]`` (``P[s, a, s'] = P(s' | s, a)``), rewards
``R [S, A]`` (expected reward ``r(s, a)``) or ``R [S, A, S]`` (the seed's ``r(s, a, s')``; reduced to
``r(s, a) = Σ_s' P(s'|s,a) r(s,a,s')``) and a discount ``γ``. A policy is a stochastic matrix ``policy [S, A]``
(``π(a|s)``); deterministic policies are one-hot rows.

* :func:`policy_evaluation` solves the Bellman equation ``V = r_π + γ P_π V`` exactly (a linear solve) or
  iteratively (synchronous sweeps ``V ← r_π + γ P_π V``; the seed's in-place sweep reaches the same fixed point).
* :func:`policy_iteration` alternates exact evaluation and greedy improvement, starting from the uniform random
  policy (or ``policy0``); an action is only replaced when another one is strictly better (beyond a rounding
  tolerance), so ties cannot make it cycle between equally good policies (Sutton & Barto, Exercise 4.4).
* :func:`value_iteration` iterates the greedy operator ``[T*V](s) = max_a Σ_s' P(s'|s,a)[r + γ V(s')]`` from
  ``V = 0`` until ``max_s |V_{k+1}(s) - V_k(s)| < tol``; then ``||V_{k+1} - V*||_∞ <= tol γ / (1 - γ)``.

Discount ``γ = 1`` (episodic tasks). A *zero-reward absorbing state* (``P[s, a, s] = 1`` and ``r(s, a) = 0`` for
every ``a``) is a terminal state: its value is pinned to 0 (for ``γ < 1`` this changes nothing, 0 is its value).
``γ = 1`` is accepted only when the MDP has such a state and every state can reach one (Python-side check on
concrete inputs), and :func:`policy_evaluation` then also requires the *policy* to be proper (to reach a terminal
state with probability 1). :func:`value_iteration` and :func:`policy_iteration` with ``γ = 1`` assume the
stochastic-shortest-path setting: every improper policy collects unbounded negative reward (e.g. ``-1`` per step,
Sutton's Example 4.1); policy iteration starts from the uniform random policy, which must then be proper.

Model-free prediction (seed 003 §13.2). Episodes are padded arrays ``states [E, T+1]`` (int), ``rewards [E, T]``
and ``lengths [E]`` (int, in ``[1, T]``): episode ``e`` visits ``states[e, 0..L]`` (``L = lengths[e]``) and
receives ``rewards[e, t] = R_{t+1}`` on the transition ``t -> t+1``; ``states[e, L]`` is terminal (value 0: the
last transition never bootstraps) and entries past ``L`` are padding (ignored). Every function scans over
episodes (``lax.scan``, the value table carried from one episode to the next) and over time within an episode,
and takes ``alpha``, ``gamma`` (and ``lam``) as traced scalars, so ``jax.vmap`` over step sizes, ``λ`` or
independently sampled runs needs no retracing. Two update schedules:

* ``offline=False`` (default, "online"): the book's incremental algorithms. TD(0) updates after every step;
  n-step TD updates ``V(S_τ)`` at time ``τ + n - 1`` with the then-current ``V(S_{τ+n})``; Monte Carlo applies
  ``V(S_t) ← V(S_t) + α (G_t - V(S_t))`` at the episode end, one ``t`` after the other (constant-α MC).
* ``offline=True``: every increment of an episode is computed with the value table as it was at the episode
  start, and their sum is applied at the episode end. Under this schedule TD(λ=0) equals TD(0), TD(λ=1) equals
  every-visit MC, n-step TD with ``n = 1`` equals TD(0) and with ``n >= T`` equals every-visit MC, and the
  forward view of TD(λ) (the λ-return algorithm) equals its backward view with accumulating eligibility traces
  (Sutton & Barto §12.1-12.2) up to rounding.

:func:`td_lambda` with ``view="backward"`` and ``offline=False`` is classic online TD(λ) (accumulating traces,
``V`` updated every step); it is *not* equal to the offline λ-return algorithm (the two differ at order ``α²``).
The forward view exists only offline (it needs the whole episode).

:func:`random_walk_episodes` samples Sutton & Barto's random walk (Example 6.2: 5 states, Example 7.1: 19 states)
as padded arrays; :func:`random_walk_mdp` and :func:`random_walk_true_values` give its model and exact values.
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

__all__ = [
  "Solution", "Episodes", "policy_evaluation", "policy_iteration", "value_iteration", "q_from_v", "monte_carlo",
  "td0", "td_n", "td_lambda", "random_walk_episodes", "random_walk_mdp", "random_walk_true_values",
]


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["V", "policy", "actions", "num_iter", "converged"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Solution:
  """Output of :func:`value_iteration` and :func:`policy_iteration`; unpacks as ``V, policy, num_iter = ...``.

  V: [S] state values (of the returned policy for policy iteration; the last iterate for value iteration).
  policy: [S, A] the greedy deterministic policy as one-hot rows (feed it to :func:`policy_evaluation`).
  actions: [S] int32 the greedy action of each state (ties: the lowest action index, or the previous action in
    policy iteration).
  num_iter: [] int32 value-iteration sweeps, or policy evaluations (each followed by an improvement step).
  converged: [] bool whether the stopping rule was met before ``max_iter``.
  """
  V: jax.Array
  policy: jax.Array
  actions: jax.Array
  num_iter: jax.Array
  converged: jax.Array

  def __iter__(self):
    return iter((self.V, self.policy, self.num_iter))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["states", "rewards", "lengths"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Episodes:
  """Padded episodes (see the module docstring).

  states: [E, T+1] int32 visited states; ``states[e, lengths[e]]`` is terminal, later entries repeat it.
  rewards: [E, T] ``rewards[e, t]`` is received on the transition ``t -> t+1``; 0 past the episode end.
  lengths: [E] int32 number of transitions of each episode, in ``[1, T]``.
  """
  states: jax.Array
  rewards: jax.Array
  lengths: jax.Array

  def trim(self) -> "Episodes":
    """The same episodes (any leading batch axes) with the padding cut to the longest one (``T = max(lengths)``);
    host-side, not jittable."""
    t = int(np.max(np.asarray(self.lengths)))
    return Episodes(self.states[..., :t + 1], self.rewards[..., :t], self.lengths)


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers (Python-side, on static shapes; value checks only on concrete inputs)
# ----------------------------------------------------------------------------------------------------------------

def _is_concrete(*xs: Any) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _float_dtype(*xs: Any) -> Any:
  return jnp.result_type(*[jnp.asarray(x).dtype for x in xs], jnp.float32)


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _check_scalar(name: str, x: Any, lo: float, hi: float, *, lo_open: bool = False, hint: str = "") -> None:
  if np.ndim(x) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {_shape(x)}; vmap over it to use several values.")
  if _is_concrete(x):
    v = float(np.asarray(x))
    bad = not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo)
    if bad:
      interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
      raise ValueError(f"{name} must lie in {interval}, got {v}{hint}.")


def _check_mdp(P: Any, R: Any, gamma: Any) -> tuple[int, int]:
  """Checks shapes, that ``P`` rows are probability vectors, and ``gamma``; returns ``(S, A)``."""
  if np.ndim(P) != 3 or _shape(P)[0] != _shape(P)[2] or 0 in _shape(P):
    raise ValueError(f"P must have shape [S, A, S] (P[s, a, s'] = P(s' | s, a)) with S, A >= 1, got shape "
                     f"{_shape(P)}.")
  s, a, _ = _shape(P)
  if _shape(R) not in ((s, a), (s, a, s)):
    raise ValueError(f"R must have shape [S, A] = {(s, a)} (expected reward r(s, a)) or [S, A, S] = {(s, a, s)} "
                     f"(r(s, a, s')) to match P {_shape(P)}, got shape {_shape(R)}.")
  for name, x in (("P", P), ("R", R)):
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and not jnp.issubdtype(jnp.asarray(x).dtype,
                                                                                    jnp.integer):
      raise ValueError(f"{name} must be a real array, got dtype {jnp.asarray(x).dtype}.")
  if _is_concrete(P):
    p = np.asarray(P, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0):
      idx = np.unravel_index(np.argmin(np.where(np.isfinite(p), p, -np.inf)), p.shape)
      raise ValueError(f"P must hold finite probabilities >= 0, got P{tuple(int(i) for i in idx)} = {p[idx]}.")
    tol = 1e3 * float(jnp.finfo(_float_dtype(P)).eps)
    err = np.abs(p.sum(-1) - 1.0)
    if np.max(err) > tol:
      ws, wa = np.unravel_index(np.argmax(err), err.shape)
      raise ValueError(f"P rows must sum to 1 over s' (P[s, a, :] is a distribution); the worst row is "
                       f"P[{ws}, {wa}, :] with sum {p[ws, wa].sum():.6g}; normalise with P / P.sum(-1, keepdims=True).")
  if _is_concrete(R) and not np.all(np.isfinite(np.asarray(R, dtype=np.float64))):
    raise ValueError("R must be finite (got inf or NaN).")
  _check_scalar("gamma", gamma, 0.0, 1.0, hint=" (discount factor; 1 only for episodic MDPs)")
  return s, a


def _reach_matrix(adj: np.ndarray) -> np.ndarray:
  """Boolean transitive-reflexive closure of ``adj [S, S]`` by repeated squaring (log2 S matrix products)."""
  m = (adj | np.eye(adj.shape[0], dtype=bool)).astype(np.float64)
  for _ in range(max(1, int(np.ceil(np.log2(max(adj.shape[0], 2)))))):
    m = ((m @ m) > 0).astype(np.float64)
  return m > 0


def _check_episodic(P: Any, R: Any, gamma: Any, policy: Any = None) -> None:
  """For concrete ``gamma == 1``: a zero-reward absorbing state exists and is reachable (under ``policy``)."""
  if not _is_concrete(P, R, gamma, policy) or float(np.asarray(gamma)) != 1.0:
    return
  p = np.asarray(P, dtype=np.float64)
  r = np.asarray(_expected_reward(jnp.asarray(P), jnp.asarray(R)), dtype=np.float64)
  absorbing = _absorbing_np(p, r)
  if not absorbing.any():
    raise ValueError("gamma = 1 needs an episodic MDP: no zero-reward absorbing (terminal) state was found "
                     "(P[s, a, s] = 1 and r(s, a) = 0 for every a); use gamma < 1 or add a terminal state.")
  if policy is None:
    reach = _reach_matrix(p.sum(1) > 0)
    what = "under any policy"
  else:
    reach = _reach_matrix(np.einsum("sa,sat->st", np.asarray(policy, dtype=np.float64), p) > 0)
    what = "under the given policy (an improper policy has no finite value with gamma = 1)"
  stuck = np.flatnonzero(~reach[:, absorbing].any(1))
  if stuck.size:
    raise ValueError(f"gamma = 1: states {stuck[:10].tolist()} cannot reach a terminal state {what}; use "
                     f"gamma < 1 or a proper policy.")


def _check_policy(policy: Any, s: int, a: int, name: str = "policy") -> None:
  if _shape(policy) != (s, a):
    raise ValueError(f"{name} must have shape [S, A] = {(s, a)} (pi(a | s), rows summing to 1), got shape "
                     f"{_shape(policy)}; for deterministic actions [S] use jax.nn.one_hot(actions, A).")
  if _is_concrete(policy):
    p = np.asarray(policy, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.max(np.abs(p.sum(1) - 1)) > 1e-5:
      worst = int(np.argmax(np.abs(p.sum(1) - 1) + np.any(p < 0, axis=1) + ~np.all(np.isfinite(p), axis=1)))
      raise ValueError(f"{name} rows must be probability distributions over actions; row {worst} is "
                       f"{p[worst].tolist()}.")


# ----------------------------------------------------------------------------------------------------------------
# Model-based methods
# ----------------------------------------------------------------------------------------------------------------

def _expected_reward(P: jax.Array, R: jax.Array) -> jax.Array:
  """``r(s, a)`` [S, A] from ``R [S, A]`` or ``R [S, A, S]``."""
  if R.ndim == 3:
    return jnp.sum(P * R, axis=-1)
  return R


def _absorbing_np(p: np.ndarray, r: np.ndarray) -> np.ndarray:
  idx = np.arange(p.shape[0])
  return np.all(p[idx, :, idx] == 1.0, axis=1) & np.all(r == 0.0, axis=1)


def _absorbing(P: jax.Array, r: jax.Array) -> jax.Array:
  """[S] bool: zero-reward absorbing states (their value is pinned to 0)."""
  idx = jnp.arange(P.shape[0])
  return jnp.all(P[idx, :, idx] == 1.0, axis=1) & jnp.all(r == 0.0, axis=1)


def _prepare(P: Any, R: Any, gamma: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  dtype = _float_dtype(P, R)
  P = jnp.asarray(P, dtype)
  return P, _expected_reward(P, jnp.asarray(R, dtype)), jnp.asarray(gamma, dtype)


def _q(P: jax.Array, r: jax.Array, gamma: jax.Array, V: jax.Array) -> jax.Array:
  return r + gamma * jnp.einsum("sat,t->sa", P, V)


def _solve_exact(P, r, gamma, policy, absorbing):
  s = P.shape[0]
  P_pi = jnp.einsum("sa,sat->st", policy, P)
  r_pi = jnp.sum(policy * r, axis=1)
  eye = jnp.eye(s, dtype=P.dtype)
  A = jnp.where(absorbing[:, None], eye, eye - gamma * P_pi)
  b = jnp.where(absorbing, 0.0, r_pi)
  return jnp.linalg.solve(A, b)


@functools.partial(jax.jit, static_argnames=("method", "max_iter"))
def _policy_evaluation(P, R, gamma, policy, tol, method, max_iter):
  P, r, gamma = _prepare(P, R, gamma)
  policy = jnp.asarray(policy, P.dtype)
  absorbing = _absorbing(P, r)
  if method == "exact":
    return _solve_exact(P, r, gamma, policy, absorbing)
  P_pi = jnp.einsum("sa,sat->st", policy, P)
  r_pi = jnp.where(absorbing, 0.0, jnp.sum(policy * r, axis=1))

  def cond(c):
    _, delta, it = c
    return (delta >= tol) & (it < max_iter)

  def body(c):
    V, _, it = c
    V_new = jnp.where(absorbing, 0.0, r_pi + gamma * P_pi @ V)
    return V_new, jnp.max(jnp.abs(V_new - V)), it + 1

  V, _, _ = lax.while_loop(cond, body, (jnp.zeros_like(r_pi), jnp.asarray(jnp.inf, P.dtype), jnp.int32(0)))
  return V


def _default_tol(dtype: Any, tol: Optional[float]) -> float:
  if tol is not None:
    if not (isinstance(tol, (int, float)) and tol > 0):
      raise ValueError(f"tol must be a positive float, got {tol!r}.")
    return float(tol)
  return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _check_max_iter(max_iter: Any) -> None:
  if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
    raise ValueError(f"max_iter must be a Python int >= 1, got {max_iter!r}.")


def policy_evaluation(P: Any, R: Any, gamma: Any, policy: Any, *, method: str = "exact", tol: Optional[float] = None,
                      max_iter: int = 10_000) -> jax.Array:
  """State values ``V_π`` of a policy: the solution of ``V = r_π + γ P_π V`` (seed 003 §13.1.1, step 2).

  Args:
    P: [S, A, S] transition probabilities ``P(s' | s, a)``.
    R: [S, A] expected rewards ``r(s, a)``, or [S, A, S] rewards ``r(s, a, s')``.
    gamma: [] discount in ``[0, 1)``; ``1`` for episodic MDPs whose ``policy`` is proper (module docstring).
    policy: [S, A] ``π(a | s)``.
    method: ``"exact"`` (linear solve ``(I - γ P_π) V = r_π``) or ``"iterative"`` (synchronous sweeps from
      ``V = 0`` until ``max_s |ΔV| < tol`` or ``max_iter`` sweeps).
    tol: stopping threshold of ``"iterative"`` (default ``1e-10`` in float64, ``1e-5`` in float32).
    max_iter: sweep cap of ``"iterative"``.
  Returns:
    V: [S] in the floating dtype of ``P``/``R`` (at least float32).
  """
  s, a = _check_mdp(P, R, gamma)
  _check_policy(policy, s, a)
  if method not in ("exact", "iterative"):
    raise ValueError(f"method must be 'exact' or 'iterative', got {method!r}.")
  _check_max_iter(max_iter)
  _check_episodic(P, R, gamma, policy)
  tol = _default_tol(_float_dtype(P, R), tol)
  return _policy_evaluation(P, R, gamma, policy, tol, method, int(max_iter))


def q_from_v(P: Any, R: Any, gamma: Any, V: Any) -> jax.Array:
  """Action values ``Q(s, a) = Σ_s' P(s'|s,a) [r(s,a,s') + γ V(s')]`` (seed 003 §13, "Q from V").

  Args:
    P: [S, A, S]; R: [S, A] or [S, A, S]; gamma: []; V: [S].
  Returns:
    Q: [S, A].
  """
  s, _ = _check_mdp(P, R, gamma)
  if _shape(V) != (s,):
    raise ValueError(f"V must have shape [S] = {(s,)} to match P {_shape(P)}, got shape {_shape(V)}.")
  P, r, gamma = _prepare(P, R, gamma)
  return _q(P, r, gamma, jnp.asarray(V, P.dtype))


def _tie_tol(Q: jax.Array) -> jax.Array:
  return 1e3 * jnp.finfo(Q.dtype).eps * (1.0 + jnp.max(jnp.abs(Q)))


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _value_iteration(P, R, gamma, tol, max_iter):
  P, r, gamma = _prepare(P, R, gamma)
  s, a = r.shape

  def cond(c):
    _, delta, it = c
    return (delta >= tol) & (it < max_iter)

  def body(c):
    V, _, it = c
    V_new = jnp.max(_q(P, r, gamma, V), axis=1)
    return V_new, jnp.max(jnp.abs(V_new - V)), it + 1

  V, delta, it = lax.while_loop(cond, body, (jnp.zeros((s,), P.dtype), jnp.asarray(jnp.inf, P.dtype), jnp.int32(0)))
  actions = jnp.argmax(_q(P, r, gamma, V), axis=1).astype(jnp.int32)
  return Solution(V, jax.nn.one_hot(actions, a, dtype=P.dtype), actions, it, delta < tol)


def value_iteration(P: Any, R: Any, gamma: Any, *, tol: Optional[float] = None, max_iter: int = 10_000) -> Solution:
  """Value iteration ``V_{k+1}(s) = max_a Σ_s' P(s'|s,a)[r + γ V_k(s')]`` from ``V_0 = 0`` (seed 003 §13.1.2).

  Stops when ``max_s |V_{k+1}(s) - V_k(s)| < tol`` (then ``||V_{k+1} - V*||_∞ <= tol γ/(1-γ)``) or after
  ``max_iter`` sweeps (``converged = False``).

  Args:
    P: [S, A, S]; R: [S, A] or [S, A, S]; gamma: [] in ``[0, 1)`` (``1``: episodic, module docstring).
    tol: default ``1e-10`` in float64, ``1e-5`` in float32.
    max_iter: sweep cap.
  Returns:
    :class:`Solution` (``V [S]``, greedy ``policy [S, A]``, ``actions [S]``, ``num_iter`` sweeps, ``converged``);
    unpacks as ``V, policy, num_iter``.
  """
  _check_mdp(P, R, gamma)
  _check_max_iter(max_iter)
  _check_episodic(P, R, gamma)
  return _value_iteration(P, R, gamma, _default_tol(_float_dtype(P, R), tol), int(max_iter))


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _policy_iteration(P, R, gamma, policy0, max_iter):
  P, r, gamma = _prepare(P, R, gamma)
  s, a = r.shape
  absorbing = _absorbing(P, r)

  def improve(V, old):
    Q = _q(P, r, gamma, V)
    best = jnp.argmax(Q, axis=1).astype(jnp.int32)
    if old is None:
      return best
    keep = jnp.take_along_axis(Q, old[:, None], 1)[:, 0] >= jnp.max(Q, axis=1) - _tie_tol(Q)
    return jnp.where(keep, old, best)

  V0 = _solve_exact(P, r, gamma, jnp.asarray(policy0, P.dtype), absorbing)
  actions0 = improve(V0, None)

  def cond(c):
    _, _, it, stable = c
    return (~stable) & (it < max_iter)

  def body(c):
    actions, _, it, _ = c
    V = _solve_exact(P, r, gamma, jax.nn.one_hot(actions, a, dtype=P.dtype), absorbing)
    new = improve(V, actions)
    return new, V, it + 1, jnp.all(new == actions)

  actions, V, it, stable = lax.while_loop(cond, body, (actions0, V0, jnp.int32(1), jnp.bool_(False)))
  return Solution(V, jax.nn.one_hot(actions, a, dtype=P.dtype), actions, it, stable)


def policy_iteration(P: Any, R: Any, gamma: Any, *, policy0: Any = None, max_iter: int = 1000) -> Solution:
  """Policy iteration: exact policy evaluation then greedy improvement until the policy is stable (seed 003
  §13.1.1).

  Iteration 1 evaluates ``policy0`` (default: uniform random) and takes its greedy policy; each later iteration
  evaluates the current deterministic policy and improves it, keeping an action unless another one is better by
  more than a rounding tolerance; it stops when no action changes (``converged``) or after ``max_iter``
  evaluations.

  Args:
    P: [S, A, S]; R: [S, A] or [S, A, S]; gamma: [] in ``[0, 1)`` (``1``: episodic, module docstring).
    policy0: [S, A] initial (stochastic) policy, default uniform.
    max_iter: cap on the number of policy evaluations.
  Returns:
    :class:`Solution`: ``V`` [S] of the returned policy, ``policy`` [S, A] one-hot, ``actions`` [S],
    ``num_iter`` evaluations, ``converged``; unpacks as ``V, policy, num_iter``.
  """
  s, a = _check_mdp(P, R, gamma)
  _check_max_iter(max_iter)
  if policy0 is None:
    policy0 = jnp.full((s, a), 1.0 / a, _float_dtype(P, R))
  else:
    _check_policy(policy0, s, a, "policy0")
  _check_episodic(P, R, gamma, policy0)
  return _policy_iteration(P, R, gamma, policy0, int(max_iter))


# ----------------------------------------------------------------------------------------------------------------
# Model-free prediction on padded episodes
# ----------------------------------------------------------------------------------------------------------------

def _check_episodes(states: Any, rewards: Any, lengths: Any, V0: Any) -> tuple[int, int, int]:
  """Shapes and (on concrete inputs) values of padded episodes; returns ``(E, T, S)``."""
  if np.ndim(V0) != 1 or _shape(V0)[0] < 1:
    raise ValueError(f"V0 must have shape [S] (initial value of every state, terminal ones included), got shape "
                     f"{_shape(V0)}.")
  n_states = _shape(V0)[0]
  if np.ndim(rewards) != 2 or _shape(rewards)[1] < 1:
    raise ValueError(f"rewards must have shape [E, T] with T >= 1 (padded episodes), got shape {_shape(rewards)}.")
  e, t = _shape(rewards)
  if _shape(states) != (e, t + 1):
    raise ValueError(f"states must have shape [E, T+1] = {(e, t + 1)} to match rewards [E, T] = {(e, t)}, got "
                     f"shape {_shape(states)}.")
  if _shape(lengths) != (e,):
    raise ValueError(f"lengths must have shape [E] = {(e,)} (transitions per episode), got shape {_shape(lengths)}.")
  for name, x in (("states", states), ("lengths", lengths)):
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
      raise ValueError(f"{name} must be an integer array, got dtype {jnp.asarray(x).dtype}; use .astype(int).")
  if _is_concrete(lengths):
    ln = np.asarray(lengths)
    if ln.size and (ln.min() < 1 or ln.max() > t):
      bad = int(np.argmax((ln < 1) | (ln > t)))
      raise ValueError(f"lengths must lie in [1, T={t}], got lengths[{bad}] = {int(ln[bad])}.")
    if _is_concrete(states):
      st = np.asarray(states)
      valid = np.arange(t + 1)[None, :] <= ln[:, None]
      out = valid & ((st < 0) | (st >= n_states))
      if out.any():
        ie, it = np.argwhere(out)[0]
        raise ValueError(f"states must be indices in [0, S={n_states}) (S = len(V0)) within each episode, got "
                         f"states[{ie}, {it}] = {int(st[ie, it])}.")
  if _is_concrete(rewards) and not np.all(np.isfinite(np.asarray(rewards, dtype=np.float64))):
    raise ValueError("rewards must be finite (got inf or NaN).")
  return e, t, n_states


def _check_td_args(alpha: Any, gamma: Any) -> None:
  _check_scalar("alpha", alpha, 0.0, math.inf, lo_open=True, hint=" (step size)")
  _check_scalar("gamma", gamma, 0.0, 1.0, hint=" (discount factor)")


def _returns(rewards: jax.Array, mask: jax.Array, gamma: jax.Array) -> jax.Array:
  """Discounted returns ``G_t = R_{t+1} + γ G_{t+1}`` [T] of one episode (0 past its end)."""
  def step(g, x):
    r, m = x
    g = jnp.where(m, r + gamma * g, 0.0)
    return g, g

  _, g = lax.scan(step, jnp.zeros((), rewards.dtype), (rewards, mask), reverse=True)
  return g


def _n_step_parts(states, rewards, length, gamma, n):
  """For one episode: ``(s_t, mask_t, R^n_t, boot_state_t, boot_t, γ^n)`` for the n-step return
  ``G_{t:t+n} = R^n_t + boot_t γ^n V(S_{t+n})``; ``n=None`` means infinity (the full return)."""
  t_max = rewards.shape[0]
  t = jnp.arange(t_max)
  mask = t < length
  r = jnp.where(mask, rewards, 0.0)
  if n == 1:
    part = r
  else:
    g = _returns(r, mask, gamma)
    if n is None or n >= t_max:
      part = g
    else:
      g_next = jnp.where(t + n < t_max, g[jnp.minimum(t + n, t_max - 1)], 0.0)
      part = g - gamma ** n * g_next
  if n is None or n >= t_max:
    boot = jnp.zeros((t_max,), bool)
    boot_state = states[:t_max]
  else:
    boot = (t + n) < length
    boot_state = states[jnp.minimum(t + n, t_max)]
  gn = gamma ** (n if n is not None and n < t_max else 0)
  return states[:t_max], mask, part, boot_state, boot, gn


def _offline_apply(V, s, weight, target, alpha):
  """``V + α Σ_t weight_t (target_t - V(s_t)) e_{s_t}`` with every increment computed from the same ``V``."""
  inc = jnp.where(weight, target - V[s], 0.0)
  return V + alpha * jnp.zeros_like(V).at[s].add(inc)


def _first_visit(s: jax.Array, mask: jax.Array, n_states: int) -> jax.Array:
  t = jnp.arange(s.shape[0])
  first = jax.ops.segment_min(jnp.where(mask, t, s.shape[0]), s, num_segments=n_states)
  return mask & (first[s] == t)


def _episode_update_n(V, states, rewards, length, alpha, gamma, n, offline, first_visit):
  """n-step TD (``n=None``: Monte Carlo) on one episode."""
  s, mask, part, boot_state, boot, gn = _n_step_parts(states, rewards, length, gamma, n)
  weight = _first_visit(s, mask, V.shape[0]) if first_visit else mask
  if offline:
    target = part + jnp.where(boot, gn * V[boot_state], 0.0)
    return _offline_apply(V, s, weight, target, alpha)

  def step(V, x):
    s_t, w_t, part_t, bs_t, b_t = x
    target = part_t + jnp.where(b_t, gn * V[bs_t], 0.0)
    return V.at[s_t].add(jnp.where(w_t, alpha * (target - V[s_t]), 0.0)), None

  V, _ = lax.scan(step, V, (s, weight, part, boot_state, boot))
  return V


def _episode_update_lambda(V, states, rewards, length, alpha, gamma, lam, view, offline):
  t_max = rewards.shape[0]
  t = jnp.arange(t_max)
  mask = t < length
  s, s_next = states[:t_max], states[1:]
  r = jnp.where(mask, rewards, 0.0)
  cont = (t + 1) < length  # S_{t+1} is not terminal
  if view == "forward":
    # λ-return G^λ_t = R_{t+1} + γ [(1 - λ) V(S_{t+1}) + λ G^λ_{t+1}] (G^λ_{L-1} = R_L), V from the episode start.
    v_next = V[s_next]

    def back(g, x):
      r_t, c_t, v_t = x
      g = r_t + jnp.where(c_t, gamma * ((1.0 - lam) * v_t + lam * g), 0.0)
      return g, g

    _, g_lam = lax.scan(back, jnp.zeros((), V.dtype), (r, cont, v_next), reverse=True)
    return _offline_apply(V, s, mask, g_lam, alpha)

  eye_rows = jnp.eye(V.shape[0], dtype=V.dtype)
  if offline:
    delta = jnp.where(mask, r + jnp.where(cont, gamma * V[s_next], 0.0) - V[s], 0.0)

    def acc_step(c, x):
      z, acc = c
      s_t, m_t, d_t = x
      z = jnp.where(m_t, gamma * lam * z + eye_rows[s_t], z)
      return (z, acc + d_t * z), None

    (_, acc), _ = lax.scan(acc_step, (jnp.zeros_like(V), jnp.zeros_like(V)), (s, mask, delta))
    return V + alpha * acc

  def online_step(c, x):
    V, z = c
    s_t, sn_t, r_t, m_t, c_t = x
    d_t = r_t + jnp.where(c_t, gamma * V[sn_t], 0.0) - V[s_t]
    z = jnp.where(m_t, gamma * lam * z + eye_rows[s_t], z)
    V = V + jnp.where(m_t, alpha * d_t, 0.0) * z
    return (V, z), None

  (V, _), _ = lax.scan(online_step, (V, jnp.zeros_like(V)), (s, s_next, r, mask, cont))
  return V


def _scan_episodes(update, V0, states, rewards, lengths, return_history):
  def step(V, ep):
    V = update(V, *ep)
    return V, (V if return_history else None)

  V, hist = lax.scan(step, V0, (states, rewards, lengths))
  return hist if return_history else V


@functools.partial(jax.jit, static_argnames=("n", "offline", "first_visit", "return_history"))
def _td_n_core(states, rewards, lengths, V0, alpha, gamma, n, offline, first_visit, return_history):
  dtype = _float_dtype(V0, rewards)
  V0 = jnp.asarray(V0, dtype)
  alpha, gamma = jnp.asarray(alpha, dtype), jnp.asarray(gamma, dtype)
  update = functools.partial(_episode_update_n, alpha=alpha, gamma=gamma, n=n, offline=offline,
                             first_visit=first_visit)
  return _scan_episodes(lambda V, s, r, ln: update(V, s, r, ln), V0, jnp.asarray(states, jnp.int32),
                        jnp.asarray(rewards, dtype), jnp.asarray(lengths, jnp.int32), return_history)


@functools.partial(jax.jit, static_argnames=("view", "offline", "return_history"))
def _td_lambda_core(states, rewards, lengths, V0, alpha, gamma, lam, view, offline, return_history):
  dtype = _float_dtype(V0, rewards)
  V0 = jnp.asarray(V0, dtype)
  alpha, gamma, lam = (jnp.asarray(x, dtype) for x in (alpha, gamma, lam))
  update = functools.partial(_episode_update_lambda, alpha=alpha, gamma=gamma, lam=lam, view=view, offline=offline)
  return _scan_episodes(lambda V, s, r, ln: update(V, s, r, ln), V0, jnp.asarray(states, jnp.int32),
                        jnp.asarray(rewards, dtype), jnp.asarray(lengths, jnp.int32), return_history)


_EPISODE_ARGS = """    states: [E, T+1] int visited states; rewards: [E, T] rewards; lengths: [E] int transitions per
      episode (module docstring).
    V0: [S] initial values (terminal states included; their entries are never updated).
    alpha: [] step size > 0.
    gamma: [] discount in [0, 1].
    offline: False: the book's incremental updates; True: increments from the episode-start values, summed and
      applied at the episode end.
    return_history: also return the values after every episode."""


def _with_episode_args(fn):
  """Fills the shared argument documentation into ``fn.__doc__`` (the ``{episode_args}`` placeholder)."""
  fn.__doc__ = fn.__doc__.replace("    {episode_args}", _EPISODE_ARGS)
  return fn


@_with_episode_args
def monte_carlo(states: Any, rewards: Any, lengths: Any, V0: Any, *, alpha: Any, gamma: Any = 1.0,
                first_visit: bool = False, offline: bool = False, return_history: bool = False) -> jax.Array:
  """Constant-α Monte Carlo prediction ``V(S_t) ← V(S_t) + α (G_t - V(S_t))`` (seed 003 §13.2, MC backup).

  Every-visit by default (every occurrence of a state in an episode is updated towards its own return);
  ``first_visit=True`` updates only the first occurrence. Updates are applied at the episode end, in time order
  (``offline=False``) or summed from the episode-start values (``offline=True``); the two differ only when a
  state occurs more than once in an episode.

  Args:
    {episode_args}
    first_visit: first-visit instead of every-visit MC.
  Returns:
    V: [S] final values, or [E, S] the values after each episode if ``return_history``.
  """
  _check_episodes(states, rewards, lengths, V0)
  _check_td_args(alpha, gamma)
  return _td_n_core(states, rewards, lengths, V0, alpha, gamma, None, bool(offline), bool(first_visit),
                    bool(return_history))


@_with_episode_args
def td0(states: Any, rewards: Any, lengths: Any, V0: Any, *, alpha: Any, gamma: Any = 1.0, offline: bool = False,
        return_history: bool = False) -> jax.Array:
  """TD(0) prediction ``V(S_t) ← V(S_t) + α (R_{t+1} + γ V(S_{t+1}) - V(S_t))`` (seed 003 §13.2, TD backup).

  Args:
    {episode_args}
  Returns:
    V: [S] final values, or [E, S] the values after each episode if ``return_history``.
  """
  _check_episodes(states, rewards, lengths, V0)
  _check_td_args(alpha, gamma)
  return _td_n_core(states, rewards, lengths, V0, alpha, gamma, 1, bool(offline), False, bool(return_history))


@_with_episode_args
def td_n(states: Any, rewards: Any, lengths: Any, V0: Any, *, n: int, alpha: Any, gamma: Any = 1.0,
         offline: bool = False, return_history: bool = False) -> jax.Array:
  """n-step TD prediction (Sutton & Barto §7.1; seed 003 §13.2.1 "TD(n)").

  ``V(S_τ) ← V(S_τ) + α (G_{τ:τ+n} - V(S_τ))`` with ``G_{τ:τ+n} = Σ_{k<n} γ^k R_{τ+k+1} + γ^n V(S_{τ+n})`` (no
  bootstrap term when ``τ + n`` reaches the episode end). Online, the update of ``τ`` happens at time
  ``τ + n - 1`` and uses the current ``V(S_{τ+n})``. The reward sums are computed as ``G_τ - γ^n G_{τ+n}`` from
  the episode's returns (exact for ``n = 1`` and for ``n >= T``; rounding ``~eps |G|`` otherwise).

  Args:
    {episode_args}
    n: number of steps, a Python int >= 1 (static: each ``n`` compiles once).
  Returns:
    V: [S] final values, or [E, S] the values after each episode if ``return_history``.
  """
  _check_episodes(states, rewards, lengths, V0)
  _check_td_args(alpha, gamma)
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise ValueError(f"n must be a Python int >= 1 (number of steps), got {n!r}.")
  return _td_n_core(states, rewards, lengths, V0, alpha, gamma, int(n), bool(offline), False, bool(return_history))


@_with_episode_args
def td_lambda(states: Any, rewards: Any, lengths: Any, V0: Any, *, lam: Any, alpha: Any, gamma: Any = 1.0,
              view: str = "backward", offline: bool = True, return_history: bool = False) -> jax.Array:
  """TD(λ) prediction (Sutton & Barto §12.1-12.2; seed 003 §13.2.1 "TDλ").

  ``view="forward"``: the offline λ-return algorithm, ``V(S_t) ← V(S_t) + α (G^λ_t - V(S_t))`` with
  ``G^λ_t = (1-λ) Σ_n λ^{n-1} G_{t:t+n}`` (+ ``λ^{L-t-1} G_t``), computed by the recursion ``G^λ_t = R_{t+1} +
  γ[(1-λ) V(S_{t+1}) + λ G^λ_{t+1}]`` with the episode-start values; applied at the episode end (offline only).
  ``view="backward"``: accumulating eligibility traces ``z ← γλ z + e_{S_t}``, ``δ_t = R_{t+1} + γ V(S_{t+1}) -
  V(S_t)``, increment ``α δ_t z``. With ``offline=True`` (default) the increments use the episode-start ``V`` and
  are summed at the episode end: this equals the forward view exactly (up to rounding). ``offline=False`` is
  online TD(λ) (``V`` updated every step), which differs from the forward view at order ``α²``.

  Args:
    {episode_args}
    lam: [] trace-decay λ in [0, 1] (traced: vmap over it freely).
    view: ``"forward"`` or ``"backward"``.
  Returns:
    V: [S] final values, or [E, S] the values after each episode if ``return_history``.
  """
  _check_episodes(states, rewards, lengths, V0)
  _check_td_args(alpha, gamma)
  _check_scalar("lam", lam, 0.0, 1.0, hint=" (trace decay λ)")
  if view not in ("forward", "backward"):
    raise ValueError(f"view must be 'forward' or 'backward', got {view!r}.")
  if view == "forward" and not offline:
    raise ValueError("view='forward' (the λ-return algorithm) needs the whole episode: use offline=True, or "
                     "view='backward' with offline=False for online TD(λ).")
  return _td_lambda_core(states, rewards, lengths, V0, alpha, gamma, lam, view, bool(offline),
                         bool(return_history))


# ----------------------------------------------------------------------------------------------------------------
# Sutton & Barto's random walk (Example 6.2 / 7.1)
# ----------------------------------------------------------------------------------------------------------------

def _default_max_len(num_states: int) -> int:
  """Episode cap with per-episode truncation probability below ~1e-12 (the walk's survival decays like
  ``cos(π / (N+1))^T``)."""
  return int(math.ceil(28.0 / -math.log(math.cos(math.pi / (num_states + 1)))))


@functools.partial(jax.jit, static_argnames=("num_episodes", "num_states", "max_len"))
def _random_walk(key, num_episodes, num_states, max_len, left_reward, right_reward):
  n, t_max, e = num_states, max_len, num_episodes
  start = (n + 1) // 2
  dtype = _float_dtype(left_reward, right_reward)
  t = jnp.arange(t_max)

  def draw(k):
    steps = 2 * jax.random.bernoulli(k, 0.5, (e, t_max)).astype(jnp.int32) - 1
    pos = start + jnp.cumsum(steps, axis=1)
    hit = (pos <= 0) | (pos >= n + 1)
    done = jnp.any(hit, axis=1)
    first = jnp.argmax(hit, axis=1)
    right = jnp.take_along_axis(pos, first[:, None], 1)[:, 0] >= n + 1
    term = jnp.where(right, n + 1, 0)
    tail = jnp.where(t[None, :] > first[:, None], term[:, None], pos)
    states = jnp.concatenate([jnp.full((e, 1), start, jnp.int32), tail.astype(jnp.int32)], axis=1)
    r_end = jnp.where(right, jnp.asarray(right_reward, dtype), jnp.asarray(left_reward, dtype))
    rewards = jnp.where(t[None, :] == first[:, None], r_end[:, None], jnp.zeros((), dtype))
    return states, rewards, (first + 1).astype(jnp.int32), done

  def cond(c):
    return (~jnp.all(c[4])) & (c[5] < 10_000)

  def body(c):
    key, states, rewards, lengths, done, it = c
    key, sub = jax.random.split(key)
    s2, r2, l2, d2 = draw(sub)
    keep = done[:, None]
    return (key, jnp.where(keep, states, s2), jnp.where(keep, rewards, r2), jnp.where(done, lengths, l2),
            done | d2, it + 1)

  key, sub = jax.random.split(key)
  c = (key, *draw(sub), jnp.int32(0))
  _, states, rewards, lengths, _, _ = lax.while_loop(cond, body, c)
  return Episodes(states, rewards, lengths)


def random_walk_episodes(key: jax.Array, num_episodes: int, num_states: int = 5, *, max_len: Optional[int] = None,
                         left_reward: Any = 0.0, right_reward: Any = 1.0) -> Episodes:
  """Episodes of Sutton & Barto's random walk (Example 6.2 with 5 states; Example 7.1 with 19 states and
  ``left_reward=-1``), jittable.

  States are numbered ``0`` (left terminal), ``1..N`` (non-terminal; the walk starts in the centre ``(N+1)//2``,
  state C for N = 5) and ``N+1`` (right terminal); each step goes left or right with probability 1/2; the
  transition into the left / right terminal gives ``left_reward`` / ``right_reward``, every other one 0.
  Episodes are padded to ``max_len`` transitions (default: survival probability < 1e-12; call
  :meth:`Episodes.trim` to cut the padding). An episode that has not terminated within ``max_len`` steps is
  redrawn (up to 10,000 rounds; with the default ``max_len`` a second round is already a ~1e-12 event), so a
  small ``max_len`` samples the walk *conditioned* on ending within ``max_len`` steps.

  Args:
    key: PRNG key.
    num_episodes: E.
    num_states: N non-terminal states (odd, >= 3).
    max_len: T, padded episode length (>= (N+1)//2, the shortest episode).
    left_reward, right_reward: [] terminal rewards.
  Returns:
    :class:`Episodes` with ``states [E, T+1]``, ``rewards [E, T]``, ``lengths [E]``; ``V0`` has ``N + 2`` entries.
  """
  if not isinstance(num_states, int) or num_states < 3 or num_states % 2 == 0:
    raise ValueError(f"num_states must be an odd int >= 3 (the walk starts in the centre), got {num_states!r}.")
  if not isinstance(num_episodes, int) or num_episodes < 1:
    raise ValueError(f"num_episodes must be an int >= 1, got {num_episodes!r}.")
  min_len = (num_states + 1) // 2
  if max_len is None:
    max_len = _default_max_len(num_states)
  if not isinstance(max_len, int) or max_len < min_len:
    raise ValueError(f"max_len must be an int >= {min_len} (the shortest episode of the {num_states}-state walk), "
                     f"got {max_len!r}.")
  for name, x in (("left_reward", left_reward), ("right_reward", right_reward)):
    if np.ndim(x) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {_shape(x)}.")
  return _random_walk(key, num_episodes, num_states, max_len, left_reward, right_reward)


def random_walk_mdp(num_states: int = 5, left_reward: float = 0.0,
                    right_reward: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """The random walk as a one-action MDP: ``P [N+2, 1, N+2]`` and ``R [N+2, 1, N+2]`` (``r(s, a, s')``), with
  zero-reward absorbing terminals ``0`` and ``N+1`` (evaluate with ``gamma = 1`` and ``policy = ones([N+2, 1])``)."""
  if not isinstance(num_states, int) or num_states < 1:
    raise ValueError(f"num_states must be an int >= 1, got {num_states!r}.")
  s = num_states + 2
  P = np.zeros((s, 1, s))
  R = np.zeros((s, 1, s))
  mid = np.arange(1, num_states + 1)
  P[mid, 0, mid - 1] = 0.5
  P[mid, 0, mid + 1] = 0.5
  P[0, 0, 0] = P[s - 1, 0, s - 1] = 1.0
  R[1, 0, 0] = left_reward
  R[num_states, 0, s - 1] = right_reward
  return P, R


def random_walk_true_values(num_states: int = 5, left_reward: float = 0.0, right_reward: float = 1.0) -> np.ndarray:
  """Exact undiscounted values [N+2] of the random walk: ``V(i) = left + (right - left) i / (N+1)`` for
  ``i = 1..N`` (1/6..5/6 for Example 6.2; -0.9..0.9 for the 19-state walk), 0 at the terminals."""
  i = np.arange(num_states + 2, dtype=np.float64)
  v = left_reward + (right_reward - left_reward) * i / (num_states + 1)
  v[0] = v[-1] = 0.0
  return v
