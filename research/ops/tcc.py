"""Temporal Cycle Consistency ops (Dwibedi et al. 2019, §3): soft nearest neighbours, cycle-back losses, alignment
metrics -- pure ``jax.numpy``, masked for padded frames.

Similarity convention: ``sim(a, b) = -||a - b||^2 / D / temperature`` for ``D``-dimensional embeddings (squared
Euclidean distance as in §3.1, divided by ``D`` so that one temperature suits any embedding width; with ``D``
fixed this is only a rescaling of the temperature).

For two sequences ``U = (u_1..u_N)`` and ``V = (v_1..v_M)``:

* soft nearest neighbour of ``u_i`` in V (§3.2, Eq. 1): ``alpha_j = softmax_j sim(u_i, v_j)``,
  ``v~_i = sum_j alpha_j v_j``;
* cycle-back classification (§3.2.1): logits ``x_k = sim(v~_i, u_k)``, cross-entropy with the label ``i``;
* cycle-back regression (§3.2.2): ``beta_k = softmax_k sim(v~_i, u_k)``, ``mu = sum_k beta_k t_k``,
  ``sigma^2 = sum_k beta_k (t_k - mu)^2`` (``t_k`` the frame indices), loss
  ``|t_i - mu|^2 / sigma^2 + lambda log sigma`` (variance-aware, Eq. 4) or ``|t_i - mu|^2`` (plain MSE, Eq. 3).

Padded frames (``mask == 0``) are never neighbours and contribute no loss. ``tcc_loss`` averages over every ordered
pair of different sequences of a batch and every real frame of the first one (§3.3: all pairs in the batch).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

VARIANTS = ("classification", "regression", "regression_mse")
_NEG = -1e9  # logit of a padded frame (finite: no NaN from 0 * inf)


def _check_pair(u: jnp.ndarray, v: jnp.ndarray) -> None:
  if u.ndim != 2 or v.ndim != 2 or u.shape[-1] != v.shape[-1]:
    raise ValueError(f"u, v must be embeddings [N, D] and [M, D] of one width D; got u {u.shape}, v {v.shape}: "
                     f"pass one sequence at a time (vmap over a batch) or use tcc_loss for [B, T, D]")


def _ones_if_none(mask, n: int) -> jnp.ndarray:
  return jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask)


def similarity(a: jnp.ndarray, b: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """``-||a_i - b_j||^2 / D / temperature``: a [N, D], b [M, D] -> [N, M] (§3.1 distance, scaled)."""
  d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
  return -jnp.maximum(d2, 0.0) / a.shape[-1] / temperature


def soft_nearest_neighbor(u: jnp.ndarray, v: jnp.ndarray, *, temperature: float = 0.1,
                          v_mask: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Soft nearest neighbour in ``v`` of every ``u_i`` (§3.2, Eq. 1).

  Args: u [N, D]; v [M, D]; v_mask [M] (1 real, 0 padded frame).
  Returns: ``(v_tilde [N, D], alpha [N, M])`` with ``alpha`` rows summing to 1 over real frames of v.
  """
  _check_pair(u, v)
  v_mask = _ones_if_none(v_mask, v.shape[0])
  logits = jnp.where(v_mask[None, :] > 0, similarity(u, v, temperature), _NEG)
  alpha = jax.nn.softmax(logits, axis=-1)
  return alpha @ v, alpha


def cycle_back_logits(u: jnp.ndarray, v: jnp.ndarray, *, temperature: float = 0.1, u_mask: jnp.ndarray | None = None,
                      v_mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """``sim(v~_i, u_k)`` [N, N] for u [N, D], v [M, D]: the cycle U -> V -> U (padded ``u_k`` get -1e9)."""
  u_mask = _ones_if_none(u_mask, u.shape[0])
  v_tilde, _ = soft_nearest_neighbor(u, v, temperature=temperature, v_mask=v_mask)
  return jnp.where(u_mask[None, :] > 0, similarity(v_tilde, u, temperature), _NEG)


def cycle_back_classification(u: jnp.ndarray, v: jnp.ndarray, *, temperature: float = 0.1,
                              u_mask: jnp.ndarray | None = None, v_mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """Per-frame cycle-back classification loss [N] (§3.2.1): cross-entropy of ``softmax_k sim(v~_i, u_k)`` with
  label ``i``; 0 on padded frames of ``u``. u [N, D], v [M, D], masks [N] / [M]."""
  u_mask = _ones_if_none(u_mask, u.shape[0])
  logits = cycle_back_logits(u, v, temperature=temperature, u_mask=u_mask, v_mask=v_mask)
  nll = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
  return jnp.where(u_mask > 0, nll, 0.0)


def cycle_back_regression(u: jnp.ndarray, v: jnp.ndarray, *, temperature: float = 0.1,
                          u_mask: jnp.ndarray | None = None, v_mask: jnp.ndarray | None = None,
                          u_steps: jnp.ndarray | None = None, variance: bool = True, lam: float = 0.001,
                          min_variance: float = 1e-6) -> jnp.ndarray:
  """Per-frame cycle-back regression loss [N] (§3.2.2): ``|t_i - mu|^2 / sigma^2 + lam log sigma``
  (``variance=True``) or ``|t_i - mu|^2``; 0 on padded frames of ``u``.

  u [N, D], v [M, D], masks [N] / [M]; ``u_steps`` [N]: the frame index ``t_k`` of each ``u_k`` (default 0..N-1);
  ``sigma^2`` is clamped below at ``min_variance``.
  """
  u_mask = _ones_if_none(u_mask, u.shape[0])
  steps = jnp.arange(u.shape[0], dtype=jnp.float32) if u_steps is None else jnp.asarray(u_steps, jnp.float32)
  beta = jax.nn.softmax(cycle_back_logits(u, v, temperature=temperature, u_mask=u_mask, v_mask=v_mask), axis=-1)
  mu = beta @ steps
  err = (steps - mu) ** 2
  if variance:
    var = jnp.maximum(jnp.sum(beta * (steps[None, :] - mu[:, None]) ** 2, -1), min_variance)
    loss = err / var + lam * 0.5 * jnp.log(var)  # lam * log(sigma)
  else:
    loss = err
  return jnp.where(u_mask > 0, loss, 0.0)


def pair_loss(u, v, *, variant: str, temperature: float = 0.1, u_mask=None, v_mask=None, u_steps=None,
              lam: float = 0.001) -> jnp.ndarray:
  """Per-frame loss [N] of ``variant`` in :data:`VARIANTS` for the cycle U -> V -> U."""
  if variant == "classification":
    return cycle_back_classification(u, v, temperature=temperature, u_mask=u_mask, v_mask=v_mask)
  if variant in ("regression", "regression_mse"):
    return cycle_back_regression(u, v, temperature=temperature, u_mask=u_mask, v_mask=v_mask, u_steps=u_steps,
                                 variance=variant == "regression", lam=lam)
  raise ValueError(f"variant={variant!r}; choose one of {VARIANTS}")


@functools.partial(jax.jit, static_argnames=("variant", "reduce"))
def tcc_loss(embeddings: jnp.ndarray, mask: jnp.ndarray | None = None, *, variant: str = "regression",
             temperature: float = 0.1, steps: jnp.ndarray | None = None, lam: float = 0.001,
             reduce: bool = True):
  """TCC loss over every ordered pair ``(a, b)``, ``a != b``, of a batch of sequences (§3.3).

  Args:
    embeddings: [B, T, D] (B >= 2).
    mask: [B, T] (1 real frame, 0 padding); default all ones.
    variant: one of :data:`VARIANTS`.
    steps: [B, T] frame indices used as regression targets (default 0..T-1 per sequence).
  Returns: the mean over real frames of all pairs, or ``(sum, count)`` with ``reduce=False`` (a global masked
    mean over devices with ``research.train.task.grad_of``). Jitted (``variant``, ``reduce`` static).
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r}; choose one of {VARIANTS}")
  if embeddings.ndim != 3 or embeddings.shape[0] < 2:
    raise ValueError(f"embeddings must be [B, T, D] with B >= 2 sequences, got shape {embeddings.shape}: TCC "
                     f"aligns pairs of sequences, use a batch of at least 2 per device")
  b, t, _ = embeddings.shape
  mask = jnp.ones((b, t), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  if mask.shape != (b, t):
    raise ValueError(f"mask must be [B, T] = {(b, t)}, got {mask.shape}")
  steps = jnp.broadcast_to(jnp.arange(t, dtype=jnp.float32), (b, t)) if steps is None else jnp.asarray(steps)

  def one(u, um, us, v, vm):
    return pair_loss(u, v, variant=variant, temperature=temperature, u_mask=um, v_mask=vm, u_steps=us, lam=lam)

  over_b = jax.vmap(one, in_axes=(None, None, None, 0, 0))
  per = jax.vmap(over_b, in_axes=(0, 0, 0, None, None))(embeddings, mask, steps, embeddings, mask)  # [B, B, T]
  has_frames = (jnp.sum(mask, -1) > 0).astype(jnp.float32)
  pair_w = (1.0 - jnp.eye(b)) * has_frames[None, :]  # [a, b]: different sequences, b not empty
  weights = pair_w[:, :, None] * mask[:, None, :]
  total, count = jnp.sum(per * weights), jnp.sum(weights)
  if not reduce:
    return total, count
  return total / jnp.maximum(count, 1.0)


# ------------------------------------------------------------------------------------------------- metrics


def nearest_neighbors(u: jnp.ndarray, v: jnp.ndarray, v_mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """int32 [N]: index of the (hard) nearest real frame of ``v`` [M, D] for every ``u_i`` [N, D]."""
  v_mask = _ones_if_none(v_mask, v.shape[0])
  return jnp.argmax(jnp.where(v_mask[None, :] > 0, similarity(u, v, 1.0), -jnp.inf), axis=-1).astype(jnp.int32)


def cycle_consistency(u, v, u_mask=None, v_mask=None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(consistent, count)``: number of real frames ``i`` of u with ``NN_u(NN_v(u_i)) == i`` (§5.1), and of
  real frames. u [N, D], v [M, D]."""
  u_mask = _ones_if_none(u_mask, u.shape[0])
  j = nearest_neighbors(u, v, v_mask)
  k = nearest_neighbors(v[j], u, u_mask)
  ok = (k == jnp.arange(u.shape[0])) & (u_mask > 0)
  return jnp.sum(ok), jnp.sum(u_mask > 0)


def kendall_tau(x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """Kendall's tau-b of the real entries of x, y [n] (ties handled as ``scipy.stats.kendalltau``'s default);
  NaN when either is constant."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  mask = _ones_if_none(mask, x.shape[0])
  pair = (mask[:, None] > 0) & (mask[None, :] > 0) & jnp.triu(jnp.ones((x.shape[0],) * 2, bool), 1)
  sx, sy = jnp.sign(x[:, None] - x[None, :]), jnp.sign(y[:, None] - y[None, :])
  s = jnp.sum(jnp.where(pair, sx * sy, 0.0))
  nx, ny = jnp.sum(jnp.where(pair, sx != 0, False)), jnp.sum(jnp.where(pair, sy != 0, False))
  return s / jnp.sqrt(nx.astype(jnp.float32) * ny.astype(jnp.float32))


def alignment_kendall_tau(u, v, u_mask=None, v_mask=None) -> jnp.ndarray:
  """Kendall's tau between frame index ``i`` of u and the index of its nearest neighbour in v (§5.1: 1 = the
  alignment keeps the temporal order)."""
  return kendall_tau(jnp.arange(u.shape[0]), nearest_neighbors(u, v, v_mask), u_mask)


def all_pairs(metric, embeddings: jnp.ndarray, mask: jnp.ndarray | None = None):
  """``metric(u, v, u_mask, v_mask)`` for every ordered pair of the sequences in embeddings [V, T, D] (mask
  [V, T]); results stacked [V, V, ...] (the diagonal compares a sequence with itself)."""
  v_count, t = embeddings.shape[:2]
  mask = jnp.ones((v_count, t), jnp.float32) if mask is None else mask
  inner = jax.vmap(metric, in_axes=(None, 0, None, 0))
  return jax.vmap(inner, in_axes=(0, None, 0, None))(embeddings, embeddings, mask, mask)
