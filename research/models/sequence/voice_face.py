"""Voice and face CNN encoders into one L2-normalised embedding space (seed 001 Q3, "Voice-Face Cross-modal
Matching and Retrieval": "cross-modal embeddings are learned with CNN-based networks ... with L2-Norm constraint").

* :class:`FaceEncoder`: images [B, H, W, 3] (uint8 or float in [0, 255]) -> [B, embed_dim], a 2-D CNN (3x3 convs,
  GroupNorm, ReLU, stages that start with a stride-2 conv), global average pooling, a linear projection and L2
  normalisation.
* :class:`VoiceEncoder`: log-mel spectrograms [B, T, M] -> [B, embed_dim], the same kind of 2-D CNN over
  (time, mel) with one input channel (the spectrogram is scaled by ``1 / input_scale``).
* :class:`VoiceFaceNet` (registered as ``voice_face_cnn``, family ``"sequence"``): both encoders;
  ``__call__((face, voice), *, train) -> (face_embedding, voice_embedding)``, or one modality through
  :meth:`VoiceFaceNet.embed_face` / :meth:`VoiceFaceNet.embed_voice`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import kaiming_normal_fan_in
from research.models.registry import register


def l2_normalize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """``x / max(|x|, eps)`` along the last axis (float32 norm)."""
  n = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
  return (x / jnp.maximum(n, eps).astype(x.dtype))


class ConvEmbedder(nn.Module):
  """[B, H, W, C] -> L2-normalised [B, embed_dim]: per width (stage), two 3x3 conv + GroupNorm + ReLU, the first with
  stride 2 (a 32x32 input is at 4x4 after 3 stages); global average pooling; Dense(embed_dim)."""
  widths: Sequence[int] = (16, 32, 64)
  embed_dim: int = 64
  groups: int = 4
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout / batch statistics
    x = x.astype(self.dtype)
    for s, width in enumerate(self.widths):
      for j in range(2):
        stride = 2 if j == 0 else 1
        x = nn.Conv(width, (3, 3), strides=stride, padding="SAME", kernel_init=kaiming_normal_fan_in,
                    dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.GroupNorm(num_groups=min(self.groups, width), dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return l2_normalize(x.astype(jnp.float32))


class FaceEncoder(nn.Module):
  """Face images [B, H, W, 3] in [0, 255] -> unit-norm [B, embed_dim] float32."""
  widths: Sequence[int] = (16, 32, 64)
  embed_dim: int = 64
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, face, *, train: bool = False):
    x = face.astype(jnp.float32) / 127.5 - 1.0
    return ConvEmbedder(self.widths, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x, train=train)


class VoiceEncoder(nn.Module):
  """Log-mel spectrograms [B, T, M] -> unit-norm [B, embed_dim] float32 (a 2-D CNN over time x mel)."""
  widths: Sequence[int] = (16, 32, 64)
  embed_dim: int = 64
  input_scale: float = 4.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, voice, *, train: bool = False):
    x = voice.astype(jnp.float32)[..., None] / self.input_scale
    return ConvEmbedder(self.widths, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x, train=train)


class VoiceFaceNet(nn.Module):
  """A face encoder and a voice encoder into one shared ``embed_dim``-d unit sphere."""
  widths: Sequence[int] = (16, 32, 64)
  embed_dim: int = 64
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.face_encoder = FaceEncoder(self.widths, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    self.voice_encoder = VoiceEncoder(self.widths, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, x, *, train: bool = False):
    """``x = (face [B, H, W, 3], voice [B', T, M])`` -> ``(face_emb [B, d], voice_emb [B', d])``."""
    face, voice = x
    return self.face_encoder(face, train=train), self.voice_encoder(voice, train=train)

  def embed_face(self, face, *, train: bool = False):
    return self.face_encoder(face, train=train)

  def embed_voice(self, voice, *, train: bool = False):
    return self.voice_encoder(voice, train=train)


@register("voice_face_cnn", family="sequence")
def voice_face_cnn(*, widths: Sequence[int] = (16, 32, 64), embed_dim: int = 64, dtype=jnp.float32,
                   param_dtype=jnp.float32) -> VoiceFaceNet:
  return VoiceFaceNet(widths=tuple(widths), embed_dim=embed_dim, dtype=dtype, param_dtype=param_dtype)


__all__ = ["ConvEmbedder", "FaceEncoder", "VoiceEncoder", "VoiceFaceNet", "l2_normalize", "voice_face_cnn"]
