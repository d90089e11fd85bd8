"""Synthetic keypoint-matching pairs (the synthetic protocol of deep graph matching papers) and fixed graphs.

A pair (Jiang et al. 2019, GLMNet §5 synthetic experiments; Wang et al. 2019 PCA-GM §5.1 protocol): ``n_inliers``
points uniform in ``[0, 1]^2`` with feature vectors ``f ~ N(0, I_d)``; graph 1 holds them (features ``f``) plus
``U{min_outliers..max_outliers}`` outliers (uniform points, ``N(0, I)`` features); graph 2 holds the same inliers
moved by a random affine map ``p -> R(theta) [[sx, sh], [0, sy]] (p - c) + c + t`` (plus an optional perspective
term), Gaussian position noise ``position_noise`` and feature noise ``f + feature_noise * N(0, I)``, plus its own
outliers (uniform points mapped by the same transform). Both graphs' nodes are randomly permuted; ``perm[i]`` is
the index in graph 2 of graph-1 node ``i``'s partner, ``-1`` for outliers and padding.

Node attributes ``x`` = features, optionally followed by the coordinates normalised per graph (centred, divided by
their RMS radius: translation- and scale-free, rotation is not removed). Fixed-graph baselines from the raw
coordinates: k-NN (symmetrised) and Delaunay (``scipy.spatial.Delaunay``) adjacency, no self loops.

Every array is padded to ``n_max = n_inliers + max_outliers`` nodes with masks. Pairs are drawn from
``np.random.default_rng([seed, stream, index])``: training pairs are stream 0 (infinite, index = step * B + row),
the fixed eval set is stream 1. ``KeypointPairs`` is the checkpointable training iterator (``get_state`` /
``set_state`` as ``research.data.memory.ArrayBatches``); ``eval_batches`` returns the callable the loop's
``eval_data`` expects (batches carry ``valid``).

Batch keys (leading axis B): ``x1, x2`` [B, n_max, F] float32, ``pos1, pos2`` [B, n_max, 2] float32, ``mask1,
mask2`` [B, n_max] float32, ``perm`` [B, n_max] int32 and, when ``graph != 'none'``, ``adj1, adj2``
[B, n_max, n_max] float32.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterator

import jax
import numpy as np

GRAPHS = ("none", "knn", "delaunay")
TRAIN_STREAM, EVAL_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class KeypointPairConfig:
  """Difficulty of the synthetic pairs and the fixed graph built from the coordinates (``graph``)."""
  n_inliers: int = 20
  min_outliers: int = 0
  max_outliers: int = 0
  feature_dim: int = 32
  feature_noise: float = 1.0
  position_noise: float = 0.02
  rotation: float = 0.5  # max |theta| (radians) of the random rotation
  affine: float = 0.2  # scales in [1 - a, 1 + a], shear in [-a, a]
  translation: float = 0.2  # shift in [-t, t]^2
  perspective: float = 0.0  # std of the homography's last-row terms (0: affine only)
  use_coords: bool = True
  graph: str = "knn"
  knn_k: int = 4

  def __post_init__(self):
    if self.n_inliers < 1:
      raise ValueError(f"n_inliers must be >= 1, got {self.n_inliers}; pass e.g. n_inliers=20")
    if not 0 <= self.min_outliers <= self.max_outliers:
      raise ValueError(f"need 0 <= min_outliers <= max_outliers, got min_outliers={self.min_outliers}, "
                       f"max_outliers={self.max_outliers}")
    if self.feature_dim < 1:
      raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")
    for name in ("feature_noise", "position_noise", "rotation", "affine", "translation", "perspective"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.affine >= 1:
      raise ValueError(f"affine must be < 1 (scales in [1 - affine, 1 + affine]), got {self.affine}")
    if self.graph not in GRAPHS:
      raise ValueError(f"graph={self.graph!r}; choose one of {GRAPHS}")
    if self.knn_k < 1:
      raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")

  @property
  def n_max(self) -> int:
    """Padded node count of both graphs."""
    return self.n_inliers + self.max_outliers

  @property
  def num_features(self) -> int:
    """Width F of the node attributes ``x``."""
    return self.feature_dim + (2 if self.use_coords else 0)


# ------------------------------------------------------------------------------------------------ fixed graphs


def knn_adjacency(pos: np.ndarray, k: int) -> np.ndarray:
  """Symmetrised k-NN graph: ``A_ij = 1`` if j is among i's k nearest points or i among j's; no self loops.

  pos: [n, 2] coordinates of the valid nodes. Returns [n, n] float32 (k is capped at n - 1).
  """
  pos = np.asarray(pos, np.float64)
  if pos.ndim != 2:
    raise ValueError(f"pos must be [n, dims], got shape {pos.shape}; pass one graph's coordinates")
  n = len(pos)
  a = np.zeros((n, n), np.float32)
  k = min(k, n - 1)
  if k <= 0:
    return a
  d = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  nn = np.argsort(d, axis=1, kind="stable")[:, :k]
  a[np.repeat(np.arange(n), k), nn.ravel()] = 1.0
  return np.maximum(a, a.T)


def delaunay_adjacency(pos: np.ndarray) -> np.ndarray:
  """Delaunay triangulation edges (``scipy.spatial.Delaunay``), symmetric, no self loops.

  pos: [n, 2]. Returns [n, n] float32; for fewer than 3 points or a degenerate (collinear) set, where no
  triangulation exists, the 2-NN graph instead.
  """
  from scipy.spatial import Delaunay, QhullError
  pos = np.asarray(pos, np.float64)
  if pos.ndim != 2 or pos.shape[1] != 2:
    raise ValueError(f"pos must be [n, 2] planar coordinates, got shape {pos.shape}")
  n = len(pos)
  if n < 3:
    return knn_adjacency(pos, 2)
  try:
    tri = Delaunay(pos)
  except QhullError:
    return knn_adjacency(pos, 2)
  a = np.zeros((n, n), np.float32)
  s = tri.simplices
  for u, v in ((0, 1), (1, 2), (0, 2)):
    a[s[:, u], s[:, v]] = 1.0
    a[s[:, v], s[:, u]] = 1.0
  np.fill_diagonal(a, 0.0)
  return a


def fixed_adjacency(pos: np.ndarray, graph: str, k: int) -> np.ndarray:
  """``knn_adjacency`` or ``delaunay_adjacency`` of ``pos`` [n, 2] by name."""
  if graph == "knn":
    return knn_adjacency(pos, k)
  if graph == "delaunay":
    return delaunay_adjacency(pos)
  raise ValueError(f"graph={graph!r}; a fixed graph is 'knn' or 'delaunay'")


# ------------------------------------------------------------------------------------------------ pairs


def random_transform(rng: np.random.Generator, cfg: KeypointPairConfig) -> Callable[[np.ndarray], np.ndarray]:
  """A random affine (+ perspective) map of the unit square, about its centre: [n, 2] -> [n, 2]."""
  theta = rng.uniform(-cfg.rotation, cfg.rotation)
  sx, sy = rng.uniform(1 - cfg.affine, 1 + cfg.affine, size=2)
  sh = rng.uniform(-cfg.affine, cfg.affine)
  t = rng.uniform(-cfg.translation, cfg.translation, size=2)
  g = rng.normal(0.0, cfg.perspective, size=2) if cfg.perspective > 0 else np.zeros(2)
  rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  lin = rot @ np.array([[sx, sh], [0.0, sy]])
  c = np.array([0.5, 0.5])

  def apply(p: np.ndarray) -> np.ndarray:
    q = p - c
    w = 1.0 + q @ g  # homography's last row [g, 1] in centred coordinates
    return (q @ lin.T) / w[:, None] + c + t
  return apply


def _normalised(pos: np.ndarray) -> np.ndarray:
  q = pos - pos.mean(0)
  return q / max(float(np.sqrt((q ** 2).sum(1).mean())), 1e-6)


def make_pair(cfg: KeypointPairConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One padded pair (keys of the module docstring without the batch axis) from ``rng``.

  Also returns ``inlier_pos1`` [n_inliers, 2] and ``inlier_pos2_clean`` [n_inliers, 2] (graph-2 inlier
  coordinates before position noise, in graph-1 inlier order) -- test hooks, not batched.
  """
  n_in, n = cfg.n_inliers, cfg.n_max
  o1, o2 = rng.integers(cfg.min_outliers, cfg.max_outliers + 1, size=2)
  pts = rng.uniform(0.0, 1.0, size=(n_in, 2))
  feat = rng.normal(size=(n_in, cfg.feature_dim))
  transform = random_transform(rng, cfg)
  clean2 = transform(pts)
  pos2_in = clean2 + cfg.position_noise * rng.normal(size=clean2.shape)
  feat2_in = feat + cfg.feature_noise * rng.normal(size=feat.shape)
  pos1 = np.concatenate([pts, rng.uniform(0.0, 1.0, size=(o1, 2))])
  feat1 = np.concatenate([feat, rng.normal(size=(o1, cfg.feature_dim))])
  pos2 = np.concatenate([pos2_in, transform(rng.uniform(0.0, 1.0, size=(o2, 2)))])
  feat2 = np.concatenate([feat2_in, rng.normal(size=(o2, cfg.feature_dim))])
  p1 = rng.permutation(len(pos1))  # node i of graph 1 is original node p1[i]
  p2 = rng.permutation(len(pos2))
  pos1, feat1, pos2, feat2 = pos1[p1], feat1[p1], pos2[p2], feat2[p2]
  where2 = np.empty(len(p2), np.int64)
  where2[p2] = np.arange(len(p2))  # original node -> its index in graph 2
  perm = np.full(n, -1, np.int32)
  inl = p1 < n_in
  perm[:len(p1)][inl] = where2[p1[inl]]

  def pad(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out

  def attrs(feat_: np.ndarray, pos_: np.ndarray) -> np.ndarray:
    return np.concatenate([feat_, _normalised(pos_)], 1) if cfg.use_coords else feat_

  out = {"x1": pad(attrs(feat1, pos1), (n, cfg.num_features)), "x2": pad(attrs(feat2, pos2), (n, cfg.num_features)),
         "pos1": pad(pos1, (n, 2)), "pos2": pad(pos2, (n, 2)),
         "mask1": pad(np.ones(len(pos1)), (n,)), "mask2": pad(np.ones(len(pos2)), (n,)), "perm": perm}
  if cfg.graph != "none":
    out["adj1"] = pad(fixed_adjacency(pos1, cfg.graph, cfg.knn_k), (n, n))
    out["adj2"] = pad(fixed_adjacency(pos2, cfg.graph, cfg.knn_k), (n, n))
  out["inlier_pos1"], out["inlier_pos2_clean"] = pts, clean2
  return out


_TEST_HOOKS = ("inlier_pos1", "inlier_pos2_clean")


def pair_at(cfg: KeypointPairConfig, seed: int, stream: int, index: int) -> dict[str, np.ndarray]:
  """Pair ``index`` of ``stream`` (0 train, 1 eval) for ``seed`` (batched keys only)."""
  pair = make_pair(cfg, np.random.default_rng([seed, stream, index]))
  return {k: v for k, v in pair.items() if k not in _TEST_HOOKS}


def make_batch(cfg: KeypointPairConfig, seed: int, stream: int, indices) -> dict[str, np.ndarray]:
  """Pairs ``indices`` of ``stream`` stacked into one batch dict."""
  pairs = [pair_at(cfg, seed, stream, int(i)) for i in indices]
  return {k: np.stack([p[k] for p in pairs]) for k in pairs[0]}


class KeypointPairs:
  """Infinite iterator of this process's rows of the training batches: step t holds pairs ``t*B .. t*B+B-1``
  of stream 0; ``get_state``/``set_state`` (JSON bytes) make a resumed run see the same batches."""

  def __init__(self, cfg: KeypointPairConfig, *, global_batch_size: int, seed: int, start_step: int = 0):
    if global_batch_size < 1 or global_batch_size % jax.process_count():
      raise ValueError(f"global_batch_size={global_batch_size} must be positive and divisible by the "
                       f"{jax.process_count()} processes")
    self.cfg, self._batch, self._seed, self._step = cfg, global_batch_size, seed, start_step
    self._local = global_batch_size // jax.process_count()

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    start = self._step * self._batch + jax.process_index() * self._local
    batch = make_batch(self.cfg, self._seed, TRAIN_STREAM, range(start, start + self._local))
    self._step += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "seed": self._seed, "global_batch_size": self._batch}).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    if s.get("seed") != self._seed or s.get("global_batch_size") != self._batch:
      raise ValueError(f"data state {s} was saved with another seed or batch size than this run's "
                       f"(seed={self._seed}, global_batch_size={self._batch})")
    self._step = int(s["step"])


def eval_batches(cfg: KeypointPairConfig, *, num_pairs: int, global_batch_size: int,
                 seed: int) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
  """The fixed eval set (stream 1, pairs ``0..num_pairs-1``), generated once: a callable returning one pass of
  this process's rows of each global batch; the last batch is padded with copies of pair 0 and ``valid`` = 0."""
  if num_pairs < 1:
    raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
  if global_batch_size < 1 or global_batch_size % jax.process_count():
    raise ValueError(f"global_batch_size={global_batch_size} must be positive and divisible by the "
                     f"{jax.process_count()} processes")
  local = global_batch_size // jax.process_count()
  batches = []
  for b in range(-(-num_pairs // global_batch_size)):
    idx = np.arange(b * global_batch_size, (b + 1) * global_batch_size)[jax.process_index() * local:][:local]
    valid = idx < num_pairs
    batch = make_batch(cfg, seed, EVAL_STREAM, np.where(valid, idx, 0))
    batch["valid"] = valid.astype(np.float32)
    batches.append(batch)
  return lambda: iter(batches)
