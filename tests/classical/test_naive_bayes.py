"""Tests of research.classical.naive_bayes against sklearn GaussianNB / MultinomialNB on iris and digits."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.naive_bayes import GaussianNB, MultinomialNB

from research.classical import naive_bayes as nb


@pytest.fixture(scope="module")
def iris():
  return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits(return_X_y=True)
  return x[:600], y[:600]


def test_gaussian_nb_matches_sklearn_iris_float64(iris):
  x, y = iris
  ref = GaussianNB().fit(x, y)
  with jax.enable_x64(True):
    model = nb.gaussian_fit(x, y, 3)
    chex.assert_shape((model.theta, model.var, model.class_log_prior), ((3, 4), (3, 4), (3,)))
    chex.assert_trees_all_close((np.asarray(model.theta), np.asarray(model.var)), (ref.theta_, ref.var_),
                                atol=1e-12)
    np.testing.assert_allclose(float(model.epsilon), ref.epsilon_, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(nb.gaussian_predict(model, x)), ref.predict(x))
    np.testing.assert_allclose(np.asarray(nb.gaussian_predict_log_proba(model, x)), ref.predict_log_proba(x),
                               atol=1e-9)


def test_gaussian_nb_float32_and_digits(iris, digits):
  x, y = iris
  model = nb.gaussian_fit(x, y, 3)  # x64 off
  assert model.theta.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(nb.gaussian_predict(model, x)), GaussianNB().fit(x, y).predict(x))
  xd, yd = digits
  with jax.enable_x64(True):
    model = nb.gaussian_fit(xd, yd, 10)
    ref = GaussianNB().fit(xd, yd)
    np.testing.assert_array_equal(np.asarray(nb.gaussian_predict(model, xd)), ref.predict(xd))


def test_multinomial_nb_matches_sklearn_digits(digits):
  x, y = digits
  ref = MultinomialNB(alpha=0.5).fit(x, y)
  with jax.enable_x64(True):
    model = nb.multinomial_fit(x, y, 10, alpha=0.5)
    chex.assert_shape(model.feature_log_prob, (10, 64))
    chex.assert_trees_all_close(np.asarray(model.feature_log_prob), ref.feature_log_prob_, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(nb.multinomial_predict(model, x)), ref.predict(x))
    np.testing.assert_allclose(np.asarray(nb.multinomial_predict_log_proba(model, x)), ref.predict_log_proba(x),
                               atol=1e-9)
  model32 = nb.multinomial_fit(x, y, 10, alpha=0.5)
  np.testing.assert_allclose(np.asarray(nb.multinomial_predict_proba(model32, x)), ref.predict_proba(x), atol=1e-4)


def test_empty_class_is_never_predicted(iris):
  x, y = iris
  model = nb.gaussian_fit(x, y, 4)  # class 3 has no samples
  lp = np.asarray(nb.gaussian_predict_log_proba(model, x))
  assert np.all(np.isneginf(lp[:, 3])) and np.all(np.isfinite(lp[:, :3]))
  mm = nb.multinomial_fit(x, y, 4)
  assert not np.any(np.asarray(nb.multinomial_predict(mm, x)) == 3)


def test_bad_inputs(iris):
  x, y = iris
  with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
    nb.gaussian_fit(x, y, 2)
  with pytest.raises(ValueError, match=r"`y` must have shape \[n\]"):
    nb.gaussian_fit(x, y[:-1], 3)
  with pytest.raises(ValueError, match="integer class labels"):
    nb.gaussian_fit(x, y.astype(float), 3)
  with pytest.raises(ValueError, match="non-negative counts"):
    nb.multinomial_fit(x - 10.0, y, 3)
  with pytest.raises(ValueError, match="alpha"):
    nb.multinomial_fit(x, y, 3, alpha=0.0)
  model = nb.gaussian_fit(x, y, 3)
  with pytest.raises(ValueError, match="d = 4"):
    nb.gaussian_predict(model, x[:, :3])
