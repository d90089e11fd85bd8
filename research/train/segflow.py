"""SegFlow training (Cheng et al., ICCV 2017, §3.3-§4) on the ONE loop: frame pairs of ``shapes_video``.

Batches (:class:`PairSampler` for training, :func:`eval_batches` for evaluation), one row per frame pair
``(t, t + 1)`` of a clip:

* ``frames`` uint8 [B, 2, H, W, 3]: frames ``t`` and ``t + 1``;
* ``mask`` int32 [B, H, W]: the foreground of frame ``t`` -- ``foreground='actor'`` (default): the video object is
  the actor (``instance == 1``: the shape performing the action, in front of everything; distractors are
  background, as in DAVIS where only the annotated object is foreground), ``'objects'``: every shape
  (``instance != 0``);
* ``flow`` float32 [B, H, W, 2]: the exact forward flow ``t -> t + 1`` in pixels (``shapes_video`` ``flow``);
* eval batches add ``valid`` float32 [B] (padded rows are 0).

:class:`SegFlowTask` trains a :class:`research.models.segmentation.segflow.SegFlowNet` (any registered
``segflow*`` model) with

* segmentation: per-pixel softmax cross-entropy of the foreground mask of frame ``t``;
* flow: FlowNet's multi-scale end-point error, ``sum_l flow_level_weights[l] * mean EPE(flow_l, pool_{2^l}(flow))``
  (level ``l`` has stride ``2^l``; coarse targets are block means of the full-resolution flow, in pixels; default
  weights ``0.5^l``: FlowNet also weights coarser scales less). ``flow_epsilon > 0`` replaces the per-pixel norm by
  the Charbonnier form ``sqrt(err^2 + eps^2) - eps`` (quadratic below ``eps``). Why: here ~93% of the pixels are
  static background with flow exactly 0, and under the plain EPE (an L1 norm) predicting 0 everywhere is a strong
  attractor (its gradient at every static pixel is a unit vector pulling to 0); measured on one 8-pair batch the
  plain EPE left the prediction on the actor at ~0 for 150 steps while ``eps = 0.2`` fitted it from step ~40.
  Evaluation always reports the plain EPE;
* ``schedule='joint'`` (the DEFAULT): one Adam step per batch on ``seg_weight * CE + flow_weight * EPE`` for all
  parameters -- through the exchanged features each loss also trains the other branch;
* ``schedule='iterative'`` (the paper's §3.3 offline training): blocks of ``iterative_period`` steps alternate
  between the segmentation branch (CE only, flow branch frozen) and the flow branch (EPE only, segmentation branch
  frozen); each branch has its own Adam state, stepped only in its own blocks. The paper alternates whole training
  stages (ResNet / FlowNetS initialisations, different datasets per branch); on one small dataset from scratch a
  fixed period is the cheap equivalent.

Eval metrics (full resolution, on the validation pairs): ``fg_iou`` (IoU of the foreground class), ``miou`` (mean
over background / foreground), ``pixel_accuracy`` (from a summed confusion matrix,
``research.train.dense_metrics``), ``epe`` (average end-point error over all pixels), ``epe_fg`` (over foreground
pixels of frame ``t``) and ``zero_flow_epe`` (the EPE of predicting no motion: a reference).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.memory import padded_eval_rows
from research.models import registry
from research.models.segmentation import segflow as segflow_model
from research.train import dense_metrics
from research.train import task as task_lib

MEAN, STD = 0.5, 0.25  # frames: uint8 -> (x / 255 - MEAN) / STD
FOREGROUNDS = ("actor", "objects")
SCHEDULES = ("joint", "iterative")
CLASS_NAMES = ("background", "foreground")


def normalize_pair(frames: jnp.ndarray) -> jnp.ndarray:
  """uint8 [B, 2, H, W, 3] -> float32 [B, H, W, 6]: standardised frames ``t`` (channels 0-2) and ``t + 1``."""
  if frames.ndim != 5 or frames.shape[1] != 2 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 [B, 2, H, W, 3] (frames t and t + 1), got shape {frames.shape}")
  x = (frames.astype(jnp.float32) / 255.0 - MEAN) / STD
  return jnp.concatenate([x[:, 0], x[:, 1]], axis=-1)


def foreground_mask(instance: np.ndarray, foreground: str) -> np.ndarray:
  """int32 0/1 mask of an instance map (0 background, 1 the actor, k + 1 distractor k); see the module doc."""
  if foreground == "actor":
    return (instance == 1).astype(np.int32)
  if foreground == "objects":
    return (instance != 0).astype(np.int32)
  raise ValueError(f"--foreground={foreground!r}; choose one of {FOREGROUNDS}")


# ------------------------------------------------------------------------------------------------ data


def pair_index(num_clips: int, num_frames: int, *, stride: int = 1) -> dict[str, np.ndarray]:
  """Every pair ``(clip, t)`` with ``t = 0, stride, ... <= T - 2`` (frame ``t + 1`` must exist): int32 ``clip``
  [N] and ``t`` [N], clip-major."""
  if num_frames < 2:
    raise ValueError(f"clips need >= 2 frames to form a pair, got T = {num_frames}")
  if stride < 1:
    raise ValueError(f"--eval_pair_stride must be >= 1, got {stride}")
  ts = np.arange(0, num_frames - 1, stride, dtype=np.int32)
  return {"clip": np.repeat(np.arange(num_clips, dtype=np.int32), len(ts)), "t": np.tile(ts, num_clips)}


def gather_pairs(clips: Mapping[str, np.ndarray], clip: np.ndarray, t: np.ndarray, foreground: str
                 ) -> dict[str, np.ndarray]:
  """Rows of ``clips`` (``frames`` [N, T, H, W, 3], ``instance`` [N, T, H, W], ``flow`` [N, T, H, W, 2]) at pairs
  (``clip`` [B], ``t`` [B]) -> the batch of the module docstring (without ``valid``)."""
  frames = np.stack([clips["frames"][clip, t], clips["frames"][clip, t + 1]], axis=1)
  return {"frames": frames, "mask": foreground_mask(clips["instance"][clip, t], foreground),
          "flow": clips["flow"][clip, t].astype(np.float32)}


class PairSampler:
  """``ArrayBatches`` transform: rows of :func:`pair_index` (``clip``, ``t``) -> pair batches (module doc)."""

  def __init__(self, clips: Mapping[str, np.ndarray], foreground: str = "actor"):
    missing = {"frames", "instance", "flow"} - set(clips)
    if missing:
      raise ValueError(f"PairSampler needs clip arrays frames, instance and flow; missing {sorted(missing)}")
    foreground_mask(np.zeros((1,), np.uint8), foreground)  # validates the choice
    self.clips, self.foreground = clips, foreground

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng  # the pairs are the sampled rows; no augmentation
    return gather_pairs(self.clips, batch["clip"], batch["t"], self.foreground)


def eval_batches(clips: Mapping[str, np.ndarray], *, global_batch_size: int, foreground: str = "actor",
                 pair_stride: int = 1):
  """A callable returning one pass over the pairs of ``clips`` (every ``pair_stride``-th ``t`` of every clip):
  this process's rows of zero-padded global batches with ``valid`` [b]."""
  idx = pair_index(len(clips["frames"]), clips["frames"].shape[1], stride=pair_stride)
  n = len(idx["clip"])
  padded_eval_rows(n, global_batch_size)  # checks the batch size now

  def one_pass():
    for rows, valid in padded_eval_rows(n, global_batch_size):
      batch = gather_pairs(clips, idx["clip"][rows], idx["t"][rows], foreground)
      batch["valid"] = valid
      yield batch

  return one_pass


# ----------------------------------------------------------------------------------------------- losses


def segmentation_loss(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean per-pixel softmax cross-entropy; logits [B, H, W, K], mask int [B, H, W] (one-hot form: no gather)."""
  onehot = jax.nn.one_hot(mask, logits.shape[-1], dtype=jnp.float32)
  return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1))


def charbonnier_epe(flow: jnp.ndarray, target: jnp.ndarray, epsilon: float) -> jnp.ndarray:
  """Mean over pixels of ``sqrt(||flow - target||^2 + epsilon^2) - epsilon`` (flows [..., 2]); ``epsilon = 0`` is
  the mean end-point error (``dense_metrics.endpoint_error_sum``), ``epsilon > 0`` is quadratic for errors below
  ``epsilon`` and the EPE (minus ``epsilon``) above."""
  if epsilon == 0:
    s, n = dense_metrics.endpoint_error_sum(flow, target)
    return s / n
  sq = jnp.sum(jnp.square(flow.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
  return jnp.mean(jnp.sqrt(sq + epsilon ** 2) - epsilon)


def multiscale_epe(pyramid: Sequence[jnp.ndarray], flow: jnp.ndarray, weights: Sequence[float], *,
                   epsilon: float = 0.0) -> jnp.ndarray:
  """FlowNet's multi-scale loss: ``sum_l weights[l] * mean_pixels ||pyramid[l] - pool_{2^l}(flow)||`` (with
  ``epsilon > 0`` the per-pixel norm is :func:`charbonnier_epe`'s).

  pyramid: [B, H / 2^l, W / 2^l, 2] finest first; flow [B, H, W, 2] (pixels); levels past ``weights`` get 0."""
  if len(weights) > len(pyramid):
    raise ValueError(f"--flow_level_weights has {len(weights)} entries but the flow branch predicts "
                     f"{len(pyramid)} levels (one per entry of --widths)")
  total = jnp.zeros((), jnp.float32)
  for level, w in enumerate(weights):
    if w == 0:
      continue
    total = total + w * charbonnier_epe(pyramid[level], segflow_model.avg_pool_flow(flow, 2 ** level), epsilon)
  return total


# ----------------------------------------------------------------------------------------------- the task


@dataclasses.dataclass(eq=False)
class SegFlowTask(task_lib.Task):
  """A ``segflow*`` model trained on pair batches (module docstring). ``num_steps > 0``: cosine decay of the
  learning rate over the run (each branch's share of it under ``schedule='iterative'``); 0: constant."""
  model_name: str = "segflow"
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  schedule: str = "joint"
  iterative_period: int = 50
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  num_steps: int = 0
  seg_weight: float = 1.0
  flow_weight: float = 1.0
  flow_level_weights: Sequence[float] = ()  # empty: 0.5 ** l for every level l (finest 1.0)
  flow_epsilon: float = 0.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"--schedule={self.schedule!r}; choose one of {SCHEDULES}")
    if self.iterative_period <= 0:
      raise ValueError(f"--iterative_period must be positive, got {self.iterative_period}")
    for name in ("learning_rate",):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("weight_decay", "num_steps", "seg_weight", "flow_weight", "flow_epsilon"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.flow_level_weights and (min(self.flow_level_weights) < 0 or max(self.flow_level_weights) == 0):
      raise ValueError(f"--flow_level_weights={list(self.flow_level_weights)} must be >= 0 with one positive entry")
    self.net = registry.create(self.model_name, **dict(self.model_kwargs))
    if not isinstance(self.net, segflow_model.SegFlowNet):
      raise ValueError(f"--model={self.model_name!r} is not a SegFlow network (use segflow, segflow_seg_only or "
                       f"segflow_flow_only)")
    self.branches = tuple(b for b in segflow_model.BRANCHES if b in self.net.branches)
    if len(self.flow_level_weights) > len(self.net.widths):
      raise ValueError(f"--flow_level_weights has {len(self.flow_level_weights)} entries for "
                       f"{len(self.net.widths)} levels (--widths); give at most one weight per level")
    self.level_weights = tuple(self.flow_level_weights) or tuple(0.5 ** l for l in range(len(self.net.widths)))
    if self.schedule == "iterative" and len(self.branches) != 2:
      raise ValueError(f"--schedule=iterative alternates the two branches, but {self.model_name!r} has only "
                       f"{self.branches}; use --schedule=joint")

  # ------------------------------------------------------------------------------------- model plumbing
  def apply(self, params: Mapping[str, Any], frames: jnp.ndarray) -> dict[str, Any]:
    """The network's outputs (``SegFlowNet`` doc) for ``params`` grouped by branch and uint8 pairs."""
    return self.net.apply({"params": segflow_model.merge_params(params)}, normalize_pair(frames))

  def init(self, rng, batch):
    shape = tuple(batch["frames"].shape)
    if len(shape) != 5 or shape[1] != 2 or shape[-1] != 3:
      raise ValueError(f"batch['frames'] must be uint8 [B, 2, H, W, 3], got shape {shape}")
    x = jnp.zeros((1,) + shape[2:4] + (6,), jnp.float32)
    return segflow_model.split_params(self.net.init(rng, x)["params"]), {}

  def _adam(self, steps: int) -> optax.GradientTransformation:
    lr = optax.cosine_decay_schedule(self.learning_rate, max(steps, 1)) if self.num_steps else self.learning_rate
    return optax.adamw(lr, weight_decay=self.weight_decay)

  def optimizer(self):
    steps = self.num_steps if self.schedule == "joint" else -(-self.num_steps // 2)
    return {b: self._adam(steps) for b in self.branches}

  # ---------------------------------------------------------------------------------------------- losses
  def losses(self, params, batch) -> tuple[dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """``(terms, metrics)``: ``terms['segmentation']`` (CE) and/or ``terms['flow']`` (multi-scale EPE)."""
    out = self.apply(params, batch["frames"])
    terms, metrics = {}, {}
    if "seg_logits" in out:
      terms["segmentation"] = segmentation_loss(out["seg_logits"], batch["mask"])
      metrics["seg_ce"] = terms["segmentation"]
      pred = jnp.argmax(out["seg_logits"], -1)
      inter = jnp.sum((pred == 1) & (batch["mask"] == 1))
      union = jnp.sum((pred == 1) | (batch["mask"] == 1))
      metrics["train_fg_iou"] = inter / jnp.maximum(union, 1)
    if "flow" in out:
      terms["flow"] = multiscale_epe(out["flow_pyramid"], batch["flow"], self.level_weights,
                                     epsilon=self.flow_epsilon)
      s, n = dense_metrics.endpoint_error_sum(out["flow"], batch["flow"])
      metrics["flow_loss"], metrics["train_epe"] = terms["flow"], s / n
    return terms, metrics

  def objective(self, terms: Mapping[str, jnp.ndarray], branches: Sequence[str]) -> jnp.ndarray:
    """The weighted sum of the loss terms of ``branches``."""
    weight = {"segmentation": self.seg_weight, "flow": self.flow_weight}
    return sum(weight[b] * terms[b] for b in branches)

  def loss(self, params, model_state, batch, rng, *, train):
    del rng, train
    terms, metrics = self.losses(params, batch)
    return self.objective(terms, self.branches), (model_state, metrics)

  def _step_groups(self, state, batch, rng, axis_name, groups: tuple[str, ...]):
    """One Adam step of the parameter groups ``groups`` on their own loss terms; the other groups stay frozen
    (forward only: their features still feed the exchange)."""
    frozen = {g: v for g, v in state.params.items() if g not in groups}

    def loss_fn(sub, model_state, b, r, *, train):
      del r, train
      terms, metrics = self.losses({**frozen, **sub}, b)
      return self.objective(terms, groups), (model_state, metrics)

    sub = {g: state.params[g] for g in groups}
    (loss, (_, metrics)), grads = task_lib.grad_of(loss_fn, sub, state.model_state, batch, rng, axis_name)
    params, opt_state, updates = task_lib.apply_optimizer(self.optimizer(), grads, state.opt_state, state.params)
    metrics = {"loss": loss, **task_lib.mean_over(metrics, axis_name), **task_lib.norms(grads, sub, updates)}
    return params, opt_state, metrics

  def update(self, state, batch, rng, *, axis_name):
    if self.schedule == "joint":
      params, opt_state, metrics = self._step_groups(state, batch, rng, axis_name, self.branches)
    else:
      phase = (state.step // self.iterative_period) % 2  # 0: segmentation branch, 1: flow branch
      params, opt_state, metrics = jax.lax.cond(
          phase == 0,
          lambda: self._step_groups(state, batch, rng, axis_name, ("segmentation",)),
          lambda: self._step_groups(state, batch, rng, axis_name, ("flow",)))
      metrics["phase"] = phase.astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  # ---------------------------------------------------------------------------------------------- eval
  def eval_step(self, state, batch):
    out = self.apply(state.params, batch["frames"])
    valid = batch["valid"].astype(jnp.float32)[:, None, None]
    fg = batch["mask"].astype(jnp.float32) * valid
    zero, pixels = dense_metrics.endpoint_error_sum(jnp.zeros_like(batch["flow"]), batch["flow"], valid)
    sums = {"pairs": jnp.sum(batch["valid"]), "zero_epe_sum": zero, "pixels": pixels}
    if "seg_logits" in out:
      sums["confusion"] = dense_metrics.confusion_matrix(jnp.argmax(out["seg_logits"], -1), batch["mask"], 2,
                                                         weight=valid)
    if "flow" in out:
      sums["epe_sum"], _ = dense_metrics.endpoint_error_sum(out["flow"], batch["flow"], valid)
      sums["epe_fg_sum"], sums["fg_pixels"] = dense_metrics.endpoint_error_sum(out["flow"], batch["flow"], fg)
    return sums, {}

  def eval_metrics(self, sums, gathered):
    del gathered
    out = {"pairs": float(sums["pairs"]), "zero_flow_epe": dense_metrics.ratio(sums, "zero_epe_sum", "pixels")}
    if "confusion" in sums:
      scores = dense_metrics.segmentation_scores(np.asarray(sums["confusion"]), CLASS_NAMES)
      out.update(fg_iou=scores["iou/foreground"], bg_iou=scores["iou/background"], miou=scores["miou"],
                 pixel_accuracy=scores["pixel_accuracy"])
    if "epe_sum" in sums:
      out["epe"] = dense_metrics.ratio(sums, "epe_sum", "pixels")
      out["epe_fg"] = dense_metrics.ratio(sums, "epe_fg_sum", "fg_pixels")
    return out

  def run_info(self):
    return {"task": "segflow", "model": self.model_name, "branches": list(self.branches),
            "exchange": bool(self.net.exchange and len(self.branches) == 2), "schedule": self.schedule}
