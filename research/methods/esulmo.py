"""ESuLMO features for a tagger (Li et al., "Subword ELMo", 2019), on the one training loop.

:func:`pretrain_and_embed`: learn BPE merges on the training words (``research.data.bpe``), segment every sentence
into subword ids (``research.data.text.Vocabulary`` of the training subwords), pre-train the bidirectional LSTM
subword language model (``research.models.sequence.esulmo.SubwordBiLM``) on the training split with
``research.train.loop.train`` (validation perplexity reported), then compute every split's per-word features (the
LM's forward and backward states averaged over each word's subwords), frozen for the tagger (ELMo's usage without
the learned layer mix: one layer).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.bpe import BPE, learn_bpe
from research.data.memory import ArrayBatches
from research.data.pipeline import make_eval_batches
from research.data.text import Vocabulary
from research.models.sequence.esulmo import SubwordBiLM
from research.train import loop
from research.train import task as task_lib


def segment_sentences(tokens: list[list[str]], bpe: BPE, vocab: Vocabulary, *, max_subwords: int
                      ) -> dict[str, np.ndarray]:
  """``ids [N, S]`` int32 (0 = padding) and ``word_index [N, S]`` int32 (-1 = padding) of tokenised sentences;
  sentences with more than ``S = max_subwords`` subwords are truncated."""
  n = len(tokens)
  ids = np.zeros((n, max_subwords), np.int32)
  word_index = np.full((n, max_subwords), -1, np.int32)
  for i, sent in enumerate(tokens):
    units, owner = [], []
    for j, w in enumerate(sent):
      seg = bpe.segment(w)
      units += seg
      owner += [j] * len(seg)
    units, owner = units[:max_subwords], owner[:max_subwords]
    ids[i, :len(units)] = vocab.encode(units)
    word_index[i, :len(owner)] = owner
  return {"ids": ids, "word_index": word_index}


@dataclasses.dataclass(eq=False)
class BiLMTask(task_lib.Task):
  """Pre-training of :class:`SubwordBiLM` (mean subword NLL of both directions); eval: perplexity."""
  vocab_size: int = 0
  embed_dim: int = 32
  hidden: int = 64
  learning_rate: float = 3e-3
  clip_norm: float = 5.0

  def __post_init__(self):
    self.model = SubwordBiLM(self.vocab_size, self.embed_dim, self.hidden)

  def init(self, rng, batch):
    ids = jnp.ones((1,) + tuple(batch["ids"].shape[1:]), jnp.int32)
    return self.model.init(rng, ids, method="loss")["params"], {}

  def optimizer(self):
    return optax.chain(optax.clip_by_global_norm(self.clip_norm), optax.adam(self.learning_rate))

  def loss(self, params, model_state, batch, rng, *, train):
    total, count = self.model.apply({"params": params}, batch["ids"], method="loss")
    return (total, count), (model_state, {"lm_nll": total / jnp.maximum(count, 1.0)})

  def eval_step(self, state, batch):
    ids = jnp.where(batch["valid"][:, None] > 0, batch["ids"], 0)
    total, count = self.model.apply({"params": state.params}, ids, method="loss")
    return {"nll": total, "count": count}, {}

  def eval_metrics(self, sums, gathered):
    nll = float(sums["nll"]) / max(float(sums["count"]), 1.0)
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0))}

  def run_info(self):
    return {"task": "subword_bilm"}


def pretrain_and_embed(splits: Mapping[str, Any], cfg, seed: int, max_len: int, workdir: str
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """``({split: features [N, max_len, 2 * lm_hidden] float32}, info)`` for ``splits`` (``research.data.ner
  .Sentences`` of train / validation / test); ``cfg`` carries ``bpe_merges``, ``lm_dim``, ``lm_hidden``,
  ``lm_steps``, ``lm_batch_size``, ``lm_learning_rate``, ``max_subwords`` and ``eval_batch_size``."""
  counts = collections.Counter(w for s in splits["train"].tokens for w in s)
  merges = learn_bpe(counts, cfg.bpe_merges)
  bpe = BPE(merges)
  vocab = Vocabulary.build([u for w in s for u in bpe.segment(w)] for s in splits["train"].tokens)
  longest = max(sum(len(bpe.segment(w)) for w in s) for sp in splits.values() for s in sp.tokens)
  s_len = cfg.max_subwords or longest
  seg = {k: segment_sentences(v.tokens, bpe, vocab, max_subwords=s_len) for k, v in splits.items()}
  task = BiLMTask(vocab_size=len(vocab), embed_dim=cfg.lm_dim, hidden=cfg.lm_hidden,
                  learning_rate=cfg.lm_learning_rate)
  batches = ArrayBatches({"ids": seg["train"]["ids"]}, global_batch_size=cfg.lm_batch_size, seed=seed)
  rows = [{"ids": r} for r in seg["validation"]["ids"]]
  evals = lambda: make_eval_batches(rows, global_batch_size=cfg.eval_batch_size, transform=lambda r: r)
  lcfg = loop.LoopConfig(num_steps=cfg.lm_steps, seed=seed, eval_every=0, checkpoint_every=cfg.lm_steps,
                         keep_checkpoints=1, log_every=50, progress_bar=False, description="esulmo_lm")
  run_config = {"bpe_merges": cfg.bpe_merges, "lm_dim": cfg.lm_dim, "lm_hidden": cfg.lm_hidden,
                "lm_steps": cfg.lm_steps, "lm_batch_size": cfg.lm_batch_size,
                "lm_learning_rate": cfg.lm_learning_rate, "max_subwords": s_len, "seed": seed,
                "dataset": getattr(cfg, "dataset", None), "num_train": len(splits["train"])}
  state, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=workdir,
                              eval_data=evals, run_config=run_config)
  params = jax.device_get(state.params)
  embed = jax.jit(lambda p, ids, wi: task.model.apply({"params": p}, ids, wi, max_len, method="word_features"))
  feats = {}
  for k, v in seg.items():
    out = [np.asarray(embed(params, v["ids"][i:i + cfg.eval_batch_size], v["word_index"][i:i + cfg.eval_batch_size]))
           for i in range(0, len(v["ids"]), cfg.eval_batch_size)]
    feats[k] = np.concatenate(out).astype(np.float32)
  n_words = sum(len(s) for s in splits["train"].tokens)
  info = {"num_merges": len(merges), "subword_vocab": len(vocab), "max_subwords": s_len,
          "subwords_per_word": float(np.sum(seg["train"]["ids"] > 0) / max(n_words, 1)),
          "lm_dev_perplexity": results.get("eval_perplexity"), "lm_wall_seconds": results.get("wall_seconds")}
  return feats, info
