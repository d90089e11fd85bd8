r"""fastText training throughput: ours (``research.train.text_classify`` on the loop, sparse SGD) vs the fastText C++
library (the ``fasttext`` PyPI package), same corpus and settings, 1 and 2 threads, interleaved.

  python3 -m venv /work/ftenv && /work/ftenv/bin/pip install fasttext-wheel     # the peer, never a dependency
  python -m benchmarks.fasttext --fasttext_python=/work/ftenv/bin/python
  python -m benchmarks.fasttext --fasttext_python=/work/ftenv/bin/python --dataset=text_topics/small --repeats=1 \
      --batch_sizes=64

Both sides read the ``text_topics`` train split tokenized by ``research.data.text.tokenize`` (written as
``__label__<class> tok tok ...`` lines for the peer, whose whitespace split then gives the same tokens) and train
``dim`` hidden units, ``epochs`` passes, word bigrams hashed into ``buckets`` buckets, softmax loss, a linearly
decaying learning rate, ``minCount`` 1. The peer updates after every example with ``-lr = lr``; ours steps on the
mean loss of a batch of ``B`` (each of ``--batch_sizes``) with rate ``lr x B``, the same step per example. Accuracy:
precision@1 on the test split (the peer's ``model.test``).

Threads: ``1``: both pinned to one core (``taskset -c 0``; the peer ``thread=1``, XLA with
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``); ``2``: unpinned, the peer ``thread=2``
(Hogwild), XLA's default thread pool. Each side runs in its own subprocess per repeat, the two sides alternating.

Reported per side and thread count (medians over ``--repeats``): ``train_seconds`` (ours: the loop's wall time,
compile included; peer: ``train_supervised``, reading the file and building the dictionary included),
``tokens_per_second`` = ``epochs x training words / train_seconds`` (words as tokenized, no end-of-line tokens), for
ours also the steady-state rate after the first (compiled) step, and test accuracy. Ratio = ours / peer (> 1: ours
faster).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("fasttext_python", "/work/ftenv/bin/python", "Interpreter with the fasttext package.")
flags.DEFINE_string("dataset", "text_topics", "text_topics config (text_topics, text_topics/small).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
flags.DEFINE_integer("dim", 10, "Hidden units.")
flags.DEFINE_float("epochs", 5.0, "Passes over the training set.")
flags.DEFINE_integer("buckets", 2_000_000, "Hash buckets of the bigrams.")
flags.DEFINE_list("batch_sizes", ["64", "256"], "Our batch sizes (the peer trains one example at a time).")
flags.DEFINE_float("lr", 0.125, "Per-example learning rate: the peer's -lr; ours is lr x batch on the batch mean.")
flags.DEFINE_integer("batch_size", 64, "internal: the worker's batch.")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts to measure.")
flags.DEFINE_integer("repeats", 3, "Repeats (median reported).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
flags.DEFINE_string("worker", None, "internal: 'ours' runs one training of our side and prints JSON.")
flags.DEFINE_string("workdir", None, "internal: the directory with the exported corpus.")

_PEER = r"""
import json, sys, time
import fasttext
s = json.loads(sys.argv[1])
t = time.perf_counter()
m = fasttext.train_supervised(s["train"], dim=s["dim"], epoch=s["epochs"], lr=s["lr"], wordNgrams=2,
                              bucket=s["buckets"], thread=s["threads"], minCount=1, loss="softmax", verbose=0)
dt = time.perf_counter() - t
n, p1, _ = m.test(s["test"])
print(json.dumps({"train_seconds": dt, "accuracy": p1, "num_test": n, "version": fasttext.__file__}))
"""


def _export(workdir: str) -> dict:
  """Writes train/test ``__label__`` files and the tokenized corpus (JSON) into ``workdir``; returns its stats."""
  from research.data import text as text_lib
  from research.data import text_corpora
  out = {}
  for split in ("train", "test"):
    texts, labels, names = text_corpora.load_text_split(FLAGS.dataset, split, FLAGS.data_dir)
    toks = [text_lib.tokenize(t) for t in texts]
    with open(os.path.join(workdir, f"{split}.txt"), "w", encoding="utf-8") as f:
      for t, y in zip(toks, labels):
        f.write(f"__label__{names[y]} {' '.join(t)}\n")
    with open(os.path.join(workdir, f"{split}.json"), "w", encoding="utf-8") as f:
      json.dump({"tokens": toks, "labels": [int(y) for y in labels], "num_classes": len(names)}, f)
    out[split] = {"documents": len(toks), "words": sum(len(t) for t in toks)}
  return out


def _ours(workdir: str) -> dict:
  """One training of our fastText on the exported corpus (runs in a worker subprocess)."""
  import jax
  import numpy as np
  from research.data import text as text_lib
  from research.data.memory import ArrayBatches
  from research.models.sequence.fasttext import FastText
  from research.train import loop
  from research.train import task as task_lib
  from research.train import text_classify
  with open(os.path.join(workdir, "train.json"), encoding="utf-8") as f:
    train = json.load(f)
  with open(os.path.join(workdir, "test.json"), encoding="utf-8") as f:
    test = json.load(f)
  vocab = text_lib.Vocabulary.build(train["tokens"])
  kw = dict(word_ngrams=2, buckets=FLAGS.buckets, max_tokens=10_000)
  a = text_classify.text_arrays(train["tokens"], train["labels"], vocab, **kw)
  b = text_classify.text_arrays(test["tokens"], test["labels"], vocab, **kw)
  n = len(train["labels"])
  steps = max(2, int(round(FLAGS.epochs * n / FLAGS.batch_size)))
  model = FastText(num_embeddings=len(vocab) + FLAGS.buckets, num_classes=train["num_classes"], dim=FLAGS.dim)
  task = text_classify.TextClassificationTask(model=model, num_steps=steps, optimizer_name="sgd",
                                              learning_rate=FLAGS.lr * FLAGS.batch_size, sparse_updates=True)
  batches = ArrayBatches({k: a[k] for k in ("ids", "mask", "label")}, global_batch_size=FLAGS.batch_size, seed=0)
  times = {}

  def on_step(s, metrics):
    if s in (1, steps):
      jax.block_until_ready(metrics)
      times[s] = time.perf_counter()
    return False

  cfg = loop.LoopConfig(num_steps=steps, eval_every=0, checkpoint_every=0, progress_bar=False, tensorboard=False)
  t0 = time.perf_counter()
  state, _ = loop.train(task, batches, config=cfg, mesh=task_lib.make_mesh(), workdir=None, on_step=on_step)
  jax.block_until_ready(state.params)
  train_seconds = time.perf_counter() - t0
  ev = loop.evaluate(task, state, text_classify.eval_batches(b, global_batch_size=500)(), task_lib.make_mesh())
  words = steps * FLAGS.batch_size * float(np.mean(a["num_words"]))
  return {"train_seconds": train_seconds, "accuracy": ev["accuracy"], "steps": steps,
          "steady_tokens_per_second": (steps - 1) * FLAGS.batch_size * float(np.mean(a["num_words"]))
          / (times[steps] - times[1]), "words_processed": words, "devices": jax.device_count()}


def _env(threads: int) -> tuple[list[str], dict]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if threads == 1:
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return ["taskset", "-c", "0"], env
  env.pop("XLA_FLAGS", None)
  return [], env


def _run_json(cmd: list[str], env: dict) -> dict:
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.worker == "ours":
    print(json.dumps(_ours(FLAGS.workdir)))
    return
  if not os.path.exists(FLAGS.fasttext_python):
    raise app.UsageError(f"--fasttext_python={FLAGS.fasttext_python} does not exist; create the peer's venv: "
                         f"python3 -m venv /work/ftenv && /work/ftenv/bin/pip install fasttext-wheel")
  workdir = tempfile.mkdtemp(prefix="fasttext_bench_")
  stats = _export(workdir)
  words = FLAGS.epochs * stats["train"]["words"]
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  load = [os.getloadavg()]
  results: dict[str, dict[str, list]] = {}
  for r in range(FLAGS.repeats):
    for threads in (int(t) for t in FLAGS.threads):
      pin, env = _env(threads)
      spec = {"train": os.path.join(workdir, "train.txt"), "test": os.path.join(workdir, "test.txt"),
              "dim": FLAGS.dim, "epochs": int(round(FLAGS.epochs)), "lr": FLAGS.lr, "buckets": FLAGS.buckets,
              "threads": threads}
      runs = [("fasttext", _run_json(pin + [FLAGS.fasttext_python, "-c", _PEER, json.dumps(spec)], env))]
      for b in batch_sizes:
        runs.append((f"ours_b{b}", _run_json(
            pin + [sys.executable, "-m", "benchmarks.fasttext", "--worker=ours", f"--workdir={workdir}",
                   f"--dataset={FLAGS.dataset}", f"--dim={FLAGS.dim}", f"--epochs={FLAGS.epochs}",
                   f"--buckets={FLAGS.buckets}", f"--batch_size={b}", f"--lr={FLAGS.lr}"], env)))
      for side, res in runs:
        row = results.setdefault(f"{side}_threads{threads}", {})
        for k, v in res.items():
          row.setdefault(k, []).append(v)
      load.append(os.getloadavg())
      print(f"repeat {r} threads {threads}: " + " | ".join(f"{side} {res['train_seconds']:.2f} s acc "
                                                          f"{res['accuracy']:.4f}" for side, res in runs), flush=True)
  table = {}
  for name, row in results.items():
    med = {k: statistics.median(v) for k, v in row.items() if isinstance(v[0], (int, float))}
    med["tokens_per_second"] = words / med["train_seconds"]
    table[name] = med
  ratios = {}
  for threads in (int(t) for t in FLAGS.threads):
    p = table[f"fasttext_threads{threads}"]
    for b in batch_sizes:
      o = table[f"ours_b{b}_threads{threads}"]
      ratios[f"b{b}_threads{threads}"] = {
          "tokens_per_second_ours_over_fasttext": o["tokens_per_second"] / p["tokens_per_second"],
          "steady_ours_over_fasttext": o["steady_tokens_per_second"] / p["tokens_per_second"]}
  out = {"dataset": FLAGS.dataset, "corpus": stats, "settings": {
      "dim": FLAGS.dim, "epochs": FLAGS.epochs, "buckets": FLAGS.buckets, "batch_sizes": batch_sizes,
      "lr_per_example": FLAGS.lr, "word_ngrams": 2, "loss": "softmax"},
         "table": table, "ratios": ratios, "loadavg": load, "repeats": FLAGS.repeats}
  print(json.dumps(out, indent=2))
  print(json.dumps(ratios, indent=2))
  print("\n| side | threads | train s | tokens/s | steady tokens/s | test accuracy |\n|---|---|---|---|---|---|")
  for name, m in table.items():
    side, threads = name.rsplit("_threads", 1)
    steady = f"{m['steady_tokens_per_second']:.3g}" if "steady_tokens_per_second" in m else "-"
    print(f"| {side} | {threads} | {m['train_seconds']:.2f} | {m['tokens_per_second']:.3g} | {steady} | "
          f"{m['accuracy']:.4f} |")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  app.run(main)
