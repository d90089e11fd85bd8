"""The probe network (Task2Vec §3, "probe network"): a fixed backbone, trained once on a source task.

* ``make_probe(name, num_classes)``: ``cifar_resnet{18,34}_w{w}`` (CIFAR pre-activation ResNet-18/34 with stage
  widths w, 2w, 4w, 8w; built here, no registration needed) or any registry name (``research.models.create``).
* ``Probe``: module + variables + ``start_stage``. ``cache_inputs`` runs the frozen trunk (stem .. stage
  ``start_stage-1``) once per image with BatchNorm in inference mode (the reference's train-mode caching is its
  issue 23); ``tail_params`` / ``apply_tail`` run the rest with the same parameter names (``skip_layers``).
* ``train_probe``: data-parallel, resumable training of the probe on a source labelling of in-memory images.
* ``load_probe``: backbone weights from an orbax checkpoint written by ``experiments.classify`` (head ignored).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import models
from research.data import normalize, random_crop_flip
from research.models.cifar_resnet import PreActResNet
from research.train import checkpoint as ckpt_lib
from research.train import metrics as metrics_lib
from research import fileio
from research.data.memory import ArrayBatches
from research.train import loop as loop_lib
from research.train import losses, optim, steps
from research.train.classify import ClassificationTask

_CIFAR_RESNET = re.compile(r"cifar_resnet(18|34)_w(\d+)")
_STAGES = {"18": (2, 2, 2, 2), "34": (3, 4, 6, 3)}


def make_probe(name: str, num_classes: int) -> nn.Module:
  """The probe backbone ``name`` with a ``num_classes`` head (the head is replaced per task anyway)."""
  m = _CIFAR_RESNET.fullmatch(name)
  if m:
    w = int(m.group(2))
    if w < 1:
      raise ValueError(f"probe width must be positive in {name!r}")
    return PreActResNet(stage_sizes=_STAGES[m.group(1)], stage_widths=(w, 2 * w, 4 * w, 8 * w), stem_width=w,
                        num_classes=num_classes)
  try:
    return models.create(name, num_classes=num_classes)
  except ValueError as e:
    raise ValueError(f"unknown probe {name!r}: use cifar_resnet18_w{{w}} / cifar_resnet34_w{{w}} or a registered "
                     f"model. {e}") from None


def num_stages(module: nn.Module) -> int:
  sizes = getattr(module, "stage_sizes", None)
  if sizes is None:
    raise ValueError(f"probe {type(module).__name__} has no 'stage_sizes'; Task2Vec needs a staged backbone with "
                     f"the features_only/start_stage API")
  return len(sizes)


@dataclasses.dataclass
class Probe:
  """A frozen probe: ``variables = {'params', 'batch_stats'}`` of ``module``; Fisher on stages >= start_stage."""
  module: nn.Module
  variables: Any
  start_stage: int
  name: str = ""

  def __post_init__(self):
    s = num_stages(self.module)
    if not 1 <= self.start_stage <= s:
      raise ValueError(f"start_stage={self.start_stage} must be in [1, {s}] for probe {self.name!r}")

  @property
  def trunk(self) -> nn.Module:
    return self.module.clone(features_only=True, start_stage=0)

  @property
  def tail(self) -> nn.Module:
    return self.module.clone(features_only=True, start_stage=self.start_stage)

  def tail_variables(self, variables: Any | None = None) -> dict[str, Any]:
    """The subset of ``variables`` the tail uses (same names as in the full network)."""
    variables = self.variables if variables is None else variables
    if getattr(self, "_names", None) is None:
      self._names = _tail_names(self.module, self.start_stage, self.input_shape)
    names = self._names
    return {col: {k: v for k, v in variables.get(col, {}).items() if k in names.get(col, ())}
            for col in ("params", "batch_stats")}

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return (32, 32, 3)


def _tail_names(module: nn.Module, start_stage: int, image_shape: tuple[int, int, int]) -> dict[str, frozenset]:
  cache_shape = trunk_output_shape(module, start_stage, image_shape)
  tail = module.clone(features_only=True, start_stage=start_stage)
  shapes = jax.eval_shape(lambda: tail.init(jax.random.PRNGKey(0), jnp.zeros((1,) + cache_shape), train=False))
  return {col: frozenset(shapes.get(col, {}).keys()) for col in ("params", "batch_stats")}


def trunk_output_shape(module: nn.Module, start_stage: int, image_shape=(32, 32, 3)) -> tuple[int, ...]:
  """Shape ``(H, W, C)`` of the activation entering stage ``start_stage`` (what ``cache_inputs`` stores)."""
  trunk = module.clone(features_only=True, start_stage=0)
  x = jnp.zeros((1,) + tuple(image_shape))
  out = jax.eval_shape(lambda: trunk.init_with_output(jax.random.PRNGKey(0), x, train=False)[0])
  key = "stem" if start_stage == 1 else f"stage{start_stage - 1}"
  return tuple(out[key].shape[1:])


def init_variables(module: nn.Module, seed: int, image_shape=(32, 32, 3)) -> dict[str, Any]:
  v = jax.jit(lambda k: module.init(k, jnp.zeros((1,) + tuple(image_shape)), train=False))(jax.random.PRNGKey(seed))
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def _trunk_fn(module: nn.Module, start_stage: int):
  key = "stem" if start_stage == 1 else f"stage{start_stage - 1}"
  trunk = module.clone(features_only=True, start_stage=0)

  @jax.jit
  def fn(variables, x):
    feats = trunk.apply(variables, x, train=False)  # BatchNorm in inference mode (reference issue 23)
    return feats[key], feats["pooled"]
  return fn


def cache_inputs(probe: Probe, images: np.ndarray, mean, std, *, batch_size: int = 250,
                 desc: str = "cache probe features") -> tuple[np.ndarray, np.ndarray]:
  """uint8 images ``[N,H,W,3]`` -> (stage inputs ``[N,h,w,c]`` float32, probe pooled features ``[N,D]``).

  Every image is passed once through the frozen trunk in inference mode; the last batch is padded to the
  batch size so the function is traced once."""
  if getattr(probe, "_trunk_jit", None) is None:  # one jitted trunk per probe: traced once per batch size
    probe._trunk_jit = _trunk_fn(probe.module, probe.start_stage)
  fn = probe._trunk_jit
  n = len(images)
  outs, pooled = [], []
  bar = metrics_lib.progress(n, desc=desc)
  for s in range(0, n, batch_size):
    chunk = images[s:s + batch_size]
    pad = batch_size - len(chunk)
    x = normalize(np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]) if pad else chunk,
                  mean, std)
    o, p = jax.device_get(fn(probe.variables, x))
    outs.append(o[:len(chunk)])
    pooled.append(p[:len(chunk)])
    bar.update(len(chunk))
  bar.close()
  return np.concatenate(outs), np.concatenate(pooled)


def make_tail_apply(probe_module: nn.Module, start_stage: int):
  """``fn(tail_vars, x [B,h,w,c]) -> pooled [B,D]``: the tail of the probe, BatchNorm in inference mode."""
  tail = probe_module.clone(features_only=True, start_stage=start_stage)

  def fn(tail_vars, x):
    return tail.apply(tail_vars, x, train=False)["pooled"]
  return fn


# ---------------------------------------------------------------------------------------------- probe training


@dataclasses.dataclass(frozen=True)
class ProbeTrainConfig:
  """Training of the probe on the source task (SGD + Nesterov, cosine schedule, random-crop augmentation)."""
  probe: str = "cifar_resnet18_w16"
  label: str = "coarse"
  num_steps: int = 300
  batch_size: int = 64
  learning_rate: float = 0.1
  weight_decay: float = 5e-4
  warmup_steps: int = 20
  augment: str = "crop"
  seed: int = 0


def train_probe(cfg: ProbeTrainConfig, images: np.ndarray, labels: np.ndarray, num_classes: int, mean, std,
                workdir: str, *, progress: bool = True) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
  """Trains (or resumes / reuses) the probe in ``workdir`` on the training loop; returns (module, variables, info).

  The batch at step s depends only on (seed, s) (``ArrayBatches``), so a resumed run sees the same batches. A
  finished checkpoint with the same config is reused without training."""
  os.makedirs(workdir, exist_ok=True)
  meta_path = os.path.join(workdir, "probe.json")
  cfg_dict = dataclasses.asdict(cfg) | {"num_classes": int(num_classes), "num_images": int(len(images))}
  old: dict[str, Any] = {}
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    if old.get("config") != cfg_dict:
      raise ValueError(f"{workdir} holds a probe trained with different settings ({old.get('config')}); "
                       f"use another --workdir or the same probe flags")
  if cfg.batch_size % jax.device_count():
    raise ValueError(f"probe batch size {cfg.batch_size} is not divisible by the device count {jax.device_count()}")
  if len(images) < cfg.batch_size:
    raise ValueError(f"the source task has {len(images)} images, fewer than one probe batch ({cfg.batch_size})")
  module = make_probe(cfg.probe, num_classes)
  schedule = optim.make_schedule("cosine", cfg.learning_rate, cfg.num_steps,
                                 warmup_steps=min(cfg.warmup_steps, cfg.num_steps // 5))
  tx = optim.make_optimizer("nesterov", schedule, weight_decay=cfg.weight_decay)
  task = ClassificationTask(model=module, tx=tx, loss_fn=losses.cross_entropy, image_shape=tuple(images.shape[1:]),
                            num_classes=num_classes, schedule=schedule)

  def augment(batch, rng):
    x = batch["image"]
    if cfg.augment != "none":
      x = np.stack([random_crop_flip(im, rng, flip=cfg.augment == "crop_flip") for im in x])
    return {"image": normalize(x, mean, std), "label": batch["label"].astype(np.int32)}

  data = ArrayBatches({"image": images, "label": labels}, global_batch_size=cfg.batch_size, seed=cfg.seed,
                      transform=augment)
  loop_cfg = loop_lib.LoopConfig(num_steps=cfg.num_steps, seed=cfg.seed, log_every=25, checkpoint_every=100,
                                 keep_checkpoints=1, progress_bar=progress,
                                 description=f"train probe {cfg.probe} ({cfg.label} labels)")
  try:
    state, res = loop_lib.train(task, data, config=loop_cfg, mesh=steps.make_mesh(), workdir=workdir,
                                run_config=cfg_dict)
  except RuntimeError as e:  # every checkpoint unreadable (e.g. written by an older TrainState layout)
    raise ValueError(f"the probe checkpoint in {workdir} cannot be restored ({e}); delete {workdir} or use "
                     f"another --workdir to retrain the probe") from None
  trained = res["steps_run"] > 0
  final = {"final_train_loss": res["final_train_loss"] if trained else old.get("final_train_loss"),
           "final_train_accuracy": (_last_logged_accuracy(workdir) if trained else old.get("final_train_accuracy"))}
  if fileio.main_process():
    fileio.write_json_atomic(meta_path, {"config": cfg_dict, "finished": True, **final})
  variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
  return module, variables, {"resumed_from_step": res["resumed_from_step"], "trained_steps": res["steps_run"],
                             **final}


def _last_logged_accuracy(workdir: str) -> float | None:
  value = None
  for row in metrics_lib.read_metrics(workdir):
    value = row.get("train/accuracy", value)
  return value


def load_probe(name: str, path: str, num_classes: int = 1) -> tuple[nn.Module, dict[str, Any]]:
  """Backbone variables of probe ``name`` from an orbax checkpoint (``experiments.classify`` layout).

  The checkpoint's classifier head is dropped (Task2Vec fits a new head per task); every backbone variable must
  be present with the same shape."""
  module = make_probe(name, num_classes)
  ref = jax.eval_shape(lambda: init_variables(module, 0))
  loaded = ckpt_lib.load_params(path)
  out = {}
  for col in ("params", "batch_stats"):
    want = flax.traverse_util.flatten_dict(ref.get(col, {}))
    got = flax.traverse_util.flatten_dict(jax.device_get(loaded.get(col, {})) or {})
    flat = {}
    for k, v in want.items():
      if k[0] == "head":
        flat[k] = np.zeros(v.shape, v.dtype)
        continue
      if k not in got:
        raise ValueError(f"--probe_checkpoint={path!r} has no variable {col}/{'/'.join(k)} of probe {name!r}; "
                         f"was it trained with --model={name}?")
      if tuple(np.shape(got[k])) != tuple(v.shape):
        raise ValueError(f"--probe_checkpoint={path!r}: {col}/{'/'.join(k)} has shape {np.shape(got[k])}, probe "
                         f"{name!r} expects {v.shape}")
      flat[k] = np.asarray(got[k])
    out[col] = flax.traverse_util.unflatten_dict(flat)
  return module, out
