"""Benchmark part: Isomap and PCA (research.classical.manifold, seed 003 §9) vs scikit-learn.

Isomap on a swiss roll (d = 3, n_neighbors = 10, 2 components) at n = 500 and 2000 against scikit-learn's
``Isomap`` with ``path_method="FW"`` (Floyd–Warshall, the algorithm the JAX version runs) and ``path_method="D"``
(Dijkstra, scikit-learn's fast choice on sparse kNN graphs), ``eigen_solver="dense"``. PCA (10 components) on
Gaussian data at n x d = 10000 x 64 and 100000 x 128: ``pca(solver="svd")`` vs ``PCA(svd_solver="full")`` and
``pca(solver="covariance")`` vs ``PCA(svd_solver="covariance_eigh")``. JAX runs in its default dtype (float32
unless ``jax_enable_x64``), scikit-learn in float64; the JAX timings are the public functions (input checks and,
for Isomap, the host-side connectivity check between its two jitted stages included).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from benchmarks.classical_parts import common
from research.classical import manifold


def _isomap_rows(repeats: int) -> list[dict]:
  from sklearn import datasets
  from sklearn.manifold import Isomap

  rows = []
  for n in (500, 2000):
    x_np, _ = datasets.make_swiss_roll(n, noise=0.05, random_state=0)
    x = jnp.asarray(x_np)
    jax_ms = common.median_ms(lambda: manifold.isomap(x, 2, 10).embedding, repeats)
    for path_method in ("FW", "D"):
      est = Isomap(n_neighbors=10, n_components=2, path_method=path_method, eigen_solver="dense")
      peer_ms = common.median_ms(lambda: est.fit_transform(x_np), repeats)
      rows.append(common.row("isomap", f"n={n},d=3,k=10", f"sklearn Isomap {path_method}", jax_ms,
                             peer_ms, dtype=str(x.dtype)))
  return rows


def _pca_rows(repeats: int) -> list[dict]:
  from sklearn.decomposition import PCA

  rows = []
  for n, d in ((10_000, 64), (100_000, 128)):
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))  # correlated features
    x = jnp.asarray(x_np)
    for solver, sk_solver in (("svd", "full"), ("covariance", "covariance_eigh")):
      jax_ms = common.median_ms(lambda: manifold.pca(x, 10, solver=solver).embedding, repeats)
      est = PCA(10, svd_solver=sk_solver)
      peer_ms = common.median_ms(lambda: est.fit_transform(x_np), repeats)
      rows.append(common.row(f"pca[{solver}]", f"n={n},d={d},k=10", f"sklearn PCA {sk_solver}",
                             jax_ms, peer_ms, dtype=str(x.dtype)))
  return rows


def rows(repeats: int = 5) -> list[dict]:
  """Isomap (n = 500, 2000) and PCA (10000 x 64, 100000 x 128) rows: JAX vs scikit-learn."""
  return _isomap_rows(repeats) + _pca_rows(repeats)
