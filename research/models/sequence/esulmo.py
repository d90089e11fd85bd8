"""ESuLMO's subword language model (Li et al., "Subword ELMo", 2019): a bidirectional LSTM language model over BPE
subword units (``research.data.bpe``), ELMo-style (Peters et al. 2018, §3.1) -- a forward LSTM predicts the next
subword, a backward LSTM the previous one, both through one shared softmax over the subword vocabulary and one
shared subword embedding. Its hidden states, pooled over each word's subwords, are the ESuLMO features a tagger
concatenates to its word representation (``SequenceTagger(features=...)``).

Inputs: ``ids [B, S]`` int32 subword ids (0 = padding), ``word_index [B, S]`` int32 (the word each subword belongs
to, -1 for padding).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.recurrent import LSTMCell, RNN

Array = jax.Array


class SubwordBiLM(nn.Module):
  """``ids [B, S] -> (h_forward [B, S, H], h_backward [B, S, H])``; :meth:`loss` and :meth:`word_features`."""
  vocab_size: int
  embed_dim: int = 32
  hidden: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed", **kw)
    self.forward_lstm = RNN(LSTMCell, self.hidden, name="forward", **kw)
    self.backward_lstm = RNN(LSTMCell, self.hidden, reverse=True, name="backward", **kw)
    self.softmax = nn.Dense(self.vocab_size, name="softmax", **kw)

  def __call__(self, ids: Array) -> tuple[Array, Array]:
    mask = ids > 0
    x = self.embed(ids)
    hf, _ = self.forward_lstm(x, mask=mask)
    hb, _ = self.backward_lstm(x, mask=mask)
    return hf, hb

  def loss(self, ids: Array) -> tuple[Array, Array]:
    """``(sum, count)`` of the forward (``h_f[i] -> ids[i+1]``) and backward (``h_b[i] -> ids[i-1]``) subword
    negative log-likelihoods over the real positions."""
    hf, hb = self(ids)
    mask = ids > 0
    lf = jax.nn.log_softmax(self.softmax(hf[:, :-1]).astype(jnp.float32))
    lb = jax.nn.log_softmax(self.softmax(hb[:, 1:]).astype(jnp.float32))
    nf = -jnp.take_along_axis(lf, ids[:, 1:, None], axis=-1)[..., 0]
    nb = -jnp.take_along_axis(lb, ids[:, :-1, None], axis=-1)[..., 0]
    valid = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)  # both ends of the predicted pair are real
    return jnp.sum((nf + nb) * valid), 2.0 * jnp.sum(valid)

  def word_features(self, ids: Array, word_index: Array, num_words: int) -> Array:
    """ESuLMO features ``[B, num_words, 2H]``: ``[h_forward; h_backward]`` averaged over each word's subwords (0 for
    padded words)."""
    hf, hb = self(ids)
    h = jnp.concatenate([hf, hb], axis=-1).astype(jnp.float32)
    onehot = jax.nn.one_hot(word_index, num_words, dtype=jnp.float32)  # -1 (padding) -> all zeros
    total = jnp.einsum("bsw,bsh->bwh", onehot, h)
    count = jnp.sum(onehot, axis=1)[..., None]
    return total / jnp.maximum(count, 1.0)
