"""Supervised image classification as a ``Task`` of the one training loop (used by experiments.classify).

``ClassificationTask`` is what differs from other families: the model's softmax (or other) loss with optional
auxiliary heads (GoogLeNet §5, Inception v3), center loss (Wen et al.), frozen BatchNorm for the last steps
(SENet) and dynamic loss scaling for float16; eval sums loss, correct and count. ``train_and_evaluate(config,
workdir)`` builds data, task and mesh and calls ``research.train.loop.train``, which does the rest
(data-parallel step, checkpoints + resume, NaN halt, metrics, ``results.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

import flax.linen as nn
import optax
from flax.training import dynamic_scale as dynamic_scale_lib

from research import data as data_lib
from research import models
from research.configs import setting
from research.train import checkpoint as ckpt_lib
from research.train import loop as loop_lib
from research.train import losses as losses_lib
from research.train import metrics as metrics_lib
from research.train import optim, recipes
from research.train import task as task_lib

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass
class ClassifyConfig:
  """All settings of a classification run; each field is one absl flag of ``experiments.classify``."""
  model: str = setting("wrn16_4", "Registered model name (research.models.names() or wrn{d}_{k}).")
  model_kwargs: dict[str, Any] = setting({}, "JSON dict of extra model arguments, e.g. '{\"dropout_rate\": 0.3}'.")
  dataset: str = setting("shapes", "TFDS dataset name: 'shapes' (offline, procedural) or a prepared one.")
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  num_steps: int = setting(1000, "Training steps.")
  batch_size: int = setting(128, "Global batch size (divisible by the device count).")
  eval_batch_size: int = setting(0, "Global eval batch size; 0 = --batch_size.")
  learning_rate: float = setting(0.1, "Peak learning rate.")
  optimizer: str = setting("nesterov", "Optimizer.", choices=optim.OPTIMIZERS)
  momentum: float = setting(0.9, "Momentum for momentum/nesterov.")
  schedule: str = setting("cosine", "LR schedule.", choices=optim.SCHEDULES)
  warmup_steps: int = setting(0, "Linear warmup steps from --warmup_init * the peak LR.")
  weight_decay: float = setting(5e-4, "Weight decay (L2 for SGD variants, decoupled for adamw).")
  decay_bn_and_bias: bool = setting(False, "Also decay BatchNorm parameters and biases.")
  label_smoothing: float = setting(0.0, "Label smoothing for cross-entropy.")
  loss: str = setting("cross_entropy", "Loss name (research.train.losses).")
  aux_loss_weight: float = setting(-1.0, "Weight of each auxiliary classifier's loss (GoogLeNet, Inception v3 with "
                                   "model_kwargs aux_logits); -1 = the paper's (GoogLeNet 0.3, Inception v3 0.4).")
  grad_clip_norm: float = setting(0.0, "Clip gradients to this global norm (0 = off).")
  seed: int = setting(0, "Seed for init, data order, augmentation and dropout.")
  eval_every: int = setting(500, "Evaluate every N steps (and at the end).")
  checkpoint_every: int = setting(500, "Checkpoint every N steps (and at the end).")
  keep_checkpoints: int = setting(3, "Checkpoints kept.")
  log_every: int = setting(10, "Log training metrics every N steps.")
  sync_bn: bool = setting(False, "Cross-replica BatchNorm statistics (mean over the global batch).")
  dtype: str = setting("float32", "Compute dtype (params stay float32); float16 uses dynamic loss scaling.",
                       choices=tuple(DTYPES))
  augment: str = setting("auto", "Augmentation; auto = dataset default.", choices=("auto",) + data_lib.AUGMENTATIONS)
  data_workers: int = setting(0, "grain worker processes (0 = in-process).")
  init_checkpoint: str | None = setting(None, "Initialise params from this checkpoint when workdir has none.")
  progress_bar: bool = setting(True, "Show a progress bar (process 0).")
  prefetch: int = setting(2, "Batches put on the devices ahead of the step (0 = synchronous input).")
  # Recipes (issue 5; research/train/recipes.py).
  lr_scaling: str = setting("none", "linear: peak LR = --learning_rate * --batch_size / --base_batch_size "
                            "(Goyal et al. 2017).", choices=recipes.LR_SCALINGS)
  base_batch_size: int = setting(256, "Batch size at which --learning_rate is given (--lr_scaling=linear).")
  warmup_init: float = setting(0.0, "Warmup starts at this fraction of the peak LR (Goyal et al.: 1/k).")
  zero_init_residual: bool = setting(False, "Zero-init γ of each residual block's last BN (Goyal et al. 2017; "
                                     "post-activation ResNets).")
  freeze_bn_last_steps: int = setting(0, "For the last N steps BN normalises with, and stops updating, its running "
                                      "statistics (SENet).")
  temperature: float = setting(1.0, "Softmax temperature T: softmax(logits / T) in the softmax losses.")
  center_loss_weight: float = setting(0.003, "λ of --loss=softmax_center (Wen et al. 2016, Eq. 5).")
  center_loss_alpha: float = setting(0.5, "Centre learning rate α of --loss=softmax_center (Wen et al., Eq. 4).")
  num_classes_subset: int = setting(0, "Use only the classes with label < N (0 = all).")
  step_boundaries: tuple[float, ...] = setting((0.5, 0.75), "--schedule=step: fractions of --num_steps where "
                                               "LR *= 0.1.")
  onecycle_pct_start: float = setting(0.3, "--schedule=onecycle: fraction of steps with increasing LR.")
  num_devices: int = setting(0, "Data-parallel over the first N devices of this (single) process; 0 = all.")


params_sha256 = loop_lib.params_sha256


def mesh_devices(cfg: ClassifyConfig) -> list:
  """The devices the run is data-parallel over: every device, or the first ``cfg.num_devices`` (one process)."""
  if cfg.num_devices == 0:
    return jax.devices()
  if cfg.num_devices < 0:
    raise ValueError(f"--num_devices must be >= 0 (0 = every device), got {cfg.num_devices}")
  if jax.process_count() > 1:
    raise ValueError("--num_devices selects devices of a single process; leave it 0 in multi-process runs")
  if cfg.num_devices > jax.device_count():
    raise ValueError(f"--num_devices={cfg.num_devices} but only {jax.device_count()} devices exist (on CPU, raise "
                     f"the simulated count with XLA_FLAGS=--xla_force_host_platform_device_count=N)")
  return jax.devices()[:cfg.num_devices]


def validate(cfg: ClassifyConfig) -> None:
  """Raises ValueError naming the flag for every invalid setting that can be checked up front."""
  if cfg.model not in models.names():
    models.create(cfg.model)  # raises the registry's "unknown model" error unless it is a pattern family
  positive = {"num_steps": cfg.num_steps, "batch_size": cfg.batch_size, "eval_every": cfg.eval_every,
              "checkpoint_every": cfg.checkpoint_every, "log_every": cfg.log_every,
              "keep_checkpoints": cfg.keep_checkpoints}
  for k, v in positive.items():
    if v <= 0:
      raise ValueError(f"--{k} must be positive, got {v}")
  if not cfg.learning_rate > 0:
    raise ValueError(f"--learning_rate must be positive, got {cfg.learning_rate}")
  if cfg.dtype not in DTYPES:
    raise ValueError(f"--dtype={cfg.dtype!r}; choose one of {sorted(DTYPES)}")
  if cfg.augment != "auto" and cfg.augment not in data_lib.AUGMENTATIONS:
    raise ValueError(f"--augment={cfg.augment!r}; choose auto or one of {data_lib.AUGMENTATIONS}")
  if cfg.optimizer not in optim.OPTIMIZERS:
    raise ValueError(f"--optimizer={cfg.optimizer!r}; choose one of {optim.OPTIMIZERS}")
  if cfg.schedule not in optim.SCHEDULES:
    raise ValueError(f"--schedule={cfg.schedule!r}; choose one of {optim.SCHEDULES}")
  if not 0 <= cfg.warmup_steps < cfg.num_steps:
    raise ValueError(f"--warmup_steps={cfg.warmup_steps} must be in [0, --num_steps={cfg.num_steps})")
  n_dev = len(mesh_devices(cfg))
  for name, bs in (("batch_size", cfg.batch_size), ("eval_batch_size", cfg.eval_batch_size or cfg.batch_size)):
    if bs % n_dev:
      raise ValueError(f"--{name}={bs} is not divisible by the number of devices ({n_dev}); use a multiple of {n_dev}")
  if not 0 <= cfg.label_smoothing < 1:
    raise ValueError(f"--label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
  _validate_recipes(cfg)
  _loss_fn(cfg)


def _validate_recipes(cfg: ClassifyConfig) -> None:
  if cfg.lr_scaling not in recipes.LR_SCALINGS:
    raise ValueError(f"--lr_scaling={cfg.lr_scaling!r}; choose one of {recipes.LR_SCALINGS}")
  if cfg.base_batch_size <= 0:
    raise ValueError(f"--base_batch_size must be positive, got {cfg.base_batch_size}")
  if not 0 <= cfg.warmup_init <= 1:
    raise ValueError(f"--warmup_init must be in [0, 1] (a fraction of the peak LR), got {cfg.warmup_init}")
  if not 0 <= cfg.freeze_bn_last_steps < cfg.num_steps:
    raise ValueError(f"--freeze_bn_last_steps={cfg.freeze_bn_last_steps} must be in [0, --num_steps={cfg.num_steps})")
  if not cfg.temperature > 0:
    raise ValueError(f"--temperature must be positive, got {cfg.temperature}")
  if cfg.center_loss_weight < 0:
    raise ValueError(f"--center_loss_weight must be >= 0, got {cfg.center_loss_weight}")
  if not 0 < cfg.center_loss_alpha <= 1:
    raise ValueError(f"--center_loss_alpha must be in (0, 1], got {cfg.center_loss_alpha}")
  if cfg.num_classes_subset < 0 or cfg.num_classes_subset == 1:
    raise ValueError(f"--num_classes_subset must be 0 (all classes) or >= 2, got {cfg.num_classes_subset}")
  if cfg.schedule == "step" and not all(0 < b < 1 for b in cfg.step_boundaries):
    raise ValueError(f"--step_boundaries must be fractions in (0, 1), got {list(cfg.step_boundaries)}")
  if not 0 < cfg.onecycle_pct_start < 1:
    raise ValueError(f"--onecycle_pct_start must be in (0, 1), got {cfg.onecycle_pct_start}")
  if cfg.schedule == "onecycle" and cfg.warmup_steps:
    log.warning("--warmup_steps=%d is ignored by --schedule=onecycle (its first phase is the warmup; see "
                "--onecycle_pct_start)", cfg.warmup_steps)
  if cfg.zero_init_residual:
    if "zero_init_last_bn" in cfg.model_kwargs:
      raise ValueError("--zero_init_residual and --model_kwargs zero_init_last_bn both given; use one")
    probe = models.create(cfg.model, num_classes=2, **cfg.model_kwargs)
    if not recipes.supports_zero_init_residual(probe):
      raise ValueError(f"--zero_init_residual: model {cfg.model!r} ({type(probe).__name__}) has no zero_init_last_bn "
                       f"option (pre-activation blocks end with a conv, not a BN); use a post-activation ResNet "
                       f"such as resnet18/resnet50")


def effective_learning_rate(cfg: ClassifyConfig) -> float:
  """Peak LR after ``--lr_scaling`` (Goyal et al.'s Linear Scaling Rule when ``linear``)."""
  return recipes.scaled_lr(cfg.lr_scaling, cfg.learning_rate, cfg.batch_size, cfg.base_batch_size)


def center_loss_of(cfg: ClassifyConfig) -> recipes.CenterLoss | None:
  """The center-loss settings when ``--loss=softmax_center``, else None."""
  if cfg.loss != "softmax_center":
    return None
  return recipes.CenterLoss(lam=cfg.center_loss_weight, alpha=cfg.center_loss_alpha)


def _loss_fn(cfg: ClassifyConfig):
  """Per-example loss ``fn(logits, labels) -> [B]`` for ``--loss``. For ``softmax_center`` this is the softmax
  part only; the center term needs the features and centres and is added by ``ClassificationTask``."""
  if cfg.loss in ("cross_entropy", "softmax_center"):
    if cfg.temperature == 1.0:
      return functools.partial(losses_lib.cross_entropy, label_smoothing=cfg.label_smoothing)
    return functools.partial(losses_lib.cross_entropy, temperature=cfg.temperature,
                             label_smoothing=cfg.label_smoothing)
  if cfg.loss not in losses_lib.loss_names():
    raise ValueError(f"--loss={cfg.loss!r}; choose one of {losses_lib.loss_names()}")
  if cfg.loss == "label_smoothing":
    if cfg.temperature != 1.0:
      raise ValueError("--temperature applies to --loss=cross_entropy/softmax_center/temperature_cross_entropy")
    return losses_lib.get_loss(cfg.loss, smoothing=cfg.label_smoothing or 0.1)
  if cfg.label_smoothing:
    raise ValueError(f"--label_smoothing applies to the softmax cross-entropy losses, not --loss={cfg.loss}")
  if cfg.loss == "temperature_cross_entropy":
    return losses_lib.get_loss(cfg.loss, temperature=cfg.temperature)
  if cfg.temperature != 1.0:
    raise ValueError(f"--temperature applies to the softmax losses, not --loss={cfg.loss}")
  return losses_lib.get_loss(cfg.loss)


def eval_curve(workdir: str) -> list[tuple[int, float]]:
  """[(step, eval accuracy)] logged in ``workdir/metrics.jsonl``, in step order (last value per step)."""
  curve = {int(row["step"]): float(row["eval/accuracy"]) for row in metrics_lib.read_metrics(workdir)
           if "eval/accuracy" in row}
  return sorted(curve.items())


def finished_results(workdir: str, num_steps: int) -> dict[str, Any] | None:
  """``workdir/results.json`` if it records a finished run of ``num_steps`` steps (experiments skip those, keeping
  their original timings), else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    res = json.load(f)
  return res if res.get("step") == num_steps else None


def steps_to_accuracy(curve: list[tuple[int, float]], target: float) -> int | None:
  """First evaluated step whose accuracy is >= ``target`` (None if never)."""
  return next((s for s, a in curve if a >= target), None)


def make_model(cfg: ClassifyConfig, spec: data_lib.DatasetSpec):
  """The linen module of ``cfg`` (``--zero_init_residual`` maps to the model's ``zero_init_last_bn``)."""
  model_kwargs = dict(cfg.model_kwargs)
  if cfg.zero_init_residual:
    model_kwargs["zero_init_last_bn"] = True
  return models.create(cfg.model, num_classes=spec.num_classes, dtype=DTYPES[cfg.dtype],
                       bn_axis_name=task_lib.DATA_AXIS if cfg.sync_bn else None, **model_kwargs)


# The papers' auxiliary-classifier weights: GoogLeNet §5 ("weighted by 0.3"); Inception v3 gives none, 0.4 is
# the weight of the TF-slim / torchvision reference training scripts.
AUX_WEIGHTS = {"GoogLeNet": 0.3, "InceptionV3": 0.4}


@dataclasses.dataclass(eq=False)
class ClassificationTask(task_lib.Task):
  """Softmax classification of ``{'image': [B,H,W,C] f32, 'label': [B] int}`` batches.

  ``loss_fn(logits, labels) -> [B]``. Models that return ``(logits, *aux_logits)`` in training mode
  (GoogLeNet, Inception v3 with ``aux_logits=True``) add ``aux_weight`` × each auxiliary loss. ``center_loss``
  adds λ·mean ½||x_i − c_{y_i}||² on the classifier's input and updates the centres (``model_state['centers']``)
  by Wen et al.'s Eq. 4 over the global batch. ``freeze_bn_from``: from that step on, BatchNorm uses and keeps
  its running statistics (SENet). ``loss_scale``: float16 dynamic loss scaling (flax ``DynamicScale``), the
  step is skipped when the scaled gradients overflow.
  """
  model: nn.Module
  tx: optax.GradientTransformation
  loss_fn: Callable
  image_shape: tuple[int, ...]
  num_classes: int
  schedule: optax.Schedule | None = None
  center_loss: recipes.CenterLoss | None = None
  freeze_bn_from: int | None = None
  aux_weight: float = 0.0
  loss_scale: bool = False

  def init(self, rng, batch):
    x = jnp.zeros((1,) + tuple(self.image_shape), jnp.float32)
    aux = bool(getattr(self.model, "aux_logits", False))  # aux heads exist only in training mode
    variables = self.model.init({"params": rng, "dropout": rng}, x, train=aux)
    params = variables["params"]
    model_state = {"batch_stats": variables.get("batch_stats", {})}
    if self.center_loss is not None:  # class centres c_j [C, D], D = the classifier's input width
      dim = recipes.feature_dim(self.model, {"params": params, **model_state}, x.shape, self.center_loss.head_name)
      model_state["centers"] = losses_lib.init_centers(self.num_classes, dim)
    if self.loss_scale:
      model_state["dynamic_scale"] = dynamic_scale_lib.DynamicScale(fin_steps=jnp.zeros((), jnp.int32),
                                                                     scale=jnp.asarray(2.0**15, jnp.float32))
    return params, model_state

  def optimizer(self):
    return self.tx

  def _variables(self, params, model_state):
    bn = model_state.get("batch_stats", {})
    return {"params": params, **({"batch_stats": bn} if jax.tree.leaves(bn) else {})}

  def _forward(self, params, model_state, batch, rng, freeze_bn: bool):
    bn_ctx = recipes.frozen_batch_norm() if freeze_bn else contextlib.nullcontext()
    feat_ctx = (recipes.capture_features(self.center_loss.head_name) if self.center_loss is not None
                else contextlib.nullcontext({}))
    with bn_ctx, feat_ctx as captured:
      out, updates = self.model.apply(self._variables(params, model_state), batch["image"], train=True,
                                      mutable=["batch_stats"],
                                      rngs={"dropout": rng, "droppath": jax.random.fold_in(rng, 1)})
    logits, aux = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    loss = jnp.mean(self.loss_fn(logits, batch["label"]))
    for a in aux:
      loss = loss + self.aux_weight * jnp.mean(self.loss_fn(a, batch["label"]))
    new_state = dict(model_state)
    if not freeze_bn:
      new_state["batch_stats"] = updates.get("batch_stats", model_state.get("batch_stats", {}))
    metrics = {"accuracy": jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))}
    if self.center_loss is not None:
      if "features" not in captured:
        raise ValueError(f"center loss: the model has no top-level classifier module named "
                         f"{self.center_loss.head_name!r} whose input could serve as the deep features")
      features = captured["features"].astype(jnp.float32)
      centers = jax.lax.stop_gradient(model_state["centers"])
      loss = loss + self.center_loss.lam * jnp.mean(losses_lib.center_loss(features, batch["label"], centers))
      # Per-device class counts and feature sums; sync_model_state psums them and applies Eq. 4.
      new_state["center_statistics"] = losses_lib.center_statistics(jax.lax.stop_gradient(features),
                                                                    batch["label"], self.num_classes)
    return loss, (new_state, metrics)

  def loss(self, params, model_state, batch, rng, *, train: bool, freeze_bn: bool = False):
    del train  # the training loss; eval_step computes the eval statistics
    return self._forward(params, model_state, batch, rng, freeze_bn)

  def sync_model_state(self, old, new, axis_name):
    new = dict(new)
    if jax.tree.leaves(new.get("batch_stats", {})) and new["batch_stats"] is not old.get("batch_stats"):
      bn = new["batch_stats"]
      new["batch_stats"] = bn if axis_name is None else jax.lax.pmean(bn, axis_name)
    if "center_statistics" in new:
      counts, sums = new.pop("center_statistics")
      if axis_name is not None:
        counts, sums = jax.lax.psum((counts, sums), axis_name)
      new["centers"] = losses_lib.update_centers_from_statistics(old["centers"], counts, sums,
                                                                 self.center_loss.alpha)
    return new

  def update(self, state, batch, rng, *, axis_name):
    if self.freeze_bn_from is None:
      return self._update(state, batch, rng, axis_name=axis_name, freeze_bn=False)
    return jax.lax.cond(state.step >= self.freeze_bn_from,
                        lambda: self._update(state, batch, rng, axis_name=axis_name, freeze_bn=True),
                        lambda: self._update(state, batch, rng, axis_name=axis_name, freeze_bn=False))

  def _update(self, state, batch, rng, *, axis_name, freeze_bn):
    loss_fn = functools.partial(self.loss, freeze_bn=freeze_bn)
    if not self.loss_scale:
      (loss, (model_state, metrics)), grads = task_lib.grad_of(loss_fn, state.params, state.model_state, batch,
                                                               rng, axis_name)
      model_state = self.sync_model_state(state.model_state, model_state, axis_name)
      params, opt_state, updates = task_lib.apply_optimizer(self.tx, grads, state.opt_state, state.params)
    else:  # float16: scale the loss, unscale the gradients, skip the step on overflow (Micikevicius et al. 2018)
      scale = state.model_state["dynamic_scale"]

      def scaled(p):
        loss, aux = loss_fn(p, state.model_state, batch, rng, train=True)
        if axis_name is not None:
          loss = jax.lax.pmean(loss, axis_name)
        return loss, aux

      new_scale, finite, (loss, (model_state, metrics)), grads = scale.value_and_grad(scaled, has_aux=True)(
          state.params)
      model_state = self.sync_model_state(state.model_state, model_state, axis_name)
      params, opt_state, updates = task_lib.apply_optimizer(self.tx, grads, state.opt_state, state.params)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      model_state = {**keep(model_state, state.model_state), "dynamic_scale": new_scale}
      metrics = {**metrics, "loss_scale": new_scale.scale, "grads_finite": finite.astype(jnp.float32)}
    metrics = {"loss": loss, **task_lib.mean_over(metrics, axis_name), **task_lib.norms(grads, params, updates)}
    return state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state), metrics

  def extra_metrics(self, state):
    if self.schedule is None:
      return {}
    return {"learning_rate": jnp.asarray(self.schedule(state.step), jnp.float32)}

  def eval_step(self, state, batch):
    logits = self.model.apply(self._variables(state.params, state.model_state), batch["image"], train=False)
    valid = batch["valid"]
    sums = {"loss_sum": jnp.sum(self.loss_fn(logits, batch["label"]) * valid),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * valid),
            "count": jnp.sum(valid)}
    return sums, {}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / n, "accuracy": float(sums["correct"]) / n, "count": float(sums["count"])}


def make_schedule(cfg: ClassifyConfig) -> optax.Schedule:
  return optim.make_schedule(cfg.schedule, effective_learning_rate(cfg), cfg.num_steps,
                             warmup_steps=cfg.warmup_steps, warmup_init=cfg.warmup_init,
                             step_boundaries=cfg.step_boundaries, onecycle_pct_start=cfg.onecycle_pct_start)


def make_task(cfg: ClassifyConfig, spec: data_lib.DatasetSpec, schedule: optax.Schedule | None = None
              ) -> ClassificationTask:
  """The classification task of ``cfg``; ``schedule`` overrides the configured one (the LR range test's ramp)."""
  model = make_model(cfg, spec)
  schedule = make_schedule(cfg) if schedule is None else schedule
  tx = optim.make_optimizer(cfg.optimizer, schedule, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                            decay_bn_and_bias=cfg.decay_bn_and_bias, grad_clip_norm=cfg.grad_clip_norm or None)
  aux = AUX_WEIGHTS.get(type(model).__name__, 0.0) if cfg.aux_loss_weight < 0 else cfg.aux_loss_weight
  return ClassificationTask(
      model=model, tx=tx, loss_fn=_loss_fn(cfg), image_shape=tuple(spec.image_shape), num_classes=spec.num_classes,
      schedule=schedule, center_loss=center_loss_of(cfg),
      freeze_bn_from=cfg.num_steps - cfg.freeze_bn_last_steps if cfg.freeze_bn_last_steps else None,
      aux_weight=aux, loss_scale=cfg.dtype == "float16")


def build(cfg: ClassifyConfig, spec: data_lib.DatasetSpec, mesh, schedule=None):
  """(task, abstract state, initial state) for ``cfg`` on ``mesh``."""
  task = make_task(cfg, spec, schedule)
  batch = {"image": jax.ShapeDtypeStruct((cfg.batch_size,) + tuple(spec.image_shape), jnp.float32),
           "label": jax.ShapeDtypeStruct((cfg.batch_size,), jnp.int32)}
  abstract, state = task_lib.init_train_state(task, cfg.seed, batch, mesh)
  return task, abstract, state


def train_data(cfg: ClassifyConfig, spec: data_lib.DatasetSpec, train_source):
  """The training batch iterator of ``cfg`` (grain, checkpointable)."""
  augment = spec.default_augment if cfg.augment == "auto" else cfg.augment
  return iter(data_lib.train_loader(train_source, global_batch_size=cfg.batch_size, seed=cfg.seed, augment=augment,
                                    mean=spec.mean, std=spec.std, worker_count=cfg.data_workers))


def prepare_data(cfg: ClassifyConfig):
  """(spec, train source, eval source) of ``cfg.dataset``, restricted to ``--num_classes_subset`` classes."""
  spec = data_lib.get_spec(cfg.dataset, cfg.data_dir)
  train_source = data_lib.get_source(cfg.dataset, "train", cfg.data_dir)
  eval_source = data_lib.get_source(cfg.dataset, spec.eval_split, cfg.data_dir)
  return _class_subset(cfg, spec, train_source, eval_source)


def _class_subset(cfg: ClassifyConfig, spec, train_source, eval_source):
  """Restricts the sources and spec to the classes with label < ``--num_classes_subset``."""
  k = cfg.num_classes_subset
  if not k:
    return spec, train_source, eval_source
  if k > spec.num_classes:
    raise ValueError(f"--num_classes_subset={k} exceeds the {spec.num_classes} classes of --dataset={cfg.dataset}")
  data_dir = cfg.data_dir or data_lib.default_data_dir()
  train_source = recipes.ClassSubsetSource(train_source, recipes.read_labels(cfg.dataset, "train", data_dir), k)
  eval_source = recipes.ClassSubsetSource(eval_source, recipes.read_labels(cfg.dataset, spec.eval_split, data_dir), k)
  spec = dataclasses.replace(spec, num_classes=k, num_train=len(train_source), num_test=len(eval_source))
  return spec, train_source, eval_source


def loop_config(cfg: ClassifyConfig, **overrides) -> loop_lib.LoopConfig:
  """The loop settings of ``cfg`` (``overrides`` replace fields, e.g. ``checkpoint_every=0``)."""
  fields = dict(num_steps=cfg.num_steps, seed=cfg.seed, eval_every=cfg.eval_every,
                checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                log_every=cfg.log_every, progress_bar=cfg.progress_bar, description=f"{cfg.model} on {cfg.dataset}",
                init_checkpoint=cfg.init_checkpoint, prefetch=cfg.prefetch)
  return loop_lib.LoopConfig(**{**fields, **overrides})


def train_and_evaluate(cfg: ClassifyConfig, workdir: str) -> dict[str, Any]:
  """Trains ``cfg.model`` on ``cfg.dataset`` for ``cfg.num_steps`` steps; resumes from ``workdir``."""
  t_start = time.time()
  validate(cfg)
  spec, train_source, eval_source = prepare_data(cfg)
  mesh = task_lib.make_mesh(mesh_devices(cfg))
  task = make_task(cfg, spec)
  eval_bs = cfg.eval_batch_size or cfg.batch_size

  def eval_data():
    return data_lib.eval_batches(eval_source, global_batch_size=eval_bs, mean=spec.mean, std=spec.std,
                                 image_shape=spec.image_shape)

  _, results = loop_lib.train(
      task, train_data(cfg, spec, train_source), config=loop_config(cfg), mesh=mesh, workdir=workdir,
      eval_data=eval_data, run_config=dataclasses.asdict(cfg),
      results_extra={"model": cfg.model, "dataset": cfg.dataset,
                     "effective_learning_rate": effective_learning_rate(cfg), "num_classes": spec.num_classes})
  results["eval_count"] = int(results["eval_count"])
  results["wall_seconds"] = time.time() - t_start
  if jax.process_index() == 0:
    ckpt_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
