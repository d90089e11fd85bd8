"""Worked example of the HMM (seed 003 §3.2): the dishonest casino of Durbin et al. (1998), §3.2.

A casino mostly rolls a fair die but sometimes switches to a loaded one (P(6) = 1/2, every other face 1/10);
it switches fair -> loaded with probability 0.05 and loaded -> fair with 0.1 per roll. From the rolls alone:
Viterbi and posterior decoding recover the loaded periods (accuracy against the sampled truth), and Baum–Welch
from a random start re-learns (π, A, B); the learned matrices are reported after matching the state order (the
state with the larger P(6) is "loaded"), with the log-likelihood curve.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.methods.classical import _common
from research.classical import hmm

FAIR, LOADED = 0, 1
A_TRUE = np.array([[0.95, 0.05], [0.10, 0.90]])
B_TRUE = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])
PI_TRUE = np.array([2 / 3, 1 / 3])  # stationary distribution of A_TRUE


def _round(a: Any, nd: int = 4) -> Any:
  return np.round(np.asarray(a, np.float64), nd).tolist()


def _figures(workdir: str, rolls, states, post_loaded, path, history, others, ll_true, n_show: int) -> list[str]:
  plt = _common.pyplot()

  t = np.arange(n_show)
  fig, axes = plt.subplots(3, 1, figsize=(12, 6.5), sharex=True, gridspec_kw={"height_ratios": [1.2, 1, 0.5]})
  for ax in axes:  # shade the true loaded periods
    ax.fill_between(t, 0, 1, where=states[:n_show] == LOADED, step="mid", color="tab:red", alpha=0.15,
                    transform=ax.get_xaxis_transform(), label="true: loaded")
  axes[0].scatter(t, rolls[:n_show] + 1, s=6, c=np.where(rolls[:n_show] == 5, "tab:red", "k"))
  axes[0].set_ylabel("roll")
  axes[0].set_yticks(range(1, 7))
  axes[0].set_title("Dishonest casino: rolls (6 in red), true loaded periods (shaded)")
  axes[1].plot(t, post_loaded[:n_show], color="tab:blue", lw=1.2, label="posterior P(loaded | rolls)")
  axes[1].axhline(0.5, color="gray", lw=0.6, ls="--")
  axes[1].set_ylabel("P(loaded)")
  axes[1].set_ylim(-0.02, 1.02)
  axes[1].legend(loc="upper right", fontsize=8)
  axes[2].step(t, path[:n_show] == LOADED, where="mid", color="tab:green", label="Viterbi: loaded")
  axes[2].set_yticks([0, 1], ["fair", "loaded"])
  axes[2].set_xlabel("roll index")
  axes[2].legend(loc="center right", fontsize=8)
  fig.tight_layout()
  f1 = "hmm_casino_decoding.png"
  fig.savefig(os.path.join(workdir, f1), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for j, h in enumerate(others):
    ax.plot(np.arange(1, len(h) + 1), h, color="gray", lw=0.8, alpha=0.6,
            label="other random starts" if j == 0 else None)
  ax.plot(np.arange(1, len(history) + 1), history, marker=".", ms=3, label="Baum–Welch, best random start")
  ax.axhline(ll_true, color="tab:red", ls="--", lw=1, label="true parameters")
  ax.set_xscale("log")
  ax.set_xlabel("EM iteration")
  ax.set_ylabel("total log-likelihood")
  ax.set_title("Baum–Welch log-likelihood (non-decreasing)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  f2 = "hmm_baum_welch_ll.png"
  fig.savefig(os.path.join(workdir, f2), dpi=110)
  plt.close(fig)
  return [f1, f2]


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict:
  """Dishonest casino: decoding accuracy with the true parameters and Baum–Welch recovery from a random start.

  quick: 4 sequences of 1,000 rolls, 4 random starts of at most 300 EM iterations (tol 1e-5); full: 20
  sequences of 2,500 rolls (50,000 rolls), 10 random starts of at most 1,000 iterations (tol 1e-6). The start
  with the highest final log-likelihood is reported.
  """
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  n_seq, t_len, max_iter, restarts, tol = (4, 1000, 300, 4, 1e-5) if quick else (20, 2500, 1000, 10, 1e-6)
  key = jax.random.key(seed)
  k_sample, k_init = jax.random.split(key)
  states, rolls = jax.jit(jax.vmap(lambda k: hmm.sample(k, PI_TRUE, A_TRUE, B_TRUE, t_len)))(
      jax.random.split(k_sample, n_seq))
  states, rolls = np.asarray(states), np.asarray(rolls)  # [N, T]

  @jax.jit
  def decode(rolls):
    log_pi, log_A, log_B = (jnp.log(jnp.asarray(v)) for v in (PI_TRUE, A_TRUE, B_TRUE))
    log_e = jnp.moveaxis(log_B[:, rolls], 0, -1)  # [N, T, S]
    fb = jax.vmap(lambda le: hmm.forward_backward(log_pi, log_A, le))(log_e)
    vt = jax.vmap(lambda le: hmm.viterbi(log_pi, log_A, le))(log_e)
    return fb.posteriors[..., LOADED], vt.path, jnp.sum(fb.log_likelihood)

  post_loaded, path, ll_true = (np.asarray(v) for v in decode(rolls))
  viterbi_acc = float(np.mean(path == states))
  posterior_acc = float(np.mean((post_loaded > 0.5) == (states == LOADED)))
  ll_true = float(ll_true)

  # EM finds a local maximum: run several random starts at once (vmap over keys) and keep the best.
  bws = jax.jit(jax.vmap(lambda k: hmm.baum_welch(rolls, 2, 6, key=k, max_iter=max_iter, tol=tol)))(
      jax.random.split(k_init, restarts))
  bws = jax.tree.map(np.asarray, bws)
  restart_ll = bws.log_likelihood.astype(np.float64)
  best = int(np.argmax(restart_ll))
  bw = jax.tree.map(lambda v: v[best], bws)
  n_iter = int(bw.num_iter)
  history = bw.log_likelihood_history.astype(np.float64)[:n_iter]
  A_hat, B_hat, pi_hat = (np.exp(np.asarray(v, np.float64)) for v in (bw.log_A, bw.log_B, bw.log_pi))
  order = np.argsort(B_hat[:, 5])  # fair (smaller P(6)) first, then loaded
  A_hat, B_hat, pi_hat = A_hat[np.ix_(order, order)], B_hat[order], pi_hat[order]
  scale = max(1.0, float(np.abs(history).max()))
  hist_all, n_all = bws.log_likelihood_history.astype(np.float64), bws.num_iter
  monotone = all(bool(np.all(np.diff(h[:n]) >= -1e-5 * scale)) for h, n in zip(hist_all, n_all))  # every start

  figures = _figures(workdir, rolls[0], states[0], post_loaded[0], path[0], history,
                     [h[:n] for j, (h, n) in enumerate(zip(hist_all, n_all)) if j != best], ll_true, min(t_len, 400))
  return {
      "num_rolls": int(n_seq * t_len),
      "num_sequences": int(n_seq),
      "fraction_loaded": round(float(np.mean(states == LOADED)), 4),
      "viterbi_accuracy": round(viterbi_acc, 4),
      "posterior_accuracy": round(posterior_acc, 4),
      "log_likelihood_true_params": round(ll_true, 3),
      "bw_log_likelihood": round(float(bw.log_likelihood), 3),
      "bw_num_iter": n_iter,
      "bw_converged": bool(bw.converged),
      "bw_restarts": int(restarts),
      "bw_restart_log_likelihoods": _round(restart_ll, 2),
      "bw_monotone": monotone,
      "bw_ll_curve": _round(history[np.unique(np.geomspace(1, n_iter, 12).astype(int)) - 1], 2),
      "learned_A": _round(A_hat, 3),
      "learned_B": _round(B_hat, 3),
      "true_A": _round(A_TRUE, 3),
      "true_B": _round(B_TRUE, 3),
      "learned_switch_fair_to_loaded": round(float(A_hat[0, 1]), 4),
      "learned_switch_loaded_to_fair": round(float(A_hat[1, 0]), 4),
      "learned_emission_loaded_6": round(float(B_hat[1, 5]), 4),
      "learned_pi": _round(pi_hat, 3),
      "max_abs_err_A": round(float(np.abs(A_hat - A_TRUE).max()), 4),
      "max_abs_err_B": round(float(np.abs(B_hat - B_TRUE).max()), 4),
      "seconds": round(time.perf_counter() - t0, 2),
      "figures": figures,
  }
