"""Linear-chain CRF and Huffman hierarchical softmax against brute-force numpy float64 references."""

import heapq
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import sequence as S

# --------------------------------------------------------------------------------------------------- CRF brute force


def _score_np(e, y, trans, start, end):
  s = start[y[0]] + end[y[-1]] + sum(e[t, y[t]] for t in range(len(y)))
  return s + sum(trans[y[t - 1], y[t]] for t in range(1, len(y)))


def _brute(e, length, trans, start, end):
  """All K^L sequences of one example: (sequences [N, L], scores [N], log Z, marginals [L, K])."""
  k = e.shape[-1]
  seqs = np.array(list(itertools.product(range(k), repeat=length)), dtype=np.int64).reshape(-1, length)
  scores = np.array([_score_np(e, y, trans, start, end) for y in seqs])
  m = scores.max()
  log_z = m + np.log(np.exp(scores - m).sum())
  p = np.exp(scores - log_z)
  marg = np.zeros((length, k))
  for y, pi in zip(seqs, p):
    marg[np.arange(length), y] += pi
  return seqs, scores, log_z, marg


def _crf_problem(seed, b, t, k, lengths):
  rs = np.random.RandomState(seed)
  e = rs.randn(b, t, k)
  trans, start, end = rs.randn(k, k), rs.randn(k), rs.randn(k)
  mask = np.arange(t)[None] < np.asarray(lengths)[:, None]
  tags = rs.randint(0, k, size=(b, t))
  return e, mask, trans, start, end, tags


CASES = [(0, 3, 4, 3, [4, 2, 1]), (1, 2, 1, 3, [1, 1]), (2, 4, 3, 2, [3, 1, 2, 3]), (3, 2, 4, 1, [4, 3])]


@pytest.mark.parametrize("seed,b,t,k,lengths", CASES)
def test_crf_partition_likelihood_and_viterbi_vs_brute_force(seed, b, t, k, lengths):
  e, mask, trans, start, end, tags = _crf_problem(seed, b, t, k, lengths)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  args = (f32(e), jnp.asarray(mask), f32(trans), f32(start), f32(end))
  log_z = np.asarray(S.crf_log_partition(*args))
  ll = np.asarray(S.crf_log_likelihood(args[0], jnp.asarray(tags), *args[1:]))
  vtags, vscore = map(np.asarray, S.crf_viterbi_decode(*args))
  assert vtags.dtype == np.int32 and vtags.shape == (b, t) and vscore.shape == (b,)
  for i, length in enumerate(lengths):
    seqs, scores, bz, _ = _brute(e[i, :length], length, trans, start, end)
    np.testing.assert_allclose(log_z[i], bz, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ll[i], _score_np(e[i], tags[i, :length], trans, start, end) - bz, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(vtags[i, :length], seqs[np.argmax(scores)])
    np.testing.assert_array_equal(vtags[i, length:], 0)
    np.testing.assert_allclose(vscore[i], scores.max(), rtol=1e-5, atol=1e-5)


def test_crf_probabilities_of_all_sequences_sum_to_one():
  t, k = 3, 3
  e, mask, trans, start, end, _ = _crf_problem(5, 1, t, k, [t])
  seqs = np.array(list(itertools.product(range(k), repeat=t)), dtype=np.int32)
  n = len(seqs)
  ll = S.crf_log_likelihood(jnp.asarray(np.repeat(e, n, 0), jnp.float32), jnp.asarray(seqs),
                            jnp.ones((n, t), bool), *(jnp.asarray(x, jnp.float32) for x in (trans, start, end)))
  np.testing.assert_allclose(np.exp(np.asarray(ll, np.float64)).sum(), 1.0, atol=1e-5)
  # with padding: the 2-step sequences of a length-2 row (values at the padded step ignored) also sum to one
  seqs2 = np.array(list(itertools.product(range(k), repeat=2)), dtype=np.int32)
  seqs2 = np.concatenate([seqs2, np.full((len(seqs2), 1), 2, np.int32)], 1)
  mask2 = np.tile(np.array([[True, True, False]]), (len(seqs2), 1))
  ll2 = S.crf_log_likelihood(jnp.asarray(np.repeat(e, len(seqs2), 0), jnp.float32), jnp.asarray(seqs2),
                             jnp.asarray(mask2), *(jnp.asarray(x, jnp.float32) for x in (trans, start, end)))
  np.testing.assert_allclose(np.exp(np.asarray(ll2, np.float64)).sum(), 1.0, atol=1e-5)


def test_crf_gradient_is_gold_minus_marginals():
  lengths = [4, 2, 1]
  e, mask, trans, start, end, tags = _crf_problem(7, 3, 4, 3, lengths)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  g = jax.grad(lambda em: S.crf_log_likelihood(em, jnp.asarray(tags), jnp.asarray(mask), f32(trans), f32(start),
                                               f32(end)).sum())(f32(e))
  g = np.asarray(g)
  for i, length in enumerate(lengths):
    _, _, _, marg = _brute(e[i, :length], length, trans, start, end)
    gold = np.eye(3)[tags[i, :length]]
    np.testing.assert_allclose(g[i, :length], gold - marg, atol=1e-5)
    np.testing.assert_array_equal(g[i, length:], 0.0)


def test_crf_jit_and_vmap():
  e, mask, trans, start, end, tags = _crf_problem(9, 3, 4, 3, [4, 3, 1])
  args = [jnp.asarray(x, jnp.float32) for x in (e, trans, start, end)]
  em, tr, st, en = args
  tg, mk = jnp.asarray(tags), jnp.asarray(mask)
  eager_ll = S.crf_log_likelihood(em, tg, mk, tr, st, en)
  eager_tags, eager_score = S.crf_viterbi_decode(em, mk, tr, st, en)
  np.testing.assert_allclose(jax.jit(S.crf_log_likelihood)(em, tg, mk, tr, st, en), eager_ll, rtol=1e-6)
  jt, js = jax.jit(S.crf_viterbi_decode)(em, mk, tr, st, en)
  np.testing.assert_array_equal(jt, eager_tags)
  np.testing.assert_allclose(js, eager_score, rtol=1e-6)
  # vmap over a leading "group" axis, with per-group transitions
  stack = lambda x: jnp.stack([x, x * 0.5])
  v_ll = jax.vmap(S.crf_log_likelihood)(stack(em), jnp.stack([tg, tg]), jnp.stack([mk, mk]), stack(tr), stack(st),
                                        stack(en))
  np.testing.assert_allclose(v_ll[0], eager_ll, rtol=1e-5)
  np.testing.assert_allclose(v_ll[1], S.crf_log_likelihood(em * 0.5, tg, mk, tr * 0.5, st * 0.5, en * 0.5), rtol=1e-5)
  v_tags, _ = jax.vmap(S.crf_viterbi_decode)(stack(em), jnp.stack([mk, mk]), stack(tr), stack(st), stack(en))
  np.testing.assert_array_equal(v_tags[0], eager_tags)


def test_crf_shape_errors():
  e = jnp.zeros((2, 3, 4))
  mask, tr, st, en = jnp.ones((2, 3), bool), jnp.zeros((4, 4)), jnp.zeros(4), jnp.zeros(4)
  with pytest.raises(ValueError, match="transitions"):
    S.crf_log_partition(e, mask, jnp.zeros((3, 4)), st, en)
  with pytest.raises(ValueError, match="mask"):
    S.crf_log_partition(e, jnp.ones((2, 4), bool), tr, st, en)
  with pytest.raises(ValueError, match="tags"):
    S.crf_log_likelihood(e, jnp.zeros((2, 2), jnp.int32), mask, tr, st, en)
  with pytest.raises(ValueError, match="left-aligned"):
    S.crf_viterbi_decode(e, jnp.array([[True, False, True], [True, True, True]]), tr, st, en)


# --------------------------------------------------------------------------------------------- hierarchical softmax


def _huffman_cost_np(counts):
  """Optimal expected code length * total count, by an independent heapq construction (sum of merge weights)."""
  heap = [float(c) for c in counts]
  heapq.heapify(heap)
  cost = 0.0
  while len(heap) > 1:
    a, b = heapq.heappop(heap), heapq.heappop(heap)
    cost += a + b
    heapq.heappush(heap, a + b)
  return cost


COUNTS = [np.array([5, 1]), np.array([1, 1, 1, 1]), np.array([50, 3, 3, 10, 1, 7, 7, 2]),
          np.random.RandomState(0).randint(1, 1000, size=37)]


@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: f"K{len(c)}")
def test_huffman_tree_is_optimal_prefix_code(counts):
  paths, codes, depth = S.huffman_tree(counts)
  k = len(counts)
  assert paths.dtype == np.int32 and codes.dtype == np.int32 and depth.dtype == np.int32
  assert paths.shape == codes.shape == (k, depth.max())
  words = [tuple(codes[i, :depth[i]]) for i in range(k)]
  assert len(set(words)) == k
  for a, b in itertools.permutations(range(k), 2):
    assert words[b][:len(words[a])] != words[a], (a, b)  # prefix-free
  np.testing.assert_allclose(np.sum(2.0 ** -depth), 1.0)  # full binary tree (Kraft equality)
  # paths: root first, padded with -1, internal-node ids in [0, K-2], same code prefix <=> same node
  assert np.all(paths[:, 0] == k - 2)
  valid = np.arange(paths.shape[1])[None] < depth[:, None]
  assert np.all(paths[~valid] == -1) and np.all((paths[valid] >= 0) & (paths[valid] <= k - 2))
  node_of = {}
  for i in range(k):
    for d in range(depth[i]):
      assert node_of.setdefault(words[i][:d], paths[i, d]) == paths[i, d]
  assert len(set(node_of.values())) == len(node_of) == k - 1
  assert np.sum(counts * depth) == pytest.approx(_huffman_cost_np(counts))
  # frequent labels get codes no longer than rarer ones
  for a, b in itertools.permutations(range(k), 2):
    if counts[a] > counts[b]:
      assert depth[a] <= depth[b]
  # deterministic
  for x, y in zip(S.huffman_tree(counts), (paths, codes, depth)):
    np.testing.assert_array_equal(x, y)


def test_huffman_tree_errors():
  with pytest.raises(ValueError, match="K >= 2"):
    S.huffman_tree([3])
  with pytest.raises(ValueError, match="non-negative"):
    S.huffman_tree([3, -1])


def _hs_problem(counts, b=5, h=6, seed=0, scale=2.0):
  rs = np.random.RandomState(seed)
  tree = S.huffman_tree(counts)
  hidden = jnp.asarray(rs.randn(b, h), jnp.float32)
  w = jnp.asarray(rs.randn(len(counts) - 1, h) * scale, jnp.float32)
  return hidden, w, tuple(jnp.asarray(x) for x in tree)


@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: f"K{len(c)}")
def test_hierarchical_log_softmax_normalised_and_nll(counts):
  hidden, w, tree = _hs_problem(counts)
  logp = S.hierarchical_log_softmax(hidden, w, *tree)
  assert logp.shape == (hidden.shape[0], len(counts))
  np.testing.assert_allclose(np.exp(np.asarray(logp, np.float64)).sum(-1), 1.0, atol=1e-6)
  labels = jnp.asarray(np.random.RandomState(1).randint(0, len(counts), size=hidden.shape[0]))
  nll = S.hierarchical_nll(hidden, labels, w, *tree)
  np.testing.assert_allclose(nll, -np.asarray(logp)[np.arange(len(labels)), labels], rtol=1e-5, atol=1e-5)
  # log_softmax of the log-probabilities is itself (normalised), so the gathered -log_softmax row matches too
  np.testing.assert_allclose(nll, -jax.nn.log_softmax(logp)[jnp.arange(len(labels)), labels], atol=1e-5)
  # jit-compatible, and the nll gradient only touches nodes on the label's path
  np.testing.assert_allclose(jax.jit(S.hierarchical_nll)(hidden, labels, w, *tree), nll, rtol=1e-6)
  gw = jax.grad(lambda w_: S.hierarchical_nll(hidden[:1], labels[:1], w_, *tree).sum())(w)
  on_path = np.zeros(len(counts) - 1, bool)
  paths, _, depth = map(np.asarray, tree)
  on_path[paths[int(labels[0]), :depth[int(labels[0])]]] = True
  assert np.all(np.asarray(gw)[~on_path] == 0)


def test_hierarchical_softmax_k2_is_logistic_regression():
  hidden, w, tree = _hs_problem(np.array([3, 8]))
  codes = np.asarray(tree[1])
  logp = np.asarray(S.hierarchical_log_softmax(hidden, w, *tree))
  pos = int(np.argmax(codes[:, 0]))  # the label on the 1-branch
  z = np.asarray(hidden, np.float64) @ np.asarray(w, np.float64)[0]
  np.testing.assert_allclose(np.exp(logp[:, pos]), 1 / (1 + np.exp(-z)), rtol=1e-5)
  np.testing.assert_allclose(np.exp(logp[:, 1 - pos]), 1 / (1 + np.exp(z)), rtol=1e-5)


def test_hierarchical_top_k_matches_lax_top_k():
  counts = COUNTS[3]
  hidden, w, tree = _hs_problem(counts)
  vals, idx = S.hierarchical_top_k(hidden, 5, w, *tree)
  ref_vals, ref_idx = jax.lax.top_k(S.hierarchical_log_softmax(hidden, w, *tree), 5)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(vals, ref_vals)
  with pytest.raises(ValueError, match="k must be"):
    S.hierarchical_top_k(hidden, 0, w, *tree)


def test_hierarchical_shape_errors():
  hidden, w, tree = _hs_problem(np.array([1, 2, 3, 4]))
  with pytest.raises(ValueError, match="node_weights"):
    S.hierarchical_log_softmax(hidden, w[:2], *tree)
  with pytest.raises(ValueError, match="labels"):
    S.hierarchical_nll(hidden, jnp.zeros(3, jnp.int32), w, *tree)
