"""Distances: symmetry, zero self-distance, the asymmetric formula, KL/JSD against scipy and hand values,
pdist/cdist."""

import chex
import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance as sp_distance

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
  # scipy's cosine distance of the paper's normalised embeddings, and a hand value: h_a = (1, 3), h_b = (3, 1) give
  # (1/4, 3/4) and (3/4, 1/4), cosine similarity (3/16 + 3/16) / (10/16) = 0.6.
  ha, hb = a.hessian / (a.hessian + b.hessian), b.hessian / (a.hessian + b.hessian)
  assert D.cosine(a, b) == pytest.approx(sp_distance.cosine(ha, hb), rel=1e-9)
  assert D.cosine(Embedding(np.array([1.0, 3.0]), np.ones(2)), Embedding(np.array([3.0, 1.0]), np.ones(2))) == (
      pytest.approx(0.4, rel=1e-12))
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


def test_kl_jsd_against_scipy_and_zero_on_equal():
  """p = h / sum(h) (negative entries clamped to 0): kl = KL(p_a || p_b) = scipy.stats.entropy(p_a, p_b) (nats),
  jsd = JS divergence = scipy.spatial.distance.jensenshannon(p_a, p_b) ** 2 (scipy returns its square root)."""
  for s in range(5):
    a, b = _emb(s), _emb(s + 100)
    p, q = a.hessian / a.hessian.sum(), b.hessian / b.hessian.sum()
    assert D.kl(a, b) == pytest.approx(stats.entropy(p, q), rel=1e-9)
    assert D.kl(b, a) == pytest.approx(stats.entropy(q, p), rel=1e-9)
    assert D.kl(a, b) != pytest.approx(D.kl(b, a), rel=1e-3)  # asymmetric
    assert D.jsd(a, b) == pytest.approx(sp_distance.jensenshannon(p, q) ** 2, rel=1e-9)
    assert D.jsd(b, a) == pytest.approx(D.jsd(a, b), rel=1e-12)
  e = lambda *h: Embedding(np.array(h, float), np.ones(len(h)))  # noqa: E731
  # Hand values: KL((1, 0) || (1/2, 1/2)) = ln 2; KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2);
  # disjoint supports give the largest JSD, ln 2; a negative Fisher entry counts as 0.
  assert D.kl(e(1, 0), e(1, 1)) == pytest.approx(np.log(2), rel=1e-12)
  assert D.kl(e(-1, 2), e(1, 1)) == pytest.approx(np.log(2), rel=1e-12)
  assert D.kl(e(1, 3), e(1, 1)) == pytest.approx(0.25 * np.log(0.5) + 0.75 * np.log(1.5), rel=1e-12)
  assert D.jsd(e(1, 0), e(0, 1)) == pytest.approx(np.log(2), rel=1e-12)
  assert D.jsd(e(1, 3), e(1, 1)) == pytest.approx(
      0.5 * (0.25 * np.log(0.25 / 0.375) + 0.75 * np.log(0.75 / 0.625)) +
      0.5 * (0.5 * np.log(0.5 / 0.375) + 0.5 * np.log(0.5 / 0.625)), rel=1e-12)  # m = (3/8, 5/8)
  a = _emb(0)
  assert D.kl(a, a) == pytest.approx(0, abs=1e-12) and D.jsd(a, a) == pytest.approx(0, abs=1e-12)
  assert D.kl(a, Embedding(a.hessian * 7.0, a.scale)) == pytest.approx(0, abs=1e-12)  # scale-free (distributions)
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
