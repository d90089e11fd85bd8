"""EDIT networks (issue 15, seed 000: "Exemplar-Domain aware Image-to-image Translation"): one generator that
translates an image into the domain AND style of an exemplar image, and one multi-domain discriminator.

* :class:`EDITGenerator` ``(x_content [B, S, S, C], exemplar [B, S, S, C], *, train) -> [B, S, S, channels]`` in
  [-1, 1], built from three parts (MUNIT-style, Huang et al. 2018 §3, as EDIT's shared encoder / exemplar-driven
  decoder):

  - content encoder (:meth:`EDITGenerator.encode_content`): 3x3 conv (``width``) + instance norm + ReLU, two 4x4 /
    stride-2 convolutions (``2 width``, ``4 width``; IN + ReLU), ``res_blocks`` residual blocks (two 3x3 convs with
    IN) -> the content code ``[B, S/4, S/4, 4 width]``. Instance norm removes per-image feature statistics, so the
    code carries the layout, not the style.
  - style encoder (:meth:`EDITGenerator.encode_style`): 3x3 conv + three 4x4 / stride-2 convolutions with ReLU and
    NO normalisation (the statistics are the style), global average pooling, a Dense layer -> the style code
    ``[B, style_dim]`` of the exemplar.
  - decoder (:meth:`EDITGenerator.decode`): an MLP maps the style code to one AdaIN ``(scale, bias)`` pair per
    decoder layer (:data:`adain_channels`); ``res_blocks`` residual blocks whose two 3x3 convs are each followed by
    AdaIN, then two stride-2 transposed convolutions (``ConvTranspose2x``; their output phases give the decoder the
    absolute pixel position mod 4 that periodic textures need) each followed by AdaIN + ReLU, a 3x3 conv to
    ``channels`` and tanh. The exemplar's statistics are injected into EVERY decoder layer.

* :func:`adain` (Huang & Belongie 2017, Eq. 8): ``scale * (x - mean_hw(x)) / std_hw(x) + bias`` per example and
  channel; the output's per-channel spatial mean is ``bias`` and its std ``scale`` (up to ``eps``). The MLP
  predicts ``scale = 1 + s`` so that a zero-initialised ``s`` starts at plain instance normalisation.

* :class:`MultiDomainDiscriminator` ``(x [B, S, S, C], *, train) -> logits [B, S/4, S/4, num_domains]``: a
  PatchGAN-like stack (4x4 / stride-2 convs ``width``, ``2 width`` with LeakyReLU 0.2, a 3x3 conv ``4 width``,
  a 3x3 conv to ``num_domains`` maps). Output map ``d`` judges real vs fake IN DOMAIN ``d`` (StarGAN / EDIT's
  multi-branch discriminator): a real image of domain ``d`` is only a positive for output ``d``. No normalisation,
  so examples are independent (R1 penalties are per example).

All ``__call__(..., *, train)``; ``dtype`` / ``param_dtype`` as everywhere in ``research.models``; no BatchNorm
(``train`` changes nothing).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.upsample import ConvTranspose2x
from research.models.registry import register


def instance_norm(x, eps: float = 1e-5):
  """Per example and channel: ``(x - mean_hw) / sqrt(var_hw + eps)``; x [B, H, W, C] (statistics in float32)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  var = jnp.var(x32, axis=(1, 2), keepdims=True)
  return ((x32 - mean) * jnp.reciprocal(jnp.sqrt(var + eps))).astype(x.dtype)


def adain(x, scale, bias, eps: float = 1e-5):
  """Adaptive instance normalisation: x [B, H, W, C], scale / bias [B, C] -> [B, H, W, C] whose per-channel spatial
  mean is ``bias`` and standard deviation ``|scale|`` (times ``sqrt(var / (var + eps))``)."""
  return instance_norm(x, eps) * scale[:, None, None, :].astype(x.dtype) + bias[:, None, None, :].astype(x.dtype)


def _check_image(x, size_multiple: int, what: str):
  if x.ndim != 4:
    raise ValueError(f"{what}: expected images [B, H, W, C], got shape {x.shape}")
  if x.shape[1] % size_multiple or x.shape[2] % size_multiple:
    raise ValueError(f"{what}: image size {x.shape[1:3]} must be a multiple of {size_multiple}")


class EDITGenerator(nn.Module):
  """Content encoder + exemplar (style) encoder + AdaIN decoder, see the module docstring."""
  channels: int = 3
  width: int = 16
  res_blocks: int = 2
  style_dim: int = 32
  mlp_hidden: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, features, kernel, stride=1):
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME", dtype=self.dtype,
                   param_dtype=self.param_dtype)

  @property
  def adain_channels(self) -> tuple[int, ...]:
    """Channels of the decoder's AdaIN layers in order: 2 per residual block (``4 width``), then the two
    upsampling layers (``2 width``, ``width``)."""
    return (4 * self.width,) * (2 * self.res_blocks) + (2 * self.width, self.width)

  def setup(self):
    if self.res_blocks < 0 or self.width <= 0 or self.style_dim <= 0 or self.mlp_hidden <= 0:
      raise ValueError(f"EDITGenerator: width={self.width}, style_dim={self.style_dim}, mlp_hidden={self.mlp_hidden} "
                       f"must be positive and res_blocks={self.res_blocks} >= 0")
    w = self.width
    self.c_stem = self._conv(w, 3)
    self.c_down = [self._conv(w * 2 ** (i + 1), 4, 2) for i in range(2)]
    self.c_res = [(self._conv(4 * w, 3), self._conv(4 * w, 3)) for _ in range(self.res_blocks)]
    self.s_stem = self._conv(w, 3)
    self.s_down = [self._conv(w * 2 ** min(i + 1, 2), 4, 2) for i in range(3)]
    self.s_code = nn.Dense(self.style_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    self.mlp = [nn.Dense(self.mlp_hidden, dtype=self.dtype, param_dtype=self.param_dtype) for _ in range(2)]
    self.mlp_out = nn.Dense(2 * sum(self.adain_channels), dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal"))
    self.d_res = [(self._conv(4 * w, 3), self._conv(4 * w, 3)) for _ in range(self.res_blocks)]
    self.d_up = [ConvTranspose2x(f, dtype=self.dtype, param_dtype=self.param_dtype) for f in (2 * w, w)]
    self.d_out = self._conv(self.channels, 3)

  def encode_content(self, x):
    """images [B, S, S, C] -> content code [B, S/4, S/4, 4 width]."""
    _check_image(x, 4, "EDITGenerator.encode_content")
    h = nn.relu(instance_norm(self.c_stem(x.astype(self.dtype))))
    for conv in self.c_down:
      h = nn.relu(instance_norm(conv(h)))
    for a, b in self.c_res:
      h = h + instance_norm(b(nn.relu(instance_norm(a(h)))))
    return h

  def encode_style(self, exemplar):
    """exemplar images [B, S, S, C] -> style code [B, style_dim] (float32)."""
    _check_image(exemplar, 8, "EDITGenerator.encode_style")
    h = nn.relu(self.s_stem(exemplar.astype(self.dtype)))
    for conv in self.s_down:
      h = nn.relu(conv(h))
    return self.s_code(jnp.mean(h, axis=(1, 2))).astype(jnp.float32)

  def adain_params(self, style):
    """style code [B, style_dim] -> list of ``(scale [B, C_l], bias [B, C_l])``, one per :data:`adain_channels`."""
    h = style.astype(self.dtype)
    for layer in self.mlp:
      h = nn.relu(layer(h))
    p = self.mlp_out(h).astype(jnp.float32)
    out, i = [], 0
    for c in self.adain_channels:
      out.append((1.0 + p[:, i:i + c], p[:, i + c:i + 2 * c]))
      i += 2 * c
    return out

  def decode(self, content, style):
    """content code [B, S/4, S/4, 4 width] + style code [B, style_dim] -> images [B, S, S, channels] in [-1, 1]."""
    params = iter(self.adain_params(style))
    h = content
    for a, b in self.d_res:
      r = nn.relu(adain(a(h), *next(params)))
      h = h + adain(b(r), *next(params))
    for up in self.d_up:
      h = nn.relu(adain(up(h), *next(params)))
    return jnp.tanh(self.d_out(h)).astype(jnp.float32)

  def __call__(self, x_content, exemplar, *, train: bool):
    del train  # no BatchNorm or dropout
    return self.decode(self.encode_content(x_content), self.encode_style(exemplar))


class MultiDomainDiscriminator(nn.Module):
  """images [B, S, S, C] -> patch logits [B, S/4, S/4, num_domains]; map ``d`` judges real/fake in domain ``d``."""
  num_domains: int = 3
  width: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    if self.num_domains < 2:
      raise ValueError(f"MultiDomainDiscriminator: num_domains={self.num_domains} must be >= 2")
    _check_image(x, 4, "MultiDomainDiscriminator")
    h = x.astype(self.dtype)
    for i, (f, k, s) in enumerate(((self.width, 4, 2), (2 * self.width, 4, 2), (4 * self.width, 3, 1))):
      h = nn.leaky_relu(nn.Conv(f, (k, k), strides=(s, s), padding="SAME", dtype=self.dtype,
                                param_dtype=self.param_dtype, name=f"conv{i}")(h), 0.2)
    out = nn.Conv(self.num_domains, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                  name="domain_logits")(h)
    return out.astype(jnp.float32)


register("edit_generator", "generative")(lambda **kw: EDITGenerator(**kw))
register("edit_discriminator", "generative")(lambda **kw: MultiDomainDiscriminator(**kw))
