"""Tests of research.classical.sequences (seed 003 §15): LIS by patience sorting vs an O(n^2) dynamic program."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.classical.sequences import longest_increasing_subsequence


def _lis_length_dp(x, strict=True):
  """The seed's recurrence h(i) = 1 + max_{j < i, x_j < x_i} h(j) (x_j <= x_i when not strict), O(n^2)."""
  n = len(x)
  if n == 0:
    return 0
  h = np.ones(n, int)
  for i in range(n):
    ok = (x[:i] < x[i]) if strict else (x[:i] <= x[i])
    if ok.any():
      h[i] = 1 + h[:i][ok].max()
  return int(h.max())


def _check(x, res, strict):
  n = len(x)
  length, idx = int(res.length), np.asarray(res.indices)
  chex.assert_shape(res.indices, (n,))
  assert res.indices.dtype == jnp.int32 and res.length.dtype == jnp.int32
  assert length == _lis_length_dp(x, strict)
  sel, pad = idx[:length], idx[length:]
  assert np.all(pad == -1)
  assert np.all(np.diff(sel) > 0) and sel.min() >= 0 and sel.max() < n  # a subsequence (increasing positions)
  vals = x[sel]
  assert np.all(np.diff(vals) > 0) if strict else np.all(np.diff(vals) >= 0)


@pytest.mark.parametrize("strict", [True, False])
def test_random_arrays_against_quadratic_dp(strict):
  """Many sizes, with ties/duplicates (small integer range) and without (floats); n is padded to a few fixed
  sizes so that compilation happens once per size."""
  rng = np.random.default_rng(0)
  for n in (1, 2, 7, 64):
    for trial in range(6):
      if trial % 3 == 0:
        x = rng.integers(0, 4, n).astype(np.int32)  # many duplicates
      elif trial % 3 == 1:
        x = rng.normal(size=n).astype(np.float32)
      else:
        x = np.sort(rng.integers(0, 10, n)).astype(np.int32)  # sorted with ties: strict vs non-strict differ
      _check(x, longest_increasing_subsequence(x, strict=strict), strict)


def test_special_cases_and_float64():
  assert int(longest_increasing_subsequence(np.array([5, 5, 5, 5], np.int32)).length) == 1
  assert int(longest_increasing_subsequence(np.array([5, 5, 5, 5], np.int32), strict=False).length) == 4
  dec = np.arange(64, dtype=np.int32)[::-1].copy()
  assert int(longest_increasing_subsequence(dec).length) == 1
  inc = np.arange(64, dtype=np.int32)
  np.testing.assert_array_equal(np.asarray(longest_increasing_subsequence(inc).indices), inc)
  # the dtype's largest value is handled (it is also the padding sentinel)
  big = np.array([3, np.iinfo(np.int32).max, np.iinfo(np.int32).max, 1, 2, 4, 5], np.int32)
  _check(big, longest_increasing_subsequence(big, strict=False), False)
  _check(big, longest_increasing_subsequence(big), True)
  with jax.enable_x64(True):
    x = np.random.default_rng(1).normal(size=64)
    x[10:20] = np.inf
    x[30] = -np.inf
    _check(x, longest_increasing_subsequence(jnp.asarray(x)), True)
  res = longest_increasing_subsequence(np.zeros((0,), np.float32))
  assert int(res.length) == 0 and res.indices.shape == (0,)


def test_jit_vmap_no_retrace():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def lengths(xs):
    return jax.vmap(lambda x: longest_increasing_subsequence(x).length)(xs)

  rng = np.random.default_rng(2)
  for _ in range(2):  # new values, same shape: traced once
    xs = rng.integers(0, 20, (5, 7)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(lengths(xs)), [_lis_length_dp(x) for x in xs])


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"x must have shape \[n\], got shape \(2, 3\)"):
    longest_increasing_subsequence(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="must not contain NaN"):
    longest_increasing_subsequence(np.array([1.0, np.nan, 2.0], np.float32))
  with pytest.raises(ValueError, match="real numbers"):
    longest_increasing_subsequence(np.array([1 + 1j, 2]))
  with pytest.raises(ValueError, match="real numbers"):
    longest_increasing_subsequence(np.array([True, False]))
