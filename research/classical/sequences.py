"""Longest increasing subsequence by patience sorting with binary search, O(n log n) (seed 003 §15).

The seed's "Longest Ordered Subsequence" gives the quadratic recurrence ``h(i) = max_{j < i, x_j < x_i} h(j) + 1``
(the seed writes ``h(j) < h(i)`` and calls it O(n); the condition is on the values and the recurrence is
O(n^2)) and mentions the O(n log n) method that keeps "an array to save previous information": ``tails[k]`` is
the smallest value that ends an increasing subsequence of length ``k + 1`` seen so far. ``tails`` is sorted, so
each new ``x_i`` finds its pile by binary search (``jnp.searchsorted``) and replaces that pile's top; a
predecessor link (the top of the pile to its left at that moment) lets one longest subsequence be read back.

Strict vs non-strict. ``strict=True`` (default) finds the longest *strictly* increasing subsequence
(``x[i_0] < x[i_1] < ...``; equal values never both appear): search with ``side="left"``. ``strict=False`` finds
the longest non-decreasing one (``<=``): ``side="right"``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["LISResult", "longest_increasing_subsequence"]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["length", "indices"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LISResult:
  """Output of :func:`longest_increasing_subsequence`.

  length: [] int32 length L of a longest (strictly, unless ``strict=False``) increasing subsequence.
  indices: [n] int32; ``indices[:L]`` are increasing positions ``i_0 < ... < i_{L-1}`` with ``x[indices[:L]]``
    increasing; ``indices[L:]`` are -1 (padding, so the shape is static).
  """
  length: jax.Array
  indices: jax.Array


def _sentinel(dtype: Any) -> Any:
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.inf
  return jnp.iinfo(dtype).max


@functools.partial(jax.jit, static_argnames=("strict",))
def _lis(x: jax.Array, strict: bool) -> LISResult:
  n = x.shape[0]
  side = "left" if strict else "right"
  tails0 = jnp.full((n,), _sentinel(x.dtype), x.dtype)  # tails[k]: smallest end value of a length-(k+1) run
  tails_idx0 = jnp.full((n,), -1, jnp.int32)  # index into x of tails[k]
  prev0 = jnp.full((n,), -1, jnp.int32)  # predecessor link of x[i] in its best run

  def body(i, carry):
    tails, tails_idx, prev, length = carry
    xi = x[i]
    # Padding holds the dtype's largest value, so the search never lands past `length` (clamp for side="right"
    # when xi equals that value).
    pos = jnp.minimum(jnp.searchsorted(tails, xi, side=side, method="scan").astype(jnp.int32), length)
    prev = prev.at[i].set(jnp.where(pos > 0, tails_idx[jnp.maximum(pos - 1, 0)], -1))
    tails = tails.at[pos].set(xi)
    tails_idx = tails_idx.at[pos].set(i)
    return tails, tails_idx, prev, jnp.maximum(length, pos + 1)

  _, tails_idx, prev, length = lax.fori_loop(0, n, body, (tails0, tails_idx0, prev0, jnp.int32(0)))

  # Walk the predecessor links back from the top of the last pile, writing positions L-1, L-2, ..., 0.
  def back(carry, k):
    cur, out = carry
    active = k < length
    out = out.at[jnp.where(active, length - 1 - k, n)].set(cur, mode="drop")
    nxt = jnp.where(active, prev[jnp.maximum(cur, 0)], cur)
    return (nxt, out), None

  (_, indices), _ = lax.scan(back, (tails_idx[length - 1], jnp.full((n,), -1, jnp.int32)), jnp.arange(n))
  return LISResult(length=length, indices=indices)


def longest_increasing_subsequence(x: Any, *, strict: bool = True) -> LISResult:
  """One longest increasing subsequence of ``x`` in O(n log n) (jitted per n; vmap over a batch of sequences).

  Args:
    x: [n] real (integer or floating) values; NaN is not allowed (it has no order).
    strict: True: strictly increasing (``<``); False: non-decreasing (``<=``).

  Returns:
    :class:`LISResult` (length [] int32, indices [n] int32 padded with -1). For ``n = 0`` the length is 0 and
    indices is empty.
  """
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"x must have shape [n], got shape {tuple(x.shape)}; pass one sequence (jax.vmap over a "
                     "leading batch axis for several).")
  if jnp.issubdtype(x.dtype, jnp.complexfloating) or x.dtype == jnp.bool_ or not (
      jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating)):
    raise ValueError(f"x must hold real numbers (integer or floating dtype), got dtype {x.dtype}; cast it, e.g. "
                     "x.astype(jnp.int32).")
  if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(x.dtype, jnp.floating):
    if np.any(np.isnan(np.asarray(x))):
      raise ValueError(f"x must not contain NaN (found {int(np.sum(np.isnan(np.asarray(x))))} of {x.shape[0]}); "
                       "NaN has no order: drop or replace those entries.")
  if x.shape[0] == 0:
    return LISResult(length=jnp.int32(0), indices=jnp.zeros((0,), jnp.int32))
  return _lis(jnp.asarray(x), strict=bool(strict))
