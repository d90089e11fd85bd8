"""Sequence tagging (named entity recognition) on the ONE loop: TENER, the vanilla Transformer and BiLSTM-CRF
taggers of ``research.models.sequence.tener`` trained with the CRF negative log-likelihood (or the per-token softmax
cross-entropy), evaluated by entity-level F1 of the Viterbi (or argmax) tags (``research.train.sequence_metrics``,
conlleval's definition).

Batches (``research.data.ner.encode``): ``words [B, T]`` int32 (0 = padding: ``words > 0`` is the mask), ``chars
[B, T, C]`` int32, ``tags [B, T]`` int32, optionally ``features [B, T, F]`` float32 (ESuLMO's per-word language-model
states). The loss is the global mean of the per-sentence NLL (``(sum, count)``, so any device count trains the same
model). Eval batches add ``length [B]``, ``role [B]`` (0 = validation, 1 = test; :func:`eval_batches`), ``valid``
and optionally ``unseen [B, T]``; metrics are reported per role (``dev_f1``, ``test_f1``, per-type F1, precision,
recall, token accuracy, and ``test_unseen_recall``: recall of the gold test entities that contain a name the
training split never showed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from research.data.pipeline import make_eval_batches
from research.models.sequence.tener import SequenceTagger
from research.train import sequence_metrics as sm
from research.train import task as task_lib

ROLES = ("dev", "test")


class WordDropout:
  """``ArrayBatches`` transform: each real word id is replaced by ``unk_id`` with probability ``rate`` (Lample et
  al. 2016's unknown-word training; the characters are kept, so the model learns to tag from spelling)."""

  def __init__(self, rate: float, unk_id: int):
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"--word_dropout={rate} must lie in [0, 1)")
    self.rate, self.unk_id = rate, unk_id

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if not self.rate:
      return batch
    words = batch["words"]
    drop = (rng.random(words.shape) < self.rate) & (words > 0)
    return {**batch, "words": np.where(drop, self.unk_id, words).astype(np.int32)}


def eval_batches(splits: Sequence[Mapping[str, np.ndarray]], *, global_batch_size: int,
                 keys: Sequence[str] = ("words", "chars", "tags", "length", "features", "unseen")):
  """A callable returning one pass over ``splits`` (role ``i`` = ``splits[i]``: validation, test) in global batches
  with ``valid``; only the ``keys`` present in every split are kept."""
  present = [k for k in keys if all(k in s for s in splits)]
  rows = []
  for role, arrays in enumerate(splits):
    n = len(arrays["words"])
    for i in range(n):
      rows.append({**{k: arrays[k][i] for k in present}, "role": np.int32(role)})
  return lambda: make_eval_batches(rows, global_batch_size=global_batch_size, transform=lambda r: r)


@dataclasses.dataclass(eq=False)
class TaggingTask(task_lib.Task):
  """Trains a :class:`SequenceTagger` (``model_kwargs``) with Adam(W), linear warm-up then linear decay to 0 over
  ``num_steps``, gradient clipping by global norm ``clip_norm``."""
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  tag_names: Sequence[str] = ()
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  warmup_steps: int = 50
  num_steps: int = 1000
  clip_norm: float = 5.0

  def __post_init__(self):
    if not self.tag_names:
      raise ValueError("TaggingTask needs tag_names")
    self.model = SequenceTagger(num_tags=len(self.tag_names), **dict(self.model_kwargs))

  def _inputs(self, batch) -> dict[str, Any]:
    return {"chars": batch.get("chars"), "features": batch.get("features")}

  def init(self, rng, batch):
    sl = lambda k: None if k not in batch else jnp.zeros((1,) + tuple(batch[k].shape[1:]), batch[k].dtype)
    words = jnp.ones((1,) + tuple(batch["words"].shape[1:]), jnp.int32)
    return self.model.init({"params": rng}, words, chars=sl("chars"), features=sl("features"))["params"], {}

  def optimizer(self):
    warm = max(min(self.warmup_steps, self.num_steps - 1), 1)
    schedule = optax.join_schedules([optax.linear_schedule(0.0, self.learning_rate, warm),
                                     optax.linear_schedule(self.learning_rate, 0.0, max(self.num_steps - warm, 1))],
                                    [warm])
    return optax.chain(optax.clip_by_global_norm(self.clip_norm),
                       optax.adamw(schedule, weight_decay=self.weight_decay))

  def loss(self, params, model_state, batch, rng, *, train):
    nll = self.model.apply({"params": params}, batch["words"], batch["tags"], train=train, method="nll",
                           rngs={"dropout": rng}, **self._inputs(batch))
    real = jnp.any(batch["words"] > 0, axis=-1).astype(jnp.float32)
    total = jnp.sum(nll * real)
    return (total, jnp.sum(real)), (model_state, {"nll": total / jnp.maximum(jnp.sum(real), 1.0)})

  def eval_step(self, state, batch):
    mask = batch["words"] > 0
    crf_mask = mask.at[:, 0].set(True)  # padding rows of the eval batches: keep the CRF's first step defined
    pred = self.model.apply({"params": state.params}, batch["words"], mask=crf_mask, method="decode",
                            **self._inputs(batch))
    pred = jnp.where(mask, pred, 0)
    gathered = {"pred": pred, "tags": batch["tags"], "length": batch["length"], "role": batch["role"],
                "valid": batch["valid"]}
    if "unseen" in batch:
      gathered["unseen"] = batch["unseen"]
    return {"sentences": jnp.sum(batch["valid"])}, gathered

  def eval_metrics(self, sums, gathered):
    g = {k: np.asarray(v) for k, v in gathered.items()}
    keep = g["valid"] > 0
    out = {"sentences": float(sums["sentences"])}
    for role, name in enumerate(ROLES):
      sel = keep & (g["role"] == role)
      if not sel.any():
        continue
      gold = sm.ids_to_tags(g["tags"][sel], g["length"][sel], self.tag_names)
      pred = sm.ids_to_tags(g["pred"][sel], g["length"][sel], self.tag_names)
      scores = sm.entity_scores(gold, pred)
      out.update({f"{name}_f1": scores["f1"], f"{name}_precision": scores["precision"],
                  f"{name}_recall": scores["recall"], f"{name}_token_accuracy": sm.token_accuracy(gold, pred)})
      for typ, row in scores["per_type"].items():
        out[f"{name}_f1_{typ}"] = row["f1"]
      if "unseen" in g and g["unseen"][sel].any():
        out[f"{name}_unseen_recall"] = unseen_recall(gold, pred, g["unseen"][sel])
    return out

  def run_info(self):
    return {"task": "tagging", "encoder": self.model.encoder, "output": self.model.output}


def unseen_recall(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], unseen: np.ndarray) -> float:
  """Recall of the gold entities that contain a token flagged ``unseen`` (names from held-out lexicon parts)."""
  hit = total = 0
  for g, p, u in zip(gold, pred, unseen):
    predicted = set(sm.extract_entities(p))
    for e in sm.extract_entities(g):
      if np.asarray(u)[e[1]:e[2]].any():
        total += 1
        hit += e in predicted
  return hit / total if total else float("nan")
