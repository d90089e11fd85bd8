"""Benchmark part: one EM step of the Gaussian mixture (seed 003 §3.1), JAX (jitted e_step + m_step) vs sklearn.

sklearn's peer is ``GaussianMixture._e_step`` + ``_m_step`` on a mixture whose parameters were set by a one-
iteration fit (``max_iter=1``); both sides run in float64 on the same data and parameters, full covariances.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.classical_parts import common
from research.classical import gmm

SIZES = ((1000, 8, 4), (50000, 32, 16))  # (n, d, k)


@jax.jit
def _em_step(x, weights, means, covariances):
  _, log_resp = gmm.e_step(x, weights, means, covariances, "full")
  return gmm.m_step(x, log_resp, "full", 1e-6)


def rows(repeats: int = 5) -> list[dict]:
  """Two rows (small, large): median ms of one EM step, JAX vs sklearn."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.mixture import GaussianMixture

  out = []
  rng = np.random.default_rng(0)
  for n, d, k in SIZES:
    centres = rng.normal(scale=4.0, size=(k, d))
    x = centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)
      ref = GaussianMixture(k, covariance_type="full", max_iter=1, random_state=0).fit(x)

    def peer():
      _, log_resp = ref._e_step(x)
      ref._m_step(x, log_resp)
      return log_resp

    with jax.enable_x64(True):
      args = tuple(jnp.asarray(a, jnp.float64) for a in (x, ref.weights_, ref.means_, ref.covariances_))
      jax_ms = common.median_ms(lambda: _em_step(*args), repeats=repeats)
    weights, means, covs = ref.weights_.copy(), ref.means_.copy(), ref.covariances_.copy()
    peer_ms = common.median_ms(peer, repeats=repeats)
    ref.weights_, ref.means_, ref.covariances_ = weights, means, covs
    out.append(common.row("gmm_em_step_full", f"n={n},d={d},k={k}", "sklearn.GaussianMixture._e_step+_m_step",
                          jax_ms, peer_ms, dtype="float64"))
  return out
