"""Tests of research.classical.hmm (seed 003 §3.2) against hmmlearn's CategoricalHMM and brute-force enumeration."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.classical import hmm

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")

S, M, T = 3, 4, 40


def _params(seed=0, s=S, m=M):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.ones(s)), rng.dirichlet(np.ones(s), s), rng.dirichlet(np.ones(m), s)


def _hmmlearn_model(pi, A, B, **kw):
  model = hmmlearn_hmm.CategoricalHMM(n_components=A.shape[0], n_features=B.shape[1], **kw)
  model.startprob_, model.transmat_, model.emissionprob_ = pi, A, B
  return model


def _lg(p, dtype=np.float64):
  """log of probabilities as a JAX array of ``dtype`` (computed in numpy: no eager XLA op to compile)."""
  with np.errstate(divide="ignore"):
    return jnp.asarray(np.log(np.asarray(p, np.float64)).astype(dtype))


def _log_e(B, obs):
  return np.log(B)[:, obs].T


def _brute_force(pi, A, log_e):
  """Enumerate every state path: (log-likelihood, γ [T, S], Σξ [S, S], best path, best log-prob)."""
  t_len, s = log_e.shape
  paths = np.array(list(itertools.product(range(s), repeat=t_len)))  # [S^T, T]
  with np.errstate(divide="ignore"):
    lp = np.log(pi)[paths[:, 0]] + np.log(A)[paths[:, :-1], paths[:, 1:]].sum(1)
  lp = lp + log_e[np.arange(t_len), paths].sum(1)
  ll = np.logaddexp.reduce(lp)
  w = np.exp(lp - ll)
  gamma = np.zeros((t_len, s))
  xi = np.zeros((s, s))
  for t in range(t_len):
    np.add.at(gamma[t], paths[:, t], w)
    if t < t_len - 1:
      np.add.at(xi, (paths[:, t], paths[:, t + 1]), w)
  best = int(np.argmax(lp))
  return ll, gamma, xi, paths[best], lp[best]


def test_forward_backward_and_viterbi_match_hmmlearn_float64():
  pi, A, B = _params(0)
  obs = np.random.default_rng(1).integers(0, M, T)
  ref = _hmmlearn_model(pi, A, B)
  x = obs[:, None]
  ref_lp, ref_path = ref.decode(x, algorithm="viterbi")
  with jax.enable_x64(True):
    fb = hmm.forward_backward(_lg(pi), _lg(A), jnp.asarray(_log_e(B, obs)))
    vt = hmm.viterbi(_lg(pi), _lg(A), jnp.asarray(_log_e(B, obs)))
    assert fb.posteriors.dtype == jnp.float64
    chex.assert_shape(fb.posteriors, (T, S))
    chex.assert_shape(fb.trans_counts, (S, S))
    chex.assert_shape(vt.path, (T,))
    assert vt.path.dtype == jnp.int32
    np.testing.assert_allclose(float(fb.log_likelihood), ref.score(x), rtol=1e-10, atol=1e-8)
    chex.assert_trees_all_close(np.asarray(fb.posteriors), ref.predict_proba(x), atol=1e-8, rtol=0)
    np.testing.assert_allclose(float(vt.log_prob), ref_lp, rtol=1e-10, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(vt.path), ref_path)
    # Σ_t ξ_t sums to T-1 and its row sums equal Σ_{t<T-1} γ_t.
    np.testing.assert_allclose(float(fb.trans_counts.sum()), T - 1, atol=1e-8)
    np.testing.assert_allclose(np.asarray(fb.trans_counts.sum(1)), np.asarray(fb.posteriors[:-1].sum(0)), atol=1e-8)


def test_forward_backward_and_viterbi_match_hmmlearn_float32():
  pi, A, B = _params(0)
  obs = np.random.default_rng(1).integers(0, M, T)
  ref = _hmmlearn_model(pi, A, B)
  x = obs[:, None]
  args = (_lg(pi, np.float32), _lg(A, np.float32),
          jnp.asarray(_log_e(B, obs), jnp.float32))
  fb = hmm.forward_backward(*args)
  vt = hmm.viterbi(*args)
  assert fb.posteriors.dtype == jnp.float32 and fb.log_likelihood.dtype == jnp.float32
  np.testing.assert_allclose(float(fb.log_likelihood), ref.score(x), rtol=1e-5)
  chex.assert_trees_all_close(np.asarray(fb.posteriors, np.float64), ref.predict_proba(x), atol=2e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(vt.path), ref.decode(x, algorithm="viterbi")[1])


@pytest.mark.parametrize("zeros", [False, True])
def test_brute_force_enumeration(zeros):
  """Tiny case (3 states, 6 steps = 729 paths), optionally with zero probabilities (log 0 = -inf) in π and A."""
  pi, A, B = _params(3)
  if zeros:
    pi = np.array([0.0, 0.4, 0.6])
    A = A.copy()
    A[0] = [0.0, 0.0, 1.0]
    A[1, 1] = 0.0
    A[1] /= A[1].sum()
  obs = np.array([0, 3, 1, 1, 2, 0])
  log_e = _log_e(B, obs)
  ll, gamma, xi, path, best = _brute_force(pi, A, log_e)
  with jax.enable_x64(True):
    fb = hmm.forward_backward(_lg(pi), _lg(A), jnp.asarray(log_e))
    vt = hmm.viterbi(_lg(pi), _lg(A), jnp.asarray(log_e))
    np.testing.assert_allclose(float(fb.log_likelihood), ll, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fb.posteriors), gamma, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fb.trans_counts), xi, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(vt.path), path)
    np.testing.assert_allclose(float(vt.log_prob), best, rtol=1e-12)


def test_extreme_emission_scale_and_impossible_sequence():
  """Adding c_t to every state's log-emission at step t shifts the log-likelihood by Σ c_t and leaves γ unchanged
  (no underflow even for c_t = -1e4 in float32); a sequence of probability 0 gives -inf and zero posteriors."""
  pi, A, B = _params(0)
  obs = np.random.default_rng(1).integers(0, M, T)
  log_e = _log_e(B, obs).astype(np.float32)
  shift = np.random.default_rng(2).uniform(-1e4, -5e3, (T, 1)).astype(np.float32)
  args = _lg(pi, np.float32), _lg(A, np.float32)
  shifted = (log_e + shift).astype(np.float32)  # rounding at |x| ~ 1e4 changes the model slightly: compare
  fs = hmm.forward_backward(*args, jnp.asarray(shifted))  # float32 against float64 on the same rounded input
  with jax.enable_x64(True):
    unshifted = jnp.asarray(shifted.astype(np.float64) - shift.astype(np.float64))
    lp64, la64 = _lg(np.float32(pi)), _lg(np.float32(A))  # the same float32-rounded model, in float64
    ref = hmm.forward_backward(lp64, la64, unshifted)
    np.testing.assert_allclose(float(fs.log_likelihood), float(ref.log_likelihood) + float(shift.sum(dtype=np.float64)),
                               rtol=1e-6)
    chex.assert_trees_all_close(np.asarray(fs.posteriors, np.float64), np.asarray(ref.posteriors), atol=1e-5)
    # and the rounded model is close to the original one
    orig = hmm.forward_backward(lp64, la64, jnp.asarray(log_e.astype(np.float64)))
    chex.assert_trees_all_close(np.asarray(ref.posteriors), np.asarray(orig.posteriors), atol=2e-3)
  # Impossible: state 0 is the only one that can emit at step 5 but state 0 is unreachable (column of A is 0).
  A0 = A.copy()
  A0[:, 0] = 0.0
  A0 /= A0.sum(1, keepdims=True)
  log_e0 = log_e.copy()
  log_e0[5, 1:] = -np.inf
  fz = hmm.forward_backward(_lg([0.0, 0.5, 0.5], np.float32), _lg(A0, np.float32),
                            jnp.asarray(log_e0))
  assert float(fz.log_likelihood) == -np.inf
  assert not np.any(np.isnan(np.asarray(fz.posteriors))) and float(np.abs(fz.posteriors).sum()) == 0.0
  assert not np.any(np.isnan(np.asarray(fz.trans_counts)))
  vz = hmm.viterbi(_lg([0.0, 0.5, 0.5], np.float32), _lg(A0, np.float32), jnp.asarray(log_e0))
  assert float(vz.log_prob) == -np.inf


def test_lengths_vmap_equal_separate_runs_and_no_retrace():
  pi, A, B = _params(5)
  rng = np.random.default_rng(6)
  lengths = np.array([T, 7, 1])
  obs = rng.integers(0, M, (3, T))
  log_e = np.stack([_log_e(B, o) for o in obs])
  log_e[1, 7:] = np.nan  # padding content must not matter
  lp, la = _lg(pi), _lg(A)
  with jax.enable_x64(True):
    fb = jax.vmap(lambda le, n: hmm.forward_backward(lp, la, le, length=n))(jnp.asarray(log_e), jnp.asarray(lengths))
    vt = jax.vmap(lambda le, n: hmm.viterbi(lp, la, le, length=n))(jnp.asarray(log_e), jnp.asarray(lengths))
    chex.assert_shape(fb.posteriors, (3, T, S))
    for i, n in enumerate(lengths):
      one = hmm.forward_backward(lp, la, jnp.asarray(log_e[i, :n]))
      vone = hmm.viterbi(lp, la, jnp.asarray(log_e[i, :n]))
      np.testing.assert_allclose(float(fb.log_likelihood[i]), float(one.log_likelihood), rtol=1e-12)
      np.testing.assert_allclose(np.asarray(fb.posteriors[i, :n]), np.asarray(one.posteriors), atol=1e-12)
      np.testing.assert_allclose(np.asarray(fb.trans_counts[i]), np.asarray(one.trans_counts), atol=1e-12)
      assert float(np.abs(fb.posteriors[i, n:]).sum()) == 0.0
      np.testing.assert_array_equal(np.asarray(vt.path[i, :n]), np.asarray(vone.path))
      assert np.all(np.asarray(vt.path[i, n:]) == -1)
      np.testing.assert_allclose(float(vt.log_prob[i]), float(vone.log_prob), rtol=1e-12)
    assert not np.any(np.isnan(np.asarray(fb.posteriors)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def smooth(log_pi, log_A, log_emission):
    return hmm.forward_backward(log_pi, log_A, log_emission).posteriors

  p0 = smooth(_lg(pi, np.float32), _lg(A, np.float32),
              jnp.asarray(log_e[0], jnp.float32))
  pi2, A2, _ = _params(7)
  p1 = smooth(_lg(pi2, np.float32), _lg(A2, np.float32),
              jnp.asarray(log_e[0], jnp.float32))  # new values, same shapes: no retrace (assert_max_traces)
  assert not np.allclose(np.asarray(p0), np.asarray(p1))


def test_baum_welch_matches_hmmlearn_multiple_sequences():
  pi, A, B = _params(8)
  rng = np.random.default_rng(9)
  lengths = np.array([T, 25, 12])
  obs = rng.integers(0, M, (3, T))
  n_iter = 6
  ref = _hmmlearn_model(pi, A, B, n_iter=n_iter, tol=-np.inf, init_params="", params="ste")
  ref.fit(np.concatenate([obs[i, :n] for i, n in enumerate(lengths)])[:, None], lengths)
  padded = obs.copy()
  padded[1, 25:] = 999  # padding: arbitrary (even out-of-range) symbols
  with jax.enable_x64(True):
    res = hmm.baum_welch(padded, S, M, init=(pi, A, B), max_iter=n_iter, tol=-np.inf, lengths=lengths)
    assert int(res.num_iter) == n_iter and not bool(res.converged)
    chex.assert_shape((res.log_pi, res.log_A, res.log_B, res.log_likelihood_history), ((S,), (S, S), (S, M), (n_iter,)))
    np.testing.assert_allclose(np.exp(res.log_pi), ref.startprob_, atol=1e-9)
    np.testing.assert_allclose(np.exp(res.log_A), ref.transmat_, atol=1e-9)
    np.testing.assert_allclose(np.exp(res.log_B), ref.emissionprob_, atol=1e-9)
    np.testing.assert_allclose(np.asarray(res.log_likelihood_history)[-2:], list(ref.monitor_.history)[-2:],
                               rtol=1e-10)
    x_all = np.concatenate([obs[i, :n] for i, n in enumerate(lengths)])[:, None]
    np.testing.assert_allclose(float(res.log_likelihood), ref.score(x_all, lengths), rtol=1e-10)
    h = np.asarray(res.log_likelihood_history)
    assert np.all(np.diff(h) >= -1e-9)


def test_baum_welch_random_init_monotone_converges_and_float32():
  """Four random starts at once (vmap over the key; float32): every history is non-decreasing, converged starts
  stopped on a gain < tol, and the best start recovers the well-separated emission rows (up to state order)."""
  A = np.array([[0.9, 0.1], [0.2, 0.8]])
  B = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
  _, obs = hmm.sample(jax.random.key(0), np.array([0.5, 0.5]), A, B, 300)
  tol = 1e-3
  res = jax.vmap(lambda k: hmm.baum_welch(obs, 2, 3, key=k, max_iter=200, tol=tol))(jax.random.split(
      jax.random.key(1), 4))
  assert res.log_pi.dtype == jnp.float32
  chex.assert_shape(res.log_likelihood_history, (4, 200))
  res = jax.tree.map(np.asarray, res)
  assert bool(np.any(res.converged))
  for h, n, conv, ll in zip(np.asarray(res.log_likelihood_history), np.asarray(res.num_iter),
                            np.asarray(res.converged), np.asarray(res.log_likelihood)):
    assert np.all(np.isfinite(h[:n])) and np.all(h[n:] == -np.inf)
    assert np.all(np.diff(h[:n]) >= -1e-5 * np.abs(h[:n]).max())  # monotone up to float32 rounding
    assert ll >= h[n - 1] - 1e-3
    if conv:
      assert 2 <= n < 200 and h[n - 1] - h[n - 2] < tol
    else:
      assert n == 200
  best = int(np.argmax(np.asarray(res.log_likelihood)))
  # The maximum-likelihood fit scores at least as well as the true parameters, and is close to them.
  ll_true = hmm.forward_backward(_lg([0.5, 0.5], np.float32), _lg(A, np.float32),
                                 jnp.asarray(np.log(B)[:, np.asarray(obs)].T.astype(np.float32))).log_likelihood
  assert float(res.log_likelihood[best]) >= float(ll_true) - 1e-3
  Bh = np.exp(np.asarray(res.log_B[best]))
  Bh = Bh[np.argsort(Bh[:, 0])[::-1]]
  np.testing.assert_allclose(Bh, B, atol=0.15)


def test_sample_deterministic_chain():
  pi = np.array([0.0, 1.0, 0.0])
  A = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # 1 -> 2 -> 0 -> 1 ...
  B = np.eye(3)
  states, obs = jax.vmap(lambda k: hmm.sample(k, pi, A, B, 7))(jax.random.split(jax.random.key(0), 2))
  chex.assert_shape((states, obs), ((2, 7), (2, 7)))
  np.testing.assert_array_equal(np.asarray(states[0]), [1, 2, 0, 1, 2, 0, 1])
  np.testing.assert_array_equal(np.asarray(obs), np.asarray(states))


def test_bad_inputs():
  lp, la, le = jnp.zeros(3), jnp.zeros((3, 3)), jnp.zeros((5, 3))
  with pytest.raises(ValueError, match=r"log_A must have shape \[S, S\]"):
    hmm.forward_backward(lp, jnp.zeros((3, 2)), le)
  with pytest.raises(ValueError, match=r"log_emission must have shape \[T, S\].*\(5, 4\)"):
    hmm.viterbi(lp, la, jnp.zeros((5, 4)))
  with pytest.raises(ValueError, match="log_pi must have shape"):
    hmm.forward_backward(jnp.zeros((1, 3)), la, le)
  with pytest.raises(ValueError, match="length must lie in"):
    hmm.forward_backward(lp, la, le, length=6)
  with pytest.raises(ValueError, match="floating-point"):
    hmm.forward_backward(lp, la, jnp.zeros((5, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"obs symbols must lie in \[0, num_symbols=4\)"):
    hmm.baum_welch(np.array([0, 1, 4]), 2, 4, key=jax.random.key(0))
  with pytest.raises(ValueError, match="obs must have shape"):
    hmm.baum_welch(np.zeros((2, 2, 2), int), 2, 4, key=jax.random.key(0))
  with pytest.raises(ValueError, match="lengths must have shape"):
    hmm.baum_welch(np.zeros((2, 5), int), 2, 4, key=jax.random.key(0), lengths=[5, 5, 5])
  with pytest.raises(ValueError, match="needs key="):
    hmm.baum_welch(np.zeros(5, int), 2, 4)
  with pytest.raises(ValueError, match="init A must hold finite non-negative"):
    hmm.baum_welch(np.zeros(5, int), 2, 2, init=(np.ones(2) / 2, np.array([[1.2, -0.2], [0.5, 0.5]]), np.eye(2)))
  with pytest.raises(ValueError, match="rows must sum to 1"):
    hmm.sample(jax.random.key(0), np.ones(2) / 2, np.ones((2, 2)), np.eye(2), 4)


@pytest.mark.slow  # suite time; `python -m experiments.classical --flagfile=experiments/configs/classical_smoke.flags` runs it
def test_worked_example_quick(tmp_path):
  from research.methods.classical import hmm as example
  out = example.run(str(tmp_path), quick=True)
  assert out["viterbi_accuracy"] > 0.75 and out["posterior_accuracy"] > 0.75
  assert out["bw_monotone"]
  assert abs(out["learned_emission_loaded_6"] - 0.5) < 0.2
  for f in out["figures"]:
    assert (tmp_path / f).stat().st_size > 1000
