"""Losses against independent numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.train import losses as L

RS = np.random.RandomState(0)
LOGITS = (RS.randn(6, 5) * 2).astype(np.float32)
LABELS = np.array([0, 4, 2, 2, 1, 3])


def _logsoftmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_and_label_smoothing():
  ls = _logsoftmax(LOGITS.astype(np.float64))
  np.testing.assert_allclose(L.cross_entropy(LOGITS, LABELS), -ls[np.arange(6), LABELS], rtol=1e-5)
  eps, C = 0.1, 5
  want = -((1 - eps) * ls[np.arange(6), LABELS] + eps / C * ls.sum(-1))
  np.testing.assert_allclose(L.label_smoothing_cross_entropy(LOGITS, LABELS, 0.1), want, rtol=1e-5)
  np.testing.assert_allclose(L.get_loss("label_smoothing", smoothing=0.0)(LOGITS, LABELS),
                             L.cross_entropy(LOGITS, LABELS), rtol=1e-6)


def test_temperature():
  p = L.temperature_softmax(jnp.array([[1.0, 2.0, -3.0]]), 1.0)
  np.testing.assert_allclose(p, [np.exp([1, 2, -3]) / np.exp([1, 2, -3]).sum()], rtol=1e-6)
  assert float(L.temperature_softmax(jnp.array([[10.0, 20.0, -30.0]]), 1.0)[0, 1]) > 0.9999
  T = 3.0
  want = -_logsoftmax(LOGITS / T)[np.arange(6), LABELS]
  np.testing.assert_allclose(L.temperature_cross_entropy(LOGITS, LABELS, T), want, rtol=1e-5)


def test_hinge_logistic_square():
  ww, cs, lg, sq = [], [], [], []
  for s, y in zip(LOGITS.astype(np.float64), LABELS):
    others = [j for j in range(5) if j != y]
    ww.append(sum(max(0, 1 + s[j] - s[y]) for j in others))
    cs.append(max(0, 1 + max(s[j] for j in others) - s[y]))
    t = np.where(np.arange(5) == y, 1.0, -1.0)
    lg.append(np.log1p(np.exp(-t * s)).sum())
    sq.append(((1 - t * s) ** 2).sum())
  np.testing.assert_allclose(L.multiclass_hinge(LOGITS, LABELS), ww, rtol=1e-5)
  np.testing.assert_allclose(L.multiclass_hinge(LOGITS, LABELS, kind="crammer_singer"), cs, rtol=1e-5)
  np.testing.assert_allclose(L.logistic(LOGITS, LABELS), lg, rtol=1e-5)
  np.testing.assert_allclose(L.square(LOGITS, LABELS), sq, rtol=1e-5)


def test_center_loss_and_update():
  feats = RS.randn(6, 3).astype(np.float32)
  centers = RS.randn(5, 3).astype(np.float32)
  np.testing.assert_allclose(L.center_loss(feats, LABELS, centers),
                             0.5 * ((feats - centers[LABELS]) ** 2).sum(-1), rtol=1e-5)
  new = np.asarray(L.update_centers(jnp.asarray(centers), feats, LABELS, alpha=0.5))
  for j in range(5):
    idx = LABELS == j
    delta = (centers[j] - feats[idx]).sum(0) / (1 + idx.sum())
    np.testing.assert_allclose(new[j], centers[j] - 0.5 * delta, rtol=1e-5, atol=1e-6)
  total = L.softmax_center_loss(LOGITS, LABELS, feats, centers, lam=0.01)
  np.testing.assert_allclose(total, L.cross_entropy(LOGITS, LABELS) + 0.01 * L.center_loss(feats, LABELS, centers),
                             rtol=1e-6)
  g = jax.grad(lambda c: L.softmax_center_loss(LOGITS, LABELS, feats, c).sum())(jnp.asarray(centers))
  assert not np.any(np.asarray(g))  # centres move only through update_centers


def test_get_loss_lookup():
  assert L.get_loss("cross_entropy") is L.cross_entropy
  with pytest.raises(ValueError, match="valid names: .*cross_entropy.*hinge"):
    L.get_loss("nope")
  for name in L.loss_names():
    if name != "softmax_center":
      assert L.get_loss(name)(LOGITS, LABELS).shape == (6,)
