"""Semantic segmentation as a ``Task``: FCN / PSPNet / DeepLabV3 / large-kernel GCN ``gcn_seg`` (+ dense CRF, CRF-RNN).

``train_and_evaluate(SegmentationConfig(...), workdir)`` trains ``cfg.model`` (``research.models.names("segmentation")``)
through the one loop with per-pixel softmax cross-entropy (ignore label 255; PSPNet's auxiliary loss weighted 0.4,
Zhao et al. 2017 §3.4), SGD with momentum and the "poly" learning rate, and evaluates mIoU, pixel accuracy, boundary
("trimap") accuracy and, where the dataset has instance maps, pixel accuracy by object size -- all from confusion
matrices the loop sums over devices and processes (``research.train.dense_metrics``).

CRFs (``--crf``): ``dense`` post-processes the unary at eval time with the fully connected CRF (Krähenbühl & Koltun
2011) and reports the unary and the CRF side by side from the same network (``eval_*`` and ``eval_crf/*``);
``crf_rnn`` (Zheng et al. 2015) appends the mean-field iterations as a trained layer
(``research.models.segmentation.crf.SegmenterWithCRF``): its output is the network's prediction, and the unary under
it is reported as ``eval_unary/*``.

Data: ``shapes_scenes`` (the ``semantic`` map: 0 background, ``label + 1`` per object; 13 classes) or any prepared
TFDS segmentation dataset (``--dataset=oxford_iiit_pet --label_key=segmentation_mask --label_offset=-1
--num_classes=3``): images are resized to ``image_size`` squares (labels nearest), training adds random scaling,
cropping and horizontal flips (PSPNet's "DA").
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
import optax

from research import fileio
from research import models
from research.configs import setting
from research.data import transforms as T
from research.train import dense_metrics as dm
from research.train import loop as loop_lib
from research.train import optim
from research.train import task as task_lib

log = logging.getLogger(__name__)

MEAN, STD = 0.5, 0.25  # images are (x / 255 - MEAN) / STD
IGNORE = dm.IGNORE_LABEL
CRFS = ("none", "dense", "crf_rnn")
SIZE_BUCKETS = (("small", 0, 16 ** 2), ("medium", 16 ** 2, 48 ** 2), ("large", 48 ** 2, 1 << 30))  # px of area


@dataclasses.dataclass
class SegmentationConfig:
  """All settings of one segmentation run; each field is one absl flag of ``experiments.segmentation``."""
  model: str = setting("pspnet", "Segmentation network (research.models.names('segmentation')).")
  backbone: str = setting("resnet18", "features_only backbone (resnet18/34/50, drn_a_50, drn_c_26).")
  backbone_width: int = setting(16, "Width of the ResNet backbone's first stage (64 = the published ResNets).")
  output_stride: int = setting(8, "Output stride of the dilated backbone: 8 or 16 (32 for gcn_seg).")
  backbone_checkpoint: str | None = setting(None, "Initialise the backbone (params + BatchNorm statistics) from this "
                                            "classification run's checkpoints (same --backbone and width), as the "
                                            "papers start from ImageNet weights.")
  init_checkpoint: str | None = setting(None, "Initialise the whole network (params + BatchNorm statistics) from a "
                                        "segmentation run's checkpoints (same --model, --backbone, width, output "
                                        "stride); with --crf=crf_rnn the unary network, as Zheng et al. 2015 fine-tune "
                                        "CRF-RNN from a trained FCN. Overrides --backbone_checkpoint/--pretrain_steps.")
  pretrain_steps: int = setting(0, "Before training, pre-train the backbone as a classifier on the offline 'shapes' "
                                "dataset (research.train.pretrain) for this many steps and start from it (0 = from "
                                "scratch).")
  pretrain_dir: str = setting("/tmp/research/backbones", "Where pre-trained backbones are kept (shared with "
                              "detection: one subdirectory per backbone, width, steps and seed).")
  aux_weight: float = setting(0.4, "Weight of the auxiliary loss (PSPNet §3.4: 0.4) when the model has an aux head.")
  aux_head: bool = setting(True, "Use the model's auxiliary head (PSPNet's deep supervision).")
  boundary_refinement: bool = setting(True, "gcn_seg: Boundary Refinement blocks (Peng et al. 2017 §3.2).")
  large_kernel: bool = setting(True, "gcn_seg: k x 1 + 1 x k large-kernel modules (False: 3x3 convs, the ablation).")
  aspp_rates: tuple[int, ...] = setting((6, 12, 18), "deeplabv3: ASPP atrous rates at output stride 16 (doubled at "
                                       "8); the paper's 6/12/18 are for 33x33 maps: scale them with the feature map.")
  kernel_size: int = setting(15, "gcn_seg: the large kernel k (Peng et al.: 15; clipped to the feature map size).")
  crf: str = setting("none", "dense: fully connected CRF on the unary at eval; crf_rnn: CRF-as-RNN trained end to end.",
                     choices=CRFS)
  crf_iters: int = setting(5, "Mean-field iterations (training and dense-CRF eval; Zheng et al. train with 5).")
  crf_iters_eval: int = setting(10, "crf_rnn: mean-field iterations at test time (Zheng et al.: 10).")
  crf_method: str = setting("permutohedral", "Filtering of the CRF messages (exact is O(N^2)).",
                            choices=("permutohedral", "exact"))
  crf_w_appearance: float = setting(10.0, "Dense CRF appearance (bilateral) kernel weight w1.")
  crf_w_smoothness: float = setting(3.0, "Dense CRF smoothness kernel weight w2.")
  crf_theta_alpha: float = setting(20.0, "Dense CRF appearance kernel spatial std (px).")
  crf_theta_beta: float = setting(13.0, "Dense CRF appearance kernel colour std (0-255 intensities).")
  crf_theta_gamma: float = setting(3.0, "Dense CRF smoothness kernel spatial std (px).")
  dataset: str = setting("shapes_scenes", "shapes_scenes (offline) or a prepared TFDS dataset with an image and a "
                         "per-pixel label map.")
  data_dir: str | None = setting(None, "Data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  image_key: str = setting("image", "Image feature of the dataset.")
  label_key: str = setting("semantic", "Per-pixel label feature of the dataset.")
  label_offset: int = setting(0, "Added to the stored labels (e.g. -1 for 1-based maps); values outside "
                              "[0, num_classes) are ignored.")
  num_classes: int = setting(0, "Classes incl. background (0 = from the dataset: shapes_scenes has 13).")
  train_split: str = setting("train", "Training split.")
  eval_split: str = setting("validation", "Evaluated split.")
  eval_examples: int = setting(0, "Evaluate on the first N examples of --eval_split (0 = all).")
  image_size: int = setting(128, "Images are resized to squares of this size (divisible by 32).")
  min_scale: float = setting(0.75, "Training augmentation: random scale factor range [min_scale, max_scale].")
  max_scale: float = setting(1.25, "Training augmentation: random scale factor range [min_scale, max_scale].")
  hflip: bool = setting(True, "Random horizontal flips in training.")
  boundary_width: int = setting(3, "Trimap band half-width (px) of the boundary accuracy.")
  num_steps: int = setting(2000, "Training steps.")
  batch_size: int = setting(16, "Global batch size (divisible by the device count).")
  eval_batch_size: int = setting(0, "Global eval batch size; 0 = --batch_size.")
  learning_rate: float = setting(0.02, "Peak learning rate (SGD momentum 0.9).")
  schedule: str = setting("poly", "LR schedule after warmup (poly: (1 - t/T)^0.9).", choices=optim.SCHEDULES)
  warmup_steps: int = setting(100, "Linear warmup from 1/10 of the peak LR.")
  weight_decay: float = setting(1e-4, "L2 weight decay (not on BatchNorm parameters and biases).")
  grad_clip_norm: float = setting(10.0, "Clip gradients to this global norm (0 = off).")
  seed: int = setting(0, "Seed for init, data order and augmentation.")
  eval_every: int = setting(1000, "Evaluate every N steps (and at the end).")
  checkpoint_every: int = setting(500, "Checkpoint every N steps (and at the end).")
  keep_checkpoints: int = setting(2, "Checkpoints kept.")
  log_every: int = setting(50, "Log training metrics every N steps.")
  progress_bar: bool = setting(True, "Show a progress bar (process 0).")
  prefetch: int = setting(2, "Batches put on the devices ahead of the step.")


# ------------------------------------------------------------------------------------------------ data

@dataclasses.dataclass(frozen=True)
class SegmentationTransform:
  """Decoded record -> ``image`` float32 [S,S,3] normalised, ``label`` int32 [S,S] (``IGNORE`` where unlabelled), and
  with ``sizes``, ``object_area`` float32 [S,S] (pixel area of the object each pixel belongs to, 0 on background; in
  the ORIGINAL image's pixels). Picklable (grain workers)."""
  image_size: int
  num_classes: int
  image_key: str = "image"
  label_key: str = "semantic"
  label_offset: int = 0
  min_scale: float = 1.0
  max_scale: float = 1.0
  hflip: bool = False
  sizes: bool = False

  def __call__(self, raw, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    if self.image_key not in raw or self.label_key not in raw:
      raise ValueError(f"record has keys {sorted(raw)}; --image_key={self.image_key!r} and "
                       f"--label_key={self.label_key!r} must name the image and its label map")
    image = np.asarray(raw[self.image_key], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    h, w = image.shape[:2]
    label = np.asarray(raw[self.label_key])
    label = label.reshape(label.shape[:2]) if label.ndim == 3 and label.shape[-1] == 1 else label
    if label.shape != (h, w):
      raise ValueError(f"label map {self.label_key!r} has shape {label.shape}; expected {(h, w)} (the image's)")
    label = label.astype(np.int32) + self.label_offset
    label = np.where((label >= 0) & (label < self.num_classes), label, IGNORE).astype(np.int32)
    ex = {"image": image, "semantic": label}
    if self.sizes:
      inst = np.asarray(raw["instance"]).reshape(h, w).astype(np.int64)
      area = np.bincount(inst.reshape(-1), minlength=int(inst.max()) + 1).astype(np.float32)
      area[0] = 0.0
      # carried through resize/crop/flip like a label map ("masks" is moved with the image as [1, H, W])
      ex["masks"] = area[inst][None]
    size = self.image_size
    if rng is not None and (self.min_scale, self.max_scale) != (1.0, 1.0):
      s = rng.uniform(self.min_scale, self.max_scale) * size / max(h, w)
      ex = T.resize_to(ex, (max(1, round(h * s)), max(1, round(w * s))))
      ex = T.random_crop(ex, rng, (size, size), fill=0, semantic_fill=IGNORE)
    elif (h, w) != (size, size):
      ex = T.resize_to(ex, (size, size))
    if rng is not None and self.hflip:
      ex = T.random_hflip(ex, rng)
    out = {"image": ((ex["image"].astype(np.float32) / 255.0 - MEAN) / STD),
           "label": ex["semantic"].astype(np.int32)}
    if self.sizes:
      out["object_area"] = ex["masks"][0].astype(np.float32)
    return out


def image_0_255(image: jax.Array) -> jax.Array:
  """The normalised model input back to 0..255 intensities (the CRF's colour features)."""
  return jnp.clip((image * STD + MEAN) * 255.0, 0.0, 255.0)


# ------------------------------------------------------------------------------------------------ task

@dataclasses.dataclass(eq=False)
class SegmentationTask(task_lib.Task):
  """Per-pixel cross-entropy (+ auxiliary head); eval = confusion matrices (whole image, trimap band, size buckets).

  ``model(x [B,H,W,3], *, train) -> {"logits": [B,H,W,C], optional "aux_logits", optional "unary_logits"}``.
  ``dense_crf``: ``(logits [H,W,C], image [H,W,3] 0..255) -> logits`` applied per image at eval (``--crf=dense``).
  """
  model: nn.Module
  cfg: SegmentationConfig
  num_classes: int
  class_names: tuple[str, ...]
  dense_crf: Any = None
  sizes: bool = False

  def init(self, rng, batch):
    x = jnp.zeros((1,) + tuple(batch["image"].shape[1:]), jnp.float32)
    variables = self.model.init({"params": rng}, x, train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def _schedule(self):
    c = self.cfg
    return optim.make_schedule(c.schedule, c.learning_rate, c.num_steps, warmup_steps=c.warmup_steps,
                               warmup_init=0.1)

  def optimizer(self):
    return optim.make_optimizer("momentum", self._schedule(), weight_decay=self.cfg.weight_decay, momentum=0.9,
                                grad_clip_norm=self.cfg.grad_clip_norm or None)

  def extra_metrics(self, state):
    return {"learning_rate": self._schedule()(state.step)}

  def loss(self, params, model_state, batch, rng, *, train):
    out, new_state = self.model.apply({"params": params, **model_state}, batch["image"], train=True,
                                      mutable=["batch_stats"])
    label = batch["label"]
    valid = (label != IGNORE).astype(jnp.float32)
    safe = jnp.where(label == IGNORE, 0, label)

    def ce_sum(logits):
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe) * valid)

    main = ce_sum(out["logits"])
    total = main
    metrics = {"ce": main / jnp.maximum(jnp.sum(valid), 1.0)}
    if "aux_logits" in out and self.cfg.aux_weight > 0:
      aux = ce_sum(out["aux_logits"])
      total = total + self.cfg.aux_weight * aux
      metrics["aux_ce"] = aux / jnp.maximum(jnp.sum(valid), 1.0)
    correct = jnp.sum((jnp.argmax(out["logits"], -1) == label) * valid)
    metrics["pixel_accuracy"] = correct / jnp.maximum(jnp.sum(valid), 1.0)
    return (total, jnp.sum(valid)), ({**model_state, **new_state}, metrics)

  def _confusions(self, prefix: str, logits, batch) -> dict[str, jax.Array]:
    c = self.num_classes
    pred = jnp.argmax(logits, -1)
    label = batch["label"]
    row = batch["valid"][:, None, None]
    band = dm.boundary_band(label, self.cfg.boundary_width)
    sums = {f"{prefix}confusion": dm.confusion_matrix(pred, label, c, weight=row),
            f"{prefix}boundary_confusion": dm.confusion_matrix(pred, label, c, weight=row * band)}
    if self.sizes:
      area = batch["object_area"]
      for name, lo, hi in SIZE_BUCKETS:
        inside = ((area > lo) & (area <= hi)).astype(jnp.float32)
        sums[f"{prefix}{name}_confusion"] = dm.confusion_matrix(pred, label, c, weight=row * inside)
    return sums

  def eval_step(self, state, batch):
    out = self.model.apply({"params": state.params, **state.model_state}, batch["image"], train=False)
    sums = self._confusions("", out["logits"], batch)
    if "unary_logits" in out:
      sums.update(self._confusions("unary/", out["unary_logits"], batch))
    if self.dense_crf is not None:
      refined = jax.lax.map(lambda a: self.dense_crf(*a), (out["logits"], image_0_255(batch["image"])))
      sums.update(self._confusions("crf/", refined, batch))
    return sums, {}

  def eval_metrics(self, sums, gathered):
    metrics: dict[str, float] = {}
    for prefix in ("", "unary/", "crf/"):
      if f"{prefix}confusion" not in sums:
        continue
      metrics.update(dm.segmentation_scores(sums[f"{prefix}confusion"], self.class_names, prefix=prefix))
      b = np.asarray(sums[f"{prefix}boundary_confusion"], np.float64)
      metrics[f"{prefix}boundary_accuracy"] = float(np.trace(b) / b.sum()) if b.sum() > 0 else float("nan")
      metrics[f"{prefix}boundary_miou"] = dm.segmentation_scores(b)["miou"]
      for name, _, _ in SIZE_BUCKETS:
        k = f"{prefix}{name}_confusion"
        if k in sums:
          m = np.asarray(sums[k], np.float64)
          metrics[f"{prefix}accuracy_{name}"] = float(np.trace(m) / m.sum()) if m.sum() > 0 else float("nan")
    return metrics

  def run_info(self):
    return {"model": self.cfg.model, "backbone": self.cfg.backbone, "dataset": self.cfg.dataset, "crf": self.cfg.crf}


# ------------------------------------------------------------------------------------------------ building

def validate(cfg: SegmentationConfig) -> None:
  """One clear ValueError naming the flag for a bad setting."""
  seg = models.names("segmentation")
  if cfg.model not in seg:
    raise ValueError(f"--model={cfg.model!r}; choose one of {seg}")
  if cfg.backbone not in models.names():
    raise ValueError(f"--backbone={cfg.backbone!r} is not a registered backbone; choose one of research.models.names() "
                     f"(e.g. resnet18, resnet50, drn_a_50, drn_c_26)")
  if cfg.image_size <= 0 or cfg.image_size % 32:
    raise ValueError(f"--image_size={cfg.image_size} must be a positive multiple of 32")
  if cfg.output_stride not in (8, 16, 32):
    raise ValueError(f"--output_stride={cfg.output_stride} must be 8, 16 or 32")
  if cfg.pretrain_steps < 0:
    raise ValueError(f"--pretrain_steps={cfg.pretrain_steps} must be >= 0 (0 = from scratch)")
  for name in ("num_steps", "batch_size", "crf_iters", "crf_iters_eval", "backbone_width"):
    if getattr(cfg, name) <= 0:
      raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
  if not 0 <= cfg.warmup_steps < cfg.num_steps:
    raise ValueError(f"--warmup_steps={cfg.warmup_steps} must be in [0, --num_steps={cfg.num_steps})")
  if not 0 < cfg.min_scale <= cfg.max_scale:
    raise ValueError(f"--min_scale={cfg.min_scale} and --max_scale={cfg.max_scale} need 0 < min_scale <= max_scale")
  if cfg.batch_size % jax.device_count():
    raise ValueError(f"--batch_size={cfg.batch_size} must be divisible by the device count {jax.device_count()}")
  if cfg.num_classes < 0:
    raise ValueError(f"--num_classes={cfg.num_classes} must be >= 0 (0 = from the dataset)")
  if cfg.boundary_width < 0:
    raise ValueError(f"--boundary_width={cfg.boundary_width} must be >= 0")


def crf_params(cfg: SegmentationConfig):
  from research.ops import crf as crf_ops
  return crf_ops.DenseCRFParams(w1=cfg.crf_w_appearance, theta_alpha=cfg.crf_theta_alpha,
                                theta_beta=cfg.crf_theta_beta, w2=cfg.crf_w_smoothness, theta_gamma=cfg.crf_theta_gamma)


def make_model(cfg: SegmentationConfig, num_classes: int) -> nn.Module:
  """The registered segmentation network of ``cfg`` (wrapped with CRF-as-RNN for ``--crf=crf_rnn``)."""
  kw: dict[str, Any] = {}
  if cfg.backbone.startswith(("resnet", "resnext", "wide_resnet", "se_res")):
    kw["backbone_kwargs"] = {"width": cfg.backbone_width}
  if cfg.model == "gcn_seg":
    kw.update(boundary_refinement=cfg.boundary_refinement, large_kernel=cfg.large_kernel, kernel_size=cfg.kernel_size)
  if cfg.model == "pspnet":
    kw["aux_head"] = cfg.aux_head
  if cfg.model == "deeplabv3":
    kw["atrous_rates"] = tuple(cfg.aspp_rates)
  net = models.create(cfg.model, num_classes=num_classes, backbone=cfg.backbone, output_stride=cfg.output_stride, **kw)
  if cfg.crf != "crf_rnn":
    return net
  from research.models.segmentation.crf import SegmenterWithCRF
  p = crf_params(cfg)
  return SegmenterWithCRF(segmenter=net, num_classes=num_classes, num_iters=cfg.crf_iters,
                          num_iters_eval=cfg.crf_iters_eval, theta_alpha=p.theta_alpha, theta_beta=p.theta_beta,
                          theta_gamma=p.theta_gamma, w_appearance=p.w1, w_smoothness=p.w2,
                          method=cfg.crf_method, mean=MEAN, std=STD)


def make_dense_crf(cfg: SegmentationConfig):
  """``(logits [H,W,C], image [H,W,3] 0..255) -> [H,W,C]`` pre-softmax of the last mean-field iteration of the fully
  connected CRF with fixed (validated, not learned) parameters (``--crf=dense``; its argmax is the CRF's labelling)."""
  from research.ops import crf as crf_ops
  params = crf_params(cfg)

  def refine(logits, image):
    return crf_ops.mean_field_logits(logits, image, num_iters=cfg.crf_iters, params=params, method=cfg.crf_method)
  return refine


@dataclasses.dataclass
class SegmentationData:
  train_source: Any
  eval_source: Any
  class_names: tuple[str, ...]
  sizes: bool  # the records carry an instance map (object-size buckets)


def prepare_data(cfg: SegmentationConfig) -> SegmentationData:
  from research import data as data_lib
  train = data_lib.get_source(cfg.dataset, cfg.train_split, cfg.data_dir)
  evals = data_lib.get_source(cfg.dataset, cfg.eval_split, cfg.data_dir)
  info = data_lib.get_info(cfg.dataset, cfg.data_dir)
  features = info.features
  for key, flag in ((cfg.image_key, "image_key"), (cfg.label_key, "label_key")):
    if key not in features:
      raise ValueError(f"--{flag}={key!r} is not a feature of --dataset={cfg.dataset!r}; it has {sorted(features)}")
  if cfg.dataset.split("/")[0] == "shapes_scenes":
    from research.data import scenes
    names = ("background",) + tuple(scenes.CLASS_NAMES)
  else:
    names = tuple(getattr(features[cfg.label_key], "names", None) or ())
  n = cfg.num_classes or len(names)
  if n <= 1:
    raise ValueError(f"--dataset={cfg.dataset!r} does not say how many classes its label map has; give --num_classes")
  if len(names) != n:
    names = tuple(str(i) for i in range(n))
  return SegmentationData(train, evals, names, "instance" in features and cfg.label_key == "semantic")


def make_task(cfg: SegmentationConfig, d: SegmentationData) -> SegmentationTask:
  n = len(d.class_names)
  return SegmentationTask(make_model(cfg, n), cfg, n, d.class_names,
                          dense_crf=make_dense_crf(cfg) if cfg.crf == "dense" else None, sizes=d.sizes)


def train_and_evaluate(cfg: SegmentationConfig, workdir: str | None) -> dict[str, Any]:
  """Trains ``cfg.model`` for ``cfg.num_steps`` steps (resuming from ``workdir``) and evaluates it (module docstring)."""
  from research import data as data_lib
  from research.train.classify import finished_results
  t0 = time.time()
  validate(cfg)
  done = finished_results(workdir, cfg.num_steps) if workdir else None
  if done is not None and "eval_miou" in done:
    log.info("%s holds a finished run of %d steps; reusing its results", workdir, cfg.num_steps)
    return done
  d = prepare_data(cfg)
  task = make_task(cfg, d)
  from research.train.detection import _Subset  # the first-N view of a source, shared with detection
  eval_source = _Subset(d.eval_source, cfg.eval_examples) if cfg.eval_examples else d.eval_source
  tf = SegmentationTransform(cfg.image_size, task.num_classes, cfg.image_key, cfg.label_key, cfg.label_offset,
                             cfg.min_scale, cfg.max_scale, cfg.hflip, sizes=False)
  eval_tf = dataclasses.replace(tf, min_scale=1.0, max_scale=1.0, hflip=False, sizes=d.sizes)
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
  if not checkpoint and cfg.pretrain_steps and not cfg.init_checkpoint:
    from research.train import pretrain
    checkpoint = pretrain.pretrain_backbone(cfg.backbone, width=cfg.backbone_width, steps=cfg.pretrain_steps,
                                            seed=0, pretrain_dir=cfg.pretrain_dir,  # shared by all --seed, as ImageNet weights are
                                            data_dir=cfg.data_dir if cfg.dataset == "shapes_scenes" else None,
                                            progress_bar=cfg.progress_bar)
  if checkpoint and not cfg.init_checkpoint and not (workdir and os.path.isdir(os.path.join(workdir, "checkpoints"))):
    from research.train import pretrain
    shape = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    params, state = jax.jit(lambda r: task.init(r, {"image": shape}))(jax.random.PRNGKey(cfg.seed))
    variables = pretrain.load_backbone(params, state, checkpoint)
  if cfg.init_checkpoint and not (workdir and os.path.isdir(os.path.join(workdir, "checkpoints"))):
    from research.train import pretrain
    shape = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    params, state = jax.jit(lambda r: task.init(r, {"image": shape}))(jax.random.PRNGKey(cfg.seed))
    variables = pretrain.load_network(params, state, cfg.init_checkpoint)
  _, results = loop_lib.train(task, iter(train_iter), config=config, mesh=task_lib.make_mesh(), workdir=workdir,
                              eval_data=eval_data, run_config=dataclasses.asdict(cfg), variables=variables,
                              results_extra={"model": cfg.model, "dataset": cfg.dataset, "crf": cfg.crf,
                                             "num_classes": task.num_classes})
  results["wall_seconds"] = time.time() - t0
  if workdir and fileio.main_process():
    fileio.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results


# ------------------------------------------------------------------------------------------------ sweeps

# The ablations of the issue's claims: name -> config overrides (experiments.segmentation --conditions=...).
CONDITIONS: dict[str, dict[str, Any]] = {
    "fcn": {"model": "fcn", "output_stride": 8},                        # the plain dilated FCN baseline
    "pspnet": {"model": "pspnet", "output_stride": 8},                  # + pyramid pooling (+ aux loss)
    "pspnet_noaux": {"model": "pspnet", "output_stride": 8, "aux_head": False},
    "deeplabv3": {"model": "deeplabv3", "output_stride": 8},            # + ASPP + image pooling, multi-grid
    "deeplabv3_os16": {"model": "deeplabv3", "output_stride": 16},
    "gcn": {"model": "gcn_seg", "output_stride": 32},                       # large kernels + BR
    "gcn_no_br": {"model": "gcn_seg", "output_stride": 32, "boundary_refinement": False},
    "gcn_small_kernel": {"model": "gcn_seg", "output_stride": 32, "large_kernel": False},
    "fcn_dense_crf": {"model": "fcn", "output_stride": 8, "crf": "dense"},   # unary + CRF from one network
    "fcn_crf_rnn": {"model": "fcn", "output_stride": 8, "crf": "crf_rnn"},   # CRF-as-RNN trained end to end
}

REPORT_KEYS = ("miou", "pixel_accuracy", "boundary_accuracy", "accuracy_small", "accuracy_medium", "accuracy_large")


def conditions_from_names(names: tuple[str, ...], base: SegmentationConfig) -> dict[str, dict[str, Any]]:
  """``--conditions`` names -> ``{name: overrides}`` (``CONDITIONS``); none: the one run the flags describe."""
  if not names:
    return {base.model + ("" if base.crf == "none" else f"_{base.crf}"): {}}
  unknown = [c for c in names if c not in CONDITIONS]
  if unknown:
    raise ValueError(f"--conditions: unknown {unknown}; choose from {sorted(CONDITIONS)}")
  return {c: CONDITIONS[c] for c in names}


def sweep(base: SegmentationConfig, workdir: str, conditions: Mapping[str, Mapping[str, Any]],
          seeds: tuple[int, ...]) -> dict[str, Any]:
  """Trains every condition (name -> config overrides, e.g. from ``CONDITIONS``) with every seed in
  ``workdir/<name>_seed<k>`` (each resumable; finished runs are reused), then writes ``summary.json`` and ``summary.md``
  (mean ± std over seeds; for CRF runs the unary row too, measured on the same network)."""
  if not seeds:
    raise ValueError("--seeds must name at least one seed")
  t0 = time.time()
  rows: dict[str, list[dict[str, float]]] = {}
  for seed in seeds:  # seeds outermost: an interrupted sweep has every condition of the first seeds
    for name in conditions:
      cfg = dataclasses.replace(base, seed=seed, **conditions[name])
      r = train_and_evaluate(cfg, os.path.join(workdir, f"{name}_seed{seed}"))
      for prefix, row in (("", name), ("unary/", f"{name} (unary)"), ("crf/", f"{name} (+dense CRF)")):
        vals = {k: r[f"eval_{prefix}{k}"] for k in REPORT_KEYS if f"eval_{prefix}{k}" in r}
        if vals:
          rows.setdefault(row, []).append(vals | {"seed": seed, "wall_seconds": r.get("wall_seconds", 0.0)})
  table = {}
  for row, runs in rows.items():
    keys = [k for k in REPORT_KEYS if all(k in run for run in runs)]
    table[row] = {k: (float(np.mean([run[k] for run in runs])), float(np.std([run[k] for run in runs])))
                  for k in keys} | {"wall_seconds": float(np.mean([run["wall_seconds"] for run in runs]))}
  summary = {"conditions": {c: dict(o) for c, o in conditions.items()}, "seeds": list(seeds), "runs": rows,
             "table": table, "wall_seconds": time.time() - t0, "base": dataclasses.asdict(base)}
  lines = ["| condition | " + " | ".join(REPORT_KEYS) + " | s / run |", "|---" * (len(REPORT_KEYS) + 2) + "|"]
  for row, vals in table.items():
    cells = [f"{100 * vals[k][0]:.1f} ± {100 * vals[k][1]:.1f}" if k in vals else "n/a" for k in REPORT_KEYS]
    lines.append(f"| {row} | " + " | ".join(cells) + f" | {vals['wall_seconds']:.0f} |")
  text = (f"Segmentation on {base.dataset} {base.eval_split} ({base.num_steps} steps, backbone {base.backbone} "
          f"width {base.backbone_width}), % mean ± std over seeds {list(seeds)}:\n\n" + "\n".join(lines) + "\n")
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    fileio.write_atomic(os.path.join(workdir, "summary.md"), text)
  return summary
