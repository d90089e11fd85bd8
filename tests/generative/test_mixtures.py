"""``research.data.mixtures``: the ring8 / grid25 toys (geometry, sampling statistics) and mode_stats."""

from __future__ import annotations

import chex
import numpy as np
import pytest

from research.data import mixtures

N = 20_000


def test_geometry():
  assert mixtures.names() == ("ring8", "grid25")
  ring, grid = mixtures.modes("ring8"), mixtures.modes("grid25")
  chex.assert_shape(ring, (8, 2))
  chex.assert_shape(grid, (25, 2))
  assert ring.dtype == grid.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 2.0, rtol=1e-6)
  np.testing.assert_allclose(ring[0], [2.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(np.diff(np.arctan2(ring[:, 1], ring[:, 0]) % (2 * np.pi)), np.pi / 4, rtol=1e-5)
  assert sorted({tuple(p) for p in grid.tolist()}) == [(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)]
  assert (mixtures.mode_std("ring8"), mixtures.mode_std("grid25")) == (0.02, 0.05)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_samples_are_balanced_and_tight(name):
  x = mixtures.sample(name, N, seed=0)
  chex.assert_shape(x, (N, 2))
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x, mixtures.sample(name, N, seed=0))  # deterministic
  assert not np.array_equal(x, mixtures.sample(name, N, seed=1))
  centres, std = mixtures.modes(name).astype(np.float64), mixtures.mode_std(name)
  k = len(centres)
  nearest = np.argmin(np.linalg.norm(x[:, None].astype(np.float64) - centres[None], axis=-1), axis=1)
  frac = np.bincount(nearest, minlength=k) / N
  # multinomial: sd of a fraction is sqrt(p (1 - p) / N) (0.0023 ring, 0.0014 grid); allow 5 sd
  np.testing.assert_allclose(frac, 1.0 / k, atol=5 * np.sqrt((1 / k) * (1 - 1 / k) / N))
  offsets = x - centres[nearest]
  np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=5 * std / np.sqrt(N))
  np.testing.assert_allclose(offsets.std(axis=0), std, rtol=0.03)  # per-coordinate spread is the mode std
  s = mixtures.mode_stats(name, x)
  assert s["modes_covered"] == s["num_modes"] == k
  assert abs(s["high_quality_rate"] - (1 - np.exp(-4.5))) < 0.005  # P(|noise| <= 3 std) in 2-D
  assert s["kl_to_uniform"] < 0.005
  np.testing.assert_array_equal(s["mode_histogram"].sum(), round(s["high_quality_rate"] * N))


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_mode_stats_on_exact_and_collapsed_points(name):
  centres = mixtures.modes(name)
  k = len(centres)
  s = mixtures.mode_stats(name, np.repeat(centres, 3, axis=0))
  assert (s["modes_covered"], s["high_quality_rate"]) == (k, 1.0)
  np.testing.assert_array_equal(s["mode_histogram"], [3] * k)
  assert s["mode_histogram"].dtype == np.int64
  np.testing.assert_allclose(s["kl_to_uniform"], 0.0, atol=1e-12)
  collapsed = np.tile(centres[2], (50, 1)) + 0.5 * mixtures.mode_std(name)  # all within 3 std of mode 2
  s = mixtures.mode_stats(name, collapsed)
  assert (s["modes_covered"], s["high_quality_rate"]) == (1, 1.0)
  assert s["mode_histogram"][2] == 50
  np.testing.assert_allclose(s["kl_to_uniform"], np.log(k), rtol=1e-12)
  # min_count: one stray high-quality point covers a mode only under the VEEGAN count (min_count=1)
  mixed = np.concatenate([collapsed, centres[:1]])
  assert mixtures.mode_stats(name, mixed)["modes_covered"] == 2
  assert mixtures.mode_stats(name, mixed, min_count=2)["modes_covered"] == 1


def test_far_and_non_finite_points_are_low_quality():
  far = np.array([[10.0, 10.0], [1.0, 1.0], [0.0, 2.3], [np.nan, 0.0], [np.inf, 1.0]], np.float32)
  s = mixtures.mode_stats("ring8", far)
  assert (s["modes_covered"], s["high_quality_rate"]) == (0, 0.0)
  np.testing.assert_array_equal(s["mode_histogram"], np.zeros(8))
  assert np.isnan(s["kl_to_uniform"])
  # a point 4 std from a grid mode is low quality, 2.9 std high quality
  std = mixtures.mode_std("grid25")
  s = mixtures.mode_stats("grid25", np.array([[4 * std, 0.0], [0.0, 2.9 * std]]))
  assert s["high_quality_rate"] == 0.5 and s["modes_covered"] == 1


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="name='ring9'.*ring8"):
    mixtures.modes("ring9")
  with pytest.raises(ValueError, match="mixture name"):
    mixtures.sample("grid", 10, 0)
  with pytest.raises(ValueError, match="mixture name"):
    mixtures.mode_stats("spiral", np.zeros((3, 2)))
  with pytest.raises(ValueError, match="n=-1"):
    mixtures.sample("ring8", -1, 0)
  with pytest.raises(ValueError, match="n=2.5"):
    mixtures.sample("ring8", 2.5, 0)
  for bad in (np.zeros((4, 3)), np.zeros(4), np.zeros((0, 2)), np.zeros((2, 2, 2))):
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
      mixtures.mode_stats("ring8", bad)
  with pytest.raises(ValueError, match="real numbers"):
    mixtures.mode_stats("ring8", np.array([["a", "b"]]))
  with pytest.raises(ValueError, match="min_count=0"):
    mixtures.mode_stats("ring8", np.zeros((3, 2)), min_count=0)
  assert mixtures.sample("grid25", 0, 0).shape == (0, 2)
