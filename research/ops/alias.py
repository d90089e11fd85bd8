"""Walker's alias method (Vose's O(n) construction): O(1) draws from a fixed discrete distribution.

Cited by LINE (Tang et al. 2015, §4.2 "Optimization via Edge Sampling"): edges are drawn with probability
proportional to their weight from an alias table, so the sampled gradients need no rescaling by the weight.

A table ``(prob [n], alias [n])`` encodes ``p`` as ``n`` equally likely columns: column ``i`` keeps outcome ``i``
with probability ``prob[i]`` and otherwise gives ``alias[i]``, so

  ``p_j = (prob[j] + sum_{i: alias[i] = j} (1 - prob[i])) / n``        (``alias_probs`` computes it back).

``alias_table`` builds the table on the host (numpy, float64 arithmetic); ``alias_sample`` draws on device (jax,
jittable, two random numbers and two gathers per draw); ``alias_sample_np`` is the same draw for host-side data
iterators (``research.train.line.EdgeSampler``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_probs(probs) -> np.ndarray:
  p = np.asarray(probs, np.float64)
  if p.ndim != 1 or p.shape[0] == 0:
    raise ValueError(f"alias_table: probs must be a non-empty 1-D array of weights, got shape {p.shape}; "
                     f"flatten it (np.ravel) or pass at least one weight")
  if not np.all(np.isfinite(p)) or np.any(p < 0):
    bad = int(np.flatnonzero(~np.isfinite(p) | (p < 0))[0])
    raise ValueError(f"alias_table: probs of shape {p.shape} must be finite and >= 0, got probs[{bad}] = {p[bad]}; "
                     f"clip or drop those entries")
  if p.sum() <= 0:
    raise ValueError(f"alias_table: probs of shape {p.shape} sum to 0; give at least one positive weight")
  return p / p.sum()


def alias_table(probs) -> tuple[np.ndarray, np.ndarray]:
  """Vose's alias table of the (unnormalised, non-negative) weights ``probs: [n]``.

  Returns ``(prob [n] float32 in [0, 1], alias [n] int32 in [0, n))``; ``alias[i] = i`` where ``prob[i] = 1``.
  Columns are filled by pairing an under-full column (``n p_i < 1``) with an over-full one, which donates the
  remainder; round-off leftovers are set to ``prob = 1`` (Vose 1991).
  """
  p = _check_probs(probs)
  n = p.shape[0]
  scaled = p * n
  prob = np.ones(n, np.float64)
  alias = np.arange(n, dtype=np.int64)
  small = [i for i in range(n) if scaled[i] < 1.0]
  large = [i for i in range(n) if scaled[i] >= 1.0]
  while small and large:
    s, g = small.pop(), large.pop()
    prob[s], alias[s] = scaled[s], g
    scaled[g] = (scaled[g] + scaled[s]) - 1.0
    (small if scaled[g] < 1.0 else large).append(g)
  # Whatever is left is full up to round-off: prob stays 1, alias stays itself.
  return prob.astype(np.float32), alias.astype(np.int32)


def alias_probs(prob, alias) -> np.ndarray:
  """The distribution ``p [n]`` (float64) a table encodes: ``(prob[j] + sum_{alias[i]=j} (1 - prob[i])) / n``."""
  prob, alias = np.asarray(prob, np.float64), np.asarray(alias)
  n = prob.shape[0]
  return (prob + np.bincount(alias, weights=1.0 - prob, minlength=n)) / n


def _check_table(prob, alias, fn: str) -> None:
  if np.ndim(prob) != 1 or np.shape(prob) != np.shape(alias) or np.shape(prob)[0] == 0:
    raise ValueError(f"{fn}: prob and alias must be 1-D of the same non-zero length, got prob {np.shape(prob)} and "
                     f"alias {np.shape(alias)}; build them with alias_table(probs)")


def alias_sample(key: jax.Array, prob: jax.Array, alias: jax.Array, shape: Sequence[int]) -> jax.Array:
  """``shape`` int32 draws from the table ``(prob [n], alias [n])``: a uniform column, then a biased coin.

  Jittable (``shape`` static); O(1) per draw.
  """
  _check_table(prob, alias, "alias_sample")
  prob, alias = jnp.asarray(prob), jnp.asarray(alias, jnp.int32)
  k_col, k_coin = jax.random.split(key)
  col = jax.random.randint(k_col, tuple(shape), 0, prob.shape[0], dtype=jnp.int32)
  coin = jax.random.uniform(k_coin, tuple(shape), dtype=jnp.float32)
  return jnp.where(coin < prob[col], col, alias[col])


def alias_sample_np(rng: np.random.Generator, prob: np.ndarray, alias: np.ndarray,
                    shape: Sequence[int] | int) -> np.ndarray:
  """Host version of ``alias_sample`` with a numpy ``Generator``: ``shape`` int32 draws."""
  _check_table(prob, alias, "alias_sample_np")
  col = rng.integers(0, len(prob), shape)
  coin = rng.random(shape, dtype=np.float32)
  return np.where(coin < prob[col], col, alias[col]).astype(np.int32)
