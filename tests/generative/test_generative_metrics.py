"""Generative-model metrics (issue 15, item 3): Fréchet distance vs a scipy ``sqrtm`` float64 reference and closed
forms, Inception Score vs the reference loop, class accuracy, the IWAE bound on a Gaussian model with a known marginal,
Chamfer distance vs brute force, voxel IoU, and argument errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from research.train import generative_metrics as gm


def _random_psd(rng, d, rank=None):
  """A random covariance ``A A^T / d`` of the given rank (full when None), and its factor A [d, rank]."""
  a = rng.normal(size=(d, d if rank is None else rank)) * rng.uniform(0.2, 2.0)
  return a @ a.T / d, a / math.sqrt(d)


def _fid_sqrtm(mu1, s1, mu2, s2):
  """Independent float64 reference: the FID formula with ``scipy.linalg.sqrtm`` of the product (pytorch-fid's way)."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  if not np.all(np.isfinite(covmean)):
    offset = np.eye(s1.shape[0]) * 1e-10
    covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real)


# --------------------------------------------------------------------------------------------------------------------
# Fréchet distance


def test_gaussian_stats_matches_np_cov():
  x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
  mu, sigma = gm.gaussian_stats(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (5, 5)
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-14)
  mu1, sigma1 = gm.gaussian_stats(x[:, :1])
  assert mu1.shape == (1,) and sigma1.shape == (1, 1)


@pytest.mark.parametrize("d", [2, 7, 64])
def test_frechet_matches_sqrtm_reference(d):
  rng = np.random.default_rng(d)
  s1, _ = _random_psd(rng, d)
  s2, _ = _random_psd(rng, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  ref = _fid_sqrtm(mu1, s1, mu2, s2)
  got = gm.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(gm.frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-9, atol=1e-9)  # symmetric


def test_frechet_rank_deficient():
  """Rank-deficient covariances (N <= D features): against sqrtm and against the exact factor form
  ``Tr((A A^T B B^T)^{1/2}) = ||A^T B||_*`` (nuclear norm)."""
  rng = np.random.default_rng(1)
  d = 32
  s1, a = _random_psd(rng, d, rank=5)
  s2, b = _random_psd(rng, d, rank=20)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  exact = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                - 2.0 * np.linalg.svd(a.T @ b, compute_uv=False).sum())
  got = gm.frechet_distance(mu1, s1, mu2, s2)
  # zero eigenvalues come out as +-1e-16: their square roots, ~1e-8 each, are the error
  np.testing.assert_allclose(got, exact, rtol=0, atol=1e-8 * d)
  np.testing.assert_allclose(got, _fid_sqrtm(mu1, s1, mu2, s2), rtol=1e-6, atol=1e-6)
  # from sample statistics with fewer samples than dimensions
  x, y = rng.normal(size=(10, d)), rng.normal(size=(12, d)) + 0.5
  m1, c1 = gm.gaussian_stats(x)
  m2, c2 = gm.gaussian_stats(y)
  np.testing.assert_allclose(gm.frechet_distance(m1, c1, m2, c2), _fid_sqrtm(m1, c1, m2, c2), rtol=1e-6)


def test_frechet_identical_translation_and_1d_closed_form():
  rng = np.random.default_rng(2)
  s, _ = _random_psd(rng, 16)
  mu = rng.normal(size=16)
  assert abs(gm.frechet_distance(mu, s, mu, s)) < 1e-9
  shift = rng.normal(size=16)
  np.testing.assert_allclose(gm.frechet_distance(mu, s, mu + shift, s), shift @ shift, rtol=1e-9)
  m1, sd1, m2, sd2 = 0.3, 1.7, -1.1, 0.4
  got = gm.frechet_distance(np.array([m1]), np.array([[sd1 ** 2]]), np.array([m2]), np.array([[sd2 ** 2]]))
  np.testing.assert_allclose(got, (m1 - m2) ** 2 + (sd1 - sd2) ** 2, rtol=1e-12)


def test_frechet_jax_agrees_with_numpy():
  rng = np.random.default_rng(3)
  d = 24
  s1, _ = _random_psd(rng, d)
  s2, _ = _random_psd(rng, d, rank=10)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  ref = gm.frechet_distance(mu1, s1, mu2, s2)
  f32 = jax.jit(gm.frechet_distance_jax)(*(jnp.asarray(x, jnp.float32) for x in (mu1, s1, mu2, s2)))
  assert f32.dtype == jnp.float32 and f32.shape == ()
  np.testing.assert_allclose(float(f32), ref, rtol=0, atol=1e-4 * (np.trace(s1) + np.trace(s2)))
  with jax.enable_x64(True):
    f64 = gm.frechet_distance_jax(*(jnp.asarray(x, jnp.float64) for x in (mu1, s1, mu2, s2)))
    assert f64.dtype == jnp.float64
    np.testing.assert_allclose(float(f64), ref, rtol=1e-9, atol=1e-9)


def test_frechet_bad_shapes():
  mu, s = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match="mu1"):
    gm.frechet_distance(np.zeros((3, 1)), s, mu, s)
  with pytest.raises(ValueError, match="sigma2.*square"):
    gm.frechet_distance(mu, s, mu, np.zeros((3, 2)))
  with pytest.raises(ValueError, match="dimensions disagree"):
    gm.frechet_distance(mu, s, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="dimensions disagree"):
    gm.frechet_distance_jax(mu, s, mu, np.eye(2))
  with pytest.raises(ValueError, match="NaN"):
    gm.frechet_distance(mu, s, np.full(3, np.nan), s)
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    gm.gaussian_stats(np.zeros(5))
  with pytest.raises(ValueError, match="at least 2 rows"):
    gm.gaussian_stats(np.zeros((1, 5)))


# --------------------------------------------------------------------------------------------------------------------
# Inception Score, class accuracy


def _inception_score_loop(preds, splits):
  """The reference implementation's loop (openai/improved-gan), float64."""
  scores = []
  n = preds.shape[0]
  for i in range(splits):
    part = preds[(i * n // splits):((i + 1) * n // splits), :]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_extremes():
  k, splits = 7, 10
  onehot = np.eye(k, dtype=np.float32)[np.arange(k * splits * 3) % k]  # every split: confident, uniform over classes
  mean, std = gm.inception_score(onehot, splits=splits)
  np.testing.assert_allclose(float(mean), k, rtol=1e-5)
  assert float(std) < 1e-4
  same = np.tile(np.random.default_rng(0).dirichlet(np.ones(k)), (50, 1))
  mean, std = gm.inception_score(same, splits=5)
  np.testing.assert_allclose(float(mean), 1.0, rtol=1e-6)
  assert float(std) < 1e-6


@pytest.mark.parametrize("n,splits", [(200, 10), (203, 7), (30, 1)])
def test_inception_score_matches_reference_loop(n, splits):
  probs = np.random.default_rng(n).dirichlet(np.full(12, 0.3), size=n) + 1e-12
  probs /= probs.sum(1, keepdims=True)
  ref = _inception_score_loop(probs, splits)
  got = jax.jit(gm.inception_score, static_argnames="splits")(jnp.asarray(probs, jnp.float32), splits=splits)
  np.testing.assert_allclose(float(got[0]), ref[0], rtol=1e-5)
  np.testing.assert_allclose(float(got[1]), ref[1], rtol=1e-3, atol=1e-5)


def test_inception_score_zero_probabilities_and_errors():
  probs = np.eye(3)[[0, 1, 2, 0, 1, 1]]
  mean, std = gm.inception_score(probs, splits=2)
  assert np.isfinite(float(mean)) and np.isfinite(float(std))
  with pytest.raises(ValueError, match="splits"):
    gm.inception_score(probs, splits=7)
  with pytest.raises(ValueError, match=r"\[N, K\]"):
    gm.inception_score(probs[0])


def test_class_accuracy():
  logits = np.array([[5., 0, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 5, 0]])
  requested = np.array([0, 1, 0, 1, 0, 7])  # 7: out of range, never correct, no class
  out = jax.jit(gm.class_accuracy)(logits, requested)
  np.testing.assert_allclose(float(out["accuracy"]), 3 / 6)
  np.testing.assert_allclose(out["count"], [3, 2, 0])
  np.testing.assert_allclose(out["per_class"][:2], [2 / 3, 1 / 2])
  assert np.isnan(out["per_class"][2])
  np.testing.assert_allclose(float(out["mean_class_accuracy"]), (2 / 3 + 1 / 2) / 2, rtol=1e-6)
  probs = jax.nn.softmax(jnp.asarray(logits), axis=1)  # probabilities give the same argmax
  np.testing.assert_allclose(float(gm.class_accuracy(probs, requested)["accuracy"]), 0.5)
  with pytest.raises(ValueError, match="requested must be"):
    gm.class_accuracy(logits, requested[:3])
  with pytest.raises(ValueError, match="integer"):
    gm.class_accuracy(logits, requested.astype(np.float32))


# --------------------------------------------------------------------------------------------------------------------
# Likelihood bounds


def test_log_mean_exp():
  x = np.random.default_rng(0).normal(size=(4, 5))
  np.testing.assert_allclose(gm.log_mean_exp(x, axis=1), np.log(np.exp(x).mean(1)), rtol=1e-5)
  np.testing.assert_allclose(gm.log_mean_exp(x, axis=None), np.log(np.exp(x).mean()), rtol=1e-5)
  np.testing.assert_allclose(gm.log_mean_exp(x, axis=(0, 1), keepdims=True), np.log(np.exp(x).mean(keepdims=True)),
                             rtol=1e-5)
  big = np.array([1000.0, 1000.0, -np.inf])  # no overflow; -inf is a zero weight
  np.testing.assert_allclose(float(gm.log_mean_exp(big)), 1000.0 + math.log(2 / 3), rtol=1e-6)
  assert float(gm.log_mean_exp(np.full(3, -np.inf))) == -np.inf
  with pytest.raises(ValueError, match="out of range"):
    gm.log_mean_exp(x, axis=2)


def _toy_log_weights(rng, x, k, b, q_mean, q_std, noise_std=0.5):
  """z ~ N(0, 1), x | z ~ N(z, noise_std^2), proposal q(z | x) = N(q_mean, q_std^2): log w [k, b] and the exact
  marginal log p(x) = log N(x; 0, 1 + noise_std^2)."""
  def log_normal(v, m, s):
    return -0.5 * ((v - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
  z = q_mean + q_std * rng.normal(size=(k, b))
  log_w = log_normal(x, z, noise_std) + log_normal(z, 0.0, 1.0) - log_normal(z, q_mean, q_std)
  return log_w, float(log_normal(x, 0.0, math.sqrt(1 + noise_std ** 2)))


def test_iwae_bound_k1_and_jensen():
  lw = np.random.default_rng(0).normal(size=(1, 6))
  np.testing.assert_allclose(gm.iwae_bound(lw), lw[0], rtol=1e-6)
  lw = np.random.default_rng(1).normal(size=(9, 6))
  assert np.all(np.asarray(gm.iwae_bound(lw)) >= lw.mean(0) - 1e-6)  # log mean exp >= mean log
  with pytest.raises(ValueError, match="K >= 1"):
    gm.iwae_bound(np.zeros((0, 3)))


def test_iwae_bound_tightens_towards_log_px():
  rng = np.random.default_rng(0)
  x, b, k_max = 1.3, 2000, 512
  log_w, log_px = _toy_log_weights(rng, x, k_max, b, q_mean=0.2, q_std=1.0)  # q != posterior N(1.04, 0.2)
  means = []
  for k in (1, 4, 16, 64, 512):
    bound = np.asarray(gm.iwae_bound(jnp.asarray(log_w[:k])), np.float64)
    stderr = bound.std() / math.sqrt(b)
    assert bound.mean() <= log_px + 4 * stderr + 1e-6, (k, bound.mean(), log_px)
    means.append(bound.mean())
  assert np.all(np.diff(means) > 0), means
  assert log_px - means[0] > 0.5  # the ELBO is loose here ...
  assert log_px - means[-1] < 0.02  # ... and K = 512 nearly closes the gap
  # exact posterior q(z | x) = N(x / (1 + s^2), s^2 / (1 + s^2)): every weight is p(x), every K is tight
  log_w, log_px = _toy_log_weights(rng, x, 8, 5, q_mean=x / 1.25, q_std=math.sqrt(0.25 / 1.25))
  np.testing.assert_allclose(gm.iwae_bound(log_w), np.full(5, log_px), rtol=1e-5)


def test_nats_to_bits_per_dim():
  np.testing.assert_allclose(float(gm.nats_to_bits_per_dim(3072 * math.log(2.0) * 3.5, 3072)), 3.5, rtol=1e-6)
  with pytest.raises(ValueError, match="num_dims"):
    gm.nats_to_bits_per_dim(1.0, 0)


# --------------------------------------------------------------------------------------------------------------------
# 3-D shapes


def _chamfer_brute(a, b):
  d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  return d2.min(1).mean() + d2.min(0).mean()


def test_chamfer_matches_brute_force():
  rng = np.random.default_rng(0)
  a, b = rng.uniform(-1, 1, size=(57, 3)), rng.uniform(-1, 1, size=(83, 3))
  np.testing.assert_allclose(gm.chamfer_distance(a, b), _chamfer_brute(a, b), rtol=1e-12)
  np.testing.assert_allclose(gm.chamfer_distance(b, a), gm.chamfer_distance(a, b), rtol=1e-12)
  assert gm.chamfer_distance(a, a) == 0.0
  np.testing.assert_allclose(gm.chamfer_distance(np.zeros((1, 3)), np.array([[1.0, 0, 0]])), 2.0)  # 1 + 1


def test_chamfer_batch_with_masks():
  rng = np.random.default_rng(1)
  bsz, n, m = 3, 20, 30
  a = rng.uniform(-1, 1, size=(bsz, n, 3)).astype(np.float32)
  b = rng.uniform(-1, 1, size=(bsz, m, 3)).astype(np.float32)
  na, nb = [20, 11, 5], [30, 17, 1]
  mask_a = np.arange(n)[None] < np.array(na)[:, None]
  mask_b = np.arange(m)[None] < np.array(nb)[:, None]
  a[~mask_a] = 100.0  # padding far away: it must not count
  b[~mask_b] = -100.0
  got = jax.jit(gm.chamfer_distance_batch)(a, b, mask_a, mask_b)
  assert got.shape == (bsz,)
  for i in range(bsz):
    ref = _chamfer_brute(a[i, :na[i]].astype(np.float64), b[i, :nb[i]].astype(np.float64))
    np.testing.assert_allclose(float(got[i]), ref, rtol=1e-5)
  full = gm.chamfer_distance_batch(a[:1], b[:1])  # no masks: every point counts
  np.testing.assert_allclose(float(full[0]), gm.chamfer_distance(a[0], b[0]), rtol=1e-5)
  empty_b = gm.chamfer_distance_batch(a[:1], b[:1], mask_b=np.zeros((1, m), bool))
  assert np.isnan(float(empty_b[0]))


def test_chamfer_bad_shapes():
  with pytest.raises(ValueError, match="same coordinate"):
    gm.chamfer_distance(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="at least one point"):
    gm.chamfer_distance(np.zeros((0, 3)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
    gm.chamfer_distance_batch(np.zeros((2, 4, 3)), np.zeros((3, 4, 3)))
  with pytest.raises(ValueError, match="mask_b"):
    gm.chamfer_distance_batch(np.zeros((2, 4, 3)), np.zeros((2, 5, 3)), mask_b=np.ones((2, 4), bool))


def test_voxel_iou():
  t = np.zeros((4, 4, 4), bool)
  t[:2] = True  # 32 voxels
  p = np.zeros_like(t)
  p[1:3] = True  # 32 voxels, 16 shared
  grids_p = np.stack([t, p, ~t, np.zeros_like(t)])
  grids_t = np.stack([t, t, t, np.zeros_like(t)])
  iou = gm.voxel_iou(grids_p, grids_t)
  assert iou.shape == (4,) and iou.dtype == jnp.float32
  np.testing.assert_allclose(iou, [1.0, 16 / 48, 0.0, 1.0])  # identical, overlap, disjoint, both empty
  batched = gm.voxel_iou(grids_p.reshape(2, 2, 4, 4, 4), grids_t.reshape(2, 2, 4, 4, 4))
  np.testing.assert_allclose(batched, np.asarray(iou).reshape(2, 2))
  with pytest.raises(ValueError, match="bool"):
    gm.voxel_iou(t.astype(np.float32), t)
  with pytest.raises(ValueError, match="same shape"):
    gm.voxel_iou(t, t[:3])
  with pytest.raises(ValueError, match="same shape"):
    gm.voxel_iou(t[0], t[0])
