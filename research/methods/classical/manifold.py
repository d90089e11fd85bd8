"""Worked example of manifold learning and normalized cut (seed 003 §9): swiss roll, digits, two moons / circles.

1. Swiss roll (scikit-learn ``make_swiss_roll``, n = 1000; 300 with ``quick``): PCA, kernel PCA (rbf, gamma =
   1 / median squared distance), Isomap, LLE and Laplacian eigenmaps in 2-D, coloured by the roll parameter t.
   Unrolling is measured by |Spearman rho| between the first embedding coordinate and t (and the best of the two
   coordinates), with numpy ranks: a linear method cannot unroll, the graph methods do (n_neighbors = 10; 5 for
   Isomap and Laplacian eigenmaps with ``quick``, where 300 points are too sparse and 10 neighbours short-circuit
   the layers of the roll; LLE keeps 10, it does not unroll 300 points with any small k).
2. Digits (``load_digits``, 1797 points; 500 with ``quick``; 64-D): each method in 2-D, coloured by class, with
   the leave-one-out 5-NN classification accuracy in the embedding (numpy).
3. Normalized cut (Shi & Malik, k-NN affinity) vs k-means (numpy, k-means++ with 10 restarts) on two moons and
   two circles: adjusted Rand index (numpy) against the generating labels.
Everything runs in float64 (``jax.enable_x64``): LLE needs it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from research.methods.classical import _common
from research.classical import manifold

METHODS = ("pca", "kernel_pca", "isomap", "lle", "laplacian_eigenmaps")


def _datasets():
  return _common.data_module("sklearn.datasets", "manifold")


def _median_gamma(x: np.ndarray) -> float:
  """1 / median pairwise squared distance (the usual rbf bandwidth heuristic)."""
  sq = np.sum(x * x, axis=1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
  return float(1.0 / np.median(d2[np.triu_indices(len(x), 1)]))


def _embed(method: str, x: np.ndarray, n_neighbors: int, lle_neighbors: int, gamma: float) -> np.ndarray:
  if method == "pca":
    r = manifold.pca(x, 2)
  elif method == "kernel_pca":
    r = manifold.kernel_pca(x, 2, "rbf", gamma=gamma)
  elif method == "isomap":
    r = manifold.isomap(x, 2, n_neighbors)
  elif method == "lle":
    r = manifold.lle(x, 2, lle_neighbors)
  else:
    r = manifold.laplacian_eigenmaps(x, 2, n_neighbors)
  return np.asarray(r.embedding)


def _ranks(v: np.ndarray) -> np.ndarray:
  r = np.empty(len(v))
  r[np.argsort(v, kind="stable")] = np.arange(len(v))
  return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation (no tie correction: continuous data)."""
  return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def knn_loo_accuracy(z: np.ndarray, y: np.ndarray, k: int = 5) -> float:
  """Leave-one-out k-NN (majority vote, ties to the smallest label) accuracy of labels y [n] from points z [n, m]."""
  d2 = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
  np.fill_diagonal(d2, np.inf)
  nbr = np.argsort(d2, axis=1)[:, :k]
  votes = np.zeros((len(y), int(y.max()) + 1))
  np.add.at(votes, (np.repeat(np.arange(len(y)), k), y[nbr].ravel()), 1)
  return float(np.mean(np.argmax(votes, axis=1) == y))


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
  """Adjusted Rand index (Hubert & Arabie 1985) from the contingency table."""
  _, ai = np.unique(a, return_inverse=True)
  _, bi = np.unique(b, return_inverse=True)
  table = np.zeros((ai.max() + 1, bi.max() + 1))
  np.add.at(table, (ai, bi), 1)
  comb = lambda v: np.sum(v * (v - 1) / 2)  # noqa: E731
  index, rows, cols, total = comb(table), comb(table.sum(1)), comb(table.sum(0)), comb(np.array([len(a)]))
  expected = rows * cols / total
  return float((index - expected) / (0.5 * (rows + cols) - expected))


def kmeans_numpy(x: np.ndarray, k: int, seed: int, n_init: int = 10, iters: int = 100) -> np.ndarray:
  """Plain k-means (k-means++ seeding, Lloyd, best of n_init by inertia): labels [n]."""
  rng = np.random.default_rng(seed)
  best, best_inertia = None, np.inf
  for _ in range(n_init):
    c = x[[rng.integers(len(x))]]
    for _ in range(1, k):
      d2 = np.min(np.sum((x[:, None] - c[None]) ** 2, -1), 1)
      c = np.vstack([c, x[rng.choice(len(x), p=d2 / d2.sum())]])
    for _ in range(iters):
      lab = np.argmin(np.sum((x[:, None] - c[None]) ** 2, -1), 1)
      new = np.array([x[lab == j].mean(0) if np.any(lab == j) else c[j] for j in range(k)])
      if np.allclose(new, c):
        break
      c = new
    inertia = np.sum(np.min(np.sum((x[:, None] - c[None]) ** 2, -1), 1))
    if inertia < best_inertia:
      best, best_inertia = lab, inertia
  return best


def _figures(workdir, roll, digits, cuts) -> list[str]:
  plt = _common.pyplot()

  x, t, embs, rho = roll
  fig = plt.figure(figsize=(19, 3.4))
  ax = fig.add_subplot(1, 6, 1, projection="3d")
  ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=t, cmap="Spectral", s=4)
  ax.set_title(f"swiss roll (n={len(x)})", fontsize=9)
  for i, m in enumerate(METHODS):
    ax = fig.add_subplot(1, 6, i + 2)
    ax.scatter(embs[m][:, 0], embs[m][:, 1], c=t, cmap="Spectral", s=4)
    ax.set_title(f"{m}: |rho(z1, t)| = {abs(rho[m]):.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  f1 = "manifold_swiss_roll.png"
  fig.savefig(os.path.join(workdir, f1), dpi=100)
  plt.close(fig)

  y, embs, acc = digits
  fig, axes = plt.subplots(1, 5, figsize=(19, 3.8), layout="constrained")
  for ax, m in zip(axes, METHODS):
    sc = ax.scatter(embs[m][:, 0], embs[m][:, 1], c=y, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
    ax.set_title(f"digits {m}: 5-NN acc {acc[m]:.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(sc, ax=axes, ticks=range(10), fraction=0.015)
  f2 = "manifold_digits.png"
  fig.savefig(os.path.join(workdir, f2), dpi=100)
  plt.close(fig)

  fig, axes = plt.subplots(2, 2, figsize=(8, 7.5))
  for r, (name, (x, lab_km, lab_nc, ari_km, ari_nc)) in enumerate(cuts.items()):
    for c, (lab, what, ari) in enumerate(((lab_km, "k-means", ari_km), (lab_nc, "normalized cut", ari_nc))):
      axes[r, c].scatter(x[:, 0], x[:, 1], c=lab, cmap="coolwarm", s=6)
      axes[r, c].set_title(f"{name}: {what}, ARI = {ari:.2f}", fontsize=9)
      axes[r, c].set_aspect("equal")
  fig.tight_layout()
  f3 = "manifold_normalized_cut.png"
  fig.savefig(os.path.join(workdir, f3), dpi=100)
  plt.close(fig)
  return [f1, f2, f3]


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
  """Swiss roll unrolling, digits 5-NN accuracy per method, normalized cut vs k-means ARI (see module docstring)."""
  datasets = _datasets()
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  out: dict[str, Any] = {}
  with jax.enable_x64(True):
    # 1. swiss roll
    n_roll = 300 if quick else 1000
    x, t = datasets.make_swiss_roll(n_roll, noise=0.05, random_state=seed)
    k_roll = 5 if quick else 10  # 300 points are too sparse for 10 neighbours: the graph short-circuits the layers
    gamma = _median_gamma(x)
    embs = {m: _embed(m, x, k_roll, 10, gamma) for m in METHODS}
    rho = {m: spearman(embs[m][:, 0], t) for m in METHODS}
    rho_best = {m: max(abs(spearman(embs[m][:, j], t)) for j in range(2)) for m in METHODS}
    out["swiss_roll_n"] = n_roll
    out["swiss_roll_n_neighbors"] = {"isomap": k_roll, "lle": 10, "laplacian_eigenmaps": k_roll}
    out["swiss_roll_spearman_z1"] = {m: round(abs(v), 4) for m, v in rho.items()}
    out["swiss_roll_spearman_best"] = {m: round(v, 4) for m, v in rho_best.items()}
    roll = (x, t, embs, rho)

    # 2. digits
    d = datasets.load_digits()
    n_dig = 500 if quick else len(d.target)
    idx = np.random.default_rng(seed).permutation(len(d.target))[:n_dig]
    xd, yd = d.data[idx].astype(np.float64), d.target[idx]
    gamma_d = _median_gamma(xd)
    dembs = {m: _embed(m, xd, 15, 30, gamma_d) for m in METHODS}
    acc = {m: knn_loo_accuracy(dembs[m], yd) for m in METHODS}
    out["digits_n"] = n_dig
    out["digits_knn5_accuracy"] = {m: round(v, 4) for m, v in acc.items()}
    out["digits_knn5_accuracy_raw_64d"] = round(knn_loo_accuracy(xd, yd), 4)
    digits = (yd, dembs, acc)

    # 3. normalized cut vs k-means
    n_cut = 200 if quick else 600
    cuts = {}
    for name, (xc, yc) in (("moons", datasets.make_moons(n_cut, noise=0.06, random_state=seed)),
                           ("circles", datasets.make_circles(n_cut, factor=0.5, noise=0.05, random_state=seed))):
      lab_km = kmeans_numpy(xc, 2, seed)
      lab_nc = np.asarray(manifold.normalized_cut(xc, 2, jax.random.key(seed), affinity="nearest_neighbors",
                                                  n_neighbors=10).labels)
      cuts[name] = (xc, lab_km, lab_nc, adjusted_rand_index(yc, lab_km), adjusted_rand_index(yc, lab_nc))
    out["cut_n"] = n_cut
    out["kmeans_ari"] = {k: round(v[3], 4) for k, v in cuts.items()}
    out["normalized_cut_ari"] = {k: round(v[4], 4) for k, v in cuts.items()}

  out["compute_seconds"] = round(time.perf_counter() - t0, 2)
  out["figures"] = _figures(workdir, roll, digits, cuts)
  return out
