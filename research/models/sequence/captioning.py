"""Image captioning with attention: Show-Attend-Tell soft attention and the two-stream attention with the sentence
auto-encoder regulariser (Goel, Fernando, Nguyen & Bilen, "Learning to Caption Images with Two-Stream Attention
and Sentence Auto-Encoder", 2019, §3 "method"; only the paper's summary was at hand, so where it gives no
equation the choice made here is said), plus greedy and beam-search decoding.

Encoder (:class:`RegionEncoder`): a backbone of the zoo (``research.models.create(backbone, features_only=True)``,
e.g. the shapes-pretrained ``resnet18``) and one of its feature maps ``[B, h, w, C]`` (``feature_level``, e.g.
``"C3"``: stride 8) flattened to ``R = h * w`` region features ``a_i``; with ``coord_channels`` (the default) the
normalised centre ``(x, y)`` of each region in [-1, 1] is appended (``[B, R, C + 2]``: content-only attention could
not tell "left of" from "right of" otherwise -- a choice of ours, the paper uses ResNet-101 regions).

Decoder (:class:`CaptionDecoder`), one LSTM step ``t`` (Xu et al., "Show, Attend and Tell", ICML 2015, §3.1.2):

    v_i   = W_v a_i + b_v                                   (values, [B, R, D])
    c_0, h_0 = tanh(W_c mean_i v_i + b_c), tanh(W_h0 mean_i v_i + b_h0)          (§3.1.2 init MLPs)
    z_t   = sigmoid(w_g . h_{t-1} + b_g) * sum_i alpha_{t,i} v_i                 (§4.2.1 gating scalar)
    (c_t, h_t) = LSTM([E y_{t-1}; z_t], (c_{t-1}, h_{t-1}))                     (research.layers.recurrent.LSTMCell)
    p(y_t) = softmax(L_o dropout(E y_{t-1} + L_h h_t + L_z z_t))                (eq. 7, deep output layer)

with ``alpha_t`` [B, R] from one of two attentions (``attention=``):

* ``"soft"`` -- Show-Attend-Tell deterministic soft attention (§4.2)::

      e_{t,i}   = w^T tanh(K v_i + Q h_{t-1} + b)                 K [D, A], Q [H, A], w [A]
      alpha_t   = softmax_i(e_t)                                  (masked regions get weight 0)

* ``"two_stream"`` -- two-stream attention (Goel et al. §3). The paper's summary: "the first [stream]
  soft-labels each image region with the latent categories, and the second one finds the most relevant area for
  each group; their predictions are combined to obtain a context vector". Implemented, with ``K`` latent
  categories (``num_categories``)::

      s_{i,k}        = softmax_k(u_k^T v_i + b_k)                  stream 1: soft label of region i, [B, R, K]
      e_{t,i,k}      = w_k^T tanh(K v_i + Q h_{t-1} + b)           stream 2 scores, one vector w_k per category
      beta_{t,i,k}   = softmax_i(e_{t,:,k})                        stream 2: relevance of region i for category k
      alpha_{t,i}    = sum_k s_{i,k} beta_{t,i,k} / sum_j sum_k s_{j,k} beta_{t,j,k}          combination

  Stream 1 depends on the image only (visual cues), stream 2 on the decoder state (textual cues). The combination
  is our choice where the summary is silent: region ``i`` receives weight when it is the relevant region of some
  category AND carries that category's label; renormalised, ``alpha_t`` is a distribution over regions (so the
  context is a convex combination, as for soft attention). With ``K = 1`` it is exactly soft attention (``s = 1``).

Sentence auto-encoder (Goel et al. §3, :class:`SentenceAutoEncoder`): an LSTM encoder reads the caption and emits a
fixed vector ``q = tanh(W_q h_T)``; the LSTM decoder (:class:`SentenceDecoder`, "SAE-Dec") reconstructs the caption with
``x_t = [E' y_{t-1}; code_t]`` from zero initial states (``code_t = q`` for every ``t`` when auto-encoding). It is
pre-trained on the training captions and then FROZEN; attached to the captioner during training only, SAE-Dec
receives ``code_t = P z_t`` -- the captioner's context vector through a trainable bridge ``P`` (``sae_code_dim``;
a choice of ours: the context and the code need not have the same width) -- and its reconstruction loss is added
with weight lambda. The branch is not used at test time (no extra cost).

Decoding: :func:`greedy_search` and :func:`beam_search` (static shapes, ``lax.scan`` over ``max_len`` steps,
jittable) over any ``step_fn(carry, tokens [N]) -> (carry, log_probs [N, V])``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.recurrent import LSTMCell, RNN
from research.models.registry import create, register

Array = jax.Array
ATTENTIONS = ("soft", "two_stream")
NEG = -1e9  # log-probability of an impossible hypothesis (finite: no NaN in sums)


def masked_softmax(logits: Array, mask: Array | None, axis: int) -> Array:
  """softmax over ``axis`` with ``mask`` (broadcastable bool, True = valid) entries at exactly 0 whenever the slice
  has a valid entry (a fully masked slice gets uniform weights instead of NaN)."""
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  return jax.nn.softmax(logits, axis=axis)


def varying_like(x: Array, ref: Array) -> Array:
  """``x`` unchanged in value but varying over the same ``shard_map`` mesh axes as ``ref`` (a ``lax.scan`` carry
  must keep its type; constants created inside ``shard_map`` do not vary, the step outputs do). Outside
  ``shard_map`` this is a no-op (see ``research.layers.recurrent.zero_state``)."""
  zero = jnp.where(False, jnp.ravel(ref)[0], 0)
  return x | zero.astype(bool) if x.dtype == jnp.bool_ else x + zero.astype(x.dtype)


def region_coordinates(h: int, w: int, dtype=jnp.float32) -> Array:
  """[h * w, 2]: the (x, y) centre of each cell of an h x w grid in [-1, 1], row-major (region ``i = row * w +
  col``)."""
  ys = (jnp.arange(h, dtype=dtype) + 0.5) / h * 2 - 1
  xs = (jnp.arange(w, dtype=dtype) + 0.5) / w * 2 - 1
  return jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), -1).reshape(h * w, 2)


class RegionEncoder(nn.Module):
  """images float [B, H, W, 3] -> region features [B, R, C (+ 2)] (module docstring); the backbone is the zoo's
  ``backbone`` under the name ``backbone`` (``research.train.pretrain.load_backbone`` fills it)."""
  backbone: str = "resnet18"
  backbone_kwargs: Any = flax.core.FrozenDict()
  feature_level: str = "C3"
  coord_channels: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    if images.ndim != 4:
      raise ValueError(f"RegionEncoder: images must be [B, H, W, C], got shape {images.shape}")
    net = create(self.backbone, features_only=True, dtype=self.dtype, param_dtype=self.param_dtype, name="backbone",
                 **dict(self.backbone_kwargs))
    feats = net(images, train=train)
    if self.feature_level not in feats:
      raise ValueError(f"RegionEncoder: feature_level={self.feature_level!r} is not an output of {self.backbone} "
                       f"(has {sorted(k for k in feats if k != 'pooled')})")
    fmap = feats[self.feature_level]
    b, h, w, c = fmap.shape
    regions = fmap.reshape(b, h * w, c).astype(jnp.float32)
    if self.coord_channels:
      regions = jnp.concatenate([regions, jnp.broadcast_to(region_coordinates(h, w), (b, h * w, 2))], -1)
    return regions


class CaptionDecoder(nn.Module):
  """LSTM decoder with soft or two-stream attention (module docstring equations).

  ``__call__(regions [B, R, C], tokens [B, T], region_mask=None, train)`` (teacher forcing: ``tokens`` are the
  inputs ``y_{t-1}``, starting with ``<bos>``) -> ``{'logits' [B, T, V], 'context' [B, T, D], 'alpha' [B, T, R],
  'codes' [B, T, sae_code_dim] (only with ``sae_code_dim``), 'labels' [B, R, K] (two-stream)}``. ``prepare`` +
  ``step`` run one step at a time (decoding)."""
  vocab_size: int
  attention: str = "two_stream"
  embed_dim: int = 64
  hidden_dim: int = 128
  context_dim: int = 128
  attn_dim: int = 64
  num_categories: int = 8
  dropout_rate: float = 0.0
  sae_code_dim: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f"CaptionDecoder: attention={self.attention!r}; choose one of {ATTENTIONS}")
    if self.attention == "two_stream" and self.num_categories < 1:
      raise ValueError(f"CaptionDecoder: num_categories={self.num_categories} must be >= 1")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, **kw)
    self.value_proj = nn.Dense(self.context_dim, **kw)
    self.init_c = nn.Dense(self.hidden_dim, **kw)
    self.init_h = nn.Dense(self.hidden_dim, **kw)
    self.key_proj = nn.Dense(self.attn_dim, use_bias=False, **kw)
    self.query_proj = nn.Dense(self.attn_dim, **kw)
    k = 1 if self.attention == "soft" else self.num_categories
    self.score = nn.Dense(k, use_bias=False, **kw)  # w (soft) / w_1..w_K (two-stream)
    if self.attention == "two_stream":
      self.category = nn.Dense(self.num_categories, **kw)  # stream 1: u_k, b_k
    self.gate = nn.Dense(1, **kw)
    self.cell = LSTMCell(self.hidden_dim, **kw)
    self.out_hidden = nn.Dense(self.embed_dim, **kw)
    self.out_context = nn.Dense(self.embed_dim, **kw)
    self.out = nn.Dense(self.vocab_size, **kw)
    self.dropout = nn.Dropout(self.dropout_rate)
    if self.sae_code_dim:
      self.sae_bridge = nn.Dense(self.sae_code_dim, **kw)

  def prepare(self, regions: Array, region_mask: Array | None = None) -> tuple[dict[str, Array], tuple[Array, Array]]:
    """Per-image precomputation: ``(memory, (c_0, h_0))``; memory holds ``values`` [B, R, D], ``keys`` [B, R, A],
    ``mask`` [B, R] and (two-stream) the stream-1 ``labels`` [B, R, K]."""
    if regions.ndim != 3:
      raise ValueError(f"CaptionDecoder: regions must be [B, R, C], got shape {regions.shape}")
    b, r = regions.shape[:2]
    mask = varying_like(jnp.ones((b, r), bool), regions) if region_mask is None else jnp.asarray(region_mask, bool)
    if mask.shape != (b, r):
      raise ValueError(f"CaptionDecoder: region_mask must be bool [B, R] = {(b, r)}, got {mask.shape}")
    values = self.value_proj(regions)
    m = mask[..., None].astype(values.dtype)
    mean = jnp.sum(values * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    memory = {"values": values, "keys": self.key_proj(values), "mask": mask}
    if self.attention == "two_stream":
      memory["labels"] = jax.nn.softmax(self.category(values), axis=-1)
    return memory, (jnp.tanh(self.init_c(mean)), jnp.tanh(self.init_h(mean)))

  def attend(self, memory: dict[str, Array], h: Array) -> tuple[Array, Array]:
    """``(z [B, D] (ungated), alpha [B, R])`` for the previous hidden state ``h`` [B, H]."""
    scores = self.score(jnp.tanh(memory["keys"] + self.query_proj(h)[:, None, :]))  # [B, R, 1 or K]
    mask = memory["mask"][..., None]
    if self.attention == "soft":
      alpha = masked_softmax(scores[..., 0], memory["mask"], axis=-1)
    else:
      beta = masked_softmax(scores, mask, axis=1)  # stream 2: softmax over regions, per category
      joint = memory["labels"] * beta * mask  # [B, R, K]
      alpha = jnp.sum(joint, -1) / jnp.maximum(jnp.sum(joint, (1, 2)), 1e-30)[:, None]
    return jnp.einsum("br,brd->bd", alpha, memory["values"]), alpha

  def step(self, carry: tuple[Array, Array], token: Array, memory: dict[str, Array], *, train: bool = False
           ) -> tuple[tuple[Array, Array], dict[str, Array]]:
    """One decoder step: ``token`` [B] = y_{t-1} -> (new carry, ``{'logits' [B, V], 'context' [B, D], 'alpha'
    [B, R]}``)."""
    _, h = carry
    e = self.embed(token)
    z, alpha = self.attend(memory, h)
    z = jax.nn.sigmoid(self.gate(h)) * z
    carry, h = self.cell(carry, jnp.concatenate([e, z], -1))
    logits = self.out(self.dropout(e + self.out_hidden(h) + self.out_context(z), deterministic=not train))
    return carry, {"logits": logits.astype(jnp.float32), "context": z, "alpha": alpha}

  def __call__(self, regions: Array, tokens: Array, *, region_mask: Array | None = None, train: bool = False
               ) -> dict[str, Array]:
    if tokens.ndim != 2 or tokens.shape[0] != regions.shape[0]:
      raise ValueError(f"CaptionDecoder: tokens must be int [B, T] with B = {regions.shape[0]}, got {tokens.shape}")
    memory, carry = self.prepare(regions, region_mask)

    def body(mdl, carry, token):
      return mdl.step(carry, token, memory, train=train)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False, "dropout": True}, in_axes=1,
                   out_axes=1)
    _, out = scan(self, carry, tokens)
    if self.sae_code_dim:
      out["codes"] = self.sae_bridge(out["context"])
    if self.attention == "two_stream":
      out["labels"] = memory["labels"]
    return out


class Captioner(nn.Module):
  """:class:`RegionEncoder` + :class:`CaptionDecoder`: ``__call__(images [B, H, W, 3] float, tokens [B, T], *,
  train)`` -> the decoder's outputs. Methods for the parts: ``encode(images)`` -> regions [B, R, C];
  ``decode(regions, tokens)``; ``prepare(regions)`` and ``step(carry, token, memory)`` for decoding. Parameters:
  ``encoder/backbone/...`` and ``decoder/...`` (each part initialises and applies on its own)."""
  vocab_size: int
  attention: str = "two_stream"
  backbone: str = "resnet18"
  backbone_kwargs: Any = flax.core.FrozenDict()
  feature_level: str = "C3"
  coord_channels: bool = True
  embed_dim: int = 64
  hidden_dim: int = 128
  context_dim: int = 128
  attn_dim: int = 64
  num_categories: int = 8
  dropout_rate: float = 0.0
  sae_code_dim: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = RegionEncoder(self.backbone, flax.core.FrozenDict(dict(self.backbone_kwargs)), self.feature_level,
                                 self.coord_channels, **kw)
    self.decoder = CaptionDecoder(self.vocab_size, self.attention, self.embed_dim, self.hidden_dim, self.context_dim,
                                  self.attn_dim, self.num_categories, self.dropout_rate, self.sae_code_dim, **kw)

  def __call__(self, images: Array, tokens: Array, *, train: bool = False) -> dict[str, Array]:
    return self.decoder(self.encoder(images, train=train), tokens, train=train)

  def encode(self, images: Array, *, train: bool = False) -> Array:
    return self.encoder(images, train=train)

  def decode(self, regions: Array, tokens: Array, *, region_mask: Array | None = None, train: bool = False
             ) -> dict[str, Array]:
    return self.decoder(regions, tokens, region_mask=region_mask, train=train)

  def prepare(self, regions: Array, region_mask: Array | None = None):
    return self.decoder.prepare(regions, region_mask)

  def step(self, carry, token: Array, memory: dict[str, Array]):
    return self.decoder.step(carry, token, memory, train=False)


# ----------------------------------------------------------------------------------------- sentence auto-encoder


class SentenceEncoder(nn.Module):
  """tokens [B, T] (the caption, ``<eos>`` included), mask [B, T] -> the sentence vector q [B, code_dim]: an LSTM
  over the word embeddings (padding masked), ``q = tanh(W_q h_T + b_q)``."""
  vocab_size: int
  embed_dim: int = 64
  hidden_dim: int = 128
  code_dim: int = 128

  @nn.compact
  def __call__(self, tokens: Array, mask: Array) -> Array:
    e = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    _, (_, h) = RNN(LSTMCell, self.hidden_dim, name="lstm")(e, mask=mask)
    return jnp.tanh(nn.Dense(self.code_dim, name="code")(h))


class SentenceDecoder(nn.Module):
  """SAE-Dec: ``codes`` [B, T, code_dim] (or [B, code_dim], repeated over time) and input tokens [B, T] (``<bos>``
  first) -> logits [B, T, V]; LSTM from zero states on ``[E' y_{t-1}; code_t]``, then a linear read-out."""
  vocab_size: int
  embed_dim: int = 64
  hidden_dim: int = 128
  code_dim: int = 128

  @nn.compact
  def __call__(self, codes: Array, tokens: Array) -> Array:
    if codes.ndim == 2:
      codes = jnp.broadcast_to(codes[:, None, :], tokens.shape + codes.shape[-1:])
    if codes.shape[-1] != self.code_dim or codes.shape[:2] != tokens.shape:
      raise ValueError(f"SentenceDecoder: codes must be [B, T, {self.code_dim}] for tokens {tokens.shape}, got "
                       f"{codes.shape}")
    e = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    y, _ = RNN(LSTMCell, self.hidden_dim, name="lstm")(jnp.concatenate([e, codes.astype(e.dtype)], -1))
    return nn.Dense(self.vocab_size, name="out")(y).astype(jnp.float32)


class SentenceAutoEncoder(nn.Module):
  """SAE (Goel et al. §3): ``__call__(inputs [B, T] (<bos> + words), targets [B, T] (words + <eos>), mask [B, T])`` ->
  reconstruction logits [B, T, V]; the encoder reads ``targets``, the decoder is teacher-forced on ``inputs``.
  Parameters ``encoder/...`` and ``decoder/...`` (the latter is SAE-Dec)."""
  vocab_size: int
  embed_dim: int = 64
  hidden_dim: int = 128
  code_dim: int = 128

  def setup(self):
    self.encoder = SentenceEncoder(self.vocab_size, self.embed_dim, self.hidden_dim, self.code_dim)
    self.decoder = SentenceDecoder(self.vocab_size, self.embed_dim, self.hidden_dim, self.code_dim)

  def __call__(self, inputs: Array, targets: Array, mask: Array) -> Array:
    return self.decoder(self.encoder(targets, mask), inputs)


# -------------------------------------------------------------------------------------------------------- search


def _forbid(log_probs: Array, forbidden: tuple[int, ...]) -> Array:
  for t in forbidden:
    log_probs = log_probs.at[..., t].set(NEG)
  return log_probs


def greedy_search(step_fn: Callable, carry: Any, *, batch_size: int, max_len: int, bos_id: int, eos_id: int,
                  pad_id: int, forbidden: tuple[int, ...] = ()) -> tuple[Array, Array]:
  """Greedy decoding: ``(tokens [B, max_len] int32 (``<eos>`` included, ``pad_id`` after it), log-prob [B] of the
  emitted tokens)``. ``step_fn(carry, tokens [B]) -> (carry, log_probs [B, V])``; ``forbidden`` token ids are never
  emitted (e.g. ``<pad>``, ``<bos>``). A sequence without ``<eos>`` in ``max_len`` steps is cut there."""

  def body(state, _):
    carry, last, done, score = state
    carry, lp = step_fn(carry, last)
    lp = _forbid(lp.astype(jnp.float32), forbidden)
    tok = jnp.argmax(lp, -1).astype(jnp.int32)
    tok_lp = jnp.take_along_axis(lp, tok[:, None], -1)[:, 0]
    tok = jnp.where(done, pad_id, tok)
    score = score + jnp.where(done, 0.0, tok_lp)
    return (carry, tok, done | (tok == eos_id), score), tok

  ref = jax.tree.leaves(carry)[0]
  start = (jnp.full((batch_size,), bos_id, jnp.int32), jnp.zeros((batch_size,), bool),
           jnp.zeros((batch_size,), jnp.float32))
  init = (carry, *(varying_like(x, ref) for x in start))
  (_, _, _, score), toks = jax.lax.scan(body, init, None, length=max_len)
  return toks.T, score


def tile_beams(tree: Any, beam_width: int) -> Any:
  """Repeat every leaf [B, ...] -> [B * beam_width, ...] (beam-major within each example)."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam_width, axis=0), tree)


def beam_search(step_fn: Callable, carry: Any, *, batch_size: int, beam_width: int, max_len: int, bos_id: int,
                eos_id: int, pad_id: int, length_penalty: float = 0.0, forbidden: tuple[int, ...] = ()
                ) -> dict[str, Array]:
  """Beam search with static shapes (one ``lax.scan`` of ``max_len`` steps; jittable).

  ``carry``: the decoder state already tiled to ``N = batch_size * beam_width`` rows (:func:`tile_beams`);
  ``step_fn(carry, tokens [N]) -> (carry, log_probs [N, V])``. Every step expands each live hypothesis by every
  allowed token (``forbidden`` ids excluded); a hypothesis that has emitted ``<eos>`` is FINISHED and is carried on
  unchanged (one continuation, ``pad_id``, at log-prob 0); the ``beam_width`` best of all candidates by summed
  log-probability survive (at step 0 only the first beam is live, so the beams are distinct). After ``max_len``
  steps the unfinished hypotheses count as cut at ``max_len``. The result is the hypothesis with the best
  length-normalised score ``sum log p / len ** length_penalty`` (``len`` counts the ``<eos>``; 0 = no
  normalisation, 1 = mean log-prob). With ``beam_width`` at least the number of all hypotheses (``sum_{l<max_len}
  A^l`` finished plus ``A^max_len`` cut ones for ``A`` allowed non-``<eos>`` tokens; ``(A + 1) ** max_len`` bounds
  it) nothing is ever pruned and this is the exact optimum over all sequences (the tests check it by enumeration).

  Returns ``{'tokens' [B, max_len] int32 (best; ``pad_id`` after ``<eos>``), 'score' [B] (normalised), 'beams'
  [B, W, max_len], 'beam_scores' [B, W] (normalised; ~-1e9 for beams that never held a hypothesis), 'lengths'
  [B, W]}``.
  """
  b, w = batch_size, beam_width
  if w < 1 or max_len < 1:
    raise ValueError(f"beam_search: beam_width={w} and max_len={max_len} must be >= 1")

  def gather(tree, parent):  # leaves [N, ...]; parent [B, W] -> rows of the chosen parents
    flat = (parent + jnp.arange(b)[:, None] * w).reshape(-1)
    return jax.tree.map(lambda x: x[flat], tree)

  def body(state, t):
    carry, seqs, scores, finished, lengths, last = state
    carry, lp = step_fn(carry, last.reshape(-1))
    lp = _forbid(lp.astype(jnp.float32), forbidden)
    v = lp.shape[-1]
    lp = lp.reshape(b, w, v)
    only_pad = jnp.full((v,), NEG, jnp.float32).at[pad_id].set(0.0)
    lp = jnp.where(finished[..., None], only_pad, lp)
    cand = (scores[..., None] + lp).reshape(b, w * v)
    scores, idx = jax.lax.top_k(cand, w)
    parent, tok = idx // v, (idx % v).astype(jnp.int32)
    was_finished = jnp.take_along_axis(finished, parent, 1)
    seqs = jnp.take_along_axis(seqs, parent[..., None], 1)
    seqs = seqs.at[:, :, t].set(jnp.where(was_finished, pad_id, tok))
    lengths = jnp.take_along_axis(lengths, parent, 1) + (~was_finished).astype(jnp.int32)
    finished = was_finished | (tok == eos_id)
    return (gather(carry, parent), seqs, scores, finished, lengths, tok), None

  scores0 = jnp.tile(jnp.where(jnp.arange(w) == 0, 0.0, NEG).astype(jnp.float32), (b, 1))
  ref = jax.tree.leaves(carry)[0]
  init = (carry, *(varying_like(x, ref) for x in (
      jnp.full((b, w, max_len), pad_id, jnp.int32), scores0, jnp.zeros((b, w), bool), jnp.zeros((b, w), jnp.int32),
      jnp.full((b, w), bos_id, jnp.int32))))
  (_, seqs, scores, _, lengths, _), _ = jax.lax.scan(body, init, jnp.arange(max_len))
  norm = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
  norm = jnp.where(scores > NEG / 2, norm, 2 * NEG)
  best = jnp.argmax(norm, -1)
  return {"tokens": jnp.take_along_axis(seqs, best[:, None, None], 1)[:, 0],
          "score": jnp.take_along_axis(norm, best[:, None], 1)[:, 0], "beams": seqs, "beam_scores": norm,
          "lengths": lengths}


# ---------------------------------------------------------------------------------------------------- registry


def _captioner(attention: str):
  def factory(**kw):
    kw.pop("num_classes", None)  # the zoo's classification argument; a captioner has a vocabulary instead
    if "vocab_size" not in kw:
      raise ValueError(f"caption_{attention}: pass vocab_size (the caption vocabulary's size)")
    return Captioner(attention=attention, **kw)
  return factory


register("caption_soft_attention", family="sequence")(_captioner("soft"))
register("caption_two_stream", family="sequence")(_captioner("two_stream"))


@register("sentence_autoencoder", family="sequence")
def _sentence_autoencoder(**kw):
  kw.pop("num_classes", None)
  if "vocab_size" not in kw:
    raise ValueError("sentence_autoencoder: pass vocab_size")
  return SentenceAutoEncoder(**kw)
