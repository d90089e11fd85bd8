"""Metrics of generative models: Fréchet distance (FID), Inception Score, class accuracy of conditional samples, the
importance-weighted likelihood bound, and Chamfer distance / voxel IoU for 3-D shapes.

All functions are pure. The host-side ones (``gaussian_stats``, ``frechet_distance``, ``chamfer_distance``) work in
float64 numpy on accumulated features and return Python floats; the others are ``jax.numpy`` and run inside or outside
``jit`` (argument checks look at static shapes and dtypes only).

* Fréchet distance (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", 2017): the squared 2-Wasserstein distance between two Gaussians,
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``; FID applies it to Inception pool features of real and
  generated images (``gaussian_stats`` of each). The trace of the square root is computed without ``sqrtm`` of the
  non-symmetric product ``S1 S2`` (slow, and complex-valued or inaccurate when a covariance is singular, which it is
  whenever N <= D): with ``R = S1^{1/2}`` (symmetric, from ``eigh``), ``S1 S2 = R (R S2)`` and ``R S2 R = (R S2) R``
  have the same non-zero eigenvalues, and ``R S2 R`` is symmetric PSD, so
  ``Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(R S2 R))``, with two ``eigh`` calls and rounding-level negative eigenvalues
  clipped to 0. This holds for singular ``S1`` and ``S2`` alike.
* Inception Score (Salimans et al., "Improved Techniques for Training GANs", 2016):
  ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean prediction, computed on ``splits`` consecutive chunks of the
  samples and reported as mean and standard deviation over chunks, as the reference implementation
  (openai/improved-gan ``inception_score.py``) does.
* ``class_accuracy``: for class-conditional generators (e.g. AC-GAN, Odena et al. 2017), the accuracy of a pretrained
  classifier on samples generated for requested classes, overall and per class.
* ``iwae_bound`` (Burda et al., "Importance Weighted Autoencoders", 2016): ``log (1/K) sum_k w_k`` with
  ``w_k = p(x, z_k) / q(z_k | x)``, ``z_k ~ q``; ``K = 1`` is the ELBO, and its expectation increases with ``K`` to
  ``log p(x)``.
* ``chamfer_distance``: ``mean_a min_b ||a - b||^2 + mean_b min_a ||a - b||^2``, the SUM of the two MEANS of SQUARED
  nearest-neighbour distances, the convention of the IM-NET (Chen & Zhang, 2019) and PQ-NET (Wu et al., 2020)
  evaluations. Other papers halve it, or use unsquared distances: convert before comparing numbers across papers.
* ``voxel_iou``: ``|pred & target| / |pred | target|`` per occupancy grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import spatial


# --------------------------------------------------------------------------------------------------------------------
# Fréchet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[D]`` and unbiased covariance ``[D, D]`` (``np.cov(features, rowvar=False)``) of ``features`` [N, D], in
  float64 numpy. ``N >= 2`` rows are needed; ``N <= D`` gives a singular covariance, which ``frechet_distance``
  handles (the FID literature uses N = 10k or 50k samples with D = 2048)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise ValueError(f"gaussian_stats: features must be [N, D], got shape {f.shape}; reshape to (N, -1) first")
  if f.shape[0] < 2:
    raise ValueError(f"gaussian_stats: need at least 2 rows (N) for an unbiased covariance, got {f.shape[0]}")
  if not np.all(np.isfinite(f)):
    raise ValueError("gaussian_stats: features contain NaN or inf; check the feature extractor's inputs")
  mu = f.mean(axis=0)
  centered = f - mu
  sigma = centered.T @ centered / (f.shape[0] - 1)
  return mu, sigma


def _check_gaussians(name: str, mu1, sigma1, mu2, sigma2) -> None:
  """Static shape checks shared by the numpy and jax Fréchet distances."""
  for arg, mu in (("mu1", mu1), ("mu2", mu2)):
    if mu.ndim != 1:
      raise ValueError(f"{name}: {arg} must be a [D] vector, got shape {mu.shape}")
  for arg, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
      raise ValueError(f"{name}: {arg} must be a square [D, D] covariance, got shape {sigma.shape}")
  d = mu1.shape[0]
  if mu2.shape[0] != d or sigma1.shape[0] != d or sigma2.shape[0] != d:
    raise ValueError(f"{name}: dimensions disagree: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
                     f"sigma2 {sigma2.shape}; both Gaussians must be over the same D features")


def _psd_sqrt_np(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(0.5 * (s + s.T))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``Tr((S1 S2)^{1/2})`` for symmetric PSD ``S1, S2`` [D, D], as ``sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`` (module
  docstring), float64."""
  root = _psd_sqrt_np(np.asarray(sigma1, np.float64))
  m = root @ np.asarray(sigma2, np.float64) @ root
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Fréchet distance ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between ``N(mu1, S1)`` and ``N(mu2, S2)``
  (Heusel et al. 2017), in float64.

  Args:
    mu1, mu2: [D] means (``gaussian_stats``).
    sigma1, sigma2: [D, D] symmetric PSD covariances; singular ones are fine.

  Returns the distance as a float: >= 0 up to rounding (a value around ``-1e-12 * Tr(S1 + S2)`` is possible for two
  identical Gaussians; it is not clipped). Each zero eigenvalue of a singular covariance adds an error of about
  ``sqrt(1e-16 * ||S||)`` (the square root of its rounding), i.e. ~1e-8 per missing rank for unit-scale features.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  _check_gaussians("frechet_distance", mu1, sigma1, mu2, sigma2)
  for arg, x in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(x)):
      raise ValueError(f"frechet_distance: {arg} contains NaN or inf")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_jax(mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array, sigma2: jax.Array) -> jax.Array:
  """``frechet_distance`` in ``jax.numpy`` (jit-able): a scalar in the inputs' float dtype (float32, or float64 under
  ``jax_enable_x64``). Same two-``eigh`` method; float32 loses about ``1e-6 * Tr(S1 + S2)`` to rounding, and more
  for near-singular covariances (the square roots of tiny eigenvalues), so report FID from the float64 numpy version.
  Shapes as in ``frechet_distance``."""
  mu1, sigma1, mu2, sigma2 = (jnp.asarray(x) for x in (mu1, sigma1, mu2, sigma2))
  _check_gaussians("frechet_distance_jax", mu1, sigma1, mu2, sigma2)
  dtype = jnp.result_type(mu1, sigma1, mu2, sigma2, jnp.float32)
  mu1, sigma1, mu2, sigma2 = (x.astype(dtype) for x in (mu1, sigma1, mu2, sigma2))
  w, v = jnp.linalg.eigh(0.5 * (sigma1 + sigma1.T))
  root = (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T
  m = root @ sigma2 @ root
  eig = jnp.linalg.eigvalsh(0.5 * (m + m.T))
  tr_sqrt = jnp.sqrt(jnp.clip(eig, 0.0)).sum()
  diff = mu1 - mu2
  return diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2.0 * tr_sqrt


# --------------------------------------------------------------------------------------------------------------------
# Classifier-based scores


def inception_score(probs: jax.Array, splits: int = 10) -> tuple[jax.Array, jax.Array]:
  """Inception Score (Salimans et al. 2016): ``(mean, std)`` over ``splits`` chunks of ``exp(mean_x KL(p(y|x) ||
  p(y)))``, with ``p(y)`` the mean of ``p(y|x)`` over the chunk.

  Args:
    probs: [N, K] class probabilities ``p(y|x)`` of N samples (softmax outputs, rows summing to 1; not logits).
    splits: number of chunks; chunk ``i`` is rows ``[i N // splits, (i + 1) N // splits)`` as in the reference
      implementation. 1 <= splits <= N.

  Returns float scalars ``(mean, std)`` (population std, ``np.std``); the score lies in ``[1, K]``. ``0 log 0`` is
  taken as 0 (``xlogy``), so exactly-zero probabilities, which make the reference's ``p log p`` NaN, need no eps.
  """
  probs = jnp.asarray(probs)
  if probs.ndim != 2:
    raise ValueError(f"inception_score: probs must be [N, K] class probabilities, got shape {probs.shape}")
  n = probs.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f"inception_score: splits must be in [1, N={n}], got {splits}; use fewer splits or more samples")
  p = probs.astype(jnp.promote_types(probs.dtype, jnp.float32))
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    marginal = part.mean(axis=0, keepdims=True)
    kl = (jax.scipy.special.xlogy(part, part) - jax.scipy.special.xlogy(part, marginal)).sum(axis=1)
    scores.append(jnp.exp(kl.mean()))
  scores = jnp.stack(scores)
  return scores.mean(), scores.std()


def class_accuracy(probs_or_logits: jax.Array, requested: jax.Array) -> dict[str, jax.Array]:
  """Accuracy of a classifier on samples a conditional generator produced for ``requested`` classes.

  Args:
    probs_or_logits: [N, K] classifier outputs on the N samples (probabilities or logits: only the argmax is used).
    requested: int [N] class each sample was generated for, in [0, K). A value outside that range never counts as
      correct and belongs to no class.

  Returns a dict of float32 arrays: ``accuracy`` (scalar, over all N), ``per_class`` ([K]; NaN for a class with no
  sample), ``mean_class_accuracy`` (scalar, mean of ``per_class`` over the classes present) and ``count`` ([K]
  samples per requested class).
  """
  out = jnp.asarray(probs_or_logits)
  requested = jnp.asarray(requested)
  if out.ndim != 2:
    raise ValueError(f"class_accuracy: probs_or_logits must be [N, K], got shape {out.shape}")
  if requested.shape != out.shape[:1]:
    raise ValueError(f"class_accuracy: requested must be [N] = {out.shape[:1]} to match probs_or_logits "
                     f"{out.shape}, got {requested.shape}")
  if not jnp.issubdtype(requested.dtype, jnp.integer):
    raise ValueError(f"class_accuracy: requested must hold integer class ids, got dtype {requested.dtype}")
  k = out.shape[1]
  requested = requested.astype(jnp.int32)
  correct = (jnp.argmax(out, axis=1) == requested).astype(jnp.float32)
  ids = jnp.where((requested >= 0) & (requested < k), requested, k)  # id k: out of range, dropped below
  hits = jax.ops.segment_sum(correct, ids, num_segments=k + 1)[:k]
  count = jax.ops.segment_sum(jnp.ones_like(correct), ids, num_segments=k + 1)[:k]
  per_class = jnp.where(count > 0, hits / jnp.maximum(count, 1.0), jnp.nan)
  present = count > 0
  mean_class = jnp.where(present, per_class, 0.0).sum() / present.sum()
  return {"accuracy": correct.mean(), "per_class": per_class, "mean_class_accuracy": mean_class, "count": count}


# --------------------------------------------------------------------------------------------------------------------
# Likelihood bounds


def log_mean_exp(x: jax.Array, axis: int | Sequence[int] | None = 0, keepdims: bool = False) -> jax.Array:
  """``log(mean(exp(x), axis))`` computed stably (``logsumexp - log n``); ``-inf`` entries are zero weights, and an
  all-``-inf`` slice gives ``-inf``."""
  x = jnp.asarray(x)
  axes = tuple(range(x.ndim)) if axis is None else ((axis,) if isinstance(axis, int) else tuple(axis))
  for ax in axes:
    if not -x.ndim <= ax < x.ndim:
      raise ValueError(f"log_mean_exp: axis {ax} is out of range for an array of shape {x.shape}")
  n = math.prod(x.shape[ax] for ax in axes)
  if n == 0:
    raise ValueError(f"log_mean_exp: the reduced axes {axes} of shape {x.shape} are empty; the mean is undefined")
  return jax.nn.logsumexp(x, axis=axes, keepdims=keepdims) - math.log(n)


def iwae_bound(log_weights: jax.Array) -> jax.Array:
  """Importance-weighted bound (Burda et al. 2016) ``log (1/K) sum_k exp(log_weights[k])`` per example.

  Args:
    log_weights: [K, B] (any trailing shape) ``log p(x, z_k) - log q(z_k | x)`` for K samples ``z_k ~ q(z | x)``.

  Returns [B]: a stochastic lower bound on ``log p(x)`` in expectation; ``K = 1`` gives the ELBO's single-sample
  estimate ``log_weights[0]``, and the expectation is non-decreasing in K (tight as K -> inf or for ``q`` = posterior).
  """
  log_weights = jnp.asarray(log_weights)
  if log_weights.ndim < 1 or log_weights.shape[0] < 1:
    raise ValueError(f"iwae_bound: log_weights must be [K, B] with K >= 1 samples first, got {log_weights.shape}")
  return log_mean_exp(log_weights, axis=0)


def nats_to_bits_per_dim(nll_nats: jax.Array, num_dims: int) -> jax.Array:
  """Negative log-likelihood per example in nats -> bits per dimension, ``nll / (num_dims ln 2)``, with ``num_dims``
  the data dimensionality (e.g. 32 * 32 * 3). For a continuous density on 8-bit data rescaled to [0, 1], add
  ``num_dims * ln 256`` to the nll first (the dequantisation change of variables)."""
  if num_dims <= 0:
    raise ValueError(f"nats_to_bits_per_dim: num_dims must be > 0, got {num_dims}")
  return jnp.asarray(nll_nats) / (num_dims * math.log(2.0))


# --------------------------------------------------------------------------------------------------------------------
# 3-D shapes


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Chamfer distance ``mean_i min_j ||a_i - b_j||^2 + mean_j min_i ||a_i - b_j||^2`` (module docstring: sum of the two
  means of squared distances) between point clouds ``a`` [N, 3] and ``b`` [M, 3] (any common dimension works), in
  float64 with exact k-d tree nearest neighbours (``scipy.spatial.cKDTree``), so large clouds need no N x M matrix."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"chamfer_distance: a and b must be point clouds [N, 3] and [M, 3] with the same coordinate "
                     f"dimension, got {a.shape} and {b.shape}")
  if a.shape[0] == 0 or b.shape[0] == 0:
    raise ValueError(f"chamfer_distance: both clouds need at least one point, got {a.shape} and {b.shape}")
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError("chamfer_distance: a or b contains NaN or inf")
  d_ab, _ = spatial.cKDTree(b).query(a, k=1)
  d_ba, _ = spatial.cKDTree(a).query(b, k=1)
  return float(np.mean(d_ab ** 2) + np.mean(d_ba ** 2))


def chamfer_distance_batch(a: jax.Array, b: jax.Array, mask_a: jax.Array | None = None,
                           mask_b: jax.Array | None = None) -> jax.Array:
  """``chamfer_distance`` for a batch of padded clouds in ``jax.numpy`` (jit-able): [B].

  Args:
    a: float [B, N, 3] and b: float [B, M, 3] point clouds (any common coordinate dimension).
    mask_a: optional bool [B, N], True for real points (padding is ignored); all points count when omitted.
    mask_b: optional bool [B, M], likewise.

  The squared distances are summed coordinate by coordinate (no ``|a|^2 + |b|^2 - 2 a.b`` cancellation, no matmul
  precision loss on accelerators) into a [B, N, M] matrix: chunk the batch (e.g. ``jax.lax.map``) for large clouds. A
  row where either cloud has no valid point gives NaN.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
    raise ValueError(f"chamfer_distance_batch: a and b must be [B, N, 3] and [B, M, 3] with the same B and coordinate "
                     f"dimension, got {a.shape} and {b.shape}")
  for arg, mask, want in (("mask_a", mask_a, a.shape[:2]), ("mask_b", mask_b, b.shape[:2])):
    if mask is not None and jnp.shape(mask) != want:
      raise ValueError(f"chamfer_distance_batch: {arg} must be bool {want} (one flag per point), got "
                       f"{jnp.shape(mask)}")
  dtype = jnp.result_type(a, b, jnp.float32)
  a, b = a.astype(dtype), b.astype(dtype)
  d2 = jnp.zeros((a.shape[0], a.shape[1], b.shape[1]), dtype)
  for c in range(a.shape[2]):
    d2 = d2 + jnp.square(a[:, :, None, c] - b[:, None, :, c])
  mask_a = jnp.ones(a.shape[:2], bool) if mask_a is None else jnp.asarray(mask_a, bool)
  mask_b = jnp.ones(b.shape[:2], bool) if mask_b is None else jnp.asarray(mask_b, bool)
  a_to_b = jnp.where(mask_b[:, None, :], d2, jnp.inf).min(axis=2)  # [B, N]
  b_to_a = jnp.where(mask_a[:, :, None], d2, jnp.inf).min(axis=1)  # [B, M]
  mean_a = jnp.where(mask_a, a_to_b, 0.0).sum(axis=1) / mask_a.sum(axis=1)
  mean_b = jnp.where(mask_b, b_to_a, 0.0).sum(axis=1) / mask_b.sum(axis=1)
  return mean_a + mean_b


def voxel_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Intersection over union of occupancy grids: bool ``pred`` and ``target`` [..., X, Y, Z] -> float32 [...].

  Two empty grids score 1 (the prediction is exact). Threshold occupancy probabilities or SDFs yourself (e.g.
  ``prob > 0.5``, ``sdf < 0``): the threshold is part of the reported metric.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.dtype != jnp.bool_ or target.dtype != jnp.bool_:
    raise ValueError(f"voxel_iou: pred and target must be bool occupancy grids, got {pred.dtype} and "
                     f"{target.dtype}; threshold them first (e.g. prob > 0.5)")
  if pred.shape != target.shape or pred.ndim < 3:
    raise ValueError(f"voxel_iou: pred and target must have the same shape [..., X, Y, Z], got {pred.shape} and "
                     f"{target.shape}")
  inter = (pred & target).sum(axis=(-3, -2, -1)).astype(jnp.float32)
  union = (pred | target).sum(axis=(-3, -2, -1)).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)
