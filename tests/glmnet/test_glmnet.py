"""GLMNet (seed 001 Q6): Sinkhorn, sharpening convolution, pair generator, losses, Hungarian eval, training, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.spatial

from research.data import keypoint_pairs as kp
from research.methods import glmnet_experiment as gexp
from research.models.graph import glmnet
from research.train import loop, matching
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "glmnet_smoke.flags")


def _masks(sizes, n):
  return np.stack([(np.arange(n) < s).astype(np.float32) for s in sizes])


def _np_sinkhorn(log_alpha, n, m, iters):
  """float64 reference on the valid [n, m] block: alternate row / column normalisation in probability space."""
  p = np.exp(log_alpha[:n, :m].astype(np.float64) - log_alpha[:n, :m].max())
  r, c = min(1.0, m / n), min(1.0, n / m)
  for _ in range(iters):
    p = p / p.sum(1, keepdims=True) * r
    p = p / p.sum(0, keepdims=True) * c
  return p


# ----------------------------------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_doubly_stochastic_on_valid_block_and_matches_float64_loop():
  rng = np.random.default_rng(0)
  n_max, iters = 7, 30
  sizes1, sizes2 = [7, 5, 3, 6], [7, 5, 3, 4]  # last pair rectangular
  log_alpha = rng.normal(size=(4, n_max, n_max)).astype(np.float32) * 2
  log_alpha[:, -1, :] = 50.0  # garbage in padding must not leak
  m1, m2 = _masks(sizes1, n_max), _masks(sizes2, n_max)
  log_s = np.asarray(jax.jit(glmnet.log_sinkhorn, static_argnums=3)(log_alpha, m1, m2, iters))
  chex.assert_shape(log_s, (4, n_max, n_max))
  for b, (n, m) in enumerate(zip(sizes1, sizes2)):
    s = np.exp(log_s[b])
    assert np.all(s[n:, :] == 0) and np.all(s[:, m:] == 0)
    chex.assert_trees_all_close(s[:n, :m], _np_sinkhorn(log_alpha[b], n, m, iters), atol=2e-5)
    if n == m:
      chex.assert_trees_all_close(s.sum(1)[:n], np.ones(n), atol=1e-4)
      chex.assert_trees_all_close(s.sum(0)[:m], np.ones(m), atol=1e-4)
    else:  # n=6 > m=4: columns sum to 1, rows to m/n
      chex.assert_trees_all_close(s.sum(0)[:m], np.ones(m), atol=1e-5)
      chex.assert_trees_all_close(s.sum(1)[:n], np.full(n, m / n), atol=1e-3)


def test_sinkhorn_gradients_finite_with_padding_and_bad_shapes_raise():
  m1, m2 = _masks([3, 0], 4), _masks([4, 2], 4)  # second pair: empty graph 1
  f = lambda x: jnp.sum(jnp.exp(glmnet.log_sinkhorn(x, m1, m2, 5)) * jnp.arange(16.).reshape(4, 4))  # noqa: E731
  g = jax.grad(f)(jnp.ones((2, 4, 4)))
  assert np.all(np.isfinite(np.asarray(g)))
  with pytest.raises(ValueError, match=r"mask2 \[\.\.\., n2\]"):
    glmnet.log_sinkhorn(jnp.zeros((2, 4, 4)), m1, m2[:, :3], 5)


# ----------------------------------------------------------------------------------------------------- convolutions


def _dense_ops(a, n):
  """float64 Kipf smoothing and Laplacian sharpening on the valid [n, n] block."""
  at = a[:n, :n].astype(np.float64) + np.eye(n)
  d = np.diag(1.0 / np.sqrt(at.sum(1)))
  smooth = d @ at @ d
  return smooth, 2 * np.eye(n) - smooth


@pytest.mark.parametrize("conv", ["sharpen", "smooth"])
def test_convolutions_match_dense_formula_and_ignore_padding(conv):
  rng = np.random.default_rng(1)
  n_max, n, f = 6, 4, 3
  a = rng.uniform(size=(1, n_max, n_max)).astype(np.float32)
  a = (a + a.transpose(0, 2, 1)) / 2
  np.einsum("bii->bi", a)[:] = 0
  h = rng.normal(size=(1, n_max, f)).astype(np.float32)
  mask = _masks([n], n_max)
  layer = glmnet.SharpeningConv(5) if conv == "sharpen" else glmnet.SmoothingConv(5)
  params = layer.init(jax.random.key(0), h, a, mask)
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias
  out = np.asarray(layer.apply(params, h, a, mask))
  w, b = np.asarray(params["params"]["Dense_0"]["kernel"], np.float64), np.asarray(params["params"]["bias"])
  smooth, sharp = _dense_ops(a[0], n)
  ref = (sharp if conv == "sharpen" else smooth) @ h[0, :n].astype(np.float64) @ w + b
  chex.assert_trees_all_close(out[0, :n], ref, atol=1e-5)
  assert np.all(out[0, n:] == 0)
  h2, a2 = h.copy(), a.copy()
  h2[:, n:] = 99.0
  a2[:, n:, :] = a2[:, :, n:] = 7.0
  chex.assert_trees_all_close(np.asarray(layer.apply(params, h2, a2, mask)), out, atol=1e-6)


def test_sharpening_spectrum_is_one_plus_normalised_laplacian():
  """2I - A_s has eigenvalues in [1, 3): sharpening amplifies high graph frequencies, smoothing (-1, 1] damps."""
  a = kp.knn_adjacency(np.random.default_rng(2).uniform(size=(12, 2)), 3)[None]
  mask = np.ones((1, 12), np.float32)
  ev_sharp = np.linalg.eigvalsh(np.asarray(glmnet.sharpening_operator(a, mask), np.float64)[0])
  ev_smooth = np.linalg.eigvalsh(np.asarray(glmnet.smoothing_operator(a, mask), np.float64)[0])
  assert ev_sharp.min() > 1 - 1e-5 and ev_sharp.max() < 3
  chex.assert_trees_all_close(np.sort(ev_sharp), np.sort(2 - ev_smooth), atol=1e-5)


def test_graph_learning_is_symmetric_masked_and_row_weights_sum_to_one():
  x = np.random.default_rng(3).normal(size=(2, 6, 5)).astype(np.float32)
  mask = _masks([6, 4], 6)
  for variant in glmnet.GRAPH_LEARNING:
    layer = glmnet.GraphLearning(8, variant)
    a = np.asarray(layer.apply(layer.init(jax.random.key(0), x, mask), x, mask))
    chex.assert_trees_all_close(a, a.transpose(0, 2, 1))
    assert np.all(np.einsum("bii->bi", a) == 0) and np.all(a[1, 4:] == 0) and np.all(a[1, :, 4:] == 0)
    chex.assert_trees_all_close(a.sum((1, 2)), np.array([6.0, 4.0]), atol=1e-5)  # row-stochastic before symmetrising


# ----------------------------------------------------------------------------------------------------- data


def test_generator_ground_truth_is_consistent():
  cfg = kp.KeypointPairConfig(n_inliers=15, min_outliers=2, max_outliers=4, feature_dim=64, feature_noise=0.5,
                              position_noise=0.0, graph="none", use_coords=False)
  for i in range(5):
    pair = kp.make_pair(cfg, np.random.default_rng([7, i]))
    perm, m1, m2 = pair["perm"], pair["mask1"], pair["mask2"]
    inl = perm >= 0
    assert inl.sum() == 15 and len(set(perm[inl])) == 15 and np.all(m1[inl] == 1) and np.all(m2[perm[inl]] == 1)
    assert 17 <= m1.sum() <= 19 and 17 <= m2.sum() <= 19 and np.all(m1[int(m1.sum()):] == 0)
    # An affine map fitted from graph-1 inliers to their partners' coordinates explains them exactly (no noise).
    p1, p2 = pair["pos1"][inl].astype(np.float64), pair["pos2"][perm[inl]].astype(np.float64)
    design = np.concatenate([p1, np.ones((15, 1))], 1)
    coef, *_ = np.linalg.lstsq(design, p2, rcond=None)
    assert np.abs(design @ coef - p2).max() < 1e-5
    chex.assert_trees_all_close(np.sort(p1, 0), np.sort(pair["inlier_pos1"], 0), atol=1e-6)
    # Features: graph 2 = graph 1 + N(0, 0.5^2) noise.
    diff = pair["x2"][perm[inl]] - pair["x1"][inl]
    assert 0.4 < diff.std() < 0.6
  noisy = kp.make_pair(kp.KeypointPairConfig(position_noise=0.05, graph="none"), np.random.default_rng(0))
  inl = noisy["perm"] >= 0
  p1, p2 = noisy["pos1"][inl].astype(np.float64), noisy["pos2"][noisy["perm"][inl]].astype(np.float64)
  design = np.concatenate([p1, np.ones((len(p1), 1))], 1)
  resid = design @ np.linalg.lstsq(design, p2, rcond=None)[0] - p2
  assert 0.02 < resid.std() < 0.08  # up to the position noise


def test_fixed_graphs_against_independent_references():
  pos = np.random.default_rng(4).uniform(size=(30, 2))
  a = kp.knn_adjacency(pos, 4)
  d = scipy.spatial.distance.cdist(pos, pos)
  np.fill_diagonal(d, np.inf)
  ref = np.zeros((30, 30))
  for i in range(30):
    ref[i, np.argsort(d[i])[:4]] = 1
  chex.assert_trees_all_close(a, np.maximum(ref, ref.T).astype(np.float32))
  t = kp.delaunay_adjacency(pos)
  hull = len(scipy.spatial.ConvexHull(pos).vertices)
  assert np.all(t == t.T) and np.all(np.diag(t) == 0) and t.sum() / 2 == 3 * 30 - 3 - hull  # Euler: planar triang.
  assert kp.delaunay_adjacency(pos[:2]).sum() == 2


def test_iterator_is_deterministic_resumable_and_eval_set_fixed():
  cfg = kp.KeypointPairConfig(n_inliers=6, max_outliers=2, graph="delaunay")
  it = kp.KeypointPairs(cfg, global_batch_size=4, seed=3)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  nxt = next(it)
  again = kp.KeypointPairs(cfg, global_batch_size=4, seed=3)
  chex.assert_trees_all_equal(first[0], next(again))
  again.set_state(state)
  chex.assert_trees_all_equal(nxt, next(again))
  assert not np.array_equal(first[0]["x1"], first[1]["x1"])
  with pytest.raises(ValueError, match="seed"):
    kp.KeypointPairs(cfg, global_batch_size=4, seed=4).set_state(state)
  ev = kp.eval_batches(cfg, num_pairs=6, global_batch_size=4, seed=0)
  b1, b2 = list(ev()), list(ev())
  assert len(b1) == 2 and b1[1]["valid"].tolist() == [1, 1, 0, 0]
  chex.assert_trees_all_equal(b1, b2)
  with pytest.raises(ValueError, match="graph="):
    kp.KeypointPairConfig(graph="grid")


# ----------------------------------------------------------------------------------------------------- losses, eval


def test_constraint_loss_zero_for_permutation_positive_for_uniform():
  n = 5
  perm = np.eye(n)[np.random.default_rng(5).permutation(n)][None].astype(np.float32)
  mask = np.ones((1, n), np.float32)
  assert float(matching.constraint_loss(perm, mask, mask)[0]) == 0.0
  uniform = np.full((1, n, n), 1 / n, np.float32)
  chex.assert_trees_all_close(matching.constraint_loss(uniform, mask, mask), np.array([1 - 1 / n]), atol=1e-6)
  # Padding is ignored: a 3x3 permutation in a 5x5 padded matrix with garbage outside.
  s = np.full((1, 5, 5), 0.7, np.float32)
  s[0, :3, :3] = np.eye(3)[[2, 0, 1]]
  m = _masks([3], 5)
  assert float(matching.constraint_loss(s, m, m)[0]) == 0.0


def test_permutation_cross_entropy_against_numpy_loop():
  rng = np.random.default_rng(6)
  n_max, n1, n2 = 6, 5, 4
  s = rng.uniform(0.01, 0.9, size=(1, n_max, n_max)).astype(np.float32)
  perm = np.array([[2, -1, 0, 3, -1, -1]], np.int32)  # graph-1 node 1 and 4 are outliers, 5 is padding
  m1, m2 = _masks([n1], n_max), _masks([n2], n_max)
  got = float(matching.permutation_cross_entropy(np.log(s), perm, m1, m2)[0])
  total = 0.0
  partners = {int(j) for j in perm[0] if j >= 0}
  for i in range(n1):
    for j in range(n2):
      if perm[0, i] >= 0 or j in partners:
        x = float(perm[0, i] == j)
        total -= x * np.log(s[0, i, j]) + (1 - x) * np.log(1 - s[0, i, j])
  assert got == pytest.approx(total / 3, rel=1e-5)


def test_hungarian_matching_against_scipy():
  rng = np.random.default_rng(8)
  s = rng.uniform(size=(3, 7, 7)).astype(np.float32)
  m1, m2 = _masks([7, 5, 6], 7), _masks([7, 5, 4], 7)
  col = np.asarray(jax.jit(matching.hungarian_matching)(s, m1, m2))
  for b in range(3):
    n, m = int(m1[b].sum()), int(m2[b].sum())
    r, c = scipy.optimize.linear_sum_assignment(-s[b, :n, :m].astype(np.float64))
    ours = [(i, int(col[b, i])) for i in range(n) if col[b, i] >= 0]
    assert len(ours) == min(n, m) and np.all(col[b, n:] == -1)
    assert sum(s[b, i, j] for i, j in ours) == pytest.approx(s[b, r, c].sum(), rel=1e-6)


# ----------------------------------------------------------------------------------------------------- model, training


def _small(graph="learned", **kw):
  data = kp.KeypointPairConfig(n_inliers=8, max_outliers=2, feature_dim=16, feature_noise=1.0,
                               graph="none" if graph == "learned" else graph)
  return data, glmnet.GLMNet(num_layers=2, hidden=16, graph=graph, graph_features=8, **kw)


def test_model_output_no_retrace_and_bad_batch_error():
  data, model = _small("knn")
  batch = kp.make_batch(data, 0, 0, range(4))
  params = model.init(jax.random.key(0), batch, train=False)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def apply(p, b):
    return model.apply(p, b, train=False)
  log_s = np.asarray(apply(params, batch))
  apply(params, kp.make_batch(data, 0, 0, range(4, 8)))  # same shapes: no retrace
  chex.assert_shape(log_s, (4, 10, 10))
  m1, m2 = batch["mask1"], batch["mask2"]
  s = np.exp(log_s) * m1[:, :, None] * m2[:, None, :]
  for b in range(4):
    n, m = int(m1[b].sum()), int(m2[b].sum())
    if n == m:
      chex.assert_trees_all_close(s[b].sum(1)[:n], np.ones(n), atol=1e-3)
  no_adj = {k: v for k, v in batch.items() if not k.startswith("adj")}
  with pytest.raises(ValueError, match=r"batch lacks \['adj1', 'adj2'\]"):
    model.apply(params, no_adj, train=False)


@pytest.mark.slow  # ~9 s idle; the CLI smoke test trains in CI
def test_a_few_training_steps_reduce_the_loss():
  data, model = _small("learned")
  task = matching.GraphMatchingTask(model, learning_rate=3e-3, constraint_weight=1.0)
  mesh = task_lib.make_mesh()
  ev = kp.eval_batches(data, num_pairs=16, global_batch_size=8, seed=0)
  _, state0 = task_lib.init_train_state(task, 0, task_lib.abstract_batch(next(ev())), mesh)  # the loop's init
  before = loop.evaluate(task, state0, ev(), mesh)
  _, res = loop.train(task, kp.KeypointPairs(data, global_batch_size=8, seed=0),
                      config=loop.LoopConfig(num_steps=40, progress_bar=False, checkpoint_every=0, log_every=40),
                      mesh=mesh, workdir=None, eval_data=ev)
  assert res["eval_ce"] < 0.9 * before["ce"], (before, res)
  assert res["eval_matching_accuracy"] > before["matching_accuracy"] and res["eval_matching_accuracy"] > 0.2
  with pytest.raises(ValueError, match="--constraint_weight"):
    matching.GraphMatchingTask(model, constraint_weight=-1.0)


def test_ablation_variants():
  cfg = gexp.GLMNetConfig()
  assert [gexp.variant_name(*v) for v in cfg.variants()] == [
      "learned-sharpen-c1", "knn-sharpen-c1", "delaunay-sharpen-c1", "learned-smooth-c1", "learned-sharpen-c0"]
  assert len(gexp.GLMNetConfig(grid="full").variants()) == 12
  with pytest.raises(ValueError, match="--graphs: unknown"):
    gexp.GLMNetConfig(graphs=("learned", "grid"))


# ----------------------------------------------------------------------------------------------------- CLI


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.glmnet", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_smoke_one_variant_writes_summary(tmp_path):
  proc = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", "--graphs=delaunay", "--convs=sharpen",
              "--constraint_weights=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert [r["variant"] for r in summary["rows"]] == ["delaunay-sharpen-c1"]
  res = json.loads((tmp_path / "delaunay-sharpen-c1_s0" / "results.json").read_text())
  assert res["step"] == 20 and 0 <= res["eval_matching_accuracy"] <= 1
  assert "matching acc (Hungarian)" in (tmp_path / "summary.md").read_text() and "results:" in proc.stdout


@pytest.mark.parametrize("flag, words", [("--graphs=learned,grid", ["--graphs", "grid"]),
                                         ("--constraint_weights=1,x", ["--constraint_weights", "numbers"]),
                                         ("--batch_size=6", ["--batch_size", "divisible"])])
def test_bad_flags_are_one_clear_error(tmp_path, flag, words):
  proc = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", "--graphs=knn", "--convs=smooth", flag)
  assert proc.returncode != 0
  assert all(w in proc.stderr for w in words) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "summary.json").exists()
