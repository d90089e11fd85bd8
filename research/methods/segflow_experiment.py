"""SegFlow (Cheng et al., ICCV 2017) on ``shapes_video`` frame pairs: ``run(SegFlowConfig, workdir) -> summary``.

The claim checked (§5, Tables 1-3: the joint model beats its single-task branches on DAVIS segmentation and on
optical flow): a network trained jointly on both tasks, with feature maps exchanged between the branches, improves
BOTH tasks over the same branch trained alone. Methods (``methods``; one run per method and seed, each through
``research.train.loop.train`` with ``research.train.segflow.SegFlowTask``):

* ``seg_only``: the segmentation branch alone (``segflow_seg_only``), cross-entropy only;
* ``flow_only``: the flow branch alone (``segflow_flow_only``), multi-scale EPE only;
* ``segflow``: both branches with the bi-directional exchange, JOINT schedule (sum of the losses; the default);
* ``segflow_iterative``: the same network with the paper's iterative schedule (blocks of ``iterative_period``
  steps train one branch with the other frozen; each branch gets half the steps);
* ``segflow_no_exchange``: both branches, joint loss, no exchange (two independent networks trained side by
  side): isolates the effect of the exchange.

Every method sees the same batches (same seed), the same widths, optimiser and step count. Metrics on the
validation pairs (``research.train.segflow`` docstring): foreground IoU, mIoU over background / foreground, EPE
(all pixels and foreground pixels) and the zero-flow EPE as a reference. ``claims`` in the summary compare each
two-branch method's mean over seeds with the single-task baselines (and count the seeds where it wins), whatever
the outcome.

Writes ``workdir/<method>_seed<s>/`` (loop outputs, ``results.json``), ``summary.json`` and ``summary.md``; a
finished run (``results.json`` with the same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from research import fileio
from research.configs import setting
from research.data import video
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.train import loop
from research.train import segflow as segflow_train
from research.train import task as task_lib

# method -> (registered model, schedule, extra model kwargs)
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "seg_only": ("segflow_seg_only", "joint", {}),
    "flow_only": ("segflow_flow_only", "joint", {}),
    "segflow": ("segflow", "joint", {}),
    "segflow_iterative": ("segflow", "iterative", {}),
    "segflow_no_exchange": ("segflow", "joint", {"exchange": False}),
}
TWO_BRANCH = ("segflow", "segflow_iterative", "segflow_no_exchange")
SEG_METRICS = ("fg_iou", "miou", "pixel_accuracy")
FLOW_METRICS = ("epe", "epe_fg")
_POSITIVE = ("num_steps", "batch_size", "learning_rate", "iterative_period", "eval_batch_size", "eval_pair_stride")


@dataclasses.dataclass(frozen=True)
class SegFlowConfig:
  """One SegFlow experiment (``python -m experiments.segflow``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  dataset_config: str = setting("default", "shapes_video config (default: 64x64, T = 32; small: 32x32, T = 16).",
                                choices=tuple(video.CONFIGS))
  foreground: str = setting("actor", "Foreground of the mask: 'actor' (instance 1, the video object; distractors "
                            "are background) or 'objects' (every shape).", choices=segflow_train.FOREGROUNDS)
  methods: tuple[str, ...] = setting(("seg_only", "flow_only", "segflow"), "Methods to train (see "
                                     "research.methods.segflow_experiment).", choices=tuple(METHODS))
  seeds: tuple[int, ...] = setting((0,), "Seeds; every method is trained once per seed.")
  num_steps: int = setting(400, "Training steps of every run.")
  batch_size: int = setting(16, "Global batch of frame pairs.")
  learning_rate: float = setting(2e-3, "Adam(W) peak learning rate (cosine decay to 0 over the run).")
  weight_decay: float = setting(0.0, "AdamW weight decay.")
  widths: tuple[int, ...] = setting((16, 24, 32, 48), "Channels of encoder/decoder level l (stride 2^l), both "
                                    "branches.")
  groups: int = setting(0, "GroupNorm groups after every hidden conv (0: none, as FlowNet).")
  flow_epsilon: float = setting(0.2, "Charbonnier epsilon of the training flow loss, sqrt(err^2 + eps^2) - eps "
                                "(0: the plain EPE; eval always reports the plain EPE).")
  seg_weight: float = setting(1.0, "Weight of the segmentation cross-entropy in the joint loss.")
  flow_weight: float = setting(1.0, "Weight of the multi-scale EPE in the joint loss.")
  flow_level_weights: tuple[float, ...] = setting((), "Multi-scale EPE weights, level 0 (full resolution) first "
                                                  "(FlowNet); at most one per width; empty: 0.5^l per level l.")
  iterative_period: int = setting(50, "Steps per block of the iterative schedule (segflow_iterative).")
  max_train_clips: int = setting(0, "Train on the first N train clips (0 = all).")
  max_validation_clips: int = setting(0, "Evaluate on the first N validation clips (0 = all).")
  eval_pair_stride: int = setting(1, "Evaluate every k-th frame pair of each validation clip.")
  eval_batch_size: int = setting(32, "Global eval batch (frame pairs).")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("weight_decay", "seg_weight", "flow_weight", "max_train_clips", "max_validation_clips",
                 "eval_every", "groups", "flow_epsilon"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.methods:
      raise ValueError(f"nothing to run: --methods is empty; choose from {','.join(METHODS)}")
    bad = [m for m in self.methods if m not in METHODS]
    if bad:
      raise ValueError(f"--methods {bad}: choose from {','.join(METHODS)}")
    if len(set(self.methods)) != len(self.methods):
      raise ValueError(f"--methods lists a method twice: {','.join(self.methods)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if not self.widths or min(self.widths) <= 0:
      raise ValueError(f"--widths={list(self.widths)} must be positive channel counts (one per level)")
    if len(self.flow_level_weights) > len(self.widths):
      raise ValueError(f"--flow_level_weights has {len(self.flow_level_weights)} entries for {len(self.widths)} "
                       f"levels (--widths); give at most one weight per level")
    if self.flow_level_weights and (min(self.flow_level_weights) < 0 or max(self.flow_level_weights) == 0):
      raise ValueError(f"--flow_level_weights={list(self.flow_level_weights)} must be >= 0 with one positive entry")
    size = video.CONFIGS[self.dataset_config].image_size
    if size % 2 ** (len(self.widths) - 1):
      raise ValueError(f"--widths has {len(self.widths)} levels: the {size}x{size} frames of shapes_video/"
                       f"{self.dataset_config} must be divisible by 2^{len(self.widths) - 1}; use fewer widths")


def check_devices(cfg: SegFlowConfig) -> None:
  """Both batches must split evenly over the devices."""
  n = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


def load_data(cfg: SegFlowConfig) -> dict[str, dict[str, np.ndarray]]:
  """``train`` and ``validation`` clips: ``frames`` [N, T, H, W, 3], ``instance`` [N, T, H, W], ``flow``
  [N, T, H, W, 2] (``video_id`` order; the first ``max_*_clips``)."""
  keys = ("frames", "instance", "flow", "video_id")
  return {split: video.load_clips(split, cfg.data_dir, cfg.dataset_config, keys=keys, limit=limit or None)
          for split, limit in (("train", cfg.max_train_clips), ("validation", cfg.max_validation_clips))}


def make_task(cfg: SegFlowConfig, method: str) -> segflow_train.SegFlowTask:
  """The :class:`SegFlowTask` of ``method`` (``METHODS``) under ``cfg``."""
  model_name, schedule, extra = METHODS[method]
  return segflow_train.SegFlowTask(
      model_name=model_name, model_kwargs={"widths": tuple(cfg.widths), "groups": cfg.groups, **extra}, schedule=schedule,
      iterative_period=cfg.iterative_period, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
      num_steps=cfg.num_steps, seg_weight=cfg.seg_weight, flow_weight=cfg.flow_weight,
      flow_level_weights=tuple(cfg.flow_level_weights), flow_epsilon=cfg.flow_epsilon)


def _train_one(name: str, task, cfg: SegFlowConfig, seed: int, data, workdir: str, run_config: dict
               ) -> dict[str, Any]:
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  train = data["train"]
  index = segflow_train.pair_index(len(train["frames"]), train["frames"].shape[1])
  batches = ArrayBatches(index, global_batch_size=cfg.batch_size, seed=seed,
                         transform=segflow_train.PairSampler(train, cfg.foreground))
  evals = segflow_train.eval_batches(data["validation"], global_batch_size=cfg.eval_batch_size,
                                     foreground=cfg.foreground, pair_stride=cfg.eval_pair_stride)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.num_steps, keep_checkpoints=1, log_every=25, progress_bar=False,
                         description=name)
  _, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out, eval_data=evals,
                          run_config=run_config)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


def _mean_std(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(np.mean(a)), float(np.std(a))


def compare(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
  """Claims: every two-branch method in ``runs`` vs ``seg_only`` (higher ``fg_iou``, ``miou``) and ``flow_only``
  (lower ``epe``), on the mean over seeds, plus the number of seeds (paired by position) where it wins."""
  claims: dict[str, Any] = {}
  for m in TWO_BRANCH:
    if m not in runs:
      continue
    checks = []
    for base, metric, better in (("seg_only", "fg_iou", 1.0), ("seg_only", "miou", 1.0), ("flow_only", "epe", -1.0)):
      if base not in runs:
        continue
      ours = [r[metric] for r in runs[m]]
      theirs = [r[metric] for r in runs[base]]
      wins = sum(better * (a - b) > 0 for a, b in zip(ours, theirs))
      key = f"{m}_{metric}_{'gt' if better > 0 else 'lt'}_{base}"
      claims[key] = bool(better * (np.mean(ours) - np.mean(theirs)) > 0)
      claims[f"{key}_seeds"] = f"{wins}/{min(len(ours), len(theirs))}"
      claims[f"{key}_delta"] = float(np.mean(ours) - np.mean(theirs))
      if metric != "miou":
        checks.append(claims[key])
    if len(checks) == 2:
      claims[f"{m}_improves_both_tasks"] = bool(all(checks))
  return claims


def claims_table(claims: dict[str, Any]) -> str:
  """The per-comparison claims of :func:`compare` as a markdown table (claim, holds, seeds won, mean delta)."""
  rows = [(k, claims[k], claims[f"{k}_seeds"], f"{claims[f'{k}_delta']:+.4f}") for k in claims
          if f"{k}_seeds" in claims]
  rows += [(k, v, "", "") for k, v in claims.items() if k.endswith("_improves_both_tasks")]
  return reporting.markdown_table(("claim", "holds (mean over seeds)", "seeds won", "mean delta"), rows)


def run(cfg: SegFlowConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every method x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  base = dataclasses.asdict(cfg)
  runs: dict[str, list[dict]] = {}
  walls: dict[str, list[float]] = {}
  tasks = {m: make_task(cfg, m) for m in cfg.methods}  # one object per method: seeds reuse its compiled step
  for seed in cfg.seeds:
    for method in cfg.methods:
      rc = {**base, "run": method, "seed": seed}
      results = _train_one(f"{method}_seed{seed}", tasks[method], cfg, seed, data, workdir, rc)
      runs.setdefault(method, []).append({k[len("eval_"):]: v for k, v in results.items()
                                          if k.startswith("eval_") and isinstance(v, (int, float))})
      walls.setdefault(method, []).append(float(results["wall_seconds"]))

  metric_names = SEG_METRICS + FLOW_METRICS
  table: dict[str, dict[str, tuple[float, float]]] = {}
  for name, results in runs.items():
    table[name] = {m: _mean_std([r[m] for r in results]) for m in metric_names if all(m in r for r in results)}
    table[name]["wall_seconds"] = _mean_std(walls[name])
  zero_epe = float(np.mean([r["zero_flow_epe"] for rs in runs.values() for r in rs]))
  claims = compare(runs)
  num_pairs = {s: int(len(d["frames"]) * (d["frames"].shape[1] - 1)) for s, d in data.items()}
  summary = {"config": base, "num_train_clips": int(len(data["train"]["frames"])),
             "num_validation_clips": int(len(data["validation"]["frames"])), "num_train_pairs": num_pairs["train"],
             "num_validation_pairs_evaluated": int(next(iter(runs.values()))[0]["pairs"]),
             "zero_flow_epe": zero_epe,
             "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()},
             "runs": {k: v for k, v in runs.items()}, "claims": claims,
             "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  header = ("method",) + metric_names + ("wall s",)
  rows = []
  for name, row in table.items():
    cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if m in row else "-" for m in metric_names]
    rows.append((name, *cells, f"{row['wall_seconds'][0]:.0f}"))
  size = data["train"]["frames"].shape[2]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# SegFlow on shapes_video/{cfg.dataset_config} ({size}x{size} frame pairs), foreground = "
      f"{cfg.foreground}, seeds {','.join(map(str, cfg.seeds))}, {cfg.num_steps} steps at batch {cfg.batch_size}",
      f"{summary['num_train_pairs']} train pairs ({summary['num_train_clips']} clips); "
      f"{summary['num_validation_pairs_evaluated']} validation pairs evaluated. fg_iou = IoU of the foreground, "
      f"miou = mean over background/foreground, epe = average end-point error (px) over all pixels, epe_fg over "
      f"foreground pixels; zero-flow EPE (predicting no motion) = {zero_epe:.3f}. Mean ± std over seeds.",
      reporting.markdown_table(header, rows),
      claims_table(claims) if claims else "claims: none checked (needs a two-branch method and a baseline)")
  return summary
