"""Two-view geometry: the fundamental matrix by the normalised 8-point algorithm and RANSAC (seed 003 §8).

Seed §8 (SFM) lists the properties used here: F is a rank-2 homogeneous 3x3 matrix (7 degrees of freedom);
corresponding points satisfy x2^T F x1 = 0 (x1 in image 1, x2 in image 2; OpenCV's convention, seed's x' = x2);
l2 = F x1 is the epipolar line of x1 in image 2 and l1 = F^T x2 that of x2 in image 1; F e1 = 0, F^T e2 = 0;
from cameras, F = [e2]_x P2 P1^+ with e2 = P2 C1, P1 C1 = 0.

The 8-point algorithm (Hartley 1997, "In defense of the eight-point algorithm"): normalise each point set by a
similarity T (centroid to the origin, mean distance to the origin sqrt(2), as OpenCV's ``run8Point``), stack one
row (x2 x1, x2 y1, x2, y2 x1, y2 y1, y2, x1, y1, 1) per correspondence, take the right singular vector of the
smallest singular value (SVD of the [n, 9] system, not of A^T A), project to rank 2 by zeroing the smallest
singular value of F, and denormalise F = T2^T F_hat T1.

Scale convention: every F returned here has ||F||_F = 1 and its largest-magnitude entry positive (OpenCV instead
divides by F[2, 2], which can be ~0; compare up to scale).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["fundamental_matrix", "fundamental_ransac", "RansacResult", "epipolar_lines", "sampson_distance",
           "fundamental_from_projections", "hartley_normalisation"]


def _check_points(fn: str, x1, x2, min_points: int = 8) -> tuple[jax.Array, jax.Array]:
  x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
  for name, x in (("x1", x1), ("x2", x2)):
    if x.ndim != 2 or x.shape[1] != 2:
      raise ValueError(f"{fn}: {name} must be [n, 2] pixel coordinates (x, y); got shape {x.shape}. "
                       "Pass inhomogeneous points, one row per point.")
  if x1.shape != x2.shape:
    raise ValueError(f"{fn}: x1 and x2 must hold the same number of correspondences; got shapes {x1.shape} and "
                     f"{x2.shape}.")
  if x1.shape[0] < min_points:
    raise ValueError(f"{fn}: needs at least {min_points} correspondences; got {x1.shape[0]} (x1 shape "
                     f"{x1.shape}).")
  dtype = jnp.result_type(x1, x2, jnp.float32)
  return x1.astype(dtype), x2.astype(dtype)


def _check_F(fn: str, F) -> jax.Array:
  F = jnp.asarray(F)
  if F.shape != (3, 3):
    raise ValueError(f"{fn}: F must be a 3x3 matrix; got shape {F.shape}.")
  return F


def hartley_normalisation(x: jax.Array, weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Similarity T moving the (weighted) centroid of ``x`` to 0 and its mean distance from it to sqrt(2).

  x: [n, 2]; weights: [n] >= 0 or None. Returns (x_normalised [n, 2], T [3, 3]) with x_normalised = T (x, 1).
  Regularised: a mean distance below 1e-12 (all points equal) is treated as 1e-12 instead of dividing by 0.
  """
  x = jnp.asarray(x)
  w = jnp.ones(x.shape[0], x.dtype) if weights is None else jnp.asarray(weights, x.dtype)
  wsum = jnp.maximum(jnp.sum(w), jnp.finfo(x.dtype).tiny)
  c = jnp.sum(w[:, None] * x, axis=0) / wsum
  dist = jnp.sqrt(jnp.sum((x - c) ** 2, axis=1))
  mean_dist = jnp.maximum(jnp.sum(w * dist) / wsum, 1e-12)
  s = math.sqrt(2.0) / mean_dist
  T = jnp.array([[s, 0.0, -s * c[0]], [0.0, s, -s * c[1]], [0.0, 0.0, 1.0]], dtype=x.dtype)
  return (x - c) * s, T


def _normalise_scale(F: jax.Array) -> jax.Array:
  F = F / jnp.maximum(jnp.linalg.norm(F), jnp.finfo(F.dtype).tiny)
  flat = F.reshape(-1)
  sign = jnp.where(flat[jnp.argmax(jnp.abs(flat))] < 0, -1.0, 1.0).astype(F.dtype)
  return F * sign


@jax.jit
def _eight_point(x1: jax.Array, x2: jax.Array, w: jax.Array | None) -> jax.Array:
  """Weighted normalised 8-point F for x1, x2: [n, 2] (n >= 8), w: [n] >= 0 or None. Returns [3, 3]."""
  p1, T1 = hartley_normalisation(x1, w)
  p2, T2 = hartley_normalisation(x2, w)
  u1, v1 = p1[:, 0], p1[:, 1]
  u2, v2 = p2[:, 0], p2[:, 1]
  one = jnp.ones_like(u1)
  A = jnp.stack([u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1, one], axis=1)  # row of x2^T F x1 = 0
  if w is not None:
    A = A * jnp.sqrt(w)[:, None]
  # One zero row so that the thin SVD returns all 9 right singular vectors even when n == 8.
  A = jnp.concatenate([A, jnp.zeros((1, 9), A.dtype)], axis=0)
  _, _, vt = jnp.linalg.svd(A, full_matrices=False)
  F_hat = vt[-1].reshape(3, 3)
  U, s, Vt = jnp.linalg.svd(F_hat)
  F_hat = (U * s.at[2].set(0.0)[None, :]) @ Vt  # rank-2 projection (seed §8: F has rank 2)
  return _normalise_scale(T2.T @ F_hat @ T1)


def fundamental_matrix(x1: jax.Array, x2: jax.Array, method: str = "8point", *,
                       weights: jax.Array | None = None) -> jax.Array:
  """Fundamental matrix F with x2^T F x1 = 0 by the normalised 8-point algorithm (module docstring).

  x1, x2: [n, 2] corresponding pixel coordinates in images 1 and 2 (n >= 8); all n are used in least squares,
  as ``cv2.findFundamentalMat(x1, x2, cv2.FM_8POINT)``. weights: optional [n] >= 0 row weights (e.g. an inlier
  mask; zero-weight points are ignored, also in the normalisation). Returns F: [3, 3], rank 2, ||F||_F = 1,
  largest-magnitude entry positive. Jittable; computed in ``jnp.result_type(x1, x2, float32)``.
  """
  if method != "8point":
    raise ValueError(f"fundamental_matrix: method must be '8point'; got {method!r}. Use fundamental_ransac for "
                     "data with outliers.")
  x1, x2 = _check_points("fundamental_matrix", x1, x2)
  if weights is not None:
    weights = jnp.asarray(weights)
    if weights.shape != (x1.shape[0],):
      raise ValueError(f"fundamental_matrix: weights must be [n] = [{x1.shape[0]}]; got shape {weights.shape}.")
    weights = weights.astype(x1.dtype)
  return _eight_point(x1, x2, weights)


def _homog(x: jax.Array) -> jax.Array:
  return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


@jax.jit
def _sampson(F: jax.Array, x1: jax.Array, x2: jax.Array) -> jax.Array:
  h1, h2 = _homog(x1), _homog(x2)
  Fx1 = h1 @ F.T  # [n, 3]: F x1
  Ftx2 = h2 @ F   # [n, 3]: F^T x2
  num = jnp.sum(h2 * Fx1, axis=1) ** 2
  den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
  return num / jnp.maximum(den, jnp.finfo(den.dtype).tiny)


def sampson_distance(F: jax.Array, x1: jax.Array, x2: jax.Array) -> jax.Array:
  """Sampson error (first-order geometric error, squared, in pixels^2) of each correspondence; F: [3, 3].

  x1, x2: [n, 2]. d_i = (x2^T F x1)^2 / ((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2), the same
  quantity as ``cv2.sampsonDistance``. Returns [n]. A zero denominator (a point at an epipole of a degenerate
  F) is clamped to the smallest normal float instead of giving NaN.
  """
  F = _check_F("sampson_distance", F)
  x1, x2 = _check_points("sampson_distance", x1, x2, min_points=0)
  dtype = jnp.result_type(F, x1, jnp.float32)
  return _sampson(F.astype(dtype), x1.astype(dtype), x2.astype(dtype))


def epipolar_lines(F: jax.Array, x: jax.Array, which_image: int = 1) -> jax.Array:
  """Epipolar lines (a, b, c) with a^2 + b^2 = 1 (as ``cv2.computeCorrespondEpilines``); F: [3, 3], x: [n, 2].

  which_image=1: x are points of image 1 and the lines l2 = F x1 live in image 2; which_image=2: lines
  l1 = F^T x2 in image 1 (seed §8). Returns [n, 3]; the signed point-line distance is a x + b y + c.
  """
  F = _check_F("epipolar_lines", F)
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[1] != 2:
    raise ValueError(f"epipolar_lines: x must be [n, 2] points; got shape {x.shape}.")
  if which_image not in (1, 2):
    raise ValueError(f"epipolar_lines: which_image must be 1 or 2; got {which_image!r}.")
  dtype = jnp.result_type(F, x, jnp.float32)
  F, x = F.astype(dtype), x.astype(dtype)
  lines = _homog(x) @ (F.T if which_image == 1 else F)
  nrm = jnp.sqrt(lines[:, 0] ** 2 + lines[:, 1] ** 2)
  return lines / jnp.maximum(nrm, jnp.finfo(dtype).tiny)[:, None]


def fundamental_from_projections(P1: jax.Array, P2: jax.Array) -> jax.Array:
  """F = [e2]_x P2 P1^+ with e2 = P2 C1 and C1 the centre of camera 1 (P1 C1 = 0) (seed §8); P1, P2: [3, 4].

  Returns F: [3, 3] with x2^T F x1 = 0 for x1 = P1 X, x2 = P2 X, scaled as :func:`fundamental_matrix`.
  """
  P1, P2 = jnp.asarray(P1), jnp.asarray(P2)
  if P1.shape != (3, 4) or P2.shape != (3, 4):
    raise ValueError(f"fundamental_from_projections: P1 and P2 must be [3, 4] camera matrices; got {P1.shape} "
                     f"and {P2.shape}.")
  dtype = jnp.result_type(P1, P2, jnp.float32)
  P1, P2 = P1.astype(dtype), P2.astype(dtype)
  _, _, vt = jnp.linalg.svd(P1)  # full 4x4 V: the last right singular vector spans the null space
  C1 = vt[-1]
  e2 = P2 @ C1
  ex = jnp.array([[0.0, -e2[2], e2[1]], [e2[2], 0.0, -e2[0]], [-e2[1], e2[0], 0.0]], dtype)
  return _normalise_scale(ex @ P2 @ jnp.linalg.pinv(P1))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["F", "inliers", "num_inliers", "best_sample"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class RansacResult:
  """Result of :func:`fundamental_ransac`.

  F: [3, 3] refit on the final inliers (rank 2, ||F||_F = 1); inliers: [n] bool, Sampson distance of F below
  threshold^2; num_inliers: [] int32; best_sample: [8] int32 indices of the winning minimal sample.
  """
  F: jax.Array
  inliers: jax.Array
  num_inliers: jax.Array
  best_sample: jax.Array


def fundamental_ransac(x1: jax.Array, x2: jax.Array, key: jax.Array, *, threshold=1.0, num_iters: int = 512,
                       refine_iters: int = 2) -> RansacResult:
  """Robust F: RANSAC over 8-point minimal samples, Sampson-distance inliers, weighted refit on the inliers.

  x1, x2: [n, 2] correspondences (n >= 8); key: PRNG key; threshold: inlier threshold in pixels on the Sampson
  distance (inlier iff ``sampson_distance < threshold**2``; may be traced); num_iters: static number of
  hypotheses, all fitted at once (``vmap`` of the 8-point algorithm over [num_iters, 8] samples of distinct
  indices drawn by ``top_k`` of uniform noise); the hypothesis with most inliers wins (first on ties; a hypothesis
  with a non-finite F counts no inliers). It is then refit ``refine_iters`` times by the 8-point algorithm
  weighted by the current inlier mask (all inliers in least squares), re-evaluating the inliers each time.
  If the refit would leave fewer than 8 inliers, the best hypothesis is kept. Returns a :class:`RansacResult`.
  Jittable (``num_iters``, ``refine_iters`` static).
  """
  x1, x2 = _check_points("fundamental_ransac", x1, x2)
  if not isinstance(num_iters, (int, np.integer)) or num_iters < 1:
    raise ValueError(f"fundamental_ransac: num_iters must be a positive int; got {num_iters!r}.")
  if not isinstance(refine_iters, (int, np.integer)) or refine_iters < 0:
    raise ValueError(f"fundamental_ransac: refine_iters must be an int >= 0; got {refine_iters!r}.")
  if not isinstance(threshold, jax.core.Tracer) and not (np.ndim(threshold) == 0 and float(threshold) > 0):
    raise ValueError(f"fundamental_ransac: threshold must be a positive scalar (pixels); got {threshold!r}.")
  return _ransac(x1, x2, key, threshold, num_iters=int(num_iters), refine_iters=int(refine_iters))


@functools.partial(jax.jit, static_argnames=("num_iters", "refine_iters"))
def _ransac(x1, x2, key, threshold, *, num_iters, refine_iters):
  n = x1.shape[0]
  dtype = x1.dtype
  thr2 = jnp.asarray(threshold, dtype) ** 2
  u = jax.random.uniform(key, (num_iters, n))
  _, samples = lax.top_k(u, 8)  # [num_iters, 8] distinct indices per hypothesis

  def hypothesis(idx):
    F = _eight_point(x1[idx], x2[idx], None)
    inl = _sampson(F, x1, x2) < thr2
    count = jnp.where(jnp.all(jnp.isfinite(F)), jnp.sum(inl), -1)
    return F, count

  Fs, counts = jax.vmap(hypothesis)(samples)
  best = jnp.argmax(counts)
  F = Fs[best]
  inliers = _sampson(F, x1, x2) < thr2

  def refine(_, carry):
    F, inliers = carry
    F_new = _eight_point(x1, x2, inliers.astype(dtype))
    inl_new = _sampson(F_new, x1, x2) < thr2
    ok = (jnp.sum(inl_new) >= 8) & jnp.all(jnp.isfinite(F_new))
    return jnp.where(ok, F_new, F), jnp.where(ok, inl_new, inliers)

  if refine_iters:
    F, inliers = lax.fori_loop(0, refine_iters, refine, (F, inliers))
  return RansacResult(F=F, inliers=inliers, num_inliers=jnp.sum(inliers).astype(jnp.int32),
                      best_sample=samples[best].astype(jnp.int32))
