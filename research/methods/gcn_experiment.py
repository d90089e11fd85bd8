"""Kipf & Welling (2017) §5-§6 comparison: renormalised GCN vs ChebNet (any K) vs MLP on one graph.

``run(GCNConfig, workdir)`` trains every (model, seed) of the grid through the one training loop
(``research.train.graph.NodeClassificationTask``), each in ``workdir/<model>/seed<k>/`` (``results.json`` holds
``test_accuracy``; a finished run is reused, an interrupted one resumes from its checkpoint), then writes
``summary.json`` / ``summary.md``: mean ± sd test accuracy over the seeds, the parameter count and the wall time per
epoch of the loop including compilation (median over seeds; ``benchmarks/gcn.py`` times epochs without it).
The paper's setting (§5.1, the defaults): 2 layers, 16 hidden units, dropout 0.5, Adam 0.01, L2 5e-4 on the
first layer, 200 epochs, 20 labels per class, 500 validation and 1000 test nodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any

import jax

from research import fileio
from research.configs import setting
from research.methods import reporting

MODELS = ("gcn", "chebnet", "mlp")


@dataclasses.dataclass(frozen=True)
class GCNConfig:
  """Node classification on one graph (``python -m experiments.gcn``)."""
  dataset: str = setting("citation_sbm", "Graph: citation_sbm[/<config>], karate, les_miserables, florentine or "
                         "npz:PATH (CSR adjacency + features + labels + masks, see README 'Your own graph').")
  data_dir: str = setting("", "TFDS data_dir of generated datasets ('' = the default).")
  models: tuple[str, ...] = setting(MODELS, "Models to compare: gcn (renormalised first order), chebnet "
                                    "(Chebyshev order --K), mlp.", choices=MODELS)
  K: tuple[int, ...] = setting((2, 3), "Chebyshev filter sizes for --models=chebnet, one run per K: K terms "
                               "T_0..T_{K-1} (Defferrard et al.'s K; a filter of order K-1). Kipf & Welling's Table 3 "
                               "names filters by their order: their K=2 / K=3 are --K=3 / --K=4 here.")
  hidden: int = setting(16, "Hidden units of the 2-layer models.")
  dropout: float = setting(0.5, "Dropout rate (inputs of both layers).")
  learning_rate: float = setting(0.01, "Adam learning rate.")
  weight_decay: float = setting(5e-4, "L2 weight decay on the first layer.")
  epochs: int = setting(200, "Full-graph training steps.")
  seeds: tuple[int, ...] = setting((0, 1), "Seeds (initialisation, dropout and the label split).")
  labels_per_class: int = setting(20, "Training labels per class (the public-split protocol).")
  row_normalize: bool = setting(True, "Row-normalise the node features.")
  num_devices: int = setting(0, "Devices of the data-parallel mesh (0 = all); the graph is replicated and the "
                             "labelled nodes are split over them.")

  def __post_init__(self):
    if not self.models:
      raise ValueError(f"--models is empty: choose from {','.join(MODELS)}")
    bad = [m for m in self.models if m not in MODELS]
    if bad:
      raise ValueError(f"--models: unknown {bad}; choose from {','.join(MODELS)}")
    if "chebnet" in self.models and (not self.K or min(self.K) < 1):
      raise ValueError(f"--K must list Chebyshev orders >= 1 for --models=chebnet, got {self.K}")
    for name in ("hidden", "epochs", "labels_per_class"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
    if self.learning_rate <= 0 or self.weight_decay < 0:
      raise ValueError(f"--learning_rate must be > 0 and --weight_decay >= 0, got {self.learning_rate}, "
                       f"{self.weight_decay}")
    if not self.seeds:
      raise ValueError("--seeds is empty: give at least one seed, e.g. --seeds=0,1")
    if self.num_devices < 0 or self.num_devices > jax.device_count():
      raise ValueError(f"--num_devices={self.num_devices} but {jax.device_count()} devices exist (0 = all)")


def runs_of(cfg: GCNConfig) -> list[tuple[str, str, int]]:
  """``(run name, model kind, K)`` of every model in the grid (chebnet once per K)."""
  out = []
  for m in cfg.models:
    if m == "chebnet":
      out += [(f"chebnet_K{k}", "chebnet", k) for k in cfg.K]
    else:
      out.append((m, m, 1))
  return out


def _model(kind: str, K: int, num_classes: int, cfg: GCNConfig):
  from research.models import graph as graph_models  # registers the graph family
  del graph_models
  from research import models
  name = {"gcn": "gcn", "chebnet": "chebnet", "mlp": "graph_mlp"}[kind]
  kw = dict(num_classes=num_classes, hidden=cfg.hidden, dropout=cfg.dropout)
  if kind == "chebnet":
    kw["K"] = K
  return models.create(name, **kw)


def train_one(cfg: GCNConfig, graph, kind: str, K: int, seed: int, workdir: str) -> dict[str, Any]:
  """One (model, seed) run through the training loop; returns its results (also ``workdir/results.json``)."""
  from research.train import graph as graph_train
  from research.train import loop as loop_lib
  from research.train import task as task_lib
  done = os.path.join(workdir, "results.json")
  if os.path.exists(done):
    with open(done) as f:
      results = json.load(f)
    if results.get("step") == cfg.epochs and "test_accuracy" in results:
      return results
  devices = jax.devices()[:cfg.num_devices or None]
  mesh = task_lib.make_mesh(devices)
  data = graph_train.FullGraphBatches(graph, num_rows=len(devices), row_normalize=cfg.row_normalize)
  task = graph_train.NodeClassificationTask(_model(kind, K, graph.num_classes, cfg), learning_rate=cfg.learning_rate,
                                            weight_decay=cfg.weight_decay, num_features=graph.features.shape[1])
  loop_cfg = loop_lib.LoopConfig(num_steps=cfg.epochs, seed=seed, eval_every=0, checkpoint_every=cfg.epochs,
                                 log_every=max(1, cfg.epochs // 4), progress_bar=False,
                                 description=f"{kind} seed {seed}", tensorboard=False)
  run_config = {**reporting_config(cfg), "model": kind, "K": K, "seed": seed}
  t0 = time.perf_counter()
  _, results = loop_lib.train(task, data, config=loop_cfg, mesh=mesh, workdir=workdir, eval_data=data.eval_batches,
                              run_config=run_config)
  results = {**results, "test_accuracy": results.get("eval_test_accuracy"),
             "val_accuracy": results.get("eval_val_accuracy"), "model": kind, "K": K, "seed": seed,
             "dataset": cfg.dataset, "run_seconds": time.perf_counter() - t0,
             "epoch_ms": 1e3 * results["train_seconds"] / max(results["steps_run"], 1)}
  if fileio.main_process():
    fileio.write_json_atomic(done, results)
  return results


def reporting_config(cfg: GCNConfig) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _fmt(xs: list[float]) -> str:
  if len(xs) == 1:
    return f"{100 * xs[0]:.1f}"
  return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def run(cfg: GCNConfig, workdir: str) -> dict[str, Any]:
  """Trains the grid, writes ``summary.json`` and ``summary.md``; returns the summary."""
  from research.data import graphs
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  rows, runs = [], {}
  for name, kind, K in runs_of(cfg):
    per_seed = []
    for seed in cfg.seeds:
      graph = graphs.load_node_graph(cfg.dataset, data_dir=cfg.data_dir or None, seed=seed,
                                     labels_per_class=cfg.labels_per_class)
      per_seed.append(train_one(cfg, graph, kind, K, seed, os.path.join(workdir, name, f"seed{seed}")))
    test = [r["test_accuracy"] for r in per_seed]
    val = [r["val_accuracy"] for r in per_seed]
    epoch_ms = statistics.median(r["epoch_ms"] for r in per_seed)
    runs[name] = {"test_accuracy": test, "val_accuracy": val, "test_mean": statistics.mean(test),
                  "num_params": per_seed[0]["num_params"], "epoch_ms": epoch_ms, "seeds": list(cfg.seeds)}
    rows.append([name, _fmt(test), _fmt(val), per_seed[0]["num_params"], f"{epoch_ms:.2f}"])
  summary = {"config": reporting_config(cfg), "runs": runs, "wall_seconds": time.time() - t0,
             "graph": {"name": graph.name, "nodes": graph.num_nodes, "directed_edges": int(len(graph.senders)),
                       "features": int(graph.features.shape[1]), "classes": graph.num_classes,
                       "label_source": graph.label_source},
             "machine": f"{jax.devices()[0].platform} x{jax.device_count()}"}
  reporting.write_summary(workdir, summary)
  table = reporting.markdown_table(
      ["model", "test accuracy %", "val accuracy %", "params", "ms / epoch (incl. compile)"], rows)
  reporting.write_markdown(os.path.join(workdir, "summary.md"),
                           f"Node classification on {graph.name} ({graph.num_nodes} nodes, {graph.num_classes} "
                           f"classes, labels: {graph.label_source}); {cfg.epochs} epochs, seeds "
                           f"{','.join(map(str, cfg.seeds))} (mean ± sd).", table)
  return summary
