"""Multi-head self-attention for sequence encoders: the Transformer's (Vaswani et al., "Attention Is All You Need",
NeurIPS 2017, §3.2, §3.5) and TENER's direction- and distance-aware relative attention (Yan et al., "TENER: Adapting
Transformer Encoder for Named Entity Recognition", 2019, §3.2.2-§3.2.3), and the post-norm encoder built from them.

Vanilla (``relative=False``): ``Q, K, V = H W_q, H W_k, H W_v`` per head, ``A_{t,j} = Q_t^T K_j`` (divided by
``sqrt(d_k)`` when ``scaled``), positions enter only through absolute sinusoids added to the input
(:func:`absolute_position_encoding`, Vaswani Eq. in §3.5: ``PE(pos, 2i) = sin(pos / 10000^{2i/d})``,
``PE(pos, 2i+1) = cos(pos / 10000^{2i/d})``). The dot product of two such encodings depends on ``|t - j|`` only
(``PE_t^T PE_{t+k} = sum_i cos(c_i k)``): it knows distance but not direction (TENER §3.2.2, Eq. 13-15).

TENER (``relative=True``), per head of width ``d_k`` (TENER Eq. 16-19)::

  Q, K, V = H W_q, H_{d_k}, H W_v                         (16)  K: this head's d_k-slice of H, no W_k
  R_{t-j} = [..., sin((t-j) c_i), cos((t-j) c_i), ...]    (17)  c_i = 10000^{-2i/d_k}, i < d_k / 2
  A^rel_{t,j} = Q_t^T K_j + Q_t^T R_{t-j} + u^T K_j + v^T R_{t-j}   (18)  u, v in R^{d_k} learned (one per head)
  Attn(Q, K, V) = softmax(A^rel) V                          (19)

``R_{t-j}`` is NOT symmetric in the sign of ``t - j`` (``sin`` is odd), so ``Q_t^T R_{t-j}`` and ``v^T R_{t-j}``
tell a context word on the left from one on the right. §3.2.3: TENER does not divide by ``sqrt(d_k)``
(``scaled=False``, sharper attention, better for NER where few context words matter); ``scaled=True`` switches
the scaling back. Heads are concatenated and projected by ``W_o`` (Vaswani Eq. in §3.2.2).

Masks are boolean ``[B, T]`` (True = real token). Padded keys get the most negative finite logit, so they get
exactly zero weight whenever the row has a real key, and a fully padded row (a padding example) gets uniform
weights instead of NaN. Real outputs therefore do not depend on what padded positions hold.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def sinusoid(positions: Array, dim: int, dtype: Any = jnp.float32) -> Array:
  """Sinusoidal encodings of (possibly negative) ``positions [...]`` -> ``[..., dim]`` ``dtype``, interleaved
  ``[sin(p c_0), cos(p c_0), sin(p c_1), cos(p c_1), ...]`` with ``c_i = 10000^{-2i/dim}`` (Vaswani §3.5; TENER
  Eq. 17 with ``dim = d_k``). ``dim`` must be even."""
  if dim <= 0 or dim % 2:
    raise ValueError(f"sinusoid: dim={dim} must be a positive even number")
  freq = 10000.0 ** (-jnp.arange(0, dim, 2, dtype=dtype) / dim)  # c_i, [dim / 2]
  angle = jnp.asarray(positions, dtype)[..., None] * freq
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(angle.shape[:-1] + (dim,))


def absolute_position_encoding(length: int, dim: int, dtype: Any = jnp.float32) -> Array:
  """``PE [length, dim]``: :func:`sinusoid` of positions ``0 .. length-1`` (added to the vanilla encoder's input)."""
  return sinusoid(jnp.arange(length), dim, dtype)


def relative_position_encoding(length: int, dim: int, dtype: Any = jnp.float32) -> Array:
  """``R [length, length, dim]`` with ``R[t, j] = R_{t-j}`` (TENER Eq. 17): :func:`sinusoid` of the signed offset
  of the target ``t`` from the context ``j``."""
  pos = jnp.arange(length)
  return sinusoid(pos[:, None] - pos[None, :], dim, dtype)


def relative_attention_logits(q: Array, k: Array, r: Array, u: Array, v: Array) -> Array:
  """``A^rel [B, H, T, T]`` of TENER Eq. 18 (before any scaling).

  Args:
    q: ``[B, H, T, d_k]`` queries ``Q_t``; k: ``[B, H, T, d_k]`` keys ``K_j``.
    r: ``[T, T, d_k]`` relative encodings ``R_{t-j}`` (:func:`relative_position_encoding`).
    u, v: ``[H, d_k]`` learned biases.
  Returns:
    ``A[b, h, t, j] = Q_t.K_j + Q_t.R_{t-j} + u.K_j + v.R_{t-j}``, computed as ``(Q_t + u).K_j + (Q_t + v).R_{t-j}``.
  """
  content = jnp.einsum("bhtd,bhjd->bhtj", q + u[None, :, None, :], k)
  position = jnp.einsum("bhtd,tjd->bhtj", q + v[None, :, None, :], r)
  return content + position


def masked_softmax(logits: Array, mask: Array | None) -> Array:
  """Softmax over the last (key) axis of ``logits [B, H, T, T]`` with keys where ``mask [B, T]`` is False excluded
  (module docstring: zero weight; uniform for a row with no real key)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)  # float32 at least (bfloat16 / float16 compute)
  logits = logits.astype(dtype)
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(dtype).min)
  return jax.nn.softmax(logits, axis=-1)


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention ``x [B, T, D] -> [B, T, D]`` with ``D = num_heads * d_k``.

  ``relative=True``: TENER's Eq. 16-19 (module docstring; ``key_projection=False`` is the paper's ``K = H_{d_k}``).
  ``relative=False``: Vaswani's attention (use ``key_projection=True``, ``scaled=True`` and absolute positions at
  the input for the original Transformer). ``scaled``: divide logits by ``sqrt(d_k)`` (TENER: False). Parameters:
  ``query``/``key``/``value`` ``[D, D]`` (no bias; head ``h`` uses columns ``h*d_k:(h+1)*d_k``), ``u``/``v`` ``[H,
  d_k]`` (relative only), ``out`` ``[D, D]`` + bias (``W_o``). The attention weights ``[B, H, T, T]`` are sown as
  ``intermediates/attention_weights``.
  """
  num_heads: int
  relative: bool = True
  scaled: bool = False
  key_projection: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
    b, t, d = x.shape
    if self.num_heads < 1 or d % self.num_heads:
      raise ValueError(f"MultiHeadSelfAttention: width {d} must be a multiple of num_heads={self.num_heads}")
    if mask is not None and mask.shape != (b, t):
      raise ValueError(f"MultiHeadSelfAttention: mask must be [B, T] = {(b, t)}, got {mask.shape}")
    h, dk = self.num_heads, d // self.num_heads
    if self.relative and dk % 2:
      raise ValueError(f"MultiHeadSelfAttention: relative attention needs an even head width d_k, got {dk} "
                       f"(width {d} / {h} heads)")
    dense = lambda name: nn.DenseGeneral((h, dk), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                         name=name)
    split = lambda y: jnp.swapaxes(y, 1, 2)  # [B, T, H, d_k] -> [B, H, T, d_k]
    q = split(dense("query")(x))
    k = split(dense("key")(x)) if self.key_projection else split(x.reshape(b, t, h, dk).astype(self.dtype))
    val = split(dense("value")(x))
    if self.relative:
      init = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
      u = self.param("u", init, (h, dk), self.param_dtype).astype(self.dtype)
      v = self.param("v", init, (h, dk), self.param_dtype).astype(self.dtype)
      r = relative_position_encoding(t, dk, jnp.promote_types(self.dtype, jnp.float32)).astype(self.dtype)
      logits = relative_attention_logits(q, k, r, u, v)
    else:
      logits = jnp.einsum("bhtd,bhjd->bhtj", q, k)
    if self.scaled:
      logits = logits / jnp.sqrt(jnp.asarray(dk, logits.dtype))
    weights = masked_softmax(logits, mask).astype(self.dtype)
    self.sow("intermediates", "attention_weights", weights)
    if self.dropout_rate:
      weights = nn.Dropout(self.dropout_rate, deterministic=not train)(weights)
    heads = jnp.einsum("bhtj,bhjd->bthd", weights, val)
    return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype, name="out")(heads)


class TransformerEncoderLayer(nn.Module):
  """One post-norm encoder layer (Vaswani §3.1; TENER §3.2): ``x = LN(x + Drop(MHSA(x)))``, ``x = LN(x +
  Drop(FFN(x)))`` with ``FFN(x) = max(0, x W_1 + b_1) W_2 + b_2`` of width ``ff_dim``. ``[B, T, D] -> [B, T, D]``."""
  num_heads: int
  ff_dim: int
  relative: bool = True
  scaled: bool = False
  key_projection: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y) if self.dropout_rate else y
    y = MultiHeadSelfAttention(self.num_heads, relative=self.relative, scaled=self.scaled,
                               key_projection=self.key_projection, dropout_rate=self.attention_dropout_rate,
                               name="attention", **kw)(x, mask, train=train)
    x = nn.LayerNorm(name="norm1", **kw)(x + drop(y))
    y = nn.Dense(self.ff_dim, name="ffn1", **kw)(x)
    y = nn.Dense(x.shape[-1], name="ffn2", **kw)(drop(nn.relu(y)))
    return nn.LayerNorm(name="norm2", **kw)(x + drop(y))


class TransformerEncoder(nn.Module):
  """``num_layers`` :class:`TransformerEncoderLayer` s: ``x [B, T, D], mask [B, T] -> [B, T, D]`` (padded positions
  set to 0). ``relative=False`` adds :func:`absolute_position_encoding` to the input first (the vanilla Transformer;
  TENER's relative attention needs none)."""
  num_layers: int
  num_heads: int
  ff_dim: int
  relative: bool = True
  scaled: bool = False
  key_projection: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
    if self.num_layers < 1:
      raise ValueError(f"TransformerEncoder: num_layers={self.num_layers} must be >= 1")
    if not self.relative:
      pe = absolute_position_encoding(x.shape[1], x.shape[2], jnp.promote_types(x.dtype, jnp.float32))
      x = x + pe.astype(x.dtype)
    for i in range(self.num_layers):
      x = TransformerEncoderLayer(self.num_heads, self.ff_dim, relative=self.relative, scaled=self.scaled,
                                  key_projection=self.key_projection, dropout_rate=self.dropout_rate,
                                  attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name=f"layer{i}")(x, mask, train=train)
    return x if mask is None else x * mask[..., None].astype(x.dtype)
