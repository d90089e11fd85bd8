"""MDP solvers and TD/MC prediction (research.classical.mdp) against exact linear solves and independent numpy
loop implementations of the textbook algorithms (Sutton & Barto, 2nd ed.)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.classical import mdp

S, A = 6, 3
E, T = 4, 9


def _random_mdp(seed: int, full_reward: bool = False):
  rng = np.random.default_rng(seed)
  P = rng.random((S, A, S)) ** 3  # uneven rows
  P /= P.sum(-1, keepdims=True)
  R = rng.normal(size=(S, A, S) if full_reward else (S, A))
  return P, R


def _exact(P, R, gamma, policy):
  """``V = (I - γ P_π)^{-1} r_π`` in numpy."""
  r = (P * R).sum(-1) if R.ndim == 3 else R
  P_pi = np.einsum("sa,sat->st", policy, P)
  return np.linalg.solve(np.eye(P.shape[0]) - gamma * P_pi, (policy * r).sum(1))


def _random_episodes(seed: int):
  """Random padded episodes over S states with repeated states, lengths in [1, T], non-zero padding."""
  rng = np.random.default_rng(seed)
  states = rng.integers(0, S, size=(E, T + 1))
  lengths = rng.integers(1, T + 1, size=E)
  lengths[0] = T
  rewards = rng.normal(size=(E, T))
  return states, rewards, lengths


# ----------------------------------------------------------------------------------------------------------------
# numpy loop references (the book's pseudo-code)
# ----------------------------------------------------------------------------------------------------------------

def _ref_n_step_online(states, rewards, lengths, V0, alpha, gamma, n):
  V = np.array(V0, float)
  for s, r, L in zip(states, rewards, lengths):
    for tau in range(L):
      G = sum(gamma ** (i - tau) * r[i] for i in range(tau, min(tau + n, L)))
      if tau + n < L:
        G += gamma ** n * V[s[tau + n]]
      V[s[tau]] += alpha * (G - V[s[tau]])
  return V


def _ref_lambda_return_offline(states, rewards, lengths, V0, alpha, gamma, lam):
  """λ-return as the explicit weighted sum of n-step returns, increments from the episode-start values."""
  V = np.array(V0, float)
  for s, r, L in zip(states, rewards, lengths):
    inc = np.zeros_like(V)
    for t in range(L):
      def g(n):
        out = sum(gamma ** (i - t) * r[i] for i in range(t, min(t + n, L)))
        return out + (gamma ** n * V[s[t + n]] if t + n < L else 0.0)
      G = sum((1 - lam) * lam ** (n - 1) * g(n) for n in range(1, L - t)) + lam ** (L - t - 1) * g(L - t)
      inc[s[t]] += alpha * (G - V[s[t]])
    V += inc
  return V


def _ref_td_lambda_online(states, rewards, lengths, V0, alpha, gamma, lam):
  V = np.array(V0, float)
  for s, r, L in zip(states, rewards, lengths):
    z = np.zeros_like(V)
    for t in range(L):
      delta = r[t] + (gamma * V[s[t + 1]] if t + 1 < L else 0.0) - V[s[t]]
      z *= gamma * lam
      z[s[t]] += 1
      V += alpha * delta * z
  return V


# ----------------------------------------------------------------------------------------------------------------
# Model-based
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("full_reward", [False, True])
def test_value_and_policy_iteration_match_exact_solve(full_reward):
  with jax.enable_x64(True):
    for seed in range(2):
      P, R = _random_mdp(seed, full_reward)
      gamma = 0.9
      vi = mdp.value_iteration(P, R, gamma, tol=1e-12)
      V_pi, policy, n_pi = mdp.policy_iteration(P, R, gamma)
      chex.assert_shape((vi.V, V_pi), (S,))
      chex.assert_shape(policy, (S, A))
      assert bool(vi.converged) and 1 < int(vi.num_iter) < 10_000 and 1 <= int(n_pi) < 20
      np.testing.assert_array_equal(np.asarray(vi.actions), np.asarray(jnp.argmax(policy, 1)))
      exact = _exact(P, R, gamma, np.asarray(policy))
      chex.assert_trees_all_close(np.asarray(V_pi), exact, atol=1e-10)
      chex.assert_trees_all_close(np.asarray(vi.V), exact, atol=1e-8)
      # Bellman optimality: no action improves on the optimal values.
      Q = np.asarray(mdp.q_from_v(P, R, gamma, V_pi))
      chex.assert_trees_all_close(Q.max(1), exact, atol=1e-10)


def test_policy_evaluation_iterative_equals_exact_and_float32():
  P, R = _random_mdp(3)
  policy = np.random.default_rng(3).dirichlet(np.ones(A), size=S)
  with jax.enable_x64(True):
    exact = mdp.policy_evaluation(P, R, 0.8, policy)
    iterative = mdp.policy_evaluation(P, R, 0.8, policy, method="iterative", tol=1e-13)
    assert exact.dtype == jnp.float64
    chex.assert_trees_all_close(np.asarray(exact), _exact(P, R, 0.8, policy), atol=1e-12)
    chex.assert_trees_all_close(np.asarray(iterative), np.asarray(exact), atol=1e-10)
  v32 = mdp.policy_evaluation(jnp.asarray(P, jnp.float32), jnp.asarray(R, jnp.float32), 0.8, policy,
                              method="iterative")
  assert v32.dtype == jnp.float32
  chex.assert_trees_all_close(np.asarray(v32), np.asarray(exact), atol=1e-4)


def test_episodic_gamma_one_gridworld_and_random_walk():
  from research.methods.classical.mdp import example_4_1
  with jax.enable_x64(True):
    P, R = example_4_1()
    v = np.asarray(mdp.policy_evaluation(P, R, 1.0, np.full((16, 4), 0.25)))
    book = [0, -14, -20, -22, -14, -18, -20, -20, -20, -20, -18, -14, -22, -20, -14, 0]  # Sutton & Barto Fig. 4.1
    chex.assert_trees_all_close(v, np.array(book, float), atol=1e-9)
    vi, pi = mdp.value_iteration(P, R, 1.0), mdp.policy_iteration(P, R, 1.0)
    distance = -np.array([0, 1, 2, 3, 1, 2, 3, 2, 2, 3, 2, 1, 3, 2, 1, 0], float)  # steps to the nearest corner
    chex.assert_trees_all_close((np.asarray(vi.V), np.asarray(pi.V)), (distance, distance), atol=1e-9)
    Pw, Rw = mdp.random_walk_mdp(5)
    v = mdp.policy_evaluation(Pw, Rw, 1.0, np.ones((7, 1)))
    chex.assert_trees_all_close(np.asarray(v), mdp.random_walk_true_values(5), atol=1e-12)
    with pytest.raises(ValueError, match="cannot reach a terminal state under the given policy"):
      left = np.zeros((16, 4))
      left[:, 0] = 1.0  # always "up": only column 0 reaches a terminal corner
      mdp.policy_evaluation(P, R, 1.0, left)


# ----------------------------------------------------------------------------------------------------------------
# Model-free prediction
# ----------------------------------------------------------------------------------------------------------------

def test_td_lambda_forward_equals_backward_offline_and_limits():
  states, rewards, lengths = _random_episodes(0)
  V0 = np.random.default_rng(1).normal(size=S)
  lams = np.array([0.0, 0.3, 0.7, 0.95, 1.0])
  kw = dict(alpha=0.3, gamma=0.9)
  with jax.enable_x64(True):
    def run(view):
      return jax.vmap(lambda lam: mdp.td_lambda(states, rewards, lengths, V0, lam=lam, view=view, **kw))(lams)
    fwd, bwd = np.asarray(run("forward")), np.asarray(run("backward"))
    chex.assert_shape(fwd, (len(lams), S))
    assert np.max(np.abs(fwd - bwd)) < 1e-10
    refs = np.stack([_ref_lambda_return_offline(states, rewards, lengths, V0, 0.3, 0.9, lam) for lam in lams])
    assert np.max(np.abs(fwd - refs)) < 1e-10
    assert np.max(np.abs(fwd - V0)) > 0.1  # the updates did something
    td0 = mdp.td0(states, rewards, lengths, V0, offline=True, **kw)
    mc = mdp.monte_carlo(states, rewards, lengths, V0, offline=True, **kw)
    assert np.max(np.abs(fwd[0] - np.asarray(td0))) < 1e-10  # TD(λ=0) == TD(0)
    assert np.max(np.abs(fwd[-1] - np.asarray(mc))) < 1e-10  # TD(λ=1) == every-visit MC
    n1 = mdp.td_n(states, rewards, lengths, V0, n=1, offline=True, **kw)
    n_big = mdp.td_n(states, rewards, lengths, V0, n=T, offline=True, **kw)
    assert np.max(np.abs(np.asarray(n1) - np.asarray(td0))) < 1e-12
    assert np.max(np.abs(np.asarray(n_big) - np.asarray(mc))) < 1e-12


def test_online_algorithms_match_book_loops():
  states, rewards, lengths = _random_episodes(2)
  V0 = np.random.default_rng(3).normal(size=S)
  with jax.enable_x64(True):
    for n in (1, 3):
      got = mdp.td_n(states, rewards, lengths, V0, n=n, alpha=0.2, gamma=0.9)
      assert np.max(np.abs(np.asarray(got) - _ref_n_step_online(states, rewards, lengths, V0, 0.2, 0.9, n))) < 1e-10
    td0 = mdp.td0(states, rewards, lengths, V0, alpha=0.2, gamma=0.9)
    ref = _ref_n_step_online(states, rewards, lengths, V0, 0.2, 0.9, 1)
    assert np.max(np.abs(np.asarray(td0) - ref)) < 1e-12
    mc = mdp.monte_carlo(states, rewards, lengths, V0, alpha=0.2, gamma=0.9)
    ref = _ref_n_step_online(states, rewards, lengths, V0, 0.2, 0.9, T + 1)
    assert np.max(np.abs(np.asarray(mc) - ref)) < 1e-12
    online = mdp.td_lambda(states, rewards, lengths, V0, lam=0.6, alpha=0.2, gamma=0.9, offline=False)
    ref = _ref_td_lambda_online(states, rewards, lengths, V0, 0.2, 0.9, 0.6)
    assert np.max(np.abs(np.asarray(online) - ref)) < 1e-12
    # First-visit MC: each state of an episode moves once, towards the return from its first occurrence.
    fv = mdp.monte_carlo(states[:1, :3], rewards[:1, :2], np.array([2]), V0, alpha=1.0, gamma=0.5,
                         first_visit=True, offline=True)
    s0, s1 = states[0, 0], states[0, 1]
    expect = np.array(V0, float)
    expect[s1] = rewards[0, 1]
    expect[s0] = rewards[0, 0] + 0.5 * rewards[0, 1]
    chex.assert_trees_all_close(np.asarray(fv), expect, atol=1e-12)


def test_td0_converges_on_random_walk_and_history_shape():
  keys = jax.random.split(jax.random.key(0), 4)
  eps = jax.vmap(lambda k: mdp.random_walk_episodes(k, 400, 5))(keys)
  assert eps.states.shape[:2] == (4, 400) and np.all(np.asarray(eps.lengths) >= 3)
  terminal = np.take_along_axis(np.asarray(eps.states), np.asarray(eps.lengths)[..., None], -1)[..., 0]
  assert np.all((terminal == 0) | (terminal == 6))
  eps = eps.trim()
  V0 = jnp.full((7,), 0.5).at[0].set(0.0).at[6].set(0.0)
  hist = jax.vmap(lambda s, r, ln: mdp.td0(s, r, ln, V0, alpha=0.02, return_history=True))(
      eps.states, eps.rewards, eps.lengths)
  chex.assert_shape(hist, (4, 400, 7))
  est = np.asarray(hist[:, 200:]).mean((0, 1))  # average over runs and the last 200 episodes
  true = mdp.random_walk_true_values(5)
  assert np.max(np.abs(est - true)) < 0.03, (est, true)
  assert np.max(np.abs(est[1:-1] - 0.5)) > 0.2  # moved far from the initial 0.5


def test_no_retrace_for_new_alpha_and_lambda():
  states, rewards, lengths = _random_episodes(4)
  V0 = np.zeros(S)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(alpha, lam):
    return (mdp.td_lambda(states, rewards, lengths, V0, lam=lam, alpha=alpha, gamma=0.9),
            mdp.td_n(states, rewards, lengths, V0, n=2, alpha=alpha))

  for alpha, lam in ((0.1, 0.5), (0.2, 0.9), (0.05, 0.0)):
    out = f(alpha, lam)
    chex.assert_shape(out, (S,))
    assert out[0].dtype == jnp.float32


def test_bad_inputs_raise():
  P, R = _random_mdp(0)
  bad = P.copy()
  bad[2, 1, 0] += 0.3
  with pytest.raises(ValueError, match=r"worst row is P\[2, 1, :\] with sum 1.3"):
    mdp.value_iteration(bad, R, 0.9)
  with pytest.raises(ValueError, match="probabilities >= 0"):
    mdp.policy_iteration(P - 0.5, R, 0.9)
  with pytest.raises(ValueError, match=r"gamma must lie in \[0.0, 1.0\], got 1.5"):
    mdp.value_iteration(P, R, 1.5)
  with pytest.raises(ValueError, match="gamma = 1 needs an episodic MDP"):
    mdp.value_iteration(P, R, 1.0)
  with pytest.raises(ValueError, match=r"P must have shape \[S, A, S\]"):
    mdp.value_iteration(P[:, :, :4], R, 0.9)
  with pytest.raises(ValueError, match=r"R must have shape \[S, A\]"):
    mdp.policy_iteration(P, R[:, :2], 0.9)
  with pytest.raises(ValueError, match=r"policy must have shape \[S, A\]"):
    mdp.policy_evaluation(P, R, 0.9, np.ones((S,)))
  with pytest.raises(ValueError, match="method must be"):
    mdp.policy_evaluation(P, R, 0.9, np.full((S, A), 1 / A), method="lstsq")
  states, rewards, lengths = _random_episodes(0)
  V0 = np.zeros(S)
  with pytest.raises(ValueError, match=r"states must have shape \[E, T\+1\]"):
    mdp.td0(states[:, :-1], rewards, lengths, V0, alpha=0.1)
  with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=9\]"):
    mdp.td0(states, rewards, lengths + T, V0, alpha=0.1)
  with pytest.raises(ValueError, match=r"states must be indices in \[0, S=6\)"):
    mdp.monte_carlo(states + S, rewards, lengths, V0, alpha=0.1)
  with pytest.raises(ValueError, match=r"alpha must lie in \(0.0, inf\]"):
    mdp.td_n(states, rewards, lengths, V0, n=2, alpha=0.0)
  with pytest.raises(ValueError, match="n must be a Python int >= 1"):
    mdp.td_n(states, rewards, lengths, V0, n=0, alpha=0.1)
  with pytest.raises(ValueError, match=r"lam must lie in \[0.0, 1.0\]"):
    mdp.td_lambda(states, rewards, lengths, V0, lam=1.5, alpha=0.1)
  with pytest.raises(ValueError, match="needs the whole episode"):
    mdp.td_lambda(states, rewards, lengths, V0, lam=0.5, alpha=0.1, view="forward", offline=False)
  with pytest.raises(ValueError, match="num_states must be an odd int"):
    mdp.random_walk_episodes(jax.random.key(0), 3, num_states=4)


@pytest.mark.slow  # suite time; `python -m experiments.classical --flagfile=experiments/configs/classical_smoke.flags` runs it
def test_worked_example_quick(tmp_path):
  from research.methods.classical import mdp as example
  out = example.run(str(tmp_path), quick=True)
  assert out["figures"] and all((tmp_path / f).stat().st_size > 1000 for f in out["figures"])
  assert out["ex41_random_policy_max_abs_diff_vs_book"] < 1e-9
  assert out["ex41_optimal_V_equal"] and out["wall_same_policy"] and out["wall_vi_pi_max_abs_diff"] < 1e-8
  assert out["ex41_pi_iterations"] <= out["ex41_vi_sweeps"] and out["wall_pi_iterations"] < out["wall_vi_sweeps"]
  assert out["walk5_td_beats_mc"]
  assert out["walk5_first10_td_best"][1] < out["walk5_first10_mc_best"][1]
  assert out["walk19_intermediate_n_best"] and out["walk19_best_n"] == 4
  assert 0.2 < out["walk19_td_n_best_alpha_err"]["4"][1] < 0.35
