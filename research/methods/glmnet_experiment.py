"""GLMNet ablations on synthetic keypoint pairs (Jiang et al. 2019, §5 ablation study; seed 001 Q6).

``run_glmnet(GLMNetConfig, workdir) -> summary`` trains one ``GLMNet`` per variant and seed on the one training loop
(``research.train.loop.train`` + ``research.train.matching.GraphMatchingTask``) and evaluates it on a fixed set of
``eval_pairs`` synthetic pairs (``research.data.keypoint_pairs``: same difficulty for every run, same eval set).

Variants: ``grid='ablation'`` (default) changes one factor at a time from the base model (the first entry of
``graphs``, ``convs`` and ``constraint_weights``: learned graph, Laplacian sharpening, constraint loss on), i.e.
``1 + (len(graphs) - 1) + (len(convs) - 1) + (len(constraint_weights) - 1)`` variants; ``grid='full'`` runs the
product. Each run lives in ``workdir/<variant>_s<seed>/`` (the loop's ``results.json``, checkpoints, metrics); a
finished run is not trained again. Writes ``summary.json`` and ``summary.md``: per variant mean +- sd over seeds
of the Hungarian matching accuracy and the Sinkhorn-argmax accuracy, train seconds; and the paper's three
claims as differences of means (learned - k-NN, learned - Delaunay, sharpen - smooth, constraint on - off).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any

import jax
import numpy as np

from research.configs import setting, to_dict
from research.data import keypoint_pairs as kp
from research.methods import reporting
from research.models.graph import glmnet
from research.train import loop, matching
from research.train import task as task_lib


@dataclasses.dataclass(frozen=True)
class GLMNetConfig:
  """Ablation grid, model, optimisation and data difficulty; each field is one flag of ``experiments.glmnet``."""
  graphs: tuple[str, ...] = setting(("learned", "knn", "delaunay"),
                                    "Graph constructions (none: no edges, a control); the first is the base.",
                                    choices=glmnet.GRAPHS)
  convs: tuple[str, ...] = setting(("sharpen", "smooth"), "Graph convolutions; the first is the base.",
                                   choices=glmnet.CONVS)
  constraint_weights: tuple[float, ...] = setting((1.0, 0.0), "Weights of the one-to-one constraint loss; the first "
                                                  "is the base (0 = the ablation without it).")
  grid: str = setting("ablation", "'ablation': one factor at a time from the base; 'full': every combination.",
                      choices=("ablation", "full"))
  seeds: tuple[int, ...] = setting((0, 1), "Training seeds (model init and training pairs); the eval set is fixed.")
  num_steps: int = setting(1000, "Training steps per run.")
  batch_size: int = setting(16, "Pairs per global batch (divisible by the number of devices).")
  learning_rate: float = setting(1e-3, "Adam learning rate.")
  grad_clip: float = setting(1.0, "Global-norm gradient clipping (0 = none).")
  num_layers: int = setting(2, "Graph convolution layers.")
  hidden: int = setting(64, "Width of the graph convolutions.")
  gamma: float = setting(1.0, "Sharpening strength: (1 + gamma) I - gamma D^-1/2 (A + I) D^-1/2.")
  graph_learning: str = setting("concat", "Graph learning form: 'concat' relu(a^T[Wx_i||Wx_j]), 'absdiff' "
                                "relu(a^T|Wx_i - Wx_j|) (GLCN).", choices=glmnet.GRAPH_LEARNING)
  graph_features: int = setting(32, "Projection width W of the graph learning layer.")
  tau: float = setting(0.1, "Affinity temperature (embeddings are L2-normalised).")
  sinkhorn_iters: int = setting(20, "Sinkhorn iterations.")
  n_inliers: int = setting(20, "Inlier keypoints per pair.")
  max_outliers: int = setting(5, "Outliers per graph drawn uniformly from [0, max_outliers].")
  feature_dim: int = setting(32, "Node feature dimension (N(0, 1) features).")
  feature_noise: float = setting(2.0, "Std of the Gaussian noise added to graph 2's inlier features.")
  position_noise: float = setting(0.02, "Std of the Gaussian noise on graph 2's inlier coordinates (unit square).")
  rotation: float = setting(0.5, "Max |rotation| of the random affine map, radians.")
  affine: float = setting(0.2, "Scale in [1 - a, 1 + a] and shear in [-a, a] of the random affine map.")
  perspective: float = setting(0.0, "Std of the perspective terms of the random map (0 = affine only).")
  use_coords: bool = setting(True, "Append the per-graph normalised coordinates to the node features.")
  knn_k: int = setting(4, "k of the k-NN baseline graph.")
  eval_pairs: int = setting(256, "Pairs in the fixed eval set.")
  data_seed: int = setting(0, "Seed of the eval set.")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")

  def __post_init__(self):
    for name, choices in (("graphs", glmnet.GRAPHS), ("convs", glmnet.CONVS)):
      values = getattr(self, name)
      if not values:
        raise ValueError(f"--{name} is empty; give at least one of {choices}")
      bad = [v for v in values if v not in choices]
      if bad:
        raise ValueError(f"--{name}: unknown {bad}; choose from {choices}")
      if len(set(values)) != len(values):
        raise ValueError(f"--{name}={','.join(values)} names a value twice")
    if not self.constraint_weights or any(w < 0 for w in self.constraint_weights):
      raise ValueError(f"--constraint_weights must be non-empty and >= 0, got {list(self.constraint_weights)}")
    if len(set(self.constraint_weights)) != len(self.constraint_weights):
      raise ValueError(f"--constraint_weights={list(self.constraint_weights)} names a value twice")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must be distinct integers, got {list(self.seeds)}")
    for name in ("num_steps", "batch_size", "learning_rate", "num_layers", "hidden", "graph_features", "tau",
                 "sinkhorn_iters", "n_inliers", "feature_dim", "knn_k", "eval_pairs"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("grad_clip", "gamma", "max_outliers", "feature_noise", "position_noise", "rotation", "affine",
                 "perspective", "eval_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.affine >= 1:
      raise ValueError(f"--affine must be < 1 (scales in [1 - affine, 1 + affine]), got {self.affine}")

  def variants(self) -> list[tuple[str, str, float]]:
    """(graph, conv, constraint_weight) of every run, base first."""
    base = (self.graphs[0], self.convs[0], self.constraint_weights[0])
    if self.grid == "full":
      return list(itertools.product(self.graphs, self.convs, self.constraint_weights))
    out = [base]
    out += [(g, base[1], base[2]) for g in self.graphs[1:]]
    out += [(base[0], c, base[2]) for c in self.convs[1:]]
    out += [(base[0], base[1], w) for w in self.constraint_weights[1:]]
    return out

  def data_config(self, graph: str) -> kp.KeypointPairConfig:
    """The pair generator of a run with ``graph`` (learned graphs need no fixed adjacency)."""
    return kp.KeypointPairConfig(
        n_inliers=self.n_inliers, max_outliers=self.max_outliers, feature_dim=self.feature_dim,
        feature_noise=self.feature_noise, position_noise=self.position_noise, rotation=self.rotation,
        affine=self.affine, perspective=self.perspective, use_coords=self.use_coords,
        graph=graph if graph in ("knn", "delaunay") else "none", knn_k=self.knn_k)


def variant_name(graph: str, conv: str, weight: float) -> str:
  """``('learned', 'sharpen', 1.0)`` -> ``'learned-sharpen-c1'``."""
  return f"{graph}-{conv}-c{weight:g}"


def _run_one(cfg: GLMNetConfig, graph: str, conv: str, weight: float, seed: int, workdir: str,
             mesh) -> dict[str, Any]:
  """One training run (or its stored results when finished): the loop's results dict."""
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      res = json.load(f)
    if res.get("step") == cfg.num_steps and "eval_matching_accuracy" in res:
      return res
  data_cfg = cfg.data_config(graph)
  model = glmnet.GLMNet(num_layers=cfg.num_layers, hidden=cfg.hidden, graph=graph, conv=conv, gamma=cfg.gamma,
                        graph_features=cfg.graph_features, graph_learning=cfg.graph_learning, tau=cfg.tau,
                        sinkhorn_iters=cfg.sinkhorn_iters)
  task = matching.GraphMatchingTask(model, learning_rate=cfg.learning_rate, constraint_weight=weight,
                                    grad_clip=cfg.grad_clip)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.num_steps, log_every=max(1, min(50, cfg.num_steps)),
                         progress_bar=False, tensorboard=False)
  train_data = kp.KeypointPairs(data_cfg, global_batch_size=cfg.batch_size, seed=seed)
  eval_data = kp.eval_batches(data_cfg, num_pairs=cfg.eval_pairs, global_batch_size=cfg.batch_size,
                              seed=cfg.data_seed)
  run_config = {**to_dict(cfg), "graph": graph, "conv": conv, "constraint_weight": weight, "seed": seed}
  _, res = loop.train(task, train_data, config=lcfg, mesh=mesh, workdir=workdir, eval_data=eval_data,
                      run_config=run_config, results_extra={"graph": graph, "conv": conv, "seed": seed})
  return res


def _mean_sd(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_glmnet(cfg: GLMNetConfig, workdir: str) -> dict[str, Any]:
  """Every variant x seed (resumable), then ``summary.json`` / ``summary.md`` in ``workdir``; returns the summary
  (``rows``: per variant mean/sd/values of matching and Sinkhorn accuracy and train seconds; ``claims``)."""
  t0 = time.time()
  mesh = task_lib.make_mesh()
  if cfg.batch_size % mesh.devices.size:
    raise ValueError(f"--batch_size={cfg.batch_size} is not divisible by the {mesh.devices.size} devices; pass a "
                     f"multiple of {mesh.devices.size}")
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for graph, conv, weight in cfg.variants():
    name = variant_name(graph, conv, weight)
    runs = [_run_one(cfg, graph, conv, weight, s, os.path.join(workdir, f"{name}_s{s}"), mesh) for s in cfg.seeds]
    row = {"variant": name, "graph": graph, "conv": conv, "constraint_weight": weight}
    for key, res_key in (("matching_accuracy", "eval_matching_accuracy"),
                         ("sinkhorn_accuracy", "eval_sinkhorn_accuracy"), ("train_seconds", "train_seconds"),
                         ("wall_seconds", "wall_seconds")):
      vals = [float(r[res_key]) for r in runs]
      row[key], row[f"{key}_sd"] = _mean_sd(vals)
      row[f"{key}_values"] = vals
    rows.append(row)
  summary = {"config": to_dict(cfg), "rows": rows, "claims": _claims(cfg, rows), "wall_seconds": time.time() - t0,
             "num_devices": int(mesh.devices.size), "platform": jax.devices()[0].platform}
  reporting.write_summary(workdir, summary)
  _write_markdown(cfg, summary, os.path.join(workdir, "summary.md"))
  return summary


def _claims(cfg: GLMNetConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The paper's ablation claims as ``mean(a) - mean(b)`` of the matching accuracy, where both runs exist."""
  by = {(r["graph"], r["conv"], r["constraint_weight"]): r for r in rows}
  g0, c0, w0 = cfg.graphs[0], cfg.convs[0], cfg.constraint_weights[0]
  pairs = [(f"learned graph beats {g}", ("learned", c0, w0), (g, c0, w0)) for g in ("knn", "delaunay")]
  pairs += [("learned graph beats no graph (control)", ("learned", c0, w0), ("none", c0, w0))]
  pairs += [("sharpening beats smoothing", (g0, "sharpen", w0), (g0, "smooth", w0))]
  pairs += [(f"constraint loss (weight {w:g}) beats none", (g0, c0, w), (g0, c0, 0.0))
            for w in cfg.constraint_weights if w > 0]
  out = []
  for claim, a, b in pairs:
    if a in by and b in by:
      ra, rb = by[a], by[b]
      diff = ra["matching_accuracy"] - rb["matching_accuracy"]
      sd = float(np.hypot(ra["matching_accuracy_sd"], rb["matching_accuracy_sd"]))
      out.append({"claim": claim, "a": ra["variant"], "b": rb["variant"], "difference": diff, "sd": sd,
                  "holds": diff > 0, "beyond_seed_noise": diff > sd})
  return out


def _write_markdown(cfg: GLMNetConfig, summary: dict[str, Any], path: str) -> None:
  pm = lambda r, k: f"{r[k]:.4f} ± {r[k + '_sd']:.4f}"  # noqa: E731
  head = (f"GLMNet ablation: {len(cfg.seeds)} seed(s), {cfg.num_steps} steps x {cfg.batch_size} pairs, "
          f"{cfg.n_inliers} inliers + U[0, {cfg.max_outliers}] outliers, feature noise {cfg.feature_noise}, "
          f"position noise {cfg.position_noise}, eval on {cfg.eval_pairs} fixed pairs.")
  table = reporting.markdown_table(
      ["variant", "graph", "conv", "constraint w", "matching acc (Hungarian)", "Sinkhorn-argmax acc", "train s"],
      [[r["variant"], r["graph"], r["conv"], f"{r['constraint_weight']:g}", pm(r, "matching_accuracy"),
        pm(r, "sinkhorn_accuracy"), f"{r['train_seconds']:.0f}"] for r in summary["rows"]])
  blocks = [head, table]
  if summary["claims"]:
    blocks.append(reporting.markdown_table(
        ["claim", "a", "b", "acc(a) - acc(b)", "holds", "> seed sd"],
        [[c["claim"], c["a"], c["b"], f"{c['difference']:+.4f} ± {c['sd']:.4f}", "yes" if c["holds"] else "NO",
          "yes" if c["beyond_seed_noise"] else "no"] for c in summary["claims"]]))
  blocks.append(f"Wall time {summary['wall_seconds']:.0f} s on {summary['num_devices']} {summary['platform']} "
                f"device(s).")
  reporting.write_markdown(path, *blocks)
