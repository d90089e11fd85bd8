"""Node classification through the one training loop: data-parallel exactness, learning, the CLI, npz graphs."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models
from research.data import graphs
from research.models import graph as graph_models  # noqa: F401  (registers the graph family)
from research.train import graph as graph_train
from research.train import loop as loop_lib
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "gcn_smoke.flags")


def _two_cliques(n=10, seed=0):
  """Two 10-cliques joined by one edge, noisy one-hot-ish features, 2 labels per class for training."""
  rng = np.random.default_rng(seed)
  edges = [(i, j) for b in (0, n) for i in range(b, b + n) for j in range(b, b + n) if i != j]
  edges += [(n - 1, n), (n, n - 1)]
  edges.sort(key=lambda e: (e[1], e[0]))
  s, r = np.array(edges, np.int32).T
  labels = np.repeat(np.arange(2), n).astype(np.int32)
  feats = rng.random((2 * n, 6)).astype(np.float32)
  train = np.zeros(2 * n, bool)
  train[[0, 1, n, n + 1]] = True
  val = np.zeros(2 * n, bool)
  val[[2, n + 2]] = True
  test = ~(train | val)
  return graphs.NodeGraph(name="two_cliques", features=feats, senders=s, receivers=r,
                          edge_weight=np.ones(len(s), np.float32), labels=labels, train_mask=train, val_mask=val,
                          test_mask=test, num_classes=2, label_source="ground truth (clique)")


def test_rows_split_the_labelled_nodes_without_overlap():
  g = _two_cliques()
  rows = graph_train.graph_rows(g, 3)
  chex.assert_shape(rows["nodes"], (3, 20, 6))
  np.testing.assert_array_equal(rows["loss_mask"].sum(0), g.train_mask.astype(np.float32))
  for code, mask in ((graph_train.VAL, g.val_mask), (graph_train.TEST, g.test_mask)):
    np.testing.assert_array_equal((rows["split"] == code).sum(0), mask.astype(int))
  np.testing.assert_allclose(rows["nodes"][0].sum(1), 1.0, rtol=1e-5)  # row-normalised features
  with pytest.raises(ValueError, match="padding"):
    graph_train.graph_rows(g, 1, pad_nodes=5)


def _train(g, devices, steps, dropout=0.0, seed=0, kind="gcn"):
  model = models.create(kind, num_classes=g.num_classes, hidden=8, dropout=dropout)
  task = graph_train.NodeClassificationTask(model, learning_rate=0.05, num_features=g.features.shape[1])
  data = graph_train.FullGraphBatches(g, num_rows=len(devices))
  cfg = loop_lib.LoopConfig(num_steps=steps, seed=seed, eval_every=0, checkpoint_every=0, progress_bar=False,
                            tensorboard=False)
  return loop_lib.train(task, data, config=cfg, mesh=task_lib.make_mesh(devices), workdir=None,
                        eval_data=data.eval_batches)


def test_loss_is_the_masked_cross_entropy_of_the_training_nodes():
  g = _two_cliques()
  model = models.create("gcn", num_classes=2, hidden=8, dropout=0.0)
  task = graph_train.NodeClassificationTask(model)
  rows = graph_train.graph_rows(g, 2, sparse=False)
  batch = jax.tree.map(jnp.asarray, rows)
  params, _ = task.init(jax.random.key(0), jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch))
  (total, count), _ = task.loss(params, {}, batch, jax.random.key(1), train=True)
  logits = model.apply({"params": params}, graph_train._graph_of(jax.tree.map(lambda x: x[0], batch)), train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(g.labels))
  want = float(jnp.sum(jnp.where(jnp.asarray(g.train_mask), ce, 0.0)))
  np.testing.assert_allclose(float(total), want, rtol=1e-5)
  assert float(count) == g.train_mask.sum()


def test_one_and_four_devices_train_the_same_parameters():
  g = _two_cliques()
  devices = jax.devices()
  assert len(devices) >= 4
  s1, r1 = _train(g, devices[:1], steps=5)
  s4, r4 = _train(g, devices[:4], steps=5)
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s4.params), rtol=2e-5, atol=2e-6)
  assert r1["eval_test_accuracy"] == r4["eval_test_accuracy"]


@pytest.mark.parametrize("kind", ["gcn", "chebnet", "graph_mlp"])
def test_models_learn_two_cliques(kind):
  """Features are noise: only a model that uses the graph can separate the cliques from 2 labels each."""
  g = _two_cliques()
  _, results = _train(g, jax.devices()[:1], steps=60, dropout=0.0, kind=kind)
  if kind == "graph_mlp":
    assert results["eval_test_accuracy"] < 0.9  # features carry no label information
  elif kind == "gcn":
    assert results["eval_test_accuracy"] == 1.0, results
  else:  # ChebNet's T_0 term (the node itself, own weights) can fit the noise of the 4 labelled nodes
    assert results["eval_test_accuracy"] >= 0.85, results


def _cli(args, timeout=600):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.gcn", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_smoke_flagfile_then_rerun_reuses_runs(tmp_path):
  data_dir = tmp_path / "tfds"
  proc = _cli([f"--flagfile={SMOKE}", f"--workdir={tmp_path / 'w'}", f"--data_dir={data_dir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "w" / "summary.json"))
  assert set(summary["runs"]) == {"gcn", "chebnet_K2", "mlp"}
  res = json.load(open(tmp_path / "w" / "gcn" / "seed0" / "results.json"))
  assert 0.0 <= res["test_accuracy"] <= 1.0 and res["num_devices"] == 2
  stamp = os.path.getmtime(tmp_path / "w" / "gcn" / "seed0" / "results.json")
  proc = _cli([f"--flagfile={SMOKE}", f"--workdir={tmp_path / 'w'}", f"--data_dir={data_dir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.getmtime(tmp_path / "w" / "gcn" / "seed0" / "results.json") == stamp  # reused, not retrained


@pytest.mark.parametrize("extra,message", [
    (["--models=gat"], "--models"),
    (["--dropout=1.5"], "--dropout"),
    (["--dataset=npz:/nonexistent/graph.npz"], "graph.npz"),
])
def test_bad_flags_give_one_clear_error(extra, message, tmp_path):
  proc = _cli([f"--workdir={tmp_path}", "--epochs=2", "--seeds=0", *extra], timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_user_npz_graph_trains_and_reports_test_accuracy(tmp_path):
  from research.methods import gcn_experiment
  path = str(tmp_path / "g.npz")
  graphs.save_npz(_two_cliques(), path)
  cfg = gcn_experiment.GCNConfig(dataset=f"npz:{path}", models=("gcn",), epochs=40, seeds=(0,), dropout=0.0,
                                 labels_per_class=2, num_devices=1)
  summary = gcn_experiment.run(cfg, str(tmp_path / "w"))
  assert summary["runs"]["gcn"]["test_accuracy"] == [1.0]
  assert json.load(open(tmp_path / "w" / "gcn" / "seed0" / "results.json"))["test_accuracy"] == 1.0


def _small_graph(kind: str, n: int, rng):
  """A ring (every node degree 2) or a star (one hub): one-hot-degree-free constant features."""
  if kind == "ring":
    s = np.arange(n)
    r = (s + 1) % n
  else:
    s = np.zeros(n - 1, int)
    r = np.arange(1, n)
  s, r = np.concatenate([s, r]), np.concatenate([r, s])
  return np.ones((n, 1), np.float32), s.astype(np.int32), r.astype(np.int32)


def test_batched_small_graphs_train_a_graph_classifier_through_the_loop():
  """The batched mode: rings vs stars of 5-12 nodes, 8 graphs per row, 2 devices; the degree pattern survives
  GCN propagation + mean readout, so the classifier must learn it from the structure alone."""
  rng = np.random.default_rng(0)
  kinds = rng.integers(0, 2, 120)
  graphs = [_small_graph("ring" if k == 0 else "star", int(rng.integers(5, 13)), rng) for k in kinds]
  data = graph_train.SmallGraphBatches(graphs, kinds, graphs_per_row=8, num_rows=2, seed=0)
  first = next(data)
  chex.assert_shape(first["graph_label"], (2, 8))
  assert first["nodes"].shape[1] == data.pad_nodes
  model = models.create("gcn_graph_classifier", num_classes=2, hidden=16)
  task = graph_train.GraphClassificationTask(model, learning_rate=0.02)
  cfg = loop_lib.LoopConfig(num_steps=120, eval_every=0, checkpoint_every=0, progress_bar=False, tensorboard=False)
  _, results = loop_lib.train(task, data, config=cfg, mesh=task_lib.make_mesh(jax.devices()[:2]), workdir=None,
                              eval_data=data.eval_batches)
  assert results["eval_count"] == 120  # every graph evaluated once, padding graphs masked out
  assert results["eval_accuracy"] >= 0.95, results
