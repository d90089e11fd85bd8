"""Distances: symmetry, zero self-distance, the asymmetric formula, KL/JSD non-negativity, pdist/cdist."""

import chex
import numpy as np
import pytest

from research.methods.task2vec import distances as D
from research.methods.task2vec.fisher import Embedding, trivial_embedding


def _emb(seed, n=50, scale=None):
  rng = np.random.default_rng(seed)
  h = rng.gamma(1.0, 1e-3, n)
  return Embedding(h, np.ones(n) if scale is None else scale)


def test_d_sym_symmetric_zero_on_diagonal_and_scale_invariant():
  a, b = _emb(0), _emb(1)
  assert D.cosine(a, b) == pytest.approx(D.cosine(b, a), abs=1e-12)
  assert D.cosine(a, a) == pytest.approx(0.0, abs=1e-12)
  assert 0 < D.cosine(a, b) <= 1
  # paper's normalisation h / (h_a + h_b): a common per-parameter rescaling leaves d_sym unchanged
  s = np.random.default_rng(2).gamma(1.0, 10.0, 50)
  assert D.cosine(Embedding(a.hessian * s, a.scale), Embedding(b.hessian * s, b.scale)) == pytest.approx(
      D.cosine(a, b), rel=1e-9)
  # the explicit formula
  ha, hb = a.hessian / (a.hessian + b.hessian), b.hessian / (a.hessian + b.hessian)
  assert D.cosine(a, b) == pytest.approx(1 - ha @ hb / np.linalg.norm(ha) / np.linalg.norm(hb), rel=1e-9)


def test_asymmetric_formula_and_trivial_embedding():
  scale = np.random.default_rng(3).gamma(2.0, 1.0, 50)
  a, b = _emb(0, scale=scale), _emb(1, scale=scale)
  t0 = trivial_embedding(a)
  np.testing.assert_array_equal(t0.hessian, scale)
  for alpha in (0.0, 0.15, 0.5):
    assert D.asymmetric(a, b, alpha) == pytest.approx(D.cosine(a, b) - alpha * D.cosine(a, t0), rel=1e-12)
  assert D.asymmetric(a, b, 0.0) == pytest.approx(D.cosine(a, b))
  # asymmetric: swapping source and target changes the value when the sources differ in complexity
  assert D.asymmetric(a, b, 0.15) != pytest.approx(D.asymmetric(b, a, 0.15))


def test_kl_jsd_nonnegative_and_zero_on_equal():
  for s in range(10):
    a, b = _emb(s), _emb(s + 100)
    assert D.kl(a, b) >= 0 and D.kl(b, a) >= 0 and D.jsd(a, b) >= 0
    assert D.jsd(a, b) == pytest.approx(D.jsd(b, a), rel=1e-9)
    assert D.jsd(a, b) <= np.log(2) + 1e-12
  a = _emb(0)
  assert D.kl(a, a) == pytest.approx(0, abs=1e-12) and D.jsd(a, a) == pytest.approx(0, abs=1e-12)
  assert D.correlation(a, a) == pytest.approx(0, abs=1e-12)
  assert D.normalized_cosine(a, a) == pytest.approx(0, abs=1e-12)


def test_pdist_cdist():
  embs = [_emb(s) for s in range(5)]
  for name in ("cosine", "normalized_cosine", "correlation", "kl", "jsd", "asymmetric"):
    m = D.pdist(embs, name)
    chex.assert_shape(m, (5, 5))
    assert np.all(np.isfinite(m))
    if name in D.SYMMETRIC:
      np.testing.assert_allclose(m, m.T, atol=1e-12)
      np.testing.assert_allclose(np.diag(m), 0, atol=1e-12)
  c = D.cdist(embs[:2], embs, "cosine")
  chex.assert_shape(c, (2, 5))
  np.testing.assert_allclose(c, D.pdist(embs, "cosine")[:2], atol=1e-12)
  with pytest.raises(ValueError, match="unknown distance"):
    D.pdist(embs, "euclid")
  with pytest.raises(ValueError, match="different dimensions"):
    D.cosine(_emb(0, 10), _emb(1, 12))
