"""Worked example of seed 003 §11/§12 (KL, JS) and §12.2 (WGAN: Wasserstein vs JS) with research.classical.

1. Forward vs reverse KL (§12 "the difference between forward KL and reverse KL"): fit one Gaussian
   ``q = N(μ, σ²)`` to the bimodal mixture ``p = ½ N(-2, 0.6²) + ½ N(2, 0.6²)`` by grid search over ``(μ, σ)``,
   with the KL integrals computed numerically on a 1-D grid (``divergences.kl`` of the discretised densities).
   ``argmin KL(p||q)`` is mean-seeking (moment matching: ``μ = 0``, ``σ = √(0.6² + 2²) ≈ 2.09``);
   ``argmin KL(q||p)`` is mode-seeking (``μ ≈ ±2``, ``σ ≈ 0.6``, ``KL ≈ log 2``).
2. The WGAN argument (§12.2): for ``U[0, 1]`` vs ``U[θ, 1 + θ]`` the JS divergence is ``θ log 2`` and saturates
   at ``log 2`` once the supports are disjoint (``θ >= 1``), so its gradient vanishes, while ``W1 = θ`` keeps
   growing linearly (exact ``divergences.wasserstein_1d``). The seed's own 2-D example — ``P0 = (0, y)`` vs
   ``Pθ = (θ, y)``, ``y ~ U[0, 1]`` — gives ``JS = log 2`` for every ``θ != 0`` (histograms on a grid) and
   ``W ≈ |θ|`` (entropic OT, ``divergences.sinkhorn`` with Euclidean cost, ε = 0.01).

Run: ``python -m experiments.classical --algos=divergences`` (quick: a few seconds; full: ~10 s on CPU).
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.methods.classical import _common
from research.classical import divergences


def _log_normal_pdf(x, mu, sigma):
  return -0.5 * ((x - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi)


def _normalised(logf):
  """Discretised probabilities on a uniform grid from log-densities (normalised along the last axis)."""
  return jnp.exp(logf - jax.scipy.special.logsumexp(logf, axis=-1, keepdims=True))


def _kl_tables(x, p, mus, sigmas):
  """[len(mus), len(sigmas)] tables of KL(p||q) and KL(q||p) for q = N(μ, σ²) on the grid x."""
  def row(mu):
    q = _normalised(_log_normal_pdf(x[None, :], mu, sigmas[:, None]))   # [S, n]
    return divergences.kl(p[None, :], q), divergences.kl(q, p[None, :])
  return jax.lax.map(row, mus)


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict:
  """Writes ``divergences.png`` into ``workdir``; returns the fitted parameters and the JS / W1 numbers."""
  plt = _common.pyplot()

  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    # --- 1. forward vs reverse KL ------------------------------------------------------------------------------
    n_grid = 401 if quick else 1601
    x = np.linspace(-8.0, 8.0, n_grid)
    comp_mu, comp_sd = 2.0, 0.6
    logp = np.logaddexp(-0.5 * ((x + comp_mu) / comp_sd) ** 2, -0.5 * ((x - comp_mu) / comp_sd) ** 2) \
        - math.log(2 * comp_sd * math.sqrt(2 * math.pi))
    p = np.exp(logp - logp.max())
    p /= p.sum()
    mus = jnp.linspace(-4.0, 4.0, 41 if quick else 161)
    sigmas = jnp.linspace(0.2, 4.0, 39 if quick else 153)
    fwd, rev = jax.jit(_kl_tables)(x, p, mus, sigmas)
    fwd, rev = np.asarray(fwd), np.asarray(rev)
    i_f = np.unravel_index(np.argmin(fwd), fwd.shape)
    i_r = np.unravel_index(np.argmin(rev), rev.shape)
    fit_fwd = (float(mus[i_f[0]]), float(sigmas[i_f[1]]))
    fit_rev = (float(mus[i_r[0]]), float(sigmas[i_r[1]]))

    # --- 2a. JS vs W1 for U[0, 1] vs U[θ, 1 + θ] ------------------------------------------------------------------
    thetas = np.linspace(0.0, 3.0, 7 if quick else 31)
    h = 0.01 if quick else 0.002
    grid = np.arange(-0.5, 4.5, h) + h / 2
    p0 = ((grid >= 0) & (grid < 1)).astype(np.float64)
    shifted = np.stack([((grid >= t - 1e-9) & (grid < 1 + t - 1e-9)).astype(np.float64) for t in thetas])
    js_u = np.asarray(divergences.js(shifted, p0[None, :], normalize=True))
    w1_u = np.array([float(divergences.wasserstein_1d(grid, grid, p0, s)) for s in shifted])
    slope = float(np.polyfit(thetas, w1_u, 1)[0])

    # --- 2b. the seed's 2-D example: (0, y) vs (θ, y), y ~ U[0, 1] ---------------------------------------------
    n_pts = 48 if quick else 100
    y = rng.random(n_pts)
    pts0 = np.stack([np.zeros(n_pts), y], 1)
    thetas2 = np.linspace(0.0, 1.0, 6 if quick else 21)
    eps = 0.01
    w = np.full(n_pts, 1.0 / n_pts)

    def sinkhorn_w(theta):
      pts = jnp.stack([jnp.full(n_pts, theta), jnp.asarray(y)], 1)
      c = jnp.sqrt(jnp.sum((pts0[:, None, :] - pts[None, :, :]) ** 2, -1) + 1e-30)
      return divergences.sinkhorn(w, w, c, eps, max_iter=5000, tol=1e-6).cost

    # one compiled program, one call per θ (under vmap every θ would run as many iterations as the slowest one)
    sinkhorn_w = jax.jit(sinkhorn_w)
    w_2d = np.array([float(sinkhorn_w(t)) for t in thetas2])
    edges_x = np.linspace(-0.025, 1.025, 22)           # bins of width 0.05 centred on multiples of 0.05
    edges_y = np.linspace(0.0, 1.0, 11)
    h0 = np.histogram2d(pts0[:, 0], pts0[:, 1], [edges_x, edges_y])[0].ravel()
    hs = np.stack([np.histogram2d(np.full(n_pts, t), y, [edges_x, edges_y])[0].ravel() for t in thetas2])
    js_2d = np.asarray(divergences.js(hs, h0[None, :], normalize=True))
  wall = time.perf_counter() - t0

  # --- figure --------------------------------------------------------------------------------------------------
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  xs = np.asarray(x)
  dens = np.exp(np.asarray(logp))
  axes[0].plot(xs, dens, "k", lw=2, label="p: bimodal mixture")
  for (mu, sd), name, col in ((fit_fwd, "argmin KL(p||q) (mean-seeking)", "C0"),
                              (fit_rev, "argmin KL(q||p) (mode-seeking)", "C3")):
    axes[0].plot(xs, np.exp(np.asarray(_log_normal_pdf(xs, mu, sd))), col, label=f"{name}: μ={mu:.2f}, σ={sd:.2f}")
  axes[0].set_xlim(-6, 6)
  axes[0].set_title("Fitting one Gaussian: forward vs reverse KL")
  axes[0].legend(fontsize=7)
  axes[1].plot(thetas, js_u, "o-", label="JS(U[0,1] || U[θ,1+θ])")
  axes[1].plot(thetas, w1_u, "s-", label="W1 (exact, sorted CDFs)")
  axes[1].axhline(math.log(2), color="gray", ls="--", label="log 2")
  axes[1].set_xlabel("shift θ")
  axes[1].set_title("JS saturates at log 2, W1 grows linearly")
  axes[1].legend(fontsize=8)
  axes[2].plot(thetas2, js_2d, "o-", label="JS (histograms)")
  axes[2].plot(thetas2, w_2d, "s-", label=f"W (Sinkhorn <P,C>, ε={eps})")
  axes[2].plot(thetas2, thetas2, "k:", label="|θ|")
  axes[2].axhline(math.log(2), color="gray", ls="--")
  axes[2].set_xlabel("θ")
  axes[2].set_title("Seed §12.2: (0, y) vs (θ, y), y ~ U[0,1]")
  axes[2].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "divergences.png"), dpi=110)
  plt.close(fig)

  r4 = lambda v: round(float(v), 4)
  return {
      "forward_kl_fit": {"mu": r4(fit_fwd[0]), "sigma": r4(fit_fwd[1]), "kl": r4(fwd[i_f])},
      "reverse_kl_fit": {"mu": r4(fit_rev[0]), "sigma": r4(fit_rev[1]), "kl": r4(rev[i_r])},
      "moment_matching_sigma": r4(math.sqrt(comp_sd ** 2 + comp_mu ** 2)),
      "js_uniform": [r4(v) for v in js_u],
      "w1_uniform": [r4(v) for v in w1_u],
      "thetas_uniform": [r4(t) for t in thetas],
      "js_saturation": r4(js_u[-1]),
      "log2": r4(math.log(2)),
      "w1_slope": r4(slope),
      "seed2d_thetas": [r4(t) for t in thetas2],
      "seed2d_js": [r4(v) for v in js_2d],
      "seed2d_sinkhorn_w": [r4(v) for v in w_2d],
      "wall_s": round(wall, 2),
      "figures": ["divergences.png"],
  }
