"""TENER (Yan et al. 2019) on an offline NER corpus: ``run(TENERConfig, workdir) -> summary``.

For every seed, one run per ``variants`` entry, all with the same embedding layer (word embedding + character
Transformer), data, optimiser and step budget (``research.train.tagging``):

* ``tener``: relative direction- and distance-aware, un-scaled attention (§3.2.2-3.2.3) + CRF (§3.3);
* ``transformer``: the vanilla Transformer encoder (absolute sinusoids, scaled attention, Q/K/V projections) + CRF;
* ``tener_softmax``: TENER without the CRF (per-token softmax; the paper's ablation);
* ``tener_scaled``: TENER with ``1/sqrt(d_k)`` scaling put back (§3.2.3's ablation);
* ``bilstm_crf``: a BiLSTM-CRF (Huang et al. 2015; Lample et al. 2016) reference;
* ``transformer_softmax``: the vanilla encoder without CRF;
* ``tener_esulmo``: TENER whose input also carries ESuLMO features (``research.methods.esulmo``: BPE subword units
  learned on the training tokens, a bidirectional LSTM language model pre-trained on them, its hidden states pooled
  per word), the LM pre-trained once per seed on the training split and frozen.

Evaluation: entity-level F1 (conlleval's definition, ``research.train.sequence_metrics``) of Viterbi (argmax for
softmax) tags on the validation and test splits at the end of training (no model selection). Claims checked on the
mean test F1 over seeds (``claims`` in the summary): ``tener_beats_transformer`` (§4, Table 2: the adapted encoder
beats the vanilla one on NER), ``crf_helps`` (tener vs tener_softmax), and, when trained, ``unscaled_helps`` and
``esulmo_helps``; ``*_per_seed`` says whether the comparison holds for every seed.

Writes ``workdir/<variant>_seed<s>/`` (loop outputs, ``results.json``), ``summary.json`` and ``summary.md``; a
finished run (same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from research import fileio
from research.configs import setting
from research.data import ner
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.train import loop
from research.train import tagging
from research.train import task as task_lib

VARIANTS: dict[str, dict[str, Any]] = {
    "tener": {"encoder": "tener", "output": "crf"},
    "transformer": {"encoder": "transformer", "output": "crf"},
    "tener_softmax": {"encoder": "tener", "output": "softmax"},
    "tener_scaled": {"encoder": "tener", "output": "crf", "scaled": True},
    "bilstm_crf": {"encoder": "bilstm", "output": "crf"},
    "transformer_softmax": {"encoder": "transformer", "output": "softmax"},
    "tener_esulmo": {"encoder": "tener", "output": "crf", "esulmo": True},
}
CLAIMS = (("tener_beats_transformer", "tener", "transformer"), ("crf_helps", "tener", "tener_softmax"),
          ("unscaled_helps", "tener", "tener_scaled"), ("esulmo_helps", "tener_esulmo", "tener"))
_POSITIVE = ("num_steps", "batch_size", "learning_rate", "d_model", "num_heads", "num_layers", "ff_dim", "word_dim",
             "char_dim", "char_heads", "char_layers", "char_ff_dim", "lstm_hidden", "lstm_layers", "min_word_count",
             "max_word_len", "eval_batch_size", "clip_norm", "bpe_merges", "lm_dim", "lm_hidden", "lm_steps",
             "lm_batch_size", "lm_learning_rate")
_RATES = ("dropout", "embed_dropout", "attention_dropout", "fc_dropout", "word_dropout")


@dataclasses.dataclass(frozen=True)
class TENERConfig:
  """One TENER experiment (``python -m experiments.tener``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  dataset: str = setting("grammar_ner", "NER dataset: grammar_ner[/config] (offline, built on first use) or a TFDS "
                         "dataset prepared in --data_dir with 'tokens' and 'ner' features (e.g. conll2003).")
  variants: tuple[str, ...] = setting(("tener", "transformer", "tener_softmax", "bilstm_crf"),
                                      "Taggers to train (--variant is the same flag).", choices=tuple(VARIANTS))
  seeds: tuple[int, ...] = setting((0, 1), "Seeds; every variant is trained once per seed.")
  num_steps: int = setting(1000, "Training steps of every tagger.")
  batch_size: int = setting(32, "Global batch (sentences).")
  learning_rate: float = setting(1e-3, "Peak Adam(W) learning rate (linear warm-up, then linear decay to 0).")
  weight_decay: float = setting(0.0, "AdamW weight decay.")
  warmup_steps: int = setting(50, "Linear warm-up steps.")
  clip_norm: float = setting(5.0, "Gradient clipping by global norm.")
  d_model: int = setting(64, "Transformer width (TENER: 128-400 on CoNLL-2003).")
  num_heads: int = setting(4, "Attention heads of the word-level encoder (d_model / num_heads must be even).")
  num_layers: int = setting(2, "Transformer layers of the word-level encoder.")
  ff_dim: int = setting(128, "Feed-forward width of the word-level encoder.")
  word_dim: int = setting(50, "Word embedding width (randomly initialised: no pretrained vectors offline).")
  char_dim: int = setting(32, "Character embedding / character Transformer width.")
  char_heads: int = setting(2, "Heads of the character Transformer.")
  char_layers: int = setting(1, "Layers of the character Transformer.")
  char_ff_dim: int = setting(64, "Feed-forward width of the character Transformer.")
  lstm_hidden: int = setting(64, "Hidden units per direction of the bilstm_crf baseline.")
  lstm_layers: int = setting(1, "BiLSTM layers of the bilstm_crf baseline.")
  dropout: float = setting(0.1, "Dropout inside the encoders (residual branches, between LSTM layers).")
  embed_dropout: float = setting(0.3, "Dropout on the concatenated embeddings.")
  attention_dropout: float = setting(0.0, "Dropout on the attention weights.")
  fc_dropout: float = setting(0.3, "Dropout before the emission layer.")
  word_dropout: float = setting(0.05, "Training words replaced by <unk> with this probability (characters kept).")
  min_word_count: int = setting(2, "Training words seen fewer times are <unk> (their characters still count).")
  lowercase: bool = setting(True, "Lowercase words for the word embedding (characters keep the case).")
  max_len: int = setting(0, "Tokens per sentence (0 = the longest sentence of the loaded splits; longer ones are "
                         "truncated, gold tags included).")
  max_word_len: int = setting(16, "Characters per word for the character encoder.")
  max_train_sentences: int = setting(0, "Train on the first N training sentences (0 = all).")
  max_eval_sentences: int = setting(0, "Evaluate on the first N validation and test sentences (0 = all).")
  eval_batch_size: int = setting(256, "Global eval batch (sentences).")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")
  bpe_merges: int = setting(300, "ESuLMO: BPE merge operations learned on the training words.")
  lm_dim: int = setting(32, "ESuLMO: subword embedding width of the language model.")
  lm_hidden: int = setting(64, "ESuLMO: LSTM units per direction of the language model.")
  lm_steps: int = setting(600, "ESuLMO: language-model pre-training steps.")
  lm_batch_size: int = setting(32, "ESuLMO: language-model batch (sentences).")
  lm_learning_rate: float = setting(3e-3, "ESuLMO: language-model Adam learning rate.")
  max_subwords: int = setting(0, "ESuLMO: subwords per sentence (0 = the longest segmented sentence).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("weight_decay", "warmup_steps", "max_len", "max_train_sentences", "max_eval_sentences",
                 "eval_every", "max_subwords"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    for name in _RATES:
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
    if not self.variants:
      raise ValueError("--variants is empty; choose from " + ",".join(VARIANTS))
    bad = [v for v in self.variants if v not in VARIANTS]
    if bad:
      raise ValueError(f"--variant(s) {bad}: choose from {','.join(VARIANTS)}")
    if len(set(self.variants)) != len(self.variants):
      raise ValueError(f"--variants lists a variant twice: {','.join(self.variants)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    for width, heads, w, h in (("d_model", "num_heads", self.d_model, self.num_heads),
                               ("char_dim", "char_heads", self.char_dim, self.char_heads)):
      if w % h or (w // h) % 2:
        raise ValueError(f"--{width}={w} must be a multiple of --{heads}={h} with an even quotient (the relative "
                         f"encoding R_(t-j) of TENER Eq. 17 has d_k / 2 sin-cos pairs per head)")

  def model_kwargs(self, variant: str) -> dict[str, Any]:
    v = dict(VARIANTS[variant])
    v.pop("esulmo", None)
    return {"word_dim": self.word_dim, "char_dim": self.char_dim, "char_heads": self.char_heads,
            "char_layers": self.char_layers, "char_ff_dim": self.char_ff_dim, "d_model": self.d_model,
            "num_heads": self.num_heads, "ff_dim": self.ff_dim, "lstm_hidden": self.lstm_hidden,
            "num_layers": self.lstm_layers if v["encoder"] == "bilstm" else self.num_layers,
            "dropout": self.dropout, "embed_dropout": self.embed_dropout,
            "attention_dropout": self.attention_dropout, "fc_dropout": self.fc_dropout, **v}


def load_data(cfg: TENERConfig) -> dict[str, Any]:
  """The three splits in memory, the vocabularies (from the training split) and the encoded arrays."""
  limit = lambda n: n or None
  splits = {"train": ner.load_split(cfg.dataset, "train", cfg.data_dir, limit=limit(cfg.max_train_sentences))}
  for s in ("validation", "test"):
    splits[s] = ner.load_split(cfg.dataset, s, cfg.data_dir, limit=limit(cfg.max_eval_sentences))
  for s, sents in splits.items():
    if not len(sents):
      raise ValueError(f"--dataset={cfg.dataset!r}: the {s} split has no non-empty sentence")
  if len(splits["train"]) < cfg.batch_size:
    raise ValueError(f"--batch_size={cfg.batch_size} exceeds the {len(splits['train'])} training sentences "
                     f"(--max_train_sentences={cfg.max_train_sentences})")
  tag_names = splits["train"].tag_names
  words, chars = ner.build_vocabularies(splits["train"].tokens, min_word_count=cfg.min_word_count,
                                        lowercase=cfg.lowercase)
  max_len = cfg.max_len or max(len(t) for s in splits.values() for t in s.tokens)
  arrays = {s: ner.encode(sents, words, chars, tag_names, max_len=max_len, max_word_len=cfg.max_word_len,
                          lowercase=cfg.lowercase) for s, sents in splits.items()}
  return {"splits": splits, "arrays": arrays, "words": words, "chars": chars, "tag_names": tag_names,
          "max_len": max_len}


def _train_one(name: str, task, arrays: dict[str, dict[str, np.ndarray]], cfg: TENERConfig, seed: int,
               unk_id: int, workdir: str, run_config: dict) -> dict[str, Any]:
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  keys = [k for k in ("words", "chars", "tags", "features") if k in arrays["train"]]
  batches = ArrayBatches({k: arrays["train"][k] for k in keys}, global_batch_size=cfg.batch_size, seed=seed,
                         transform=tagging.WordDropout(cfg.word_dropout, unk_id))
  evals = tagging.eval_batches([arrays["validation"], arrays["test"]], global_batch_size=cfg.eval_batch_size)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.num_steps, keep_checkpoints=1, log_every=50, progress_bar=False,
                         description=name)
  _, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out, eval_data=evals,
                          run_config=run_config)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


_METRICS = ("test_f1", "dev_f1", "test_precision", "test_recall", "test_unseen_recall", "test_f1_PER", "test_f1_ORG",
            "test_f1_LOC", "test_f1_MISC")


def _mean_std(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(np.mean(a)), float(np.std(a))


def run(cfg: TENERConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every variant x seed; returns (and writes) the summary."""
  t0 = time.time()
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  base = dataclasses.asdict(cfg)
  runs: dict[str, list[dict]] = {}
  lm_info: dict[str, Any] = {}
  for seed in cfg.seeds:
    esulmo_arrays = None
    for variant in cfg.variants:
      arrays = data["arrays"]
      if VARIANTS[variant].get("esulmo"):
        if esulmo_arrays is None:
          from research.methods import esulmo  # noqa: PLC0415  (only when the variant is asked for)
          feats, info = esulmo.pretrain_and_embed(data["splits"], cfg, seed, data["max_len"],
                                                  os.path.join(workdir, f"esulmo_lm_seed{seed}"))
          esulmo_arrays = {s: {**a, "features": feats[s]} for s, a in arrays.items()}
          lm_info[f"seed{seed}"] = info
        arrays = esulmo_arrays
      task = tagging.TaggingTask(
          model_kwargs={"vocab_size": len(data["words"]), "char_vocab_size": len(data["chars"]),
                        **cfg.model_kwargs(variant)},
          tag_names=data["tag_names"], learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
          warmup_steps=cfg.warmup_steps, num_steps=cfg.num_steps, clip_norm=cfg.clip_norm)
      rc = {**base, "run": variant, "seed": seed}
      runs.setdefault(variant, []).append(
          _train_one(f"{variant}_seed{seed}", task, arrays, cfg, seed, data["words"].unk_id, workdir, rc))

  table: dict[str, dict[str, tuple[float, float]]] = {}
  for name, results in runs.items():
    table[name] = {m: _mean_std([r[f"eval_{m}"] for r in results]) for m in _METRICS
                   if all(f"eval_{m}" in r for r in results)}
    table[name]["wall_seconds"] = _mean_std([r["wall_seconds"] for r in results])
    table[name]["num_params"] = (float(results[0].get("num_params", 0)), 0.0)
  claims: dict[str, Any] = {}
  for claim, a, b in CLAIMS:
    if a in runs and b in runs:
      claims[claim] = bool(table[a]["test_f1"][0] > table[b]["test_f1"][0])
      claims[f"{claim}_per_seed"] = [bool(ra["eval_test_f1"] > rb["eval_test_f1"])
                                     for ra, rb in zip(runs[a], runs[b])]
  splits = data["splits"]
  summary = {"config": base, "dataset": cfg.dataset, "tag_names": list(data["tag_names"]),
             "num_sentences": {s: len(v) for s, v in splits.items()}, "max_len": data["max_len"],
             "word_vocab": len(data["words"]), "char_vocab": len(data["chars"]),
             "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()},
             "runs": {k: [{m: r.get(f"eval_{m}") for m in _METRICS} for r in v] for k, v in runs.items()},
             "claims": claims, "esulmo": lm_info, "wall_seconds": round(time.time() - t0, 1),
             "loadavg": _loadavg()}
  reporting.write_summary(workdir, summary)
  metrics = ("test_f1", "dev_f1", "test_unseen_recall")
  header = ("variant",) + metrics + ("per type test F1 (PER/ORG/LOC/MISC)", "params", "wall s")
  rows = []
  fmt = lambda row, m: f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if m in row else "-"
  for name, row in table.items():
    types = "/".join(f"{row[m][0]:.3f}" if m in row else "-" for m in _METRICS[5:])
    rows.append((name, *(fmt(row, m) for m in metrics), types, f"{row['num_params'][0]:.0f}",
                 f"{row['wall_seconds'][0]:.0f}"))
  n = summary["num_sentences"]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# TENER on {cfg.dataset}: seeds {','.join(map(str, cfg.seeds))}, {cfg.num_steps} steps at batch "
      f"{cfg.batch_size}",
      f"{n['train']} train / {n['validation']} validation / {n['test']} test sentences; entity-level F1 "
      f"(conlleval) of the final model, mean ± std over seeds; unseen recall = recall of test entities with a name "
      f"never seen in training.",
      reporting.markdown_table(header, rows),
      "claims: " + (json.dumps(claims) if claims else "none checked (needs the compared variants)"))
  return summary


def _loadavg() -> str | None:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return None
