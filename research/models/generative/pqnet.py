"""PQ-NET (Wu et al., CVPR 2020, "PQ-NET: A Generative Part Seq2Seq Network for 3D Shapes"): a shape as a sequence of
parts, each part a code of a part auto-encoder plus its bounding box, auto-encoded by a GRU Seq2Seq network.

* :class:`PartAutoencoder` (§3.1): a 3-D CNN encodes a part's voxels, normalised into its own box (e.g.
  ``research.data.parts3d.normalized_part_voxels``), ``[B, R, R, R, 1] -> code [B, code_dim]`` (4^3 stride-2
  convolutions (:class:`Conv3DStride2`), BatchNorm, LeakyReLU 0.02, down to 4^3, then a 4^3 valid convolution (a
  matrix product of the flattened 4^3 map) and a sigmoid, as PQ-NET's ``Encoder3D``); an IM-NET implicit decoder
  (Chen & Zhang, CVPR 2019, §3) maps ``[code, xyz]`` to an occupancy logit with an MLP whose every hidden layer also
  reads ``[code, xyz]`` again (skip concatenation; widths ``16w, 8w, 4w, 2w, w`` for ``width = w``, 512..32 in
  PQ-NET; LeakyReLU 0.02). ``xyz`` are part-local coordinates in ``[0, 1]^3``, centred to ``[-0.5, 0.5]^3`` inside
  the decoder (IM-NET's range). Each layer's Linear on the concatenation ``[h, xyz, code]`` (one kernel
  ``fc{i}_kernel`` [dim h + 3 + C, width], as IM-NET) is applied piecewise, ``W_h h + W_p xyz + W_c code``: the same
  function, with the code's term once per shape, not per point.
* :class:`PartSeq2Seq` (§3.2): the encoder, a bidirectional stacked GRU (``research.layers.recurrent``), reads the
  part vectors ``code ⊕ box (6) ⊕ one-hot(number of parts)`` (:func:`make_part_vectors`) of the valid parts; the
  final states of both directions of every layer are concatenated and projected to the shape latent
  (``latent_dim``). The decoder, a stacked GRU of ``2 * hidden`` units whose initial states are ``tanh`` of a
  projection of the latent, emits one part per step: from its top layer's output, MLP heads give the part code, the
  box (6) and a stop logit. Its input at step ``t`` is the previous part's ``code ⊕ box``: the ground truth with
  teacher forcing (training), its own previous prediction (gradient stopped) otherwise; at step 0 a start token
  (zero code, the unit cube's box ``(0, 0, 0, 1, 1, 1)``). The released code's LockedDropout on the decoder input,
  its per-layer head split (code and stop from layer 1, box from layer 2) and its random per-batch teacher-forcing
  ratio are not reproduced: heads read the top layer, and teacher forcing is the caller's choice.
* Losses (pure functions): :func:`seq2seq_loss` (§3.2, Eq. 2, the reconstruction + stop-sign loss): MSE on codes +
  MSE on boxes + ``stop_weight`` x BCE on the stop flags (1 at a shape's last part), each averaged over the valid
  steps (and over code / box dimensions). The weights 1, 1 and ``stop_weight = 0.01`` are those of the authors'
  released code (``Seq2SeqAgent``, ``--stop_weight``), which also floors the stop term at 1e-3 (not reproduced).
  :func:`occupancy_loss`: IM-NET and PQ-NET train the part auto-encoder with the MSE between the sigmoid occupancy
  and the 0/1 label (``kind="mse"``, the default); ``kind="bce"`` is the cross-entropy on the logits.
* :func:`assemble`: places each decoded part in its box (part-local ``[0, 1]^3`` -> the box) and takes the union
  (max over parts) on an ``R^3`` grid of voxel centres, for IoU / Chamfer evaluation against the shape's voxels.

Boxes are ``(x0, y0, z0, x1, y1, z1)`` (min corner, max corner) in ``[0, 1]^3``, as ``research.data.parts3d`` stores
them (PQ-NET uses centre + size: the same information). Modules take ``dtype`` / ``param_dtype``; ``train`` switches
BatchNorm statistics (``batch_stats``) and dropout (a ``dropout`` rng when a rate is set).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.recurrent import GRUCell, StackedGRU, zero_state
from research.layers.strided_conv import CONV_IMPLS, Conv3DStride2  # noqa: F401  (CONV_IMPLS re-exported)
from research.models.registry import register

Array = jax.Array
BOX_DIM = 6
START_BOX = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)  # the decoder's step-0 box: the whole unit cube
NORMS = ("batch", "none")
OCCUPANCY_LOSSES = ("mse", "bce")


# ------------------------------------------------------------------------------------------------ part auto-encoder


class VoxelEncoder3D(nn.Module):
  """Part voxels [B, R, R, R, 1] (R a power of two >= 8) -> codes [B, code_dim] in (0, 1): ``log2(R / 4)`` 4^3
  stride-2 convolutions (``width * 2^i`` channels, BatchNorm or none, LeakyReLU 0.02), a 4^3 valid convolution to
  ``code_dim``, sigmoid."""
  code_dim: int = 128
  width: int = 32
  norm: str = "batch"
  conv_impl: str = "space_to_depth"  # Conv3DStride2's impl
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, voxels: Array, *, train: bool) -> Array:
    if self.norm not in NORMS:
      raise ValueError(f"VoxelEncoder3D: norm={self.norm!r}; choose one of {NORMS}")
    r = voxels.shape[1]
    if voxels.ndim != 5 or voxels.shape[1:] != (r, r, r, 1) or r < 8 or r & (r - 1):
      raise ValueError(f"VoxelEncoder3D: voxels must be [B, R, R, R, 1] with R a power of two >= 8 (16, 32, 64), "
                       f"got shape {voxels.shape}")
    h = voxels.astype(self.dtype)
    for i in range(int(math.log2(r // 4))):
      h = Conv3DStride2(self.width * 2 ** i, use_bias=self.norm == "none", impl=self.conv_impl, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"conv{i}")(h)
      if self.norm == "batch":
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"bn{i}")(h)
      h = nn.leaky_relu(h, 0.02)
    # the 4^3 valid convolution of a 4^3 map: one matrix product (kernel laid out as nn.Conv's)
    kernel = self.param("to_code_kernel", nn.initializers.lecun_normal(),
                        (4, 4, 4, h.shape[-1], self.code_dim), self.param_dtype).astype(self.dtype)
    bias = self.param("to_code_bias", nn.initializers.zeros_init(), (self.code_dim,), self.param_dtype)
    h = h.reshape(h.shape[0], -1) @ kernel.reshape(-1, self.code_dim) + bias.astype(self.dtype)
    return jax.nn.sigmoid(h).astype(jnp.float32)


class IMNetDecoder(nn.Module):
  """IM-NET's implicit decoder with skip concatenation: codes [B, C] and part-local points [B, N, 3] in [0, 1]^3 ->
  occupancy logits [B, N]. Hidden widths ``width * 2^(num_layers - 1 - i)``; every hidden layer reads
  ``[h, xyz - 0.5, code]``; LeakyReLU 0.02; dropout ``dropout_rate`` after the hidden layers when ``train`` (PQ-NET
  uses 0.2 on its first 4 layers)."""
  width: int = 32
  num_layers: int = 5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, codes: Array, points: Array, *, train: bool = False) -> Array:
    if codes.ndim != 2 or points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != codes.shape[0]:
      raise ValueError(f"IMNetDecoder: codes must be [B, C] and points [B, N, 3] with the same B, got {codes.shape} "
                       f"and {points.shape}")
    p = points.astype(self.dtype) - 0.5
    c = codes.astype(self.dtype)
    h = None
    for i in range(self.num_layers):
      w = self.width * 2 ** (self.num_layers - 1 - i)
      dh = 0 if h is None else h.shape[-1]
      # one Linear on [h, xyz, code] (IM-NET), applied piecewise: the code's part once per shape
      kernel = self.param(f"fc{i}_kernel", nn.initializers.lecun_normal(), (dh + 3 + c.shape[-1], w),
                          self.param_dtype).astype(self.dtype)
      bias = self.param(f"fc{i}_bias", nn.initializers.zeros_init(), (w,), self.param_dtype).astype(self.dtype)
      pre = p @ kernel[dh:dh + 3] + (c @ kernel[dh + 3:] + bias)[:, None]
      if h is not None:
        pre = pre + h @ kernel[:dh]
      h = nn.leaky_relu(pre, 0.02)
      if self.dropout_rate:
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    out = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)
    return out[..., 0].astype(jnp.float32)


class PartAutoencoder(nn.Module):
  """PQ-NET's part auto-encoder (module docstring): ``__call__(voxels [B, R, R, R, 1], points [B, N, 3], *, train)
  -> occupancy logits [B, N]``; ``encode(voxels, *, train) -> codes [B, code_dim]``; ``decode(codes, points, *,
  train=False) -> logits [B, N]``. ``points`` are part-local, in [0, 1]^3."""
  code_dim: int = 128
  enc_width: int = 32
  width: int = 32
  dec_layers: int = 5
  norm: str = "batch"
  dropout_rate: float = 0.0
  conv_impl: str = "space_to_depth"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.encoder = VoxelEncoder3D(self.code_dim, self.enc_width, self.norm, self.conv_impl, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
    self.decoder = IMNetDecoder(self.width, self.dec_layers, self.dropout_rate, dtype=self.dtype,
                                param_dtype=self.param_dtype)

  def encode(self, voxels: Array, *, train: bool) -> Array:
    return self.encoder(voxels, train=train)

  def decode(self, codes: Array, points: Array, *, train: bool = False) -> Array:
    if codes.shape[-1] != self.code_dim:
      raise ValueError(f"PartAutoencoder.decode: codes must be [B, code_dim={self.code_dim}], got {codes.shape}")
    return self.decoder(codes, points, train=train)

  def __call__(self, voxels: Array, points: Array, *, train: bool) -> Array:
    if points.ndim != 3 or points.shape[0] != voxels.shape[0]:
      raise ValueError(f"PartAutoencoder: points must be [B, N, 3] with the voxels' B={voxels.shape[0]}, got "
                       f"{points.shape}")
    return self.decode(self.encode(voxels, train=train), points, train=train)


# ---------------------------------------------------------------------------------------------------- part Seq2Seq


def make_part_vectors(codes: Array, boxes: Array, num_parts: Array, max_parts: int) -> Array:
  """The Seq2Seq encoder's inputs (PQ-NET §3.2): ``codes [B, P, C] ⊕ boxes [B, P, 6] ⊕ one-hot(num_parts - 1,
  max_parts)`` -> [B, P, C + 6 + max_parts], rows past each shape's ``num_parts`` [B] zeroed."""
  codes, boxes = jnp.asarray(codes), jnp.asarray(boxes)
  if codes.ndim != 3 or boxes.shape != codes.shape[:2] + (BOX_DIM,):
    raise ValueError(f"make_part_vectors: codes must be [B, P, C] and boxes [B, P, 6], got {codes.shape} and "
                     f"{boxes.shape}")
  b, p = codes.shape[:2]
  if p > max_parts:
    raise ValueError(f"make_part_vectors: {p} parts per shape exceed max_parts={max_parts}")
  num_parts = jnp.asarray(num_parts)
  onehot = jax.nn.one_hot(num_parts - 1, max_parts, dtype=codes.dtype)
  x = jnp.concatenate([codes, boxes.astype(codes.dtype), jnp.broadcast_to(onehot[:, None], (b, p, max_parts))], -1)
  return jnp.where((jnp.arange(p)[None] < num_parts[:, None])[..., None], x, 0)


class _DecoderStep(nn.Module):
  """One decoder step: ``(states [L, B, H], input [B, code_dim + 6]) -> (states', (code [B, C], box [B, 6], stop
  logit [B]))``: ``num_layers`` GRU cells in a stack, MLP heads on the top layer's output."""
  code_dim: int
  features: int
  num_layers: int
  head_hidden: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, states: Array, x: Array):
    dense = lambda n, name, bias=True: nn.Dense(n, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
                                                name=name)
    h, new = x, []
    for layer in range(self.num_layers):
      cell = GRUCell(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"cell{layer}")
      h, _ = cell(states[layer], h)
      new.append(h)
    code = dense(self.code_dim, "code_out")(nn.leaky_relu(dense(self.head_hidden, "code_hidden")(h), 0.01))
    box = dense(BOX_DIM, "box_out")(nn.relu(dense(self.head_hidden // 2, "box_hidden")(h)))
    stop = dense(1, "stop_out")(nn.relu(dense(self.head_hidden // 2, "stop_hidden")(h)))[:, 0]
    return jnp.stack(new), (code.astype(jnp.float32), box.astype(jnp.float32), stop.astype(jnp.float32))


class PartSeq2Seq(nn.Module):
  """PQ-NET's part Seq2Seq auto-encoder (module docstring).

  ``__call__(part_vectors [B, P, code_dim + 6 + max_parts], num_parts [B], *, train, teacher_forcing=True)`` ->
  ``{"codes": [B, P, code_dim], "boxes": [B, P, 6], "stop_logits": [B, P], "latent": [B, latent_dim]}``;
  ``encode(part_vectors, num_parts, *, train=False) -> latent``; ``decode(latent, max_parts) -> {"codes", "boxes",
  "stop_logits"}`` generated autoregressively for ``max_parts`` steps (:func:`num_parts_from_stop` reads the
  length off the stop logits).
  """
  code_dim: int = 128
  max_parts: int = 8
  hidden: int = 256  # encoder GRU units per direction; the decoder has 2 * hidden (PQ-NET: 256 / 512)
  num_layers: int = 2
  latent_dim: int = 512
  head_hidden: int = 256
  dropout_rate: float = 0.0  # between the encoder's GRU layers (PQ-NET: 0.2)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.encoder = StackedGRU(self.hidden, self.num_layers, bidirectional=True, dropout_rate=self.dropout_rate,
                              dtype=self.dtype, param_dtype=self.param_dtype)
    self.to_latent = nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    self.to_states = nn.Dense(self.num_layers * 2 * self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)
    self.step = _DecoderStep(self.code_dim, 2 * self.hidden, self.num_layers, self.head_hidden, dtype=self.dtype,
                             param_dtype=self.param_dtype)

  @property
  def input_dim(self) -> int:
    return self.code_dim + BOX_DIM + self.max_parts

  def encode(self, part_vectors: Array, num_parts: Array, *, train: bool = False) -> Array:
    b, p, d = part_vectors.shape
    if d != self.input_dim or p > self.max_parts:
      raise ValueError(f"PartSeq2Seq: part_vectors must be [B, P <= max_parts={self.max_parts}, code_dim + 6 + "
                       f"max_parts = {self.input_dim}] (make_part_vectors), got {part_vectors.shape}")
    if jnp.shape(num_parts) != (b,):
      raise ValueError(f"PartSeq2Seq: num_parts must be int [B={b}], got shape {jnp.shape(num_parts)}")
    mask = jnp.arange(p)[None] < jnp.asarray(num_parts)[:, None]
    _, finals = self.encoder(part_vectors.astype(self.dtype), mask=mask, train=train)  # [L * 2, B, H]
    return self.to_latent(finals.transpose(1, 0, 2).reshape(b, -1)).astype(jnp.float32)

  def _initial(self, latent: Array) -> tuple[Array, Array]:
    b = latent.shape[0]
    states = jnp.tanh(self.to_states(latent.astype(self.dtype)))
    states = states.reshape(b, self.num_layers, 2 * self.hidden).transpose(1, 0, 2)
    start = jnp.concatenate([jnp.zeros((b, self.code_dim), self.dtype),
                             jnp.broadcast_to(jnp.asarray(START_BOX, self.dtype), (b, BOX_DIM))], -1)
    return states, start + zero_state((b, 1), self.dtype, latent)  # varies like the batch (see zero_state)

  def _autoregressive(self, latent: Array, steps: int) -> dict[str, Array]:
    states, start = self._initial(latent)

    def body(step, carry, _):
      states, prev = carry
      states, (code, box, stop) = step(states, prev)
      prev = jax.lax.stop_gradient(jnp.concatenate([code, box], -1).astype(prev.dtype))
      return (states, prev), (code, box, stop)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, out_axes=1, length=steps)
    _, (codes, boxes, stops) = scan(self.step, (states, start), None)
    return {"codes": codes, "boxes": boxes, "stop_logits": stops}

  def decode(self, latent: Array, max_parts: int | None = None) -> dict[str, Array]:
    steps = self.max_parts if max_parts is None else int(max_parts)
    if latent.ndim != 2 or latent.shape[-1] != self.latent_dim:
      raise ValueError(f"PartSeq2Seq.decode: latent must be [B, latent_dim={self.latent_dim}], got {latent.shape}")
    if steps < 1:
      raise ValueError(f"PartSeq2Seq.decode: max_parts={steps} must be >= 1")
    return self._autoregressive(latent, steps)

  def __call__(self, part_vectors: Array, num_parts: Array, *, train: bool, teacher_forcing: bool = True
               ) -> dict[str, Array]:
    latent = self.encode(part_vectors, num_parts, train=train)
    p = part_vectors.shape[1]
    if not teacher_forcing:
      return {**self._autoregressive(latent, p), "latent": latent}
    states, start = self._initial(latent)
    targets = part_vectors[..., :self.code_dim + BOX_DIM].astype(self.dtype)
    inputs = jnp.concatenate([start[:, None], targets[:, :-1]], 1)  # step t reads the true part t - 1

    def body(step, states, x):
      return step(states, x)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
    _, (codes, boxes, stops) = scan(self.step, states, inputs)
    return {"codes": codes, "boxes": boxes, "stop_logits": stops, "latent": latent}


# ------------------------------------------------------------------------------------------------------------ losses


def step_mask(num_parts: Array, steps: int) -> Array:
  """bool [B, steps]: True at the valid steps ``t < num_parts``."""
  return jnp.arange(steps)[None] < jnp.asarray(num_parts)[:, None]


def stop_targets(num_parts: Array, steps: int) -> Array:
  """float32 [B, steps]: 1 at the last part (``t = num_parts - 1``), 0 elsewhere (PQ-NET's stop sign)."""
  return (jnp.arange(steps)[None] == jnp.asarray(num_parts)[:, None] - 1).astype(jnp.float32)


def seq2seq_loss(pred: dict[str, Array], codes: Array, boxes: Array, num_parts: Array, *, code_weight: float = 1.0,
                 box_weight: float = 1.0, stop_weight: float = 0.01) -> tuple[Array, dict[str, Array]]:
  """PQ-NET's Seq2Seq reconstruction loss (module docstring, §3.2 Eq. 2): ``(loss [], {"code", "box", "stop"})``.

  Args:
    pred: :class:`PartSeq2Seq` outputs with ``codes`` [B, T, C], ``boxes`` [B, T, 6], ``stop_logits`` [B, T].
    codes / boxes: targets [B, T, C] / [B, T, 6] (rows past ``num_parts`` ignored).
    num_parts: int [B], each >= 1.
  """
  b, t = pred["stop_logits"].shape
  if codes.shape != pred["codes"].shape or boxes.shape != pred["boxes"].shape:
    raise ValueError(f"seq2seq_loss: targets codes {codes.shape} / boxes {boxes.shape} must match the predictions "
                     f"{pred['codes'].shape} / {pred['boxes'].shape}")
  valid = step_mask(num_parts, t).astype(jnp.float32)
  n = jnp.maximum(valid.sum(), 1.0)
  code = (jnp.mean(jnp.square(pred["codes"] - codes), -1) * valid).sum() / n
  box = (jnp.mean(jnp.square(pred["boxes"] - boxes), -1) * valid).sum() / n
  bce = _bce_with_logits(pred["stop_logits"], stop_targets(num_parts, t))
  stop = (bce * valid).sum() / n
  return code_weight * code + box_weight * box + stop_weight * stop, {"code": code, "box": box, "stop": stop}


def _bce_with_logits(logits: Array, targets: Array) -> Array:
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def occupancy_loss(logits: Array, labels: Array, *, kind: str = "mse", mask: Array | None = None) -> Array:
  """Part auto-encoder loss, mean over (masked) points: ``mse`` (IM-NET / PQ-NET: ``(sigmoid(logit) - label)^2``) or
  ``bce`` (``binary cross-entropy`` on the logits). ``logits`` / ``labels`` [B, N] (labels 0/1), ``mask`` bool
  [B, N] or [B] (e.g. real parts, not padding)."""
  if kind not in OCCUPANCY_LOSSES:
    raise ValueError(f"occupancy_loss: kind={kind!r}; choose one of {OCCUPANCY_LOSSES}")
  labels = jnp.asarray(labels, jnp.float32)
  if logits.shape != labels.shape:
    raise ValueError(f"occupancy_loss: logits {logits.shape} and labels {labels.shape} must have the same shape")
  per = jnp.square(jax.nn.sigmoid(logits) - labels) if kind == "mse" else _bce_with_logits(logits, labels)
  if mask is None:
    return per.mean()
  m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32).reshape(jnp.shape(mask) + (1,) * (per.ndim - jnp.ndim(mask))),
                       per.shape)
  return (per * m).sum() / jnp.maximum(m.sum(), 1.0)


def num_parts_from_stop(stop_logits: Array, threshold: float = 0.5) -> Array:
  """int32 [B]: the generated length, 1 + the first step whose stop probability exceeds ``threshold`` (all T steps
  when none does), as PQ-NET's decoder stops."""
  stop = jax.nn.sigmoid(stop_logits) > threshold
  t = stop_logits.shape[-1]
  return jnp.where(stop.any(-1), jnp.argmax(stop, -1) + 1, t).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------------- assembly


def assemble(part_occupancy_fn: Callable[[Array], Array], boxes: Array, grid: int,
             num_parts: int | Array | None = None) -> Array:
  """Occupancy float32 [grid, grid, grid] of a shape assembled from its parts (module docstring).

  Args:
    part_occupancy_fn: ``local points [P, M, 3] -> occupancy [P, M]`` in [0, 1] (probabilities or 0/1): part ``p``'s
      occupancy at part-local points of ``[0, 1]^3`` (e.g. ``sigmoid`` of :meth:`PartAutoencoder.decode` of the
      decoded codes).
    boxes: [P, 6] ``(x0, y0, z0, x1, y1, z1)`` in ``[0, 1]^3``.
    grid: R; the voxel centres ``((i, j, k) + 0.5) / R`` are evaluated.
    num_parts: parts ``p >= num_parts`` are ignored (default: all P).

  A voxel centre ``c`` gets ``max_p occ_p((c - lo_p) / (hi_p - lo_p))`` over the parts whose closed box holds it
  (0 if none). Threshold the result (e.g. ``> 0.5``) for ``voxel_iou`` / point clouds.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  if boxes.ndim != 2 or boxes.shape[1] != BOX_DIM:
    raise ValueError(f"assemble: boxes must be [P, 6] (min corner, max corner), got {boxes.shape}; vmap over shapes")
  if grid < 1:
    raise ValueError(f"assemble: grid={grid} must be >= 1")
  p = boxes.shape[0]
  c = (jnp.arange(grid, dtype=jnp.float32) + 0.5) / grid
  pts = jnp.stack(jnp.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)  # [M, 3]
  lo, hi = boxes[:, None, :3], boxes[:, None, 3:]
  local = (pts[None] - lo) / jnp.maximum(hi - lo, 1e-6)  # [P, M, 3]
  inside = jnp.all((local >= 0.0) & (local <= 1.0), -1)
  if num_parts is not None:
    inside = inside & (jnp.arange(p)[:, None] < num_parts)
  occ = jnp.asarray(part_occupancy_fn(local), jnp.float32)
  if occ.shape != inside.shape:
    raise ValueError(f"assemble: part_occupancy_fn must map local points [P, M, 3] = {local.shape} to [P, M], got "
                     f"{occ.shape}")
  return jnp.where(inside, occ, 0.0).max(0).reshape(grid, grid, grid)


register("pqnet_part_ae", "generative")(lambda **kw: PartAutoencoder(**kw))
register("pqnet_seq2seq", "generative")(lambda **kw: PartSeq2Seq(**kw))
