"""Temporal Cycle Consistency training and evaluation (Dwibedi et al. 2019, §3-§5) on the ONE loop.

* :class:`TCCTask`: self-supervised TCC (``variant`` in ``classification | regression | regression_mse``) on
  batches ``{'frames': uint8 [B, T, H, W, 3], 'steps': int32 [B, S], 'mask': f32 [B, S]}`` -- ``S`` frames
  sampled at random (sorted) per sequence by :class:`FrameSampler`; the loss is a global masked mean over every
  ordered pair of sequences on a device (so a device needs >= 2 sequences).
* :class:`SupervisedPhaseTask`: the supervised baseline -- the same network plus a linear head, trained with
  phase-label cross-entropy on the few labelled videos only.
* Evaluation (both tasks, §5.1): eval batches hold ``role`` 0 (train videos: the labelled pool for few-shot
  classification and the fit set of the phase regression) and 1 (validation videos). Metrics:

  - ``fewshot{n}_accuracy``: multinomial logistic regression (L2, in JAX) on frozen per-frame embeddings of ``n``
    labelled train videos, phase accuracy on every validation frame; mean over ``fewshot_repeats`` disjoint draws;
  - ``phase_r2``: ridge regression of the phase (progress through the action, in [0, 1)) from embeddings of the
    train videos, R^2 on validation frames ("phase progression");
  - ``kendall_tau``: mean Kendall's tau of the nearest-neighbour alignment over ordered validation video pairs;
  - ``cycle_accuracy``: fraction of validation frames ``i`` with ``NN(NN(u_i)) == i`` over all ordered pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models.sequence.tcc import TCCNet
from research.ops import tcc as tcc_ops
from research.train import task as task_lib

MEAN, STD = 0.5, 0.25  # frames: uint8 -> (x / 255 - MEAN) / STD


def normalize_frames(frames: jnp.ndarray) -> jnp.ndarray:
  """uint8 [..., H, W, 3] -> float32 standardised pixels."""
  return (frames.astype(jnp.float32) / 255.0 - MEAN) / STD


def preprocess(frames: jnp.ndarray, subtract_background: bool) -> jnp.ndarray:
  """uint8 clips [B, T, H, W, 3] -> float32 network input: standardised pixels, minus each clip's per-pixel
  temporal median when ``subtract_background`` (static-camera background subtraction: only what moves is left).

  A deviation from the paper, which feeds raw frames: on CPU budgets (a few hundred steps) a from-scratch encoder
  on raw ``shapes_video`` frames learns clip identity (background, colours) and no cross-clip alignment (Kendall's
  tau ~0 after 300 steps), while with the median subtracted tau passes 0.6 within 150 steps (measured on
  ``tcc32``/pour at batch 4). Every method of an experiment (TCC variants and the supervised baseline) gets the same
  input, so comparisons stay fair."""
  x = normalize_frames(frames)
  if subtract_background:
    x = x - jnp.median(x, axis=1, keepdims=True)
  return x


# ------------------------------------------------------------------------------------------------ data


class FrameSampler:
  """``ArrayBatches`` transform: ``num_sampled`` sorted distinct random frames per sequence (§3.3 random sampling).

  In: ``{'frames': [B, T, H, W, 3], 'phase_label': [B, T], ...}``; out: ``frames`` unchanged, ``steps`` int32
  [B, S], ``mask`` f32 [B, S] (all real: clips have a fixed length), ``labels`` int32 [B, S] (the phase labels of
  the sampled frames, used by the supervised baseline only).
  """

  def __init__(self, num_frames: int, num_sampled: int):
    if not 2 <= num_sampled <= num_frames:
      raise ValueError(f"--num_sampled_frames={num_sampled} must lie in [2, {num_frames}] (frames per clip)")
    self.num_frames, self.num_sampled = num_frames, num_sampled

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    b = batch["frames"].shape[0]
    keys = rng.random((b, self.num_frames))
    steps = np.sort(np.argsort(keys, axis=1)[:, :self.num_sampled], axis=1).astype(np.int32)
    out = {"frames": batch["frames"], "steps": steps, "mask": np.ones(steps.shape, np.float32)}
    if "phase_label" in batch:
      out["labels"] = np.take_along_axis(batch["phase_label"], steps, axis=1).astype(np.int32)
    return out


def eval_batches(train: Mapping[str, np.ndarray], validation: Mapping[str, np.ndarray], *, global_batch_size: int):
  """A callable returning one pass over ``role`` 0 (``train``) then 1 (``validation``) clips, this process's rows
  of zero-padded global batches: ``frames`` uint8 [b, T, H, W, 3], ``phase`` [b, T], ``phase_label`` [b, T],
  ``role`` [b], ``valid`` [b]."""
  keys = ("frames", "phase", "phase_label")
  arrays = {k: np.concatenate([train[k], validation[k]]) for k in keys}
  arrays["role"] = np.concatenate([np.zeros(len(train["frames"]), np.int32), np.ones(len(validation["frames"]),
                                                                                       np.int32)])
  n = len(arrays["role"])
  if global_batch_size % jax.process_count():
    raise ValueError(f"eval batch {global_batch_size} is not divisible by {jax.process_count()} processes")
  local = global_batch_size // jax.process_count()
  p = jax.process_index()

  def one_pass():
    for start in range(0, n, global_batch_size):
      rows = np.arange(start, start + global_batch_size)
      valid = rows < n
      rows = np.where(valid, rows, 0)[p * local:(p + 1) * local]
      batch = {k: v[rows] for k, v in arrays.items()}
      batch["valid"] = valid[p * local:(p + 1) * local].astype(np.float32)
      yield batch

  return one_pass


# ------------------------------------------------------------------------------------------ eval helpers


def fit_logistic(x: jnp.ndarray, y: jnp.ndarray, num_classes: int, *, l2: float = 1e-3, steps: int = 300,
                 lr: float = 0.05) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Multinomial logistic regression (mean CE + ``l2 * ||W||^2``) by full-batch Adam on standardised features.

  x [N, D], y [N] int -> ``(W [D, C], b [C], mean [D], std [D])``; predict with :func:`predict_logistic`.
  """
  mean, std = jnp.mean(x, 0), jnp.std(x, 0) + 1e-6
  xs = (x - mean) / std
  tx = optax.adam(lr)

  def loss(p):
    logits = xs @ p["w"] + p["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)) + l2 * jnp.sum(p["w"] ** 2)

  def body(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  p0 = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
  return p["w"], p["b"], mean, std


def predict_logistic(params, x: jnp.ndarray) -> jnp.ndarray:
  """Class predictions [N] of :func:`fit_logistic` ``params`` for x [N, D]."""
  w, b, mean, std = params
  return jnp.argmax(((x - mean) / std) @ w + b, axis=-1)


def ridge_r2(x_fit, y_fit, x_test, y_test, *, l2: float = 1e-3) -> float:
  """R^2 on (x_test [N, D], y_test [N]) of a ridge regression (standardised x, bias) fitted on (x_fit, y_fit)."""
  x_fit, x_test = np.asarray(x_fit, np.float64), np.asarray(x_test, np.float64)
  mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
  a = np.concatenate([(x_fit - mean) / std, np.ones((len(x_fit), 1))], 1)
  reg = l2 * len(x_fit) * np.eye(a.shape[1])
  reg[-1, -1] = 0.0
  w = np.linalg.solve(a.T @ a + reg, a.T @ np.asarray(y_fit, np.float64))
  pred = np.concatenate([(x_test - mean) / std, np.ones((len(x_test), 1))], 1) @ w
  y_test = np.asarray(y_test, np.float64)
  return float(1.0 - np.sum((y_test - pred) ** 2) / max(np.sum((y_test - y_test.mean()) ** 2), 1e-12))


@jax.jit
def _pair_metrics(emb: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """emb [V, T, D] -> (tau [V, V], consistent [V, V], count [V, V]) over all ordered pairs."""
  tau = tcc_ops.all_pairs(tcc_ops.alignment_kendall_tau, emb)
  ok, n = tcc_ops.all_pairs(tcc_ops.cycle_consistency, emb)
  return tau, ok, n


def alignment_metrics(emb: np.ndarray) -> dict[str, float]:
  """``kendall_tau`` (mean over ordered pairs of different videos, NaN pairs skipped) and ``cycle_accuracy`` for
  validation embeddings emb [V, T, D] (V >= 2)."""
  if emb.shape[0] < 2:
    raise ValueError(f"alignment metrics need >= 2 validation videos, got {emb.shape[0]}")
  tau, ok, n = (np.asarray(a, np.float64) for a in _pair_metrics(jnp.asarray(emb)))
  off = ~np.eye(emb.shape[0], dtype=bool)
  return {"kendall_tau": float(np.nanmean(tau[off])), "cycle_accuracy": float(ok[off].sum() / n[off].sum())}


def embedding_metrics(emb: np.ndarray, phase: np.ndarray, labels: np.ndarray, role: np.ndarray, *,
                      num_classes: int, fewshot_videos: Sequence[int] = (1,), fewshot_repeats: int = 3
                      ) -> dict[str, float]:
  """The §5.1 metrics of the module docstring from per-frame embeddings emb [V, T, D] (phase, labels [V, T];
  role [V]: 0 train pool, 1 validation)."""
  tr, va = role == 0, role == 1
  if not va.any() or not tr.any():
    raise ValueError("embedding_metrics needs train (role 0) and validation (role 1) videos")
  d = emb.shape[-1]
  e_tr, e_va = emb[tr], emb[va]
  out = alignment_metrics(e_va)
  out["phase_r2"] = ridge_r2(e_tr.reshape(-1, d), phase[tr].reshape(-1), e_va.reshape(-1, d), phase[va].reshape(-1))
  x_va, y_va = jnp.asarray(e_va.reshape(-1, d)), labels[va].reshape(-1)
  for n in fewshot_videos:
    accs = []
    for r in range(max(1, min(fewshot_repeats, len(e_tr) // n))):
      sel = slice(r * n, (r + 1) * n)
      params = fit_logistic(jnp.asarray(e_tr[sel].reshape(-1, d)), jnp.asarray(labels[tr][sel].reshape(-1)),
                            num_classes)
      accs.append(float(np.mean(np.asarray(predict_logistic(params, x_va)) == y_va)))
    out[f"fewshot{n}_accuracy"] = float(np.mean(accs))
  return out


# ----------------------------------------------------------------------------------------------- tasks


def _frames_shape(batch) -> tuple[int, ...]:
  shape = tuple(batch["frames"].shape)
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"batch['frames'] must be uint8 [B, T, H, W, 3], got shape {shape}")
  return shape


@dataclasses.dataclass(eq=False)
class _EmbeddingEval:
  """What both tasks share: the network, its optimiser settings, and the eval of per-frame embeddings."""
  learning_rate: float = 1e-3
  weight_decay: float = 1e-5
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  num_phases: int = 4
  fewshot_videos: Sequence[int] = (1,)
  fewshot_repeats: int = 3
  subtract_background: bool = True

  def __post_init__(self):
    self.net = TCCNet(**dict(self.model_kwargs))

  def embed(self, params, frames, steps=None):
    return self.net.apply({"params": params["net"]}, preprocess(frames, self.subtract_background), steps=steps)

  def eval_step(self, state, batch):
    emb = self.embed(state.params, batch["frames"])
    sums = {"videos": jnp.sum(batch["valid"])}
    gathered = {"emb": emb, "phase": batch["phase"], "labels": batch["phase_label"], "role": batch["role"],
                "valid": batch["valid"]}
    gathered.update(self.extra_gathered(state.params, emb))
    return sums, gathered

  def extra_gathered(self, params, emb) -> dict[str, jnp.ndarray]:
    return {}

  def eval_metrics(self, sums, gathered):
    keep = gathered["valid"] > 0
    g = {k: np.asarray(v)[keep] for k, v in gathered.items()}
    out = embedding_metrics(g["emb"], g["phase"], g["labels"], g["role"], num_classes=self.num_phases,
                            fewshot_videos=self.fewshot_videos, fewshot_repeats=self.fewshot_repeats)
    out["videos"] = float(sums["videos"])
    return out


@dataclasses.dataclass(eq=False)
class TCCTask(_EmbeddingEval, task_lib.Task):
  """Self-supervised TCC (§3) with :class:`TCCNet`; Adam at ``learning_rate`` (paper: 1e-4 at 224 px)."""
  variant: str = "regression"
  temperature: float = 0.1
  lam: float = 0.001

  def __post_init__(self):
    if self.variant not in tcc_ops.VARIANTS:
      raise ValueError(f"--variant={self.variant!r}; choose one of {tcc_ops.VARIANTS}")
    if self.temperature <= 0:
      raise ValueError(f"--temperature must be positive, got {self.temperature}")
    super().__post_init__()

  def init(self, rng, batch):
    shape = _frames_shape(batch)
    return {"net": self.net.init(rng, jnp.zeros((1,) + shape[1:], jnp.float32))["params"]}, {}

  def optimizer(self):
    return optax.adamw(self.learning_rate, weight_decay=self.weight_decay)

  def loss(self, params, model_state, batch, rng, *, train):
    emb = self.embed(params, batch["frames"], batch["steps"])
    total, count = tcc_ops.tcc_loss(emb, batch["mask"], variant=self.variant, temperature=self.temperature,
                                    steps=batch["steps"], lam=self.lam, reduce=False)
    return (total, count), (model_state, {"tcc_loss": total / jnp.maximum(count, 1.0)})

  def run_info(self):
    return {"task": "tcc", "variant": self.variant}


@dataclasses.dataclass(eq=False)
class SupervisedPhaseTask(_EmbeddingEval, task_lib.Task):
  """The supervised baseline: :class:`TCCNet` + a linear head, per-frame phase cross-entropy on the labelled
  videos' sampled frames (``labels`` of :class:`FrameSampler`). Eval adds ``head_accuracy`` (the head's phase
  accuracy on validation frames) to the embedding metrics."""

  def logits(self, params, emb):
    return emb @ params["head"]["w"] + params["head"]["b"]

  def init(self, rng, batch):
    shape = _frames_shape(batch)
    net = self.net.init(rng, jnp.zeros((1,) + shape[1:], jnp.float32))["params"]
    dim = self.net.embedding_dim
    return {"net": net, "head": {"w": jnp.zeros((dim, self.num_phases)), "b": jnp.zeros((self.num_phases,))}}, {}

  def optimizer(self):
    return optax.adamw(self.learning_rate, weight_decay=self.weight_decay)

  def loss(self, params, model_state, batch, rng, *, train):
    logits = self.logits(params, self.embed(params, batch["frames"], batch["steps"]))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return (jnp.sum(ce * batch["mask"]), jnp.sum(batch["mask"])), (model_state, {"train_accuracy": acc})

  def extra_gathered(self, params, emb):
    return {"pred": jnp.argmax(self.logits(params, emb), -1)}

  def eval_metrics(self, sums, gathered):
    out = super().eval_metrics(sums, gathered)
    keep = (np.asarray(gathered["valid"]) > 0) & (np.asarray(gathered["role"]) == 1)
    out["head_accuracy"] = float(np.mean(np.asarray(gathered["pred"])[keep] == np.asarray(gathered["labels"])[keep]))
    return out

  def run_info(self):
    return {"task": "supervised_phase"}
