"""fastText (Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017) against recurrent and
convolutional text classifiers: ``run(FastTextConfig, workdir) -> summary``.

Data: the offline ``text_topics`` corpus (``research.data.text_corpora``), any TFDS text-classification dataset
prepared in ``data_dir`` (``--text_keys`` names the text features, e.g. ``title,description`` for ``ag_news_subset``),
or two user files ``label<TAB>text`` (``--train_file``/``--test_file``; class ids from the sorted train labels).
Texts are tokenized with ``research.data.text.tokenize``; the vocabulary is built on the training split.

For every seed: one fastText run per ``word_ngrams`` entry (§2.2: bag of words plus hashed n-grams, one table of
``|vocab| + buckets`` rows, ``dim`` hidden units, SGD with a linearly decaying learning rate, ``epochs`` passes,
softmax or hierarchical softmax) and one run per baseline of ``methods`` (``bilstm``: 1-layer BiLSTM, ``cnn``: Kim's
CNN; words only, Adam, ``baseline_epochs`` passes). Every run trains through ``research.train.loop.train``.

Measured per run: test accuracy (precision@1) and top-k accuracy; ``train_seconds`` (the loop's wall time, compile
included) and ``tokens_per_second``: the words processed after the first (compiled) step divided by the wall time
from the end of step 1 to the end of the last step (words = steps x batch x mean words per training document;
batches are drawn with replacement, so an "epoch" is ``N / batch`` steps).

Claims checked (``claims`` in the summary): (a) ``bigrams_beat_unigrams``: fastText with ``word_ngrams=2`` has a
higher mean test accuracy than with 1 (§3.1, Table 1: "bigrams" rows); (b) for every baseline,
``fasttext_speedup_<b>`` = fastText's tokens/s (the ``word_ngrams=2`` run, else the largest n) over the baseline's,
and ``fasttext_faster_at_similar_accuracy_<b>``: speedup >= 10 and fastText's accuracy at most 0.02 below the
baseline's (§3.1, Table 2: "an order of magnitude faster" at similar accuracy). Thresholds are fixed in advance.

Writes ``workdir/<run>_seed<s>/`` (loop outputs; ``results.json`` with ``test_accuracy``), ``summary.json`` and
``summary.md``; a finished run (``results.json`` with the same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from research import fileio
from research.configs import setting
from research.data import text as text_lib
from research.data import text_corpora
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.models.sequence.fasttext import LOSSES, FastText, TextBiLSTM, TextCNN
from research.train import loop
from research.train import task as task_lib
from research.train import text_classify

METHODS = ("fasttext", "bilstm", "cnn")
_POSITIVE = ("dim", "epochs", "batch_size", "learning_rate", "baseline_epochs", "baseline_batch_size",
             "baseline_learning_rate", "max_tokens", "min_count", "embed_dim", "hidden", "top_k", "eval_batch_size")
_NGRAM_NAMES = {1: "unigram", 2: "bigram", 3: "trigram"}


@dataclasses.dataclass(frozen=True)
class FastTextConfig:
  """One fastText experiment (``python -m experiments.fasttext``); each field is one flag."""
  dataset: str = setting("text_topics", "TFDS dataset: text_topics[/small] (offline, built on first use) or one "
                         "prepared in --data_dir (ag_news_subset, imdb_reviews, ...). Ignored with --train_file.")
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  text_keys: tuple[str, ...] = setting(("text",), "Text features joined into each document (ag_news_subset: "
                                       "title,description).")
  train_file: str = setting("", "Train examples as label<TAB>text lines (UTF-8); needs --test_file.")
  test_file: str = setting("", "Test examples as label<TAB>text lines (UTF-8); needs --train_file.")
  max_train_examples: int = setting(0, "Use the first N training documents (0 = all).")
  max_test_examples: int = setting(0, "Evaluate on the first N test documents (0 = all).")
  methods: tuple[str, ...] = setting(("fasttext", "bilstm"), "Models to train: fasttext and the baselines bilstm "
                                     "(1-layer BiLSTM), cnn (Kim 2014).", choices=METHODS)
  seeds: tuple[int, ...] = setting((0,), "Seeds; every run is trained once per seed.")
  word_ngrams: tuple[int, ...] = setting((1, 2), "fastText runs: the longest word n-gram of each (1 = unigrams).")
  buckets: int = setting(2_000_000, "Hash buckets of the word n-grams (fastText's -bucket).")
  dim: int = setting(10, "fastText hidden units (paper: 10).")
  loss: str = setting("softmax", "fastText output layer: softmax or hierarchical (Huffman tree, §2.1).",
                      choices=LOSSES)
  epochs: float = setting(5.0, "fastText passes over the training set (paper: 5).")
  batch_size: int = setting(64, "fastText global batch.")
  learning_rate: float = setting(8.0, "fastText SGD rate of the batch-mean loss, decayed linearly to 0 (fastText's "
                                 "per-example -lr is about learning_rate / batch_size).")
  sparse_updates: bool = setting(True, "fastText: update only the embedding rows of the batch (false: a dense "
                                 "gradient of the whole table, much slower with many buckets).")
  max_tokens: int = setting(256, "Words kept per document (the rest is cut).")
  min_count: int = setting(1, "Words seen fewer times in training map to <unk>.")
  baseline_epochs: float = setting(2.0, "Passes of the baselines over the training set.")
  baseline_batch_size: int = setting(64, "Baselines' global batch.")
  baseline_learning_rate: float = setting(2e-3, "Baselines' Adam learning rate.")
  embed_dim: int = setting(64, "Baselines' word embedding width.")
  hidden: int = setting(64, "BiLSTM units per direction / CNN filters per width.")
  dropout: float = setting(0.5, "CNN dropout before the classifier (the BiLSTM uses none).")
  top_k: int = setting(2, "Also report top-k accuracy (the label among the k most likely classes).")
  eval_batch_size: int = setting(512, "Global eval batch.")
  checkpoint_every: int = setting(0, "Checkpoint every N steps (0 = never; the table has |vocab| + buckets rows).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("max_train_examples", "max_test_examples", "checkpoint_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.methods or len(set(self.methods)) != len(self.methods):
      raise ValueError(f"--methods must list distinct methods, got {list(self.methods)}")
    bad = [m for m in self.methods if m not in METHODS]
    if bad:
      raise ValueError(f"--methods: unknown {bad}; choose from {','.join(METHODS)}")
    if "fasttext" in self.methods:
      if not self.word_ngrams or min(self.word_ngrams) < 1 or len(set(self.word_ngrams)) != len(self.word_ngrams):
        raise ValueError(f"--word_ngrams must list distinct n >= 1 (1 = unigrams, 2 = bigrams), got "
                         f"{list(self.word_ngrams)}")
      if max(self.word_ngrams) > 1 and self.buckets < 1:
        raise ValueError(f"--buckets must be >= 1 with --word_ngrams={','.join(map(str, self.word_ngrams))}")
    if self.loss not in LOSSES:
      raise ValueError(f"--loss={self.loss!r}; choose one of {LOSSES}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if bool(self.train_file) != bool(self.test_file):
      raise ValueError("--train_file and --test_file go together: give both label<TAB>text files (or neither, to "
                       "read --dataset)")
    if not self.text_keys:
      raise ValueError("--text_keys must name at least one text feature (e.g. text, or title,description)")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")


def check_devices(cfg: FastTextConfig) -> None:
  n = jax.device_count()
  for name in ("batch_size", "baseline_batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


# ------------------------------------------------------------------------------------------------ data


def _read_files(cfg: FastTextConfig) -> dict[str, Any]:
  train_labels, train_texts = text_lib.read_label_text_file(cfg.train_file)
  test_labels, test_texts = text_lib.read_label_text_file(cfg.test_file)
  if not train_labels:
    raise ValueError(f"--train_file={cfg.train_file!r} has no examples (expected {text_lib.LABEL_TEXT_FORMAT})")
  if not test_labels:
    raise ValueError(f"--test_file={cfg.test_file!r} has no examples (expected {text_lib.LABEL_TEXT_FORMAT})")
  names = sorted(set(train_labels))
  if len(names) < 2:
    raise ValueError(f"--train_file={cfg.train_file!r} has only the label {names}: need >= 2 classes")
  index = {n: i for i, n in enumerate(names)}
  unseen = sorted(set(test_labels) - set(names))
  if unseen:
    raise ValueError(f"--test_file={cfg.test_file!r} has labels {unseen[:5]} that never occur in --train_file "
                     f"(train labels: {names[:10]}); every test label must appear in training")
  return {"train": (train_texts, np.asarray([index[l] for l in train_labels], np.int32)),
          "test": (test_texts, np.asarray([index[l] for l in test_labels], np.int32)),
          "class_names": names, "source": f"{cfg.train_file} / {cfg.test_file}"}


def load_data(cfg: FastTextConfig) -> dict[str, Any]:
  """Texts, labels, class names, tokens and the vocabulary: ``train``/``test`` -> ``(texts, labels int32 [N])``,
  ``tokens_train``/``tokens_test``, ``vocab``, ``class_names``, ``source``."""
  if cfg.train_file:
    data = _read_files(cfg)
  else:
    info = text_corpora.load_text_split(cfg.dataset, "train", cfg.data_dir, text_keys=cfg.text_keys)
    splits = pipeline_splits(cfg)
    eval_split = next((s for s in ("test", "validation") if s in splits), None)
    if eval_split is None:
      raise ValueError(f"--dataset={cfg.dataset!r} has no test or validation split (splits: {sorted(splits)})")
    test = text_corpora.load_text_split(cfg.dataset, eval_split, cfg.data_dir, text_keys=cfg.text_keys)
    data = {"train": info[:2], "test": test[:2], "class_names": info[2],
            "source": f"{cfg.dataset} ({'+'.join(cfg.text_keys)}; test split {eval_split!r})"}
  (tr_x, tr_y), (te_x, te_y) = data["train"], data["test"]
  if cfg.max_train_examples:
    tr_x, tr_y = tr_x[:cfg.max_train_examples], tr_y[:cfg.max_train_examples]
  if cfg.max_test_examples:
    te_x, te_y = te_x[:cfg.max_test_examples], te_y[:cfg.max_test_examples]
  k = len(data["class_names"])
  if cfg.top_k > k:
    raise ValueError(f"--top_k={cfg.top_k} exceeds the {k} classes of {data['source']}")
  for method, flag in (("fasttext", "batch_size"), ("bilstm", "baseline_batch_size"), ("cnn", "baseline_batch_size")):
    if method in cfg.methods and len(tr_y) < getattr(cfg, flag):
      raise ValueError(f"{len(tr_y)} training documents are fewer than one batch (--{flag}={getattr(cfg, flag)}); "
                       f"lower it or add data")
  tokens_train = [text_lib.tokenize(t) for t in tr_x]
  tokens_test = [text_lib.tokenize(t) for t in te_x]
  vocab = text_lib.Vocabulary.build(tokens_train, min_count=cfg.min_count)
  return {"train": (tr_x, tr_y), "test": (te_x, te_y), "class_names": list(data["class_names"]),
          "source": data["source"], "tokens_train": tokens_train, "tokens_test": tokens_test, "vocab": vocab}


def pipeline_splits(cfg: FastTextConfig) -> dict[str, int]:
  from research.data import pipeline
  return pipeline.get_info(cfg.dataset, cfg.data_dir).splits


# ------------------------------------------------------------------------------------------------ runs


def run_name(method: str, n: int | None = None) -> str:
  return f"fasttext_{_NGRAM_NAMES.get(n, f'{n}gram')}" if method == "fasttext" else method


def make_task(cfg: FastTextConfig, method: str, data: dict, arrays: dict, n: int | None, num_steps: int):
  """The task of one run (model, optimizer, learning rate)."""
  k, v = len(data["class_names"]), len(data["vocab"])
  if method == "fasttext":
    counts = tuple(float(c) for c in np.bincount(arrays["label"], minlength=k))
    model = FastText(num_embeddings=v + (cfg.buckets if n > 1 else 0), num_classes=k, dim=cfg.dim, loss=cfg.loss,
                     label_counts=counts)
    return text_classify.TextClassificationTask(model=model, num_steps=num_steps, optimizer_name="sgd",
                                                learning_rate=cfg.learning_rate, top_k=cfg.top_k,
                                                sparse_updates=cfg.sparse_updates)
  if method == "bilstm":
    model = TextBiLSTM(num_embeddings=v, num_classes=k, embed_dim=cfg.embed_dim, hidden=cfg.hidden)
  else:
    model = TextCNN(num_embeddings=v, num_classes=k, embed_dim=cfg.embed_dim, features=cfg.hidden,
                    dropout=cfg.dropout)
  return text_classify.TextClassificationTask(model=model, num_steps=num_steps, optimizer_name="adam",
                                              learning_rate=cfg.baseline_learning_rate, top_k=cfg.top_k)


class _StepTimer:
  """``on_step`` hook: wall-clock times at the end of step 1 (compiled) and of the last step (device synced)."""

  def __init__(self, num_steps: int):
    self.num_steps, self.times = num_steps, {}

  def __call__(self, step: int, metrics) -> bool:
    if step in (1, self.num_steps):
      jax.block_until_ready(metrics)
      self.times[step] = time.perf_counter()
    return False


def _train_one(cfg: FastTextConfig, method: str, n: int | None, seed: int, data: dict, arrays: dict,
               test_arrays: dict, workdir: str, run_config: dict) -> dict[str, Any]:
  name = f"{run_name(method, n)}_seed{seed}"
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  batch = cfg.batch_size if method == "fasttext" else cfg.baseline_batch_size
  epochs = cfg.epochs if method == "fasttext" else cfg.baseline_epochs
  num_steps = max(1, int(round(epochs * len(arrays["label"]) / batch)))
  task = make_task(cfg, method, data, arrays, n, num_steps)
  batches = ArrayBatches({k: arrays[k] for k in ("ids", "mask", "label")}, global_batch_size=batch, seed=seed)
  timer = _StepTimer(num_steps)
  lcfg = loop.LoopConfig(num_steps=num_steps, seed=seed, eval_every=0, checkpoint_every=cfg.checkpoint_every,
                         keep_checkpoints=1, log_every=max(1, num_steps // 20), progress_bar=False, description=name)
  _, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                          eval_data=text_classify.eval_batches(test_arrays, global_batch_size=cfg.eval_batch_size),
                          run_config=run_config, on_step=timer)
  mean_words = float(np.mean(arrays["num_words"]))
  tps = None
  if num_steps > 1 and len(timer.times) == 2:
    tps = (num_steps - 1) * batch * mean_words / max(timer.times[num_steps] - timer.times[1], 1e-9)
  results.update({"test_accuracy": results.get("eval_accuracy"), "tokens_per_second": tps,
                  "num_train_steps": num_steps, "epochs": num_steps * batch / len(arrays["label"]),
                  "mean_words_per_document": mean_words, "run": run_name(method, n), "seed": seed})
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


_METRICS = ("test_accuracy", "top{k}_accuracy", "train_seconds", "tokens_per_second", "num_params")


def run(cfg: FastTextConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every run x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  (_, tr_y), (_, te_y) = data["train"], data["test"]
  plan = [("fasttext", n) for n in (cfg.word_ngrams if "fasttext" in cfg.methods else ())]
  plan += [(m, None) for m in cfg.methods if m != "fasttext"]
  base = dataclasses.asdict(cfg)
  features: dict[int, tuple[dict, dict]] = {}
  runs: dict[str, list[dict]] = {}
  for method, n in plan:
    key = n if method == "fasttext" else 1
    if key not in features:  # fastText: words + hashed n-grams; baselines: word ids (= the unigram bag)
      kw = dict(word_ngrams=key, buckets=cfg.buckets, max_tokens=cfg.max_tokens)
      features[key] = (text_classify.text_arrays(data["tokens_train"], tr_y, data["vocab"], **kw),
                       text_classify.text_arrays(data["tokens_test"], te_y, data["vocab"], **kw))
    arrays, test_arrays = features[key]
    for seed in cfg.seeds:
      rc = {**base, "run": run_name(method, n), "seed": seed, "vocab_size": len(data["vocab"])}
      runs.setdefault(run_name(method, n), []).append(
          _train_one(cfg, method, n, seed, data, arrays, test_arrays, workdir, rc))

  metric_keys = [m.format(k=cfg.top_k) for m in _METRICS]
  table: dict[str, dict[str, tuple[float | None, float | None]]] = {}
  for name, results in runs.items():
    row = {}
    for m in metric_keys:
      src = f"eval_{m}" if m.startswith("top") else m
      row[m] = reporting.mean_std([r.get(src) for r in results])
    table[name] = row
  claims: dict[str, Any] = {}
  if "fasttext_unigram" in table and "fasttext_bigram" in table:
    claims["bigrams_beat_unigrams"] = bool(table["fasttext_bigram"]["test_accuracy"][0]
                                           > table["fasttext_unigram"]["test_accuracy"][0])
  ft_runs = [run_name("fasttext", n) for n in cfg.word_ngrams] if "fasttext" in cfg.methods else []
  ref = ("fasttext_bigram" if "fasttext_bigram" in table
         else run_name("fasttext", max(cfg.word_ngrams)) if ft_runs else None)
  if ref is not None:
    for b in (m for m in cfg.methods if m != "fasttext"):
      t_ft, t_b = table[ref]["tokens_per_second"][0], table[b]["tokens_per_second"][0]
      if t_ft is not None and t_b:
        speedup = t_ft / t_b
        gap = table[ref]["test_accuracy"][0] - table[b]["test_accuracy"][0]
        claims[f"fasttext_speedup_{b}"] = round(speedup, 1)
        claims[f"fasttext_accuracy_minus_{b}"] = round(gap, 4)
        claims[f"fasttext_faster_at_similar_accuracy_{b}"] = bool(speedup >= 10.0 and gap >= -0.02)
    claims["fasttext_reference_run"] = ref
  k = len(data["class_names"])
  summary = {"config": base, "source": data["source"], "num_classes": k, "class_names": data["class_names"],
             "num_train": int(len(tr_y)), "num_test": int(len(te_y)), "vocab_size": len(data["vocab"]),
             "majority_accuracy": float(np.max(np.bincount(te_y, minlength=k)) / len(te_y)),
             "table": {n: {m: list(v) for m, v in row.items()} for n, row in table.items()},
             "runs": {n: [{m: r.get(f"eval_{m}" if m.startswith("top") else m) for m in metric_keys} for r in rs]
                      for n, rs in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)

  def cell(v, fmt):
    return "-" if v[0] is None else f"{v[0]:{fmt}} ± {v[1]:{fmt}}"
  header = ("run", "test accuracy", f"top-{cfg.top_k} accuracy", "train s", "tokens/s", "params")
  rows = [(name, cell(row["test_accuracy"], ".4f"), cell(row[metric_keys[1]], ".4f"),
           cell(row["train_seconds"], ".1f"), cell(row["tokens_per_second"], ".3g"),
           f"{row['num_params'][0]:.0f}") for name, row in table.items()]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# fastText on {data['source']}, seeds {','.join(map(str, cfg.seeds))}",
      f"{summary['num_train']} train / {summary['num_test']} test documents, {k} classes, vocabulary "
      f"{summary['vocab_size']}, majority class {summary['majority_accuracy']:.3f}. fastText: dim {cfg.dim}, "
      f"{cfg.loss}, {cfg.epochs:g} epochs, batch {cfg.batch_size}, SGD lr {cfg.learning_rate:g} decayed linearly, "
      f"{cfg.buckets} buckets; baselines: Adam {cfg.baseline_learning_rate:g}, {cfg.baseline_epochs:g} epochs, batch "
      f"{cfg.baseline_batch_size}. train s: the loop's wall time (compile included); tokens/s: words per second "
      f"after the first step. Mean ± std over seeds.",
      reporting.markdown_table(header, rows),
      "claims: " + (json.dumps(claims) if claims else "none checked (needs fastText 1 and 2 / a baseline)"))
  return summary
