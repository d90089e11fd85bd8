"""DPP sampling, k-DPP sampling, log-probabilities and marginal kernel (research.classical.dpp) against brute-force
enumeration of all 2^N subsets (numpy) for N = 5."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.classical import dpp

N = 5
NUM_SAMPLES = 20_000
SUBSETS = np.array(list(itertools.product([False, True], repeat=N)))  # [32, N]


def _kernel(seed: int = 0, rank: int = N) -> np.ndarray:
  rng = np.random.default_rng(seed)
  B = rng.normal(size=(N, rank))
  return B @ B.T / rank


def _det(L: np.ndarray, m: np.ndarray) -> float:
  return float(np.linalg.det(L[np.ix_(m, m)])) if m.any() else 1.0


# L is an argument (traced), so one compilation serves every kernel of shape [N, N].
_sample_many = jax.jit(jax.vmap(dpp.sample, in_axes=(0, None)))


@functools.partial(jax.jit, static_argnames="k")
def _sample_k_many(keys, L, k):
  return jax.vmap(lambda key: dpp.sample_k(key, L, k))(keys)


def _keys(seed: int) -> jax.Array:
  return jax.random.split(jax.random.key(seed), NUM_SAMPLES)


def _assert_frequencies(freq: np.ndarray, prob: np.ndarray, z: float = 4.5) -> None:
  """Empirical frequencies of ``NUM_SAMPLES`` draws within ``z`` binomial standard errors of ``prob``."""
  se = np.sqrt(np.clip(prob * (1 - prob), 1e-12, None) / NUM_SAMPLES)
  worst = np.max(np.abs(freq - prob) / se)
  assert worst < z, (worst, freq, prob)


def test_marginal_kernel_matches_definition():
  with jax.enable_x64(True):
    L = _kernel()
    K = dpp.marginal_kernel(L)
    chex.assert_shape(K, (N, N))
    chex.assert_trees_all_close(np.asarray(K), L @ np.linalg.inv(L + np.eye(N)), atol=1e-12)
    # Brute force: P(i in Y) = sum of P(Y) over Y containing i.
    p = np.array([_det(L, m) for m in SUBSETS]) / np.linalg.det(L + np.eye(N))
    chex.assert_trees_all_close(np.diag(np.asarray(K)), (p[:, None] * SUBSETS).sum(0), atol=1e-12)
  K32 = dpp.marginal_kernel(jnp.asarray(L, jnp.float32))
  assert K32.dtype == jnp.float32
  chex.assert_trees_all_close(np.asarray(K32), np.asarray(K), atol=1e-5)


def test_log_prob_normalised_and_matches_determinants():
  with jax.enable_x64(True):
    L = _kernel(1)
    lp = dpp.log_prob(L, SUBSETS)
    chex.assert_shape(lp, (2 ** N,))
    assert abs(float(jax.scipy.special.logsumexp(lp))) < 1e-10
    ref = np.log([_det(L, m) for m in SUBSETS]) - np.log(np.linalg.det(L + np.eye(N)))
    chex.assert_trees_all_close(np.asarray(lp), ref, atol=1e-10)
    # Batch shapes broadcast; a set outside the support of a rank-2 kernel has probability 0 (-inf, not NaN).
    chex.assert_shape(dpp.log_prob(L, SUBSETS.reshape(4, 8, N)), (4, 8))
    low = _kernel(2, rank=2)
    lp_low = np.asarray(dpp.log_prob(low, SUBSETS))
    assert np.all(np.isneginf(lp_low[SUBSETS.sum(1) > 2])) and not np.any(np.isnan(lp_low))
    assert abs(float(jax.scipy.special.logsumexp(lp_low))) < 1e-8


def test_sample_inclusion_and_pair_frequencies_match_marginal_kernel():
  with jax.enable_x64(True):
    L = _kernel(3)
    Y = np.asarray(_sample_many(_keys(0), L))
    chex.assert_shape(Y, (NUM_SAMPLES, N))
    assert Y.dtype == bool
    K = L @ np.linalg.inv(L + np.eye(N))
    _assert_frequencies(Y.mean(0), np.diag(K))
    iu = np.triu_indices(N, 1)
    pair_freq = (Y[:, :, None] & Y[:, None, :]).mean(0)[iu]
    pair_prob = (np.diag(K)[:, None] * np.diag(K)[None, :] - K ** 2)[iu]  # 2x2 minors det(K_{ij})
    _assert_frequencies(pair_freq, pair_prob)
    # Whole-subset frequencies against P(Y) = det(L_Y) / det(L + I).
    code = Y @ (1 << np.arange(N)[::-1])
    freq = np.bincount(code, minlength=2 ** N) / NUM_SAMPLES
    _assert_frequencies(freq, np.exp(np.asarray(dpp.log_prob(L, SUBSETS))), z=5.0)


def test_sample_of_low_rank_kernel_never_exceeds_rank():
  with jax.enable_x64(True):
    L = _kernel(4, rank=2)
    Y = np.asarray(_sample_many(_keys(1), L))
    assert Y.sum(1).max() == 2
    _assert_frequencies(Y.mean(0), np.diag(L @ np.linalg.inv(L + np.eye(N))))


@pytest.mark.parametrize("rank", [N, 2])
def test_sample_k_has_exact_size_and_k_dpp_marginals(rank):
  k = 2
  with jax.enable_x64(True):
    L = _kernel(5, rank=rank)
    Y = np.asarray(_sample_k_many(_keys(2), L, k))
    assert np.all(Y.sum(1) == k)
    sets = SUBSETS[SUBSETS.sum(1) == k]
    p = np.array([_det(L, m) for m in sets])
    p /= p.sum()
    _assert_frequencies(Y.mean(0), (p[:, None] * sets).sum(0))
    code = Y @ (1 << np.arange(N)[::-1])
    freq = np.bincount(code, minlength=2 ** N)[sets @ (1 << np.arange(N)[::-1])] / NUM_SAMPLES
    _assert_frequencies(freq, p, z=5.0)


def test_elementary_symmetric_polynomials_brute_force():
  with jax.enable_x64(True):
    w = np.array([0.5, 2.0, 0.0, 3.0, 1.5])
    E = np.asarray(dpp.elementary_symmetric_polynomials(w, 3))
    chex.assert_shape(E, (N + 1, 4))
    for n in range(N + 1):
      for l in range(4):
        ref = sum(np.prod(c) for c in itertools.combinations(w[:n], l)) if l <= n else 0.0
        assert abs(E[n, l] - ref) < 1e-12 * max(1.0, ref), (n, l, E[n, l], ref)


def test_sample_jit_compiles_once_and_float32():
  L = jnp.asarray(_kernel(6), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draw(key, L):
    return dpp.sample(key, L), dpp.sample_k(key, L, 3)

  for seed in range(3):
    y, yk = draw(jax.random.key(seed), L)
    chex.assert_shape((y, yk), (N,))
    assert int(yk.sum()) == 3


def test_bad_kernels_raise():
  L = _kernel(7)
  with pytest.raises(ValueError, match="positive semi-definite"):
    dpp.sample(jax.random.key(0), L - 3 * np.eye(N) * np.linalg.eigvalsh(L)[-1])
  with pytest.raises(ValueError, match="symmetric"):
    dpp.marginal_kernel(L + np.triu(np.ones((N, N)), 1))
  with pytest.raises(ValueError, match=r"square kernel matrix \[N, N\].*\(5, 4\)"):
    dpp.log_prob(L[:, :4], SUBSETS)
  with pytest.raises(ValueError, match="exceeds the numerical rank 2"):
    dpp.sample_k(jax.random.key(0), _kernel(8, rank=2), 3)
  with pytest.raises(ValueError, match=r"k must be a Python int in \[0, N=5\]"):
    dpp.sample_k(jax.random.key(0), L, 6)
  with pytest.raises(ValueError, match=r"subset_mask must have shape \[..., N=5\]"):
    dpp.log_prob(L, SUBSETS[:, :3])
  with pytest.raises(ValueError, match="boolean"):
    dpp.log_prob(L, SUBSETS.astype(int))
  with pytest.raises(ValueError, match="finite"):
    dpp.sample(jax.random.key(0), np.full((N, N), np.nan))


@pytest.mark.slow  # the default run covers it: tests/classical/test_classical_cli.py runs this example
def test_worked_example_quick(tmp_path):
  from research.methods.classical import dpp as example
  out = example.run(str(tmp_path), quick=True)
  assert out["figures"] and all((tmp_path / f).stat().st_size > 1000 for f in out["figures"])
  # The k-DPP spreads its points: larger minimum distances, larger log det, fewer close pairs than uniform.
  assert out["dpp_mean_min_dist"] > out["uniform_mean_min_dist"]
  assert out["dpp_mean_logdet"] > out["uniform_mean_logdet"]
  assert out["dpp_mean_close_pairs"] < out["uniform_mean_close_pairs"]
  assert out["dpp_sizes_exact"] is True
