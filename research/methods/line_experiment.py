"""LINE experiment (Tang et al. 2015, §5 Table 2-5): first vs second vs 1st+2nd order, node classification and link
prediction: ``run_line(LineConfig, workdir) -> summary``.

For every seed: load the graph (``research.data.graphs.load_node_graph(dataset)``), hold out
``link_test_fraction`` of its edges for link prediction (``split_edges``; the embeddings are trained on the rest),
optionally add second-order neighbours to low-degree vertices of the training edges (``reconstruct_threshold``,
§4.3), draw a random ``train_fraction`` of the labelled nodes for the classifier (the paper's protocol, §5.1; the
probe's L2 penalty is chosen among ``probe_l2`` on a fifth of the train nodes), then train
one LINE model per order through ``research.train.loop.train`` (``workdir/seed<s>/<order>/``, resumable, with its
``results.json`` and ``embeddings.npy``). "both" (1st+2nd) is the concatenation of the two L2-normalised
embeddings (dimension ``2 dim``, §4.1.3), scored by the same evaluator; its wall time is the sum of the two runs.
Writes ``summary.json`` and ``summary.md`` (mean ± std over seeds of micro/macro-F1, link ROC-AUC, wall time) and
the claim check "1st+2nd >= each order alone" for node classification.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import numpy as np

from research import fileio
from research.configs import setting, to_dict
from research.methods import reporting

ORDERS = ("first", "second", "both")
LABELS = {"first": "first", "second": "second", "both": "1st+2nd"}
METRICS = ("micro_f1", "macro_f1", "link_auc")


@dataclasses.dataclass(frozen=True)
class LineConfig:
  """LINE embeddings of one graph, per order and seed (``python -m experiments.line``)."""
  dataset: str = setting("citation_sbm", "Graph spec of research.data.graphs.load_node_graph (citation_sbm, "
                                         "citation_sbm/small, karate, les_miserables, florentine, npz:PATH).")
  data_dir: str | None = setting(None, "TFDS data_dir of the graph datasets (default: the library's).")
  orders: tuple[str, ...] = setting(ORDERS, "Orders to report: first, second, both (= 1st+2nd, trains both).",
                                    choices=ORDERS)
  dim: int = setting(128, "Embedding dimension of each order (1st+2nd has 2*dim).")
  num_steps: int = setting(2000, "SGD steps T of each order (edge samples = T * batch_size).")
  batch_size: int = setting(1024, "Edges per step (global batch; a multiple of the device count).")
  num_negatives: int = setting(5, "Negative samples K per edge, drawn from d^0.75.")
  learning_rate: float = setting(0.025, "Per-edge starting rate rho_0 (decays linearly to 0 over num_steps).")
  seeds: tuple[int, ...] = setting((0,), "Training seeds (initialisation, edge samples, label and edge splits).")
  train_fraction: float = setting(0.5, "Fraction of the labelled nodes the classifier is trained on (the rest "
                                       "are the test nodes).")
  link_test_fraction: float = setting(0.1, "Fraction of the edges held out for link prediction (0: none; the "
                                           "embeddings are trained on the remaining edges).")
  reconstruct_threshold: int = setting(0, "§4.3 low-degree vertices: a vertex with fewer neighbours gets its "
                                          "strongest second-order neighbours added up to this many (0: off).")
  probe_l2: tuple[float, ...] = setting((1e-5, 1e-4, 1e-3), "Candidate L2 penalties of the softmax logistic-"
                                        "regression probe (mean loss + l2/2 |W|^2); chosen on 20% of the train nodes.")
  probe_iters: int = setting(100, "L-BFGS iterations of the probe.")
  eval_every: int = setting(0, "Evaluate every this many steps during training (0: only at the end).")
  checkpoint_every: int = setting(0, "Checkpoint every this many steps (0: only at the end).")

  def __post_init__(self):
    if not self.orders:
      raise ValueError(f"--orders is empty: choose from {','.join(ORDERS)}")
    unknown = [o for o in self.orders if o not in ORDERS]
    if unknown:
      raise ValueError(f"--orders: unknown {unknown}; choose from {','.join(ORDERS)}")
    if len(set(self.orders)) != len(self.orders):
      raise ValueError(f"--orders lists an order twice: {','.join(self.orders)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must be distinct integers, got {list(self.seeds)}")
    for k in ("dim", "num_steps", "batch_size", "num_negatives", "probe_iters"):
      if getattr(self, k) <= 0:
        raise ValueError(f"--{k} must be positive, got {getattr(self, k)}")
    if self.learning_rate <= 0:
      raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
    if not self.probe_l2 or min(self.probe_l2) < 0:
      raise ValueError(f"--probe_l2 must list penalties >= 0 (e.g. 1e-5,1e-4,1e-3), got {list(self.probe_l2)}")
    if not 0.0 < self.train_fraction < 1.0:
      raise ValueError(f"--train_fraction={self.train_fraction} must lie in (0, 1) (e.g. 0.5)")
    if not 0.0 <= self.link_test_fraction < 1.0:
      raise ValueError(f"--link_test_fraction={self.link_test_fraction} must lie in [0, 1) (e.g. 0.1)")
    if self.reconstruct_threshold < 0:
      raise ValueError(f"--reconstruct_threshold={self.reconstruct_threshold} must be >= 0 (0: off)")
    if self.eval_every < 0 or self.checkpoint_every < 0:
      raise ValueError(f"--eval_every and --checkpoint_every must be >= 0, got {self.eval_every}, "
                       f"{self.checkpoint_every}")

  def trained_orders(self) -> tuple[str, ...]:
    """The single orders that must be trained for ``orders`` ("both" needs first and second)."""
    need = {o for o in self.orders if o != "both"} | ({"first", "second"} if "both" in self.orders else set())
    return tuple(o for o in ("first", "second") if o in need)


def _pairs(x: Any) -> np.ndarray:
  """Held-out edges as ``[P, 2]`` int (accepts ``[P, 2]``, ``[2, P]`` or a ``(senders, receivers)`` pair)."""
  if isinstance(x, (tuple, list)) and len(x) == 2 and np.ndim(x[0]) == 1:
    return np.stack([np.asarray(x[0]), np.asarray(x[1])], axis=1).astype(np.int32)
  a = np.asarray(x)
  if a.ndim == 2 and a.shape[1] != 2 and a.shape[0] == 2:
    a = a.T
  if a.ndim != 2 or a.shape[1] != 2:
    raise ValueError(f"held-out edges must be [P, 2] node pairs, got shape {a.shape}")
  return a.astype(np.int32)


def prepare(cfg: LineConfig, seed: int) -> tuple[Any, dict[str, Any]]:
  """``(train_graph, evaluator kwargs)`` of one seed: the edge split and the label split."""
  from research.data import graphs
  graph = graphs.load_node_graph(cfg.dataset, data_dir=cfg.data_dir, seed=seed)
  link_pos = link_neg = None
  if cfg.link_test_fraction > 0:
    graph, held = graphs.split_edges(graph, val_fraction=0.0, test_fraction=cfg.link_test_fraction, seed=seed)
    link_pos, link_neg = _pairs(held["test_pos"]), _pairs(held["test_neg"])
  from research.train.line import expand_low_degree, random_label_split
  labels, num_classes = np.asarray(graph.labels), int(graph.num_classes)
  train_mask, test_mask = random_label_split(labels, cfg.train_fraction, seed)
  if cfg.reconstruct_threshold:  # from the TRAINING edges only (held-out edges stay unseen)
    graph = expand_low_degree(graph, cfg.reconstruct_threshold)
  return graph, dict(labels=labels, train_mask=train_mask, test_mask=test_mask, num_classes=num_classes,
                     link_pos=link_pos, link_neg=link_neg, l2=cfg.probe_l2, num_iters=cfg.probe_iters, seed=seed)


def _finished(run_dir: str, num_steps: int, run_config: dict[str, Any]) -> dict[str, Any] | None:
  """The stored results of a finished run with the same settings, else None."""
  paths = [os.path.join(run_dir, f) for f in ("results.json", "embeddings.npy", "config.json")]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[0]) as f:
    results = json.load(f)
  with open(paths[2]) as f:
    stored = json.load(f)
  if results.get("step") != num_steps or stored != json.loads(json.dumps(run_config, default=fileio.json_default)):
    return None
  return results


def train_order(cfg: LineConfig, order: str, seed: int, graph: Any, eval_kwargs: dict[str, Any],
                run_dir: str) -> tuple[dict[str, Any], np.ndarray]:
  """Trains (or resumes, or reuses) one order; ``(results, embeddings [N, dim])``."""
  from research.train import line as line_train
  from research.train import loop
  from research.train import task as task_lib
  run_config = {**to_dict(cfg), "order": order, "seed": seed}
  done = _finished(run_dir, cfg.num_steps, run_config)
  if done is not None:
    return done, np.load(os.path.join(run_dir, "embeddings.npy"))
  n = line_train.num_nodes_of(graph)
  task = line_train.LineTask(num_nodes=n, dim=cfg.dim, order=order, batch_size=cfg.batch_size,
                             num_steps=cfg.num_steps, learning_rate=cfg.learning_rate,
                             evaluator=functools.partial(line_train.evaluate_embeddings, **eval_kwargs))
  data = line_train.EdgeSampler(graph, cfg.batch_size, cfg.num_negatives, seed)
  mesh = task_lib.make_mesh()
  if cfg.batch_size % mesh.devices.size:
    raise ValueError(f"--batch_size={cfg.batch_size} is not divisible by the {mesh.devices.size} devices; "
                     f"use a multiple of {mesh.devices.size}")
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.checkpoint_every or cfg.num_steps, keep_checkpoints=1,
                         log_every=max(1, min(100, cfg.num_steps // 10)), progress_bar=False,
                         description=f"LINE {order} seed {seed}", tensorboard=False)
  state, results = loop.train(task, data, config=lcfg, mesh=mesh, workdir=run_dir, eval_data=line_train.eval_nodes(n),
                              run_config=run_config, results_extra={"dataset": cfg.dataset, "seed": seed})
  emb = loop.host_value(state.params["vertex"])
  if fileio.main_process():
    np.save(os.path.join(run_dir, "embeddings.npy"), emb)
  return results, emb


def _row(results: dict[str, Any]) -> dict[str, Any]:
  return {**{m: results.get(f"eval_{m}") for m in METRICS}, "wall_seconds": results.get("wall_seconds")}


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
  v = [x for x in values if x is not None]
  return (float(np.mean(v)), float(np.std(v))) if v else (None, None)


def run_line(cfg: LineConfig, workdir: str) -> dict[str, Any]:
  """Every (seed, order) run, then ``summary.json``/``summary.md`` in ``workdir``; returns the summary."""
  from research.train import line as line_train
  t0 = time.time()
  if fileio.main_process():
    os.makedirs(workdir, exist_ok=True)
  per_seed: dict[str, dict[str, dict[str, Any]]] = {}
  graph_info: dict[str, Any] = {}
  for seed in cfg.seeds:
    graph, eval_kwargs = prepare(cfg, seed)
    graph_info = {"name": cfg.dataset, "num_nodes": line_train.num_nodes_of(graph),
                  "num_train_edges": int(np.size(graph.senders)), "num_classes": eval_kwargs["num_classes"],
                  "num_test_pos": 0 if eval_kwargs["link_pos"] is None else len(eval_kwargs["link_pos"]),
                  "num_probe_train": int(eval_kwargs["train_mask"].sum()),
                  "num_probe_test": int(eval_kwargs["test_mask"].sum())}
    rows, embs = {}, {}
    for order in cfg.trained_orders():
      results, embs[order] = train_order(cfg, order, seed, graph, eval_kwargs,
                                         os.path.join(workdir, f"seed{seed}", order))
      rows[order] = _row(results)
    if "both" in cfg.orders:
      both = np.concatenate([line_train.l2_normalize(embs["first"]), line_train.l2_normalize(embs["second"])], -1)
      metrics = line_train.evaluate_embeddings(both, **eval_kwargs)
      rows["both"] = {**{m: metrics.get(m) for m in METRICS},
                      "wall_seconds": rows["first"]["wall_seconds"] + rows["second"]["wall_seconds"]}
      if fileio.main_process():
        d = os.path.join(workdir, f"seed{seed}", "both")
        os.makedirs(d, exist_ok=True)
        fileio.write_json_atomic(os.path.join(d, "results.json"),
                                 {**{f"eval_{m}": v for m, v in metrics.items()}, "dim": 2 * cfg.dim,
                                  "wall_seconds": rows["both"]["wall_seconds"], "seed": seed})
    per_seed[str(seed)] = {o: rows[o] for o in cfg.orders}

  table = {}
  for order in cfg.orders:
    table[order] = {"dim": cfg.dim * (2 if order == "both" else 1)}
    for m in (*METRICS, "wall_seconds"):
      table[order][m], table[order][f"{m}_std"] = _mean_std([per_seed[str(s)][order][m] for s in cfg.seeds])
  claim = None
  if set(ORDERS) <= set(cfg.orders):
    claim = {m: all(table["both"][m] >= table[o][m] for o in ("first", "second")) for m in ("micro_f1", "macro_f1")}
  summary = {"config": to_dict(cfg), "graph": graph_info, "orders": table, "per_seed": per_seed,
             "claim_both_ge_each": claim, "wall_seconds": time.time() - t0}
  reporting.write_summary(workdir, summary)
  _write_markdown(cfg, summary, os.path.join(workdir, "summary.md"))
  return summary


def _fmt(mean: float | None, std: float | None, n: int, digits: int = 3) -> str:
  if mean is None:
    return "-"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def _write_markdown(cfg: LineConfig, summary: dict[str, Any], path: str) -> None:
  n = len(cfg.seeds)
  g = summary["graph"]
  rows = [[LABELS[o], r["dim"], _fmt(r["micro_f1"], r["micro_f1_std"], n), _fmt(r["macro_f1"], r["macro_f1_std"], n),
           _fmt(r["link_auc"], r["link_auc_std"], n), _fmt(r["wall_seconds"], r["wall_seconds_std"], n, 1)]
          for o, r in summary["orders"].items()]
  head = (f"## LINE on {cfg.dataset}: first vs second vs 1st+2nd (Tang et al. 2015)\n\n"
          f"{g.get('num_nodes')} nodes, {g.get('num_train_edges')} directed training edges, "
          f"{g.get('num_test_pos')} held-out edges; classifier on {g.get('num_probe_train')} nodes, tested on "
          f"{g.get('num_probe_test')}; {cfg.num_steps} steps x {cfg.batch_size} edges, K={cfg.num_negatives}, "
          f"seed{'s' if n > 1 else ''} {','.join(map(str, cfg.seeds))}{' (mean ± std)' if n > 1 else ''}.")
  blocks = [head, reporting.markdown_table(["order", "dim", "micro-F1", "macro-F1", "link ROC-AUC", "wall s"], rows)]
  claim = summary["claim_both_ge_each"]
  if claim is not None:
    verdict = "holds" if all(claim.values()) else "does NOT hold"
    blocks.append(f"Claim (node classification: 1st+2nd >= each order alone) {verdict}: "
                  + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in claim.items()))
  reporting.write_markdown(path, *blocks)
