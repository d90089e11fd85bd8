"""masked_linear_sum_assignment and the Hungarian core vs scipy and a brute-force enumeration of matchings.

All batches share the shapes [24, 6, 8] / [24, 8, 6] so that each jitted program compiles once per orientation.
"""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from research.classical import assignment, clustering

B = 24
SHAPES = [(6, 8), (8, 6)]
_lsa = jax.jit(jax.vmap(clustering.linear_sum_assignment))
_masked = jax.jit(jax.vmap(assignment.masked_linear_sum_assignment))


def _solve(costs, row_mask=None, col_mask=None):
  """Batched masked assignment in float64: costs [B, n, m] -> (col_for_row [B, n], row_for_col [B, m]) numpy."""
  bsz, n, m = costs.shape
  row_mask = np.ones((bsz, n), bool) if row_mask is None else row_mask
  col_mask = np.ones((bsz, m), bool) if col_mask is None else col_mask
  with jax.enable_x64(True):
    cfr, rfc = _masked(jnp.asarray(costs, jnp.float64), jnp.asarray(row_mask), jnp.asarray(col_mask))
  chex.assert_shape((cfr, rfc), ((bsz, n), (bsz, m)))
  assert cfr.dtype == rfc.dtype == jnp.int32
  return np.asarray(cfr), np.asarray(rfc)


def _pairs(col_for_row: np.ndarray) -> list[tuple[int, int]]:
  return [(i, int(j)) for i, j in enumerate(np.asarray(col_for_row)) if j >= 0]


def _check_consistent(col_for_row, row_for_col):
  """The two maps are inverse to each other and one-to-one."""
  col_for_row, row_for_col = np.asarray(col_for_row), np.asarray(row_for_col)
  matched = col_for_row[col_for_row >= 0]
  assert len(set(matched.tolist())) == matched.size
  for i, j in enumerate(col_for_row):
    if j >= 0:
      assert row_for_col[j] == i
  assert np.sum(row_for_col >= 0) == matched.size


def _brute_force(cost: np.ndarray, allowed: np.ndarray) -> tuple[int, float]:
  """(max number of allowed pairs, min total among matchings of that size) by enumeration; cost: [n, m] small."""
  n, m = cost.shape
  best = (0, 0.0)
  for k in range(1, min(n, m) + 1):
    totals = [sum(cost[i, j] for i, j in zip(rows, cols))
              for rows in itertools.combinations(range(n), k) for cols in itertools.permutations(range(m), k)
              if all(allowed[i, j] for i, j in zip(rows, cols))]
    if not totals:
      break
    best = (k, min(totals))
  return best


@pytest.mark.parametrize("shape", SHAPES)
def test_random_costs_match_scipy(shape):
  rng = np.random.default_rng(shape[0])
  costs = rng.normal(size=(B, *shape))
  cfr, rfc = _solve(costs)
  for b in range(B):
    ref_r, ref_c = scipy_lsa(costs[b])  # continuous costs: unique optimum
    assert _pairs(cfr[b]) == list(zip(ref_r.tolist(), ref_c.tolist()))
    _check_consistent(cfr[b], rfc[b])


@pytest.mark.parametrize("shape", SHAPES)
def test_ties_all_equal_and_zeros_reach_scipy_total(shape):
  rng = np.random.default_rng(1)
  costs = rng.integers(0, 3, size=(B, *shape)).astype(np.float64)  # integer costs: many optima
  costs[0], costs[1], costs[2] = 0.0, 2.5, -1.0  # all-zero and all-equal matrices
  cfr, rfc = _solve(costs)
  for b in range(B):
    ref_r, ref_c = scipy_lsa(costs[b])
    pairs = _pairs(cfr[b])
    assert len(pairs) == min(shape)
    assert sum(costs[b][i, j] for i, j in pairs) == costs[b][ref_r, ref_c].sum()
    _check_consistent(cfr[b], rfc[b])


@pytest.mark.parametrize("x64", [True, False])
def test_huge_finite_costs_mixed_signs_match_scipy_total(x64):
  """1e30 / -1e30 big-M entries among O(1) costs: the net big-M count must be optimal, for the core and masked."""
  rng = np.random.default_rng(3)
  costs = rng.uniform(size=(B, 8, 6))
  u = rng.uniform(size=costs.shape)
  costs[u < 0.25] = 1e30
  costs[u > 0.75] = -1e30
  if x64:
    cfr, _ = _solve(costs)
    with jax.enable_x64(True):
      rows, cols = map(np.asarray, _lsa(jnp.asarray(costs)))
  else:  # float32: the core alone
    rows, cols = map(np.asarray, _lsa(jnp.asarray(costs, jnp.float32)))
    cfr = np.full((B, 8), -1)
    cfr[np.arange(B)[:, None], rows] = cols
  for b in range(B):
    ref_r, ref_c = scipy_lsa(costs[b])
    ref = costs[b][ref_r, ref_c]
    for got in (costs[b][rows[b], cols[b]], np.array([costs[b][i, j] for i, j in _pairs(cfr[b])])):
      assert got.size == 6
      assert np.sum(got == 1e30) - np.sum(got == -1e30) == np.sum(ref == 1e30) - np.sum(ref == -1e30)
      np.testing.assert_allclose(got.sum(), ref.sum(), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_matches_scipy_on_valid_submatrix(shape):
  rng = np.random.default_rng(sum(shape) + 5)
  n, m = shape
  costs = rng.normal(size=(B, n, m))
  row_mask = rng.uniform(size=(B, n)) < 0.7
  col_mask = rng.uniform(size=(B, m)) < 0.7
  row_mask[0], col_mask[0] = False, True  # no valid rows
  row_mask[1], col_mask[1] = True, False  # no valid columns
  row_mask[2], col_mask[2] = True, True  # nothing padded
  valid = row_mask[:, :, None] & col_mask[:, None, :]
  padded = np.where(~valid & (rng.uniform(size=costs.shape) < 0.5), np.nan, costs)  # padding is never read
  padded = np.where(~valid & (rng.uniform(size=costs.shape) < 0.3), -1e6, padded)
  cfr, rfc = _solve(padded, row_mask, col_mask)
  for b in range(B):
    vr, vc = np.flatnonzero(row_mask[b]), np.flatnonzero(col_mask[b])
    pairs = _pairs(cfr[b])
    assert len(pairs) == min(len(vr), len(vc))
    assert all(row_mask[b, i] and col_mask[b, j] for i, j in pairs)
    _check_consistent(cfr[b], rfc[b])
    if pairs:
      sub = costs[b][np.ix_(vr, vc)]
      ref_r, ref_c = scipy_lsa(sub)
      np.testing.assert_allclose(sum(costs[b][i, j] for i, j in pairs), sub[ref_r, ref_c].sum(), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_forbidden_pairs_give_min_cost_max_cardinality_matching(shape):
  """+inf pairs on 4x5 / 5x4 problems padded into the batch shape vs enumeration of all matchings."""
  rng = np.random.default_rng(7 + shape[0])
  n, m = shape
  small = (4, 5) if n < m else (5, 4)
  costs = rng.integers(-3, 4, size=(B, n, m)).astype(np.float64)  # ties too
  costs[rng.uniform(size=costs.shape) < 0.45] = np.inf
  costs[:, small[0]:, :] = np.nan  # padding
  costs[:, :, small[1]:] = np.nan
  row_mask = np.zeros((B, n), bool)
  col_mask = np.zeros((B, m), bool)
  row_mask[:, :small[0]] = rng.uniform(size=(B, small[0])) < 0.9
  col_mask[:, :small[1]] = rng.uniform(size=(B, small[1])) < 0.9
  cfr, rfc = _solve(costs, row_mask, col_mask)
  for b in range(B):
    allowed = np.isfinite(costs[b]) & row_mask[b][:, None] & col_mask[b][None, :]
    k_ref, total_ref = _brute_force(np.where(allowed, costs[b], 0.0), allowed)
    pairs = _pairs(cfr[b])
    assert all(allowed[i, j] for i, j in pairs)
    assert len(pairs) == k_ref, b
    assert sum(costs[b][i, j] for i, j in pairs) == total_ref
    _check_consistent(cfr[b], rfc[b])


def test_maximize_float32_jit_no_retrace_and_assignment_matrix():
  rng = np.random.default_rng(11)
  costs = rng.uniform(size=(4, 5, 5)).astype(np.float32)
  masks = np.ones((4, 5), bool)
  masks[1, 3:] = False

  @jax.jit
  @chex.assert_max_traces(n=1)
  def solve(c, rm):
    cfr, rfc = jax.vmap(lambda c, r: assignment.masked_linear_sum_assignment(c, r, None, maximize=True))(c, rm)
    return cfr, rfc, jax.vmap(assignment.assignment_matrix, in_axes=(0, None))(cfr, 5)

  solve(costs, masks)
  cfr, _, mat = map(np.asarray, solve(costs + 1.0, masks))  # same shapes: no retrace
  chex.assert_shape(mat, (4, 5, 5))
  assert mat.dtype == np.float32
  for b in range(4):
    vr = np.flatnonzero(masks[b])
    _, ref_c = scipy_lsa(costs[b][vr], maximize=True)
    np.testing.assert_array_equal(cfr[b][vr], ref_c)
    assert np.all(cfr[b][~masks[b]] == -1)
    dense = np.zeros((5, 5))
    dense[vr, ref_c] = 1
    np.testing.assert_array_equal(mat[b], dense)


def test_empty_and_bad_inputs():
  cfr, rfc = assignment.masked_linear_sum_assignment(np.zeros((0, 3)))
  assert cfr.shape == (0,) and rfc.shape == (3,) and np.all(np.asarray(rfc) == -1)
  with pytest.raises(ValueError, match="2-D cost matrix"):
    assignment.masked_linear_sum_assignment(np.zeros(3))
  with pytest.raises(ValueError, match=r"`row_mask` must have shape \(2,\)"):
    assignment.masked_linear_sum_assignment(np.zeros((2, 3)), np.ones(3, bool))
  with pytest.raises(ValueError, match="NaN or -inf"):
    assignment.masked_linear_sum_assignment(np.array([[0.0, np.nan], [1.0, 0.0]]))
  with pytest.raises(ValueError, match=r"NaN or \+inf"):
    assignment.masked_linear_sum_assignment(np.array([[0.0, np.inf], [1.0, 0.0]]), maximize=True)
  with pytest.raises(ValueError, match="col_for_row"):
    assignment.assignment_matrix(np.zeros((2, 2), np.int32), 2)


def test_hungarian_runs_inside_shard_map_like_the_training_loop():
  """The loop runs eval steps under shard_map: the Hungarian loops' carries must vary with the sharded cost."""
  import scipy.optimize
  from jax.sharding import PartitionSpec as P

  from research.classical import assignment as assignment_lib
  from research.classical import clustering as clustering_lib
  from research.train import task as task_lib
  mesh = task_lib.make_mesh(jax.devices()[:4])
  cost = np.random.default_rng(0).random((4, 6, 7))
  mask_r, mask_c = np.ones((4, 6), bool), np.ones((4, 7), bool)
  plain = jax.jit(jax.shard_map(jax.vmap(lambda c: clustering_lib.linear_sum_assignment(c)[1]), mesh=mesh,
                                in_specs=P("data"), out_specs=P("data")))
  masked = jax.jit(jax.shard_map(jax.vmap(lambda c, r, k: assignment_lib.masked_linear_sum_assignment(c, r, k)[0]),
                                 mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P("data")))
  want = np.stack([scipy.optimize.linear_sum_assignment(c)[1] for c in cost])
  np.testing.assert_array_equal(np.asarray(plain(jnp.asarray(cost))), want)
  np.testing.assert_array_equal(np.asarray(masked(jnp.asarray(cost), mask_r, mask_c)), want)
