"""PAG-Net: progressive attention-guided depth super-resolution (Bansal, Jonna & Sahay 2019), small linen version.

Bansal et al. 2019, §3 (architecture, Fig. 2 for x8): a DEPTH branch upsamples the low-resolution depth map in
x2 stages (``log2(scale)`` of them) built from dense residual blocks; a GUIDANCE branch extracts colour features of
the high-resolution image at every stage's resolution; an ATTENTION module turns the depth features into a
spatial map in [0, 1] (a sigmoid) that gates the guidance features before they are fused with the depth
features, so only colour structure the depth supports (depth edges) passes and colour texture on smooth surfaces
is suppressed (the texture-copying artefact of naive guidance); the network predicts a residual added to the
bicubic upsampling of the input (global residual learning).

Here (channels-last, ``[B, H, W, C]``):

* ``depth_lr`` [B, h, w, 1] (standardised depth) -> 3x3 conv to ``features`` channels;
* stage ``i`` (resolution ``h 2^i``): ``blocks_per_stage`` dense residual blocks (Zhang et al. 2018's RDB:
  ``block_layers`` 3x3 conv + ReLU layers of ``growth`` channels, each seeing the block input and every earlier
  layer, a 1x1 fusion back to ``features`` and a local residual), then x2 sub-pixel upsampling (3x3 conv to
  ``4 features`` + pixel shuffle), then -- guided only -- ``a = sigmoid(conv3x3(relu(conv3x3(x))))`` [B, 2h.., 1]
  from the depth features, ``x <- conv1x1([x, a * g_i])`` with ``g_i`` the guidance features at that resolution;
* guidance pyramid: two 3x3 conv + ReLU on the image [B, H, W, 3] (the last stage's ``g``), then a stride-2 3x3
  conv + ReLU per coarser stage;
* head: one more dense residual block, a 3x3 conv to 1 channel (small init), plus ``bicubic(depth_lr)``
  (``jax.image.resize(..., "cubic")``).

``guided=False`` is the same network without the guidance branch and the attention (the unguided baseline);
``attention=False`` keeps the guidance but fuses it ungated (the naive-guidance ablation). The call returns
``(depth [B, H, W, 1], aux)`` with ``aux = {"bicubic": [B, H, W, 1], "attention": (a_1, ..., a_n)}`` (empty
tuple when unguided or without attention). Loss (``research.train.depth_sr``): L1 on the prediction -- the
paper summary this follows does not name PAG-Net's loss; L1 is the usual choice of dense residual SR networks
(RDN, EDSR), and ``loss="l2"`` gives MSE.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.common import conv
from research.models import registry

Dtype = Any
SCALES = (2, 4, 8, 16)
# "dense" (dense prediction) is the family named for this model; fall back to "segmentation" while the registry's
# FAMILIES tuple does not list it yet.
FAMILY = "dense" if "dense" in registry.FAMILIES else "segmentation"
_head_init = nn.initializers.variance_scaling(0.01, "fan_in", "normal")


def pixel_shuffle(x: jnp.ndarray, factor: int) -> jnp.ndarray:
  """Sub-pixel rearrangement (Shi et al. 2016): [B, h, w, C f^2] -> [B, h f, w f, C]; output channel ``c`` at
  sub-position (i, j) is input channel ``(i f + j) C + c``."""
  b, h, w, c = x.shape
  if c % (factor * factor):
    raise ValueError(f"pixel_shuffle: {c} channels are not divisible by factor^2 = {factor * factor}")
  out = c // (factor * factor)
  x = x.reshape(b, h, w, factor, factor, out).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * factor, w * factor, out)


def bicubic_upsample(depth: jnp.ndarray, scale: int) -> jnp.ndarray:
  """[B, h, w, C] -> [B, h s, w s, C] by ``jax.image.resize(..., "cubic")`` (Keys a = -0.5, half-pixel centres)."""
  b, h, w, c = depth.shape
  return jax.image.resize(depth, (b, h * scale, w * scale, c), "cubic")


class DenseResidualBlock(nn.Module):
  """Residual dense block (Zhang et al. 2018, §3.2), PAG-Net's building block (Bansal et al. 2019, §3).

  [B, H, W, features] -> [B, H, W, features]."""
  features: int
  growth: int = 16
  layers: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    del train  # no BatchNorm / dropout: SR networks train without them
    feats = [x]
    for i in range(self.layers):
      y = conv(self.growth, 3, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True,
               kernel_init=nn.initializers.he_normal(), name=f"conv{i}")(jnp.concatenate(feats, axis=-1))
      feats.append(nn.relu(y))
    fused = conv(self.features, 1, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True,
                 kernel_init=nn.initializers.lecun_normal(), name="fuse")(jnp.concatenate(feats, axis=-1))
    return x + fused


class DepthAttention(nn.Module):
  """Spatial attention from depth features (Bansal et al. 2019, §3.2): [B, H, W, F] -> [B, H, W, 1] in [0, 1]."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    del train
    y = nn.relu(conv(self.features, 3, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True,
                     kernel_init=nn.initializers.he_normal(), name="conv0")(x))
    y = conv(1, 3, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True,
             kernel_init=nn.initializers.lecun_normal(), name="conv1")(y)
    return nn.sigmoid(y.astype(jnp.float32)).astype(self.dtype)


class PAGNet(nn.Module):
  """PAG-Net (Bansal et al. 2019, §3): ``(depth_lr [B, h, w, 1], image [B, h s, w s, 3]) -> (depth [B, h s, w s,
  1], aux)`` for ``scale`` s in {2, 4, 8, 16} (module docstring; ``image`` is ignored -- may be None -- when
  ``guided=False``)."""
  scale: int = 4
  features: int = 24
  growth: int = 16
  block_layers: int = 3
  blocks_per_stage: int = 1
  guided: bool = True
  attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def check(self) -> None:
    """ValueError naming the field for a bad setting."""
    if self.scale not in SCALES:
      raise ValueError(f"PAGNet: scale={self.scale}; progressive x2 stages need a scale in {SCALES}")
    for name in ("features", "growth", "block_layers", "blocks_per_stage"):
      if getattr(self, name) <= 0:
        raise ValueError(f"PAGNet: {name}={getattr(self, name)} must be positive")

  @property
  def num_stages(self) -> int:
    return int(round(math.log2(self.scale)))

  def _conv(self, features: int, kernel: int, name: str, strides: int = 1, kernel_init=None) -> nn.Conv:
    return conv(features, kernel, strides, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True,
                kernel_init=kernel_init or nn.initializers.he_normal(), name=name)

  def _drb(self, name: str) -> DenseResidualBlock:
    return DenseResidualBlock(self.features, self.growth, self.block_layers, dtype=self.dtype,
                              param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, depth_lr: jnp.ndarray, image: jnp.ndarray | None = None, *, train: bool
               ) -> tuple[jnp.ndarray, dict[str, Any]]:
    self.check()
    if depth_lr.ndim != 4 or depth_lr.shape[-1] != 1:
      raise ValueError(f"PAGNet: depth_lr must be [B, h, w, 1], got shape {depth_lr.shape}")
    b, h, w, _ = depth_lr.shape
    out_shape = (b, h * self.scale, w * self.scale)
    if self.guided and (image is None or image.ndim != 4 or image.shape[:3] != out_shape):
      raise ValueError(f"PAGNet (guided): image must be [B, h*scale, w*scale, C] = {out_shape + ('C',)} for "
                       f"depth_lr {depth_lr.shape} and scale={self.scale}, got "
                       f"{None if image is None else image.shape}")
    n = self.num_stages
    up = bicubic_upsample(depth_lr.astype(jnp.float32), self.scale)

    guidance: list[jnp.ndarray] = []
    if self.guided:
      g = nn.relu(self._conv(self.features, 3, "guide_in0")(image.astype(self.dtype)))
      g = nn.relu(self._conv(self.features, 3, "guide_in1")(g))
      guidance = [g]  # finest first
      for i in range(n - 1):
        g = nn.relu(self._conv(self.features, 3, f"guide_down{i}", strides=2)(g))
        guidance.append(g)
      guidance = guidance[::-1]  # coarsest (stage 1, 2h) first

    x = self._conv(self.features, 3, "depth_in", kernel_init=nn.initializers.lecun_normal())(depth_lr.astype(
        self.dtype))
    attention = []
    for i in range(n):
      for j in range(self.blocks_per_stage):
        x = self._drb(f"stage{i}_block{j}")(x, train=train)
      x = pixel_shuffle(self._conv(4 * self.features, 3, f"stage{i}_up", kernel_init=nn.initializers.lecun_normal()
                                   )(x), 2)
      if self.guided:
        g = guidance[i]
        if self.attention:
          a = DepthAttention(self.features // 2 or 1, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=f"stage{i}_attention")(x, train=train)
          attention.append(a)
          g = a * g
        x = self._conv(self.features, 1, f"stage{i}_fuse", kernel_init=nn.initializers.lecun_normal())(
            jnp.concatenate([x, g], axis=-1))
    x = self._drb("head_block")(x, train=train)
    residual = self._conv(1, 3, "head_out", kernel_init=_head_init)(x)
    return up + residual.astype(jnp.float32), {"bicubic": up, "attention": tuple(attention)}


@registry.register("pag_net", family=FAMILY)
def pag_net(**kwargs) -> PAGNet:
  """PAG-Net with colour guidance and depth-driven spatial attention (``PAGNet`` fields as keyword arguments)."""
  kwargs.pop("num_classes", None)
  model = PAGNet(guided=True, **kwargs)
  model.check()
  return model


@registry.register("depth_sr_unguided", family=FAMILY)
def depth_sr_unguided(**kwargs) -> PAGNet:
  """The same progressive dense-residual depth branch without the RGB branch and the attention."""
  kwargs.pop("num_classes", None)
  kwargs.pop("attention", None)
  model = PAGNet(guided=False, attention=False, **kwargs)
  model.check()
  return model


__all__ = ["DenseResidualBlock", "DepthAttention", "FAMILY", "PAGNet", "SCALES", "bicubic_upsample",
           "depth_sr_unguided", "pag_net", "pixel_shuffle"]
