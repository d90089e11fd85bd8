"""One-shot semantic segmentation (Shaban et al., BMVC 2017) on ``shapes_scenes``: ``run(OneShotConfig, workdir)``.

For every fold in ``folds`` (``num_folds`` folds of consecutive classes, PASCAL-5^i style; fold ``i`` holds out its
classes) and every seed: OSLSM (``research.train.one_shot.OneShotTask``) trained on episodes of the fold's training
classes, and -- with ``baselines`` -- the fine-tuning-free baselines ``nn1`` and ``logreg`` on the features of an FCN
segmenter trained on the same training classes (``SegmenterBaselineTask``). All are scored on the SAME fixed list of
``num_test_episodes`` test episodes of the unseen classes (validation split, drawn with ``episode_seed`` so the list
does not change with the training seed): the mean over the fold's classes of the foreground IoU (§5).

The claim checked (``claims``): OSLSM's mean IoU on the unseen classes beats the 1-NN baseline's (the paper's
strongest fine-tuning-free baseline, chosen in advance), per fold (mean over seeds) and averaged over the folds run;
``oslsm_beats_logreg`` is reported too.

Images are downsampled from 128 to ``image_size`` px (block mean; labels by block majority) after loading. Writes
``workdir/fold<f>_<method>_seed<s>/`` per run (loop outputs, ``results.json``), ``summary.json`` and ``summary.md``;
a finished run (``results.json`` with the same settings) is not trained again.
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
from research.data import pipeline, scenes
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.train import checkpoint as ckpt_lib
from research.train import loop
from research.train import one_shot as one_shot_train
from research.train import task as task_lib

METHODS = ("oslsm", "nn1", "logreg")
_POSITIVE = ("image_size", "num_folds", "num_steps", "batch_size", "learning_rate", "feature_dim", "fc6_dilation",
             "cond_hidden", "convs_per_stage", "min_pixels", "num_test_episodes", "eval_batch_size", "logreg_steps",
             "logreg_lr", "pos_weight")
_NON_NEGATIVE = ("baseline_steps", "weight_decay", "hash_dim", "max_train_images", "max_validation_images",
                 "eval_every", "logreg_l2")


@dataclasses.dataclass(frozen=True)
class OneShotConfig:
  """One one-shot segmentation experiment (``python -m experiments.one_shot_segmentation``); each field is a flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  image_size: int = setting(64, "Working resolution in px (the 128 px scenes are downsampled by an integer factor).")
  num_folds: int = setting(4, "Folds of consecutive classes (PASCAL-5^i style); 12 / num_folds unseen classes each.")
  folds: tuple[int, ...] = setting((0,), "Fold indices to run, each in [0, num_folds).")
  seeds: tuple[int, ...] = setting((0,), "Training seeds (OSLSM and the baseline segmenter are trained per seed).")
  baselines: bool = setting(True, "Also train the FCN segmenter and score the 1-NN and LogReg baselines.")
  init_from_segmenter: bool = setting(True, "Start OSLSM's segmentation branch from the FCN segmenter trained on the "
                                      "fold's training classes (the analogue of the paper's pretrained FCN; the "
                                      "segmenter is then trained even with --baselines=false).")
  num_steps: int = setting(600, "Training steps of OSLSM.")
  baseline_steps: int = setting(0, "Training steps of the baseline segmenter (0 = --num_steps).")
  batch_size: int = setting(16, "Global batch: episodes (OSLSM) or images (segmenter).")
  learning_rate: float = setting(3e-3, "Peak AdamW learning rate (cosine decay to 0).")
  weight_decay: float = setting(1e-4, "AdamW weight decay.")
  widths: tuple[int, ...] = setting((16, 32, 64), "Channels of the segmentation branch's stages (stride 2^(n-1)).")
  cond_widths: tuple[int, ...] = setting((16, 32, 64), "Channels of the conditioning branch's stages.")
  convs_per_stage: int = setting(2, "3x3 convolutions per stage (both branches).")
  feature_dim: int = setting(64, "D: channels of the dense features f(x) (the paper's fc7: 4096).")
  fc6_dilation: int = setting(2, "Dilation of the segmentation branch's 3x3 'fc6' convolution.")
  cond_hidden: int = setting(128, "Hidden units of the conditioning branch's fully connected layer.")
  pos_weight: float = setting(4.0, "Weight of the foreground pixels in OSLSM's logistic loss (1 = the paper's "
                              "plain loss, which at CPU budgets leaves every probability below 0.5: IoU 0).")
  hash_dim: int = setting(0, "Weight hashing (§4.1): g emits this many numbers hashed to the D + 1 parameters "
                          "(0 = g emits theta directly).")
  mask_channel: bool = setting(True, "Feed g the support mask as a 4th channel besides the masked image (a "
                               "deviation, see research.models.segmentation.one_shot).")
  min_pixels: int = setting(16, "Pixels of the episode's class an image needs (at --image_size) to be a support "
                            "or query of that class.")
  exclude_unseen_images: bool = setting(False, "Drop every training image that shows an unseen class at all (the "
                                        "default keeps them, the unseen classes being background there).")
  max_train_images: int = setting(0, "Use the first N train-split scenes (0 = all 5000).")
  max_validation_images: int = setting(0, "Draw test episodes from the first N validation scenes (0 = all 500).")
  num_test_episodes: int = setting(500, "Fixed test episodes per fold (the unseen classes in turn).")
  episode_seed: int = setting(0, "Seed of the test-episode list (independent of the training seeds).")
  eval_batch_size: int = setting(50, "Global eval batch (episodes).")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")
  logreg_steps: int = setting(100, "Adam steps of the LogReg baseline's per-episode fit on the support.")
  logreg_lr: float = setting(0.1, "Adam learning rate of the LogReg baseline's fit.")
  logreg_l2: float = setting(1e-3, "L2 weight of the LogReg baseline (on standardised features).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in _NON_NEGATIVE:
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.folds or len(set(self.folds)) != len(self.folds):
      raise ValueError(f"--folds must list distinct fold indices, got {list(self.folds)}")
    for f in self.folds:
      one_shot_train.fold_classes(f, self.num_folds, scenes.NUM_CLASSES)  # ValueError naming --fold / --num_folds
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if not self.widths or not self.cond_widths or min(self.widths + self.cond_widths) <= 0:
      raise ValueError(f"--widths={list(self.widths)} and --cond_widths={list(self.cond_widths)} must be non-empty "
                       f"lists of positive channel counts")
    stride = 2 ** (len(self.widths) - 1)
    if self.image_size % stride:
      raise ValueError(f"--image_size={self.image_size} must be a multiple of the feature stride {stride} "
                       f"(2^(len(--widths) - 1))")

  @property
  def model_kwargs(self) -> dict[str, Any]:
    """Fields of ``OneShotSegmenter``; ``segmenter_kwargs`` is the subset the baseline's ``FCNSegmenter`` shares."""
    return {**self.segmenter_kwargs, "cond_widths": tuple(self.cond_widths), "cond_hidden": self.cond_hidden,
            "hash_dim": self.hash_dim, "mask_channel": self.mask_channel}

  @property
  def segmenter_kwargs(self) -> dict[str, Any]:
    return {"widths": tuple(self.widths), "convs_per_stage": self.convs_per_stage, "feature_dim": self.feature_dim,
            "fc6_dilation": self.fc6_dilation}


def check_devices(cfg: OneShotConfig) -> None:
  """Both batches are split over the devices."""
  n = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


def load_split(split: str, cfg: OneShotConfig, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 [N, S, S, 3], semantic uint8 [N, S, S])`` of a ``shapes_scenes`` split at ``image_size``
  (the first ``limit`` scenes; 0 = all), decoded in chunks."""
  source = pipeline.get_source("shapes_scenes", split, cfg.data_dir)
  n = min(len(source), limit) if limit else len(source)
  images, semantic = [], []
  for start in range(0, n, 500):
    rows = source.__getitems__(list(range(start, min(n, start + 500))))
    img = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
    sem = np.stack([np.asarray(r["semantic"], np.uint8).reshape(img.shape[1:3]) for r in rows])
    img, sem = one_shot_train.downsample_scenes(img, sem, cfg.image_size)
    images.append(img)
    semantic.append(sem)
  return np.concatenate(images), np.concatenate(semantic)


def _train_one(name: str, task, train_data, eval_data, cfg: OneShotConfig, seed: int, steps: int, workdir: str,
               run_config: dict) -> dict[str, Any]:
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  lcfg = loop.LoopConfig(num_steps=steps, seed=seed, eval_every=cfg.eval_every, checkpoint_every=steps,
                         keep_checkpoints=1, log_every=50, progress_bar=False, description=name)
  _, results = loop.train(task, train_data, config=lcfg, mesh=task_lib.make_mesh(), workdir=out, eval_data=eval_data,
                          run_config=run_config)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


def all_foreground_miou(semantic: np.ndarray, episodes: dict[str, np.ndarray], classes: tuple[int, ...]) -> float:
  """The trivial reference: mean IoU of predicting every query pixel as foreground (per class: its query pixels
  over all query pixels of its episodes)."""
  ious = []
  for c in classes:
    q = semantic[episodes["query"][episodes["class_id"] == c]]
    ious.append(float(np.mean(q == c + 1)))
  return float(np.mean(ious))


def _mean_std(values: list[float]) -> list[float]:
  a = np.asarray(values, np.float64)
  return [float(np.mean(a)), float(np.std(a))]


def run(cfg: OneShotConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates OSLSM (and the baselines) for every fold x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  train_images, train_sem = load_split("train", cfg, cfg.max_train_images)
  val_images, val_sem = load_split("validation", cfg, cfg.max_validation_images)
  os.makedirs(workdir, exist_ok=True)
  base = dataclasses.asdict(cfg)
  nc = scenes.NUM_CLASSES
  folds: dict[str, Any] = {}
  for fold in cfg.folds:
    train_classes, test_classes = one_shot_train.fold_classes(fold, cfg.num_folds, nc)
    names = tuple(scenes.CLASS_NAMES[c] for c in test_classes)
    keep = np.arange(len(train_images))
    if cfg.exclude_unseen_images:
      keep = np.flatnonzero(one_shot_train.class_pixels(train_sem, nc)[:, list(test_classes)].sum(axis=1) == 0)
    images, sem = train_images[keep], train_sem[keep]
    episodes = one_shot_train.make_test_episodes(val_sem, test_classes, num_episodes=cfg.num_test_episodes,
                                                 seed=cfg.episode_seed, num_classes=nc, min_pixels=cfg.min_pixels)
    evals = one_shot_train.episode_batches(val_images, val_sem, episodes, global_batch_size=cfg.eval_batch_size)
    common = dict(test_classes=test_classes, class_names=names, learning_rate=cfg.learning_rate,
                  weight_decay=cfg.weight_decay)
    runs: dict[str, list[dict]] = {}
    for seed in cfg.seeds:
      rc = {**base, "fold": fold, "seed": seed}
      init_features = None
      if cfg.baselines or cfg.init_from_segmenter:
        steps = cfg.baseline_steps or cfg.num_steps
        batches = ArrayBatches({"image": images, "semantic": sem}, global_batch_size=cfg.batch_size, seed=seed,
                               transform=one_shot_train.SemanticLabels(train_classes, nc))
        btask = one_shot_train.SegmenterBaselineTask(
            train_classes=train_classes, model_kwargs=cfg.segmenter_kwargs, num_steps=steps,
            logreg_l2=cfg.logreg_l2, logreg_steps=cfg.logreg_steps, logreg_lr=cfg.logreg_lr, **common)
        name = f"fold{fold}_segmenter_seed{seed}"
        res = _train_one(name, btask, batches, evals, cfg, seed, steps, workdir, {**rc, "run": "segmenter"})
        if cfg.baselines:
          for method in ("nn1", "logreg"):
            runs.setdefault(method, []).append(
                {**{k.replace(f"eval_{method}/", "eval_"): v for k, v in res.items()
                    if k.startswith(f"eval_{method}/")}, "wall_seconds": res["wall_seconds"]})
        if cfg.init_from_segmenter:
          init_features = ckpt_lib.load_params(os.path.join(workdir, name, "checkpoints"))["params"]["model"][
              "features"]
      sampler = one_shot_train.EpisodeSampler(images, sem, train_classes, global_batch_size=cfg.batch_size,
                                              seed=seed, num_classes=nc, min_pixels=cfg.min_pixels)
      task = one_shot_train.OneShotTask(model_kwargs=cfg.model_kwargs, num_steps=cfg.num_steps,
                                        init_features=init_features, pos_weight=cfg.pos_weight, **common)
      runs.setdefault("oslsm", []).append(_train_one(f"fold{fold}_oslsm_seed{seed}", task, sampler, evals, cfg, seed,
                                                     cfg.num_steps, workdir, {**rc, "run": "oslsm"}))
    runs = {m: runs[m] for m in METHODS if m in runs}
    metric_names = ["miou", "fb_iou"] + [f"iou/{n}" for n in names]
    folds[str(fold)] = {
        "train_classes": [scenes.CLASS_NAMES[c] for c in train_classes], "test_classes": list(names),
        "num_train_images": int(len(images)), "num_test_episodes": int(len(episodes["class_id"])),
        "all_foreground_miou": all_foreground_miou(val_sem, episodes, test_classes),
        "table": {m: {k: _mean_std([r[f"eval_{k}"] for r in rs]) for k in metric_names} for m, rs in runs.items()},
        "runs": {m: [{k: r[f"eval_{k}"] for k in metric_names} for r in rs] for m, rs in runs.items()},
        "wall_seconds": {m: _mean_std([r["wall_seconds"] for r in rs]) for m, rs in runs.items()}}

  methods = list(next(iter(folds.values()))["table"])
  mean_over_folds = {m: float(np.mean([f["table"][m]["miou"][0] for f in folds.values()])) for m in methods}
  claims: dict[str, Any] = {}
  if cfg.baselines:
    for other in ("nn1", "logreg"):
      claims[f"oslsm_beats_{other}"] = bool(mean_over_folds["oslsm"] > mean_over_folds[other])
      claims[f"oslsm_beats_{other}_per_fold"] = {k: bool(f["table"]["oslsm"]["miou"][0] > f["table"][other]["miou"][0])
                                                  for k, f in folds.items()}
  summary = {"config": base, "folds": folds, "mean_miou_over_folds": mean_over_folds, "claims": claims,
             "num_validation_images": int(len(val_images)), "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  blocks = [f"# One-shot segmentation (OSLSM) on shapes_scenes at {cfg.image_size} px, {cfg.num_folds} folds, "
            f"seeds {','.join(map(str, cfg.seeds))}, {cfg.num_steps} steps",
            f"Mean IoU over each fold's unseen classes (foreground IoU per class from the pixel counts of its "
            f"{cfg.num_test_episodes} fixed test episodes in total), mean ± std over seeds. nn1 / logreg: "
            f"fine-tuning-free baselines on the features of an FCN segmenter trained on the fold's training classes."]
  for k, f in folds.items():
    cols = ["miou", "fb_iou"] + [f"iou/{n}" for n in f["test_classes"]]
    rows = [(m, *(f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in cols), f"{f['wall_seconds'][m][0]:.0f}")
            for m, row in f["table"].items()]
    blocks.append(f"## fold {k}: unseen {', '.join(f['test_classes'])}")
    blocks.append(reporting.markdown_table(("method", *cols, "wall s"), rows))
    blocks.append(f"reference: predicting every query pixel as foreground gives miou {f['all_foreground_miou']:.3f}")
  blocks.append("mean miou over folds: " + ", ".join(f"{m} {v:.3f}" for m, v in mean_over_folds.items()))
  blocks.append("claims: " + (json.dumps(claims) if claims else "none checked (--baselines=false)"))
  reporting.write_markdown(os.path.join(workdir, "summary.md"), *blocks)
  return summary
