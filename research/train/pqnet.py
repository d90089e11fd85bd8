"""PQ-NET (Wu et al., CVPR 2020) trained on the ONE loop: the part auto-encoder (stage 1) and the part Seq2Seq
(stage 2) as ``research.train.task.Task`` s, their batches, and the sparse part assembly used to evaluate them.

* :class:`PartAETask` (§3.1): ``research.models.generative.pqnet.PartAutoencoder`` on single parts, each normalised
  into its own box (``research.data.parts3d.normalized_part_voxels``, ``r^3``), with implicit-field samples biased to
  the surface (``parts3d.sample_points``): training batches ``{'voxels': uint8 [B, r, r, r], 'points': float32
  [B, N, 3] (part-local, [0, 1]^3), 'labels': uint8 [B, N]}``; loss: IM-NET's MSE between ``sigmoid(logit)`` and the
  0/1 label (``pqnet.occupancy_loss``; ``loss_kind='bce'`` for the cross-entropy). BatchNorm statistics of the
  encoder live in ``model_state['batch_stats']`` (averaged over devices by the loop). Eval batches ``{'voxels',
  'valid'}``: the decoder is queried at the ``r^3`` local voxel centres; sums give the part voxel IoU (``> 0.5``),
  the occupancy MSE and the voxel accuracy.
* :class:`Seq2SeqTask` (§3.2): ``PartSeq2Seq`` on the part codes of the FROZEN stage-1 encoder (computed once, eval
  mode, by :func:`encode_parts`) + the part boxes: batches ``{'codes': float32 [B, P, C], 'boxes': float32 [B, P, 6],
  'num_parts': int32 [B]}`` (rows past ``num_parts`` are zero and ignored); training with teacher forcing, loss Eq. 2
  (``pqnet.seq2seq_loss``: code MSE + box MSE + ``stop_weight`` x stop BCE). Eval (``+ 'valid'``): the same loss with
  teacher forcing, and the free-running decoder (its own previous outputs, as at test time): code / box MSE on the
  true steps, stop accuracy (per true step: ``sigmoid(stop) > 0.5`` equals "this is the last part"), and the
  part-count accuracy (``pqnet.num_parts_from_stop == num_parts``).
* :func:`assemble_batch`: ``pqnet.assemble`` for many shapes at once, without evaluating every part at every voxel:
  for each part only the world voxel centres inside its box (the same float32 test as ``pqnet.assemble``, done per
  axis on the host) are sent to the part decoder, in rows of ``chunk`` points, and the union (max) is scattered back.
  Same result as ``pqnet.assemble`` (tested), ~50x fewer decoder queries on these shapes.

Both tasks are data-parallel as the loop requires: per-example losses averaged over the shard (equal shards), eval
sums weighted by ``valid``. Optimizers: Adam with a cosine decay to ``0.1 x`` over ``num_steps`` (0: constant); the
Seq2Seq's gradients are clipped to global norm ``clip_norm`` (a usual GRU safeguard; our choice).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import parts3d
from research.data.memory import ArrayBatches, padded_eval_rows
from research.models.generative import pqnet
from research.train import task as task_lib

Metrics = dict[str, jnp.ndarray]


def adam_cosine(learning_rate: float, num_steps: int, clip_norm: float = 0.0) -> optax.GradientTransformation:
  """Adam with a cosine decay from ``learning_rate`` to ``0.1 x`` over ``num_steps`` (constant when 0), after an
  optional clip to global norm ``clip_norm``."""
  if learning_rate <= 0:
    raise ValueError(f"learning rate must be positive, got {learning_rate}")
  lr = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.1) if num_steps > 0 else learning_rate
  tx = optax.adam(lr)
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


def _variables(params, model_state) -> dict[str, Any]:
  stats = model_state.get("batch_stats", {}) if isinstance(model_state, Mapping) else {}
  return {"params": params, **({"batch_stats": stats} if jax.tree.leaves(stats) else {})}


def local_grid(resolution: int) -> np.ndarray:
  """float32 [r^3, 3]: the part-local voxel centres ``((a, b, c) + 0.5) / r`` in ``ij`` order (row-major voxels)."""
  c = parts3d.voxel_centres(resolution).astype(np.float32)
  return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


# ============================================================================================ stage 1: part AE


@dataclasses.dataclass(eq=False)
class PartAETask(task_lib.Task):
  """PQ-NET's part auto-encoder (§3.1) on ``{'voxels', 'points', 'labels'}`` batches (module docstring)."""
  model: pqnet.PartAutoencoder
  learning_rate: float = 1e-3
  num_steps: int = 0
  loss_kind: str = "mse"

  def __post_init__(self):
    if self.loss_kind not in pqnet.OCCUPANCY_LOSSES:
      raise ValueError(f"--ae_loss={self.loss_kind!r}; choose one of {pqnet.OCCUPANCY_LOSSES}")

  def init(self, rng, batch):
    r = batch["voxels"].shape[1]
    v = self.model.init(rng, jnp.zeros((2, r, r, r, 1)), jnp.zeros((2, 4, 3)), train=False)
    return v["params"], {"batch_stats": v.get("batch_stats", {})}

  def optimizer(self):
    return adam_cosine(self.learning_rate, self.num_steps)

  def logits(self, params, model_state, voxels, points, rng=None, *, train: bool):
    """Occupancy logits [B, N] of part grids ``voxels`` [B, r, r, r] (0/1) at part-local ``points`` [B, N, 3] and
    the updated model state (batch statistics when ``train``)."""
    v = _variables(params, model_state)
    x = voxels.astype(jnp.float32)[..., None]
    rngs = {"dropout": rng} if rng is not None else None
    if train and "batch_stats" in v:
      out, upd = self.model.apply(v, x, points, train=True, rngs=rngs, mutable=["batch_stats"])
      return out, {**model_state, "batch_stats": upd["batch_stats"]}
    return self.model.apply(v, x, points, train=train, rngs=rngs), model_state

  def loss(self, params, model_state, batch, rng, *, train):
    logits, model_state = self.logits(params, model_state, batch["voxels"], batch["points"], rng, train=train)
    labels = batch["labels"].astype(jnp.float32)
    loss = pqnet.occupancy_loss(logits, labels, kind=self.loss_kind)
    acc = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))
    return loss, (model_state, {"point_accuracy": acc})

  def eval_step(self, state, batch):
    r = batch["voxels"].shape[1]
    b = batch["voxels"].shape[0]
    pts = jnp.broadcast_to(jnp.asarray(local_grid(r)), (b, r ** 3, 3))
    logits, _ = self.logits(state.params, state.model_state, batch["voxels"], pts, train=False)
    prob = jax.nn.sigmoid(logits)
    target = batch["voxels"].reshape(b, -1) > 0
    pred = prob > 0.5
    inter = jnp.sum(pred & target, -1).astype(jnp.float32)
    union = jnp.sum(pred | target, -1).astype(jnp.float32)
    iou = jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)
    valid = batch["valid"].astype(jnp.float32)
    sums = {"count": jnp.sum(valid), "iou": jnp.sum(valid * iou),
            "mse": jnp.sum(valid * jnp.mean(jnp.square(prob - target), -1)),
            "accuracy": jnp.sum(valid * jnp.mean((pred == target).astype(jnp.float32), -1))}
    return sums, {}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    return {"part_iou": float(sums["iou"]) / n, "occupancy_mse": float(sums["mse"]) / n,
            "voxel_accuracy": float(sums["accuracy"]) / n}

  def run_info(self):
    return {"stage": "part_autoencoder", "loss_kind": self.loss_kind}


def part_grids(parts: np.ndarray, part_boxes: np.ndarray, num_parts: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [S, P, r, r, r]: every shape's parts normalised into their boxes (``parts3d.normalized_part_voxels``) at
  ``resolution`` r, from label grids ``parts`` [S, R, R, R], ``part_boxes`` [S, P, 6], ``num_parts`` [S]."""
  return np.stack([parts3d.normalized_part_voxels(p, b, int(n), resolution)
                   for p, b, n in zip(parts, part_boxes, num_parts)])


def part_samples(grids: np.ndarray, num_parts: np.ndarray, *, points_per_part: int, seed: int,
                 surface_fraction: float = 0.5) -> dict[str, np.ndarray]:
  """The stage-1 training set: one row per real part of every shape, ``{'voxels': uint8 [M, r, r, r], 'points':
  float32 [M, K, 3], 'labels': uint8 [M, K], 'shape': int32 [M], 'part': int32 [M]}`` with ``K =
  points_per_part`` fixed samples per part (``parts3d.sample_points``, generator ``default_rng([seed, shape,
  part])``: independent of the order and of the other shapes). ``grids`` [S, P, r, r, r] from :func:`part_grids`."""
  rows = [(s, k) for s in range(len(num_parts)) for k in range(int(num_parts[s]))]
  if not rows:
    raise ValueError("part_samples: no parts (every num_parts is 0)")
  pts = np.zeros((len(rows), points_per_part, 3), np.float32)
  labels = np.zeros((len(rows), points_per_part), np.uint8)
  for i, (s, k) in enumerate(rows):
    pts[i], labels[i] = parts3d.sample_points(grids[s, k], points_per_part, np.random.default_rng([seed, s, k]),
                                              surface_fraction=surface_fraction)
  shape, part = (np.asarray(c, np.int32) for c in zip(*rows))
  return {"voxels": grids[shape, part], "points": pts, "labels": labels, "shape": shape, "part": part}


def part_batches(samples: Mapping[str, np.ndarray], *, global_batch_size: int, num_points: int, seed: int
                 ) -> ArrayBatches:
  """Stage-1 training batches: random parts (with replacement), each with ``num_points`` of its fixed samples drawn
  without replacement; depends only on ``(seed, step)`` (``ArrayBatches``): ``{'voxels', 'points', 'labels'}``."""
  k = samples["points"].shape[1]
  if not 0 < num_points <= k:
    raise ValueError(f"--num_points={num_points} must be in [1, --points_per_part={k}]")

  def transform(batch, rng):
    idx = np.argsort(rng.random((len(batch["points"]), k)), axis=1)[:, :num_points]
    return {"voxels": batch["voxels"], "points": np.take_along_axis(batch["points"], idx[..., None], 1),
            "labels": np.take_along_axis(batch["labels"], idx, 1)}

  arrays = {key: samples[key] for key in ("voxels", "points", "labels")}
  return ArrayBatches(arrays, global_batch_size=global_batch_size, seed=seed, transform=transform)


def part_eval_batches(voxels: np.ndarray, *, global_batch_size: int) -> Callable:
  """``() -> iterator`` of ``{'voxels': uint8 [b, r, r, r], 'valid'}`` over part grids ``voxels`` [M, r, r, r]."""
  def batches():
    for rows, valid in padded_eval_rows(len(voxels), global_batch_size):
      yield {"voxels": voxels[rows], "valid": valid}
  return batches


# ============================================================================================ stage 2: Seq2Seq


@dataclasses.dataclass(eq=False)
class Seq2SeqTask(task_lib.Task):
  """PQ-NET's part Seq2Seq (§3.2) on ``{'codes', 'boxes', 'num_parts'}`` batches (module docstring)."""
  model: pqnet.PartSeq2Seq
  learning_rate: float = 1e-3
  num_steps: int = 0
  clip_norm: float = 1.0
  code_weight: float = 1.0
  box_weight: float = 1.0
  stop_weight: float = 0.01

  def __post_init__(self):
    for name in ("code_weight", "box_weight", "stop_weight", "clip_norm"):
      if getattr(self, name) < 0:
        raise ValueError(f"Seq2SeqTask: {name}={getattr(self, name)} must be >= 0")

  def _apply(self, params, *args, **kwargs):
    return self.model.apply({"params": params}, *args, **kwargs)

  def inputs(self, batch) -> jnp.ndarray:
    """The encoder's part vectors [B, P, C + 6 + max_parts] (``pqnet.make_part_vectors``)."""
    return pqnet.make_part_vectors(batch["codes"], batch["boxes"], batch["num_parts"], self.model.max_parts)

  def init(self, rng, batch):
    p = batch["codes"].shape[1]
    x = jnp.zeros((2, p, self.model.input_dim))
    return self.model.init(rng, x, jnp.ones((2,), jnp.int32), train=False)["params"], {}

  def optimizer(self):
    return adam_cosine(self.learning_rate, self.num_steps, self.clip_norm)

  def _loss(self, pred, batch):
    return pqnet.seq2seq_loss(pred, batch["codes"], batch["boxes"], batch["num_parts"], code_weight=self.code_weight,
                              box_weight=self.box_weight, stop_weight=self.stop_weight)

  def loss(self, params, model_state, batch, rng, *, train):
    pred = self._apply(params, self.inputs(batch), batch["num_parts"], train=train, rngs={"dropout": rng})
    loss, parts = self._loss(pred, batch)
    return loss, (model_state, {f"{k}_loss": v for k, v in parts.items()})

  def encode(self, params, batch) -> jnp.ndarray:
    """Shape latents [B, latent_dim] (eval mode)."""
    return self._apply(params, self.inputs(batch), batch["num_parts"], method="encode")

  def decode(self, params, latent, steps: int | None = None) -> dict[str, jnp.ndarray]:
    """Free-running decoding of latents [B, L]: ``codes`` [B, T, C], ``boxes`` [B, T, 6], ``stop_logits`` [B, T] and
    ``num_parts`` int32 [B] (``pqnet.num_parts_from_stop``)."""
    out = self._apply(params, latent, steps, method="decode")
    return {**out, "num_parts": pqnet.num_parts_from_stop(out["stop_logits"])}

  def eval_step(self, state, batch):
    params, n = state.params, batch["num_parts"]
    valid = batch["valid"].astype(jnp.float32)
    x = self.inputs(batch)
    tf = self._apply(params, x, n, train=False)
    free = self._apply(params, x, n, train=False, teacher_forcing=False)
    p = x.shape[1]
    steps = pqnet.step_mask(n, p).astype(jnp.float32) * valid[:, None]  # [b, P]: the true steps of real shapes
    stop_true = pqnet.stop_targets(n, p)
    sums = {"count": jnp.sum(valid), "steps": jnp.sum(steps)}
    for name, pred in (("tf", tf), ("free", free)):
      sums[f"{name}_code_se"] = jnp.sum(steps * jnp.mean(jnp.square(pred["codes"] - batch["codes"]), -1))
      sums[f"{name}_box_se"] = jnp.sum(steps * jnp.mean(jnp.square(pred["boxes"] - batch["boxes"]), -1))
      sums[f"{name}_stop_bce"] = jnp.sum(steps * optax.sigmoid_binary_cross_entropy(pred["stop_logits"], stop_true))
      sums[f"{name}_stop_hits"] = jnp.sum(steps * ((pred["stop_logits"] > 0) == (stop_true > 0.5)))
    sums["part_count_hits"] = jnp.sum(valid * (pqnet.num_parts_from_stop(free["stop_logits"]) == n))
    return sums, {}

  def eval_metrics(self, sums, gathered):
    n, t = max(float(sums["count"]), 1.0), max(float(sums["steps"]), 1.0)
    out = {"part_count_accuracy": float(sums["part_count_hits"]) / n}
    for name in ("tf", "free"):
      for key in ("code_se", "box_se", "stop_bce", "stop_hits"):
        out[f"{name}_{key}"] = float(sums[f"{name}_{key}"]) / t
      out[f"{name}_loss"] = (self.code_weight * out[f"{name}_code_se"] + self.box_weight * out[f"{name}_box_se"]
                             + self.stop_weight * out[f"{name}_stop_bce"])  # Eq. 2 over the split's true steps
    return {k.replace("_se", "_mse").replace("_stop_hits", "_stop_accuracy"): v for k, v in out.items()}

  def run_info(self):
    return {"stage": "seq2seq", "teacher_forcing": True, "stop_weight": self.stop_weight}


def shape_batches(codes: np.ndarray, boxes: np.ndarray, num_parts: np.ndarray, *, global_batch_size: int,
                  seed: int) -> ArrayBatches:
  """Stage-2 training batches ``{'codes' [B, P, C], 'boxes' [B, P, 6], 'num_parts' [B]}`` of random shapes."""
  return ArrayBatches({"codes": codes.astype(np.float32), "boxes": boxes.astype(np.float32),
                       "num_parts": num_parts.astype(np.int32)}, global_batch_size=global_batch_size, seed=seed)


def shape_eval_batches(codes: np.ndarray, boxes: np.ndarray, num_parts: np.ndarray, *, global_batch_size: int
                       ) -> Callable:
  """``() -> iterator`` of stage-2 eval batches (``+ 'valid'``) over every shape once."""
  def batches():
    for rows, valid in padded_eval_rows(len(num_parts), global_batch_size):
      yield {"codes": codes[rows].astype(np.float32), "boxes": boxes[rows].astype(np.float32),
             "num_parts": num_parts[rows].astype(np.int32), "valid": valid}
  return batches


# ============================================================================================ batched helpers


def map_batched(fn: Callable[..., Any], arrays: tuple[np.ndarray, ...], batch_size: int) -> Any:
  """``fn`` (a jitted function of ``batch_size`` rows) over the rows of ``arrays`` in fixed-size chunks (the last
  padded by repeating row 0, so ``fn`` compiles once); outputs (a pytree of [batch_size, ...]) concatenated."""
  n = len(arrays[0])
  outs = []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    rows = np.where(rows < n, rows, 0)
    outs.append(jax.device_get(fn(*(a[rows] for a in arrays))))
  cat = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
  return jax.tree.map(lambda x: x[:n], cat)


def encode_parts(task: PartAETask, params, model_state, grids: np.ndarray, num_parts: np.ndarray,
                 batch_size: int = 256) -> np.ndarray:
  """float32 [S, P, C]: the frozen (eval-mode) part encoder's codes of ``grids`` [S, P, r, r, r]; rows past each
  shape's ``num_parts`` are zero (as ``make_part_vectors`` expects)."""
  s, p = grids.shape[:2]
  flat = grids.reshape((s * p,) + grids.shape[2:])
  v = _variables(params, model_state)
  enc = jax.jit(lambda x: task.model.apply(v, x.astype(jnp.float32)[..., None], train=False, method="encode"))
  codes = map_batched(enc, (flat,), batch_size).reshape(s, p, -1)
  return np.where((np.arange(p)[None] < num_parts[:, None])[..., None], codes, 0.0).astype(np.float32)


# ============================================================================================ sparse assembly


def _inside_indices(lo: float, hi: float, centres: np.ndarray) -> np.ndarray:
  """Indices of the float32 ``centres`` [R] whose local coordinate ``(c - lo) / max(hi - lo, 1e-6)`` is in [0, 1]:
  the per-axis factor of ``pqnet.assemble``'s ``inside`` test, in the same float32 arithmetic."""
  lo32, hi32 = np.float32(lo), np.float32(hi)
  local = (centres - lo32) / np.maximum(hi32 - lo32, np.float32(1e-6))
  return np.flatnonzero((local >= 0) & (local <= 1))


def assembly_rows(boxes: np.ndarray, num_parts: np.ndarray, grid: int, chunk: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The decoder queries of :func:`assemble_batch`: ``(owner int32 [K, 2] (shape, part), local float32
  [K, chunk, 3], voxel int64 [K, chunk] (flat index into grid^3, -1 = padding), shape-independent)``.

  Part ``p < num_parts[s]`` of shape ``s`` queries the world voxel centres inside its closed box (``boxes[s, p]``,
  min corner, max corner), split into rows of ``chunk`` points; non-finite boxes query nothing."""
  c = ((np.arange(grid, dtype=np.float32) + np.float32(0.5)) / np.float32(grid)).astype(np.float32)
  owners, locals_, voxels = [], [], []
  for s in range(len(num_parts)):
    for p in range(int(num_parts[s])):
      b = np.asarray(boxes[s, p], np.float32)
      if not np.all(np.isfinite(b)):
        continue
      idx = [_inside_indices(b[a], b[a + 3], c) for a in range(3)]
      if not all(len(i) for i in idx):
        continue
      ii, jj, kk = np.meshgrid(*idx, indexing="ij")
      flat = ((ii * grid + jj) * grid + kk).ravel()
      ext = np.maximum(b[3:] - b[:3], np.float32(1e-6))
      local = ((np.stack([c[ii.ravel()], c[jj.ravel()], c[kk.ravel()]], -1) - b[:3]) / ext).astype(np.float32)
      for start in range(0, len(flat), chunk):
        n = min(chunk, len(flat) - start)
        row_l = np.zeros((chunk, 3), np.float32)
        row_v = np.full((chunk,), -1, np.int64)
        row_l[:n], row_v[:n] = local[start:start + n], flat[start:start + n]
        owners.append((s, p))
        locals_.append(row_l)
        voxels.append(row_v)
  if not owners:
    return np.zeros((0, 2), np.int32), np.zeros((0, chunk, 3), np.float32), np.zeros((0, chunk), np.int64)
  return np.asarray(owners, np.int32), np.stack(locals_), np.stack(voxels)


def assemble_batch(decode_fn: Callable[[Any, Any], Any], codes: np.ndarray, boxes: np.ndarray,
                   num_parts: np.ndarray, grid: int, *, chunk: int = 512, rows_per_call: int = 64) -> np.ndarray:
  """Occupancy float32 [S, grid, grid, grid] of shapes assembled from decoded parts: ``pqnet.assemble`` for every
  shape at once, querying only the voxels inside each part's box (module docstring).

  Args:
    decode_fn: ``(codes [rows_per_call, C], local points [rows_per_call, chunk, 3]) -> occupancy [rows_per_call,
      chunk]`` in [0, 1] (e.g. ``sigmoid`` of ``PartAutoencoder.decode``, jitted: it is called with these fixed shapes
      only).
    codes: [S, P, C] part codes; boxes: [S, P, 6] (min corner, max corner); num_parts: int [S].
  """
  s = len(num_parts)
  occ = np.zeros((s, grid ** 3), np.float32)
  owner, local, voxel = assembly_rows(np.asarray(boxes), np.asarray(num_parts), grid, chunk)
  if not len(owner):
    return occ.reshape(s, grid, grid, grid)
  row_codes = np.asarray(codes, np.float32)[owner[:, 0], owner[:, 1]]
  probs = np.asarray(map_batched(decode_fn, (row_codes, local), rows_per_call), np.float32)  # [K, chunk]
  keep = voxel >= 0
  rows = np.broadcast_to(owner[:, :1], voxel.shape)[keep]
  np.maximum.at(occ, (rows, voxel[keep]), probs[keep])
  return occ.reshape(s, grid, grid, grid)


def part_decoder(task: PartAETask, params, model_state) -> Callable:
  """A jitted ``(codes [K, C], local points [K, N, 3]) -> occupancy probabilities [K, N]`` of the trained part
  decoder (for :func:`assemble_batch`)."""
  v = _variables(params, model_state)
  return jax.jit(lambda c, x: jax.nn.sigmoid(task.model.apply(v, c, x, method="decode")))
