"""2-D Gaussian-mixture toys for counting a GAN's modes: ``ring8`` and ``grid25``, their samples and mode statistics.

The standard settings of the mode-collapse literature (Unrolled GAN, Metz et al. 2017; VEEGAN, Srivastava et al.
2017; PacGAN, Lin et al. 2018):

* ``ring8``:  8 equally weighted isotropic Gaussians, centres on a circle of radius 2 at angles ``2 pi k / 8``
  (k = 0..7, mode 0 at (2, 0)), standard deviation 0.02.
* ``grid25``: 25 equally weighted isotropic Gaussians on the 5x5 grid {-4, -2, 0, 2, 4}^2 (mode ``5 i + j`` at
  ``(x_i, y_j)``), standard deviation 0.05.

Neighbouring modes are ~77 (ring: chord 1.53) / 40 (grid) standard deviations apart, so a sample's nearest mode
is its component.

Evaluation (:func:`mode_stats`, pure numpy; VEEGAN's protocol, also used by PacGAN): each sample is assigned to its
nearest mode; it is *high quality* if it lies within 3 standard deviations (Euclidean distance <= 3 std) of that
mode. Reported: ``high_quality_rate`` (the fraction of high-quality samples), ``mode_histogram`` (high-quality
samples per mode), ``modes_covered`` (modes with at least ``min_count`` high-quality samples; VEEGAN's count is
``min_count=1``: a mode is captured if any high-quality sample lands on it; raise it for a stricter count that a few
stray samples cannot satisfy) and ``kl_to_uniform``, ``KL(q || U) = sum_k q_k log(K q_k)`` with ``q`` the
normalised histogram and ``U`` uniform over the K modes (0 for perfect balance, ``log K`` when every high-quality
sample sits at one mode; NaN when there are no high-quality samples). Note that a sample from the true mixture is
within 3 std of its mode with probability ``1 - exp(-9/2) ~= 0.989`` (2-D radial distance), so real data scores a
rate of ~0.99, not 1.
"""

from __future__ import annotations

import numpy as np

RING_RADIUS = 2.0
RING_STD = 0.02
GRID_VALUES = (-4.0, -2.0, 0.0, 2.0, 4.0)
GRID_STD = 0.05
HIGH_QUALITY_STDS = 3.0


def _ring8() -> np.ndarray:
  angles = 2.0 * np.pi * np.arange(8) / 8
  return RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _grid25() -> np.ndarray:
  return np.array([(x, y) for x in GRID_VALUES for y in GRID_VALUES], np.float64)


_MIXTURES = {"ring8": (_ring8, RING_STD), "grid25": (_grid25, GRID_STD)}


def names() -> tuple[str, ...]:
  """The mixture names: ``('ring8', 'grid25')``."""
  return tuple(_MIXTURES)


def _check_name(name: str) -> str:
  if name not in _MIXTURES:
    raise ValueError(f"mixture name={name!r}; choose one of {list(_MIXTURES)}")
  return name


def modes(name: str) -> np.ndarray:
  """float32 [K, 2]: the mode centres of mixture ``name`` (K = 8 or 25; order in the module docstring)."""
  return _MIXTURES[_check_name(name)][0]().astype(np.float32)


def mode_std(name: str) -> float:
  """The per-coordinate standard deviation of every component of ``name`` (0.02 ring, 0.05 grid)."""
  return float(_MIXTURES[_check_name(name)][1])


def sample(name: str, n: int, seed: int) -> np.ndarray:
  """float32 [n, 2]: ``n`` i.i.d. samples of mixture ``name`` (uniform component, then isotropic Gaussian noise),
  deterministic in ``seed`` (``np.random.default_rng(seed)``)."""
  centres = _MIXTURES[_check_name(name)][0]()
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"sample: n={n!r} must be a non-negative integer (the number of points)")
  rng = np.random.default_rng(seed)
  component = rng.integers(len(centres), size=int(n))
  noise = rng.standard_normal((int(n), 2))
  return (centres[component] + mode_std(name) * noise).astype(np.float32)


def mode_stats(name: str, points: np.ndarray, *, min_count: int = 1) -> dict:
  """Mode coverage of ``points`` float [N, 2] (e.g. GAN samples) against mixture ``name`` (module docstring).

  Returns ``modes_covered`` int (modes with >= ``min_count`` high-quality samples), ``num_modes`` int (K),
  ``high_quality_rate`` float (fraction of the N points within 3 std of their nearest mode), ``mode_histogram``
  int64 [K] (high-quality points per mode) and ``kl_to_uniform`` float (KL of the normalised histogram to the
  uniform distribution over modes, nats; NaN if no point is high quality). Non-finite points count as low quality.
  """
  centres = _MIXTURES[_check_name(name)][0]()
  x = np.asarray(points)
  if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
    raise ValueError(f"mode_stats: points must be a non-empty float array [N, 2], got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f"mode_stats: points must be real numbers, got dtype {x.dtype}")
  if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
    raise ValueError(f"mode_stats: min_count={min_count!r} must be an integer >= 1")
  x = x.astype(np.float64)
  k = len(centres)
  dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)  # [N, K]
  finite = np.isfinite(x).all(axis=1)
  dist[~finite] = np.inf
  nearest = np.argmin(dist, axis=1)
  high = dist[np.arange(len(x)), nearest] <= HIGH_QUALITY_STDS * mode_std(name)
  hist = np.bincount(nearest[high], minlength=k).astype(np.int64)
  total = int(hist.sum())
  if total:
    q = hist / total
    nz = q > 0
    kl = float(np.sum(q[nz] * np.log(k * q[nz])))
  else:
    kl = float("nan")
  return {"modes_covered": int(np.sum(hist >= min_count)), "num_modes": k, "high_quality_rate": float(high.mean()),
          "mode_histogram": hist, "kl_to_uniform": kl}
