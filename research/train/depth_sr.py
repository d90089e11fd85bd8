"""Colour-guided depth super-resolution (PAG-Net, Bansal et al. 2019, §3-§4) on the ONE loop.

* Data: ``shapes_rgbd`` scenes (``research.data.rgbd``) as in-memory arrays ``image`` uint8 [N, H, W, 3] and
  ``depth`` float32 [N, H, W, 1] (m). Training batches (:class:`DegradeTransform`, an ``ArrayBatches``
  transform): an optional random crop of ``crop`` px (offsets on the scale grid) and horizontal flip, then the
  low-resolution input ``depth_lr`` [B, h, w, 1] = ``rgbd.degrade`` of the (cropped) target: area or bicubic
  downsampling by ``scale`` plus Gaussian noise. Eval batches (:func:`eval_batches`): whole images, the same
  degradation with noise drawn once from a fixed seed, zero-padded rows marked by ``valid``.
* :class:`DepthSRTask`: a registered dense model (``pag_net`` / ``depth_sr_unguided``) on standardised inputs
  (depth ``(d - depth_mean) / depth_std``, image ``(x / 255 - 0.5) / 0.25``), output back in metres; loss L1 on the
  standardised depth (the PAG-Net summary names no loss; L1 as in dense residual SR networks, ``loss="l2"`` for
  MSE); Adam with linear warmup and a cosine decay over ``num_steps``.
* Eval (``research.train.dense_metrics.squared_error_sum``, sums over devices): ``rmse`` of the network and
  ``bicubic_rmse`` of ``jax.image.resize(depth_lr, "cubic")`` in METRES on the same batches, also restricted to
  ``edge`` pixels (within ``band`` px of a depth edge of the target: edge blurring) and ``texture`` pixels (on a
  colour edge of the image but farther than ``band`` px from any depth edge: texture copying); ``gain`` is
  ``1 - rmse / bicubic_rmse``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import rgbd
from research.models import registry
from research.models.segmentation import depth_sr as depth_sr_models  # noqa: F401  (registers the models)
from research.train import dense_metrics
from research.train import task as task_lib

IMAGE_MEAN, IMAGE_STD = 0.5, 0.25  # image: uint8 -> (x / 255 - IMAGE_MEAN) / IMAGE_STD
LOSSES = ("l1", "l2")
REGIONS = ("all", "edge", "texture")


# ------------------------------------------------------------------------------------------------ data


class DegradeTransform:
  """``ArrayBatches`` transform: ``{'image' [B, H, W, 3], 'depth' [B, H, W, 1]}`` -> the same cropped to
  ``crop`` (0: no crop; offsets multiples of ``scale``) and flipped left-right with probability 1/2 (``flip``),
  plus ``depth_lr`` [B, c/s, c/s, 1] (``rgbd.degrade`` with ``method``, ``noise_std`` m)."""

  def __init__(self, scale: int, *, method: str = "area", noise_std: float = 0.0, crop: int = 0, flip: bool = True):
    rgbd.check_scale(scale)
    if method not in rgbd.DEGRADATIONS:
      raise ValueError(f"--degradation={method!r}; choose one of {rgbd.DEGRADATIONS}")
    if noise_std < 0:
      raise ValueError(f"--noise_std={noise_std} must be >= 0 (metres)")
    if crop < 0 or crop % scale:
      raise ValueError(f"--crop={crop} must be 0 (whole images) or a positive multiple of --scale={scale}")
    self.scale, self.method, self.noise_std, self.crop, self.flip = scale, method, noise_std, crop, flip

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, depth = batch["image"], batch["depth"]
    b, h, w = depth.shape[:3]
    if self.crop:
      if self.crop > min(h, w):
        raise ValueError(f"--crop={self.crop} exceeds the image size {h}x{w}")
      ys = rng.integers(0, (h - self.crop) // self.scale + 1, b) * self.scale
      xs = rng.integers(0, (w - self.crop) // self.scale + 1, b) * self.scale
      rows = (ys[:, None] + np.arange(self.crop))[:, :, None]
      cols = (xs[:, None] + np.arange(self.crop))[:, None, :]
      idx = np.arange(b)[:, None, None]
      image, depth = image[idx, rows, cols], depth[idx, rows, cols]
    if self.flip:
      flip = rng.random(b) < 0.5
      image = np.where(flip[:, None, None, None], image[:, :, ::-1], image)
      depth = np.where(flip[:, None, None, None], depth[:, :, ::-1], depth)
    lr = rgbd.degrade(depth, self.scale, method=self.method, noise_std=self.noise_std, rng=rng)
    return {"image": np.ascontiguousarray(image), "depth": np.ascontiguousarray(depth, np.float32), "depth_lr": lr}


def eval_batches(arrays: Mapping[str, np.ndarray], *, scale: int, global_batch_size: int, method: str = "area",
                 noise_std: float = 0.0, seed: int = 0):
  """A callable returning one pass over ``arrays`` (``image`` [N, H, W, 3], ``depth`` [N, H, W, 1]) in this
  process's rows of zero-padded global batches ``{'image', 'depth', 'depth_lr', 'valid'}``; the low-resolution
  inputs (and their noise, from ``np.random.default_rng(seed)``) are made once, so every run sees the same."""
  rgbd.check_scale(scale, arrays["depth"].shape[1:3])
  lr = rgbd.degrade(arrays["depth"], scale, method=method, noise_std=noise_std, rng=np.random.default_rng(seed))
  data = {"image": arrays["image"], "depth": arrays["depth"].astype(np.float32), "depth_lr": lr}
  n = len(lr)
  if global_batch_size % jax.process_count():
    raise ValueError(f"eval batch {global_batch_size} is not divisible by {jax.process_count()} processes")
  local = global_batch_size // jax.process_count()
  p = jax.process_index()

  def one_pass():
    for start in range(0, n, global_batch_size):
      rows = np.arange(start, start + global_batch_size)
      valid = rows < n
      rows = np.where(valid, rows, 0)[p * local:(p + 1) * local]
      batch = {k: v[rows] for k, v in data.items()}
      batch["valid"] = valid[p * local:(p + 1) * local].astype(np.float32)
      for k in ("image", "depth", "depth_lr"):  # padding rows are zeros
        batch[k] = batch[k] * batch["valid"].reshape((-1,) + (1,) * (batch[k].ndim - 1)).astype(batch[k].dtype)
      yield batch

  return one_pass


# ------------------------------------------------------------------------------------------ eval helpers


def _neighbour_edges(diff_v: jax.Array, diff_h: jax.Array) -> jax.Array:
  """bool [B, H, W]: pixels with a marked vertical (diff_v [B, H-1, W]) or horizontal (diff_h [B, H, W-1]) pair."""
  v = jnp.pad(diff_v, ((0, 0), (1, 0), (0, 0))) | jnp.pad(diff_v, ((0, 0), (0, 1), (0, 0)))  # lower | upper pixel
  h = jnp.pad(diff_h, ((0, 0), (0, 0), (1, 0))) | jnp.pad(diff_h, ((0, 0), (0, 0), (0, 1)))  # right | left pixel
  return v | h


def depth_edge_mask(depth: jax.Array, threshold: float) -> jax.Array:
  """bool [B, H, W]: pixels with a 4-neighbour whose depth differs by more than ``threshold``; depth [B, H, W, 1]
  (the device twin of ``rgbd_render.depth_edges``)."""
  d = depth[..., 0].astype(jnp.float32)
  return _neighbour_edges(jnp.abs(d[:, 1:] - d[:, :-1]) > threshold, jnp.abs(d[:, :, 1:] - d[:, :, :-1]) > threshold)


def colour_edge_mask(image: jax.Array, threshold: float) -> jax.Array:
  """bool [B, H, W]: pixels with a 4-neighbour whose colour differs by more than ``threshold`` in some channel
  (uint8 units); image [B, H, W, 3]."""
  x = image.astype(jnp.float32)
  dv = jnp.max(jnp.abs(x[:, 1:] - x[:, :-1]), axis=-1) > threshold
  dh = jnp.max(jnp.abs(x[:, :, 1:] - x[:, :, :-1]), axis=-1) > threshold
  return _neighbour_edges(dv, dh)


def dilate(mask: jax.Array, radius: int) -> jax.Array:
  """bool [B, H, W] dilated by a (2 radius + 1)^2 square."""
  if radius <= 0:
    return mask
  k = 2 * radius + 1
  return jax.lax.reduce_window(mask.astype(jnp.float32), 0.0, jax.lax.max, (1, k, k), (1, 1, 1), "SAME") > 0


def region_masks(depth: jax.Array, image: jax.Array, *, edge_threshold: float, colour_threshold: float,
                 band: int) -> dict[str, jax.Array]:
  """float32 [B, H, W, 1] masks of the eval regions (module docstring): ``all``, ``edge`` (within ``band`` px of a
  depth edge of ``depth`` [B, H, W, 1]) and ``texture`` (on a colour edge of ``image`` [B, H, W, 3], farther than
  ``band`` px from every depth edge)."""
  near_edge = dilate(depth_edge_mask(depth, edge_threshold), band)
  texture = colour_edge_mask(image, colour_threshold) & ~near_edge
  return {"all": jnp.ones(depth.shape, jnp.float32), "edge": near_edge[..., None].astype(jnp.float32),
          "texture": texture[..., None].astype(jnp.float32)}


# ------------------------------------------------------------------------------------------------ the task


def _check_batch(batch, scale: int) -> tuple[int, int]:
  shape = tuple(batch["depth"].shape)
  if len(shape) != 4 or shape[-1] != 1:
    raise ValueError(f"batch['depth'] must be [B, H, W, 1], got shape {shape}")
  rgbd.check_scale(scale, shape[1:3])
  want_lr = (shape[0], shape[1] // scale, shape[2] // scale, 1)
  if tuple(batch["depth_lr"].shape) != want_lr:
    raise ValueError(f"batch['depth_lr'] must be {want_lr} (depth / --scale={scale}), got "
                     f"{tuple(batch['depth_lr'].shape)}")
  if tuple(batch["image"].shape) != shape[:3] + (3,):
    raise ValueError(f"batch['image'] must be {shape[:3] + (3,)}, got {tuple(batch['image'].shape)}")
  return shape[1], shape[2]


@dataclasses.dataclass(eq=False)
class DepthSRTask(task_lib.Task):
  """Depth super-resolution by ``scale`` with the registered model ``model`` (module docstring)."""
  model: str = "pag_net"
  scale: int = 4
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: float = 1e-3
  num_steps: int = 1000
  warmup_steps: int = 0
  weight_decay: float = 0.0
  loss_type: str = "l1"
  depth_mean: float = 3.0
  depth_std: float = 1.5
  edge_threshold: float = 0.1
  colour_threshold: float = 40.0
  band: int = 2

  def __post_init__(self):
    rgbd.check_scale(self.scale)
    if self.loss_type not in LOSSES:
      raise ValueError(f"--loss={self.loss_type!r}; choose one of {LOSSES}")
    if self.depth_std <= 0 or self.learning_rate <= 0 or self.num_steps <= 0:
      raise ValueError(f"depth_std={self.depth_std}, learning_rate={self.learning_rate} and num_steps="
                       f"{self.num_steps} must be positive")
    self.net = registry.create(self.model, scale=self.scale, **dict(self.model_kwargs))

  @property
  def guided(self) -> bool:
    return bool(getattr(self.net, "guided", True))

  def predict(self, params, batch, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """``(depth [B, H, W, 1] m, aux)``: the network on standardised inputs, de-standardised (aux: ``bicubic`` in m,
    ``attention`` maps)."""
    lr = (batch["depth_lr"].astype(jnp.float32) - self.depth_mean) / self.depth_std
    image = (batch["image"].astype(jnp.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD if self.guided else None
    out, aux = self.net.apply({"params": params}, lr, image, train=train)
    aux = dict(aux, bicubic=aux["bicubic"] * self.depth_std + self.depth_mean)
    return out * self.depth_std + self.depth_mean, aux

  def init(self, rng, batch):
    """Parameters drawn with an ``rbg`` key made from ``rng`` (deterministic per seed and backend): XLA:CPU
    compiles this network's threefry-based initialisation in ~55 s of CPU time, the ``rbg`` one in ~10 s."""
    _check_batch(batch, self.scale)
    lr = jnp.zeros((1,) + tuple(batch["depth_lr"].shape[1:]), jnp.float32)
    image = jnp.zeros((1,) + tuple(batch["image"].shape[1:]), jnp.float32) if self.guided else None
    key = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
    return self.net.init(key, lr, image, train=False)["params"], {}

  def optimizer(self):
    schedule = optax.warmup_cosine_decay_schedule(0.0, self.learning_rate, max(self.warmup_steps, 1),
                                                  max(self.num_steps, self.warmup_steps + 1))
    if self.weight_decay:
      return optax.adamw(schedule, weight_decay=self.weight_decay)
    return optax.adam(schedule)

  def loss(self, params, model_state, batch, rng, *, train):
    pred, aux = self.predict(params, batch, train=train)
    err = (pred - batch["depth"].astype(jnp.float32)) / self.depth_std
    loss = jnp.mean(jnp.abs(err)) if self.loss_type == "l1" else jnp.mean(jnp.square(err))
    metrics = {"l1_m": jnp.mean(jnp.abs(err)) * self.depth_std,
               "rmse_m": jnp.sqrt(jnp.mean(jnp.square(err))) * self.depth_std,
               "bicubic_rmse_m": jnp.sqrt(jnp.mean(jnp.square(aux["bicubic"] - batch["depth"])))}
    return loss, (model_state, metrics)

  def eval_step(self, state, batch):
    pred, aux = self.predict(state.params, batch)
    target = batch["depth"].astype(jnp.float32)
    valid = batch["valid"].reshape(-1, 1, 1, 1)
    masks = region_masks(target, batch["image"], edge_threshold=self.edge_threshold,
                         colour_threshold=self.colour_threshold, band=self.band)
    sums = {"images": jnp.sum(batch["valid"])}
    for region, m in masks.items():
      w = m * valid
      sums[f"se_{region}"], sums[f"n_{region}"] = dense_metrics.squared_error_sum(pred, target, w)
      sums[f"bicubic_se_{region}"], _ = dense_metrics.squared_error_sum(aux["bicubic"], target, w)
    if aux["attention"]:
      a = aux["attention"][-1]  # the finest stage's map [B, H, W, 1]
      for region, m in masks.items():
        sums[f"attention_{region}"] = jnp.sum(a * m * valid)
    return sums, {}

  def eval_metrics(self, sums, gathered):
    del gathered
    out = {"images": float(sums["images"])}
    for region in REGIONS:
      prefix = "" if region == "all" else f"{region}_"
      out[f"{prefix}rmse"] = float(np.sqrt(dense_metrics.ratio(sums, f"se_{region}", f"n_{region}")))
      out[f"{prefix}bicubic_rmse"] = float(np.sqrt(dense_metrics.ratio(sums, f"bicubic_se_{region}",
                                                                         f"n_{region}")))
      out[f"{prefix}pixels"] = float(sums[f"n_{region}"])
      if f"attention_{region}" in sums:
        out[f"{prefix}attention"] = dense_metrics.ratio(sums, f"attention_{region}", f"n_{region}")
    out["gain"] = 1.0 - out["rmse"] / out["bicubic_rmse"] if out["bicubic_rmse"] > 0 else float("nan")
    return out

  def run_info(self):
    return {"task": "depth_sr", "model": self.model, "scale": self.scale}
