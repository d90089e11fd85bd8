"""Classification losses (seed 003 §6.2-6.3). Pure functions ``fn(logits [B, C] f32, labels [B] int, ...) -> [B]``.

``get_loss(name, **kw)`` returns ``fn(logits, labels)`` with ``kw`` bound (center loss needs ``features`` and
``centers`` at call time; see ``softmax_center_loss``).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def _onehot(labels, num_classes, dtype=jnp.float32):
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def cross_entropy(logits, labels, *, label_smoothing: float = 0.0, temperature: float = 1.0):
  """Softmax cross-entropy ``-Σ_k q_k log softmax(logits / T)_k`` per example ``[B]``; ``q`` is the one-hot
  label, smoothed to ``(1 - ε) onehot(y) + ε / C`` with ``label_smoothing = ε`` (Szegedy et al. 2016, §7).
  The one cross-entropy of the codebase (classification, Task2Vec heads and probes, the recipes)."""
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = logits / temperature
  num_classes = logits.shape[-1]
  q = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits, q)


def label_smoothing_cross_entropy(logits, labels, smoothing: float = 0.1):
  """Cross-entropy against q = (1 - eps) * onehot(y) + eps / C (Szegedy et al. 2016, §7)."""
  return cross_entropy(logits, labels, label_smoothing=smoothing)


def temperature_softmax(logits, temperature: float = 1.0):
  """softmax(logits / T); T = 1 / beta (seed 003 §6.3.2); T -> 0 approaches argmax, T -> inf uniform."""
  return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def temperature_cross_entropy(logits, labels, temperature: float = 1.0):
  """Cross-entropy of ``temperature_softmax(logits, T)``."""
  return cross_entropy(logits, labels, temperature=temperature)


def multiclass_hinge(logits, labels, margin: float = 1.0, kind: str = "weston_watkins"):
  """Multi-class hinge. ``weston_watkins``: sum_{j != y} max(0, margin + s_j - s_y);
  ``crammer_singer``: max(0, margin + max_{j != y} s_j - s_y)."""
  s = logits.astype(jnp.float32)
  sy = jnp.take_along_axis(s, labels[:, None].astype(jnp.int32), axis=-1)
  not_y = 1.0 - _onehot(labels, s.shape[-1])
  viol = jnp.maximum(0.0, margin + s - sy) * not_y
  if kind == "weston_watkins":
    return jnp.sum(viol, axis=-1)
  if kind == "crammer_singer":
    return jnp.max(viol, axis=-1)
  raise ValueError(f"hinge kind must be 'weston_watkins' or 'crammer_singer', got {kind!r}")


def _pm1_targets(labels, c):
  return 2.0 * _onehot(labels, c) - 1.0


def logistic(logits, labels):
  """One-vs-rest log loss sum_k ln(1 + exp(-t_k s_k)), t_k = +1 for the true class and -1 otherwise."""
  s = logits.astype(jnp.float32)
  return jnp.sum(jax.nn.softplus(-_pm1_targets(labels, s.shape[-1]) * s), axis=-1)


def square(logits, labels):
  """One-vs-rest square loss sum_k (1 - t_k s_k)^2, t_k in {+1, -1}."""
  s = logits.astype(jnp.float32)
  return jnp.sum(jnp.square(1.0 - _pm1_targets(labels, s.shape[-1]) * s), axis=-1)


def center_loss(features, labels, centers):
  """Center loss (Wen et al., ECCV 2016, Eq. 2) per example: 1/2 ||x_i - c_{y_i}||^2. ``features`` [B, D]."""
  diff = features.astype(jnp.float32) - centers[labels]
  return 0.5 * jnp.sum(jnp.square(diff), axis=-1)


def init_centers(num_classes: int, feature_dim: int) -> jnp.ndarray:
  """Class centres c_j, initialised to zero (Wen et al. Alg. 1 leaves the initialisation open; zero is
  the reference implementation's choice)."""
  return jnp.zeros((num_classes, feature_dim), jnp.float32)


def center_statistics(features, labels, num_classes: int):
  """Per-class counts ``[C]`` and feature sums ``[C, D]`` of a (shard of a) minibatch; psum them across devices."""
  onehot = _onehot(labels, num_classes)
  return jnp.sum(onehot, axis=0), onehot.T @ features.astype(jnp.float32)


def update_centers_from_statistics(centers, counts, sums, alpha: float):
  """Wen et al. Eq. 4: Δc_j = Σ_i δ(y_i=j)(c_j − x_i) / (1 + Σ_i δ(y_i=j)); c_j ← c_j − α Δc_j, from the
  (global) per-class ``counts`` and feature ``sums``."""
  delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
  return centers - alpha * delta


def update_centers(centers, features, labels, alpha: float = 0.5):
  """Class-centre update (Wen et al., Eq. 4 and Alg. 1) on one minibatch. Centres get no gradients."""
  counts, sums = center_statistics(features, labels, centers.shape[0])
  return update_centers_from_statistics(centers, counts, sums, alpha)


def softmax_center_loss(logits, labels, features, centers, lam: float = 0.003):
  """L = L_softmax + lambda * L_center (Wen et al., Eq. 5), per example; centres get no gradient."""
  return cross_entropy(logits, labels) + lam * center_loss(features, labels, jax.lax.stop_gradient(centers))


_LOSSES: dict[str, Callable] = {
    "cross_entropy": cross_entropy,
    "label_smoothing": label_smoothing_cross_entropy,
    "temperature_cross_entropy": temperature_cross_entropy,
    "hinge": multiclass_hinge,
    "logistic": logistic,
    "square": square,
    "softmax_center": softmax_center_loss,
}


def loss_names() -> list[str]:
  return sorted(_LOSSES)


def get_loss(name: str, **kw) -> Callable:
  """Loss ``name`` with keyword arguments bound, e.g. ``get_loss('label_smoothing', smoothing=0.1)``."""
  if name not in _LOSSES:
    raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(loss_names())}")
  return functools.partial(_LOSSES[name], **kw) if kw else _LOSSES[name]
