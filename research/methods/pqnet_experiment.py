"""PQ-NET (Wu et al., CVPR 2020, "PQ-NET: A Generative Part Seq2Seq Network for 3D Shapes") end to end on the offline
``shapes3d_parts`` dataset (``research.data.parts3d``: procedural chairs / tables / lamps with part labels):
``run(PQNetConfig, workdir)`` -> summary.

Per seed, every stage trains through the ONE loop (``research.train.loop``) as a Task:

1. the part auto-encoder (§3.1, ``research.train.pqnet.PartAETask``) on every training part, normalised into its
   box at ``part_resolution^3``, with ``points_per_part`` fixed surface-biased samples per part (``num_points`` drawn
   per step);
2. the part Seq2Seq (§3.2, ``Seq2SeqTask``) on the codes of the FROZEN stage-1 encoder + the part boxes (teacher
   forcing, Eq. 2);
3. the latent GAN (PQ-NET generates shapes as IM-NET does: a WGAN-GP on the auto-encoder latents):
   ``research.train.generative.GANTask`` with ``mlp_generator`` / ``mlp_critic`` on the training latents
   standardised per dimension (mean / std of the training latents; generated latents are mapped back). A Gaussian
   fitted to the same latents (full covariance) is the simpler generator it is compared with.

Evaluation on the test split (the first ``num_eval_shapes`` shapes, all by default), every shape assembled on the
dataset's ``R^3`` grid by ``research.train.pqnet.assemble_batch`` (the part decoder queried inside each part's box,
the union of the parts, ``> 0.5``):

* reconstruction, the full auto-encoding through parts: voxels -> normalised parts -> part codes -> Seq2Seq latent ->
  free-running decoding (codes, boxes, stop) -> parts decoded and placed in their decoded boxes. Voxel IoU and the
  Chamfer distance (``generative_metrics.chamfer_distance``: the SUM of the two mean SQUARED nearest-neighbour
  distances, the IM-NET / PQ-NET convention, in unit-cube coordinates; tables show it x 1e3) between the boundary
  voxel centres (occupied voxels with an empty 6-neighbour) of the reconstruction and of the ground truth; an empty
  reconstruction has no Chamfer distance (counted in ``empty_fraction``, left out of the mean); part-count accuracy.
  Context: ``part_ae_only`` = the stage-1 auto-encoder with the TRUE boxes and part count (the bound the Seq2Seq can
  reach), and ``mean_shape`` = the mean training occupancy thresholded at the level (0.05 ... 0.95) that maximises the
  mean training IoU, the same prediction for every test shape.
* generation: ``num_generated`` shapes from the latent GAN, from the Gaussian, and ``num_generated`` random TRAINING
  shapes as the reference a perfect generator would match. Against the test shapes, with Chamfer distances between
  ``cloud_points`` boundary points per shape (sampled with a fixed generator; empty shapes are never anyone's
  nearest neighbour): MMD-CD (Achlioptas et al. 2018: mean over test shapes of the distance to the nearest generated
  shape; lower is better), COV-CD (the fraction of test shapes that are the nearest neighbour of some generated
  shape; higher), ``nn_cd`` (mean over non-empty generated shapes of the distance to the nearest test shape:
  fidelity); ``valid`` = non-empty and one 26-connected component (every dataset shape is), ``plausible_part_count``
  = the decoded number of parts is one the dataset has (3, 5, 6 or 8).
* interpolation: the latents of test shapes ``interp_pair`` linearly blended in ``interp_steps`` steps and decoded;
  the fraction of valid shapes along the path and the part counts.

Figures per seed (depth-shaded front | side views, white background): ``reconstructions.png`` (rows: ground truth,
PQ-NET, part AE with true boxes; 8 test shapes), ``samples.png`` (16 latent-GAN samples), ``interpolation.png``.
Outputs: ``workdir/seed<s>/`` (loop workdirs ``part_ae/``, ``seq2seq/``, ``latent_gan/`` with checkpoints and
metrics, ``results.json``, ``run.json``, the figures); a finished seed whose settings are unchanged is reused;
``summary.json`` / ``summary.md`` with mean ± std over seeds and the claims computed from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from research import fileio
from research.configs import setting
from research.data import parts3d
from research.data.memory import ArrayBatches, padded_eval_rows
from research.methods import reporting
from research.models import registry
from research.models.generative import gan as gan_models  # noqa: F401  (registers mlp_generator / mlp_critic)
from research.models.generative import pqnet
from research.train import generative as gen
from research.train import generative_metrics as gm
from research.train import loop
from research.train import pqnet as pt
from research.train import task as task_lib

PLAUSIBLE_PART_COUNTS = (3, 5, 6, 8)  # chairs 6 / 8, tables 3 / 5, lamps 3 (research.data.parts3d)
GENERATORS = ("latent_gan", "gaussian", "train_shapes")


@dataclasses.dataclass(frozen=True)
class PQNetConfig:
  """One PQ-NET experiment (``python -m experiments.pqnet``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  data_config: str = setting("default", "shapes3d_parts config: default (32^3, 1200 train / 300 test shapes) or "
                             "small (16^3, 120 / 30).", choices=tuple(parts3d.CONFIGS))
  seeds: tuple[int, ...] = setting((0,), "Seeds (one full run each: part AE, Seq2Seq, latent GAN, evaluation).")
  num_eval_shapes: int = setting(0, "Test shapes evaluated (the first N; 0 = all).")
  # stage 1: part auto-encoder (§3.1)
  part_resolution: int = setting(16, "Resolution r of the normalised part grids (a power of two >= 8).")
  points_per_part: int = setting(1024, "Fixed surface-biased samples stored per training part.")
  num_points: int = setting(512, "Samples per part per training step (<= --points_per_part).")
  surface_fraction: float = setting(0.5, "Fraction of the samples drawn near the part's surface.")
  code_dim: int = setting(64, "Part code size.")
  enc_width: int = setting(8, "Part encoder base width (3-D CNN channels width * 2^i).")
  dec_width: int = setting(8, "IM-NET decoder width w (hidden layers 16w, 8w, 4w, 2w, w).")
  dec_layers: int = setting(5, "IM-NET decoder hidden layers.")
  ae_norm: str = setting("batch", "Part encoder normalisation.", choices=pqnet.NORMS)
  ae_loss: str = setting("mse", "Occupancy loss: mse (IM-NET / PQ-NET) or bce.", choices=pqnet.OCCUPANCY_LOSSES)
  ae_steps: int = setting(2000, "Part auto-encoder training steps.")
  ae_batch_size: int = setting(32, "Parts per part auto-encoder step (global).")
  ae_learning_rate: float = setting(1e-3, "Part auto-encoder Adam learning rate (cosine decay to 0.1x).")
  # stage 2: Seq2Seq (§3.2)
  s2s_hidden: int = setting(64, "Seq2Seq encoder GRU units per direction (the decoder has twice as many).")
  s2s_layers: int = setting(2, "Stacked GRU layers of the Seq2Seq encoder and decoder.")
  latent_dim: int = setting(64, "Shape latent size.")
  head_hidden: int = setting(64, "Hidden units of the decoder's code / box / stop heads.")
  s2s_steps: int = setting(5000, "Seq2Seq training steps.")
  s2s_batch_size: int = setting(64, "Shapes per Seq2Seq step (global).")
  s2s_learning_rate: float = setting(3e-3, "Seq2Seq Adam learning rate (cosine decay to 0.1x).")
  stop_weight: float = setting(0.01, "Weight of the stop-sign BCE in Eq. 2 (0.01: the authors' code).")
  clip_norm: float = setting(1.0, "Seq2Seq gradient clipping to this global norm (0: off).")
  # stage 3: latent GAN (IM-NET-style WGAN-GP on the Seq2Seq latents)
  gan_steps: int = setting(1500, "Latent WGAN-GP generator iterations.")
  gan_batch_size: int = setting(64, "Latents per critic update (global).")
  n_critic: int = setting(5, "Critic updates per generator iteration (WGAN-GP: 5).")
  gp_weight: float = setting(10.0, "WGAN-GP penalty weight lambda.")
  gan_learning_rate: float = setting(1e-4, "Adam learning rate of both latent-GAN nets (betas 0, 0.9: WGAN-GP).")
  z_dim: int = setting(32, "Noise size of the latent generator.")
  gan_hidden: int = setting(256, "Hidden units of the latent generator and critic MLPs.")
  gan_depth: int = setting(2, "Hidden layers of the latent generator and critic MLPs.")
  # evaluation
  num_generated: int = setting(300, "Shapes generated per generator for the generation metrics.")
  cloud_points: int = setting(256, "Boundary points per shape for the generation Chamfer distances.")
  interp_pair: tuple[int, ...] = setting((0, 4), "Two test shape indices to interpolate between.")
  interp_steps: int = setting(8, "Shapes along the interpolation (endpoints included).")
  eval_every: int = setting(0, "Loop evaluation every N steps of each stage (0: only at the end).")
  eval_batch_size: int = setting(128, "Global eval batch of every stage (a multiple of the device count).")
  checkpoint_every: int = setting(0, "Checkpoint every N steps of each stage (0: only at its end).")

  def __post_init__(self):
    for name in ("points_per_part", "num_points", "code_dim", "enc_width", "dec_width", "dec_layers", "ae_steps",
                 "ae_batch_size", "ae_learning_rate", "s2s_hidden", "s2s_layers", "latent_dim", "head_hidden",
                 "s2s_steps", "s2s_batch_size", "s2s_learning_rate", "gan_steps", "gan_batch_size", "n_critic",
                 "gan_learning_rate", "z_dim", "gan_hidden", "gan_depth", "num_generated", "cloud_points",
                 "eval_batch_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("num_eval_shapes", "stop_weight", "clip_norm", "gp_weight", "eval_every", "checkpoint_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.data_config not in parts3d.CONFIGS:
      raise ValueError(f"--data_config={self.data_config!r}; choose one of {tuple(parts3d.CONFIGS)}")
    r = self.part_resolution
    if r < 8 or r & (r - 1):
      raise ValueError(f"--part_resolution={r} must be a power of two >= 8 (the part encoder halves it down to 4^3)")
    if self.num_points > self.points_per_part:
      raise ValueError(f"--num_points={self.num_points} exceeds --points_per_part={self.points_per_part}; lower "
                       f"--num_points or store more samples per part")
    if not 0.0 <= self.surface_fraction <= 1.0:
      raise ValueError(f"--surface_fraction={self.surface_fraction} must be in [0, 1]")
    if self.ae_norm not in pqnet.NORMS:
      raise ValueError(f"--ae_norm={self.ae_norm!r}; choose one of {pqnet.NORMS}")
    if self.ae_loss not in pqnet.OCCUPANCY_LOSSES:
      raise ValueError(f"--ae_loss={self.ae_loss!r}; choose one of {pqnet.OCCUPANCY_LOSSES}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if len(self.interp_pair) != 2 or min(self.interp_pair) < 0 or self.interp_pair[0] == self.interp_pair[1]:
      raise ValueError(f"--interp_pair must be two different test shape indices >= 0, got {list(self.interp_pair)}")
    if self.interp_steps < 2:
      raise ValueError(f"--interp_steps={self.interp_steps} must be >= 2 (the two endpoints)")
    if self.num_generated < 2:
      raise ValueError(f"--num_generated={self.num_generated} must be >= 2 (Gaussian fit and coverage)")


def check_devices(cfg: PQNetConfig) -> None:
  """Every global batch must split evenly over the devices (the loop shards the batch)."""
  n = jax.device_count()
  for name in ("ae_batch_size", "s2s_batch_size", "gan_batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


# ============================================================================================== data


def load_data(cfg: PQNetConfig) -> dict[str, dict[str, np.ndarray]]:
  """``{'train'|'test': parts3d arrays}`` (the test split cut to ``num_eval_shapes``)."""
  keys = ("voxels", "parts", "num_parts", "part_boxes", "category")
  data = {s: parts3d.load_arrays(s, cfg.data_dir, cfg.data_config, keys=keys) for s in parts3d.SPLITS}
  n_test = len(data["test"]["num_parts"])
  if cfg.num_eval_shapes > n_test:
    raise ValueError(f"--num_eval_shapes={cfg.num_eval_shapes} exceeds the {n_test} test shapes of "
                     f"shapes3d_parts/{cfg.data_config}")
  if max(cfg.interp_pair) >= (cfg.num_eval_shapes or n_test):
    raise ValueError(f"--interp_pair={list(cfg.interp_pair)} must index the {cfg.num_eval_shapes or n_test} "
                     f"evaluated test shapes")
  if cfg.num_eval_shapes:
    data["test"] = {k: v[:cfg.num_eval_shapes] for k, v in data["test"].items()}
  return data


def prepare(cfg: PQNetConfig, data) -> dict[str, Any]:
  """Seed-independent inputs: normalised part grids per shape (``grids_<split>`` uint8 [S, P, r, r, r]) and the
  stage-1 training rows (``train_parts``, fixed samples drawn with generator seed 0)."""
  out: dict[str, Any] = {}
  for split in parts3d.SPLITS:
    d = data[split]
    out[f"grids_{split}"] = pt.part_grids(d["parts"], d["part_boxes"], d["num_parts"], cfg.part_resolution)
  out["train_parts"] = pt.part_samples(out["grids_train"], data["train"]["num_parts"],
                                       points_per_part=cfg.points_per_part, seed=0,
                                       surface_fraction=cfg.surface_fraction)
  g, n = out["grids_test"], data["test"]["num_parts"]
  out["test_part_voxels"] = np.concatenate([g[s, :int(n[s])] for s in range(len(n))])
  return out


# ============================================================================================== metrics


def boundary_voxels(v: np.ndarray) -> np.ndarray:
  """bool [X, Y, Z]: occupied voxels with an empty (or outside) 6-neighbour."""
  v = np.asarray(v, bool)
  return v & ~ndimage.binary_erosion(v, border_value=0)


def boundary_points(v: np.ndarray) -> np.ndarray:
  """float64 [M, 3]: the centres ``(ijk + 0.5) / R`` of the boundary voxels of ``v`` [R, R, R] (unit cube)."""
  return (np.argwhere(boundary_voxels(v)) + 0.5) / v.shape[0]


def reconstruction_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
  """Per shape IoU and Chamfer of bool grids [S, R, R, R]: ``{'iou' [S], 'chamfer' [S] (NaN for an empty
  prediction), 'empty' [S]}``."""
  iou = np.asarray(gm.voxel_iou(jnp.asarray(pred), jnp.asarray(target)), np.float64)
  cd = np.full(len(pred), np.nan)
  empty = ~pred.reshape(len(pred), -1).any(1)
  for i in np.flatnonzero(~empty):
    cd[i] = gm.chamfer_distance(boundary_points(pred[i]), boundary_points(target[i]))
  return {"iou": iou, "chamfer": cd, "empty": empty}


def summarize_reconstruction(m: dict[str, Any], prefix: str) -> dict[str, float]:
  cd = m["chamfer"][~m["empty"]]
  return {f"{prefix}_iou": float(np.mean(m["iou"])), f"{prefix}_chamfer": float(np.mean(cd)) if len(cd) else None,
          f"{prefix}_empty_fraction": float(np.mean(m["empty"]))}


def mean_shape_baseline(train_voxels: np.ndarray, test_voxels: np.ndarray) -> dict[str, float]:
  """The mean training occupancy thresholded at the level maximising the mean training IoU, scored on the test set."""
  freq = train_voxels.reshape(len(train_voxels), -1).astype(np.float32).mean(0)
  tv = train_voxels.reshape(len(train_voxels), -1) > 0
  best = (-1.0, 0.5)
  for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
    pred = freq > t
    if not pred.any():
      continue
    inter = (tv & pred).sum(1)
    union = (tv | pred).sum(1)
    best = max(best, (float(np.mean(inter / np.maximum(union, 1))), float(t)))
  shape = train_voxels.shape[1:]
  pred = np.broadcast_to((freq > best[1]).reshape(shape), test_voxels.shape)
  out = summarize_reconstruction(reconstruction_metrics(np.ascontiguousarray(pred), test_voxels > 0), "mean_shape")
  return {**out, "mean_shape_threshold": best[1]}


def is_valid_shape(v: np.ndarray) -> bool:
  """Non-empty and a single 26-connected component."""
  if not v.any():
    return False
  return ndimage.label(v, structure=np.ones((3, 3, 3), bool))[1] == 1


def point_clouds(voxels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(clouds float32 [S, n, 3], non-empty bool [S])``: ``n`` boundary points per shape drawn with
  ``default_rng([seed, i])`` (with replacement when there are fewer); empty shapes get zeros."""
  clouds = np.zeros((len(voxels), n, 3), np.float32)
  ok = np.zeros(len(voxels), bool)
  for i, v in enumerate(voxels):
    pts = boundary_points(v)
    if len(pts):
      rng = np.random.default_rng([seed, i])
      clouds[i] = pts[rng.choice(len(pts), n, replace=len(pts) < n)]
      ok[i] = True
  return clouds, ok


@jax.jit
def _pairwise_chamfer(a, b):
  return jax.lax.map(lambda x: gm.chamfer_distance_batch(jnp.broadcast_to(x, b.shape), b), a)


def pairwise_chamfer(a: np.ndarray, a_ok: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float64 [G, T] Chamfer distances between clouds ``a`` [G, n, 3] and ``b`` [T, n, 3]; rows of empty shapes
  (``a_ok`` False) are +inf."""
  d = np.asarray(_pairwise_chamfer(jnp.asarray(a), jnp.asarray(b)), np.float64)
  d[~a_ok] = np.inf
  return d


def generation_metrics(voxels: np.ndarray, num_parts: np.ndarray | None, test_clouds: np.ndarray, cfg: PQNetConfig,
                       seed: int) -> dict[str, float]:
  """MMD-CD, COV-CD, nn_cd, valid and plausible-part-count fractions of generated shapes [G, R, R, R] (bool)
  against the test clouds (module docstring)."""
  clouds, ok = point_clouds(voxels, cfg.cloud_points, seed)
  d = pairwise_chamfer(clouds, ok, test_clouds)  # [G, T]
  out = {"valid": float(np.mean([is_valid_shape(v) for v in voxels])), "non_empty": float(np.mean(ok))}
  if ok.any():
    out["mmd_cd"] = float(np.mean(d.min(0)))
    out["cov_cd"] = float(len(np.unique(np.argmin(d[ok], 1))) / d.shape[1])
    out["nn_cd"] = float(np.mean(d[ok].min(1)))
  else:
    out.update(mmd_cd=None, cov_cd=0.0, nn_cd=None)
  if num_parts is not None:
    out["plausible_part_count"] = float(np.mean(np.isin(num_parts, PLAUSIBLE_PART_COUNTS)))
  return out


# ============================================================================================== renders


def render_views(v: np.ndarray) -> np.ndarray:
  """float32 [R, 2R + 1] in [0, 1]: depth-shaded front (x right, y up, seen from z = 0) | side (z right, seen from
  x = 0) views of a voxel grid [R, R, R] (x, y, z); background white, nearer surfaces darker."""
  v = np.asarray(v, bool)
  r = v.shape[0]

  def view(occ):  # occ [W (horizontal), H (vertical, up), D (depth from the viewer)]
    hit = occ.any(-1)
    depth = np.argmax(occ, -1) / max(r - 1, 1)
    img = np.where(hit, 0.15 + 0.6 * depth, 1.0)
    return img.T[::-1]  # rows: top (high y) first

  gap = np.ones((r, 1), np.float32)
  return np.concatenate([view(v), gap, view(v.transpose(2, 1, 0))], 1).astype(np.float32)


def save_voxel_grid(path: str, rows: list[np.ndarray], scale: int = 3) -> None:
  """One PNG row per list entry of voxel grids [n, R, R, R] (front | side views, 2 px gaps), upscaled (process 0)."""
  if not fileio.main_process():
    return
  from PIL import Image
  tiles = [[render_views(v) for v in row] for row in rows]
  h, w = tiles[0][0].shape
  ncol = max(len(t) for t in tiles)
  grid = np.full((len(tiles) * (h + 2) + 2, ncol * (w + 2) + 2), 0.85, np.float32)
  for i, row in enumerate(tiles):
    for j, t in enumerate(row):
      grid[2 + i * (h + 2):2 + i * (h + 2) + h, 2 + j * (w + 2):2 + j * (w + 2) + w] = t
  img = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


# ============================================================================================== tasks


def make_part_ae_task(cfg: PQNetConfig) -> pt.PartAETask:
  model = registry.create("pqnet_part_ae", code_dim=cfg.code_dim, enc_width=cfg.enc_width, width=cfg.dec_width,
                          dec_layers=cfg.dec_layers, norm=cfg.ae_norm)
  return pt.PartAETask(model=model, learning_rate=cfg.ae_learning_rate, num_steps=cfg.ae_steps, loss_kind=cfg.ae_loss)


def make_seq2seq_task(cfg: PQNetConfig) -> pt.Seq2SeqTask:
  model = registry.create("pqnet_seq2seq", code_dim=cfg.code_dim, max_parts=parts3d.MAX_PARTS, hidden=cfg.s2s_hidden,
                          num_layers=cfg.s2s_layers, latent_dim=cfg.latent_dim, head_hidden=cfg.head_hidden)
  return pt.Seq2SeqTask(model=model, learning_rate=cfg.s2s_learning_rate, num_steps=cfg.s2s_steps,
                        clip_norm=cfg.clip_norm, stop_weight=cfg.stop_weight)


def make_gan_task(cfg: PQNetConfig, seed: int) -> gen.GANTask:
  g = registry.create("mlp_generator", hidden=cfg.gan_hidden, depth=cfg.gan_depth, out_dim=cfg.latent_dim)
  d = registry.create("mlp_critic", hidden=cfg.gan_hidden, depth=cfg.gan_depth, norm="none")
  return gen.GANTask(generator=g, critic=d, loss_type="wgan_gp", z_dim=cfg.z_dim, data_shape=(cfg.latent_dim,),
                     optimizers=gen.paper_optimizers("wgan_gp", learning_rate=cfg.gan_learning_rate),
                     n_critic=cfg.n_critic, gp_weight=cfg.gp_weight, eval_seed=seed)


def _loop_config(cfg: PQNetConfig, steps: int, seed: int, name: str) -> loop.LoopConfig:
  return loop.LoopConfig(num_steps=steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=min(cfg.checkpoint_every or steps, steps), keep_checkpoints=1, log_every=50,
                         progress_bar=False, description=name)


def _stage_results(results: dict[str, Any], prefix: str) -> dict[str, Any]:
  keep = {k: v for k, v in results.items() if k.startswith("eval_")}
  keep.update(final_train_loss=results.get("final_train_loss"), num_params=results.get("num_params"),
              train_seconds=results.get("train_seconds"))
  return {f"{prefix}_{k}": v for k, v in keep.items()}


# ============================================================================================== one seed


def train_run(cfg: PQNetConfig, data, get_prep, test_clouds: np.ndarray, seed: int, workdir: str) -> dict[str, Any]:
  """Trains and evaluates one seed (module docstring); reuses a finished run with the same settings."""
  out = os.path.join(workdir, f"seed{seed}")
  run_config = {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "seeds"}, "seed": seed}
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  t0 = time.time()
  prep = get_prep()
  mesh = task_lib.make_mesh()
  tr, te = data["train"], data["test"]
  grid = tr["voxels"].shape[1]
  results: dict[str, Any] = {"seed": seed}

  # stage 1: part auto-encoder (numpy data seeds 1000 s + stage; loop init keys from PRNGKey(seed))
  ae = make_part_ae_task(cfg)
  s1, r1 = loop.train(ae, pt.part_batches(prep["train_parts"], global_batch_size=cfg.ae_batch_size,
                                          num_points=cfg.num_points, seed=1000 * seed + 1),
                      config=_loop_config(cfg, cfg.ae_steps, seed, f"seed{seed} part AE"), mesh=mesh,
                      workdir=os.path.join(out, "part_ae"),
                      eval_data=pt.part_eval_batches(prep["test_part_voxels"], global_batch_size=cfg.eval_batch_size),
                      run_config={**run_config, "stage": "part_ae"})
  results.update(_stage_results(r1, "part_ae"))
  ae_params, ae_state = jax.device_get(s1.params), jax.device_get(s1.model_state)
  codes = {s: pt.encode_parts(ae, ae_params, ae_state, prep[f"grids_{s}"], data[s]["num_parts"])
           for s in parts3d.SPLITS}

  # stage 2: Seq2Seq on the frozen encoder's codes
  s2s = make_seq2seq_task(cfg)
  s2, r2 = loop.train(s2s, pt.shape_batches(codes["train"], tr["part_boxes"], tr["num_parts"],
                                            global_batch_size=cfg.s2s_batch_size, seed=1000 * seed + 2),
                      config=_loop_config(cfg, cfg.s2s_steps, seed, f"seed{seed} Seq2Seq"), mesh=mesh,
                      workdir=os.path.join(out, "seq2seq"),
                      eval_data=pt.shape_eval_batches(codes["test"], te["part_boxes"], te["num_parts"],
                                                      global_batch_size=cfg.eval_batch_size),
                      run_config={**run_config, "stage": "seq2seq"})
  results.update(_stage_results(r2, "seq2seq"))
  s2s_params = jax.device_get(s2.params)
  bs = cfg.eval_batch_size
  encode = jax.jit(lambda c, b, n: s2s.encode(s2s_params, {"codes": c, "boxes": b, "num_parts": n}))
  decode = jax.jit(lambda z: s2s.decode(s2s_params, z))
  latents = {s: pt.map_batched(encode, (codes[s], data[s]["part_boxes"].astype(np.float32),
                                        data[s]["num_parts"].astype(np.int32)), bs) for s in parts3d.SPLITS}
  part_decode = pt.part_decoder(ae, ae_params, ae_state)

  def shapes_from_latents(z):
    dec = pt.map_batched(decode, (np.asarray(z, np.float32),), bs)
    occ = pt.assemble_batch(part_decode, dec["codes"], dec["boxes"], dec["num_parts"], grid)
    return occ > 0.5, dec["num_parts"]

  # reconstruction: the full auto-encoding through parts, and the part AE alone with the true boxes and count
  target = te["voxels"] > 0
  recon, recon_parts = shapes_from_latents(latents["test"])
  results.update(summarize_reconstruction(reconstruction_metrics(recon, target), "recon"))
  results["recon_part_count_accuracy"] = float(np.mean(recon_parts == te["num_parts"]))
  ae_only = pt.assemble_batch(part_decode, codes["test"], te["part_boxes"], te["num_parts"], grid) > 0.5
  results.update(summarize_reconstruction(reconstruction_metrics(ae_only, target), "part_ae_only"))

  # stage 3: latent WGAN-GP on standardised latents
  mu, sd = latents["train"].mean(0), latents["train"].std(0) + 1e-6
  std = lambda z: ((z - mu) / sd).astype(np.float32)  # noqa: E731
  gan = make_gan_task(cfg, seed)
  z_train, z_test = std(latents["train"]), std(latents["test"])

  def gan_evals():
    for rows, valid in padded_eval_rows(len(z_test), bs):
      yield {"x": z_test[rows], "index": rows.astype(np.int32), "label": np.zeros(len(rows), np.int32),
             "valid": valid}

  s3, r3 = loop.train(gan, ArrayBatches({"x": z_train, "label": np.zeros(len(z_train), np.int32)},
                                        global_batch_size=cfg.gan_batch_size * cfg.n_critic, seed=1000 * seed + 3),
                      config=_loop_config(cfg, cfg.gan_steps, seed, f"seed{seed} latent GAN"), mesh=mesh,
                      workdir=os.path.join(out, "latent_gan"), eval_data=gan_evals,
                      run_config={**run_config, "stage": "latent_gan"})
  results.update(_stage_results(r3, "latent_gan"))
  index = jnp.arange(cfg.num_generated, dtype=jnp.int32)
  gan_z = np.asarray(jax.jit(gan.sample)(jax.device_get(s3.params), jax.device_get(s3.model_state), index))
  generated = {"latent_gan": shapes_from_latents(gan_z * sd + mu)}
  cov = np.cov(latents["train"], rowvar=False)
  gauss_z = np.random.default_rng([seed, 4]).multivariate_normal(latents["train"].mean(0), cov, cfg.num_generated,
                                                                 method="eigh")
  generated["gaussian"] = shapes_from_latents(gauss_z)
  pick = np.random.default_rng([seed, 5]).choice(len(tr["voxels"]), cfg.num_generated,
                                                 replace=cfg.num_generated > len(tr["voxels"]))
  generated["train_shapes"] = (tr["voxels"][pick] > 0, tr["num_parts"][pick])
  for name, (vox, n) in generated.items():
    for k, v in generation_metrics(vox, n, test_clouds, cfg, seed).items():
      results[f"gen_{name}_{k}"] = v

  # interpolation between two test shapes' latents
  a, b = cfg.interp_pair
  t = np.linspace(0.0, 1.0, cfg.interp_steps)[:, None]
  path, path_parts = shapes_from_latents((1 - t) * latents["test"][a] + t * latents["test"][b])
  results["interp_valid"] = float(np.mean([is_valid_shape(v) for v in path]))
  results["interp_part_counts"] = [int(n) for n in path_parts]
  results["interp_endpoint_iou"] = [float(gm.voxel_iou(jnp.asarray(path[0]), jnp.asarray(target[a]))),
                                    float(gm.voxel_iou(jnp.asarray(path[-1]), jnp.asarray(target[b])))]

  k = min(8, len(target))
  save_voxel_grid(os.path.join(out, "reconstructions.png"), [target[:k], recon[:k], ae_only[:k]])
  g = generated["latent_gan"][0][:16]
  save_voxel_grid(os.path.join(out, "samples.png"), [g[:8], g[8:16]] if len(g) > 8 else [g])
  save_voxel_grid(os.path.join(out, "interpolation.png"), [np.concatenate([target[a:a + 1], path, target[b:b + 1]])])
  results["wall_seconds"] = time.time() - t0
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


# ============================================================================================== driver


def run(cfg: PQNetConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates PQ-NET once per seed; returns (and writes) the summary with the claims."""
  t0 = time.time()
  check_devices(cfg)
  os.makedirs(workdir, exist_ok=True)
  data = load_data(cfg)
  cache: dict[str, Any] = {}

  def get_prep():  # built only when a seed has to train
    if "prep" not in cache:
      cache["prep"] = prepare(cfg, data)
    return cache["prep"]

  test_clouds, _ = point_clouds(data["test"]["voxels"] > 0, cfg.cloud_points, seed=10_000)
  baseline = mean_shape_baseline(data["train"]["voxels"], data["test"]["voxels"])
  runs = [train_run(cfg, data, get_prep, test_clouds, seed, workdir) for seed in cfg.seeds]

  agg = lambda key: reporting.mean_std([r.get(key) for r in runs])  # noqa: E731
  recon_table = {
      "PQ-NET (parts -> Seq2Seq latent -> parts)": {"iou": agg("recon_iou"), "chamfer": agg("recon_chamfer"),
                                                    "part_count_accuracy": agg("recon_part_count_accuracy"),
                                                    "empty_fraction": agg("recon_empty_fraction")},
      "part AE only (true boxes and count)": {"iou": agg("part_ae_only_iou"), "chamfer": agg("part_ae_only_chamfer"),
                                              "part_count_accuracy": (1.0, 0.0),
                                              "empty_fraction": agg("part_ae_only_empty_fraction")},
      "mean training shape": {"iou": (baseline["mean_shape_iou"], 0.0),
                              "chamfer": (baseline["mean_shape_chamfer"], 0.0),
                              "part_count_accuracy": (None, None),
                              "empty_fraction": (baseline["mean_shape_empty_fraction"], 0.0)},
  }
  gen_keys = ("mmd_cd", "cov_cd", "nn_cd", "valid", "plausible_part_count")
  gen_table = {name: {k: agg(f"gen_{name}_{k}") for k in gen_keys} for name in GENERATORS}
  stage_keys = ("part_ae_eval_part_iou", "seq2seq_eval_tf_code_mse", "seq2seq_eval_tf_box_mse",
                "seq2seq_eval_free_code_mse", "seq2seq_eval_free_box_mse", "seq2seq_eval_free_stop_accuracy",
                "seq2seq_eval_part_count_accuracy", "latent_gan_eval_critic_gap", "interp_valid")
  stages = {k: agg(k) for k in stage_keys}
  m = lambda row, k: row[k][0]  # noqa: E731
  pq, base = recon_table["PQ-NET (parts -> Seq2Seq latent -> parts)"], recon_table["mean training shape"]
  bound = recon_table["part AE only (true boxes and count)"]
  ok = lambda a, b, f: None if a is None or b is None else bool(f(a, b))  # noqa: E731
  claims = {
      "reconstruction_iou_beats_mean_shape": ok(m(pq, "iou"), m(base, "iou"), lambda a, b: a > b),
      "reconstruction_chamfer_beats_mean_shape": ok(m(pq, "chamfer"), m(base, "chamfer"), lambda a, b: a < b),
      "seq2seq_iou_gap_to_part_ae_bound": m(bound, "iou") - m(pq, "iou"),
      "part_count_accuracy": m(pq, "part_count_accuracy"),
      "gan_mmd_beats_gaussian": ok(m(gen_table["latent_gan"], "mmd_cd"), m(gen_table["gaussian"], "mmd_cd"),
                                   lambda a, b: a < b),
      "gan_cov_beats_gaussian": ok(m(gen_table["latent_gan"], "cov_cd"), m(gen_table["gaussian"], "cov_cd"),
                                   lambda a, b: a > b),
  }
  gan_mmd, ref_mmd = m(gen_table["latent_gan"], "mmd_cd"), m(gen_table["train_shapes"], "mmd_cd")
  claims["gan_mmd_ratio_to_train_reference"] = None if gan_mmd is None or not ref_mmd else gan_mmd / ref_mmd
  summary = {"config": dataclasses.asdict(cfg), "baseline": baseline,
             "reconstruction": {k: {c: list(v) for c, v in row.items()} for k, row in recon_table.items()},
             "generation": {k: {c: list(v) for c, v in row.items()} for k, row in gen_table.items()},
             "stages": {k: list(v) for k, v in stages.items()},
             "runs": [{k: v for k, v in r.items()} for r in runs],
             "claims": claims, "num_test_shapes": int(len(data["test"]["num_parts"])),
             "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)

  def fmt(v, scale=1.0, digits=3):
    return "-" if v[0] is None else f"{v[0] * scale:.{digits}f} ± {v[1] * scale:.{digits}f}"

  recon_rows = [(label, fmt(r["iou"]), fmt(r["chamfer"], 1e3, 2), fmt(r["part_count_accuracy"]),
                 fmt(r["empty_fraction"])) for label, r in recon_table.items()]
  gen_rows = [(label, fmt(r["mmd_cd"], 1e3, 2), fmt(r["cov_cd"]), fmt(r["nn_cd"], 1e3, 2), fmt(r["valid"]),
               fmt(r["plausible_part_count"])) for label, r in gen_table.items()]
  stage_rows = [(k, fmt(v, 1.0, 4)) for k, v in stages.items()]
  n_test = summary["num_test_shapes"]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# PQ-NET on shapes3d_parts/{cfg.data_config}: part AE {cfg.ae_steps} steps, Seq2Seq {cfg.s2s_steps} steps, "
      f"latent WGAN-GP {cfg.gan_steps} iterations; seeds {','.join(map(str, cfg.seeds))}",
      f"Mean ± std over seeds; {n_test} test shapes. Reconstruction = the full auto-encoding through parts (free-"
      f"running Seq2Seq decoding, parts assembled in their decoded boxes, occupancy > 0.5); Chamfer x 1e3 = sum of "
      f"the two mean squared nearest-neighbour distances between boundary voxel centres (unit cube), over non-empty "
      f"reconstructions. Mean training shape thresholded at {baseline['mean_shape_threshold']:.2f}.",
      reporting.markdown_table(("model", "IoU", "Chamfer x1e3", "part-count acc.", "empty"), recon_rows),
      f"Generation: {cfg.num_generated} shapes per row vs the {n_test} test shapes, {cfg.cloud_points} boundary "
      f"points per shape. MMD-CD (lower better), COV-CD (higher better), nn-CD: mean distance of a generated shape to "
      f"its nearest test shape (fidelity), valid: non-empty and one 26-connected component, plausible part count: "
      f"in {PLAUSIBLE_PART_COUNTS}. 'train_shapes' = random training shapes (the reference a perfect generator "
      f"would match).",
      reporting.markdown_table(("generator", "MMD-CD x1e3", "COV-CD", "nn-CD x1e3", "valid", "plausible parts"),
                               gen_rows),
      reporting.markdown_table(("stage metric (test split)", "value"), stage_rows),
      "claims: " + json.dumps(claims))
  return summary
