"""Distances between Task2Vec embeddings (Task2Vec §3.2, "Symmetric and asymmetric TASK2VEC metrics").

* ``cosine`` = d_sym(a, b) = cos-distance(h_a / (h_a + h_b), h_b / (h_a + h_b)) (the paper's symmetric distance;
  the element-wise normalisation makes it insensitive to the overall Fisher scale of each parameter).
* ``normalized_cosine``: cos-distance of the hessians divided by their prior scale (h / scale).
* ``correlation``: 1 - Pearson correlation of the hessians.
* ``kl`` / ``jsd``: KL divergence / Jensen-Shannon divergence between the hessians normalised to distributions
  over filters (p = h / Σh): "where the task's information sits" (kl is asymmetric; both are >= 0).
* ``asymmetric(src, tgt, alpha)`` = d_asym(src -> tgt) = d_sym(src, tgt) - α · d_sym(src, t0), t0 the trivial
  embedding (prior scale): more complex sources are brought closer (better experts to transfer from).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from research.methods.task2vec.fisher import Embedding, trivial_embedding

_EPS = 1e-30


def _h(e: Embedding | np.ndarray) -> np.ndarray:
  return np.asarray(e.hessian if isinstance(e, Embedding) else e, np.float64)


def _check(a, b):
  if a.shape != b.shape:
    raise ValueError(f"embeddings have different dimensions {a.shape} vs {b.shape} (different probes?)")


def _cos(u, v) -> float:
  nu, nv = np.linalg.norm(u), np.linalg.norm(v)
  if nu == 0 or nv == 0:
    return 1.0
  return float(max(0.0, 1.0 - np.dot(u, v) / (nu * nv)))


def cosine(a: Embedding, b: Embedding) -> float:
  """d_sym (Task2Vec §3.2)."""
  ha, hb = _h(a), _h(b)
  _check(ha, hb)
  s = ha + hb + _EPS
  return _cos(ha / s, hb / s)


def normalized_cosine(a: Embedding, b: Embedding) -> float:
  ha, hb = _h(a) / np.asarray(a.scale), _h(b) / np.asarray(b.scale)
  _check(ha, hb)
  return _cos(ha, hb)


def correlation(a: Embedding, b: Embedding) -> float:
  ha, hb = _h(a), _h(b)
  _check(ha, hb)
  ha, hb = ha - ha.mean(), hb - hb.mean()
  return _cos(ha, hb) if np.any(ha) and np.any(hb) else 1.0


def _dist(h):
  h = np.maximum(h, 0) + _EPS
  return h / h.sum()


def kl(a: Embedding, b: Embedding) -> float:
  p, q = _dist(_h(a)), _dist(_h(b))
  _check(p, q)
  return float(max(0.0, np.sum(p * (np.log(p) - np.log(q)))))


def jsd(a: Embedding, b: Embedding) -> float:
  p, q = _dist(_h(a)), _dist(_h(b))
  _check(p, q)
  m = 0.5 * (p + q)
  return float(max(0.0, 0.5 * np.sum(p * (np.log(p) - np.log(m))) + 0.5 * np.sum(q * (np.log(q) - np.log(m)))))


def asymmetric(src: Embedding, tgt: Embedding, alpha: float = 0.15, trivial: Embedding | None = None) -> float:
  """d_asym(src -> tgt) = d_sym(src, tgt) - α · d_sym(src, t0) (Task2Vec §3.2, α = 0.15)."""
  t0 = trivial_embedding(src) if trivial is None else trivial
  return cosine(src, tgt) - alpha * cosine(src, t0)


DISTANCES: dict[str, Callable[[Embedding, Embedding], float]] = {
    "cosine": cosine, "normalized_cosine": normalized_cosine, "correlation": correlation, "kl": kl, "jsd": jsd,
    "asymmetric": asymmetric,
}
SYMMETRIC = ("cosine", "normalized_cosine", "correlation", "jsd")


def get(name: str) -> Callable[[Embedding, Embedding], float]:
  if name not in DISTANCES:
    raise ValueError(f"unknown distance {name!r}; choose from {sorted(DISTANCES)}")
  return DISTANCES[name]


def cdist(sources: Sequence[Embedding], targets: Sequence[Embedding], distance: str = "cosine") -> np.ndarray:
  """``[len(sources), len(targets)]`` matrix of d(sources[i], targets[j])."""
  f = get(distance)
  return np.array([[f(a, b) for b in targets] for a in sources], np.float64).reshape(len(sources), len(targets))


def pdist(embeddings: Sequence[Embedding], distance: str = "cosine") -> np.ndarray:
  """``[n, n]`` matrix; symmetric distances are computed once per pair and have an exact zero diagonal."""
  f = get(distance)
  n = len(embeddings)
  out = np.zeros((n, n), np.float64)
  for i in range(n):
    for j in range(n):
      if distance in SYMMETRIC and j < i:
        out[i, j] = out[j, i]
      elif i != j or distance not in SYMMETRIC:
        out[i, j] = f(embeddings[i], embeddings[j])
  return out
