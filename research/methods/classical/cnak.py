"""Worked example of Cnak, Cluster Number Assisted K-means (seed 000 Q7): recover k on blobs with k = 3..8.

For every true k, ``make_blobs`` draws n points around k centres (kept at least ``min_sep`` apart) in 2-D; Cnak
scores k = 1..k_max (KM score: mean Kuhn–Munkres-matched distance between subsample and full-data centroids) and
picks the minimiser. Figures: the score curves (one per data set, true k marked) and the chosen clustering of the
largest-k data set. Every data set has the same n and k_max, so one compiled program serves them all.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from research.methods.classical import _common
from research.classical import clustering


def _centres(rng: np.random.Generator, k: int, box: float, min_sep: float) -> np.ndarray:
  """k centres uniform in [-box, box]^2, pairwise at least min_sep apart (rejection sampling)."""
  centres: list[np.ndarray] = []
  while len(centres) < k:
    c = rng.uniform(-box, box, size=2)
    if all(np.linalg.norm(c - o) >= min_sep for o in centres):
      centres.append(c)
  return np.stack(centres)


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict:
  """Runs Cnak on blob data sets; writes ``cnak_scores.png`` and ``cnak_clusters.png``; returns the numbers."""
  make_blobs = _common.data_module("sklearn.datasets", "cnak").make_blobs
  plt = _common.pyplot()

  os.makedirs(workdir, exist_ok=True)
  true_ks = [3, 5] if quick else [3, 4, 5, 6, 7, 8]
  n = 150 if quick else 600
  k_max = 7 if quick else 11
  num_samples = 4 if quick else 20
  n_init = 1 if quick else 3
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  t0 = time.perf_counter()
  results = []
  for i, k in enumerate(true_ks):
    centres = _centres(rng, k, box=12.0, min_sep=6.0)
    x, y = make_blobs(n_samples=n, centers=centres, cluster_std=1.0, random_state=seed + i)
    res = clustering.cnak(x, jax.random.fold_in(key, i), k_max, num_samples=num_samples, n_init=n_init)
    results.append((k, x, y, res))
  wall = time.perf_counter() - t0

  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for k, _, _, res in results:
    kv = np.asarray(res.k_values)
    sc = np.asarray(res.scores)
    (line,) = ax.plot(kv, sc, marker="o", ms=3, label=f"true k={k}, chosen {int(res.k)}")
    ax.plot([k], [sc[k - kv[0]]], marker="*", ms=12, color=line.get_color())
  ax.set_yscale("log")
  ax.set_xlabel("k")
  ax.set_ylabel("KM score (mean matched centroid distance)")
  ax.set_title("Cnak scores on blobs (star: true k)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "cnak_scores.png"), dpi=110)
  plt.close(fig)

  k, x, _, res = results[-1]
  fig, ax = plt.subplots(figsize=(4.5, 4.2))
  ax.scatter(x[:, 0], x[:, 1], c=np.asarray(res.labels), s=6, cmap="tab10")
  c = np.asarray(res.centers)
  ax.scatter(c[:, 0], c[:, 1], marker="x", s=80, color="k")
  ax.set_title(f"true k={k}, Cnak k={int(res.k)}")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "cnak_clusters.png"), dpi=110)
  plt.close(fig)

  chosen = [int(r.k) for _, _, _, r in results]
  return {
      "true_k": true_ks,
      "chosen_k": chosen,
      "accuracy": round(float(np.mean(np.array(chosen) == np.array(true_ks))), 3),
      "scores": {str(k): [round(float(s), 4) for s in np.asarray(r.scores)] for k, _, _, r in results},
      "n": n, "k_max": k_max, "num_samples": num_samples,
      "wall_s": round(wall, 2),
      "figures": ["cnak_scores.png", "cnak_clusters.png"],
  }
