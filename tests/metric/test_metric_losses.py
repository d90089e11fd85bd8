"""Triplet and contrastive losses vs numpy loops over all triplets / pairs; gradients at zero distance; masking."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import metric

MININGS = ("batch_hard", "semi_hard", "batch_all")


def _np_dist(x: np.ndarray, squared: bool) -> np.ndarray:
  b = len(x)
  d = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      d[i, j] = np.sum((x[i] - x[j]) ** 2)
  return d if squared else np.sqrt(d)


def _np_triplet(x, labels, valid, margin, mining, squared):
  """Loop reference: (loss, fraction_active, num_candidates)."""
  d = _np_dist(x, squared)
  idx = [i for i in range(len(x)) if valid[i]]
  losses = []
  for a in idx:
    pos = [p for p in idx if p != a and labels[p] == labels[a]]
    neg = [n for n in idx if labels[n] != labels[a]]
    if not pos or not neg:
      continue
    if mining == "batch_hard":
      losses.append(max(max(d[a, p] for p in pos) - min(d[a, n] for n in neg) + margin, 0.0))
    elif mining == "semi_hard":
      for p in pos:
        band = [d[a, n] for n in neg if d[a, p] < d[a, n] < d[a, p] + margin]
        dn = min(band) if band else min(d[a, n] for n in neg)  # fallback: hardest negative
        losses.append(max(d[a, p] - dn + margin, 0.0))
    else:
      losses += [max(d[a, p] - d[a, n] + margin, 0.0) for p in pos for n in neg]
  losses = np.array(losses)
  if losses.size == 0:
    return 0.0, 0.0, 0
  active = losses > 0
  loss = losses[active].mean() if mining == "batch_all" and active.any() else (0.0 if mining == "batch_all"
                                                                                  else losses.mean())
  return loss, active.mean(), losses.size


def _np_contrastive(a, b, same, valid, margin):
  losses = []
  for i in range(len(a)):
    if valid[i]:
      d = np.sqrt(np.sum((a[i] - b[i]) ** 2))
      losses.append(0.5 * d ** 2 if same[i] else 0.5 * max(margin - d, 0.0) ** 2)
  losses = np.array(losses)
  return (losses.mean(), np.mean(losses > 0)) if losses.size else (0.0, 0.0)


def _batch(seed, b=16, d=4, classes=4):
  """Loosely clustered embeddings [b, d] (some triplets active, some not), labels [b], valid [b]."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, size=b)
  x = 1.5 * rng.normal(size=(classes, d))[labels] + 0.5 * rng.normal(size=(b, d))
  return x, labels, rng.uniform(size=b) < 0.8


@pytest.mark.parametrize("mining", MININGS)
def test_triplet_matches_numpy_loop(mining):
  with jax.enable_x64(True):
    fractions = []
    for seed in range(3):
      x, labels, valid = _batch(seed)
      for squared, margin in ((False, 0.5), (True, 2.0)):
        loss, m = metric.triplet_loss(x, labels, margin=margin, mining=mining, valid=valid, squared=squared)
        ref_loss, ref_frac, ref_n = _np_triplet(x, labels, valid, margin, mining, squared)
        np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(m["fraction_active"]), ref_frac, rtol=1e-12)
        assert int(m["num_candidates"]) == ref_n
        fractions.append(ref_frac)
    assert any(0.0 < f < 1.0 for f in fractions)  # the cases are not all-or-nothing


def test_semi_hard_band_and_fallback_exactly():
  """1-D points: the band negative is chosen when there is one, else the hardest negative (here inside d(a, p))."""
  x = np.array([[0.0], [1.0], [1.2], [3.0], [0.5]])
  labels = np.array([0, 0, 1, 1, 2])
  with jax.enable_x64(True):
    loss, m = metric.triplet_loss(x, labels, margin=0.5, mining="semi_hard")
    ref_loss, ref_frac, ref_n = _np_triplet(x, labels, np.ones(5, bool), 0.5, "semi_hard", False)
    # Hand check of (a=0, p=1): d_ap = 1; negatives 1.2 (band), 3.0, 0.5 -> band 1.2 -> loss 1 - 1.2 + 0.5 = 0.3.
    # (a=1, p=0): d_ap = 1; negatives 0.2, 2.0, 0.5 -> none in (1, 1.5) -> fallback 0.2 -> 1.3.
    # (a=2, p=3) and (a=3, p=2): d_ap = 1.8; negatives of 2: 1.2, 0.2, 0.7 -> fallback 0.2 -> 2.1;
    # negatives of 3: 3.0, 2.0, 2.5 -> band (1.8, 2.3): 2.0 -> 0.3.
    np.testing.assert_allclose(float(loss), np.mean([0.3, 1.3, 2.1, 0.3]), rtol=1e-12)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12)
    assert int(m["num_candidates"]) == ref_n == 4 and float(m["fraction_active"]) == ref_frac == 1.0


def test_contrastive_matches_numpy_loop():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(2, 32, 3))
  same = rng.uniform(size=32) < 0.5
  valid = rng.uniform(size=32) < 0.9
  with jax.enable_x64(True):
    for margin in (0.5, 2.0):
      loss, m = metric.contrastive_loss(a, b, same, margin, valid=valid)
      ref_loss, ref_frac = _np_contrastive(a, b, same, valid, margin)
      np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12)
      np.testing.assert_allclose(float(m["fraction_active"]), ref_frac, rtol=1e-12)
      assert int(m["num_candidates"]) == valid.sum()


def test_pairwise_distances_vs_numpy_and_gradient_vs_finite_differences():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
  with jax.enable_x64(True):
    d = metric.pairwise_distances(x, y)
    chex.assert_shape(d, (5, 4))
    ref = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    chex.assert_trees_all_close(np.asarray(d), ref, atol=1e-12)
    chex.assert_trees_all_close(np.asarray(metric.pairwise_distances(x, y, squared=True)), ref ** 2, atol=1e-12)
    # Gradient of batch-hard loss vs central differences of the numpy loop (no ties in random data).
    emb, labels, valid = _batch(9, b=8, d=3, classes=3)
    g = np.asarray(jax.grad(lambda e: metric.triplet_loss(e, labels, margin=1.0, valid=valid)[0])(emb))
    num = np.zeros_like(emb)
    for idx in np.ndindex(*emb.shape):
      hi, lo = emb.copy(), emb.copy()
      hi[idx] += 1e-6
      lo[idx] -= 1e-6
      num[idx] = (_np_triplet(hi, labels, valid, 1.0, "batch_hard", False)[0]
                  - _np_triplet(lo, labels, valid, 1.0, "batch_hard", False)[0]) / 2e-6
    np.testing.assert_allclose(g, num, atol=1e-6)
    assert np.all(g[~valid] == 0)  # padded rows get no gradient


@pytest.mark.parametrize("mining", MININGS)
def test_gradients_finite_at_zero_distance(mining):
  """Collapsed embeddings (all equal, or all zero) and exact duplicates: finite loss and gradients."""
  labels = np.array([0, 0, 1, 1, 2, 2])
  rng = np.random.default_rng(0)
  dup = rng.normal(size=(3, 4)).repeat(2, axis=0)  # pairs of identical embeddings
  for emb in (np.zeros((6, 4), np.float32), np.ones((6, 4), np.float32), dup.astype(np.float32)):
    loss, g = jax.value_and_grad(lambda e: metric.triplet_loss(e, labels, margin=0.3, mining=mining)[0])(emb)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
  g = jax.grad(lambda e: metric.contrastive_loss(e, e, np.array([True, False] * 3), 1.0)[0])(dup.astype(np.float32))
  assert np.all(np.isfinite(np.asarray(g)))
  g = jax.grad(lambda e: jnp.sum(metric.pairwise_distances(e, e)))(np.zeros((3, 2), np.float32))
  np.testing.assert_array_equal(np.asarray(g), 0.0)
  if mining == "batch_hard":  # zero embeddings: every triplet is active with loss = margin
    loss, m = metric.triplet_loss(np.zeros((6, 4), np.float32), labels, margin=0.3)
    np.testing.assert_allclose(float(loss), 0.3, rtol=1e-6)
    assert float(m["fraction_active"]) == 1.0


def test_masking_ignores_padded_rows_and_bad_inputs():
  """Padded rows hold finite garbage: the losses equal the numpy loops over the valid rows alone."""
  x, labels, valid = _batch(4)
  garbage = np.where(valid[:, None], x, 1e3)
  with jax.enable_x64(True):
    for mining in MININGS:
      loss, m = metric.triplet_loss(garbage, labels, margin=0.5, mining=mining, valid=valid)
      ref_loss, ref_frac, ref_n = _np_triplet(x[valid], labels[valid], np.ones(valid.sum(), bool), 0.5, mining, False)
      np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-10)
      assert int(m["num_candidates"]) == ref_n
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(2, 32, 3))
    same = rng.uniform(size=32) < 0.5
    pvalid = rng.uniform(size=32) < 0.7
    loss, _ = metric.contrastive_loss(np.where(pvalid[:, None], a, -1e3), b, same, 2.0, valid=pvalid)
    np.testing.assert_allclose(float(loss), _np_contrastive(a[pvalid], b[pvalid], same[pvalid], pvalid[pvalid], 2.0)[0],
                               rtol=1e-12)
  # Nothing valid: loss 0, no NaN.
  loss, m = metric.triplet_loss(x, labels, margin=0.5, valid=np.zeros(16, bool))
  assert float(loss) == 0.0 and float(m["fraction_active"]) == 0.0
  with pytest.raises(ValueError, match="mining"):
    metric.triplet_loss(x, labels, margin=0.5, mining="hard")
  with pytest.raises(ValueError, match=r"`labels` must have shape \(16,\)"):
    metric.triplet_loss(x, labels[:5], margin=0.5)
  with pytest.raises(ValueError, match=r"`valid` must have shape"):
    metric.triplet_loss(x, labels, margin=0.5, valid=np.ones(3, bool))
  with pytest.raises(ValueError, match="same d"):
    metric.pairwise_distances(x, x[:, :2])
  with pytest.raises(ValueError, match="`same` must have shape"):
    metric.contrastive_loss(x, x, np.ones(3, bool), 1.0)
