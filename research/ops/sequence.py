"""Structured output layers for sequences and large label sets, in pure JAX (``jit``/``vmap``/``grad``).

Linear-chain CRF (Lafferty, McCallum & Pereira, "Conditional Random Fields", ICML 2001; used as the output layer of
TENER, Yan et al., "TENER: Adapting Transformer Encoder for Named Entity Recognition", 2019). For a sequence of
``L`` valid steps with emissions ``e [T, K]`` the score of tags ``y`` is::

  s(y) = start[y_0] + sum_{t < L} e[t, y_t] + sum_{1 <= t < L} transitions[y_{t-1}, y_t] + end[y_{L-1}]

(``transitions[i, j]`` scores moving *from* tag ``i`` *to* tag ``j``) and ``log p(y | x) = s(y) - log Z`` with
``log Z = logsumexp_y s(y)`` computed by the forward algorithm in log space (``lax.scan``). Variable lengths are given
by a boolean ``mask [B, T]`` that must be left-aligned (a prefix of ``True``) with at least one valid step per
sequence: padded steps leave the forward variables unchanged, so the end transition is applied after each sequence's
last valid step, and they get zero gradient. Viterbi decoding is the max-product version plus a backtracking scan.

Hierarchical softmax (Morin & Bengio, "Hierarchical Probabilistic Neural Network Language Model", AISTATS 2005) over a
Huffman tree of the label counts, as in fastText (Joulin et al., "Bag of Tricks for Efficient Text Classification",
EACL 2017, §2.1). Label ``k`` is the leaf reached from the root by the internal nodes ``paths[k, :depth[k]]`` taking
the branches ``codes[k, :depth[k]]``; with one weight vector ``w_n`` per internal node::

  log p(k | h) = sum_{d < depth[k]} log sigmoid(+-w_{paths[k, d]} . h),   + for code 1, - for code 0

which sums to one over the ``K`` leaves because each internal node splits its mass ``sigmoid(z) + sigmoid(-z) = 1``.
"""

from __future__ import annotations

import heapq

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------------
# Linear-chain CRF
# ---------------------------------------------------------------------------------------------------------------------


def _check_crf(emissions, mask, transitions, start, end, tags=None):
  emissions, mask, transitions, start, end = (x if hasattr(x, "shape") else np.asarray(x)
                                              for x in (emissions, mask, transitions, start, end))
  tags = tags if tags is None or hasattr(tags, "shape") else np.asarray(tags)
  if emissions.ndim != 3:
    raise ValueError(f"emissions must be [B, T, K], got shape {emissions.shape}")
  b, t, k = emissions.shape
  if t < 1 or k < 1:
    raise ValueError(f"emissions must have T >= 1 and K >= 1, got shape {emissions.shape}")
  if mask.shape != (b, t):
    raise ValueError(f"mask must be [B, T] = {(b, t)} to match emissions {emissions.shape}, got {mask.shape}")
  if transitions.shape != (k, k):
    raise ValueError(f"transitions must be [K, K] = {(k, k)} to match emissions {emissions.shape}, "
                     f"got {transitions.shape}")
  if start.shape != (k,):
    raise ValueError(f"start must be [K] = {(k,)} to match emissions {emissions.shape}, got {start.shape}")
  if end.shape != (k,):
    raise ValueError(f"end must be [K] = {(k,)} to match emissions {emissions.shape}, got {end.shape}")
  if tags is not None and tags.shape != (b, t):
    raise ValueError(f"tags must be [B, T] = {(b, t)} to match emissions {emissions.shape}, got {tags.shape}")
  if not isinstance(mask, jax.core.Tracer):  # eager inputs: check the documented mask layout
    m = np.asarray(mask).astype(bool)
    if not m[:, 0].all():
      raise ValueError(f"mask [B, T] = {m.shape} must have mask[:, 0] True (every sequence needs >= 1 valid step)")
    if (m[:, 1:] & ~m[:, :-1]).any():
      raise ValueError(f"mask [B, T] = {m.shape} must be left-aligned (a prefix of True per row)")


def _as_crf_inputs(emissions, mask, transitions, start, end):
  emissions = jnp.asarray(emissions)
  dtype = jnp.result_type(emissions.dtype, jnp.float32)
  mask = mask if isinstance(mask, jax.core.Tracer) else jnp.asarray(mask)
  return (emissions.astype(dtype), mask, jnp.asarray(transitions, dtype), jnp.asarray(start, dtype),
          jnp.asarray(end, dtype))


def crf_log_partition(emissions: Array, mask: Array, transitions: Array, start: Array, end: Array) -> Array:
  """``log Z [B]`` by the forward algorithm.

  Args:
    emissions: ``[B, T, K]`` per-step tag scores.
    mask: ``[B, T]`` bool, left-aligned, ``mask[:, 0]`` True.
    transitions: ``[K, K]``, ``transitions[i, j]`` scores tag ``i`` followed by tag ``j``.
    start, end: ``[K]`` scores of the first and of the last valid tag.
  Returns:
    ``[B]`` log partition function.
  """
  _check_crf(emissions, mask, transitions, start, end)
  return _crf_log_partition(*_as_crf_inputs(emissions, mask, transitions, start, end))


@jax.jit
def _crf_log_partition(emissions, mask, transitions, start, end):
  mask = mask.astype(bool)
  alpha0 = start[None, :] + emissions[:, 0]  # [B, K]

  def step(alpha, x):
    e_t, m_t = x  # [B, K], [B]
    new = jax.nn.logsumexp(alpha[:, :, None] + transitions[None], axis=1) + e_t
    return jnp.where(m_t[:, None], new, alpha), None

  xs = (jnp.swapaxes(emissions[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1))
  alpha, _ = lax.scan(step, alpha0, xs)
  return jax.nn.logsumexp(alpha + end[None, :], axis=-1)


def crf_sequence_score(emissions: Array, tags: Array, mask: Array, transitions: Array, start: Array,
                       end: Array) -> Array:
  """Unnormalised score ``s(tags) [B]`` of ``tags [B, T]`` (values at padded steps are ignored)."""
  _check_crf(emissions, mask, transitions, start, end, tags)
  return _crf_sequence_score(*_as_crf_inputs(emissions, mask, transitions, start, end), jnp.asarray(tags))


@jax.jit
def _crf_sequence_score(emissions, mask, transitions, start, end, tags):
  k = emissions.shape[-1]
  mask = mask.astype(bool)
  tags = jnp.clip(tags.astype(jnp.int32), 0, k - 1)
  fmask = mask.astype(emissions.dtype)
  emit = jnp.sum(jnp.take_along_axis(emissions, tags[..., None], axis=-1)[..., 0] * fmask, axis=-1)
  trans = jnp.sum(transitions[tags[:, :-1], tags[:, 1:]] * fmask[:, 1:], axis=-1)
  last = jnp.maximum(jnp.sum(mask, axis=-1) - 1, 0)
  last_tag = jnp.take_along_axis(tags, last[:, None], axis=-1)[:, 0]
  return start[tags[:, 0]] + emit + trans + end[last_tag]


def crf_log_likelihood(emissions: Array, tags: Array, mask: Array, transitions: Array, start: Array,
                       end: Array) -> Array:
  """``log p(tags | emissions) [B]`` = ``crf_sequence_score - crf_log_partition``.

  Shapes: emissions ``[B, T, K]``, tags ``[B, T]`` int, mask ``[B, T]`` bool, transitions ``[K, K]``, start/end
  ``[K]``. Its gradient w.r.t. emissions is ``one_hot(tags) - marginals`` at valid steps and 0 at padded steps.
  """
  return (crf_sequence_score(emissions, tags, mask, transitions, start, end)
          - crf_log_partition(emissions, mask, transitions, start, end))


def crf_viterbi_decode(emissions: Array, mask: Array, transitions: Array, start: Array,
                       end: Array) -> tuple[Array, Array]:
  """Most likely tag sequence by max-product (Viterbi) and backtracking.

  Args: as ``crf_log_partition``.
  Returns:
    ``(tags [B, T] int32`` with padded steps set to 0, ``best score [B])``, the score being ``s(tags)``.
  """
  _check_crf(emissions, mask, transitions, start, end)
  return _crf_viterbi_decode(*_as_crf_inputs(emissions, mask, transitions, start, end))


@jax.jit
def _crf_viterbi_decode(emissions, mask, transitions, start, end):
  mask = mask.astype(bool)
  k = emissions.shape[-1]
  delta0 = start[None, :] + emissions[:, 0]
  identity = jnp.arange(k, dtype=jnp.int32)

  def forward(delta, x):
    e_t, m_t = x
    scores = delta[:, :, None] + transitions[None]  # [B, K_prev, K]
    bp = jnp.argmax(scores, axis=1).astype(jnp.int32)  # [B, K]
    new = jnp.max(scores, axis=1) + e_t
    # padded steps: keep delta, identity back-pointers (the last valid tag is carried through).
    return jnp.where(m_t[:, None], new, delta), jnp.where(m_t[:, None], bp, identity[None])

  xs = (jnp.swapaxes(emissions[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1))
  delta, bps = lax.scan(forward, delta0, xs)  # bps [T-1, B, K] for steps 1..T-1
  final = delta + end[None, :]
  best_score = jnp.max(final, axis=-1)
  best_last = jnp.argmax(final, axis=-1).astype(jnp.int32)

  def backward(tag, bp):
    return jnp.take_along_axis(bp, tag[:, None], axis=-1)[:, 0], tag

  first, rest = lax.scan(backward, best_last, bps, reverse=True)  # rest [T-1, B]: tags at steps 1..T-1
  tags = jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)
  return jnp.where(mask, tags, 0).astype(jnp.int32), best_score


# ---------------------------------------------------------------------------------------------------------------------
# Hierarchical softmax over a Huffman tree
# ---------------------------------------------------------------------------------------------------------------------


def huffman_tree(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Deterministic Huffman tree over ``K >= 2`` labels (numpy, not traced).

  The two lightest nodes are merged repeatedly; ties are broken by node id (leaves ``0..K-1`` first, then internal
  nodes in creation order). The first popped node becomes the 0-branch and the second the 1-branch. Internal nodes
  are numbered ``0..K-2`` in creation order (the root is ``K-2``) and index the rows of ``node_weights``.

  Args:
    counts: ``[K]`` non-negative label frequencies.
  Returns:
    ``paths [K, D]`` int32 internal-node ids from the root, padded with -1; ``codes [K, D]`` int32 in {0, 1}, padded
    with 0; ``depth [K]`` int32 code lengths. ``D = max(depth)``.
  """
  counts = np.asarray(counts, dtype=np.float64)
  if counts.ndim != 1 or counts.shape[0] < 2:
    raise ValueError(f"counts must be [K] with K >= 2, got shape {counts.shape}")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError(f"counts [K] = {counts.shape} must be finite and non-negative")
  k = counts.shape[0]
  heap = [(counts[i], i) for i in range(k)]
  heapq.heapify(heap)
  parent = np.full(2 * k - 1, -1, dtype=np.int64)
  bit = np.zeros(2 * k - 1, dtype=np.int64)
  next_id = k
  while len(heap) > 1:
    c0, a = heapq.heappop(heap)
    c1, b = heapq.heappop(heap)
    parent[a], bit[a] = next_id, 0
    parent[b], bit[b] = next_id, 1
    heapq.heappush(heap, (c0 + c1, next_id))
    next_id += 1
  paths_l, codes_l = [], []
  for leaf in range(k):
    p, c, node = [], [], leaf
    while parent[node] >= 0:
      p.append(parent[node] - k)
      c.append(bit[node])
      node = parent[node]
    paths_l.append(p[::-1])
    codes_l.append(c[::-1])
  depth = np.array([len(p) for p in paths_l], dtype=np.int32)
  d = int(depth.max())
  paths = np.full((k, d), -1, dtype=np.int32)
  codes = np.zeros((k, d), dtype=np.int32)
  for i in range(k):
    paths[i, :depth[i]] = paths_l[i]
    codes[i, :depth[i]] = codes_l[i]
  return paths, codes, depth


def _check_hs(hidden, node_weights, paths, codes, depth):
  if hidden.ndim != 2:
    raise ValueError(f"hidden must be [B, H], got shape {hidden.shape}")
  if paths.ndim != 2:
    raise ValueError(f"paths must be [K, D], got shape {paths.shape}")
  k, d = paths.shape
  if node_weights.shape != (k - 1, hidden.shape[1]):
    raise ValueError(f"node_weights must be [K-1, H] = {(k - 1, hidden.shape[1])} for paths {paths.shape} and "
                     f"hidden {hidden.shape}, got {node_weights.shape}")
  if codes.shape != (k, d):
    raise ValueError(f"codes must be [K, D] = {(k, d)} like paths, got {codes.shape}")
  if depth.shape != (k,):
    raise ValueError(f"depth must be [K] = {(k,)} for paths {paths.shape}, got {depth.shape}")


def _path_log_probs(z: Array, codes: Array, depth: Array) -> Array:
  """Sum over the valid path positions of ``log sigmoid(+-z)``; z ``[..., D]``, codes ``[..., D]``, depth ``[...]``."""
  signed = jnp.where(codes == 1, z, -z)
  valid = jnp.arange(z.shape[-1]) < depth[..., None]
  return jnp.sum(jnp.where(valid, jax.nn.log_sigmoid(signed), 0.0), axis=-1)


def hierarchical_log_softmax(hidden: Array, node_weights: Array, paths: Array, codes: Array, depth: Array) -> Array:
  """Log-probabilities ``[B, K]`` of every label.

  Args:
    hidden: ``[B, H]``; node_weights: ``[K-1, H]``; paths, codes: ``[K, D]``; depth: ``[K]`` (from ``huffman_tree``).
  """
  hidden, node_weights = jnp.asarray(hidden), jnp.asarray(node_weights)
  paths, codes, depth = jnp.asarray(paths), jnp.asarray(codes), jnp.asarray(depth)
  _check_hs(hidden, node_weights, paths, codes, depth)
  return _hierarchical_log_softmax(hidden, node_weights, paths, codes, depth)


@jax.jit
def _hierarchical_log_softmax(hidden, node_weights, paths, codes, depth):
  z_nodes = hidden @ node_weights.T  # [B, K-1]
  z = z_nodes[:, jnp.clip(paths, 0, None)]  # [B, K, D]
  return _path_log_probs(z, codes[None], depth[None])


def hierarchical_nll(hidden: Array, labels: Array, node_weights: Array, paths: Array, codes: Array,
                     depth: Array) -> Array:
  """Negative log-likelihood ``[B]`` of ``labels [B]``, touching only the ``D`` nodes on each label's path."""
  hidden, node_weights = jnp.asarray(hidden), jnp.asarray(node_weights)
  paths, codes, depth = jnp.asarray(paths), jnp.asarray(codes), jnp.asarray(depth)
  _check_hs(hidden, node_weights, paths, codes, depth)
  labels = jnp.asarray(labels)
  if labels.shape != hidden.shape[:1]:
    raise ValueError(f"labels must be [B] = {hidden.shape[:1]} to match hidden {hidden.shape}, got {labels.shape}")
  return _hierarchical_nll(hidden, labels, node_weights, paths, codes, depth)


@jax.jit
def _hierarchical_nll(hidden, labels, node_weights, paths, codes, depth):
  p = paths[labels]  # [B, D]
  w = node_weights[jnp.clip(p, 0, None)]  # [B, D, H]
  z = jnp.einsum("bdh,bh->bd", w, hidden)
  return -_path_log_probs(z, codes[labels], depth[labels])


def hierarchical_top_k(hidden: Array, k: int, node_weights: Array, paths: Array, codes: Array,
                       depth: Array) -> tuple[Array, Array]:
  """Top-``k`` labels: ``(log-probabilities [B, k], label ids [B, k] int32)``, as ``lax.top_k`` of the full
  ``hierarchical_log_softmax`` (exact; O(K D H) per example)."""
  n = np.shape(paths)[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, K] = [1, {n}] for paths {np.shape(paths)}, got {k}")
  return lax.top_k(hierarchical_log_softmax(hidden, node_weights, paths, codes, depth), k)


__all__ = [
    "crf_log_likelihood",
    "crf_log_partition",
    "crf_sequence_score",
    "crf_viterbi_decode",
    "hierarchical_log_softmax",
    "hierarchical_nll",
    "hierarchical_top_k",
    "huffman_tree",
]
