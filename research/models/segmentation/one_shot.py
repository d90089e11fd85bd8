"""OSLSM: one-shot semantic segmentation by a learned logistic-regression layer (Shaban et al., BMVC 2017, §4).

Two branches (paper Figure 2):

* the **conditioning branch** ``g`` reads ONE annotated support image -- the image masked by the binary label of the
  new class (§4.1: "we mask the image with its label") -- and outputs the parameters ``theta = {w [D], b}`` of a
  pixel-wise logistic-regression layer (optionally through the paper's weight hashing, §4.1: ``g`` emits ``K``
  numbers, ``theta_j = xi_j * z[h(j)]`` with a fixed random bucket ``h(j)`` and sign ``xi_j``);
* the **segmentation branch** is an FCN giving strided dense features ``f(x) [h, w, D]`` of the query (the paper's
  conv-fc7 of FCN-32s; here a small VGG-like stack whose "fc6" is a dilated 3x3 conv and "fc7" a 1x1 conv);
* the mask is ``sigmoid(<w, f(x)> + b)`` upsampled bilinearly to the input size (§4.2).

``OneShotSegmenter(...)(support_image [B, H, W, 3], support_mask [B, H, W], query_image [B, H, W, 3], *, train)``
returns the upsampled logits ``[B, H, W]``; ``condition`` gives ``(w [B, D], b [B])`` and ``features`` the strided
query features ``[B, H / s, W / s, D]`` (``s = 2 ** (len(widths) - 1)``).

:class:`FCNSegmenter` is the same segmentation branch with a 1x1 softmax classifier: a normal semantic segmenter
(trained on the training classes only) whose features the non-learned baselines (1-NN, logistic regression fitted
on the support) use.

Deviations (CPU scale, no ImageNet weights): branches are trained from scratch with GroupNorm; ``g`` ends with
global average pooling (not VGG's flatten + fc, so it sees the object wherever it is); with ``mask_channel=True``
(default) the binary mask is a 4th input channel of ``g`` besides the masked image -- on ``shapes_scenes`` a gray
object masked onto the gray mean (0 after normalisation) would otherwise vanish; the paper feeds the 3-channel
masked image only because its ``g`` reuses an ImageNet VGG.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.common import kaiming_normal_fan_in
from research.models.registry import register

Dtype = Any


def bilinear_matrix(size_in: int, factor: int) -> np.ndarray:
  """float32 [size_in * factor, size_in]: bilinear upsampling by ``factor`` with half-pixel centres
  (``align_corners=False``): output pixel ``o`` samples input coordinate ``(o + 0.5) / factor - 0.5`` clamped to
  ``[0, size_in - 1]`` (edge pixels repeat)."""
  if size_in < 1 or factor < 1:
    raise ValueError(f"bilinear_matrix: size_in={size_in} and factor={factor} must be >= 1")
  out = size_in * factor
  src = np.clip((np.arange(out) + 0.5) / factor - 0.5, 0.0, size_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((out, size_in), np.float64)
  m[np.arange(out), lo] += 1.0 - frac
  m[np.arange(out), hi] += frac
  return m.astype(np.float32)


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """x [B, h, w] or [B, h, w, C] -> [B, h * factor, w * factor(, C)] by :func:`bilinear_matrix` on each axis."""
  if factor == 1:
    return x
  if x.ndim not in (3, 4):
    raise ValueError(f"upsample_bilinear: x must be [B, h, w] or [B, h, w, C], got {x.shape}")
  mh = jnp.asarray(bilinear_matrix(x.shape[1], factor), x.dtype)
  mw = jnp.asarray(bilinear_matrix(x.shape[2], factor), x.dtype)
  if x.ndim == 3:
    return jnp.einsum("oh,bhw,pw->bop", mh, x, mw)
  return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)


def hashing_table(num_params: int, num_buckets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Weight hashing (Chen et al. 2015; OSLSM §4.1): bucket ``h`` int32 [num_params] in ``[0, num_buckets)`` and
  sign ``xi`` float32 [num_params] in {-1, +1}, fixed by ``seed``."""
  rng = np.random.default_rng([seed, num_params, num_buckets])
  return (rng.integers(0, num_buckets, num_params).astype(np.int32),
          rng.choice(np.array([-1.0, 1.0], np.float32), num_params))


class ConvStages(nn.Module):
  """VGG-like stages: ``convs_per_stage`` x (3x3 conv + GroupNorm + ReLU) per width, 2x2 max pooling between stages.
  x [B, H, W, C] -> [B, H / s, W / s, widths[-1]] with ``s = 2 ** (len(widths) - 1)``."""
  widths: Sequence[int] = (16, 32, 64)
  convs_per_stage: int = 2
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # GroupNorm only: train and eval apply are the same function
    for s, width in enumerate(self.widths):
      for _ in range(self.convs_per_stage):
        x = nn.Conv(width, (3, 3), padding="SAME", kernel_init=kaiming_normal_fan_in, dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)
        x = nn.GroupNorm(num_groups=min(self.groups, width), dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.relu(x)
      if s < len(self.widths) - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


class DenseFeatures(nn.Module):
  """The segmentation branch (§4.2): :class:`ConvStages`, then "fc6" (3x3 conv, dilation ``fc6_dilation``) and
  "fc7" (1x1 conv), each + GroupNorm + ReLU. x [B, H, W, 3] -> f(x) [B, H / s, W / s, feature_dim]."""
  widths: Sequence[int] = (16, 32, 64)
  convs_per_stage: int = 2
  feature_dim: int = 64
  fc6_dilation: int = 2
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = ConvStages(self.widths, self.convs_per_stage, self.groups, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="stages")(x, train=train)
    for name, k, d in (("fc6", 3, self.fc6_dilation), ("fc7", 1, 1)):
      x = nn.Conv(self.feature_dim, (k, k), padding="SAME", kernel_dilation=(d, d), kernel_init=kaiming_normal_fan_in,
                  dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)
      x = nn.GroupNorm(num_groups=min(self.groups, self.feature_dim), dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"{name}_norm")(x)
      x = nn.relu(x)
    return x


class ConditioningBranch(nn.Module):
  """``g`` (§4.1): masked support image [B, H, W, C] -> :class:`ConvStages` -> global average pool -> Dense(hidden)
  + ReLU -> Dense(out_dim) = [B, out_dim] (``theta`` itself, or the hashed vector ``z``)."""
  out_dim: int
  widths: Sequence[int] = (16, 32, 64)
  convs_per_stage: int = 2
  hidden: int = 128
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = ConvStages(self.widths, self.convs_per_stage, self.groups, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="stages")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x))
    # A small init of the last layer: theta starts near 0 (predictions near 0.5), as a logistic layer would.
    return nn.Dense(self.out_dim, dtype=jnp.float32, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.variance_scaling(0.1, "fan_in", "normal"), name="theta")(x)


def _check_images(name: str, x: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(f"{name} must be [B, H, W, C] images, got shape {x.shape}")


class OneShotSegmenter(nn.Module):
  """OSLSM (module docstring). Images are normalised floats; ``support_mask`` is 0/1 [B, H, W]; H and W must be
  multiples of the stride ``2 ** (len(widths) - 1)``. ``hash_dim > 0``: ``g`` outputs ``hash_dim`` numbers mapped to
  the ``feature_dim + 1`` parameters by :func:`hashing_table` (seed ``hash_seed``)."""
  widths: Sequence[int] = (16, 32, 64)
  cond_widths: Sequence[int] = (16, 32, 64)
  convs_per_stage: int = 2
  feature_dim: int = 64
  fc6_dilation: int = 2
  cond_hidden: int = 128
  hash_dim: int = 0
  hash_seed: int = 0
  mask_channel: bool = True
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def stride(self) -> int:
    return 2 ** (len(self.widths) - 1)

  def setup(self):
    if self.feature_dim < 1 or self.hash_dim < 0 or not self.widths or not self.cond_widths:
      raise ValueError(f"OneShotSegmenter: feature_dim={self.feature_dim} must be >= 1, hash_dim={self.hash_dim} "
                       f">= 0, widths={tuple(self.widths)} and cond_widths={tuple(self.cond_widths)} non-empty")
    self.features = DenseFeatures(self.widths, self.convs_per_stage, self.feature_dim, self.fc6_dilation,
                                  self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
    out = self.hash_dim if self.hash_dim else self.feature_dim + 1
    self.conditioning = ConditioningBranch(out, self.cond_widths, self.convs_per_stage, self.cond_hidden,
                                           self.groups, dtype=self.dtype, param_dtype=self.param_dtype)

  def support_input(self, support_image: jax.Array, support_mask: jax.Array) -> jax.Array:
    """The input of ``g``: image x mask [B, H, W, 3] (+ the mask as a 4th channel with ``mask_channel``)."""
    m = support_mask.astype(support_image.dtype)[..., None]
    x = support_image * m
    return jnp.concatenate([x, m], axis=-1) if self.mask_channel else x

  def condition(self, support_image: jax.Array, support_mask: jax.Array, *, train: bool = False
                ) -> tuple[jax.Array, jax.Array]:
    """``theta = g(S)``: w [B, D] and b [B] (float32) from the support image [B, H, W, 3] and mask [B, H, W]."""
    _check_images("support_image", support_image)
    if support_mask.shape != support_image.shape[:3]:
      raise ValueError(f"support_mask must be [B, H, W] = {support_image.shape[:3]}, got {support_mask.shape}")
    z = self.conditioning(self.support_input(support_image.astype(self.dtype), support_mask), train=train)
    if self.hash_dim:
      bucket, sign = hashing_table(self.feature_dim + 1, self.hash_dim, self.hash_seed)
      z = jnp.take(z, jnp.asarray(bucket), axis=-1) * jnp.asarray(sign)
    return z[:, :-1].astype(jnp.float32), z[:, -1].astype(jnp.float32)

  def dense_features(self, query_image: jax.Array, *, train: bool = False) -> jax.Array:
    """f(x) [B, H / s, W / s, D] of the query [B, H, W, 3]."""
    _check_images("query_image", query_image)
    h, w = query_image.shape[1:3]
    if h % self.stride or w % self.stride:
      raise ValueError(f"query_image size {h}x{w} must be a multiple of the stride {self.stride}")
    return self.features(query_image.astype(self.dtype), train=train)

  def __call__(self, support_image: jax.Array, support_mask: jax.Array, query_image: jax.Array, *,
               train: bool) -> jax.Array:
    """Upsampled logits [B, H, W] of the query mask (sigmoid > 0.5 <=> logit > 0)."""
    w, b = self.condition(support_image, support_mask, train=train)
    f = self.dense_features(query_image, train=train).astype(jnp.float32)
    logits = jnp.einsum("bhwd,bd->bhw", f, w) + b[:, None, None]
    return upsample_bilinear(logits, self.stride)


class FCNSegmenter(nn.Module):
  """:class:`DenseFeatures` + a 1x1 classifier over ``num_classes`` (background included), logits upsampled to the
  input size: [B, H, W, 3] -> [B, H, W, num_classes]. The parameter tree of ``features`` equals OSLSM's."""
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  convs_per_stage: int = 2
  feature_dim: int = 64
  fc6_dilation: int = 2
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def stride(self) -> int:
    return 2 ** (len(self.widths) - 1)

  def setup(self):
    self.features = DenseFeatures(self.widths, self.convs_per_stage, self.feature_dim, self.fc6_dilation,
                                  self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
    self.classifier = nn.Conv(self.num_classes, (1, 1), dtype=jnp.float32, param_dtype=self.param_dtype)

  def dense_features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    _check_images("images", images)
    return self.features(images.astype(self.dtype), train=train)

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    f = self.dense_features(images, train=train).astype(jnp.float32)
    return upsample_bilinear(self.classifier(f), self.stride)


@register("oslsm", family="dense")
def oslsm(**kwargs) -> OneShotSegmenter:
  """OSLSM (Shaban et al. 2017) at CPU scale; kwargs are :class:`OneShotSegmenter` fields."""
  return OneShotSegmenter(**kwargs)
