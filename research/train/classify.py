"""Supervised image classification: ``train_and_evaluate(config, workdir)`` (used by experiments.classify).

Data-parallel over every device of every process, resumable from ``workdir/checkpoints`` with the data
iterator state, metrics to ``workdir/metrics.jsonl`` + ``workdir/tb``, final ``workdir/results.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import models
from research.train import checkpoint as ckpt_lib
from research.train import metrics as metrics_lib
from research.train import optim, recipes, steps

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass
class ClassifyConfig:
  """All knobs of a classification run (one absl flag each in experiments/classify.py)."""
  model: str = "wrn16_4"
  model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  dataset: str = "shapes"
  data_dir: str | None = None
  num_steps: int = 1000
  batch_size: int = 128
  learning_rate: float = 0.1
  optimizer: str = "nesterov"
  momentum: float = 0.9
  schedule: str = "cosine"
  warmup_steps: int = 0
  weight_decay: float = 5e-4
  decay_bn_and_bias: bool = False
  label_smoothing: float = 0.0
  loss: str = "cross_entropy"
  grad_clip_norm: float = 0.0
  seed: int = 0
  eval_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  log_every: int = 10
  sync_bn: bool = False
  dtype: str = "float32"
  augment: str = "auto"
  data_workers: int = 0
  init_checkpoint: str | None = None
  eval_batch_size: int = 0  # 0: same as batch_size
  progress_bar: bool = True
  # Recipes (issue 5; research/train/recipes.py).
  lr_scaling: str = "none"  # "linear": learning_rate * batch_size / base_batch_size (Goyal et al. 2017)
  base_batch_size: int = 256
  warmup_init: float = 0.0  # warmup starts at warmup_init * peak LR (Goyal et al.: 1/k, the small-batch LR)
  zero_init_residual: bool = False  # γ = 0 in each residual block's last BN (Goyal et al. 2017)
  freeze_bn_last_steps: int = 0  # BN uses and keeps its running statistics for the last N steps (SENet)
  temperature: float = 1.0  # softmax(logits / T) in the softmax losses
  center_loss_weight: float = 0.003  # λ of --loss=softmax_center (Wen et al. 2016, Eq. 5)
  center_loss_alpha: float = 0.5  # α, the centre learning rate (Wen et al. 2016, Eq. 4)
  num_classes_subset: int = 0  # >0: train and evaluate on the classes with label < N only
  step_boundaries: tuple[float, ...] = (0.5, 0.75)  # --schedule=step: fractions of num_steps where LR *= 0.1
  onecycle_pct_start: float = 0.3  # --schedule=onecycle: fraction of steps spent increasing the LR
  num_devices: int = 0  # >0: data parallelism over the first N devices only (single process); 0 = every device


def params_sha256(params) -> str:
  """sha256 of all parameter leaves' bytes in tree order."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(steps.host_value(leaf)).tobytes())
  return h.hexdigest()


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


def _temperature_ce(logits, labels, *, temperature: float, label_smoothing: float):
  return steps.cross_entropy(logits / temperature, labels, label_smoothing=label_smoothing)


def _loss_fn(cfg: ClassifyConfig):
  """Per-example loss ``fn(logits, labels) -> [B]`` for ``--loss``. For ``softmax_center`` this is the softmax
  part only; the center term needs the features and centres and is added in ``steps.train_step``."""
  from research.train import losses
  if cfg.loss in ("cross_entropy", "softmax_center"):
    if cfg.temperature == 1.0:
      return functools.partial(steps.cross_entropy, label_smoothing=cfg.label_smoothing)
    return functools.partial(_temperature_ce, temperature=cfg.temperature, label_smoothing=cfg.label_smoothing)
  if cfg.loss not in losses.loss_names():
    raise ValueError(f"--loss={cfg.loss!r}; choose one of {losses.loss_names()}")
  if cfg.loss == "label_smoothing":
    if cfg.temperature != 1.0:
      raise ValueError("--temperature applies to --loss=cross_entropy/softmax_center/temperature_cross_entropy")
    return losses.get_loss(cfg.loss, smoothing=cfg.label_smoothing or 0.1)
  if cfg.label_smoothing:
    raise ValueError(f"--label_smoothing applies to the softmax cross-entropy losses, not --loss={cfg.loss}")
  if cfg.loss == "temperature_cross_entropy":
    return losses.get_loss(cfg.loss, temperature=cfg.temperature)
  if cfg.temperature != 1.0:
    raise ValueError(f"--temperature applies to the softmax losses, not --loss={cfg.loss}")
  return losses.get_loss(cfg.loss)


def _evaluate(eval_fn, state, source, spec, batch_size, mesh) -> dict[str, float]:
  totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
  for batch in data_lib.eval_batches(source, global_batch_size=batch_size, mean=spec.mean, std=spec.std,
                                     image_shape=spec.image_shape):
    out = eval_fn(state, steps.global_batch(batch, mesh))
    for k, v in jax.device_get(out).items():
      totals[k] += float(v)
  n = max(totals["count"], 1.0)
  return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "count": totals["count"]}


def _last_logged(workdir: str, key: str) -> float | None:
  value = None
  for row in metrics_lib.read_metrics(workdir):
    value = row.get(key, value)
  return value


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
                       bn_axis_name=steps.DATA_AXIS if cfg.sync_bn else None, **model_kwargs)


def build(cfg: ClassifyConfig, spec: data_lib.DatasetSpec, mesh, schedule=None):
  """(model, schedule, optimizer, abstract state, initial state) for ``cfg``; ``schedule`` overrides the
  configured one (the LR range test's exponential ramp)."""
  model = make_model(cfg, spec)
  if schedule is None:
    schedule = optim.make_schedule(cfg.schedule, effective_learning_rate(cfg), cfg.num_steps,
                                   warmup_steps=cfg.warmup_steps, warmup_init=cfg.warmup_init,
                                   step_boundaries=cfg.step_boundaries, onecycle_pct_start=cfg.onecycle_pct_start)
  tx = optim.make_optimizer(cfg.optimizer, schedule, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                            decay_bn_and_bias=cfg.decay_bn_and_bias, grad_clip_norm=cfg.grad_clip_norm or None)
  abstract, state = steps.init_state(model, tx, cfg.seed, (1,) + spec.image_shape, mesh)
  if center_loss_of(cfg) is not None:  # class centres c_j [C, D], D = the classifier's input width
    dim = recipes.feature_dim(model, {"params": abstract.params, "batch_stats": abstract.batch_stats},
                              (1,) + spec.image_shape)
    centers = jax.device_put(recipes.init_centers(spec.num_classes, dim), steps.replicated(mesh))
    state = state.replace(extra={"centers": centers})
    abstract = abstract.replace(extra={"centers": jax.ShapeDtypeStruct(
        centers.shape, centers.dtype, sharding=steps.replicated(mesh))})
  return model, schedule, tx, abstract, state


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


def train_and_evaluate(cfg: ClassifyConfig, workdir: str) -> dict[str, Any]:
  """Trains ``cfg.model`` on ``cfg.dataset`` for ``cfg.num_steps`` steps; resumes from ``workdir``."""
  t_start = time.time()
  validate(cfg)
  spec, train_source, eval_source = prepare_data(cfg)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
  mesh = steps.make_mesh(mesh_devices(cfg))
  model, schedule, tx, abstract, state = build(cfg, spec, mesh)
  loss_fn = _loss_fn(cfg)

  augment = spec.default_augment if cfg.augment == "auto" else cfg.augment
  loader = data_lib.train_loader(train_source, global_batch_size=cfg.batch_size, seed=cfg.seed, augment=augment,
                                 mean=spec.mean, std=spec.std, worker_count=cfg.data_workers)
  data_iter = iter(loader)

  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
  start_step = 0
  restored = checkpointer.restore_latest(abstract, data_iter)
  if restored is not None:
    state, start_step = restored
    log.info("resumed from step %d in %s", start_step, workdir)
  elif cfg.init_checkpoint:
    loaded = ckpt_lib.load_params(cfg.init_checkpoint, {"params": abstract.params,
                                                        "batch_stats": abstract.batch_stats})
    state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"])
    log.info("initialised params from %s", cfg.init_checkpoint)
  if is_main:
    ckpt_lib.write_json_atomic(os.path.join(workdir, "config.json"), dataclasses.asdict(cfg))

  step_fn = functools.partial(steps.train_step, model=model, tx=tx, loss_fn=loss_fn, schedule=schedule,
                              center_loss=center_loss_of(cfg))
  train_fn = steps.parallelize(step_fn, mesh)
  # SENet: BN statistics frozen for the last --freeze_bn_last_steps steps (a second program, compiled on first use).
  frozen_fn = steps.parallelize(functools.partial(step_fn, freeze_bn=True), mesh) if cfg.freeze_bn_last_steps else None
  freeze_from = cfg.num_steps - cfg.freeze_bn_last_steps
  eval_fn = steps.parallelize(functools.partial(steps.eval_step, model=model, loss_fn=loss_fn), mesh,
                              donate_state=False, state_out=False)
  eval_bs = cfg.eval_batch_size or cfg.batch_size
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
  bar = metrics_lib.progress(cfg.num_steps, start_step, desc=f"{cfg.model} on {cfg.dataset}",
                             disable=None if cfg.progress_bar else True)
  last_train: dict[str, float] = {}
  eval_metrics: dict[str, float] | None = None
  t_loop, steps_run = time.time(), 0
  try:
    for step in range(start_step, cfg.num_steps):
      batch = steps.global_batch(next(data_iter), mesh)
      state, m = (frozen_fn if frozen_fn is not None and step >= freeze_from else train_fn)(state, batch)
      s, steps_run = step + 1, steps_run + 1
      bar.update(1)
      is_ckpt = s % cfg.checkpoint_every == 0 or s == cfg.num_steps
      if s % cfg.log_every == 0 or is_ckpt:
        last_train = metrics_lib.to_floats(m)
        if not all(math.isfinite(v) for v in last_train.values()):
          raise FloatingPointError(
              f"non-finite training metrics at step {s}: {last_train}. Stopping before checkpointing; "
              f"lower --learning_rate, add --warmup_steps or --grad_clip_norm. The last good checkpoint "
              f"is kept in {checkpointer.directory}.")
        last_train["steps_per_second"] = steps_run / max(time.time() - t_loop, 1e-9)
        writer.write(s, last_train, "train/")
        bar.set_postfix(loss=f"{last_train['loss']:.3f}", acc=f"{last_train['accuracy']:.3f}")
      if s % cfg.eval_every == 0 or s == cfg.num_steps:
        eval_metrics = _evaluate(eval_fn, state, eval_source, spec, eval_bs, mesh)
        writer.write(s, eval_metrics, "eval/")
        if is_main:
          bar.write(f"step {s}: eval accuracy {eval_metrics['accuracy']:.4f} loss {eval_metrics['loss']:.4f}")
      if is_ckpt:
        checkpointer.save(s, state, data_iter)
  finally:
    bar.close()
    checkpointer.close()
    writer.close()

  if eval_metrics is None:  # resumed a finished run: evaluate the restored state
    eval_metrics = _evaluate(eval_fn, state, eval_source, spec, eval_bs, mesh)
  final_loss = last_train.get("loss", _last_logged(workdir, "train/loss"))
  results = {
      "model": cfg.model, "dataset": cfg.dataset, "step": int(steps.host_value(state.step)),
      "eval_accuracy": eval_metrics["accuracy"], "eval_loss": eval_metrics["loss"],
      "eval_count": int(eval_metrics["count"]), "final_train_loss": final_loss,
      "num_params": steps.num_params(state.params), "params_sha256": params_sha256(state.params),
      "wall_seconds": time.time() - t_start, "resumed_from_step": start_step,
      "steps_run": steps_run, "train_seconds": time.time() - t_loop,
      "num_devices": mesh.devices.size, "num_processes": jax.process_count(),
      "platform": jax.devices()[0].platform,
      "effective_learning_rate": effective_learning_rate(cfg), "num_classes": spec.num_classes,
  }
  if is_main:
    ckpt_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
