"""Sequence taggers for named entity recognition: TENER (Yan et al., "TENER: Adapting Transformer Encoder for Named
Entity Recognition", 2019), the vanilla Transformer encoder it is compared with, and a BiLSTM-CRF (Huang et al. 2015;
Lample et al. 2016) reference -- all with the same embedding layer and a CRF (or softmax) output layer.

TENER's three components (§3):

* Embedding layer (§3.1): a word embedding concatenated with a character-level feature per word, the characters of
  each word encoded by a Transformer encoder (the same kind of attention as the word level: relative and un-scaled
  for TENER) and max-pooled over the word's characters (:class:`CharTransformerEncoder`); the concatenation is
  projected to ``d_model``.
* Encoding layer (§3.2): ``num_layers`` post-norm Transformer encoder layers with the direction- and distance-aware
  relative attention (Eq. 16-19) and un-scaled dot products (§3.2.3) -- ``research.layers.attention``. The vanilla
  baseline (``encoder="transformer"``) uses ``Q, K, V`` projections, ``1/sqrt(d_k)`` scaling and absolute sinusoidal
  positions added to the input.
* CRF layer (§3.3): emissions ``[B, T, K]`` from a linear layer, scored with a linear-chain CRF
  (``research.ops.sequence``: log-likelihood by the forward algorithm, Viterbi decoding); ``output="softmax"`` is
  the per-token softmax alternative (the paper's "w/o CRF" ablation).

Inputs (id 0 is padding for words and characters, as ``research.data.text.Vocabulary``'s ``<pad>``):
``words [B, T]`` int, ``chars [B, T, C]`` int (optional; needs ``char_vocab_size > 0``), ``mask [B, T]`` bool
(default ``words != 0``; must be left-aligned), ``features [B, T, F]`` float (optional extra per-word features
concatenated to the embeddings, e.g. ESuLMO's subword language-model states).

Registered in model family ``"sequence"``: ``tener``, ``transformer_ner``, ``bilstm_crf``
(``research.models.create("tener", num_tags=9, vocab_size=..., char_vocab_size=...)``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.attention import TransformerEncoder
from research.layers.recurrent import LSTMCell, Stacked
from research.models.registry import register
from research.ops import sequence as seq_ops

Array = jax.Array
ENCODERS = ("tener", "transformer", "bilstm")
OUTPUTS = ("crf", "softmax")


class ChainCRF(nn.Module):
  """Linear-chain CRF output layer (TENER §3.3) over ``num_tags`` tags: parameters ``transitions [K, K]``
  (``[i, j]`` scores tag ``i`` followed by ``j``), ``start [K]``, ``end [K]`` (zeros initially); the computations
  are ``research.ops.sequence``'s."""
  num_tags: int
  param_dtype: Any = jnp.float32

  def setup(self):
    k = self.num_tags
    self.transitions = self.param("transitions", nn.initializers.zeros_init(), (k, k), self.param_dtype)
    self.start = self.param("start", nn.initializers.zeros_init(), (k,), self.param_dtype)
    self.end = self.param("end", nn.initializers.zeros_init(), (k,), self.param_dtype)

  def log_likelihood(self, emissions: Array, tags: Array, mask: Array) -> Array:
    """``log p(tags | emissions) [B]`` for emissions ``[B, T, K]``, tags ``[B, T]``, left-aligned mask ``[B, T]``."""
    return seq_ops.crf_log_likelihood(emissions, tags, mask, self.transitions, self.start, self.end)

  def decode(self, emissions: Array, mask: Array) -> Array:
    """Viterbi tags ``[B, T]`` int32 (0 at padded steps)."""
    return seq_ops.crf_viterbi_decode(emissions, mask, self.transitions, self.start, self.end)[0]

  def __call__(self, emissions: Array, mask: Array) -> Array:
    return self.decode(emissions, mask)


class CharTransformerEncoder(nn.Module):
  """Character-level feature of each word (TENER §3.1): ``chars [B, T, C]`` (0 = padding) -> ``[B, T, char_dim]``,
  a ``char_dim`` character embedding, a Transformer encoder over each word's characters, max-pooled over the real
  characters (0 for a word without characters, i.e. a padded word)."""
  num_chars: int
  char_dim: int = 30
  num_heads: int = 3
  num_layers: int = 1
  ff_dim: int = 60
  relative: bool = True
  scaled: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, chars: Array, *, train: bool = False) -> Array:
    if chars.ndim != 3:
      raise ValueError(f"CharTransformerEncoder: chars must be [B, T, C], got shape {chars.shape}")
    b, t, c = chars.shape
    flat = chars.reshape(b * t, c)
    cmask = flat > 0
    x = nn.Embed(self.num_chars, self.char_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="embed")(flat)
    x = TransformerEncoder(self.num_layers, self.num_heads, self.ff_dim, relative=self.relative, scaled=self.scaled,
                           key_projection=not self.relative, dropout_rate=self.dropout_rate, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="encoder")(x, cmask, train=train)
    pooled = jnp.max(jnp.where(cmask[..., None], x, jnp.finfo(x.dtype).min), axis=1)
    pooled = jnp.where(cmask.any(axis=1)[:, None], pooled, 0.0)
    return pooled.reshape(b, t, self.char_dim)


class SequenceTagger(nn.Module):
  """Embeddings -> encoder (``tener`` | ``transformer`` | ``bilstm``) -> linear emissions -> CRF or softmax.

  ``__call__`` returns emissions ``[B, T, num_tags]`` (float32); :meth:`nll` the per-sentence negative
  log-likelihood ``[B]`` (CRF: ``-log p(y | x)``; softmax: the sum of the token cross-entropies); :meth:`decode`
  the predicted tags ``[B, T]`` (Viterbi, or per-token argmax; 0 at padded steps). ``scaled=None``: TENER's
  un-scaled attention for ``tener``, Vaswani's scaled one for ``transformer``. ``char_relative=None``: the
  character encoder uses the word encoder's kind of attention (relative for ``tener`` and ``bilstm``).
  """
  num_tags: int
  vocab_size: int
  char_vocab_size: int = 0
  encoder: str = "tener"
  output: str = "crf"
  word_dim: int = 50
  char_dim: int = 30
  char_heads: int = 3
  char_layers: int = 1
  char_ff_dim: int = 60
  char_relative: bool | None = None
  d_model: int = 64
  num_heads: int = 4
  num_layers: int = 2
  ff_dim: int = 128
  scaled: bool | None = None
  lstm_hidden: int = 64
  embed_dropout: float = 0.0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  fc_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"SequenceTagger: encoder={self.encoder!r}; choose one of {ENCODERS}")
    if self.output not in OUTPUTS:
      raise ValueError(f"SequenceTagger: output={self.output!r}; choose one of {OUTPUTS}")
    if self.num_tags < 1 or self.vocab_size < 2:
      raise ValueError(f"SequenceTagger: num_tags={self.num_tags} and vocab_size={self.vocab_size} must be >= 1, 2")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(self.vocab_size, self.word_dim, name="word_embed", **kw)
    if self.char_vocab_size:
      char_rel = self.encoder != "transformer" if self.char_relative is None else self.char_relative
      self.chars = CharTransformerEncoder(self.char_vocab_size, self.char_dim, self.char_heads, self.char_layers,
                                          self.char_ff_dim, relative=char_rel, scaled=not char_rel,
                                          dropout_rate=self.dropout, name="char_encoder", **kw)
    if self.encoder == "bilstm":
      self.context = Stacked(LSTMCell, self.lstm_hidden, num_layers=self.num_layers, bidirectional=True,
                             dropout_rate=self.dropout, name="bilstm", **kw)
    else:
      relative = self.encoder == "tener"
      scaled = (not relative) if self.scaled is None else self.scaled
      self.in_fc = nn.Dense(self.d_model, name="in_fc", **kw)
      self.context = TransformerEncoder(self.num_layers, self.num_heads, self.ff_dim, relative=relative,
                                        scaled=scaled, key_projection=not relative, dropout_rate=self.dropout,
                                        attention_dropout_rate=self.attention_dropout, name="transformer", **kw)
    self.out_fc = nn.Dense(self.num_tags, name="out_fc", **kw)
    self.embed_drop = nn.Dropout(self.embed_dropout)
    self.fc_drop = nn.Dropout(self.fc_dropout)
    if self.output == "crf":
      self.crf = ChainCRF(self.num_tags, param_dtype=self.param_dtype, name="crf")

  def __call__(self, words: Array, *, chars: Array | None = None, mask: Array | None = None,
               features: Array | None = None, train: bool = False) -> Array:
    if words.ndim != 2:
      raise ValueError(f"SequenceTagger: words must be [B, T], got shape {words.shape}")
    mask = words > 0 if mask is None else mask.astype(bool)
    parts = [self.embed(words)]
    if self.char_vocab_size:
      if chars is None or chars.shape[:2] != words.shape:
        raise ValueError(f"SequenceTagger: char_vocab_size={self.char_vocab_size} needs chars [B, T, C] with "
                         f"[B, T] = {words.shape}, got {None if chars is None else chars.shape}")
      parts.append(self.chars(chars, train=train))
    if features is not None:
      parts.append(features.astype(self.dtype))
    x = self.embed_drop(jnp.concatenate(parts, axis=-1), deterministic=not train or not self.embed_dropout)
    if self.encoder == "bilstm":
      x, _ = self.context(x, mask=mask, train=train)
    else:
      x = self.context(self.in_fc(x), mask, train=train)
    x = self.fc_drop(x, deterministic=not train or not self.fc_dropout)
    if self.output == "crf" and self.is_initializing():
      _ = self.crf.transitions  # init(words) creates the CRF parameters too
    return self.out_fc(x).astype(jnp.float32)

  def nll(self, words: Array, tags: Array, *, chars: Array | None = None, mask: Array | None = None,
          features: Array | None = None, train: bool = False) -> Array:
    """Per-sentence negative log-likelihood ``[B]`` of ``tags [B, T]`` (class docstring)."""
    mask = words > 0 if mask is None else mask.astype(bool)
    emissions = self(words, chars=chars, mask=mask, features=features, train=train)
    if self.output == "crf":
      return -self.crf.log_likelihood(emissions, tags, mask)
    logp = jax.nn.log_softmax(emissions, axis=-1)
    tok = -jnp.take_along_axis(logp, tags[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(tok * mask, axis=-1)

  def decode(self, words: Array, *, chars: Array | None = None, mask: Array | None = None,
             features: Array | None = None) -> Array:
    """Predicted tags ``[B, T]`` int32: Viterbi (CRF) or per-token argmax (softmax); 0 at padded steps."""
    mask = words > 0 if mask is None else mask.astype(bool)
    emissions = self(words, chars=chars, mask=mask, features=features, train=False)
    if self.output == "crf":
      return self.crf.decode(emissions, mask)
    return jnp.where(mask, jnp.argmax(emissions, axis=-1), 0).astype(jnp.int32)


@register("tener", family="sequence")
def tener(**kw) -> SequenceTagger:
  """TENER: relative direction- and distance-aware, un-scaled attention; character Transformer; CRF."""
  return SequenceTagger(**{"encoder": "tener", **kw})


@register("transformer_ner", family="sequence")
def transformer_ner(**kw) -> SequenceTagger:
  """The vanilla Transformer encoder (absolute sinusoids, scaled attention) with the same embeddings and CRF."""
  return SequenceTagger(**{"encoder": "transformer", **kw})


@register("bilstm_crf", family="sequence")
def bilstm_crf(**kw) -> SequenceTagger:
  """BiLSTM-CRF (Huang et al. 2015; Lample et al. 2016) with TENER's embedding layer."""
  return SequenceTagger(**{"encoder": "bilstm", **kw})
