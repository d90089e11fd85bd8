"""A long-range memory task for recurrent cells on the ONE loop: remember the first ``k`` symbols, recall them after
``T`` distractor steps (the "remember the first symbols over a long time lag" tasks of Hochreiter & Schmidhuber,
Neural Computation 1997, §5, in a recall form like the copying memory problem of Arjovsky et al., ICML 2016, §4.1).

A sequence (:func:`copy_recall`) of length ``k + T + 1`` over a vocabulary of ``alphabet + distractors + 1`` tokens::

    s_1 ... s_k | d_1 ... d_T | RECALL          s_j in [0, alphabet), d_t in [alphabet, alphabet + distractors)

(symbols and distractors uniform and independent; ``RECALL = alphabet + distractors``); the targets are ``s_1 ..
s_k``, predicted from the network's output at the RECALL step by ``k`` softmax heads (:class:`RecallRNN`). Nothing
after step ``k`` carries information about the targets, so the state must hold them for ``T + 1`` steps while
ignoring ``T`` random distractors; chance is ``1 / alphabet`` per symbol.

:class:`SequenceMemoryTask` trains :class:`research.models.sequence.recall_rnn.RecallRNN` with mean cross-entropy
over the ``k`` symbols (Adam, global-norm gradient clipping); eval reports ``accuracy`` (per symbol),
``sequence_accuracy`` (all ``k`` right) and ``loss`` on a held-out set (:func:`eval_batches`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
import optax

from research.data.memory import padded_eval_rows
from research.models.sequence.recall_rnn import RecallRNN
from research.train import task as task_lib


def copy_recall(num: int, *, delay: int, num_symbols: int, alphabet: int, distractors: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
  """``num`` sequences of the module docstring: ``tokens`` int32 [num, k + T + 1], ``targets`` int32 [num, k]
  (k = ``num_symbols``, T = ``delay``)."""
  for name, v, low in (("num", num, 1), ("num_symbols", num_symbols, 1), ("delay", delay, 0), ("alphabet", alphabet, 2),
                       ("distractors", distractors, 1)):
    if v < low:
      raise ValueError(f"copy_recall: {name}={v} must be >= {low}")
  symbols = rng.integers(0, alphabet, (num, num_symbols))
  noise = rng.integers(alphabet, alphabet + distractors, (num, delay))
  recall = np.full((num, 1), alphabet + distractors)
  tokens = np.concatenate([symbols, noise, recall], axis=1).astype(np.int32)
  return {"tokens": tokens, "targets": symbols.astype(np.int32)}


def vocab_size(alphabet: int, distractors: int) -> int:
  """Symbols, distractors and the RECALL marker."""
  return alphabet + distractors + 1


def eval_batches(arrays: Mapping[str, np.ndarray], *, global_batch_size: int):
  """A callable returning one pass over ``arrays`` (this process's rows of padded global batches, plus ``valid``)."""
  n = len(arrays["tokens"])
  padded_eval_rows(n, global_batch_size)  # checks the batch size now

  def one_pass():
    for rows, valid in padded_eval_rows(n, global_batch_size):
      yield {**{k: v[rows] for k, v in arrays.items()}, "valid": valid}

  return one_pass


@dataclasses.dataclass(eq=False)
class SequenceMemoryTask(task_lib.Task):
  """Trains :class:`RecallRNN` (``cell``, ``features``, ``num_layers``, ``forget_bias``, ``update_bias``) on
  ``copy_recall`` batches ``{'tokens': int32 [B, L], 'targets': int32 [B, k]}``."""
  cell: str = "lstm"
  features: int = 32
  num_layers: int = 1
  forget_bias: float = 1.0
  update_bias: float = 0.0
  alphabet: int = 8
  distractors: int = 8
  num_symbols: int = 2
  learning_rate: float = 3e-3
  clip_norm: float = 1.0

  def __post_init__(self):
    self.model = RecallRNN(self.cell, self.features, vocab_size(self.alphabet, self.distractors), self.num_symbols,
                           self.alphabet, num_layers=self.num_layers, forget_bias=self.forget_bias,
                           update_bias=self.update_bias)

  def init(self, rng, batch):
    tokens = jnp.zeros((1,) + tuple(batch["tokens"].shape[1:]), jnp.int32)
    return self.model.init(rng, tokens)["params"], {}

  def optimizer(self):
    return optax.chain(optax.clip_by_global_norm(self.clip_norm), optax.adam(self.learning_rate))

  def _logits(self, params, batch):
    return self.model.apply({"params": params}, batch["tokens"])

  def loss(self, params, model_state, batch, rng, *, train):
    logits = self._logits(params, batch)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]))
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["targets"])
    return ce, (model_state, {"cross_entropy": ce, "train_accuracy": acc})

  def eval_step(self, state, batch):
    logits = self._logits(state.params, batch)
    valid = batch["valid"]
    right = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)  # [b, k]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(-1)
    return {"right": jnp.sum(right.mean(-1) * valid), "all_right": jnp.sum(jnp.min(right, -1) * valid),
            "ce": jnp.sum(ce * valid), "n": jnp.sum(valid)}, {}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["n"]), 1.0)
    return {"accuracy": float(sums["right"]) / n, "sequence_accuracy": float(sums["all_right"]) / n,
            "loss": float(sums["ce"]) / n, "examples": float(sums["n"])}

  def run_info(self) -> dict[str, Any]:
    return {"task": "copy_recall", "cell": self.cell}
