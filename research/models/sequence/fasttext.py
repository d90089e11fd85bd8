"""fastText (Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017) and the recurrent and
convolutional text classifiers it is compared with (§3.1, Table 2).

fastText (§2, Figure 1): the ``N`` features of a document -- its word ids and the ids of its hashed word n-grams
(§2.2; ``research.data.text.ngram_bag``) -- index ONE look-up table ``A`` of ``num_embeddings = |vocab| + buckets``
rows; the text representation is their average ``h = (1/N) sum_n A[x_n]`` (a masked mean over the padded bag), and a
linear classifier ``B`` maps it to the classes. The loss is the negative log-likelihood under

* ``loss="softmax"``: ``softmax(B h)`` (``output`` [dim, K]), cost O(K h) per example, or
* ``loss="hierarchical"``: the hierarchical softmax over a Huffman tree of the label frequencies (§2.1;
  ``research.ops.sequence``: ``node_weights`` [K-1, dim]), cost O(h log K): training touches only the nodes on the
  label's path.

As in the fastText code the table starts ``U(-1/dim, 1/dim)`` and the classifier at zero, and there is no bias.
Models are registered in the family ``"sequence"``: ``fasttext``, ``text_bilstm`` (1-layer bidirectional LSTM, masked
max-pool over time; ``research.layers.recurrent``) and ``text_cnn`` (Kim, "Convolutional Neural Networks for Sentence
Classification", EMNLP 2014: filter widths 3, 4, 5, max-over-time pooling, dropout). All three are called as
``model(ids [B, L] int32, *, train, mask=None)``; ``mask`` defaults to ``ids != 0`` (id 0 is ``<pad>``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.recurrent import Bidirectional, LSTMCell
from research.models.registry import register
from research.ops import sequence as seq_ops

Dtype = Any
LOSSES = ("softmax", "hierarchical")


def _mask(ids: jax.Array, mask: jax.Array | None) -> jax.Array:
  if ids.ndim != 2:
    raise ValueError(f"ids must be [B, L] int, got shape {ids.shape}")
  if mask is None:
    return ids != 0
  if mask.shape != ids.shape:
    raise ValueError(f"mask must be [B, L] = {ids.shape} like ids, got {mask.shape}")
  return mask.astype(bool)


def bag_mean(table: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """``h [B, dim]``: the mean of ``table[ids]`` over the valid positions of each row (0 for an empty bag).

  ``table`` [V, dim], ``ids`` [B, L] int, ``mask`` [B, L] bool.
  """
  return masked_mean(table[ids], mask)


def masked_mean(rows: jax.Array, mask: jax.Array) -> jax.Array:
  """``[B, L, d] -> [B, d]``: the mean over the ``mask`` [B, L] positions (0 where a row has none)."""
  w = mask.astype(rows.dtype)
  return jnp.einsum("bld,bl->bd", rows, w) / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)


class FastText(nn.Module):
  """fastText (module docstring). ``__call__(ids, *, train, mask=None) -> log-probabilities [B, K]`` (float32).

  ``label_counts`` [K] (training label frequencies) shape the Huffman tree of ``loss="hierarchical"`` (default:
  uniform, a balanced tree). Methods: ``text_representation`` (``h`` [B, dim]), ``nll`` (per-example loss [B],
  hierarchical: only the label's path), ``top_k`` (``(log-probs [B, k], labels [B, k])``).
  """
  num_embeddings: int
  num_classes: int
  dim: int = 10
  loss: str = "softmax"
  label_counts: tuple[float, ...] | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.loss not in LOSSES:
      raise ValueError(f"FastText: loss={self.loss!r}; choose one of {LOSSES}")
    if self.num_classes < 2 or self.num_embeddings < 1 or self.dim < 1:
      raise ValueError(f"FastText: need num_classes >= 2, num_embeddings >= 1, dim >= 1; got {self.num_classes}, "
                       f"{self.num_embeddings}, {self.dim}")
    bound = 1.0 / self.dim
    self.embedding = self.param(
        "embedding", lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound), (self.num_embeddings, self.dim),
        self.param_dtype)
    if self.loss == "softmax":
      self.output = self.param("output", nn.initializers.zeros_init(), (self.dim, self.num_classes),
                               self.param_dtype)
    else:
      self.node_weights = self.param("node_weights", nn.initializers.zeros_init(), (self.num_classes - 1, self.dim),
                                     self.param_dtype)

  def tree(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(paths, codes, depth)`` of the Huffman tree over ``label_counts`` (``research.ops.sequence.huffman_tree``)."""
    counts = np.ones(self.num_classes) if self.label_counts is None else np.asarray(self.label_counts, np.float64)
    if counts.shape != (self.num_classes,):
      raise ValueError(f"FastText: label_counts must have num_classes={self.num_classes} entries, got "
                       f"{counts.shape}")
    return seq_ops.huffman_tree(counts)

  def text_representation(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``h [B, dim]``: the averaged word and n-gram embeddings (§2, Figure 1)."""
    return bag_mean(self.embedding.astype(self.dtype), ids, _mask(ids, mask))

  def log_probs(self, hidden: jax.Array) -> jax.Array:
    """``[B, K]`` log-probabilities of the classes for text representations ``hidden [B, dim]`` (float32)."""
    hidden = hidden.astype(jnp.float32)
    if self.loss == "softmax":
      return jax.nn.log_softmax(hidden @ self.output.astype(jnp.float32), axis=-1)
    return seq_ops.hierarchical_log_softmax(hidden, self.node_weights.astype(jnp.float32), *self.tree())

  def __call__(self, ids: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    del train  # no dropout or normalisation: the same function in training and inference
    return self.log_probs(self.text_representation(ids, mask))

  def nll_from_hidden(self, hidden: jax.Array, labels: jax.Array) -> jax.Array:
    """``[B]`` negative log-likelihoods; the hierarchical softmax evaluates only the ``depth[label]`` path nodes."""
    hidden = hidden.astype(jnp.float32)
    if self.loss == "softmax":
      return -jnp.take_along_axis(self.log_probs(hidden), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return seq_ops.hierarchical_nll(hidden, labels, self.node_weights.astype(jnp.float32), *self.tree())

  def nll(self, ids: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return self.nll_from_hidden(self.text_representation(ids, mask), labels)

  def top_k(self, ids: jax.Array, k: int, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The ``k`` most likely classes: ``(log-probabilities [B, k], class ids [B, k] int32)``, best first."""
    if not 1 <= k <= self.num_classes:
      raise ValueError(f"top_k: k must be in [1, num_classes={self.num_classes}], got {k}")
    return jax.lax.top_k(self(ids, mask=mask), k)


class TextBiLSTM(nn.Module):
  """A recurrent baseline: word embeddings -> 1-layer bidirectional LSTM (masked: the backward direction starts at
  each document's last word) -> max-pool over the valid steps -> dropout -> linear. ``-> logits [B, K]``."""
  num_embeddings: int
  num_classes: int
  embed_dim: int = 64
  hidden: int = 64
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    mask = _mask(ids, mask)
    x = nn.Embed(self.num_embeddings, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 embedding_init=nn.initializers.normal(0.1))(ids)
    y, _ = Bidirectional(LSTMCell, self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x, mask=mask)
    pooled = jnp.max(jnp.where(mask[..., None], y, -1e9), axis=1)
    pooled = jnp.where(jnp.any(mask, axis=1, keepdims=True), pooled, 0.0)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(pooled).astype(jnp.float32)


class TextCNN(nn.Module):
  """Kim (2014)'s CNN: word embeddings -> one convolution per filter width (``widths``, ``features`` filters each,
  ReLU) -> max over the valid positions -> concatenation -> dropout -> linear. ``-> logits [B, K]``."""
  num_embeddings: int
  num_classes: int
  embed_dim: int = 64
  features: int = 64
  widths: Sequence[int] = (3, 4, 5)
  dropout: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    mask = _mask(ids, mask)
    x = nn.Embed(self.num_embeddings, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 embedding_init=nn.initializers.normal(0.1))(ids)
    x = x * mask[..., None].astype(x.dtype)
    pooled = []
    for w in self.widths:
      h = nn.relu(nn.Conv(self.features, (w,), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                          name=f"conv{w}")(x))
      pooled.append(jnp.max(jnp.where(mask[..., None], h, 0.0), axis=1))  # ReLU >= 0: padding never wins
    z = nn.Dropout(self.dropout, deterministic=not train)(jnp.concatenate(pooled, axis=-1))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(z).astype(jnp.float32)


@register("fasttext", family="sequence")
def fasttext(num_embeddings: int = 1000, num_classes: int = 2, **kw) -> FastText:
  """fastText: averaged word + hashed n-gram embeddings, linear classifier, softmax or hierarchical softmax."""
  return FastText(num_embeddings=num_embeddings, num_classes=num_classes, **kw)


@register("text_bilstm", family="sequence")
def text_bilstm(num_embeddings: int = 1000, num_classes: int = 2, **kw) -> TextBiLSTM:
  """1-layer BiLSTM text classifier (max-pool over time): the recurrent baseline."""
  return TextBiLSTM(num_embeddings=num_embeddings, num_classes=num_classes, **kw)


@register("text_cnn", family="sequence")
def text_cnn(num_embeddings: int = 1000, num_classes: int = 2, **kw) -> TextCNN:
  """Kim (2014) CNN text classifier: the convolutional baseline."""
  return TextCNN(num_embeddings=num_embeddings, num_classes=num_classes, **kw)


__all__ = ["FastText", "LOSSES", "TextBiLSTM", "TextCNN", "bag_mean", "masked_mean"]
