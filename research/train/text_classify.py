"""Text classification on the ONE loop: fastText (Joulin et al., "Bag of Tricks for Efficient Text Classification",
EACL 2017) and the recurrent / convolutional baselines of ``research.models.sequence.fasttext``.

Batches: ``{'ids': int32 [B, L], 'mask': bool [B, L], 'label': int32 [B]}`` (eval batches add ``valid`` [B]); ``ids``
are word ids (baselines) or a fastText bag of word + hashed n-gram ids (``research.data.text.ngram_bag``), padded
with 0 (:func:`text_arrays`).

:class:`TextClassificationTask`:

* optimizer ``"sgd"``: plain SGD whose learning rate decays linearly from ``learning_rate`` to 0 over the run, as
  fastText trains (§2: "stochastic gradient descent and a linearly decaying learning rate"); ``"adam"``: Adam at a
  constant rate (the baselines).
* ``sparse_updates`` (fastText with SGD): the step differentiates the loss w.r.t. the GATHERED embedding rows
  ``A[ids]`` and scatter-adds ``-lr * grad`` into the table, touching only the rows in the batch (the sparse update
  of fastText's own SGD) instead of materialising a dense ``[|vocab| + buckets, dim]`` gradient. Mathematically the
  same step as dense SGD (tested); with several devices the per-device row gradients are gathered, so every device
  applies the same global-batch update.
* eval: ``accuracy`` (precision@1), ``top{k}_accuracy`` (the label among the ``k`` most likely classes) and the mean
  ``loss`` over the real rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import text as text_lib
from research.models.sequence.fasttext import FastText, masked_mean
from research.train import task as task_lib

OPTIMIZERS = ("sgd", "adam")


# ------------------------------------------------------------------------------------------------ data


def text_arrays(token_lists: Sequence[Sequence[str]], labels, vocab: text_lib.Vocabulary, *, word_ngrams: int = 1,
                buckets: int = 0, max_tokens: int = 256, pad_to: int = 8) -> dict[str, np.ndarray]:
  """Padded model inputs of whole documents: ``ids`` int32 [N, L], ``mask`` bool [N, L], ``label`` int32 [N],
  ``num_words`` int32 [N] (words after truncation to ``max_tokens``).

  ``word_ngrams = 1``: word ids only (``buckets`` unused); ``> 1``: the fastText bag (``ngram_bag``: words, then
  hashed n-grams up to ``word_ngrams`` of the truncated words, ids ``>= len(vocab)``). ``L`` is the longest row
  rounded up to a multiple of ``pad_to``.
  """
  if word_ngrams > 1 and buckets < 1:
    raise ValueError(f"--buckets must be >= 1 with --word_ngrams={word_ngrams} (hashed n-gram features)")
  seqs = []
  for toks in token_lists:
    toks = list(toks)[:max_tokens]
    seqs.append(text_lib.ngram_bag(toks, vocab, word_ngrams=word_ngrams, buckets=max(buckets, 1)))
  longest = max([len(s) for s in seqs] + [1])
  ids, mask = text_lib.pad_batch(seqs, -(-longest // pad_to) * pad_to, pad_id=vocab.pad_id)
  words = np.asarray([min(len(t), max_tokens) for t in token_lists], np.int32)
  return {"ids": ids, "mask": mask, "label": np.asarray(labels, np.int32).reshape(-1), "num_words": words}


def eval_batches(arrays: dict[str, np.ndarray], *, global_batch_size: int):
  """A callable returning one pass over ``arrays`` (``ids``, ``mask``, ``label``) in this process's rows of
  zero-padded global batches with ``valid`` [b] (``research.data.memory.padded_eval_rows``)."""
  from research.data.memory import padded_eval_rows
  n = len(arrays["label"])

  def one_pass():
    for rows, valid in padded_eval_rows(n, global_batch_size):
      batch = {k: arrays[k][rows] for k in ("ids", "mask", "label")}
      batch["valid"] = valid
      yield batch

  return one_pass


# ------------------------------------------------------------------------------------------------ task


def _gather_invariant(x: jax.Array, axis_name: str) -> jax.Array:
  """Every device's ``x [b, ...]`` concatenated along axis 0 ``[n b, ...]``, as a device-INVARIANT value (a psum of
  zero buffers holding each device's block), so that the replicated parameters it updates stay replicated under
  ``shard_map``'s replication check."""
  n, i = jax.lax.psum(1, axis_name), jax.lax.axis_index(axis_name)
  buf = jnp.zeros((n * x.shape[0],) + x.shape[1:], x.dtype)
  buf = jax.lax.dynamic_update_slice_in_dim(buf, x, i * x.shape[0], axis=0)
  return jax.lax.psum(buf, axis_name)


@dataclasses.dataclass(eq=False)
class TextClassificationTask(task_lib.Task):
  """Any ``research.models`` text classifier (``model(ids, *, train, mask)`` -> logits or log-probabilities
  [B, K]); :class:`~research.models.sequence.fasttext.FastText` trains through its own ``nll`` (so the hierarchical
  softmax only evaluates the label's path)."""
  model: nn.Module
  num_steps: int
  optimizer_name: str = "sgd"
  learning_rate: float = 0.1
  top_k: int = 1
  sparse_updates: bool = False

  def __post_init__(self):
    if self.optimizer_name not in OPTIMIZERS:
      raise ValueError(f"optimizer={self.optimizer_name!r}; choose one of {OPTIMIZERS}")
    if self.learning_rate <= 0:
      raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    if self.top_k < 1:
      raise ValueError(f"--top_k must be >= 1, got {self.top_k}")
    if self.sparse_updates and not (isinstance(self.model, FastText) and self.optimizer_name == "sgd"):
      raise ValueError("sparse_updates needs a FastText model trained with optimizer 'sgd'")

  @property
  def is_fasttext(self) -> bool:
    return isinstance(self.model, FastText)

  def schedule(self):
    if self.optimizer_name == "sgd":
      return optax.linear_schedule(self.learning_rate, 0.0, self.num_steps)
    return optax.constant_schedule(self.learning_rate)

  def init(self, rng, batch):
    ids = jnp.zeros((1,) + tuple(batch["ids"].shape[1:]), jnp.int32)
    variables = self.model.init({"params": rng, "dropout": rng}, ids, train=False)
    return variables["params"], {}

  def optimizer(self):
    if self.optimizer_name == "sgd":
      return optax.sgd(self.schedule())
    return optax.adam(self.learning_rate)

  def _nll(self, params, batch, rng, train: bool):
    if self.is_fasttext:
      return self.model.apply({"params": params}, batch["ids"], batch["label"], batch["mask"], method=FastText.nll)
    logits = self.model.apply({"params": params}, batch["ids"], mask=batch["mask"], train=train,
                              rngs={"dropout": rng} if train else {})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

  def loss(self, params, model_state, batch, rng, *, train):
    nll = self._nll(params, batch, rng, train)
    loss = jnp.mean(nll)
    return loss, (model_state, {"nll": loss})

  def update(self, state, batch, rng, *, axis_name):
    if not self.sparse_updates:
      return super().update(state, batch, rng, axis_name=axis_name)
    return self._sparse_sgd_update(state, batch, axis_name)

  def _sparse_sgd_update(self, state, batch, axis_name):
    """One SGD step that touches only the embedding rows of the batch (class docstring)."""
    table = state.params["embedding"]
    head = {k: v for k, v in state.params.items() if k != "embedding"}
    ids, mask, labels = batch["ids"], batch["mask"], batch["label"]

    def global_loss(rows, head):
      hidden = masked_mean(rows, mask)
      nll = self.model.apply({"params": {**head, "embedding": table}}, hidden, labels,
                             method=FastText.nll_from_hidden)
      loss = jnp.mean(nll)
      return loss if axis_name is None else jax.lax.pmean(loss, axis_name)

    # The loss is the global-batch mean: g_head is already the all-reduced gradient of the (replicated) head, and
    # g_rows [b, L, dim] is this device's rows' share (1/devices of its local gradient), gathered below.
    loss, (g_rows, g_head) = jax.value_and_grad(global_loss, argnums=(0, 1))(table[ids], head)
    if axis_name is not None:
      ids = _gather_invariant(ids, axis_name)
      g_rows = _gather_invariant(g_rows, axis_name)
    lr = self.schedule()(state.step)
    table = table.at[ids].add((-lr * g_rows).astype(table.dtype))
    head = jax.tree.map(lambda p, g: p - (lr * g).astype(p.dtype), head, g_head)
    metrics = {"loss": loss, "nll": loss}
    return state.replace(step=state.step + 1, params={**head, "embedding": table}), metrics

  def extra_metrics(self, state):
    return {"learning_rate": self.schedule()(state.step)}

  def eval_step(self, state, batch):
    out = self.model.apply({"params": state.params}, batch["ids"], mask=batch["mask"], train=False)
    log_p = jax.nn.log_softmax(out.astype(jnp.float32), axis=-1)  # log-probabilities already: unchanged
    labels = batch["label"].astype(jnp.int32)
    valid = batch["valid"].astype(jnp.float32)
    k = min(self.top_k, log_p.shape[-1])
    _, top = jax.lax.top_k(log_p, k)
    hit1 = (top[:, 0] == labels).astype(jnp.float32)
    hitk = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    sums = {"correct": jnp.sum(hit1 * valid), "correct_k": jnp.sum(hitk * valid), "nll": jnp.sum(nll * valid),
            "count": jnp.sum(valid)}
    return sums, {}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    out = {"accuracy": float(sums["correct"]) / n, "loss": float(sums["nll"]) / n, "count": float(sums["count"])}
    if self.top_k > 1:
      out[f"top{self.top_k}_accuracy"] = float(sums["correct_k"]) / n
    return out

  def run_info(self) -> dict[str, Any]:
    return {"task": "text_classification", "model_class": type(self.model).__name__,
            "optimizer": self.optimizer_name, "sparse_updates": self.sparse_updates}
