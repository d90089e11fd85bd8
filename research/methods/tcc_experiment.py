"""Temporal Cycle Consistency (Dwibedi et al. 2019) on ``shapes_video``: ``run(TCCConfig, workdir) -> summary``.

For every seed: one self-supervised TCC run per ``variants`` entry (§3.2: cycle-back classification, regression
with the variance-aware Gaussian loss, regression with plain MSE) and, with ``baseline=supervised``, the supervised
baseline (§5.2: the same network trained with phase-label cross-entropy on ``labeled_videos`` labelled videos only).
All runs train on clips of ONE action (``action``; the paper also trains per action class) through
``research.train.loop.train`` and are evaluated on the validation clips (``research.train.tcc`` docstring):
few-shot phase classification from frozen embeddings, phase-progression R^2, Kendall's tau of the nearest-neighbour
alignment and cycle-consistency accuracy.

The two claims checked (``claims`` in the summary): (1) the regression variant's few-shot accuracy is >= the
classification variant's (§6, Table 2: regression is best); (2) few-shot classification from TCC embeddings with
``labeled_videos`` labelled videos beats the supervised baseline trained on ``labeled_videos`` videos (§6,
Figure 5: self-supervised embeddings win when labels are few); the TCC side is the ``regression`` variant when it
was trained (else the first of ``variants``), chosen in advance rather than the best of the run. Few-shot draw ``g`` uses train-pool videos
``[g*n, (g+1)*n)``; the baseline of seed index ``i`` trains on draw ``i mod fewshot_repeats`` of
``n = labeled_videos`` videos, so both sides see the same kind of label budget.

Writes ``workdir/<run>/`` (loop outputs, ``results.json``), ``summary.json`` and ``summary.md``; a finished run
(``results.json`` with the same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
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
from research.ops.tcc import VARIANTS
from research.train import loop
from research.train import task as task_lib
from research.train import tcc as tcc_train

BASELINES = ("none", "supervised")
_POSITIVE = ("num_steps", "batch_size", "num_sampled_frames", "learning_rate", "temperature", "embedding_dim",
             "num_context", "context_stride", "fewshot_repeats", "labeled_videos", "num_eval_train",
             "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class TCCConfig:
  """One TCC experiment (``python -m experiments.tcc``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  dataset_config: str = setting("tcc32", "shapes_video config (tcc32: one monotone pass of the action per clip).",
                                choices=tuple(video.CONFIGS))
  action: str = setting("pour", "The action whose clips are aligned.", choices=video.ACTION_NAMES)
  variants: tuple[str, ...] = setting(("regression",), "TCC loss variants to train (--variant is the same flag).",
                                      choices=VARIANTS)
  baseline: str = setting("supervised", "Also train the supervised phase-label baseline ('none': skip it).",
                          choices=BASELINES)
  seeds: tuple[int, ...] = setting((0,), "Seeds; every variant (and the baseline) is trained once per seed.")
  num_steps: int = setting(300, "Training steps of every TCC run.")
  baseline_steps: int = setting(0, "Training steps of the supervised baseline (0 = --num_steps).")
  batch_size: int = setting(4, "Global batch of sequences (>= 2 per device: TCC aligns pairs within a device).")
  num_sampled_frames: int = setting(16, "Frames sampled at random per sequence and step (§3.3).")
  learning_rate: float = setting(1e-3, "Adam(W) learning rate.")
  temperature: float = setting(0.1, "Softmax temperature of the soft nearest neighbours (paper: 0.1).")
  lam: float = setting(0.001, "lambda of the variance-aware regression loss's log(sigma) term (paper: 0.001).")
  embedding_dim: int = setting(32, "Embedding width D (paper: 128).")
  num_context: int = setting(2, "Context frames k fused by the 3-D convolutions (paper: 2).")
  context_stride: int = setting(2, "Frames between context frames.")
  encoder_widths: tuple[int, ...] = setting((16, 32, 32), "Channels of the VGG-like frame encoder's stages.")
  conv3d_widths: tuple[int, ...] = setting((32,), "Channels of the embedder's 3x3x3 convolutions.")
  fewshot_videos: tuple[int, ...] = setting((1, 4), "Labelled videos per few-shot evaluation (one metric each).")
  fewshot_repeats: int = setting(3, "Disjoint draws of labelled videos per few-shot evaluation (averaged).")
  labeled_videos: int = setting(1, "Labelled videos of the supervised baseline (must be one of --fewshot_videos).")
  num_eval_train: int = setting(24, "Train videos in the eval pool (phase regression fit, few-shot draws).")
  max_train_videos: int = setting(0, "Use only the first N train clips of the action for TCC (0 = all).")
  max_validation_videos: int = setting(0, "Evaluate on the first N validation clips (0 = all).")
  eval_batch_size: int = setting(8, "Global eval batch (clips).")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")
  subtract_background: bool = setting(True, "Subtract each clip's per-pixel temporal median from its frames "
                                      "(static-camera background subtraction; a deviation from the paper, see "
                                      "research.train.tcc.preprocess).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("baseline_steps", "max_train_videos", "max_validation_videos", "eval_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.variants and self.baseline == "none":
      raise ValueError("nothing to run: --variants is empty and --baseline=none")
    bad = [v for v in self.variants if v not in VARIANTS]
    if bad:
      raise ValueError(f"--variant(s) {bad}: choose from {','.join(VARIANTS)}")
    if len(set(self.variants)) != len(self.variants):
      raise ValueError(f"--variants lists a variant twice: {','.join(self.variants)}")
    if self.baseline not in BASELINES:
      raise ValueError(f"--baseline={self.baseline!r}; choose one of {BASELINES}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if not self.fewshot_videos or min(self.fewshot_videos) <= 0:
      raise ValueError(f"--fewshot_videos must be positive video counts, got {list(self.fewshot_videos)}")
    if self.baseline == "supervised" and self.labeled_videos not in self.fewshot_videos:
      raise ValueError(f"--labeled_videos={self.labeled_videos} must be one of --fewshot_videos="
                       f"{','.join(map(str, self.fewshot_videos))} (the baseline is compared with that few-shot "
                       f"accuracy)")
    if max(self.fewshot_videos) > self.num_eval_train:
      raise ValueError(f"--fewshot_videos={max(self.fewshot_videos)} exceeds the eval pool --num_eval_train="
                       f"{self.num_eval_train}")
    if self.encoder_widths == () or self.conv3d_widths == ():
      raise ValueError("--encoder_widths and --conv3d_widths need at least one entry each")

  @property
  def model_kwargs(self) -> dict[str, Any]:
    return {"encoder_widths": tuple(self.encoder_widths), "conv3d_widths": tuple(self.conv3d_widths),
            "embedding_dim": self.embedding_dim, "num_context": self.num_context,
            "context_stride": self.context_stride}


def check_devices(cfg: TCCConfig) -> None:
  """TCC pairs sequences within one device's shard: the batch must split into >= 2 sequences per device."""
  n = jax.device_count()
  if cfg.batch_size % n or cfg.batch_size // n < 2:
    raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the {n} devices with >= 2 sequences "
                     f"each (TCC aligns pairs of sequences on a device): use --batch_size={2 * n}")
  if cfg.eval_batch_size % n:
    raise ValueError(f"--eval_batch_size={cfg.eval_batch_size} must be a multiple of the {n} devices")


def load_data(cfg: TCCConfig) -> dict[str, dict[str, np.ndarray]]:
  """``train`` (clips of the action, id order), ``pool`` (its first ``num_eval_train``) and ``validation``."""
  keys = ("frames", "phase", "phase_label", "video_id")
  train = video.load_clips("train", cfg.data_dir, cfg.dataset_config, actions=[cfg.action], keys=keys)
  val = video.load_clips("validation", cfg.data_dir, cfg.dataset_config, actions=[cfg.action], keys=keys,
                         limit=cfg.max_validation_videos or None)
  n = len(train["frames"])
  if n < cfg.num_eval_train:
    raise ValueError(f"--num_eval_train={cfg.num_eval_train} exceeds the {n} train clips of {cfg.action!r} in "
                     f"shapes_video/{cfg.dataset_config}")
  if len(val["frames"]) < 2:
    raise ValueError(f"--max_validation_videos={cfg.max_validation_videos}: alignment metrics need >= 2 clips")
  if cfg.num_sampled_frames > train["frames"].shape[1]:
    raise ValueError(f"--num_sampled_frames={cfg.num_sampled_frames} exceeds the {train['frames'].shape[1]} "
                     f"frames per clip of shapes_video/{cfg.dataset_config}")
  pool = {k: v[:cfg.num_eval_train] for k, v in train.items()}
  if cfg.max_train_videos:
    train = {k: v[:cfg.max_train_videos] for k, v in train.items()}
  return {"train": train, "pool": pool, "validation": val}


def _train_one(name: str, task, arrays, cfg: TCCConfig, seed: int, steps: int, data, workdir: str,
               run_config: dict) -> dict[str, Any]:
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  batches = ArrayBatches({"frames": arrays["frames"], "phase_label": arrays["phase_label"]},
                         global_batch_size=cfg.batch_size, seed=seed,
                         transform=tcc_train.FrameSampler(arrays["frames"].shape[1], cfg.num_sampled_frames))
  evals = tcc_train.eval_batches(data["pool"], data["validation"], global_batch_size=cfg.eval_batch_size)
  lcfg = loop.LoopConfig(num_steps=steps, seed=seed, eval_every=cfg.eval_every, checkpoint_every=steps,
                         keep_checkpoints=1, log_every=10, progress_bar=False, description=name)
  _, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out, eval_data=evals,
                          run_config=run_config)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


_METRICS = ("fewshot{n}_accuracy", "head_accuracy", "phase_r2", "kendall_tau", "cycle_accuracy")


def _mean_std(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(np.mean(a)), float(np.std(a))


def run(cfg: TCCConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every (variant | baseline) x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  num_phases = len(video.VIDEO_ACTIONS[cfg.action].phases)
  common = dict(model_kwargs=cfg.model_kwargs, num_phases=num_phases, fewshot_videos=tuple(cfg.fewshot_videos),
                fewshot_repeats=cfg.fewshot_repeats, learning_rate=cfg.learning_rate,
                subtract_background=cfg.subtract_background)
  base = dataclasses.asdict(cfg)
  runs: dict[str, list[dict]] = {}
  for i, seed in enumerate(cfg.seeds):
    for variant in cfg.variants:
      task = tcc_train.TCCTask(variant=variant, temperature=cfg.temperature, lam=cfg.lam, **common)
      rc = {**base, "run": variant, "seed": seed}
      runs.setdefault(variant, []).append(
          _train_one(f"{variant}_seed{seed}", task, data["train"], cfg, seed, cfg.num_steps, data, workdir, rc))
    if cfg.baseline == "supervised":
      n, g = cfg.labeled_videos, i % cfg.fewshot_repeats
      labeled = {k: v[g * n:(g + 1) * n] for k, v in data["pool"].items()}
      if len(labeled["frames"]) < n:
        raise ValueError(f"--labeled_videos={n} x draw {g}: the eval pool has only {len(data['pool']['frames'])} "
                         f"videos; raise --num_eval_train")
      task = tcc_train.SupervisedPhaseTask(**common)
      rc = {**base, "run": "supervised", "seed": seed, "labeled_video_ids": labeled["video_id"].tolist()}
      runs.setdefault("supervised", []).append(
          _train_one(f"supervised_seed{seed}", task, labeled, cfg, seed, cfg.baseline_steps or cfg.num_steps, data,
                     workdir, rc))

  metric_names = [m.format(n=n) for m in _METRICS for n in (cfg.fewshot_videos if "{n}" in m else (None,))]
  table: dict[str, dict[str, tuple[float, float]]] = {}
  for name, results in runs.items():
    table[name] = {m: _mean_std([r[f"eval_{m}"] for r in results]) for m in metric_names
                   if all(f"eval_{m}" in r for r in results)}
    table[name]["wall_seconds"] = _mean_std([r["wall_seconds"] for r in results])
  key = f"fewshot{cfg.labeled_videos}_accuracy"
  claims = {}
  if "regression" in table and "classification" in table:
    claims["regression_ge_classification"] = bool(table["regression"][key][0] >= table["classification"][key][0])
  if "supervised" in table and cfg.variants:
    ref = "regression" if "regression" in cfg.variants else cfg.variants[0]  # fixed in advance, not the best
    claims["tcc_fewshot_beats_supervised"] = bool(table[ref][key][0] > table["supervised"]["head_accuracy"][0])
    claims["tcc_fewshot_beats_supervised_compared"] = f"{ref} {key} vs supervised head_accuracy"
  summary = {"config": base, "num_train_videos": int(len(data["train"]["frames"])),
             "num_validation_videos": int(len(data["validation"]["frames"])), "num_phases": num_phases,
             "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()},
             "runs": {k: [{m: r.get(f"eval_{m}") for m in metric_names} for r in v] for k, v in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  header = ("method",) + tuple(metric_names) + ("wall s",)
  rows = []
  for name, row in table.items():
    cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if m in row else "-" for m in metric_names]
    rows.append((name, *cells, f"{row['wall_seconds'][0]:.0f}"))
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# TCC on shapes_video/{cfg.dataset_config}, action {cfg.action} ({num_phases} phases), seeds "
      f"{','.join(map(str, cfg.seeds))}, {cfg.num_steps} steps",
      f"{summary['num_train_videos']} train / {summary['num_validation_videos']} validation clips; few-shot "
      f"n = labelled videos (mean over {cfg.fewshot_repeats} draws); supervised = the same network trained with "
      f"phase labels of {cfg.labeled_videos} video(s); head_accuracy = its classifier on validation frames. "
      f"Mean ± std over seeds.",
      reporting.markdown_table(header, rows),
      "claims: " + (json.dumps(claims) if claims else "none checked (needs both variants / the baseline)"))
  return summary
