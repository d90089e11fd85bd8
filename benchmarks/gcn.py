r"""GCN training epoch (full graph: forward + backward + Adam) in JAX vs a PyTorch twin, dense and sparse, in one run;
plus the JAX epoch time of ChebNet K = 2, 3 and an MLP (Kipf & Welling's cost comparison, §6.2).

  python -m benchmarks.gcn --torch_python=/work/torchenv/bin/python
  python -m benchmarks.gcn --dataset=citation_sbm/small --repeats=3        # quick check, JAX only

JAX: the training loop's own compiled step (``jit(shard_map(task.update))``, state donated) of
``research.train.graph.NodeClassificationTask`` on one CPU device, with the bag-of-words features sparse (the
default: sparse dropout, sparse first-layer product) and, for GCN, dense (``gcn_dense_x``). PyTorch: the same
two-layer model (dropout 0.5, 16 hidden, biases, Adam 0.01 with L2 5e-4 on the first layer) with the renormalised
adjacency as a dense [N, N] tensor (``torch.mm``) or a sparse COO tensor (``torch.sparse.mm``, the pygcn reference
layout with dense features), and with sparse features too (the twin of the JAX default), in its own interpreter
(torch is never a dependency).
Same threads (``--threads``, default all cores). Each number is the median over ``--repeats`` timings of
``--epochs`` epochs after ``--warmup`` epochs; ratio = peer / JAX (> 1: JAX faster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "citation_sbm", "Graph spec (research.data.graphs.load_node_graph).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
flags.DEFINE_integer("epochs", 20, "Timed epochs per repeat.")
flags.DEFINE_integer("warmup", 3, "Untimed epochs (compilation) first.")
flags.DEFINE_integer("repeats", 5, "Repeats; the median is reported.")
flags.DEFINE_integer("threads", 0, "Threads for torch (0 = os.cpu_count()).")
flags.DEFINE_string("torch_python", None, "Python interpreter with torch installed (separate venv).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")

_TORCH = r"""
import json, sys, time
import numpy as np
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
d = np.load(spec["npz"], allow_pickle=False)
x = torch.from_numpy(d["x"]); y = torch.from_numpy(d["y"]).long(); train = torch.from_numpy(d["train"])
n = x.shape[0]
idx = torch.from_numpy(np.stack([d["rows"], d["cols"]]).astype(np.int64)); val = torch.from_numpy(d["vals"])
a_sparse = torch.sparse_coo_tensor(idx, val, (n, n)).coalesce()
a_dense = a_sparse.to_dense()

class GCN(torch.nn.Module):
  def __init__(self, f, h, c):
    super().__init__()
    self.l1 = torch.nn.Linear(f, h, bias=False); self.b1 = torch.nn.Parameter(torch.zeros(h))
    self.l2 = torch.nn.Linear(h, c, bias=False); self.b2 = torch.nn.Parameter(torch.zeros(c))
  def forward(self, x, mm):  # A (X W) + b per layer, like GCNConv
    x = torch.nn.functional.dropout(x, 0.5, self.training)
    h = torch.relu(mm(self.l1(x)) + self.b1)
    h = torch.nn.functional.dropout(h, 0.5, self.training)
    return mm(self.l2(h)) + self.b2

xi = x.nonzero().T
x_sparse = torch.sparse_coo_tensor(xi, x[xi[0], xi[1]], x.shape).coalesce()

class SparseInputGCN(GCN):
  def forward(self, x, mm):  # sparse X with dropout of its stored values only (the twin of research's sparse path)
    v = torch.nn.functional.dropout(x.values(), 0.5, self.training)
    xd = torch.sparse_coo_tensor(x.indices(), v, x.shape)
    h = torch.relu(mm(torch.sparse.mm(xd, self.l1.weight.T)) + self.b1)
    h = torch.nn.functional.dropout(h, 0.5, self.training)
    return mm(self.l2(h)) + self.b2

def run(kind):
  a = a_dense if kind == "dense" else a_sparse
  mm = (lambda z: torch.mm(a, z)) if kind == "dense" else (lambda z: torch.sparse.mm(a, z))
  model = (SparseInputGCN if kind == "sparse_x" else GCN)(x.shape[1], 16, int(y.max()) + 1)
  inputs = x_sparse if kind == "sparse_x" else x
  opt = torch.optim.Adam([{"params": [model.l1.weight], "weight_decay": 5e-4},
                          {"params": [model.b1, model.l2.weight, model.b2], "weight_decay": 0.0}], lr=0.01)
  def epoch():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(inputs, mm)[train], y[train])
    loss.backward(); opt.step()
    return loss
  for _ in range(spec["warmup"]):
    epoch()
  times = []
  for _ in range(spec["repeats"]):
    t0 = time.perf_counter()
    for _ in range(spec["epochs"]):
      loss = epoch()
    float(loss)
    times.append((time.perf_counter() - t0) * 1e3 / spec["epochs"])
  return sorted(times)[len(times) // 2]

print(json.dumps({"torch_version": torch.__version__, "dense_ms": run("dense"), "sparse_ms": run("sparse"),
                  "sparse_x_ms": run("sparse_x")}))
"""


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def bench_jax(graph, kind: str, K: int, epochs: int, warmup: int, repeats: int, sparse: bool | None = None) -> float:
  """Median ms per epoch of the loop's compiled train step for one model on one device."""
  import jax

  from research import models
  from research.models import graph as graph_models  # noqa: F401  (registers the graph family)
  from research.train import graph as graph_train
  from research.train import task as task_lib
  name = {"gcn": "gcn", "chebnet": "chebnet", "mlp": "graph_mlp"}[kind]
  kw = {"K": K} if kind == "chebnet" else {}
  model = models.create(name, num_classes=graph.num_classes, hidden=16, dropout=0.5, **kw)
  task = graph_train.NodeClassificationTask(model, num_features=graph.features.shape[1])
  mesh = task_lib.make_mesh(jax.devices()[:1])
  data = graph_train.FullGraphBatches(graph, num_rows=1, sparse=sparse)
  batch = next(data)
  _, state = task_lib.init_train_state(task, 0, task_lib.abstract_batch(batch), mesh)
  step = task_lib.compiled_train_step(task, mesh)
  gbatch = task_lib.global_batch(batch, mesh)
  for _ in range(warmup):
    state, m = step(state, gbatch)
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(epochs):
      state, m = step(state, gbatch)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - t0) * 1e3 / epochs)
  return _median(times)


def torch_inputs(graph, path: str) -> None:
  """Row-normalised features and D~^-1/2 (A + I) D~^-1/2 as COO arrays, written to ``path`` (npz)."""
  import numpy as np

  from research.train import graph as graph_train
  n = graph.num_nodes
  rows = np.concatenate([graph.receivers, np.arange(n)])
  cols = np.concatenate([graph.senders, np.arange(n)])
  w = np.concatenate([graph.edge_weight, np.ones(n, np.float32)]).astype(np.float64)
  deg = np.bincount(rows, weights=w, minlength=n)
  vals = (w / np.sqrt(deg[rows] * deg[cols])).astype(np.float32)
  np.savez(path, x=graph_train.normalize_features(graph.features), y=graph.labels.astype(np.int64),
           train=graph.train_mask, rows=rows.astype(np.int64), cols=cols.astype(np.int64), vals=vals)


def main(argv):
  del argv
  import jax

  from research.data import graphs
  graph = graphs.load_node_graph(FLAGS.dataset, data_dir=FLAGS.data_dir)
  threads = FLAGS.threads or os.cpu_count()
  print(f"graph {graph.name}: {graph.num_nodes} nodes, {len(graph.senders)} directed edges, "
        f"{graph.features.shape[1]} features, {graph.num_classes} classes; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}, {threads} threads", flush=True)
  results = {"graph": graph.name, "nodes": graph.num_nodes, "edges": int(len(graph.senders)), "threads": threads,
             "jax_ms": {}}
  for kind, K, label, sparse in (("gcn", 1, "gcn", None), ("chebnet", 2, "chebnet_K2", None),
                                 ("chebnet", 3, "chebnet_K3", None), ("chebnet", 4, "chebnet_K4", None),
                                 ("mlp", 1, "mlp", None), ("gcn", 1, "gcn_dense_x", False)):
    results["jax_ms"][label] = bench_jax(graph, kind, K, FLAGS.epochs, FLAGS.warmup, FLAGS.repeats, sparse)
    print(f"  jax {label:11s} {results['jax_ms'][label]:8.3f} ms/epoch", flush=True)
  if FLAGS.torch_python:
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "graph.npz")
      torch_inputs(graph, path)
      spec = {"npz": path, "threads": threads, "epochs": FLAGS.epochs, "warmup": FLAGS.warmup,
              "repeats": FLAGS.repeats}
      out = subprocess.run([FLAGS.torch_python, "-c", _TORCH, json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
      print(f"  torch side failed: {out.stderr[-2000:]}", flush=True)
    else:
      t = json.loads(out.stdout.strip().splitlines()[-1])
      results["torch"] = t
  gcn = results["jax_ms"]["gcn"]
  print("\n| model | ms / epoch | relative to JAX GCN |\n|---|---|---|")
  for label, ms in results["jax_ms"].items():
    print(f"| JAX {label} | {ms:.3f} | {ms / gcn:.2f} |")
  if "torch" in results:
    names = {"dense": "dense A, dense X", "sparse": "sparse A, dense X (pygcn)", "sparse_x": "sparse A, sparse X"}
    for kind, what in names.items():
      ms = results["torch"][f"{kind}_ms"]
      results[f"ratio_torch_{kind}"] = ms / gcn
      print(f"| PyTorch {results['torch']['torch_version']} GCN, {what} | {ms:.3f} | {ms / gcn:.2f} |")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
