"""Colour-guided depth super-resolution (PAG-Net, Bansal et al. 2019) on ``shapes_rgbd``: ``run(DepthSRConfig,
workdir) -> summary``.

For every scale of ``scales`` (x4, x8: PAG-Net §4 reports x2-x16) and every seed, each model of ``models`` --
``pag_net`` (depth branch + RGB guidance gated by depth-driven attention) and ``depth_sr_unguided`` (the same depth
branch alone) -- is trained through ``research.train.loop.train`` on random crops of the training scenes, with
the low-resolution input made on the fly (``research.data.rgbd.degrade``: ``degradation`` downsampling by the
scale + Gaussian noise of ``noise_std`` m), and evaluated on the whole validation scenes: RMSE in metres of the
network and of bicubic upsampling (``jax.image.resize(..., "cubic")``) of the same inputs, overall, near depth
edges and on texture edges without a depth edge (``research.train.depth_sr``).

The claim checked per scale (``claims`` in the summary; the paper's Tables 1-3 ordering): RMSE guided <
unguided < bicubic (mean over seeds). Writes ``workdir/x<s>_<model>_seed<k>/`` (loop outputs, ``results.json``),
``summary.json`` and ``summary.md``; a finished run (``results.json`` with the same settings) is not trained
again.
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
from research.data import rgbd
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.train import depth_sr as dsr
from research.train import loop
from research.train import task as task_lib

MODELS = ("pag_net", "depth_sr_unguided")
GUIDED, UNGUIDED = MODELS
_POSITIVE = ("num_steps", "batch_size", "learning_rate", "features", "growth", "block_layers", "blocks_per_stage",
             "eval_batch_size", "depth_std")


@dataclasses.dataclass(frozen=True)
class DepthSRConfig:
  """One depth super-resolution experiment (``python -m experiments.depth_sr``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  # dataset_config and loss are plain string flags checked in __post_init__ (no absl enum): other experiments
  # define flags of the same names with other values, and they share one flag when imported together.
  dataset_config: str = setting("default", "shapes_rgbd config: default (64x64, 1000/100 scenes) or small (tests).")
  scales: tuple[int, ...] = setting((4, 8), "Upsampling factors (each 2, 4, 8 or 16; --scale is the same flag).")
  models: tuple[str, ...] = setting(MODELS, "Models to train per scale (--model is the same flag).", choices=MODELS)
  seeds: tuple[int, ...] = setting((0,), "Seeds; every model is trained once per scale and seed.")
  num_steps: int = setting(500, "Training steps per run.")
  batch_size: int = setting(16, "Global batch (crops).")
  crop: int = setting(32, "Training crop size in high-resolution px (0 = whole scenes; a multiple of every scale).")
  flip: bool = setting(True, "Random left-right flips of the training crops.")
  learning_rate: float = setting(2e-3, "Peak Adam learning rate (cosine decay to 0 over --num_steps).")
  warmup_steps: int = setting(20, "Linear warmup steps.")
  weight_decay: float = setting(0.0, "AdamW weight decay (0 = Adam).")
  loss: str = setting("l1", "Training loss on the standardised depth: l1 or l2.")
  features: int = setting(16, "Feature width of the depth and guidance branches.")
  growth: int = setting(12, "Growth rate (channels per layer) of the dense residual blocks.")
  block_layers: int = setting(3, "Conv layers per dense residual block.")
  blocks_per_stage: int = setting(1, "Dense residual blocks before each x2 upsampling.")
  degradation: str = setting("area", "Low-resolution input: area (block mean) or bicubic (antialiased) "
                             "downsampling.", choices=rgbd.DEGRADATIONS)
  noise_std: float = setting(0.0, "Gaussian noise (m) added to the low-resolution depth.")
  depth_mean: float = setting(3.0, "Depth standardisation: (d - depth_mean) / depth_std (m).")
  depth_std: float = setting(1.5, "Depth standardisation scale (m).")
  max_train_scenes: int = setting(0, "Use only the first N training scenes (0 = all).")
  max_validation_scenes: int = setting(0, "Evaluate on the first N validation scenes (0 = all).")
  eval_batch_size: int = setting(20, "Global eval batch (whole scenes).")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")
  eval_seed: int = setting(0, "Seed of the validation inputs' noise (the same for every run).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("warmup_steps", "weight_decay", "noise_std", "crop", "max_train_scenes", "max_validation_scenes",
                 "eval_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.loss not in dsr.LOSSES:
      raise ValueError(f"--loss={self.loss!r}; choose one of {dsr.LOSSES}")
    if not self.scales or len(set(self.scales)) != len(self.scales):
      raise ValueError(f"--scales must list distinct scales, got {list(self.scales)}")
    size = rgbd.CONFIGS[self.dataset_config].image_size if self.dataset_config in rgbd.CONFIGS else None
    if size is None:
      raise ValueError(f"--dataset_config={self.dataset_config!r}; choose one of {sorted(rgbd.CONFIGS)}")
    for s in self.scales:
      if s not in (2, 4, 8, 16):
        raise ValueError(f"--scales={','.join(map(str, self.scales))}: scale {s} is not 2, 4, 8 or 16 (PAG-Net "
                         f"upsamples in x2 stages)")
      if size % s:
        raise ValueError(f"--scales={','.join(map(str, self.scales))}: scale {s} does not divide the image size "
                         f"{size}x{size} of shapes_rgbd/{self.dataset_config}; use a scale that divides {size}")
      if self.crop and (self.crop % s or self.crop > size):
        raise ValueError(f"--crop={self.crop} must be a multiple of every scale (--scales has {s}) and at most the "
                         f"image size {size}: use e.g. --crop={max(self.scales) * 4} or --crop=0")
    if not self.models:
      raise ValueError(f"--models is empty: choose from {','.join(MODELS)}")
    bad = [m for m in self.models if m not in MODELS]
    if bad:
      raise ValueError(f"--models {bad}: choose from {','.join(MODELS)}")
    if len(set(self.models)) != len(self.models):
      raise ValueError(f"--models lists a model twice: {','.join(self.models)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")

  @property
  def model_kwargs(self) -> dict[str, Any]:
    return {"features": self.features, "growth": self.growth, "block_layers": self.block_layers,
            "blocks_per_stage": self.blocks_per_stage}


def check_devices(cfg: DepthSRConfig) -> None:
  """The global batches must split evenly over the devices."""
  n = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


def load_data(cfg: DepthSRConfig) -> dict[str, dict[str, np.ndarray]]:
  """``train`` and ``validation`` arrays ``image`` uint8 [N, H, W, 3], ``depth`` float32 [N, H, W, 1] (id order)."""
  keys = ("image", "depth")
  train = rgbd.load_scenes("train", cfg.data_dir, cfg.dataset_config, keys=keys, limit=cfg.max_train_scenes or None)
  val = rgbd.load_scenes("validation", cfg.data_dir, cfg.dataset_config, keys=keys,
                         limit=cfg.max_validation_scenes or None)
  if len(train["depth"]) < 1 or len(val["depth"]) < 1:
    raise ValueError(f"shapes_rgbd/{cfg.dataset_config}: empty split")
  return {"train": train, "validation": val}


def make_task(cfg: DepthSRConfig, model: str, scale: int) -> dsr.DepthSRTask:
  """The training task of one run."""
  return dsr.DepthSRTask(model=model, scale=scale, model_kwargs=cfg.model_kwargs, learning_rate=cfg.learning_rate,
                         num_steps=cfg.num_steps, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                         loss_type=cfg.loss, depth_mean=cfg.depth_mean, depth_std=cfg.depth_std)


def train_one(cfg: DepthSRConfig, data, model: str, scale: int, seed: int, workdir: str) -> dict[str, Any]:
  """Trains (or reuses) one run ``x<scale>_<model>_seed<seed>``; returns its results dict."""
  name = f"x{scale}_{model}_seed{seed}"
  out = os.path.join(workdir, name)
  run_config = {**dataclasses.asdict(cfg), "run": name, "model": model, "scale": scale, "seed": seed}
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  transform = dsr.DegradeTransform(scale, method=cfg.degradation, noise_std=cfg.noise_std, crop=cfg.crop,
                                   flip=cfg.flip)
  batches = ArrayBatches(data["train"], global_batch_size=cfg.batch_size, seed=seed, transform=transform)
  evals = dsr.eval_batches(data["validation"], scale=scale, global_batch_size=cfg.eval_batch_size,
                           method=cfg.degradation, noise_std=cfg.noise_std, seed=cfg.eval_seed)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.num_steps, keep_checkpoints=1, log_every=25, progress_bar=False,
                         description=name)
  _, results = loop.train(make_task(cfg, model, scale), batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                          eval_data=evals, run_config=run_config)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


_METRICS = ("rmse", "edge_rmse", "texture_rmse", "gain")


def _mean_std(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(np.mean(a)), float(np.std(a))


def run(cfg: DepthSRConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every scale x model x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  runs: dict[str, dict[str, list[dict]]] = {}
  for scale in cfg.scales:
    for seed in cfg.seeds:
      for model in cfg.models:
        runs.setdefault(f"x{scale}", {}).setdefault(model, []).append(
            train_one(cfg, data, model, scale, seed, workdir))

  table: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
  claims: dict[str, Any] = {}
  for key, by_model in runs.items():
    first = next(iter(by_model.values()))[0]
    rows = {"bicubic": {"rmse": (first["eval_bicubic_rmse"], 0.0), "edge_rmse": (first["eval_edge_bicubic_rmse"], 0.0),
                        "texture_rmse": (first["eval_texture_bicubic_rmse"], 0.0), "gain": (0.0, 0.0)}}
    for model, results in by_model.items():
      rows[model] = {m: _mean_std([r[f"eval_{m}"] for r in results]) for m in _METRICS}
      if all("eval_texture_attention" in r for r in results):
        for m in ("attention", "edge_attention", "texture_attention"):
          rows[model][m] = _mean_std([r[f"eval_{m}"] for r in results])
      rows[model]["wall_seconds"] = _mean_std([r["wall_seconds"] for r in results])
    table[key] = rows
    bic = rows["bicubic"]["rmse"][0]
    if UNGUIDED in rows:
      claims[f"{key}_unguided_lt_bicubic"] = bool(rows[UNGUIDED]["rmse"][0] < bic)
    if GUIDED in rows and UNGUIDED in rows:
      claims[f"{key}_guided_lt_unguided"] = bool(rows[GUIDED]["rmse"][0] < rows[UNGUIDED]["rmse"][0])
      claims[f"{key}_guided_lt_unguided_lt_bicubic"] = bool(
          claims[f"{key}_guided_lt_unguided"] and claims[f"{key}_unguided_lt_bicubic"])
  if claims:
    orders = [v for k, v in claims.items() if k.endswith("_guided_lt_unguided_lt_bicubic")]
    if orders:
      claims["all_scales_guided_lt_unguided_lt_bicubic"] = bool(all(orders))

  size = int(data["validation"]["depth"].shape[1])
  summary = {"config": dataclasses.asdict(cfg), "image_size": size,
             "num_train_scenes": int(len(data["train"]["depth"])),
             "num_validation_scenes": int(len(data["validation"]["depth"])),
             "table": {k: {name: {m: list(v) for m, v in row.items()} for name, row in rows.items()}
                       for k, rows in table.items()},
             "runs": {k: {name: [{m: r.get(f"eval_{m}") for m in _METRICS + ("bicubic_rmse",)} for r in rs]
                          for name, rs in by_model.items()} for k, by_model in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  header = ("scale", "method", "RMSE (m)", "edge RMSE", "texture RMSE", "gain vs bicubic", "attention edge / texture",
            "wall s")
  md_rows = []
  for key, rows in table.items():
    for name, row in rows.items():
      cell = lambda m, row=row: f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if m in row else "-"  # noqa: E731
      att = (f"{row['edge_attention'][0]:.2f} / {row['texture_attention'][0]:.2f}" if "edge_attention" in row
             else "-")
      wall = f"{row['wall_seconds'][0]:.0f}" if "wall_seconds" in row else "-"
      md_rows.append((key, name, cell("rmse"), cell("edge_rmse"), cell("texture_rmse"),
                      f"{row['gain'][0]:.3f}", att, wall))
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# Depth super-resolution on shapes_rgbd/{cfg.dataset_config} ({size}x{size}), scales "
      f"{','.join(f'x{s}' for s in cfg.scales)}, seeds {','.join(map(str, cfg.seeds))}, {cfg.num_steps} steps",
      f"{summary['num_train_scenes']} train / {summary['num_validation_scenes']} validation scenes; input: "
      f"{cfg.degradation} downsampling + N(0, {cfg.noise_std} m) noise; RMSE in metres on the whole validation "
      f"images (edge: within {dsr.DepthSRTask.band} px of a depth edge; texture: colour edges away from depth "
      f"edges). bicubic = jax.image.resize cubic of the same inputs. Mean ± std over seeds.",
      reporting.markdown_table(header, md_rows),
      "claims: " + (json.dumps(claims) if claims else "none checked (needs both models)"))
  return summary
