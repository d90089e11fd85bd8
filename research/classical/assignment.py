"""Padded (static-shape) linear assignment on top of the Hungarian core of ``clustering`` (seed 003; seed 001).

Kuhn (1955) / Munkres (1957) solve the square or rectangular assignment problem; detection and tracking code
(DETR-style set losses, SIMCO's matching of detections) needs it for *padded* problems: a fixed ``[n, m]`` cost
matrix of which only the rows in ``row_mask`` and the columns in ``col_mask`` are real, plus pairs that are not
allowed at all. ``masked_linear_sum_assignment`` reduces that problem to one call of
``research.classical.clustering.linear_sum_assignment`` (no second Hungarian implementation):

* the allowed costs are shifted and scaled to ``z in [0, 1]`` (a positive affine map of the costs changes no
  optimal assignment of a fixed size, and it makes the construction overflow-free);
* every pair that would leave a valid row (or, for tall matrices, a valid column) without an allowed partner costs
  ``big = K + 2`` with ``K = min(#valid rows, #valid cols)``; pairs of padding cost 0.
  Adding one more allowed pair changes the allowed part of the total by at most ``K`` (< ``big``), so the optimum
  of the padded matrix is a **minimum-cost maximum-cardinality** matching on the allowed pairs; without forbidden
  pairs that is an optimal assignment of ``min(#valid rows, #valid cols)`` pairs of the valid sub-matrix.

Special values (for ``maximize=False``; with ``maximize=True`` read ``-inf`` for ``+inf``):

* ``+inf`` on a valid pair: **forbidden** -- the pair is never reported; a row whose only partners are forbidden is
  reported as unmatched (-1). Fewer than ``min(#valid rows, #valid cols)`` pairs come back when forbidden pairs
  make a full matching impossible.
* NaN or ``-inf`` on a valid pair: ``ValueError`` for concrete input; under ``jit`` (no check possible) they are
  treated as forbidden.
* Very large *finite* costs (big-M, e.g. ``1e30`` or ``-1e30``): ordinary costs. After the scaling above the other
  costs differ by ``~|c| / 1e30``; the solver then first minimises the net count ``#(+1e30) - #(-1e30)`` of
  big-M pairs and resolves the remaining costs only up to float rounding at the ``1e30`` scale (``eps * 1e30``;
  scipy has the same limit in float64). Use ``+inf`` instead of a big-M to forbid a pair and keep
  full precision on the rest.
* Padding entries (outside ``row_mask`` x ``col_mask``) are never read: they may hold anything, NaN included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from research.classical.clustering import linear_sum_assignment

__all__ = ["masked_linear_sum_assignment", "assignment_matrix"]


def _check_mask(mask, size: int, name: str, cost_shape):
  if mask is None:
    return np.ones((size,), bool)
  if tuple(jnp.shape(mask)) != (size,):
    raise ValueError(f"`{name}` must have shape ({size},) to match cost of shape {tuple(cost_shape)}; got shape "
                     f"{jnp.shape(mask)}. Pass one boolean per {'row' if name == 'row_mask' else 'column'}.")
  return mask if isinstance(mask, jax.core.Tracer) else np.asarray(mask).astype(bool)


def _masked_lsa(cost: jax.Array, row_mask: jax.Array, col_mask: jax.Array,
                maximize: bool) -> tuple[jax.Array, jax.Array]:
  """cost: [n, m] float, row_mask: [n] bool, col_mask: [m] bool -> (col_for_row [n], row_for_col [m]) int32."""
  n, m = cost.shape
  c = -cost if maximize else cost
  valid = row_mask[:, None] & col_mask[None, :]
  allowed = valid & jnp.isfinite(c)  # +inf (forbidden), and under jit NaN / -inf, are excluded
  any_allowed = jnp.any(allowed)
  lo = jnp.min(jnp.where(allowed, c, jnp.inf))
  hi = jnp.max(jnp.where(allowed, c, -jnp.inf))
  lo = jnp.where(any_allowed, lo, 0.0).astype(c.dtype)
  half_span = hi * 0.5 - lo * 0.5  # halves: no overflow even for costs near the float maximum
  half_span = jnp.where(any_allowed & (half_span > 0), half_span, 1.0).astype(c.dtype)
  z = jnp.clip((c * 0.5 - lo * 0.5) / half_span, 0.0, 1.0)
  k = jnp.minimum(jnp.sum(row_mask), jnp.sum(col_mask)).astype(c.dtype)
  big = k + 2.0
  if n <= m:  # the core assigns every row: a valid row without an allowed partner pays `big`
    miss = jnp.where(row_mask[:, None], big, 0.0)
  else:  # the core assigns every column
    miss = jnp.where(col_mask[None, :], big, 0.0)
  padded = jnp.where(allowed, z, jnp.broadcast_to(miss, (n, m))).astype(c.dtype)
  row_ind, col_ind = linear_sum_assignment(padded)
  keep = allowed[row_ind, col_ind]
  col_for_row = jnp.full((n,), -1, jnp.int32).at[row_ind].set(jnp.where(keep, col_ind, -1))
  row_for_col = jnp.full((m,), -1, jnp.int32).at[col_ind].set(jnp.where(keep, row_ind, -1))
  return col_for_row, row_for_col


_masked_lsa_jit = jax.jit(_masked_lsa, static_argnames=("maximize",))


def masked_linear_sum_assignment(cost, row_mask=None, col_mask=None, *,
                                 maximize: bool = False) -> tuple[jax.Array, jax.Array]:
  """Optimal assignment between the valid rows and columns of a padded cost matrix (Kuhn-Munkres, seed 003).

  Args:
    cost: [n, m] costs (integers are cast to float). Entries outside ``row_mask`` x ``col_mask`` are ignored;
      ``+inf`` (``-inf`` when maximising) marks a forbidden pair; see the module docstring for big-M values.
    row_mask: [n] bool, True for real rows (None: all rows).
    col_mask: [m] bool, True for real columns (None: all columns).
    maximize: maximise the total instead.

  Returns:
    ``(col_for_row, row_for_col)``: [n] and [m] int32. ``col_for_row[i]`` is the column matched to row ``i``, -1 for
    padded or unmatched rows; ``row_for_col`` is the inverse map (-1 likewise). Without forbidden pairs exactly
    ``min(#valid rows, #valid cols)`` pairs are matched and their total is optimal over the valid sub-matrix; with
    forbidden pairs the matching has the largest possible number of allowed pairs and, among those, the optimal
    total. Under ties any optimal assignment may come back. Jit- and vmap-able (masks may be traced).
  """
  shape = tuple(jnp.shape(cost))
  if len(shape) != 2:
    raise ValueError(f"`cost` must be a 2-D cost matrix [n, m]; got shape {shape}. For a batch use "
                     f"jax.vmap(masked_linear_sum_assignment).")
  n, m = shape
  row_mask = _check_mask(row_mask, n, "row_mask", shape)
  col_mask = _check_mask(col_mask, m, "col_mask", shape)
  if n == 0 or m == 0:
    return jnp.full((n,), -1, jnp.int32), jnp.full((m,), -1, jnp.int32)
  if any(isinstance(x, jax.core.Tracer) for x in (cost, row_mask, col_mask)):
    cost = jnp.asarray(cost)
    return _masked_lsa(cost.astype(jnp.result_type(cost, jnp.float32)), jnp.asarray(row_mask, bool),
                       jnp.asarray(col_mask, bool), maximize)
  # Concrete input: check on the host, then one jitted call.
  cost = np.asarray(cost).astype(jnp.result_type(cost, jnp.float32))
  valid = row_mask[:, None] & col_mask[None, :]
  forbidden_sign = -np.inf if maximize else np.inf
  if np.any(valid & (np.isnan(cost) | (np.isinf(cost) & (cost != forbidden_sign)))):
    word, ok = ("+inf", "-inf") if maximize else ("-inf", "+inf")
    raise ValueError(f"`cost` of shape {shape} holds NaN or {word} on a valid (row_mask x col_mask) pair; "
                     f"use {ok} to forbid a pair, a finite cost otherwise, or mask the row/column out.")
  return _masked_lsa_jit(cost, row_mask, col_mask, maximize=maximize)


def assignment_matrix(col_for_row, m: int, dtype=jnp.float32) -> jax.Array:
  """0/1 matrix of an assignment: col_for_row [n] int (-1 = unmatched) -> [n, m], one 1 per matched row."""
  col_for_row = jnp.asarray(col_for_row)
  if col_for_row.ndim != 1:
    raise ValueError(f"`col_for_row` must be 1-D [n] (as returned by masked_linear_sum_assignment); got shape "
                     f"{col_for_row.shape}. Use jax.vmap(assignment_matrix, in_axes=(0, None)) for a batch.")
  if not jnp.issubdtype(col_for_row.dtype, jnp.integer):
    raise ValueError(f"`col_for_row` must hold integer column indices; got dtype {col_for_row.dtype} "
                     f"(shape {col_for_row.shape}). Cast it with .astype(jnp.int32).")
  m = int(m)
  if m < 0:
    raise ValueError(f"`m` (number of columns) must be >= 0; got {m}.")
  return (col_for_row[:, None] == jnp.arange(m, dtype=col_for_row.dtype)[None, :]).astype(dtype)
