"""Metric-learning losses: pairwise distances, triplet loss (batch-hard / semi-hard / batch-all), contrastive loss.

SIMCO (seed 001 Q2) trains a 64-d embedding head with a triplet loss and clusters it with affinity propagation
(``research.classical.affinity_propagation``). Pure JAX, static shapes: padded examples are removed with a
``valid`` [B] mask (they never form a pair or a triplet), so the losses work inside ``jit`` on padded batches.

* ``triplet_loss``: hinge ``max(d(a, p) - d(a, n) + margin, 0)`` over
  - ``batch_hard`` (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss", Sec. 2): per anchor, its
    farthest positive and nearest negative; mean over anchors that have at least one positive and one negative;
  - ``semi_hard`` (Schroff et al. 2015, FaceNet, Sec. 3.2): per (anchor, positive) pair, the nearest negative with
    ``d(a, p) < d(a, n) < d(a, p) + margin``; **fallback** when no negative lies in that band: the hardest (nearest)
    negative of the anchor -- which gives zero loss when all negatives are beyond the band and the hard-negative
    loss when some are closer than the positive. (TensorFlow Addons falls back to the *farthest* negative
    instead.) Mean over (anchor, positive) pairs whose anchor has a negative;
  - ``batch_all`` (Hermans et al. 2017, Sec. 2, "BA≠0"): all valid triplets, mean over the triplets with
    non-zero loss (0 when there are none).
  Metrics: ``fraction_active`` (share of the anchors / pairs / triplets above with non-zero loss) and
  ``num_candidates`` (their count).
* ``contrastive_loss`` (Hadsell, Chopra & LeCun 2006, Eq. 4): ``0.5 d^2`` for similar pairs and
  ``0.5 max(margin - d, 0)^2`` for dissimilar ones, mean over valid pairs; ``fraction_active``: share of valid
  pairs with non-zero loss.

Distances are Euclidean unless ``squared=True`` (where offered). The square root has gradient 0 at distance 0
(instead of inf/NaN), so identical embeddings (e.g. a collapsed initialisation) give finite gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["pairwise_distances", "triplet_loss", "contrastive_loss"]

_MININGS = ("batch_hard", "semi_hard", "batch_all")


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt(max(x, 0)) with gradient 0 where x <= 0."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.result_type(x, jnp.float32))


def _ratio(num, den):
  return jnp.where(den > 0, num / jnp.maximum(den, 1), 0.0)


@functools.partial(jax.jit, static_argnames=("squared",))
def _pairwise(a: jax.Array, b: jax.Array, squared: bool) -> jax.Array:
  a, b = _float(a), _float(b)
  dtype = jnp.result_type(a, b)
  a, b = a.astype(dtype), b.astype(dtype)
  d2 = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
        - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  d2 = jnp.maximum(d2, 0.0)
  return d2 if squared else _safe_sqrt(d2)


def pairwise_distances(a, b, squared: bool = False) -> jax.Array:
  """Euclidean distances between rows (Hermans et al. 2017, Sec. 2): a: [n, d], b: [m, d] -> [n, m].

  Computed as ``|a|^2 + |b|^2 - 2 a.b`` clamped at 0 (one matmul; identical rows may come out at ``~sqrt(eps)|a|``
  instead of 0, their gradient is still finite); with ``squared=False`` the square root has gradient 0 at 0.
  """
  sa, sb = tuple(jnp.shape(a)), tuple(jnp.shape(b))
  if len(sa) != 2 or len(sb) != 2 or sa[1] != sb[1]:
    raise ValueError(f"`a` and `b` must be [n, d] and [m, d] with the same d; got shapes {sa} and {sb}. "
                     f"Flatten features to 2-D first.")
  return _pairwise(a, b, squared=bool(squared))


def _check_rows(name: str, x, b: int, what: str, ref: str, ref_shape) -> None:
  if x is not None and tuple(jnp.shape(x)) != (b,):
    raise ValueError(f"`{name}` must have shape ({b},) for {ref} of shape {tuple(ref_shape)}; got shape "
                     f"{tuple(jnp.shape(x))}. Pass {what}.")


@functools.partial(jax.jit, static_argnames=("mining", "squared"))
def _triplet(embeddings, labels, valid, margin, mining: str, squared: bool):
  b = embeddings.shape[0]
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  labels = jnp.asarray(labels)
  dist = _pairwise(embeddings, embeddings, squared=squared)  # [B, B]
  dtype = dist.dtype
  margin = jnp.asarray(margin, dtype)
  pair_ok = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  pos = pair_ok & same & ~jnp.eye(b, dtype=bool)  # [B, B]
  neg = pair_ok & ~same
  has_neg = jnp.any(neg, axis=1)  # [B]
  far = jax.lax.stop_gradient(jnp.max(jnp.where(pair_ok, dist, 0.0))) + margin + 1.0  # finite "infinity"
  hardest_neg = jnp.min(jnp.where(neg, dist, far), axis=1)  # [B]
  if mining == "batch_hard":
    anchor = jnp.any(pos, axis=1) & has_neg
    hardest_pos = jnp.max(jnp.where(pos, dist, 0.0), axis=1)
    per = jnp.maximum(hardest_pos - hardest_neg + margin, 0.0)
    per = jnp.where(anchor, per, 0.0)
    n = jnp.sum(anchor)
    active = jnp.sum(anchor & (per > 0))
    loss = _ratio(jnp.sum(per), n)
  elif mining == "semi_hard":
    cand = pos & has_neg[:, None]  # [B (a), B (p)]
    d_ap = dist[:, :, None]  # [a, p, 1]
    d_an = dist[:, None, :]  # [a, 1, n]
    band = neg[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)  # [a, p, n]
    semi = jnp.min(jnp.where(band, d_an, far), axis=2)  # [a, p]
    chosen = jnp.where(jnp.any(band, axis=2), semi, hardest_neg[:, None])
    per = jnp.where(cand, jnp.maximum(dist - chosen + margin, 0.0), 0.0)
    n = jnp.sum(cand)
    active = jnp.sum(cand & (per > 0))
    loss = _ratio(jnp.sum(per), n)
  else:  # batch_all
    trip = pos[:, :, None] & neg[:, None, :]  # [a, p, n]
    per = jnp.where(trip, jnp.maximum(dist[:, :, None] - dist[:, None, :] + margin, 0.0), 0.0)
    n = jnp.sum(trip)
    active = jnp.sum(trip & (per > 0))
    loss = _ratio(jnp.sum(per), active)
  metrics = {"fraction_active": _ratio(active.astype(dtype), n.astype(dtype)), "num_candidates": n}
  return loss.astype(dtype), metrics


def triplet_loss(embeddings, labels, *, margin: float, mining: str = "batch_hard", valid=None,
                 squared: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Triplet loss with in-batch mining (Hermans et al. 2017 Sec. 2; FaceNet Sec. 3.2).

  Args:
    embeddings: [B, d].
    labels: [B] int class / identity labels.
    margin: hinge margin (> 0 for semi-hard mining to have a band).
    mining: ``"batch_hard"``, ``"semi_hard"`` or ``"batch_all"`` (see the module docstring, fallback included).
    valid: [B] bool, False for padded examples (None: all valid). Padded rows must still be finite (e.g. zeros):
      NaN there would reach the gradient through the distance matmul.
    squared: use squared Euclidean distances.

  Returns:
    ``(loss [], {"fraction_active": [], "num_candidates": []})``; loss is 0 when no anchor has both a positive and
    a negative.
  """
  if mining not in _MININGS:
    raise ValueError(f"`mining` must be one of {_MININGS}; got {mining!r}.")
  shape = tuple(jnp.shape(embeddings))
  if len(shape) != 2:
    raise ValueError(f"`embeddings` must be [B, d]; got shape {shape}. Flatten to (B, -1).")
  _check_rows("labels", labels, shape[0], "one integer label per example", "embeddings", shape)
  _check_rows("valid", valid, shape[0], "one boolean per example (False for padding)", "embeddings", shape)
  return _triplet(embeddings, labels, valid, margin, mining=mining, squared=bool(squared))


def contrastive_loss(emb_a, emb_b, same, margin: float, *,
                     valid=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Contrastive loss (Hadsell, Chopra & LeCun 2006, Eq. 4): emb_a, emb_b: [B, d], same: [B] bool -> loss [].

  ``0.5 d^2`` for ``same`` pairs, ``0.5 max(margin - d, 0)^2`` otherwise (d Euclidean), mean over valid pairs
  (``valid`` [B] bool, None: all; loss 0 if none).
  Returns ``(loss, {"fraction_active", "num_candidates"})``.
  """
  sa, sb = tuple(jnp.shape(emb_a)), tuple(jnp.shape(emb_b))
  if len(sa) != 2 or sa != sb:
    raise ValueError(f"`emb_a` and `emb_b` must both be [B, d] with equal shapes; got {sa} and {sb}. "
                     f"Pair the examples row by row.")
  _check_rows("same", same, sa[0], "True for similar pairs, False for dissimilar ones", "pairs", sa)
  _check_rows("valid", valid, sa[0], "one boolean per pair (False for padding)", "pairs", sa)
  return _contrastive(emb_a, emb_b, same, valid, margin)


@jax.jit
def _contrastive(emb_a, emb_b, same, valid, margin):
  emb_a, emb_b = _float(emb_a), _float(emb_b)
  dtype = jnp.result_type(emb_a, emb_b)
  valid = jnp.ones(emb_a.shape[:1], bool) if valid is None else jnp.asarray(valid).astype(bool)
  same = jnp.asarray(same).astype(bool)
  diff = emb_a.astype(dtype) - emb_b.astype(dtype)
  d2 = jnp.sum(diff * diff, axis=1)  # [B]
  d = _safe_sqrt(d2)
  hinge = jnp.maximum(jnp.asarray(margin, dtype) - d, 0.0)
  per = jnp.where(same, 0.5 * d2, 0.5 * hinge * hinge)
  per = jnp.where(valid, per, 0.0)
  n = jnp.sum(valid)
  active = jnp.sum(valid & (per > 0))
  loss = _ratio(jnp.sum(per), n)
  return loss.astype(dtype), {"fraction_active": _ratio(active.astype(dtype), n.astype(dtype)),
                              "num_candidates": n}
