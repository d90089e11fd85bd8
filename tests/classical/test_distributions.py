"""Tests of research.classical.distributions against scipy.stats (log-densities, exact samplers, moments)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as st

from research.classical import distributions as D

N = 20000   # samples per goodness-of-fit test (one shape for all: every sampler compiles once per dtype)
P_MIN = 1e-3
KEY = jax.random.key(20240601)


def _ks(samples, cdf):
  s = np.asarray(samples, np.float64)
  assert s.ndim == 1 and np.all(np.isfinite(s))
  return st.kstest(s, cdf).pvalue


def _chi2(samples, pmf, tail_min=5.0):
  """Chi-square goodness of fit; categories with expected count < tail_min are merged (both tails)."""
  s = np.asarray(samples)
  n = s.shape[0]
  assert s.ndim == 1 and s.min() >= 0
  kmax = int(s.max()) + 1
  probs = pmf(np.arange(kmax + 1))
  probs[-1] = max(1.0 - probs[:-1].sum(), 0.0)        # last bin = upper tail P(X >= kmax)
  counts = np.bincount(np.minimum(s, kmax), minlength=kmax + 1).astype(np.float64)
  exp = probs * n
  # merge low-expectation cells into neighbours from both ends
  obs_m, exp_m, acc_o, acc_e = [], [], 0.0, 0.0
  for o, e in zip(counts, exp):
    acc_o += o
    acc_e += e
    if acc_e >= tail_min:
      obs_m.append(acc_o)
      exp_m.append(acc_e)
      acc_o = acc_e = 0.0
  obs_m[-1] += acc_o
  exp_m[-1] += acc_e
  obs_m, exp_m = np.array(obs_m), np.array(exp_m)
  assert len(obs_m) >= 2
  return st.chisquare(obs_m, exp_m * obs_m.sum() / exp_m.sum()).pvalue


def _gig_cdf(p, a, b):
  """Independent GIG CDF: cumulative trapezoid of the unnormalised density on a fine log-x grid (numpy)."""
  s = np.linspace(-50.0, 50.0, 100001)
  x = np.exp(s)
  lf = (p - 1.0) * s - 0.5 * (a * x + b / x) + s       # log(f(x) x): density in s = log x
  f = np.exp(lf - lf.max())
  c = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]))])
  c /= c[-1]
  return lambda q: np.interp(np.log(q), s, c)


# ---------------------------------------------------------------------------------------------------------------
# log-densities vs scipy (float64, tight)

CONT_CASES = [
  ("laplace", lambda x: D.laplace_log_prob(x, 0.7, 1.9), st.laplace(0.7, 1.9)),
  ("student_t", lambda x: D.student_t_log_prob(x, 2.5, -1.0, 0.5), st.t(2.5, -1.0, 0.5)),
  ("student_t_small_df", lambda x: D.student_t_log_prob(x, 0.3, 0.0, 2.0), st.t(0.3, 0.0, 2.0)),
  ("cauchy", lambda x: D.cauchy_log_prob(x, 3.0, 0.25), st.cauchy(3.0, 0.25)),
  ("beta", lambda x: D.beta_log_prob(x, 0.5, 2.5), st.beta(0.5, 2.5)),
  ("beta2", lambda x: D.beta_log_prob(x, 3.0, 1.2), st.beta(3.0, 1.2)),
  ("gig_small", lambda x: D.gig_log_prob(x, 0.5, 0.1, 0.1), st.geninvgauss(0.5, 0.1, scale=1.0)),
  ("gig_neg", lambda x: D.gig_log_prob(x, -2.5, 4.0, 0.25), st.geninvgauss(-2.5, 1.0, scale=0.25)),
  ("gig_large", lambda x: D.gig_log_prob(x, 50.0, 100.0, 100.0), st.geninvgauss(50.0, 100.0, scale=1.0)),
]


@pytest.mark.parametrize("name,ours,ref", CONT_CASES, ids=[c[0] for c in CONT_CASES])
def test_continuous_log_prob_matches_scipy(name, ours, ref):
  with jax.enable_x64(True):
    x = np.concatenate([ref.ppf(np.linspace(0.001, 0.999, 41)), [-3.0, -0.5, 0.0, 0.3, 1.0, 1.7]])
    got = np.asarray(ours(jnp.asarray(x)))
    want = ref.logpdf(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-11, atol=1e-11)


def test_beta_log_prob_edges():
  with jax.enable_x64(True):
    x = jnp.array([0.0, 1.0, -0.1, 1.1])
    np.testing.assert_allclose(np.asarray(D.beta_log_prob(x, 0.5, 1.0)), st.beta(0.5, 1.0).logpdf(x), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(D.beta_log_prob(x[:2], 1.0, 3.0)), st.beta(1.0, 3.0).logpdf(x[:2]))


DISC_CASES = [
  ("bernoulli", lambda k: D.bernoulli_log_prob(k, 0.3), st.bernoulli(0.3)),
  ("bernoulli_p1", lambda k: D.bernoulli_log_prob(k, 1.0), st.bernoulli(1.0)),
  ("poisson", lambda k: D.poisson_log_prob(k, 3.0), st.poisson(3.0)),
  ("poisson_large", lambda k: D.poisson_log_prob(k, 300.0), st.poisson(300.0)),
  ("poisson_zero", lambda k: D.poisson_log_prob(k, 0.0), st.poisson(0.0)),
  ("nbinom", lambda k: D.negative_binomial_log_prob(k, 2.5, 0.3), st.nbinom(2.5, 0.3)),
  ("geometric", lambda k: D.negative_binomial_log_prob(k, 1.0, 0.6), st.nbinom(1, 0.6)),
]


@pytest.mark.parametrize("name,ours,ref", DISC_CASES, ids=[c[0] for c in DISC_CASES])
def test_discrete_log_prob_matches_scipy(name, ours, ref):
  with jax.enable_x64(True):
    k = np.concatenate([np.arange(0, 40), np.arange(250, 350, 7), [-1.0, 2.5, 1e6]])
    got = np.asarray(ours(jnp.asarray(k, jnp.float64)))
    want = ref.logpmf(k)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-11, atol=1e-10)
    # integer x gives the same
    np.testing.assert_allclose(np.asarray(ours(jnp.arange(5))), ref.logpmf(np.arange(5)), rtol=1e-11, atol=1e-12)


def test_log_bessel_k_matches_scipy_over_documented_range():
  with jax.enable_x64(True):
    nu = np.array([0.0, 0.3, 1.0, 2.5, 7.0, 20.0, 50.0, 100.0, 500.0])
    x = np.logspace(-6, 5, 23)
    nn, xx = np.meshgrid(nu, x, indexing="ij")
    want = np.log(sps.kve(nn, xx)) - xx
    got = np.asarray(D.log_bessel_k(nn, xx))
    chex.assert_shape(got, nn.shape)
    fin = np.isfinite(want)
    assert fin.mean() > 0.7
    err = np.abs(got - want)[fin] / np.maximum(1.0, np.abs(want[fin]))
    assert err.max() < 1e-12, err.max()
    # where scipy overflows, compare with the small-x asymptote K_ν(x) ~ Γ(ν)/2 (2/x)^ν (relative error O(x²/ν))
    small = ~fin & (nn > 1.0) & (xx < 1e-3)
    asym = sps.gammaln(nn) - np.log(2.0) + nn * np.log(2.0 / xx)
    np.testing.assert_allclose(got[small], asym[small], rtol=1e-8)
    # negative order, x = 0, x < 0
    np.testing.assert_allclose(float(D.log_bessel_k(-2.5, 3.0)), np.log(sps.kv(2.5, 3.0)), rtol=1e-13)
    assert float(D.log_bessel_k(1.0, 0.0)) == np.inf and np.isnan(float(D.log_bessel_k(1.0, -1.0)))
  # float32
  got32 = D.log_bessel_k(jnp.asarray(nn[:, ::3], jnp.float32), jnp.asarray(xx[:, ::3], jnp.float32))
  assert got32.dtype == jnp.float32
  w = want[:, ::3]
  f = np.isfinite(w)
  assert (np.abs(np.asarray(got32, np.float64) - w)[f] / np.maximum(1.0, np.abs(w[f]))).max() < 2e-6


def test_gradients_through_log_bessel_k():
  with jax.enable_x64(True):
    x, p, a, b = 1.3, 0.7, 1.5, 2.0
    g = jax.grad(lambda a_: D.gig_log_prob(x, p, a_, b))(a)
    # d/da log f = p/(2a) - (d/dω log K_p(ω)) b/(2ω) - x/2, with K'_p(ω) = -(K_{p-1}(ω) + K_{p+1}(ω)) / 2
    om = np.sqrt(a * b)
    dlogk = -0.5 * (sps.kv(p - 1, om) + sps.kv(p + 1, om)) / sps.kv(p, om)
    np.testing.assert_allclose(float(g), p / (2 * a) - dlogk * b / (2 * om) - x / 2, rtol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# samplers: goodness of fit (fixed key) + sample moments vs analytic


def _check_moments(s, mean, var, n_sd=5.0):
  s = np.asarray(s, np.float64)
  mean, var = float(mean), float(var)
  assert abs(s.mean() - mean) < n_sd * np.sqrt(var / N), (s.mean(), mean)
  # sd of the sample variance ~ sqrt((μ4 - σ⁴)/n): use the sample's 4th moment
  m4 = np.mean((s - s.mean()) ** 4)
  assert abs(s.var() - var) < n_sd * np.sqrt(max(m4 - var ** 2, 1e-30) / N), (s.var(), var)


CONT_SAMPLERS = [
  ("laplace", lambda k: D.laplace_sample(k, 0.7, 1.9, shape=(N,)), st.laplace(0.7, 1.9).cdf,
   lambda: D.laplace_mean_var(0.7, 1.9)),
  ("laplace2", lambda k: D.laplace_sample(k, -3.0, 0.1, shape=(N,)), st.laplace(-3.0, 0.1).cdf,
   lambda: D.laplace_mean_var(-3.0, 0.1)),
  ("student_t", lambda k: D.student_t_sample(k, 5.0, 1.0, 2.0, shape=(N,)), st.t(5.0, 1.0, 2.0).cdf,
   lambda: D.student_t_mean_var(5.0, 1.0, 2.0)),
  ("student_t_heavy", lambda k: D.student_t_sample(k, 0.4, 0.0, 1.0, shape=(N,)), st.t(0.4).cdf, None),
  ("cauchy", lambda k: D.cauchy_sample(k, 3.0, 0.25, shape=(N,)), st.cauchy(3.0, 0.25).cdf, None),
  ("cauchy2", lambda k: D.cauchy_sample(k, -1.0, 4.0, shape=(N,)), st.cauchy(-1.0, 4.0).cdf, None),
  ("beta", lambda k: D.beta_sample(k, 0.5, 2.5, shape=(N,)), st.beta(0.5, 2.5).cdf, lambda: D.beta_mean_var(0.5, 2.5)),
  ("beta_tiny", lambda k: D.beta_sample(k, 0.05, 0.2, shape=(N,)), st.beta(0.05, 0.2).cdf,
   lambda: D.beta_mean_var(0.05, 0.2)),
  ("beta_large", lambda k: D.beta_sample(k, 40.0, 15.0, shape=(N,)), st.beta(40.0, 15.0).cdf,
   lambda: D.beta_mean_var(40.0, 15.0)),
]


@pytest.mark.parametrize("name,sample,cdf,mv", CONT_SAMPLERS, ids=[c[0] for c in CONT_SAMPLERS])
def test_continuous_samplers_ks(name, sample, cdf, mv):
  with jax.enable_x64(True):
    s = sample(KEY)
    assert s.dtype == jnp.float64
    assert _ks(s, cdf) > P_MIN
    if mv is not None:
      _check_moments(s, *mv())


# GIG: the three algorithms of Hörmann & Leydold (hat for small ω, RoU without / with mode shift), small and large
_slow = pytest.mark.slow  # one case per algorithm in the default run; the extremes under -m slow (suite time)
GIG_CASES = [
  (0.5, 0.1, 0.1),        # ω = 0.1: three-piece hat
  pytest.param(0.2, 1e-4, 1e-4, marks=_slow),      # ω = 1e-4: very heavy-tailed, three-piece hat
  pytest.param(0.0, 0.05, 0.2, marks=_slow),       # λ = 0 branch of the hat
  (0.9, 0.4, 1.6),        # ω = 0.8: ratio-of-uniforms without mode shift
  (-0.3, 0.5, 1.0),       # negative p (1/GIG)
  (2.5, 3.0, 0.5),        # mode shift
  pytest.param(50.0, 100.0, 100.0, marks=_slow),   # large λ, ω
  pytest.param(-7.0, 2.0, 30.0, marks=_slow),      # large negative p
  pytest.param(1.0, 1e4, 1e4, marks=_slow),        # ω = 1e4: very concentrated
]


@pytest.mark.parametrize("p,a,b", GIG_CASES)
def test_gig_sampler_ks(p, a, b):
  with jax.enable_x64(True):
    s = D.gig_sample(KEY, p, a, b, shape=(N,))
    assert _ks(s, _gig_cdf(p, a, b)) > P_MIN
    if a * b > 1e-3:  # finite-variance-in-practice settings (ω = 1e-4 has sd ~ 9e3 and a huge 4th moment)
      _check_moments(s, *D.gig_mean_var(p, a, b))


def test_gig_sampler_float32():
  s = D.gig_sample(KEY, jnp.float32(50.0), jnp.float32(100.0), jnp.float32(100.0), shape=(N,))
  assert s.dtype == jnp.float32
  assert _ks(s, _gig_cdf(50.0, 100.0, 100.0)) > P_MIN
  s = D.gig_sample(KEY, jnp.float32(0.5), jnp.float32(0.1), jnp.float32(0.1), shape=(N,))
  assert _ks(s, _gig_cdf(0.5, 0.1, 0.1)) > P_MIN


def test_gig_mean_var_matches_scipy():
  with jax.enable_x64(True):
    for p, a, b in [(0.5, 0.1, 0.1), (-2.5, 4.0, 0.25), (50.0, 100.0, 100.0)]:
      ref = st.geninvgauss(p, np.sqrt(a * b), scale=np.sqrt(b / a))
      m, v = D.gig_mean_var(p, a, b)
      np.testing.assert_allclose([float(m), float(v)], [ref.mean(), ref.var()], rtol=1e-8)


DISC_SAMPLERS = [
  ("bernoulli", lambda k: D.bernoulli_sample(k, 0.3, shape=(N,)), st.bernoulli(0.3).pmf,
   lambda: D.bernoulli_mean_var(0.3)),
  ("poisson_3", lambda k: D.poisson_sample(k, 3.0, shape=(N,)), st.poisson(3.0).pmf,
   lambda: D.poisson_mean_var(3.0)),
  ("poisson_0.05", lambda k: D.poisson_sample(k, 0.05, shape=(N,)), st.poisson(0.05).pmf,
   lambda: D.poisson_mean_var(0.05)),
  ("poisson_10", lambda k: D.poisson_sample(k, 10.0, shape=(N,)), st.poisson(10.0).pmf,
   lambda: D.poisson_mean_var(10.0)),
  ("poisson_300", lambda k: D.poisson_sample(k, 300.0, shape=(N,)), st.poisson(300.0).pmf,
   lambda: D.poisson_mean_var(300.0)),
  ("poisson_1e5", lambda k: D.poisson_sample(k, 1e5, shape=(N,)), st.poisson(1e5).pmf, lambda: D.poisson_mean_var(1e5)),
  ("nbinom", lambda k: D.negative_binomial_sample(k, 2.5, 0.3, shape=(N,)), st.nbinom(2.5, 0.3).pmf,
   lambda: D.negative_binomial_mean_var(2.5, 0.3)),
  ("nbinom_geom", lambda k: D.negative_binomial_sample(k, 1.0, 0.8, shape=(N,)), st.nbinom(1, 0.8).pmf,
   lambda: D.negative_binomial_mean_var(1.0, 0.8)),
  ("nbinom_large", lambda k: D.negative_binomial_sample(k, 40.0, 0.1, shape=(N,)), st.nbinom(40.0, 0.1).pmf,
   lambda: D.negative_binomial_mean_var(40.0, 0.1)),
]


@pytest.mark.parametrize("name,sample,pmf,mv", DISC_SAMPLERS, ids=[c[0] for c in DISC_SAMPLERS])
def test_discrete_samplers_chi2(name, sample, pmf, mv):
  with jax.enable_x64(True):
    s = sample(KEY)
    assert s.dtype == jnp.int32
    assert _chi2(s, pmf) > P_MIN
    _check_moments(s, *mv())


def test_float32_samplers_dtype_and_fit():
  s = D.poisson_sample(KEY, jnp.float32(300.0), shape=(N,))
  assert s.dtype == jnp.int32 and _chi2(s, st.poisson(300.0).pmf) > P_MIN
  s = D.laplace_sample(KEY, jnp.float32(0.7), jnp.float32(1.9), shape=(N,))
  assert s.dtype == jnp.float32 and _ks(s, st.laplace(0.7, 1.9).cdf) > P_MIN
  s = D.cauchy_sample(KEY, 0.0, 1.0, shape=(N,))          # Python floats: float32 without x64
  assert s.dtype == jnp.float32 and _ks(s, st.cauchy().cdf) > P_MIN
  lp = D.gig_log_prob(jnp.float32(1.3), 50.0, 100.0, 100.0)
  assert lp.dtype == jnp.float32
  np.testing.assert_allclose(float(lp), st.geninvgauss(50.0, 100.0).logpdf(1.3), rtol=2e-5)


def test_samplers_detect_a_wrong_distribution():
  """The goodness-of-fit tests have power: a Poisson(300) sample is rejected as Poisson(303), GIG vs nearby."""
  with jax.enable_x64(True):
    assert _chi2(D.poisson_sample(KEY, 300.0, shape=(N,)), st.poisson(303.0).pmf) < 1e-6
    assert _ks(D.gig_sample(KEY, 2.5, 3.0, 0.5, shape=(N,)), _gig_cdf(2.5, 3.3, 0.5)) < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# shapes, batching, jit/vmap, determinism


def test_batch_shapes_and_per_element_parameters():
  with jax.enable_x64(True):
    # per-element rates (inversion and PTRS lanes in one call); same full shape (N,) as above: no new compile
    rates = jnp.repeat(jnp.array([0.5, 3.0, 30.0, 300.0]), N // 4)
    s = D.poisson_sample(KEY, rates, shape=())
    chex.assert_shape(s, (N,))
    np.testing.assert_allclose(np.asarray(s).reshape(4, -1).mean(1), [0.5, 3.0, 30.0, 300.0], rtol=0.05)
    for block, r in zip(np.asarray(s).reshape(4, -1), [0.5, 3.0, 30.0, 300.0]):
      assert _chi2(block, st.poisson(r).pmf) > P_MIN
    # per-element GIG parameters from two different algorithms in one call (hat for small ω, mode shift)
    half = N // 2
    g = D.gig_sample(KEY, jnp.repeat(jnp.array([0.5, 50.0]), half), jnp.repeat(jnp.array([0.1, 100.0]), half),
                     jnp.repeat(jnp.array([0.1, 100.0]), half))
    for block, (p, a) in zip(np.asarray(g).reshape(2, -1), [(0.5, 0.1), (50.0, 100.0)]):
      assert _ks(block, _gig_cdf(p, a, a)) > P_MIN
    # shape = sample_shape + batch_shape
    lap = D.laplace_sample(KEY, jnp.zeros((2, 1)), jnp.ones(3), shape=(4,))
    chex.assert_shape(lap, (4, 2, 3))
    chex.assert_shape(D.laplace_log_prob(jnp.zeros((2, 1)), jnp.zeros(3), 1.0), (2, 3))
    # same key -> same sample; different key -> different
    b1 = D.beta_sample(KEY, 2.0, 3.0, shape=(N,))
    np.testing.assert_array_equal(b1, D.beta_sample(KEY, 2.0, 3.0, shape=(N,)))
    assert not np.array_equal(b1, D.beta_sample(jax.random.key(1), 2.0, 3.0, shape=(N,)))


def test_under_jit_and_batched():
  with jax.enable_x64(True):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(key, p, a, b):
      return D.gig_sample(key, p, a, b, shape=(64,)), D.gig_log_prob(jnp.linspace(0.5, 2.0, 8), p, a, b)

    s1, lp1 = f(KEY, 1.5, 2.0, 3.0)
    s2, lp2 = f(KEY, 0.5, 0.1, 0.2)          # new values, no retrace
    chex.assert_shape([s1, s2], (64,))
    want = st.geninvgauss(0.5, np.sqrt(0.02), scale=np.sqrt(2.0)).logpdf(np.linspace(0.5, 2.0, 8))
    np.testing.assert_allclose(np.asarray(lp2), want, rtol=1e-10)
    # invalid parameters under jit cannot raise: NaN samples / NaN log-density, no endless loop (same trace)
    s3, lp3 = f(KEY, 0.5, -1.0, 0.2)
    assert np.all(np.isnan(s3)) and np.all(np.isnan(lp3))
    # vmap over keys and parameters; a negative rate (unchecked under vmap) gives -1
    keys = jax.random.split(KEY, 4)
    out = jax.vmap(lambda k, r: D.poisson_sample(k, r, shape=(8,)))(keys, jnp.array([1.0, 20.0, 400.0, -1.0]))
    chex.assert_shape(out, (4, 8))
    assert np.all(np.asarray(out[:3]) >= 0) and np.all(np.asarray(out[3]) == -1)
    lps = jax.vmap(D.student_t_log_prob, in_axes=(None, 0))(jnp.array([0.0, 1.0]), jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(np.asarray(lps), st.t([[1.0], [4.0]]).logpdf([[0.0, 1.0]]), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("call,match", [
  (lambda: D.laplace_log_prob(0.0, 0.0, 0.0), "scale"),
  (lambda: D.laplace_sample(KEY, 0.0, -1.0), "scale"),
  (lambda: D.student_t_sample(KEY, 0.0), "df"),
  (lambda: D.cauchy_log_prob(0.0, 0.0, jnp.array([1.0, -2.0])), r"scale.*shape \(2,\)"),
  (lambda: D.beta_sample(KEY, 1.0, 0.0), "`b`"),
  (lambda: D.gig_log_prob(1.0, 0.5, -1.0, 1.0), "`a`"),
  (lambda: D.gig_sample(KEY, np.nan, 1.0, 1.0), "`p`"),
  (lambda: D.bernoulli_sample(KEY, 1.5), "in \\[0, 1\\]"),
  (lambda: D.poisson_log_prob(1.0, -0.1), "rate"),
  (lambda: D.poisson_sample(KEY, jnp.inf), "rate"),
  (lambda: D.negative_binomial_sample(KEY, 2.0, 0.0), "in \\(0, 1\\]"),
  (lambda: D.negative_binomial_log_prob(1.0, -2.0, 0.5), "`r`"),
  (lambda: D.laplace_sample(KEY, jnp.zeros(2), jnp.ones(3)), "do not broadcast"),
  (lambda: D.poisson_sample(KEY, 1.0, shape=(-1,)), "shape"),
  (lambda: D.poisson_sample(KEY, 1.0, dtype=jnp.float32), "integer dtype"),
  (lambda: D.beta_sample(KEY, 1.0, 1.0, dtype=jnp.int32), "floating dtype"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_out_of_support_is_minus_inf_not_nan():
  with jax.enable_x64(True):
    assert float(D.gig_log_prob(-1.0, 0.5, 1.0, 1.0)) == -np.inf
    assert float(D.gig_log_prob(0.0, 0.5, 1.0, 1.0)) == -np.inf
    assert float(D.beta_log_prob(1.5, 2.0, 2.0)) == -np.inf
    assert float(D.poisson_log_prob(2.5, 1.0)) == -np.inf
    assert float(D.bernoulli_log_prob(2.0, 0.5)) == -np.inf
    assert float(D.negative_binomial_log_prob(-1.0, 2.0, 0.5)) == -np.inf
