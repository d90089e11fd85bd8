"""Mean-field inference in fully connected CRFs with Gaussian edge potentials (Krähenbühl & Koltun, NIPS 2011, §3-4,
Algorithm 1; the unrolled form of CRF-as-RNN, Zheng et al., ICCV 2015, §4) and the permutohedral lattice filter
(Adams, Baek & Davis, Eurographics 2010) in pure JAX with static shapes (``jit``/``vmap``/``grad``).

Model (paper eq. 3-4). Pixel ``i`` has position ``p_i`` (row, column, in pixels) and colour ``I_i`` (0..255). Kernels:

  appearance  k1(i, j) = exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2)),  weight w1
  smoothness  k2(i, j) = exp(-|p_i - p_j|^2 / (2 theta_gamma^2)),                                  weight w2

i.e. Gaussians ``exp(-|f_i - f_j|^2 / 2)`` of the features ``f = (p / theta_alpha, I / theta_beta)`` and
``f = p / theta_gamma``. The compatibility ``mu [C, C]`` defaults to Potts, ``mu(l, l') = [l != l']``.

Unaries are **logits** ``U = -psi_u`` (the negative unary energy; e.g. a network's pre-softmax scores or
log-probabilities), ``[H, W, C]``. Algorithm 1, one iteration (``m`` over the two kernels)::

  Q        = softmax(U)                                           initialisation
  Qt_m(l)  = sum_{j != i} k_m(i, j) Q_j(l)                        message passing (filtering, the i = j term excluded)
  Qc(l)    = sum_m w_m(l) Qt_m(l)                                 weighting (w_m a scalar or one weight per class)
  Qh(l)    = sum_l' mu(l, l') Qc(l')                              compatibility transform
  L        = U - Qh ;  Q = softmax(L)                             local update, normalisation

``mean_field_logits`` returns the last ``L`` (``softmax(L)`` is the final ``Q``; usable with softmax cross-entropy),
``mean_field`` returns ``Q``. ``num_iters = 0`` gives ``softmax(U)``.

Kernel normalisation (``normalization=``): the paper's eq. 4 sums raw Gaussians (``"none"``), so a message grows with
the number of similar pixels (about ``2 pi theta_gamma^2 = 57`` for the smoothness kernel with theta_gamma = 3). The
reference code (densecrf 2.2 / pydensecrf, whose defaults ``w1 = 10, theta_alpha = 80, theta_beta = 13, w2 = 3,
theta_gamma = 3`` are ``DenseCRFParams()``'s) normalises each kernel, and those weights only make sense with it:

  ``"symmetric"`` (default, densecrf's NORMALIZE_SYMMETRIC):  Qt = n * K(n * Q),  n = 1 / sqrt(D)
  ``"after"``     (CRF-as-RNN's Caffe/Keras code):             Qt = K(Q) / D
  ``"none"``      (eq. 4 as printed):                          Qt = K(Q)

with ``D = K_all 1`` the kernel's row sums over all j (including j = i, as in densecrf and CRF-as-RNN, whose
lattices always include it), i.e. the kernel matrix is normalised first (``D^-1/2 K D^-1/2`` or ``D^-1 K``) and
then summed over ``j != i``. ``K`` in the messages excludes ``j = i`` (Algorithm 1) unless ``exclude_self=False``;
``exclude_self=False`` is exactly pydensecrf's model (benchmarks/dense_crf.py compares both). Including j = i in
``D`` keeps ``D_i >= k(i, i) = 1``: a pixel with no similar neighbour gets a message near 0 instead of 0 / 0.

Filters (``method=``):

* ``"exact"``: ``filter_exact``, the O(N^2) Gaussian sum in row blocks (``lax.map`` over ``block_size`` rows, each
  block rematerialised in the backward pass, so memory is O(block_size * N)); the reference. Differentiable in
  everything (unaries, weights, compatibility, image, thetas).
* ``"permutohedral"`` (the fast path): the appearance kernel (d = 5) is filtered on the permutohedral lattice
  (paper §4; Adams et al. 2010) and the smoothness kernel, which is separable on the pixel grid, exactly as
  ``K_rows @ Q @ K_cols`` (``filter_separable``; O(HW (H + W) C)). Gradients flow to the unaries, weights and
  compatibility; the lattice geometry (built from the image) is not differentiated (``stop_gradient``).

The lattice (``permutohedral_lattice`` / ``lattice_filter``) follows densecrf's ``Permutohedral`` exactly: features
scaled by ``sqrt(2/3) (d + 1)`` (the (d+1)-scaled convention), elevated onto the plane ``sum = 0`` of R^(d+1),
nearest remainder-0 point by rounding, simplex by ranking, barycentric weights; splat, blur with ``[1/2, 1, 1/2]``
along each of the d + 1 lattice directions, slice, times densecrf's ``alpha = 1 / (1 + 2^-d)``. With static shapes
the hash table becomes a sort: the ``N (d+1)`` simplex-vertex keys (d int32 coordinates ``(d+1) q_i + r``) are
packed into two int32 words (mixed radix of the ``q_i`` over their range, ``r`` in the low digit; NaN output if a
coordinate spans more than ~1000 kernel widths), sorted (``lax.sort``, 2 keys) and deduplicated into at most
``max_lattice_points`` lattice points (default ``N (d+1)``, always enough; padded); each point's blur neighbours
``key +- u_j`` along the d + 1 directions are found by a vectorised binary search in the sorted words (missing
neighbours read a zero row). ``lattice_filter`` divides by the lattice's gain for a uniform point density,
``(d+1)^-1/2 (3 / (4 pi))^(d/2) 2^(d+1) alpha`` (derived in ``lattice_gain``; 0.882 for d = 2, 0.705 for d = 5;
measured 1.00 +- 0.03 on a uniform 2-d grid), so it approximates ``sum_j k(f_i, f_j) v_j`` including ``j = i``.
Excluding ``j = i`` subtracts the lattice's *own* response to the point's splat (``self_weight``, computed exactly by
enumerating the at most three blur walks between each pair of the point's simplex vertices; 0.5-1.2 where the exact
kernel has 1), so the lattice's sum over ``j != i`` of a non-negative signal stays non-negative.

Measured error of the fast path (float32, CPU; tests/crf/test_dense_crf.py and a sweep over seeds 0-2 of its
random scenes: 5 piecewise-constant colour regions, discs and rectangles, + noise of std 10, 3 labels, 32x32 and
64x64): the raw appearance filter's relative error ``|lattice - exact| / |exact|`` is 0.19-0.23 (the lattice
under-weights the 5-d Gaussian's tails, as densecrf's does), the normalised filter's (``K v / K 1``) 0.003-0.009.
After 5 iterations with ``DenseCRFParams()`` and ``"symmetric"``: argmax agreement with ``method="exact"`` >= 99.3%,
mean |dQ| <= 0.005, max |dQ| up to 1.0 on the few pixels that flip in bistable spots; with w1 = 2, w2 = 1 (unsaturated
marginals) max |dQ| <= 0.052, agreement >= 99.6%; ``"after"`` is alike; ``"none"`` (w1 = 0.1, w2 = 0.03) max |dQ|
<= 0.34, agreement >= 97.9%. On i.i.d. uniform random colours (every pixel's colour neighbourhood sparse, the
lattice's worst case) the normalised filter error is 0.44 at 32x32 and 0.04 at 64x64, and the default CRF's argmax
agrees on 92% (32x32) and 99.7% (64x64) of the pixels. benchmarks/dense_crf.py prints time and marginal differences
against the exact path and pydensecrf (64x64 and 256x256, 13 labels).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = Any
METHODS = ("exact", "permutohedral")
NORMALIZATIONS = ("symmetric", "after", "none")
_HIGHEST = jax.lax.Precision.HIGHEST
_STATIC = ("num_iters", "method", "normalization", "exclude_self", "remat", "block_size", "max_lattice_points")


@flax.struct.dataclass
class DenseCRFParams:
  """Kernel parameters of eq. 3 (a pytree). Defaults: densecrf/pydensecrf's ``addPairwiseBilateral(sxy=80, srgb=13,
  compat=10)`` and ``addPairwiseGaussian(sxy=3, compat=3)``, the paper's §5 settings for MSRC/PASCAL.

  w1: appearance weight, scalar or [C] (one per class, as in CRF-as-RNN); theta_alpha, theta_beta: its position
  (pixels) and colour (0..255 units) widths. w2: smoothness weight, scalar or [C]; theta_gamma: its width (pixels).
  """
  w1: Array = 10.0
  theta_alpha: Array = 80.0
  theta_beta: Array = 13.0
  w2: Array = 3.0
  theta_gamma: Array = 3.0


def potts_compat(num_classes: int, dtype=jnp.float32) -> jnp.ndarray:
  """Potts compatibility ``mu(l, l') = [l != l']`` as a [C, C] matrix."""
  return (1.0 - jnp.eye(num_classes)).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# features


def _positions(h: int, w: int, dtype) -> jnp.ndarray:
  """[H*W, 2] (row, column) pixel positions, row-major."""
  r, c = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype), indexing="ij")
  return jnp.stack([r.reshape(-1), c.reshape(-1)], axis=-1)


def appearance_features(image: Array, theta_alpha: Array, theta_beta: Array) -> jnp.ndarray:
  """image [H, W, 3] (0..255) -> [H*W, 5] features ``(row / theta_alpha, col / theta_alpha, rgb / theta_beta)``."""
  h, w, ch = image.shape
  pos = _positions(h, w, image.dtype) / theta_alpha
  return jnp.concatenate([pos, image.reshape(h * w, ch) / theta_beta], axis=-1)


def smoothness_features(h: int, w: int, theta_gamma: Array, dtype=jnp.float32) -> jnp.ndarray:
  """[H*W, 2] features ``(row, col) / theta_gamma``."""
  return _positions(h, w, dtype) / theta_gamma


# ----------------------------------------------------------------------------------------------------------------
# exact filters


@functools.partial(jax.jit, static_argnames=("exclude_self", "block_size"))
def filter_exact(values: Array, features: Array, *, exclude_self: bool = True, block_size: int = 256) -> jnp.ndarray:
  """Exact Gaussian filter ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (``j != i`` if ``exclude_self``), paper eq. 3.

  values [N, C], features [N, d] -> [N, C]. O(N^2 d) time, O(block_size * N) memory: rows are processed in blocks of
  ``block_size`` by ``lax.map`` and each block is rematerialised in the backward pass. Differentiable in both inputs.
  """
  values = jnp.asarray(values)
  features = jnp.asarray(features)
  if values.ndim != 2 or features.ndim != 2 or values.shape[0] != features.shape[0]:
    raise ValueError(f"filter_exact: values must be [N, C] and features [N, d] with the same N, got values "
                     f"{values.shape} and features {features.shape}")
  n = values.shape[0]
  dtype = jnp.result_type(values.dtype, features.dtype, jnp.float32)
  values = values.astype(dtype)
  features = features.astype(dtype)
  block = max(1, min(int(block_size), n))
  n_blocks = -(-n // block)
  pad = n_blocks * block - n
  rows = jnp.pad(features, ((0, pad), (0, 0))).reshape(n_blocks, block, -1)
  idx = jnp.arange(n_blocks * block, dtype=jnp.int32).reshape(n_blocks, block)
  cols = jnp.arange(n, dtype=jnp.int32)

  @jax.checkpoint
  def one_block(args):
    f_blk, i_blk = args
    d2 = jnp.zeros((f_blk.shape[0], n), dtype)
    for k in range(features.shape[1]):  # direct differences: no |a|^2 + |b|^2 - 2ab cancellation
      d2 = d2 + jnp.square(f_blk[:, k:k + 1] - features[None, :, k])
    kern = jnp.exp(-0.5 * d2)
    if exclude_self:
      kern = jnp.where(i_blk[:, None] == cols[None, :], 0.0, kern)
    return jnp.dot(kern, values, precision=_HIGHEST)

  out = jax.lax.map(one_block, (rows, idx))
  return out.reshape(n_blocks * block, -1)[:n]


def _gauss_matrix(n: int, theta: Array, dtype) -> jnp.ndarray:
  x = jnp.arange(n, dtype=dtype)
  return jnp.exp(-0.5 * jnp.square((x[:, None] - x[None, :]) / theta))


@functools.partial(jax.jit, static_argnames=("exclude_self",))
def filter_separable(values: Array, theta: Array, *, exclude_self: bool = True) -> jnp.ndarray:
  """Exact spatial Gaussian ``out_i = sum_j exp(-|p_i - p_j|^2 / (2 theta^2)) v_j`` on the pixel grid, as
  ``K_rows @ V @ K_cols`` (the kernel is separable), minus ``v_i`` if ``exclude_self``. values [H, W, C] -> [H, W, C].
  """
  values = jnp.asarray(values)
  if values.ndim != 3:
    raise ValueError(f"filter_separable: values must be [H, W, C], got {values.shape}")
  h, w, _ = values.shape
  kr = _gauss_matrix(h, theta, values.dtype)
  kc = _gauss_matrix(w, theta, values.dtype)
  out = jnp.einsum("ab,bwc->awc", kr, values, precision=_HIGHEST)
  out = jnp.einsum("hb,abc->ahc", kc, out, precision=_HIGHEST)
  return out - values if exclude_self else out


# ----------------------------------------------------------------------------------------------------------------
# permutohedral lattice


@flax.struct.dataclass
class PermutohedralLattice:
  """A lattice built from N points with d features, with static shapes (M slots: max_points, default N (d+1)).

  vertex_ids: [N, d+1] int32 lattice point of each simplex vertex of each input point.
  weights: [N, d+1] barycentric weights (sum to 1 per point).
  neighbors: [d+1, 2, M+1] int32 blur neighbours of each lattice point along each direction (M = missing: the zero
    row; row M itself points to M).
  self_weight: [N] the lattice's response at each point to its own splat (the lattice's k(i, i), 0.5-1.2 where
    the exact kernel has 1): ``lattice_filter(v) - self_weight * v`` is the lattice's sum over j != i.
  num_points: [] int32 number of distinct lattice points actually used.
  """
  vertex_ids: Array
  weights: Array
  neighbors: Array
  self_weight: Array
  num_points: Array


def lattice_gain(d: int) -> float:
  """Gain of splat -> blur -> slice (with densecrf's alpha) for a uniform density of points, relative to the exact
  Gaussian sum: lattice output ``rho V 2^(d+1) alpha`` over ``rho (2 pi)^(d/2)`` with ``V = (d+1)^(d - 1/2) / s^d``,
  ``s = sqrt(2/3) (d+1)``, the volume per lattice point in feature space (the lattice is the union of d + 1 cosets of
  ``(d+1) A_d``, whose cell volume in the plane is ``(d+1)^d sqrt(d+1)``; the elevation is an isometry times s)."""
  s = math.sqrt(2.0 / 3.0) * (d + 1)
  vol = (d + 1) ** (d - 0.5) / s ** d
  alpha = 1.0 / (1.0 + 2.0 ** (-d))
  return vol * 2.0 ** (d + 1) * alpha / (2.0 * math.pi) ** (d / 2)


def _elevation_matrix(d: int) -> np.ndarray:
  """[d, d+1] E^T of Adams et al. (p. 5) times the scale sqrt(2/3)(d+1): elevated = f @ E."""
  s = math.sqrt(2.0 / 3.0) * (d + 1)
  e = np.zeros((d, d + 1))
  for i in range(d):
    sf = s / math.sqrt((i + 1) * (i + 2))
    e[i, :i + 1] = sf
    e[i, i + 1] = -(i + 1) * sf
  return e


def _search(sorted_a: jnp.ndarray, sorted_b: jnp.ndarray, qa: jnp.ndarray, qb: jnp.ndarray) -> jnp.ndarray:
  """Lower bound of each query (qa, qb) in the lexicographically sorted pairs (sorted_a, sorted_b), [M] each: the
  first index whose pair is >= the query (M if none). Vectorised binary search over any query shape."""
  m = sorted_a.shape[0]

  def body(_, lohi):
    lo, hi = lohi
    active = lo < hi
    mid = (lo + hi) // 2
    ma, mb = sorted_a[jnp.minimum(mid, m - 1)], sorted_b[jnp.minimum(mid, m - 1)]
    less = (ma < qa) | ((ma == qa) & (mb < qb))
    return jnp.where(active & less, mid + 1, lo), jnp.where(active & ~less, mid, hi)

  # carries derived from the queries, so they have the queries' varying-axes type inside shard_map
  lo = (qa * 0).astype(jnp.int32)
  hi = lo + m
  lo, _ = jax.lax.fori_loop(0, max(1, int(math.ceil(math.log2(m + 1)))), body, (lo, hi))
  return lo


def _pack_keys(keys: jnp.ndarray, qmin: jnp.ndarray, radix: jnp.ndarray, dp1: int) -> tuple[jnp.ndarray, ...]:
  """Lattice keys [..., d] (int32, all coordinates = r mod d+1) -> two int32 words that sort like the keys.

  ``key_i = (d+1) q_i + r``; word a = r + (d+1) * mixed-radix(q_0 .. q_{h-1}), word b = mixed-radix(q_h .. q_{d-1})
  with h = ceil(d / 2) and digits ``q_i - qmin_i`` in ``[0, radix_i)``."""
  d = keys.shape[-1]
  h = (d + 1) // 2
  q = jnp.floor_divide(keys, dp1)
  r = keys[..., 0] - dp1 * q[..., 0]
  digits = q - qmin
  a = jnp.zeros_like(r)
  for i in range(h - 1, -1, -1):
    a = a * radix[i] + digits[..., i]
  b = jnp.zeros_like(r)
  for i in range(d - 1, h - 1, -1):
    b = b * radix[i] + digits[..., i]
  return a * dp1 + r, b


@functools.partial(jax.jit, static_argnames=("max_points",))
def permutohedral_lattice(features: Array, max_points: int | None = None) -> PermutohedralLattice:
  """Build the lattice for features [N, d] (Gaussian of unit width in feature space): see the module docstring.

  Static shapes: M = ``max_points`` lattice slots (default N (d+1), always enough); a smaller M makes the blur and
  the neighbour search proportionally cheaper, but if the features need more than M lattice points the lattice's
  weights are NaN (so is every filter output: a loud failure, never a silently wrong one; ``num_points`` says how
  many were needed). Also NaN when a lattice coordinate spans more than ~1000 kernel widths (packed-key overflow).
  jit/vmap-able; not differentiable (integer geometry, weights from ``stop_gradient(features)``).
  """
  features = jax.lax.stop_gradient(jnp.asarray(features))
  if features.ndim != 2:
    raise ValueError(f"permutohedral_lattice: features must be [N, d], got {features.shape}")
  n, d = features.shape
  dp1 = d + 1
  ftype = jnp.result_type(features.dtype, jnp.float32)
  elevated = jnp.dot(features.astype(ftype), jnp.asarray(_elevation_matrix(d), ftype), precision=_HIGHEST)
  # nearest remainder-0 point (ties round down, as densecrf's scalar path)
  rem0 = jnp.ceil(elevated / dp1 - 0.5) * dp1
  total = jnp.round(jnp.sum(rem0, axis=-1) / dp1).astype(jnp.int32)
  diff = elevated - rem0
  # rank[i] = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i}
  gt = diff[:, None, :] > diff[:, :, None]
  ge = diff[:, None, :] >= diff[:, :, None]
  upper = np.triu(np.ones((dp1, dp1), bool), 1)
  rank = jnp.sum(jnp.where(upper, gt, jnp.where(upper.T, ge, False)), axis=-1).astype(jnp.int32)
  rank = rank + total[:, None]
  low = rank < 0
  high = rank > d
  rank = jnp.where(low, rank + dp1, jnp.where(high, rank - dp1, rank))
  rem0 = jnp.where(low, rem0 + dp1, jnp.where(high, rem0 - dp1, rem0))
  # barycentric coordinates (Adams et al. p. 10)
  v = (elevated - rem0) / dp1
  bary = (jnp.einsum("ni,nik->nk", v, jax.nn.one_hot(d - rank, d + 2, dtype=ftype))
          - jnp.einsum("ni,nik->nk", v, jax.nn.one_hot(d - rank + 1, d + 2, dtype=ftype)))
  bary = bary.at[:, 0].add(1.0 + bary[:, d + 1])[:, :dp1]
  # vertex keys: key[r, i] = rem0_i + canonical[r, rank_i], canonical[r, j] = r - (d+1) [j > d - r]
  r = jnp.arange(dp1, dtype=jnp.int32)[None, :, None]
  rk = rank[:, None, :d]
  keys = rem0.astype(jnp.int32)[:, None, :d] + r - dp1 * (rk > d - r).astype(jnp.int32)  # [N, d+1, d]
  m_all = n * dp1
  m = m_all if max_points is None else max(1, min(int(max_points), m_all))
  keys = keys.reshape(m_all, d)
  # hash table -> sort of packed keys + deduplication. Digits span the keys' range +-1 (the blur neighbours).
  q = jnp.floor_divide(keys, dp1)
  qmin = jnp.min(q, axis=0) - 1
  radix = jnp.max(q, axis=0) - qmin + 2
  h = (d + 1) // 2
  span_a = dp1 * jnp.prod(radix[:h].astype(jnp.float32))
  span_b = jnp.prod(radix[h:].astype(jnp.float32))
  fits = (span_a < 2.0 ** 31 - 256) & (span_b < 2.0 ** 31 - 256)  # else: features span > ~1000 kernel widths
  ka, kb = _pack_keys(keys, qmin, radix, dp1)
  sa, sb, perm = jax.lax.sort((ka, kb, jnp.arange(m_all, dtype=jnp.int32)), num_keys=2)
  is_new = jnp.concatenate([jnp.ones((1,), bool), (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])])
  uid_sorted = jnp.cumsum(is_new.astype(jnp.int32)) - 1
  num_points = uid_sorted[-1] + 1
  fits = fits & (num_points <= m)  # else: more lattice points than max_points
  vertex_ids = jnp.zeros((m_all,), jnp.int32).at[perm].set(jnp.minimum(uid_sorted, m)).reshape(n, dp1)
  # the distinct lattice points, in sorted order (slot = uid), padded with a sentinel that sorts last
  first = jnp.where(is_new, uid_sorted, m + 1)  # one writer per lattice point; the others are dropped
  big = np.iinfo(np.int32).max
  ua = jnp.full((m,), big, jnp.int32).at[first].set(sa, mode="drop")
  ub = jnp.full((m,), big, jnp.int32).at[first].set(sb, mode="drop")
  first_pos = jnp.zeros((m,), jnp.int32).at[first].set(jnp.arange(m_all, dtype=jnp.int32), mode="drop")
  ukeys = keys[perm[first_pos]]  # [M, d]
  valid = jnp.arange(m) < num_points
  # neighbours along direction j: n1 = key + u_j with u_j = (d+1) e_j - 1 (for j = d only the -1), n2 = key - u_j
  step = jnp.asarray(np.concatenate([dp1 * np.eye(d, dtype=np.int32) - 1, -np.ones((1, d), np.int32)]))  # [d+1, d]
  qa, qb = _pack_keys(ukeys[None] + step[:, None, :], qmin, radix, dp1)  # [d+1, M]
  pos = _search(ua, ub, qa, qb)
  posc = jnp.minimum(pos, m - 1)
  found = valid[None] & (pos < m) & (ua[posc] == qa) & (ub[posc] == qb)
  n1 = jnp.concatenate([jnp.where(found, pos, m), jnp.full((dp1, 1), m, jnp.int32)], axis=1)  # [d+1, M+1]
  target = jnp.where(found, pos, m + 1)  # missing -> out of bounds, dropped
  n2 = jax.vmap(lambda t: jnp.full((m + 1,), m, jnp.int32).at[t].set(jnp.arange(m, dtype=jnp.int32),
                                                                     mode="drop"))(target)
  neighbors = jnp.stack([n1, n2], axis=1)
  bary = jnp.where(fits, bary, jnp.nan)
  self_weight = _self_weight(vertex_ids, bary, neighbors, rank)
  return PermutohedralLattice(vertex_ids=vertex_ids, weights=bary, neighbors=neighbors, self_weight=self_weight,
                              num_points=num_points)


def _self_weight(vertex_ids: jnp.ndarray, bary: jnp.ndarray, neighbors: jnp.ndarray, rank: jnp.ndarray) -> jnp.ndarray:
  """Exact self-response of each point: ``alpha/gain * sum_{r, r'} b_r b_r' B[v_r, v_r']`` with B the blur.

  B[a, b] sums ``0.5^moves`` over the walks from b to a that move at most once per pass j (by +-u_j, u_j the lattice
  direction) through existing lattice points. Vertex r of a simplex is ``v_0 - sum_{rank_j > d - r} u_j``, so
  ``v_r - v_r' = sum_j c_j u_j`` with ``c_j = [rank_j > d - r'] - [rank_j > d - r]`` (|r - r'| moves); since
  ``sum_j u_j = 0`` the only other walk is ``c + 1`` (r > r') or ``c - 1`` (r < r'), with d + 1 - |r - r'| moves, and
  for r = r' the walks are: stay, all +1, all -1. [N, d+1] x3 -> [N].
  """
  n, dp1 = vertex_ids.shape
  d = dp1 - 1
  m1 = neighbors.shape[-1]
  table = jnp.concatenate([jnp.broadcast_to(jnp.arange(m1, dtype=jnp.int32), (dp1, 1, m1)), neighbors], axis=1)
  table = table.reshape(-1)  # [(d+1) * 3 * (M+1)]: (stay, +u_j, -u_j) per direction j
  r = np.arange(dp1)
  above = (rank[:, None, :] > (d - r)[None, :, None]).astype(jnp.int32)  # [N, r, j]: rank_j > d - r
  later = jnp.asarray(np.sign(r[:, None] - r[None, :]), jnp.int32)  # [r (to), r' (from)]: sign(r - r')
  start = jnp.broadcast_to(vertex_ids[:, None, :], (n, dp1, dp1))  # walks start at v_r'
  cur_c, cur_p, cur_m = start, start, vertex_ids

  def move(cur, step, j):  # step in {-1, 0, 1}
    return table[(j * 3 + jnp.where(step < 0, 2, step)) * m1 + cur]

  for j in range(dp1):
    c = above[:, None, :, j] - above[:, :, None, j]  # [N, r, r']
    cur_c = move(cur_c, c, j)
    cur_p = move(cur_p, jnp.where(later == 0, 1, c + later), j)
    cur_m = move(cur_m, jnp.full_like(cur_m, -1), j)
  k = np.abs(r[:, None] - r[None, :])
  end = vertex_ids[:, :, None]
  weight = (jnp.where(cur_c == end, 0.5 ** k, 0.0) + jnp.where(cur_p == end, 0.5 ** (dp1 - k), 0.0)
            + jnp.where(cur_m == vertex_ids, 0.5 ** dp1, 0.0)[:, :, None] * np.eye(dp1))
  alpha = 1.0 / (1.0 + 2.0 ** (-d))
  out = jnp.einsum("nr,nrs,ns->n", bary, weight.astype(bary.dtype), bary, precision=_HIGHEST)
  return out * (alpha / lattice_gain(d))


@jax.jit
def lattice_filter(lattice: PermutohedralLattice, values: Array) -> jnp.ndarray:
  """Splat -> blur -> slice: values [N, C] -> [N, C] ≈ ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (including j = i).

  Linear in ``values`` (differentiable in them; the lattice is not differentiated)."""
  values = jnp.asarray(values)
  n, dp1 = lattice.vertex_ids.shape
  if values.ndim != 2 or values.shape[0] != n:
    raise ValueError(f"lattice_filter: values must be [N, C] with N = {n} (the lattice's points), got {values.shape}")
  d = dp1 - 1
  m = lattice.neighbors.shape[-1] - 1  # lattice slots; row m is the zero row of missing neighbours
  w = lattice.weights.astype(values.dtype)
  ids = lattice.vertex_ids.reshape(-1)
  grid = jnp.zeros((m + 1, values.shape[1]), values.dtype)
  grid = grid.at[ids].add((w[:, :, None] * values[:, None, :]).reshape(n * dp1, -1))
  for j in range(dp1):
    grid = grid + 0.5 * (grid[lattice.neighbors[j, 0]] + grid[lattice.neighbors[j, 1]])
  alpha = 1.0 / (1.0 + 2.0 ** (-d))
  out = jnp.einsum("nr,nrc->nc", w, grid[lattice.vertex_ids], precision=_HIGHEST)
  return out * (alpha / lattice_gain(d))  # densecrf's alpha, then divide by the uniform-density gain


@functools.partial(jax.jit, static_argnames=("exclude_self", "max_points"))
def filter_permutohedral(values: Array, features: Array, *, exclude_self: bool = True,
                         max_points: int | None = None) -> jnp.ndarray:
  """Approximate ``filter_exact`` on the permutohedral lattice: values [N, C], features [N, d] -> [N, C].

  ``exclude_self`` subtracts the lattice's own self-response (``PermutohedralLattice.self_weight``), so the result
  is the lattice's sum over ``j != i`` (non-negative for non-negative values)."""
  lattice = permutohedral_lattice(features, max_points)
  out = lattice_filter(lattice, values)
  return out - lattice.self_weight[:, None].astype(out.dtype) * values if exclude_self else out


# ----------------------------------------------------------------------------------------------------------------
# mean-field inference (Algorithm 1)


def _check(unary_logits, image, compat, params, num_iters, method, normalization):
  if method not in METHODS:
    raise ValueError(f"mean_field: method must be one of {METHODS}, got {method!r}")
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"mean_field: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  if not isinstance(num_iters, (int, np.integer)) or num_iters < 0:
    raise ValueError(f"mean_field: num_iters must be a non-negative Python int (it is unrolled by scan), got "
                     f"{num_iters!r}")
  if unary_logits.ndim != 3:
    raise ValueError(f"mean_field: unary_logits must be [H, W, C] (or [B, H, W, C]), got shape {unary_logits.shape}")
  if image.ndim != 3 or image.shape[:2] != unary_logits.shape[:2]:
    raise ValueError(f"mean_field: image must be [H, W, 3] with the unaries' H, W = {unary_logits.shape[:2]}, got "
                     f"shape {image.shape}")
  c = unary_logits.shape[-1]
  if compat is not None and tuple(compat.shape) != (c, c):
    raise ValueError(f"mean_field: compat must be a [C, C] = [{c}, {c}] matrix (or None for Potts), got shape "
                     f"{tuple(compat.shape)}")
  for name in ("w1", "w2"):
    w = jnp.asarray(getattr(params, name))
    if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != c):
      raise ValueError(f"mean_field: params.{name} must be a scalar or a [C] = [{c}] vector of per-class weights, "
                       f"got shape {w.shape}")


def _normalized(filt: Callable, n: int, dtype, normalization: str, exclude_self: bool) -> Callable:
  """Message passing ``q -> Qt`` with the kernel normalisation (see the module docstring) from a linear filter
  ``filt(v [N, C], exclude_self) -> [N, C]``. The normalisers ``D = K 1`` include the j = i term (so D_i >= k(i, i)
  and nothing blows up for a pixel without similar neighbours); the messages exclude it when ``exclude_self``."""
  if normalization == "none":
    return lambda q: filt(q, exclude_self)
  norm = filt(jnp.ones((n, 1), dtype), False)
  if normalization == "after":
    inv = 1.0 / norm
    return lambda q: filt(q, exclude_self) * inv
  inv_sqrt = jax.lax.rsqrt(norm)
  return lambda q: filt(q * inv_sqrt, exclude_self) * inv_sqrt


def kernel_filters(image: Array, params: DenseCRFParams = DenseCRFParams(), *, method: str = "exact",
                   exclude_self: bool = True, normalization: str = "symmetric", block_size: int = 256,
                   max_lattice_points: int | None = None) -> tuple[Callable, Callable]:
  """The two normalised message-passing filters of eq. 3 for one image [H, W, K]: (appearance, smoothness), each
  [H*W, C] -> [H*W, C] (linear; the lattice and the normalisers are built once here and reused per iteration)."""
  image = jnp.asarray(image)
  h, w, _ = image.shape
  n = h * w
  dtype = image.dtype
  f_app = appearance_features(image, jnp.asarray(params.theta_alpha, dtype), jnp.asarray(params.theta_beta, dtype))
  theta_gamma = jnp.asarray(params.theta_gamma, dtype)
  if method == "exact":
    f_sm = smoothness_features(h, w, theta_gamma, dtype)
    app = lambda v, excl: filter_exact(v, f_app, exclude_self=excl, block_size=block_size)  # noqa: E731
    smooth = lambda v, excl: filter_exact(v, f_sm, exclude_self=excl, block_size=block_size)  # noqa: E731
  else:
    lattice = permutohedral_lattice(f_app, max_lattice_points)
    self_w = lattice.self_weight[:, None].astype(dtype)

    def app(v, excl):
      out = lattice_filter(lattice, v)
      return out - self_w * v if excl else out

    def smooth(v, excl):
      return filter_separable(v.reshape(h, w, -1), theta_gamma, exclude_self=excl).reshape(n, -1)

  return (_normalized(app, n, dtype, normalization, exclude_self),
          _normalized(smooth, n, dtype, normalization, exclude_self))


@functools.partial(jax.jit, static_argnames=_STATIC)
def mean_field_logits(unary_logits: Array, image: Array, *, params: DenseCRFParams = DenseCRFParams(),
                      compat: Array | None = None, num_iters: int = 5, method: str = "exact",
                      normalization: str = "symmetric", exclude_self: bool = True, remat: bool = False,
                      block_size: int = 256, max_lattice_points: int | None = None) -> jnp.ndarray:
  """Mean-field inference in the dense CRF (Krähenbühl & Koltun 2011, Algorithm 1); returns the last iteration's
  pre-softmax ``L = U - mu(sum_m w_m Qt_m)`` (``softmax(L)`` = the marginals; ``U`` itself when num_iters = 0).

  unary_logits: [H, W, C] (or [B, H, W, C]) logits ``U = -psi_u``; image: [H, W, K] (or [B, H, W, K]) colours in
  0..255 (K = 3 for RGB); params: ``DenseCRFParams`` (weights scalar or per class [C]); compat: [C, C] ``mu(l, l')``
  (None: Potts ``[l != l']``); method: "exact" | "permutohedral"; normalization: "symmetric" | "after" | "none";
  exclude_self: drop the j = i term (Algorithm 1); remat: rematerialise each iteration in the backward pass;
  block_size: rows per block of the exact filter; max_lattice_points: lattice slots of the permutohedral path
  (default H*W*6, always enough; fewer is faster, NaN output if the image needs more: see permutohedral_lattice).
  Computes in float32 at least (float64 stays float64). -> [H, W, C] (or [B, H, W, C]).
  """
  unary_logits = jnp.asarray(unary_logits)
  image = jnp.asarray(image)
  if unary_logits.ndim == 4:
    if image.ndim != 4 or image.shape[0] != unary_logits.shape[0]:
      raise ValueError(f"mean_field: batched unary_logits {unary_logits.shape} need a batched image [B, H, W, 3] "
                       f"with the same B, got {image.shape}")
    fn = lambda u, im: mean_field_logits(u, im, params=params, compat=compat, num_iters=num_iters,  # noqa: E731
                                         method=method, normalization=normalization, exclude_self=exclude_self,
                                         remat=remat, block_size=block_size,
                                         max_lattice_points=max_lattice_points)
    return jax.vmap(fn)(unary_logits, image)
  _check(unary_logits, image, compat, params, num_iters, method, normalization)
  h, w, c = unary_logits.shape
  dtype = jnp.result_type(unary_logits.dtype, image.dtype, jnp.float32)
  u = unary_logits.astype(dtype).reshape(h * w, c)
  if num_iters == 0:
    return u.reshape(h, w, c)
  mu = potts_compat(c, dtype) if compat is None else jnp.asarray(compat, dtype)
  w1 = jnp.asarray(params.w1, dtype)
  w2 = jnp.asarray(params.w2, dtype)
  app, smooth = kernel_filters(image.astype(dtype), params, method=method, exclude_self=exclude_self,
                               normalization=normalization, block_size=block_size,
                               max_lattice_points=max_lattice_points)

  def step(logits, _):
    q = jax.nn.softmax(logits, axis=-1)
    weighted = w1 * app(q) + w2 * smooth(q)  # message passing + weighting filter outputs
    pairwise = jnp.dot(weighted, mu.T, precision=_HIGHEST)  # compatibility transform
    return u - pairwise, None  # adding unary potentials (softmax = normalising, next step)

  if remat:
    step = jax.checkpoint(step)
  logits, _ = jax.lax.scan(step, u, None, length=num_iters)
  return logits.reshape(h, w, c)


@functools.partial(jax.jit, static_argnames=_STATIC)
def mean_field(unary_logits: Array, image: Array, *, params: DenseCRFParams = DenseCRFParams(),
               compat: Array | None = None, num_iters: int = 5, method: str = "exact",
               normalization: str = "symmetric", exclude_self: bool = True, remat: bool = False,
               block_size: int = 256, max_lattice_points: int | None = None) -> jnp.ndarray:
  """Marginals Q [H, W, C] (or [B, H, W, C]) after ``num_iters`` mean-field iterations (Krähenbühl & Koltun 2011,
  Algorithm 1): ``softmax(mean_field_logits(...))``; same arguments."""
  return jax.nn.softmax(mean_field_logits(unary_logits, image, params=params, compat=compat, num_iters=num_iters,
                                          method=method, normalization=normalization, exclude_self=exclude_self,
                                          remat=remat, block_size=block_size,
                                          max_lattice_points=max_lattice_points), axis=-1)
