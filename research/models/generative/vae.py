"""The variational auto-encoder (Kingma & Welling 2014, seed 003 §4) and the feature CNN of the sample metrics.

* :class:`VAE`: MLP encoder ``q(z|x) = N(mu(x), diag exp(logvar(x)))`` and decoder ``p(x|z)`` over the flattened
  image, with Kingma & Welling's MNIST layout (one or more hidden layers of ``hidden`` tanh/ReLU units). The
  decoder returns Bernoulli logits (``likelihood="bernoulli"``: binary pixels) or Gaussian means with a learned
  per-pixel log-variance (``likelihood="gaussian"``). ``__call__(x, rng, *, train)`` returns
  ``(decoder output [B, D], mu [B, L], logvar [B, L])`` with ``z = mu + exp(logvar / 2) * eps`` (the
  reparameterisation trick, §2.4); ``encode`` / ``decode`` are exposed for sampling and the importance-weighted
  bound (``research.train.generative.VAETask``).
* :class:`FeatureCNN`: a small BatchNorm CNN classifier; its penultimate features (``features=True``) play the role
  of the Inception network in the Fréchet distance and the Inception-Score analogue on datasets without an
  ImageNet network (trained by ``research.methods.generative_experiment.feature_network``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.registry import register

LIKELIHOODS = ("bernoulli", "gaussian")
ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu}


class VAE(nn.Module):
  """images [B, H, W, C] (or [B, D]) -> (decoder output [B, D], mu [B, latent], logvar [B, latent])."""
  data_dim: int = 64  # D = H * W * C
  latent: int = 8
  hidden: int = 256
  depth: int = 1  # hidden layers in the encoder and in the decoder
  activation: str = "tanh"
  likelihood: str = "bernoulli"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.likelihood not in LIKELIHOODS:
      raise ValueError(f"VAE: likelihood={self.likelihood!r}; choose one of {LIKELIHOODS}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"VAE: activation={self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
    self.enc = [dense(self.hidden, f"enc{i}") for i in range(self.depth)]
    self.enc_mu, self.enc_logvar = dense(self.latent, "enc_mu"), dense(self.latent, "enc_logvar")
    self.dec = [dense(self.hidden, f"dec{i}") for i in range(self.depth)]
    self.dec_out = dense(self.data_dim, "dec_out")
    if self.likelihood == "gaussian":
      self.dec_logvar = self.param("dec_logvar", nn.initializers.zeros, (self.data_dim,), self.param_dtype)

  def encode(self, x):
    """x [B, ...] -> (mu [B, L], logvar [B, L])."""
    h = x.reshape(x.shape[0], -1).astype(self.dtype)
    if h.shape[-1] != self.data_dim:
      raise ValueError(f"VAE: inputs {x.shape} have {h.shape[-1]} values per example, data_dim={self.data_dim}")
    act = ACTIVATIONS[self.activation]
    for layer in self.enc:
      h = act(layer(h))
    return self.enc_mu(h).astype(jnp.float32), self.enc_logvar(h).astype(jnp.float32)

  def decode(self, z):
    """z [..., L] -> Bernoulli logits or Gaussian means [..., D]."""
    h = z.astype(self.dtype)
    act = ACTIVATIONS[self.activation]
    for layer in self.dec:
      h = act(layer(h))
    return self.dec_out(h).astype(jnp.float32)

  def decoder_logvar(self):
    """Per-pixel log-variance [D] of the Gaussian decoder."""
    if self.likelihood != "gaussian":
      raise ValueError("decoder_logvar: only the Gaussian decoder has a variance")
    return self.dec_logvar

  def __call__(self, x, rng, *, train: bool):
    del train
    mu, logvar = self.encode(x)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)
    if self.likelihood == "gaussian":
      self.decoder_logvar()  # creates the parameter at init
    return self.decode(z), mu, logvar


class FeatureCNN(nn.Module):
  """images [B, S, S, C] -> logits [B, num_classes] (``features=True``: the ``width * 4``-dim features before the
  classifier). Two 3x3 conv + BN + ReLU blocks per scale, two 2x2 max-pools, global average pooling."""
  num_classes: int = 10
  width: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, features: bool = False):
    h = x.astype(self.dtype)
    for i, w in enumerate((self.width, self.width * 2, self.width * 4)):
      for j in range(2):
        h = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"conv{i}_{j}")(h)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=f"bn{i}_{j}")(h))
      if i < 2 and h.shape[1] >= 4:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = jnp.mean(h, axis=(1, 2))
    if features:
      return h.astype(jnp.float32)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(h).astype(jnp.float32)


register("vae_mlp", "generative")(lambda **kw: VAE(**kw))
register("feature_cnn", "generative")(lambda **kw: FeatureCNN(**kw))
