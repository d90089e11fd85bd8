"""GAN networks of seed 003 §16 (DCGAN, WGAN, WGAN-GP, conditional GAN, BEGAN) for small images and 2-D points.

* :class:`DCGANGenerator` (Radford et al. 2016 §3): ``z`` [B, z_dim] -> Dense to a 4x4 map -> transposed 4x4 /
  stride-2 convolutions (``research.layers.upsample.ConvTranspose2x``: exact, fast backward) halving the width up
  to ``image_size`` -> 3x3 conv -> tanh, images in [-1, 1]; BatchNorm +
  ReLU between layers (``norm="batch"``, statistics in ``batch_stats``) or none. Conditional (Mirza & Osindero
  2014): the one-hot class is concatenated to ``z``.
* :class:`DCGANCritic`: 4x4 / stride-2 convolutions doubling the width down to 4x4 (LeakyReLU 0.2, no norm on the
  first layer), ``extra_layers`` 3x3 convolutions per scale (the "deeper critic" of Gulrajani et al. 2017 §5),
  ``norm`` none or layer (WGAN-GP's critic must not use BatchNorm: the penalty is per example), a linear output.
  Conditional: projection discriminator (Miyato & Koyama 2018) ``f(x) = w·h + <embed(y), h>``, or the one-hot
  class broadcast as extra input channels (``conditioning="concat"``).
* :class:`BEGANAutoencoder` / :class:`BEGANGenerator` (Berthelot et al. 2017 §3.3): the discriminator is an
  auto-encoder (3x3 conv + ELU blocks, stride-2 downsampling, a ``hidden``-dim bottleneck, nearest-neighbour
  upsampling); the generator has the decoder's architecture (+ tanh so samples are images).
* :class:`MLPGenerator` / :class:`MLPCritic`: ReLU MLPs for the 2-D Gaussian-mixture toys.

All ``__call__(x, [y,] *, train)``; ``dtype`` / ``param_dtype`` as everywhere in ``research.models``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.upsample import ConvTranspose2x
from research.models.registry import register

NORMS_G = ("batch", "none")
NORMS_D = ("none", "layer")
CONDITIONINGS = ("projection", "concat")


def _check_size(image_size: int, what: str) -> int:
  """Number of x2 stages between 4x4 and ``image_size`` (a power of two >= 8)."""
  if image_size < 8 or image_size & (image_size - 1):
    raise ValueError(f"{what}: image_size={image_size} must be a power of two >= 8 (8, 16, 32, 64)")
  return int(math.log2(image_size // 4))


def _one_hot(y, num_classes: int, dtype) -> jnp.ndarray:
  if y is None:
    raise ValueError(f"this model is conditional (num_classes={num_classes}): pass the labels y [B]")
  return jax.nn.one_hot(y, num_classes, dtype=dtype)


class DCGANGenerator(nn.Module):
  """``z`` [B, z_dim] (+ ``y`` [B] int when ``num_classes``) -> images [B, S, S, channels] in [-1, 1]."""
  image_size: int = 32
  channels: int = 1
  width: int = 64  # channels of the last hidden layer; doubled at every coarser scale
  norm: str = "batch"
  num_classes: int = 0  # > 0: conditional (one-hot concatenated to z)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, y=None, *, train: bool):
    if self.norm not in NORMS_G:
      raise ValueError(f"DCGANGenerator: norm={self.norm!r}; choose one of {NORMS_G}")
    stages = _check_size(self.image_size, "DCGANGenerator")
    h = z.astype(self.dtype)
    if self.num_classes:
      h = jnp.concatenate([h, _one_hot(y, self.num_classes, self.dtype)], -1)

    def act(x, name):
      if self.norm == "batch":
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=name)(x)
      return nn.relu(x)

    top = self.width * 2 ** (stages - 1)
    h = nn.Dense(4 * 4 * top, dtype=self.dtype, param_dtype=self.param_dtype, name="project")(h)
    h = act(h.reshape(h.shape[0], 4, 4, top), "bn_project")
    for i in range(stages):
      out = self.width * 2 ** (stages - 2 - i) if i < stages - 1 else self.width
      h = ConvTranspose2x(out, dtype=self.dtype, param_dtype=self.param_dtype, name=f"up{i}")(h)
      h = act(h, f"bn_up{i}")
    h = nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                name="to_image")(h)
    return jnp.tanh(h).astype(jnp.float32)


class DCGANCritic(nn.Module):
  """images [B, S, S, C] (+ ``y`` [B]) -> scores [B] (logits for GAN losses, critic values for WGAN)."""
  image_size: int = 32
  width: int = 64
  extra_layers: int = 0  # 3x3 stride-1 convolutions added at every scale (deeper critics)
  norm: str = "none"
  num_classes: int = 0
  conditioning: str = "projection"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, *, train: bool):
    del train  # no BatchNorm or dropout: the same function in training and evaluation
    if self.norm not in NORMS_D:
      raise ValueError(f"DCGANCritic: norm={self.norm!r}; choose one of {NORMS_D}")
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f"DCGANCritic: conditioning={self.conditioning!r}; choose one of {CONDITIONINGS}")
    stages = _check_size(self.image_size, "DCGANCritic")
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"DCGANCritic: images {x.shape} do not match image_size={self.image_size}")
    h = x.astype(self.dtype)
    onehot = _one_hot(y, self.num_classes, self.dtype) if self.num_classes else None
    if onehot is not None and self.conditioning == "concat":
      h = jnp.concatenate([h, jnp.broadcast_to(onehot[:, None, None], h.shape[:3] + onehot.shape[-1:])], -1)

    def act(h, first, name):
      if self.norm == "layer" and not first:
        h = nn.LayerNorm(reduction_axes=(-3, -2, -1), dtype=self.dtype, param_dtype=self.param_dtype, name=name)(h)
      return nn.leaky_relu(h, 0.2)

    for i in range(stages):
      h = nn.Conv(self.width * 2 ** i, (4, 4), strides=(2, 2), padding="SAME", dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"down{i}")(h)
      h = act(h, i == 0, f"ln_down{i}")
      for j in range(self.extra_layers):
        h = nn.Conv(self.width * 2 ** i, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"extra{i}_{j}")(h)
        h = act(h, False, f"ln_extra{i}_{j}")
    h = h.reshape(h.shape[0], -1)
    out = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="score")(h)[:, 0]
    if onehot is not None and self.conditioning == "projection":
      embed = nn.Dense(h.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="class_embedding")(onehot)  # rows of V: embed(y) = V^T onehot(y)
      out = out + jnp.sum(embed * h, -1)
    return out.astype(jnp.float32)


def _elu_convs(h, features: int, n: int, prefix: str, dtype, param_dtype):
  for j in range(n):
    h = nn.elu(nn.Conv(features, (3, 3), padding="SAME", dtype=dtype, param_dtype=param_dtype,
                       name=f"{prefix}_{j}")(h))
  return h


class BEGANDecoder(nn.Module):
  """``h`` [B, hidden] -> [B, S, S, channels]: Dense to 4x4 x ``width``, then (2 conv 3x3 + ELU,
  nearest x2 upsampling) per scale, a 3x3 conv to ``channels`` (BEGAN Fig. 1 decoder)."""
  image_size: int = 32
  channels: int = 1
  width: int = 64
  tanh: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    stages = _check_size(self.image_size, "BEGANDecoder")
    h = nn.Dense(4 * 4 * self.width, dtype=self.dtype, param_dtype=self.param_dtype, name="project")(h)
    h = h.reshape(h.shape[0], 4, 4, self.width)
    for i in range(stages):
      h = _elu_convs(h, self.width, 2, f"dec{i}", self.dtype, self.param_dtype)
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2 (a gather-free gradient)
    h = _elu_convs(h, self.width, 2, f"dec{stages}", self.dtype, self.param_dtype)
    h = nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                name="to_image")(h)
    return (jnp.tanh(h) if self.tanh else h).astype(jnp.float32)


class BEGANAutoencoder(nn.Module):
  """BEGAN's discriminator: images [B, S, S, C] -> reconstructions [B, S, S, C] (encoder: 3x3 conv + ELU blocks
  with widths ``width * (i + 1)``, stride-2 3x3 convolutions to downsample, Dense to ``hidden``)."""
  image_size: int = 32
  channels: int = 1
  width: int = 64
  hidden: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, *, train: bool):
    del train
    if y is not None:
      raise ValueError("BEGANAutoencoder is unconditional; use --loss=gan|nsgan|wgan|wgan_gp with --conditional")
    stages = _check_size(self.image_size, "BEGANAutoencoder")
    h = nn.elu(nn.Conv(self.width, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                       name="stem")(x.astype(self.dtype)))
    for i in range(stages):
      h = _elu_convs(h, self.width * (i + 1), 2, f"enc{i}", self.dtype, self.param_dtype)
      h = nn.elu(nn.Conv(self.width * (i + 2), (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"down{i}")(h))
    h = _elu_convs(h, self.width * (stages + 1), 2, f"enc{stages}", self.dtype, self.param_dtype)
    code = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="code")(h.reshape(h.shape[0], -1))
    return BEGANDecoder(self.image_size, self.channels, self.width, tanh=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="decoder")(code)


class BEGANGenerator(nn.Module):
  """``z`` [B, z_dim] -> images [B, S, S, C] in [-1, 1]: the decoder architecture + tanh."""
  image_size: int = 32
  channels: int = 1
  width: int = 64
  num_classes: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, y=None, *, train: bool):
    del train
    if self.num_classes or y is not None:
      raise ValueError("BEGANGenerator is unconditional; use --loss=gan|nsgan|wgan|wgan_gp with --conditional")
    return BEGANDecoder(self.image_size, self.channels, self.width, tanh=True, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="decoder")(z)


class MLPGenerator(nn.Module):
  """``z`` [B, z_dim] -> points [B, out_dim]: ``depth`` ReLU layers of ``hidden`` units, linear output."""
  hidden: int = 128
  depth: int = 3
  out_dim: int = 2
  num_classes: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, y=None, *, train: bool):
    del train
    h = z.astype(self.dtype)
    if self.num_classes:
      h = jnp.concatenate([h, _one_hot(y, self.num_classes, self.dtype)], -1)
    for i in range(self.depth):
      h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i}")(h))
    return nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h).astype(jnp.float32)


class MLPCritic(nn.Module):
  """points [B, D] -> scores [B]: ``depth`` ReLU layers of ``hidden`` units (optionally LayerNorm), linear output."""
  hidden: int = 128
  depth: int = 3
  norm: str = "none"
  num_classes: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, *, train: bool):
    del train
    if self.norm not in NORMS_D:
      raise ValueError(f"MLPCritic: norm={self.norm!r}; choose one of {NORMS_D}")
    h = x.astype(self.dtype)
    if self.num_classes:
      h = jnp.concatenate([h, _one_hot(y, self.num_classes, self.dtype)], -1)
    for i in range(self.depth):
      h = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i}")(h)
      if self.norm == "layer":
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"ln{i}")(h)
      h = nn.relu(h)
    return nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)[:, 0].astype(jnp.float32)


register("dcgan_generator", "generative")(lambda **kw: DCGANGenerator(**kw))
register("dcgan_critic", "generative")(lambda **kw: DCGANCritic(**kw))
register("began_autoencoder", "generative")(lambda **kw: BEGANAutoencoder(**kw))
register("began_generator", "generative")(lambda **kw: BEGANGenerator(**kw))
register("mlp_generator", "generative")(lambda **kw: MLPGenerator(**kw))
register("mlp_critic", "generative")(lambda **kw: MLPCritic(**kw))
