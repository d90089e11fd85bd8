"""Two-stage detection as a ``Task``: Faster R-CNN (C4 / FPN) and Mask R-CNN on ``shapes_scenes`` or COCO.

``train_and_evaluate(DetectionConfig(...), workdir)`` trains through the one loop (``research.train.loop``),
evaluates with pycocotools (box and mask AP, AP50, AP75, APs/APm/APl over all processes) and writes
``results.json``, ``<workdir>/detections.json`` (COCO results format) and ``<workdir>/gt_coco.json``.

Data: any source of the shared detection example format (``research.data.scenes.to_detection_example``):
``shapes_scenes`` (offline, built on first use), TFDS ``coco/2017`` (boxes only), or ``--dataset=coco_json``
with ``--data_dir`` in the official COCO layout (boxes and instance masks through pycocotools). Images are
resized to fit ``image_size`` keeping the aspect ratio and padded bottom/right; detections are mapped back to
the original image for evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import fileio
from research import models
from research.configs import setting
from research.data import transforms as T
from research.models.detection import paste_masks
from research.train import loop as loop_lib
from research.train import optim
from research.train import task as task_lib

log = logging.getLogger(__name__)

MEAN, STD = 0.5, 0.25  # images are (x / 255 - MEAN) / STD


@dataclasses.dataclass
class DetectionConfig:
  """All settings of a detection run; each field is one absl flag of ``experiments.mask_rcnn`` & co."""
  model: str = setting("mask_rcnn_fpn", "Detector (research.models.names('detection')).")
  backbone: str = setting("resnet18", "Backbone with features_only (research.models.names()).")
  backbone_width: int = setting(32, "Width of the backbone's first stage (64 = the published ResNets).")
  deformable: str = setting("none", "Deformable convolutions in the backbone's --deform_stages (ResNets): v1 (Dai et "
                            "al. 2017) or v2 (modulated, Zhu et al. 2019).", choices=("none", "v1", "v2"))
  deform_stages: tuple[int, ...] = setting((3, 4), "ResNet stages (1-4) whose 3x3 convs are deformable "
                                           "(3, 4 = conv4_x and conv5_x; DCN v1 used conv5_x only).")
  backbone_checkpoint: str | None = setting(None, "Initialise the backbone (params + BatchNorm statistics) from "
                                            "this classification run's checkpoints (e.g. <workdir>/checkpoints of "
                                            "experiments.classify with the same --backbone and width), as the "
                                            "papers start from ImageNet weights.")
  pretrain_steps: int = setting(0, "Before training, pre-train the backbone as a classifier on the offline 'shapes' "
                                "dataset (100 classes, batch 128) for this many steps -- the stand-in for the papers' "
                                "ImageNet initialisation -- and start from it (0 = from scratch).")
  pretrain_dir: str = setting("/tmp/research/backbones", "Where pre-trained backbones are kept (one subdirectory per "
                              "backbone, width, steps and seed; reused by every run that asks for the same one).")
  dataset: str = setting("shapes_scenes", "shapes_scenes (offline), coco_json (official layout in --data_dir) or "
                         "a prepared TFDS detection dataset (coco/2017).")
  data_dir: str | None = setting(None, "Data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  train_split: str = setting("train", "Training split.")
  eval_split: str = setting("validation", "Evaluated split.")
  eval_examples: int = setting(0, "Evaluate on the first N examples of --eval_split (0 = all).")
  image_size: int = setting(128, "Images are resized to fit a square of this size (divisible by 32).")
  max_instances: int = setting(16, "Ground-truth objects per image kept (padded to this many).")
  pooler: str = setting("align", "RoI feature extraction: align (RoIAlign), pool (RoIPool) or deform (deformable "
                        "RoI pooling for the box head, Dai et al. 2017 §2.2; masks keep RoIAlign).",
                        choices=("align", "pool", "deform"))
  fpn_channels: int = setting(64, "FPN channels (256 in the paper).")
  representation: int = setting(256, "Width of the 2fc box head (1024 in the paper).")
  mask_channels: int = setting(64, "Channels of the mask head's convs (256 in the paper).")
  mask_convs: int = setting(2, "3x3 convs in the mask head (4 in the paper).")
  mask_rois_per_image: int = setting(16, "Positive RoIs per image the mask head trains on (0 = all).")
  roi_batch: int = setting(128, "Sampled RoIs per image (512 in the paper).")
  rpn_post_nms_train: int = setting(600, "Proposals per image in training (2000 in the paper).")
  rpn_post_nms_test: int = setting(300, "Proposals per image at test time (1000 in the paper).")
  max_detections: int = setting(50, "Detections per image after NMS (100 in COCO's AP).")
  num_steps: int = setting(3000, "Training steps.")
  batch_size: int = setting(8, "Global batch size (divisible by the device count).")
  eval_batch_size: int = setting(0, "Global eval batch size; 0 = --batch_size.")
  learning_rate: float = setting(0.02, "Peak learning rate (SGD momentum 0.9).")
  warmup_steps: int = setting(200, "Linear warmup from 1/10 of the peak LR.")
  schedule: str = setting("cosine", "LR schedule after warmup.", choices=optim.SCHEDULES)
  weight_decay: float = setting(1e-4, "L2 weight decay (not on BatchNorm parameters and biases).")
  grad_clip_norm: float = setting(10.0, "Clip gradients to this global norm (0 = off).")
  hflip: bool = setting(True, "Random horizontal flips in training.")
  seed: int = setting(0, "Seed for init, data order, augmentation and sampling.")
  eval_every: int = setting(1000, "Evaluate every N steps (and at the end).")
  checkpoint_every: int = setting(500, "Checkpoint every N steps (and at the end).")
  keep_checkpoints: int = setting(2, "Checkpoints kept.")
  log_every: int = setting(20, "Log training metrics every N steps.")
  progress_bar: bool = setting(True, "Show a progress bar (process 0).")
  prefetch: int = setting(2, "Batches put on the devices ahead of the step.")


# ------------------------------------------------------------------------------------------------ data

@dataclasses.dataclass(frozen=True)
class DetectionTransform:
  """Decoded record -> fixed-shape model input (picklable, so grain workers can run it).

  ``image`` float32 [S,S,3] normalised, ``boxes`` [G,4], ``labels`` int32 [G], ``instance_mask`` [G],
  ``masks`` uint8 [G,S,S] (mask models), ``image_id`` int64, ``scale`` float32 (model pixels per original
  pixel), ``orig_size`` int32 [2] (original height, width). Crowd regions and boxes under 1 pixel are not
  training targets; images keep their aspect ratio and are padded bottom/right.
  """
  image_size: int
  max_instances: int
  num_classes: int
  with_masks: bool
  hflip: bool = False

  def __call__(self, raw, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    from research.data import scenes
    ex = scenes.to_detection_example(raw) if "boxes" not in raw else dict(raw)
    h, w = ex["image"].shape[:2]
    labels = np.asarray(ex["labels"])
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"image {ex.get('image_id')}: labels {sorted(set(labels.tolist()))} outside [0, "
                       f"{self.num_classes}); the dataset and the model disagree on the number of classes")
    if self.with_masks and "masks" not in ex:
      raise ValueError("this dataset has no instance masks; a mask model (mask_rcnn_*) needs them: use "
                       "--dataset=shapes_scenes or --dataset=coco_json, or a Faster R-CNN")
    keep = ~np.asarray(ex.get("is_crowd", np.zeros(len(labels), bool)), bool)
    boxes = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)
    keep &= (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    keys = ["image", "boxes", "labels"] + (["masks"] if self.with_masks else [])
    ex = T.select_instances({k: ex[k] for k in keys}, keep)
    s = self.image_size / max(h, w)
    if (h, w) != (self.image_size, self.image_size):
      ex = T.resize_to(ex, (max(1, round(h * s)), max(1, round(w * s))))
      ex = T.crop(ex, 0, 0, self.image_size, self.image_size, fill=0)
    if rng is not None and self.hflip:
      ex = T.random_hflip(ex, rng)
    ex = T.pad_instances(ex, self.max_instances, truncate=True)
    out = {"image": ((ex["image"].astype(np.float32) / 255.0 - MEAN) / STD),
           "boxes": ex["boxes"].astype(np.float32), "labels": ex["labels"].astype(np.int32),
           "instance_mask": ex["instance_mask"], "image_id": np.int64(raw_image_id(raw)),
           "scale": np.float32(s), "orig_size": np.array([h, w], np.int32)}
    if self.with_masks:
      out["masks"] = ex["masks"].astype(np.uint8)
    return out


def raw_image_id(raw) -> int:
  for k in ("image_id", "image/id"):
    if k in raw:
      return int(raw[k])
  raise ValueError(f"record has no image id ('image_id' or 'image/id'); keys {sorted(raw)}")


# ------------------------------------------------------------------------------------------------ task

@dataclasses.dataclass(eq=False)
class DetectionTask(task_lib.Task):
  """R-CNN detectors on the one loop: the model computes its own losses (``RCNN(train=True)``); eval gathers
  detections and scores them with pycocotools (``research.train.coco_eval``)."""
  model: nn.Module
  cfg: DetectionConfig
  evaluator: Any = None  # research.train.coco_eval.CocoEvaluator of the eval split
  category_ids: tuple[int, ...] | None = None
  workdir: str | None = None

  def init(self, rng, batch):
    x = jnp.zeros((1,) + tuple(batch["image"].shape[1:]), jnp.float32)
    variables = self.model.init({"params": rng}, x, train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def optimizer(self):
    c = self.cfg
    schedule = optim.make_schedule(c.schedule, c.learning_rate, c.num_steps, warmup_steps=c.warmup_steps,
                                   warmup_init=0.1)
    return optim.make_optimizer("momentum", schedule, weight_decay=c.weight_decay, momentum=0.9,
                                grad_clip_norm=c.grad_clip_norm or None)

  def extra_metrics(self, state):
    c = self.cfg
    schedule = optim.make_schedule(c.schedule, c.learning_rate, c.num_steps, warmup_steps=c.warmup_steps,
                                   warmup_init=0.1)
    return {"learning_rate": schedule(state.step)}

  def loss(self, params, model_state, batch, rng, *, train):
    targets = {k: batch[k] for k in ("boxes", "labels", "instance_mask", "masks") if k in batch}
    losses, new_state = self.model.apply({"params": params, **model_state}, batch["image"], train=True,
                                         targets=targets, rng=rng, mutable=["batch_stats"])
    return losses["total"], ({**model_state, **new_state}, {k: v for k, v in losses.items() if k != "total"})

  def eval_step(self, state, batch):
    out = self.model.apply({"params": state.params, **state.model_state}, batch["image"], train=False)
    valid = batch["valid"] > 0
    gathered = {"image_id": batch["image_id"], "row_valid": valid, "scale": batch["scale"],
                "orig_size": batch["orig_size"], "boxes": out["boxes"], "scores": out["scores"],
                "labels": out["labels"], "det_valid": out["valid"] & valid[:, None]}
    if "masks" in out:
      gathered["masks"] = out["masks"].astype(jnp.float16)
    return {"images": jnp.sum(valid.astype(jnp.float32))}, gathered

  def eval_metrics(self, sums, gathered):
    dets = detections_from_gathered(gathered, self.category_ids)
    metrics = {"images": float(sums["images"]), "detections_per_image": len(dets) / max(float(sums["images"]), 1)}
    if self.evaluator is not None:
      iou_types = ("bbox", "segm") if "masks" in gathered else ("bbox",)
      metrics.update(self.evaluator.evaluate(dets, iou_types=iou_types))
      if self.workdir:
        self.evaluator.write(self.workdir, dets)
    return metrics

  def run_info(self):
    return {"model": self.cfg.model, "backbone": self.cfg.backbone, "dataset": self.cfg.dataset}


def detections_from_gathered(g: Mapping[str, np.ndarray], category_ids=None) -> list[dict]:
  """COCO results (boxes in original-image pixels, masks pasted at the original size as RLE)."""
  from research.train import coco_eval
  out = []
  for i in np.flatnonzero(np.asarray(g["row_valid"])):
    keep = np.flatnonzero(np.asarray(g["det_valid"][i]))
    if keep.size == 0:
      continue
    s = float(g["scale"][i])
    h, w = (int(v) for v in g["orig_size"][i])
    boxes = np.asarray(g["boxes"][i][keep], np.float32) / s
    masks = None
    if "masks" in g:
      masks = np.asarray(paste_masks(jnp.asarray(g["masks"][i][keep], jnp.float32), jnp.asarray(boxes), h, w)) >= 0.5
      masks = masks[None]
    out += coco_eval.detections_to_coco(
        np.asarray([g["image_id"][i]]), boxes[None], np.asarray(g["scores"][i][keep])[None],
        np.asarray(g["labels"][i][keep])[None], np.ones((1, keep.size), bool), category_ids=category_ids,
        masks=masks)
  return out


# ------------------------------------------------------------------------------------------------ building

def validate(cfg: DetectionConfig) -> None:
  if cfg.model not in models.names("detection"):
    raise ValueError(f"--model={cfg.model!r}; choose one of {models.names('detection')}")
  if cfg.backbone not in models.names():
    raise ValueError(f"--backbone={cfg.backbone!r} is not a registered backbone; choose one of "
                     f"research.models.names() (e.g. resnet18, resnet50, resnext50_32x4d)")
  if cfg.image_size <= 0 or cfg.image_size % 32:
    raise ValueError(f"--image_size={cfg.image_size} must be a positive multiple of 32 (the backbone's C5 stride)")
  for name in ("num_steps", "batch_size", "max_instances", "max_detections", "roi_batch"):
    if getattr(cfg, name) <= 0:
      raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
  if cfg.batch_size % jax.device_count():
    raise ValueError(f"--batch_size={cfg.batch_size} must be divisible by the device count {jax.device_count()}")


def make_model(cfg: DetectionConfig, num_classes: int):
  kw = {}
  resnet = cfg.backbone.startswith(("resnet", "resnext", "wide_resnet", "se_res"))
  if resnet:
    kw["backbone_kwargs"] = (("width", cfg.backbone_width),)
  if cfg.deformable != "none":
    if not resnet:
      raise ValueError(f"--deformable={cfg.deformable} needs a ResNet-family --backbone, got {cfg.backbone!r}")
    if not cfg.deform_stages or not set(cfg.deform_stages) <= {1, 2, 3, 4}:
      raise ValueError(f"--deform_stages={cfg.deform_stages} must name ResNet stages in 1..4")
    kw["backbone_kwargs"] += (("deform_stages", tuple(cfg.deform_stages)), ("deformable", int(cfg.deformable[1])))
  return models.create(
      cfg.model, num_classes=num_classes, backbone=cfg.backbone, image_size=(cfg.image_size, cfg.image_size),
      pooler=cfg.pooler, fpn_channels=cfg.fpn_channels, representation=cfg.representation,
      mask_channels=cfg.mask_channels, mask_convs=cfg.mask_convs, mask_rois_per_image=cfg.mask_rois_per_image,
      roi_batch=cfg.roi_batch, rpn_post_nms_train=cfg.rpn_post_nms_train, rpn_post_nms_test=cfg.rpn_post_nms_test,
      max_detections=cfg.max_detections, **kw)


@dataclasses.dataclass
class DetectionData:
  train_source: Any
  eval_source: Any
  class_names: tuple[str, ...]
  category_ids: tuple[int, ...] | None


def prepare_data(cfg: DetectionConfig) -> DetectionData:
  from research import data as data_lib
  if cfg.dataset == "coco_json":
    from research.data import coco
    if not cfg.data_dir:
      raise ValueError("--dataset=coco_json needs --data_dir=DIR with DIR/annotations/instances_{train,val}2017.json "
                       "and DIR/{train,val}2017/")
    train = coco.CocoJsonSource(cfg.data_dir, cfg.train_split)
    evals = coco.CocoJsonSource(cfg.data_dir, cfg.eval_split)
    return DetectionData(train, evals, tuple(train.class_names), tuple(train.category_ids))
  train = data_lib.get_source(cfg.dataset, cfg.train_split, cfg.data_dir)
  evals = data_lib.get_source(cfg.dataset, cfg.eval_split, cfg.data_dir)
  info = data_lib.get_info(cfg.dataset, cfg.data_dir)
  label = info.features["objects"]["label"] if "objects" in info.features else None
  if label is None:
    raise ValueError(f"--dataset={cfg.dataset!r} has no 'objects' feature with boxes and labels")
  return DetectionData(train, evals, tuple(label.names), None)


class _Subset:
  def __init__(self, source, n):
    self.source, self.n = source, min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def build_evaluator(source, class_names, category_ids):
  """pycocotools evaluator over the (original-resolution) annotations of ``source``."""
  from research.data import coco, scenes
  from research.train import coco_eval
  examples = []
  for i in range(len(source)):
    raw = source[i]
    ex = scenes.to_detection_example(raw) if "boxes" not in raw else dict(raw)
    ex["image_id"] = raw_image_id(raw)
    examples.append(ex)
  gt = coco.to_coco_json(examples, class_names, category_ids=category_ids)
  return coco_eval.CocoEvaluator(gt)


def pretrain_backbone(cfg: DetectionConfig) -> str:
  """Trains (or reuses) ``cfg.backbone`` as a ``shapes`` classifier for ``cfg.pretrain_steps`` steps
  (:func:`research.train.pretrain.pretrain_backbone`); returns its checkpoint directory."""
  from research.train import pretrain
  return pretrain.pretrain_backbone(cfg.backbone, width=cfg.backbone_width, steps=cfg.pretrain_steps, seed=cfg.seed,
                                    pretrain_dir=cfg.pretrain_dir,
                                    data_dir=cfg.data_dir if cfg.dataset == "shapes_scenes" else None,
                                    progress_bar=cfg.progress_bar)


def pretrained_variables(task: "DetectionTask", image_shape, checkpoint: str) -> tuple[Any, Any]:
  """``(params, model_state)`` of a fresh detector whose backbone comes from a classification checkpoint
  (every backbone parameter and BatchNorm statistic must be found with the same shape; the classifier head is
  dropped; a plain ResNet's convs fill its deformable twin)."""
  from research.train import pretrain
  params, state = jax.jit(lambda r: task.init(r, {"image": jax.ShapeDtypeStruct((1,) + tuple(image_shape),
                                                                                 jnp.float32)}))(
      jax.random.PRNGKey(task.cfg.seed))
  return pretrain.load_backbone(params, state, checkpoint, adapt=plain_to_deformable)


def plain_to_deformable(src: dict[tuple[str, ...], Any], target: dict[tuple[str, ...], Any]) -> dict:
  """A plain backbone's flat params laid out for its deformable twin (Dai et al. 2017 §3: DCN starts from the
  pre-trained plain network, offsets at zero).

  In every block of ``target`` that has a ``DeformConv_0``, the block's first source conv whose kernel has the
  deformable kernel's shape becomes ``DeformConv_0/kernel`` and the block's other convs keep their order as
  ``Conv_0, Conv_1, ...`` (flax numbers each module type separately); the offset branch keeps ``target``'s
  (zero) initial values. ``src`` is returned unchanged when ``target`` has no deformable conv."""
  blocks = sorted({k[:k.index("DeformConv_0")] for k in target if "DeformConv_0" in k})
  if not blocks:
    return src
  out = dict(src)
  for block in blocks:
    n = len(block)
    conv_names = sorted({k[n] for k in src if k[:n] == block and len(k) > n and k[n].startswith("Conv_")},
                        key=lambda c: int(c.split("_")[1]))
    kernel = target[block + ("DeformConv_0", "kernel")]
    chosen = next((c for c in conv_names if np.shape(src[block + (c, "kernel")]) == np.shape(kernel)), None)
    if chosen is None:
      continue  # left for merge() to report as missing
    renames = {chosen: "DeformConv_0", **{c: f"Conv_{i}" for i, c in enumerate(x for x in conv_names if x != chosen)}}
    for k in [k for k in out if k[:n] == block and len(k) > n and k[n] in renames]:
      del out[k]
    for k, v in src.items():
      if k[:n] == block and len(k) > n and k[n] in renames:
        out[block + (renames[k[n]],) + k[n + 1:]] = v
    for k, v in target.items():  # the offset branch: its initial (zero) values
      if k[:n + 1] == block + ("DeformConv_0",) and k[n + 1] != "kernel":
        out[k] = v
  return out


def flax_flatten(tree) -> dict[tuple[str, ...], Any]:
  from flax import traverse_util
  return traverse_util.flatten_dict(dict(tree))


def flax_unflatten(flat):
  from flax import traverse_util
  return traverse_util.unflatten_dict(flat)


def train_and_evaluate(cfg: DetectionConfig, workdir: str | None) -> dict[str, Any]:
  """Trains ``cfg.model`` for ``cfg.num_steps`` steps (resuming from ``workdir``), evaluates COCO AP."""
  from research import data as data_lib
  from research.train.classify import finished_results
  t0 = time.time()
  validate(cfg)
  done = finished_results(workdir, cfg.num_steps) if workdir else None
  if done is not None and "eval_bbox/AP" in done:
    log.info("%s holds a finished run of %d steps; reusing its results", workdir, cfg.num_steps)
    return done  # a sweep re-run keeps each finished run's results and timings
  d = prepare_data(cfg)
  eval_source = _Subset(d.eval_source, cfg.eval_examples) if cfg.eval_examples else d.eval_source
  with_masks = models.create(cfg.model, num_classes=1).with_mask
  tf = DetectionTransform(cfg.image_size, cfg.max_instances, len(d.class_names), with_masks, hflip=cfg.hflip)
  eval_tf = dataclasses.replace(tf, hflip=False)
  task = DetectionTask(make_model(cfg, len(d.class_names)), cfg, build_evaluator(eval_source, d.class_names,
                                                                                  d.category_ids),
                       d.category_ids, workdir)
  mesh = task_lib.make_mesh()
  train_iter = data_lib.make_train_loader(d.train_source, global_batch_size=cfg.batch_size, seed=cfg.seed,
                                          transform=tf)
  eval_bs = cfg.eval_batch_size or cfg.batch_size

  def eval_data():
    return data_lib.make_eval_batches(eval_source, global_batch_size=eval_bs, transform=eval_tf)

  config = loop_lib.LoopConfig(num_steps=cfg.num_steps, seed=cfg.seed, eval_every=cfg.eval_every,
                               checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                               log_every=cfg.log_every, progress_bar=cfg.progress_bar, prefetch=cfg.prefetch,
                               description=cfg.model)
  variables = None
  checkpoint = cfg.backbone_checkpoint
  if not checkpoint and cfg.pretrain_steps:
    checkpoint = pretrain_backbone(cfg)
  if checkpoint:
    variables = pretrained_variables(task, (cfg.image_size, cfg.image_size, 3), checkpoint)
  _, results = loop_lib.train(task, iter(train_iter), config=config, mesh=mesh, workdir=workdir, eval_data=eval_data,
                              run_config=dataclasses.asdict(cfg), variables=variables,
                              results_extra={"model": cfg.model, "dataset": cfg.dataset,
                                             "num_classes": len(d.class_names)})
  results["wall_seconds"] = time.time() - t0
  if workdir and fileio.main_process():
    fileio.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results




# ------------------------------------------------------------------------------------------------ predict, sweeps

def predict(cfg: DetectionConfig, workdir: str, num_images: int = 8, score_threshold: float = 0.5,
            out_path: str | None = None) -> str:
  """Draws the detections (boxes, labels, scores, masks) of the trained model in ``workdir`` on the first
  ``num_images`` images of ``cfg.eval_split`` -> a PNG grid (default ``<workdir>/predictions.png``)."""
  from research.data import draw
  from research.train import checkpoint as ckpt_lib
  validate(cfg)
  d = prepare_data(cfg)
  model = make_model(cfg, len(d.class_names))
  tf = DetectionTransform(cfg.image_size, cfg.max_instances, len(d.class_names), False)
  n = min(num_images, len(d.eval_source))
  if n <= 0:
    raise ValueError(f"--num_images must be positive and the split non-empty (got {num_images}, "
                     f"{len(d.eval_source)} images)")
  rows = [tf(d.eval_source[i]) for i in range(n)]
  images = jnp.asarray(np.stack([r["image"] for r in rows]))
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, images[:1], train=False))
  loaded = ckpt_lib.load_params(os.path.join(workdir, "checkpoints"),
                                {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})})
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      {"params": loaded["params"], "batch_stats": loaded["batch_stats"]}, images)
  out = jax.tree.map(np.asarray, out)
  drawn = []
  for i, r in enumerate(rows):
    pixels = np.clip((r["image"] * STD + MEAN) * 255, 0, 255).astype(np.uint8)
    keep = out["valid"][i]
    masks = None
    if "masks" in out:
      masks = np.asarray(paste_masks(jnp.asarray(out["masks"][i][keep]), jnp.asarray(out["boxes"][i][keep]),
                                     cfg.image_size, cfg.image_size)) >= 0.5
    drawn.append(draw.draw_detections(pixels, out["boxes"][i][keep], out["labels"][i][keep],
                                      out["scores"][i][keep], masks=masks, class_names=d.class_names,
                                      score_threshold=score_threshold, scale=3))
  path = out_path or os.path.join(workdir, "predictions.png")
  draw.save_grid(drawn, path, cols=4)
  return path


AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "segm/AP", "segm/AP50", "segm/AP75",
           "segm/APs", "segm/APm")


def _ap_cell(v: float) -> str:
  """AP x 100 with one decimal; COCO's -1 (no ground truth of that size) as n/a."""
  return "n/a" if v < 0 else f"{100 * v:.1f}"


def sweep(base: DetectionConfig, workdir: str, conditions: Mapping[str, Mapping[str, Any]],
          seeds: tuple[int, ...]) -> dict[str, Any]:
  """Trains every ``condition`` (name -> config overrides) with every seed in ``workdir/<name>_seed<k>`` (each
  resumable), then writes ``summary.json`` and ``summary.md``: mean (and per-seed) AP per condition."""
  t0 = time.time()
  runs: dict[str, list[dict]] = {}
  for name, overrides in conditions.items():
    for seed in seeds:
      cfg = dataclasses.replace(base, seed=seed, **overrides)
      r = train_and_evaluate(cfg, os.path.join(workdir, f"{name}_seed{seed}"))
      runs.setdefault(name, []).append({k: r.get(f"eval_{k}") for k in AP_KEYS if f"eval_{k}" in r} |
                                       {"seed": seed, "wall_seconds": r["wall_seconds"]})
  keys = [k for k in AP_KEYS if any(k in run for rs in runs.values() for run in rs)]
  summary = {"conditions": {n: dict(o) for n, o in conditions.items()}, "seeds": list(seeds), "runs": runs,
             "mean": {n: {k: float(np.mean([run[k] for run in rs])) for k in keys} for n, rs in runs.items()},
             "wall_seconds": time.time() - t0}
  lines = ["| condition | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for n in runs:
    lines.append(f"| {n} | " + " | ".join(_ap_cell(summary["mean"][n][k]) for k in keys) + " |")
  text = (f"COCO AP (x100) on {base.dataset} {base.eval_split}, mean over seeds {list(seeds)}:\n\n" +
          "\n".join(lines) + "\n")
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    fileio.write_atomic(os.path.join(workdir, "summary.md"), text)
  return summary
