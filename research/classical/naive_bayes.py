"""Naive Bayes classifiers: Gaussian and multinomial (seed 003 §3.3).

Bayes' rule with features conditionally independent given the class:
``log P(y = c | x) = log P(c) + sum_i log P(x_i | c) - log P(x)`` (the evidence by log-sum-exp over classes).
Priors are the class frequencies. Semantics of scikit-learn's ``GaussianNB`` / ``MultinomialNB``:

* Gaussian: ``P(x_i | c) = N(theta_ci, var_ci)``, class means and (biased) variances, every variance plus
  ``epsilon = var_smoothing * max_i var(x_i)`` over the whole training set. If every feature is constant
  (max variance 0), ``epsilon = var_smoothing`` instead, so no variance is 0 (scikit-learn divides by 0 there).
* Multinomial: ``P(x_i | c) = (N_ci + alpha) / (N_c + alpha d)`` (Lidstone smoothing, ``alpha > 0``), with
  ``N_ci`` the summed count of feature i in class c; the log-likelihood of a count vector is
  ``sum_i x_i log P(x_i | c)`` (the multinomial coefficient is the same for every class and dropped).

A class with no training samples gets prior 0 (log prior -inf) and is never predicted; its predicted log
probability is -inf (not NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GaussianNB", "MultinomialNB", "gaussian_fit", "gaussian_predict", "gaussian_predict_log_proba",
           "gaussian_predict_proba", "multinomial_fit", "multinomial_predict", "multinomial_predict_log_proba",
           "multinomial_predict_proba"]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["class_count", "class_log_prior", "theta", "var", "epsilon"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class GaussianNB:
  """class_count: [c]; class_log_prior: [c]; theta: [c, d] class means; var: [c, d] class variances + epsilon;
  epsilon: [] the added variance."""
  class_count: jax.Array
  class_log_prior: jax.Array
  theta: jax.Array
  var: jax.Array
  epsilon: jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["class_count", "class_log_prior", "feature_count", "feature_log_prob"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class MultinomialNB:
  """class_count: [c]; class_log_prior: [c]; feature_count: [c, d] summed counts N_ci; feature_log_prob: [c, d]
  smoothed log P(x_i | c)."""
  class_count: jax.Array
  class_log_prior: jax.Array
  feature_count: jax.Array
  feature_log_prob: jax.Array


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_xy(x, y, num_classes):
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"`x` must be a non-empty 2-D array [n, d]; got shape {x.shape}. Reshape it to [n, d].")
  if y.shape != (x.shape[0],):
    raise ValueError(f"`y` must have shape [n] = ({x.shape[0]},) (one label per row of x); got shape {y.shape}.")
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"`y` must hold integer class labels 0..num_classes-1; got dtype {y.dtype}.")
  if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f"`num_classes` must be an int >= 1; got {num_classes!r}.")
  if _is_concrete(y) and (bool(jnp.any(y < 0)) or bool(jnp.any(y >= num_classes))):
    raise ValueError(f"`y` labels must lie in [0, num_classes) = [0, {num_classes}); got min {int(jnp.min(y))}, "
                     f"max {int(jnp.max(y))}.")
  return x.astype(jnp.result_type(x, jnp.float32)), y


def _check_x(model_d: int, x, dtype):
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[1] != model_d:
    raise ValueError(f"`x` must have shape [n, d] with d = {model_d} (the fitted feature count); "
                     f"got shape {x.shape}.")
  return x.astype(jnp.result_type(x, dtype))


def _class_stats(x, y, num_classes):
  onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)  # [n, c]
  count = jnp.sum(onehot, axis=0)
  log_prior = jnp.log(count) - jnp.log(jnp.sum(count))  # -inf for an empty class
  return onehot, count, log_prior


# ----------------------------------------------------------------------------------------------------------------
# Gaussian
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _gaussian_fit(x, y, num_classes, var_smoothing):
  onehot, count, log_prior = _class_stats(x, y, num_classes)
  safe = jnp.maximum(count, 1.0)[:, None]
  theta = (onehot.T @ x) / safe
  var = (onehot.T @ (x - theta[y]) ** 2) / safe  # centred (biased) class variances
  max_var = jnp.max(jnp.var(x, axis=0))
  epsilon = var_smoothing * jnp.where(max_var > 0, max_var, 1.0)
  return GaussianNB(class_count=count, class_log_prior=log_prior, theta=theta, var=var + epsilon,
                    epsilon=epsilon.astype(x.dtype))


def gaussian_fit(x, y, num_classes: int, var_smoothing: float = 1e-9) -> GaussianNB:
  """Fit Gaussian naive Bayes. x: [n, d] features; y: [n] int labels in [0, num_classes)."""
  x, y = _check_xy(x, y, num_classes)
  if float(var_smoothing) < 0:
    raise ValueError(f"`var_smoothing` must be >= 0; got {var_smoothing}.")
  return _gaussian_fit(x, y, num_classes=int(num_classes), var_smoothing=var_smoothing)


def _gaussian_jll(model: GaussianNB, x):
  """Joint log-likelihood log P(c) + log P(x | c): [n, c]."""
  d = x.shape[1]
  log_det = jnp.sum(jnp.log(model.var), axis=1)  # [c]
  prec = 1.0 / model.var
  maha = (x * x) @ prec.T - 2.0 * x @ (model.theta * prec).T + jnp.sum(model.theta ** 2 * prec, axis=1)[None]
  return model.class_log_prior[None] - 0.5 * (d * math.log(2 * math.pi) + log_det[None] + jnp.maximum(maha, 0.0))


@jax.jit
def _gaussian_log_proba(model, x):
  jll = _gaussian_jll(model, x)
  return jll - jax.nn.logsumexp(jll, axis=1, keepdims=True)


def gaussian_predict_log_proba(model: GaussianNB, x) -> jax.Array:
  """log P(c | x): [n, c] for x: [n, d]."""
  return _gaussian_log_proba(model, _check_x(model.theta.shape[1], x, model.theta.dtype))


def gaussian_predict_proba(model: GaussianNB, x) -> jax.Array:
  """P(c | x): [n, c]."""
  return jnp.exp(gaussian_predict_log_proba(model, x))


def gaussian_predict(model: GaussianNB, x) -> jax.Array:
  """Most probable class per row: [n] int32."""
  return jnp.argmax(gaussian_predict_log_proba(model, x), axis=1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------------
# Multinomial
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _multinomial_fit(x, y, num_classes, alpha):
  onehot, count, log_prior = _class_stats(x, y, num_classes)
  feature_count = onehot.T @ x  # [c, d]
  smoothed = feature_count + alpha
  flp = jnp.log(smoothed) - jnp.log(jnp.sum(smoothed, axis=1, keepdims=True))
  return MultinomialNB(class_count=count, class_log_prior=log_prior, feature_count=feature_count,
                       feature_log_prob=flp)


def multinomial_fit(x, y, num_classes: int, alpha: float = 1.0) -> MultinomialNB:
  """Fit multinomial naive Bayes. x: [n, d] non-negative counts (or tf-idf-like values); y: [n] int labels."""
  x, y = _check_xy(x, y, num_classes)
  if not float(alpha) > 0:
    raise ValueError(f"`alpha` must be > 0 (Lidstone smoothing; 0 gives log 0 for unseen features); got {alpha}.")
  if _is_concrete(x) and bool(jnp.any(x < 0)):
    raise ValueError(f"`x` must be non-negative counts for multinomial naive Bayes; got min {float(jnp.min(x))}.")
  return _multinomial_fit(x, y, num_classes=int(num_classes), alpha=alpha)


@jax.jit
def _multinomial_log_proba(model, x):
  jll = x @ model.feature_log_prob.T + model.class_log_prior[None]
  return jll - jax.nn.logsumexp(jll, axis=1, keepdims=True)


def multinomial_predict_log_proba(model: MultinomialNB, x) -> jax.Array:
  """log P(c | x): [n, c] for x: [n, d] counts."""
  x = _check_x(model.feature_log_prob.shape[1], x, model.feature_log_prob.dtype)
  if _is_concrete(x) and bool(jnp.any(x < 0)):
    raise ValueError(f"`x` must be non-negative counts; got min {float(jnp.min(x))}.")
  return _multinomial_log_proba(model, x)


def multinomial_predict_proba(model: MultinomialNB, x) -> jax.Array:
  """P(c | x): [n, c]."""
  return jnp.exp(multinomial_predict_log_proba(model, x))


def multinomial_predict(model: MultinomialNB, x) -> jax.Array:
  """Most probable class per row: [n] int32."""
  return jnp.argmax(multinomial_predict_log_proba(model, x), axis=1).astype(jnp.int32)
