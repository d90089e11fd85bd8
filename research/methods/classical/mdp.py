"""Worked examples of MDPs and temporal-difference learning (seed 003 §13).

(a) Model-based: value iteration vs policy iteration on Sutton & Barto's 4x4 gridworld (Example 4.1: reward -1 per
    step, two terminal corners, γ = 1; the equiprobable random policy's values are the book's table 0, -14, -20,
    -22, ...) and on a 5x6 gridworld with a wall, a goal (+1), a pit (-1), a slippery floor and γ = 0.95.
(b) Model-free prediction on Sutton & Barto's random walk:
    * 5 states (Example 6.2): TD(0) vs constant-α Monte Carlo (every-visit), ``V0 = 0.5``, RMS error over the 5
      states vs episodes (100 runs) and the mean RMS error over the first 10 episodes vs α;
    * 19 states (Example 7.1: rewards -1 / +1, ``V0 = 0``, γ = 1): online n-step TD for ``n = 1, 2, 4, ..., 512``
      (2nd ed. Figure 7.2, α in (0, 1]) and the offline λ-return algorithm (TD(λ) forward view, increments summed
      and applied at each episode end, so it equals offline TD(λ)) for ``λ ∈ {0, .4, .8, .9, .95, .975, .99, 1}``:
      RMS error over the first 10 episodes, averaged over 100 runs, vs α. Intermediate ``n`` / ``λ`` should be
      best. Summed offline increments overshoot when a state recurs often within an episode, so the λ curves
      blow up at much smaller α than the 2nd edition's Figure 12.3 (whose code applies the episode-end updates one
      after the other); their shape matches the 1st edition's offline Figure 7.6, and they are plotted on a log α
      axis (0.005 to 0.4).

All runs of one setting share the sampled episodes across α (common random numbers); every α / λ / run is one
lane of a ``jax.vmap``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.methods.classical import _common
from research.classical import mdp

# Actions: up, right, down, left (row, column offsets).
_MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])
_ARROWS = ["↑", "→", "↓", "←"]


def gridworld(rows: int, cols: int, *, terminals: dict[tuple[int, int], float], walls: tuple = (),
              step_reward: float = -1.0, slip: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """A gridworld MDP ``P [S, 4, S]``, ``R [S, 4, S]`` (``S = rows * cols``, state ``r * cols + c``).

  Actions up/right/down/left move one cell; a move into the border or a wall leaves the agent in place. With
  ``slip > 0`` the intended move happens with probability ``1 - slip`` and each perpendicular move with
  ``slip / 2``. Every transition from a non-terminal state gives ``step_reward``, plus ``terminals[cell]`` when it
  enters that terminal cell; terminal cells (and walls, which are unreachable) are zero-reward absorbing states.
  """
  n = rows * cols
  P = np.zeros((n, 4, n))
  R = np.zeros((n, 4, n))
  blocked = set(walls)
  for r in range(rows):
    for c in range(cols):
      s = r * cols + c
      if (r, c) in terminals or (r, c) in blocked:
        P[s, :, s] = 1.0
        continue
      for a in range(4):
        for b, p in ((a, 1.0 - slip), ((a + 1) % 4, slip / 2), ((a + 3) % 4, slip / 2)):
          if p == 0:
            continue
          nr, nc = r + _MOVES[b, 0], c + _MOVES[b, 1]
          if not (0 <= nr < rows and 0 <= nc < cols) or (nr, nc) in blocked:
            nr, nc = r, c
          t = nr * cols + nc
          P[s, a, t] += p
          R[s, a, t] = step_reward + terminals.get((nr, nc), 0.0)
  return P, R


def example_4_1() -> tuple[np.ndarray, np.ndarray]:
  """Sutton & Barto Example 4.1: 4x4 grid, terminal corners (0, 0) and (3, 3), reward -1 per step (γ = 1)."""
  return gridworld(4, 4, terminals={(0, 0): 0.0, (3, 3): 0.0}, step_reward=-1.0)


_WALL_WORLD = dict(rows=5, cols=6, terminals={(0, 5): 1.0, (1, 5): -1.0}, walls=((1, 1), (2, 1), (3, 1), (1, 3),
                                                                                   (2, 3), (3, 3)),
                   step_reward=-0.04, slip=0.2)


def _model_based() -> tuple[dict[str, Any], dict[str, Any]]:
  with jax.enable_x64(True):
    P, R = example_4_1()
    uniform = np.full((16, 4), 0.25)
    v_random = np.asarray(mdp.policy_evaluation(P, R, 1.0, uniform))
    book = np.array([0, -14, -20, -22, -14, -18, -20, -20, -20, -20, -18, -14, -22, -20, -14, 0], float)
    vi = mdp.value_iteration(P, R, 1.0)
    pi = mdp.policy_iteration(P, R, 1.0)

    Pw, Rw = gridworld(**_WALL_WORLD)
    gamma = 0.95
    vi_w = mdp.value_iteration(Pw, Rw, gamma, tol=1e-10)
    pi_w = mdp.policy_iteration(Pw, Rw, gamma)
    # Value-iteration error curve ||V_k - V*||_∞ (V* from policy iteration's exact evaluation).
    v, errs = np.zeros(Pw.shape[0]), []
    for _ in range(int(vi_w.num_iter)):
      v = np.asarray(mdp.q_from_v(Pw, Rw, gamma, v)).max(1)
      errs.append(float(np.max(np.abs(v - np.asarray(pi_w.V)))))
  out = {
      "ex41_random_policy_max_abs_diff_vs_book": float(np.max(np.abs(v_random - book))),
      "ex41_vi_sweeps": int(vi.num_iter), "ex41_pi_iterations": int(pi.num_iter),
      "ex41_optimal_V_equal": bool(np.allclose(vi.V, pi.V, atol=1e-9)),
      "wall_vi_sweeps": int(vi_w.num_iter), "wall_pi_iterations": int(pi_w.num_iter),
      "wall_vi_pi_max_abs_diff": float(np.max(np.abs(np.asarray(vi_w.V) - np.asarray(pi_w.V)))),
      "wall_same_policy": bool(np.all(np.asarray(vi_w.actions) == np.asarray(pi_w.actions))),
  }
  plot = {"v_random": v_random, "ex41_actions": np.asarray(pi.actions), "wall_V": np.asarray(pi_w.V),
          "wall_actions": np.asarray(pi_w.actions), "vi_errors": errs, "pi_iterations": int(pi_w.num_iter)}
  return out, plot


def _rms(hist: np.ndarray, true: np.ndarray) -> np.ndarray:
  """RMS error over the non-terminal states: hist [..., E, N+2] -> [..., E]."""
  return np.sqrt(np.mean((hist[..., 1:-1] - true[1:-1]) ** 2, axis=-1))


def _episodes(key, runs: int, episodes: int, num_states: int, left_reward: float) -> mdp.Episodes:
  ep = mdp.random_walk_episodes(key, runs * episodes, num_states, left_reward=left_reward).trim()
  t = ep.rewards.shape[-1]
  return mdp.Episodes(ep.states.reshape(runs, episodes, t + 1), ep.rewards.reshape(runs, episodes, t),
                      ep.lengths.reshape(runs, episodes))


def _sweep(fn, ep: mdp.Episodes, V0, alphas) -> np.ndarray:
  """``fn(states, rewards, lengths, V0, alpha) -> [E, S]`` vmapped over alphas (inner) and runs (outer)."""
  over_alpha = jax.vmap(fn, in_axes=(None, None, None, None, 0))
  over_runs = jax.vmap(over_alpha, in_axes=(0, 0, 0, None, None))
  return np.asarray(over_runs(ep.states, ep.rewards, ep.lengths, V0, jnp.asarray(alphas, jnp.float32)))


def _random_walk_5(key, runs: int, num_episodes: int) -> tuple[dict[str, Any], dict[str, Any]]:
  true = mdp.random_walk_true_values(5)
  ep = _episodes(key, runs, num_episodes, 5, 0.0)
  V0 = jnp.full((7,), 0.5).at[0].set(0.0).at[6].set(0.0)
  td_alphas = [0.05, 0.1, 0.15]
  mc_alphas = [0.01, 0.02, 0.03, 0.04]
  rms0 = float(_rms(np.asarray(V0)[None], true)[0])

  def td(s, r, ln, v0, a):
    return mdp.td0(s, r, ln, v0, alpha=a, return_history=True)

  def mc(s, r, ln, v0, a):
    return mdp.monte_carlo(s, r, ln, v0, alpha=a, return_history=True)

  # One sweep per method over the curve alphas and the alpha grid: the RMS vs episodes curves and the mean RMS
  # error over the first 10 episodes both come from the per-episode history.
  grid = np.round(np.linspace(0.02, 0.5, 13), 3)
  td_hist = _sweep(td, ep, V0, np.r_[td_alphas, grid])  # [runs, A, E, S]
  td_err = _rms(td_hist, true)  # [runs, A, E]
  mc_err = _rms(_sweep(mc, ep, V0, np.r_[mc_alphas, grid]), true)
  td_curves, mc_curves = td_err[:, :len(td_alphas)].mean(0), mc_err[:, :len(mc_alphas)].mean(0)  # [A, E]
  td_vs_alpha = td_err[:, len(td_alphas):, :10].mean((0, 2))
  mc_vs_alpha = mc_err[:, len(mc_alphas):, :10].mean((0, 2))
  # Left panel: one run of TD(0), alpha = 0.1, values after 0, 1, 10, 100 episodes.
  one = td_hist[0, td_alphas.index(0.1)]
  shots = {0: np.asarray(V0)}
  shots.update({e: one[e - 1] for e in (1, 10, num_episodes) if e <= num_episodes})
  out = {
      "walk5_td_final_rms": {str(a): round(float(c[-1]), 4) for a, c in zip(td_alphas, td_curves)},
      "walk5_mc_final_rms": {str(a): round(float(c[-1]), 4) for a, c in zip(mc_alphas, mc_curves)},
      "walk5_first10_td_best": [float(grid[np.argmin(td_vs_alpha)]), round(float(td_vs_alpha.min()), 4)],
      "walk5_first10_mc_best": [float(grid[np.argmin(mc_vs_alpha)]), round(float(mc_vs_alpha.min()), 4)],
      "walk5_td_beats_mc": bool(td_curves[:, -1].min() < mc_curves[:, -1].min()),
  }
  plot = {"true": true, "shots": shots, "td_curves": td_curves, "mc_curves": mc_curves, "td_alphas": td_alphas,
          "mc_alphas": mc_alphas, "rms0": rms0, "grid": grid, "td_vs_alpha": td_vs_alpha,
          "mc_vs_alpha": mc_vs_alpha}
  return out, plot


def _random_walk_19(key, runs: int, ns: list[int], lams: list[float], alphas: np.ndarray, lam_alphas: np.ndarray):
  true = mdp.random_walk_true_values(19, -1.0, 1.0)
  ep = _episodes(key, runs, 10, 19, -1.0)
  V0 = jnp.zeros((21,))
  td_n_err = []
  for n in ns:
    def f(s, r, ln, v0, a, n=n):
      return mdp.td_n(s, r, ln, v0, n=n, alpha=a, return_history=True)
    td_n_err.append(_rms(_sweep(f, ep, V0, alphas), true).mean((0, 2)))  # [A]
  td_n_err = np.stack(td_n_err)  # [n, A]

  def lam_fn(s, r, ln, v0, a, lam):
    return mdp.td_lambda(s, r, ln, v0, lam=lam, alpha=a, view="forward", return_history=True)

  def over_lam(s, r, ln, v0, a):
    return jax.vmap(lambda lam: lam_fn(s, r, ln, v0, a, lam))(jnp.asarray(lams, jnp.float32))

  hist = _sweep(over_lam, ep, V0, lam_alphas)  # [runs, A, L, E, S]
  lam_err = _rms(hist, true).mean((0, 3)).T  # [L, A]

  def best(err, labels, grid):
    i = np.argmin(np.where(np.isfinite(err), err, np.inf), axis=1)
    return {str(lab): [round(float(grid[j]), 4), round(float(err[k, j]), 4)] for k, (lab, j) in
            enumerate(zip(labels, i))}

  n_min = np.nanmin(td_n_err, axis=1)
  l_min = np.nanmin(lam_err, axis=1)
  out = {
      "walk19_td_n_best_alpha_err": best(td_n_err, ns, alphas),
      "walk19_td_lambda_best_alpha_err": best(lam_err, lams, lam_alphas),
      "walk19_best_n": int(ns[int(np.argmin(n_min))]),
      "walk19_best_lambda": float(lams[int(np.argmin(l_min))]),
      "walk19_intermediate_n_best": bool(0 < int(np.argmin(n_min)) < len(ns) - 1),
      "walk19_intermediate_lambda_best": bool(0 < int(np.argmin(l_min)) < len(lams) - 1),
  }
  return out, {"alphas": alphas, "lam_alphas": lam_alphas, "ns": ns, "lams": lams, "td_n_err": td_n_err,
               "lam_err": lam_err}


def _figures(workdir: str, mb: dict, w5: dict, w19: dict) -> list[str]:
  plt = _common.pyplot()

  names = []
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  ax = axes[0]
  v = mb["v_random"].reshape(4, 4)
  ax.imshow(v, cmap="viridis")
  for (r, c), val in np.ndenumerate(v):
    s = r * 4 + c
    arrow = "" if s in (0, 15) else _ARROWS[mb["ex41_actions"][s]]
    ax.text(c, r, f"{val:.0f}\n{arrow}", ha="center", va="center", color="w", fontsize=10)
  ax.set_title("Example 4.1: v of the random policy,\ngreedy (optimal) action")
  ax.set_xticks([])
  ax.set_yticks([])
  ax = axes[1]
  rows, cols = _WALL_WORLD["rows"], _WALL_WORLD["cols"]
  vw = mb["wall_V"].reshape(rows, cols).copy()
  walls = set(_WALL_WORLD["walls"])
  img = np.ma.array(vw, mask=np.zeros_like(vw, bool))
  for (r, c) in walls:
    img.mask[r, c] = True
  ax.imshow(img, cmap="RdYlGn", vmin=-1, vmax=1)
  for r in range(rows):
    for c in range(cols):
      if (r, c) in walls:
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, color="0.3"))
        continue
      term = _WALL_WORLD["terminals"].get((r, c))
      label = f"{term:+.0f}" if term is not None else f"{vw[r, c]:.2f}\n{_ARROWS[mb['wall_actions'][r * cols + c]]}"
      ax.text(c, r, label, ha="center", va="center", fontsize=9)
  ax.set_title("wall world (slip 0.2, step -0.04, γ = 0.95):\nV* and the optimal policy")
  ax.set_xticks([])
  ax.set_yticks([])
  ax = axes[2]
  ax.semilogy(np.arange(1, len(mb["vi_errors"]) + 1), np.maximum(mb["vi_errors"], 1e-16))
  ax.axvline(mb["pi_iterations"], color="tab:red", ls="--", label=f"policy iteration: {mb['pi_iterations']} evals")
  ax.set_xlabel("value-iteration sweep k")
  ax.set_ylabel("max |V_k - V*|")
  ax.legend()
  ax.set_title("wall world: value iteration convergence")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "mdp_gridworlds.png"), dpi=100)
  plt.close(fig)
  names.append("mdp_gridworlds.png")

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
  ax = axes[0]
  x = np.arange(1, 6)
  for e, vals in w5["shots"].items():
    ax.plot(x, vals[1:-1], marker="o", label=f"{e} episodes")
  ax.plot(x, w5["true"][1:-1], "k--", label="true")
  ax.set_xticks(x, list("ABCDE"))
  ax.set_title("5-state walk: TD(0) estimates, α = 0.1")
  ax.legend(fontsize=8)
  ax = axes[1]
  for a, c in zip(w5["td_alphas"], w5["td_curves"]):
    ax.plot(np.r_[w5["rms0"], c], label=f"TD α={a}")
  for a, c in zip(w5["mc_alphas"], w5["mc_curves"]):
    ax.plot(np.r_[w5["rms0"], c], ls="--", label=f"MC α={a}")
  ax.set_xlabel("episodes")
  ax.set_ylabel("RMS error (averaged over runs)")
  ax.set_title("Example 6.2 (right)")
  ax.legend(fontsize=7)
  ax = axes[2]
  ax.plot(w5["grid"], w5["td_vs_alpha"], marker="o", label="TD(0)")
  ax.plot(w5["grid"], w5["mc_vs_alpha"], marker="s", label="MC (every-visit)")
  ax.set_xlabel("α")
  ax.set_ylabel("mean RMS error, first 10 episodes")
  ax.legend()
  ax.set_title("5-state walk: error vs α")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "random_walk_5.png"), dpi=100)
  plt.close(fig)
  names.append("random_walk_5.png")

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  panels = ((axes[0], w19["td_n_err"], w19["ns"], w19["alphas"], "n", "online n-step TD (2nd ed. Figure 7.2)"),
            (axes[1], w19["lam_err"], w19["lams"], w19["lam_alphas"], "λ",
             "offline λ-return, increments summed per episode\n(1st ed. Figure 7.6; = offline TD(λ))"))
  for ax, err, labels, grid, sym, title in panels:
    for e, lab in zip(err, labels):
      ax.plot(grid, np.minimum(e, 0.6), marker=".", label=f"{sym}={lab}")
    ax.set_ylim(0.2, 0.56)
    ax.set_xlabel("α")
    ax.set_ylabel("RMS error, first 10 episodes (19 states)")
    ax.set_title(title)
    ax.legend(fontsize=7)
  axes[1].set_xscale("log")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "random_walk_19.png"), dpi=100)
  plt.close(fig)
  names.append("random_walk_19.png")
  return names


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
  """Gridworlds (VI vs PI) and the random-walk TD/MC comparisons; writes three PNGs; returns the headline numbers."""
  os.makedirs(workdir, exist_ok=True)
  k5, k19 = jax.random.split(jax.random.key(seed))
  mb_out, mb_plot = _model_based()
  if quick:
    w5_out, w5_plot = _random_walk_5(k5, runs=20, num_episodes=100)
    ns, lams, alphas = [1, 4, 64], [0.0, 0.8, 1.0], np.array([0.1, 0.3, 0.5, 0.8])
    lam_alphas = np.array([0.01, 0.03, 0.1, 0.2])
    runs19 = 20
  else:
    w5_out, w5_plot = _random_walk_5(k5, runs=100, num_episodes=100)
    ns = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    lams = [0.0, 0.4, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0]
    alphas = np.round(np.linspace(0.05, 1.0, 20), 3)
    lam_alphas = np.round(np.geomspace(0.005, 0.4, 16), 4)
    runs19 = 100
  w19_out, w19_plot = _random_walk_19(k19, runs19, ns, lams, alphas, lam_alphas)
  figures = _figures(workdir, mb_plot, w5_plot, w19_plot)
  return {**mb_out, **w5_out, **w19_out, "walk19_runs": runs19, "figures": figures}
