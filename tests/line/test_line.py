"""LINE (Tang et al. 2015): alias sampling, the per-edge loss, the KL form and edge-sampling unbiasedness, training,
the probe/metrics against scikit-learn, resume, and the ``experiments.line`` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from scipy import stats

from research.models.graph.line import LINE
from research.ops.alias import alias_probs, alias_sample, alias_sample_np, alias_table
from research.train import line as line_train
from research.train import loop
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "line_smoke.flags")


def _graph(senders, receivers, weight=None, num_nodes=None, labels=None):
  """A NodeGraph-like object with the field names of ``research.data.graphs.NodeGraph``."""
  senders, receivers = np.asarray(senders, np.int32), np.asarray(receivers, np.int32)
  n = num_nodes or int(max(senders.max(), receivers.max()) + 1)
  weight = np.ones(senders.shape, np.float32) if weight is None else np.asarray(weight, np.float32)
  labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
  return types.SimpleNamespace(senders=senders, receivers=receivers, edge_weight=weight, labels=labels,
                               features=np.zeros((n, 1), np.float32), num_classes=int(labels.max()) + 1)


def _two_cliques(size=8):
  s, r = [], []
  for c in (0, size):
    for i in range(c, c + size):
      for j in range(c, c + size):
        if i != j:
          s.append(i)
          r.append(j)
  return _graph(s, r, labels=np.repeat([0, 1], size))


def _weighted_graph():
  """6 nodes, directed weighted edges (both directions of 5 undirected edges, asymmetric weights)."""
  und = [(0, 1, 1.0), (0, 2, 3.0), (1, 2, 0.5), (2, 3, 2.0), (3, 4, 1.5), (4, 5, 4.0), (5, 0, 1.0)]
  s = [a for a, b, _ in und] + [b for a, b, _ in und]
  r = [b for a, b, _ in und] + [a for a, b, _ in und]
  w = [x for _, _, x in und] + [2 * x for _, _, x in und]
  return _graph(s, r, w)


# ------------------------------------------------------------------------------------------------- alias


@pytest.mark.parametrize("probs", [[0.1, 0.2, 0.3, 0.4], [1.0], [0, 0, 5, 0], np.ones(7),
                                   np.random.default_rng(0).gamma(0.3, size=50) * (np.arange(50) % 5 != 0)])
def test_alias_table_invariants(probs):
  prob, alias = alias_table(probs)
  p = np.asarray(probs, np.float64) / np.sum(probs)
  assert prob.dtype == np.float32 and alias.dtype == np.int32 and prob.shape == alias.shape == p.shape
  assert np.all((prob >= 0) & (prob <= 1)) and np.all((alias >= 0) & (alias < len(p)))
  np.testing.assert_allclose(alias_probs(prob, alias), p, atol=1e-7)
  # A zero-probability outcome is never anyone's alias and never keeps its own column.
  zero = np.flatnonzero(p == 0)
  assert np.all(prob[zero] == 0) and not np.isin(alias[prob < 1], zero).any()


def test_alias_sampling_chi_square_jax_and_numpy():
  probs = np.random.default_rng(1).dirichlet(np.full(20, 0.7))
  prob, alias = alias_table(probs)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draw(key):
    return alias_sample(key, prob, alias, (100_000,))

  jax_draws = np.concatenate([np.asarray(draw(jax.random.key(i))) for i in range(2)])  # second call: no retrace
  np_draws = alias_sample_np(np.random.default_rng(2), prob, alias, 200_000)
  for x in (jax_draws, np_draws):
    assert x.dtype == np.int32 and x.shape == (200_000,)
    counts = np.bincount(x, minlength=20)
    chi2 = np.sum((counts - 200_000 * probs) ** 2 / (200_000 * probs))
    assert stats.chi2.sf(chi2, df=19) > 1e-3, chi2
  # The test can fail: a slightly wrong distribution is rejected.
  wrong = np.roll(probs, 1)
  counts = np.bincount(np_draws, minlength=20)
  assert stats.chi2.sf(np.sum((counts - 2e5 * wrong) ** 2 / (2e5 * wrong)), df=19) < 1e-6


@pytest.mark.parametrize("bad, match", [([[0.5, 0.5]], r"1-D .* shape \(1, 2\)"), ([], r"shape \(0,\)"),
                                        ([0.5, -1.0], r"probs\[1\] = -1"), ([np.nan, 1.0], r"probs\[0\] = nan"),
                                        ([0.0, 0.0], "sum to 0")])
def test_alias_table_bad_input(bad, match):
  with pytest.raises(ValueError, match=match):
    alias_table(bad)
  with pytest.raises(ValueError, match="same non-zero length"):
    alias_sample(jax.random.key(0), np.ones(3, np.float32), np.zeros(2, np.int32), (4,))


# ------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("order", ["first", "second"])
def test_loss_matches_numpy_formula(order):
  n, d, b, k = 11, 6, 9, 4
  model = LINE(n, d, order)
  rng = np.random.default_rng(3)
  params = {"vertex": rng.normal(size=(n, d)).astype(np.float32)}
  if order == "second":
    params["context"] = rng.normal(size=(n, d)).astype(np.float32)
  src, tgt, neg = rng.integers(0, n, b), rng.integers(0, n, b), rng.integers(0, n, (b, k))
  loss = model.apply({"params": params}, jnp.asarray(src), jnp.asarray(tgt), jnp.asarray(neg))
  u = params["vertex"].astype(np.float64)
  t = u if order == "first" else params["context"].astype(np.float64)
  expected = np.zeros(b)
  for i in range(b):  # -log sigma(u_s . t_t) - sum_k log sigma(-u_s . t_n)
    expected[i] = np.log1p(np.exp(-u[src[i]] @ t[tgt[i]]))
    for j in range(k):
      expected[i] += np.log1p(np.exp(u[src[i]] @ t[neg[i, j]]))
  chex.assert_shape(loss, (b,))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_init_follows_the_reference_code_and_bad_order_is_clear():
  params = LINE(500, 16, "second").init(jax.random.key(0), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
                                        jnp.zeros((1, 2), jnp.int32))["params"]
  v = np.asarray(params["vertex"])
  assert np.abs(v).max() <= 0.5 / 16 and np.abs(v).max() > 0.45 / 16 and abs(v.mean()) < 1e-3
  chex.assert_trees_all_close(params["context"], jnp.zeros((500, 16)))
  assert set(LINE(5, 4, "first").init(jax.random.key(0), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
                                      jnp.zeros((1, 2), jnp.int32))["params"]) == {"vertex"}
  with pytest.raises(ValueError, match="order='third'"):
    LINE(5, 4, "third").init(jax.random.key(0), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
                             jnp.zeros((1, 2), jnp.int32))


def test_kl_form_reduces_to_o2_and_edge_sampling_is_unbiased():
  g = _weighted_graph()
  n, d = 6, 3
  w = np.zeros((n, n))
  np.add.at(w, (g.senders, g.receivers), g.edge_weight)
  deg, total = w.sum(1), w.sum()
  sampler = line_train.EdgeSampler(g, 8, 2, seed=0)
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    params = {"vertex": jnp.asarray(rng.normal(size=(n, d))), "context": jnp.asarray(rng.normal(size=(n, d)))}

    def log_p2(p):  # [N, N]: log p2(v_j | v_i) = log softmax_j(u'_j . u_i)
      return jax.nn.log_softmax(p["vertex"] @ p["context"].T, axis=1)

    def o2(p):
      return -jnp.sum(w * log_p2(p))

    def o_kl(p):  # sum_i lambda_i KL(p^(.|i) || p2(.|i)), lambda_i = d_i
      p_hat = w / deg[:, None]
      terms = jnp.where(w > 0, p_hat * (jnp.log(jnp.where(w > 0, p_hat, 1.0)) - log_p2(p)), 0.0)
      return jnp.sum(deg * terms.sum(1))

    entropy = -np.sum(np.where(w > 0, w / deg[:, None] * np.log(np.where(w > 0, w / deg[:, None], 1)), 0), 1)
    np.testing.assert_allclose(o_kl(params) - o2(params), -np.sum(deg * entropy), rtol=1e-10)
    chex.assert_trees_all_close(jax.grad(o_kl)(params), jax.grad(o2)(params), rtol=1e-10, atol=1e-12)

    # Edge sampling: E_{e ~ alias table}[grad(-log p2(t_e|s_e))] = grad(O2) / W (unweighted per-edge gradients).
    q = sampler.edge_probs
    np.testing.assert_allclose(q, g.edge_weight / g.edge_weight.sum(), atol=1e-7)
    per_edge = jax.vmap(lambda s, t: jax.grad(lambda p: -log_p2(p)[s, t])(params))(g.senders, g.receivers)
    expected_grad = jax.tree.map(lambda x: jnp.tensordot(q, x, axes=1), per_edge)
    chex.assert_trees_all_close(expected_grad, jax.tree.map(lambda x: x / total, jax.grad(o2)(params)), atol=1e-6)

  # Negative sampling + the real sampler: the mean gradient of the model's batch loss estimates grad(O_NS) / W,
  # O_NS = sum_ij w_ij [-log sigma(u'_j.u_i) - K sum_n P_n(n) log sigma(-u'_n.u_i)], P_n ∝ d^0.75 (dense numpy).
  k = 3
  params32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  model = LINE(n, d, "second")
  sampler = line_train.EdgeSampler(g, 4096, k, seed=1)
  grad_batch = jax.jit(jax.grad(lambda p, b: jnp.mean(model.apply({"params": p}, b["source"], b["target"],
                                                                  b["negatives"]))))
  batches = 50
  mc = jax.tree.map(lambda *x: sum(x) / batches, *[grad_batch(params32, next(sampler)) for _ in range(batches)])
  pn = deg ** 0.75 / np.sum(deg ** 0.75)
  np.testing.assert_allclose(sampler.negative_probs, pn, atol=1e-7)
  u, c = np.asarray(params["vertex"]), np.asarray(params["context"])
  sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
  gu, gc = np.zeros_like(u), np.zeros_like(c)
  for i in range(n):
    for j in range(n):
      if w[i, j] == 0:
        continue
      a = -(1 - sig(u[i] @ c[j])) * w[i, j] / total  # d/dx of -log sigma(x)
      gu[i] += a * c[j]
      gc[j] += a * u[i]
      for m in range(n):
        bneg = k * pn[m] * sig(u[i] @ c[m]) * w[i, j] / total  # d/dx of -log sigma(-x)
        gu[i] += bneg * c[m]
        gc[m] += bneg * u[i]
  for got, ref in ((mc["vertex"], gu), (mc["context"], gc)):
    assert np.linalg.norm(np.asarray(got) - ref) < 0.02 * np.linalg.norm(ref), (got, ref)


# ------------------------------------------------------------------------------------------------- data


def test_edge_sampler_frequencies_state_and_errors():
  g = _weighted_graph()
  s = line_train.EdgeSampler(g, 1000, 5, seed=7)
  batches = [next(s) for _ in range(100)]
  b = batches[0]
  assert set(b) == {"source", "target", "negatives"} and b["negatives"].shape == (1000, 5)
  assert all(x.dtype == np.int32 for x in b.values())
  edges = set(zip(g.senders.tolist(), g.receivers.tolist()))
  assert all((a, c) in edges for a, c in zip(b["source"], b["target"]))
  # Edge pairs drawn in proportion to the weight, negatives from d^0.75 (chi-square).
  w = {(a, c): x for a, c, x in zip(g.senders, g.receivers, g.edge_weight)}
  keys = sorted(w)
  pairs = np.concatenate([np.stack([x["source"], x["target"]], 1) for x in batches])
  counts = np.array([np.sum((pairs[:, 0] == a) & (pairs[:, 1] == c)) for a, c in keys])
  expect = np.array([w[key] for key in keys]) / sum(w.values()) * len(pairs)
  assert stats.chi2.sf(np.sum((counts - expect) ** 2 / expect), len(keys) - 1) > 1e-3
  deg = np.bincount(g.senders, weights=g.edge_weight, minlength=6)
  neg = np.bincount(np.concatenate([x["negatives"].ravel() for x in batches]), minlength=6)
  expect = deg ** 0.75 / np.sum(deg ** 0.75) * neg.sum()
  assert stats.chi2.sf(np.sum((neg - expect) ** 2 / expect), 5) > 1e-3
  # get_state/set_state: a fresh sampler continues exactly.
  s2 = line_train.EdgeSampler(g, 1000, 5, seed=7)
  s2.set_state(s.get_state())
  chex.assert_trees_all_equal(next(s2), next(s))
  with pytest.raises(ValueError, match="another seed"):
    line_train.EdgeSampler(g, 1000, 5, seed=8).set_state(s.get_state())
  with pytest.raises(ValueError, match=r"node ids must lie in \[0, 6\)"):
    line_train.EdgeSampler(_graph([0, 9], [1, 0], num_nodes=6, labels=np.zeros(6)), 8, 2, seed=0)
  with pytest.raises(ValueError, match="num_negatives=0"):
    line_train.EdgeSampler(g, 8, 0, seed=0)


def test_low_degree_expansion_matches_the_dense_formula():
  """§4.3: low-degree vertices get their strongest second-order neighbours, w_ij = sum_k w_ik w_kj / d_k."""
  g = _weighted_graph()
  threshold = 3
  out = line_train.expand_low_degree(g, threshold)
  n = 6
  w = np.zeros((n, n))
  np.add.at(w, (g.senders, g.receivers), g.edge_weight)
  two_hop = w @ np.diag(1 / w.sum(1)) @ w  # dense reference
  expected = {}
  for i in range(n):
    have = np.flatnonzero(w[i])
    if have.size >= threshold:
      continue
    cand = [j for j in np.argsort(-two_hop[i], kind="stable") if j != i and w[i, j] == 0 and two_hop[i, j] > 0]
    for j in cand[:threshold - have.size]:
      expected[(i, int(j))] = two_hop[i, j]
  e = len(g.senders)
  np.testing.assert_array_equal(out.senders[:e], g.senders)  # the original edges first, unchanged
  added = {(int(a), int(b)): float(x) for a, b, x in zip(out.senders[e:], out.receivers[e:], out.edge_weight[e:])}
  assert added.keys() == expected.keys() and len(added) > 0
  np.testing.assert_allclose([added[k] for k in expected], list(expected.values()), rtol=1e-6)
  assert out.num_nodes == 6 and len(line_train.expand_low_degree(g, 0).senders) == e
  line_train.EdgeSampler(out, 8, 2, seed=0)  # a valid sampler input


# ------------------------------------------------------------------------------------------------- training


def test_first_order_separates_two_disconnected_cliques():
  g = _two_cliques(8)
  task = line_train.LineTask(num_nodes=16, dim=8, order="first", batch_size=64, num_steps=150,
                             evaluator=lambda e: line_train.evaluate_embeddings(
                                 e, labels=g.labels, train_mask=np.arange(16) % 2 == 0,
                                 test_mask=np.arange(16) % 2 == 1, num_classes=2))
  state, results = loop.train(task, line_train.EdgeSampler(g, 64, 5, seed=0), mesh=task_lib.make_mesh(),
                              config=loop.LoopConfig(num_steps=150, checkpoint_every=0, eval_every=0,
                                                     progress_bar=False), workdir=None,
                              eval_data=line_train.eval_nodes(16))
  e = line_train.l2_normalize(np.asarray(state.params["vertex"]))
  cos = e @ e.T
  same = g.labels[:, None] == g.labels[None, :]
  assert cos[same].min() > 0.8 and cos[~same].max() < 0.0, (cos[same].min(), cos[~same].max())
  assert results["eval_micro_f1"] == 1.0 and results["eval_macro_f1"] == 1.0
  assert results["final_train_loss"] < 4.5  # random init: ~(1 + K) log 2 = 4.16 ... well separated: lower bound
  # Untrained embeddings do not separate the cliques (the assertion above can fail).
  e0 = line_train.l2_normalize(np.asarray(task.init(jax.random.key(0), {"negatives": np.zeros((4, 5))})[0]["vertex"]))
  assert (e0 @ e0.T)[~same].max() > 0.0


def test_resume_gives_the_same_result(tmp_path):
  g = _weighted_graph()

  def run(workdir, stop_at=None):
    task = line_train.LineTask(num_nodes=6, dim=4, order="second", batch_size=16, num_steps=20)
    cfg = loop.LoopConfig(num_steps=20, checkpoint_every=10, eval_every=0, progress_bar=False, tensorboard=False)
    return loop.train(task, line_train.EdgeSampler(g, 16, 3, seed=5), config=cfg, mesh=task_lib.make_mesh(),
                      workdir=workdir, on_step=None if stop_at is None else (lambda s, m: s == stop_at))[1]

  straight = run(str(tmp_path / "a"))
  run(str(tmp_path / "b"), stop_at=13)  # checkpoint at 10, then "preempted"
  resumed = run(str(tmp_path / "b"))
  assert resumed["resumed_from_step"] == 10 and resumed["step"] == 20
  assert resumed["params_sha256"] == straight["params_sha256"]


# ------------------------------------------------------------------------------------------------- metrics


def test_linear_probe_matches_scikit_learn():
  from sklearn.linear_model import LogisticRegression
  rng = np.random.default_rng(5)
  y = rng.integers(0, 3, 150)
  x = (rng.normal(size=(150, 5)) + np.eye(3, 5)[y] * 1.5).astype(np.float32)
  train = np.arange(150) < 100
  l2 = 1e-2
  kernel, bias = line_train.linear_probe(jnp.asarray(x), jnp.asarray(y), jnp.asarray(train, jnp.float32),
                                         num_classes=3, l2=l2, num_iters=100)
  ref = LogisticRegression(C=1 / (l2 * train.sum()), tol=1e-12, max_iter=10_000).fit(x[train].astype(np.float64),
                                                                                     y[train])
  ours = np.asarray(jax.nn.softmax(x @ kernel + bias))
  np.testing.assert_allclose(ours, ref.predict_proba(x.astype(np.float64)), atol=1e-5)


def test_f1_and_auc_match_scikit_learn():
  from sklearn.metrics import f1_score, roc_auc_score
  rng = np.random.default_rng(6)
  y_true, y_pred = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
  y_pred[:100] = y_true[:100]
  got = line_train.f1_scores(y_true, y_pred)
  assert got["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
  assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
  pos, neg = rng.integers(0, 6, 80).astype(float), rng.integers(0, 5, 120).astype(float)  # many ties
  ref = roc_auc_score(np.r_[np.ones(80), np.zeros(120)], np.r_[pos, neg])
  assert line_train.roc_auc(pos, neg) == pytest.approx(ref, abs=1e-12)
  assert line_train.roc_auc([1.0, 2.0], [0.0]) == 1.0 and line_train.roc_auc([0.0], [0.0]) == 0.5
  with pytest.raises(ValueError, match=r"\[P, 2\]"):
    line_train.link_scores(np.zeros((3, 2)), np.zeros((4, 3), int))


# ------------------------------------------------------------------------------------------------- experiment


def _run_cli(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.line", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_bad_flag_is_one_clear_error(tmp_path):
  proc = _run_cli("--orders=first,third", f"--workdir={tmp_path}")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "--orders" in proc.stderr and "third" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "summary.json")


def test_config_checks():
  from research.methods.line_experiment import LineConfig
  with pytest.raises(ValueError, match="--train_fraction=1.5"):
    LineConfig(train_fraction=1.5)
  with pytest.raises(ValueError, match="twice"):
    LineConfig(orders=("first", "first"))
  with pytest.raises(ValueError, match="--dim must be positive"):
    LineConfig(dim=0)
  with pytest.raises(ValueError, match="--probe_l2"):
    LineConfig(probe_l2=())
  assert LineConfig(orders=("both",)).trained_orders() == ("first", "second")


def test_smoke_flagfile_runs_and_reuses_finished_runs(tmp_path):
  import experiments.line as cli
  from research.methods import line_experiment
  fv = flags.FlagValues()
  cli.define_flags(fv)
  fv(["line", f"--flagfile={SMOKE}", f"--workdir={tmp_path}"])
  cfg = cli.config_from_flags(fv)
  summary = line_experiment.run_line(cfg, str(tmp_path))
  assert list(summary["orders"]) == list(cfg.orders) == ["first", "second", "both"]
  for order, row in summary["orders"].items():
    for m in ("micro_f1", "macro_f1", "link_auc"):
      assert 0.0 <= row[m] <= 1.0, (order, m, row)
  assert summary["orders"]["both"]["dim"] == 2 * cfg.dim
  md = (tmp_path / "summary.md").read_text()
  assert "1st+2nd" in md and "micro-F1" in md and "link ROC-AUC" in md
  for seed in cfg.seeds:
    assert (tmp_path / f"seed{seed}" / "first" / "results.json").exists()
  stamp = (tmp_path / f"seed{cfg.seeds[0]}" / "first" / "results.json").stat().st_mtime_ns
  again = line_experiment.run_line(cfg, str(tmp_path))  # finished runs are reused, same numbers
  assert (tmp_path / f"seed{cfg.seeds[0]}" / "first" / "results.json").stat().st_mtime_ns == stamp
  assert again["per_seed"] == summary["per_seed"]
