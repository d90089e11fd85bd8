"""fastText (Joulin et al. 2017): model vs numpy bag averages, n-gram hashing, hierarchical softmax training, the sparse
SGD step vs dense SGD, the text_topics corpus, the experiment (smoke flagfile, bad flags, TFDS mock_data, TSV files)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import models
from research.data import text as text_lib
from research.data import text_corpora
from research.data.memory import ArrayBatches
from research.methods import fasttext_experiment as fx
from research.models.sequence.fasttext import FastText, TextCNN
from research.ops import sequence as seq_ops
from research.train import loop
from research.train import task as task_lib
from research.train import text_classify
from tests.generative.flag_checks import check_flag_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "fasttext_smoke.flags")


def _fnv1a(s: str) -> int:  # an independent FNV-1a (not research.data.text's)
  h = 2166136261
  for b in s.encode("utf-8"):
    h ^= b
    h = (h * 16777619) % (1 << 32)
  return h


# ------------------------------------------------------------------------------------------------- models


def test_model_shapes_registry_and_padding():
  """Every text model: [B, K] float32 outputs; extra padding (id 0) at the end changes nothing."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 50, (3, 7)).astype(np.int32)
  ids[0, 4:] = 0
  longer = jnp.asarray(np.concatenate([ids, np.zeros((3, 3), np.int32)], axis=1))
  ids = jnp.asarray(ids)
  for name, kw in (("fasttext", {}), ("fasttext", {"loss": "hierarchical"}), ("text_bilstm", {"hidden": 6,
                   "embed_dim": 4}), ("text_cnn", {"features": 5, "embed_dim": 4, "widths": (2, 3)})):
    m = models.create(name, num_embeddings=50, num_classes=5, **kw)
    params = jax.jit(lambda k, x, m=m: m.init(k, x, train=False))(jax.random.key(0), ids)
    apply = jax.jit(lambda p, x, m=m: m.apply(p, x, train=False))
    out = apply(params, ids)
    chex.assert_shape(out, (3, 5))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(np.asarray(apply(params, longer)), np.asarray(out), rtol=1e-5, atol=1e-6)
  assert {"fasttext", "text_bilstm", "text_cnn"} <= set(models.names("sequence"))


def test_fasttext_masked_mean_equals_numpy_bag_average():
  rng = np.random.default_rng(1)
  m = FastText(num_embeddings=40, num_classes=3, dim=6)
  ids = rng.integers(1, 40, (4, 9)).astype(np.int32)
  mask = rng.random((4, 9)) < 0.6
  mask[2] = False  # an empty bag -> the zero vector
  params = m.init(jax.random.key(1), jnp.asarray(ids))
  table = np.asarray(params["params"]["embedding"], np.float64)
  assert np.abs(table).max() <= 1.0 / 6  # fastText's U(-1/dim, 1/dim) start
  h = m.apply(params, jnp.asarray(ids), jnp.asarray(mask), method=FastText.text_representation)
  ref = np.stack([table[ids[b][mask[b]]].mean(0) if mask[b].any() else np.zeros(6) for b in range(4)])
  np.testing.assert_allclose(np.asarray(h), ref, rtol=1e-5, atol=1e-6)
  # default mask = ids != 0 (the <pad> id): padding does not change the representation
  padded = np.concatenate([ids[:1], np.zeros((1, 5), np.int32)], axis=1)
  h1 = m.apply(params, jnp.asarray(padded), method=FastText.text_representation)
  np.testing.assert_allclose(np.asarray(h1)[0], table[ids[0]].mean(0), rtol=1e-5, atol=1e-6)


def test_fasttext_log_probs_softmax_and_hierarchical():
  rng = np.random.default_rng(2)
  ids = jnp.asarray(rng.integers(1, 30, (5, 6)), jnp.int32)
  labels = jnp.asarray(rng.integers(0, 6, 5), jnp.int32)
  for loss in ("softmax", "hierarchical"):
    m = FastText(num_embeddings=30, num_classes=6, dim=4, loss=loss, label_counts=(50, 20, 10, 10, 5, 5))
    params = m.init(jax.random.key(0), ids)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape), params)
    lp = np.asarray(m.apply(params, ids), np.float64)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)
    nll = np.asarray(m.apply(params, ids, labels, method=FastText.nll))
    np.testing.assert_allclose(nll, -lp[np.arange(5), np.asarray(labels)], rtol=1e-5, atol=1e-6)
    vals, top = m.apply(params, ids, 3, method=FastText.top_k)
    np.testing.assert_array_equal(np.asarray(top), np.argsort(-lp, axis=1, kind="stable")[:, :3])
  # hierarchical: the leaf probability is the product of sigmoids along the Huffman path (numpy, float64)
  h = np.asarray(m.apply(params, ids, method=FastText.text_representation), np.float64)
  w = np.asarray(params["params"]["node_weights"], np.float64)
  paths, codes, depth = seq_ops.huffman_tree(np.array([50, 20, 10, 10, 5, 5.0]))
  sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
  for b in range(5):
    for k in range(6):
      p = np.prod([sig(w[paths[k, d]] @ h[b]) if codes[k, d] else sig(-w[paths[k, d]] @ h[b])
                   for d in range(depth[k])])
      assert abs(np.log(p) - lp[b, k]) < 1e-4
  assert depth[0] < depth[-1]  # the frequent label has a shorter code


def test_text_arrays_hash_ngrams_into_one_table():
  vocab = text_lib.Vocabulary.build([["the", "cat", "sat"]])
  toks = [["the", "cat", "sat", "down"], ["cat"]]
  a = text_classify.text_arrays(toks, [1, 0], vocab, word_ngrams=3, buckets=97, max_tokens=3)
  v = len(vocab)
  row0 = [vocab.encode(["the", "cat", "sat"]).tolist(), [v + _fnv1a("the cat") % 97, v + _fnv1a("cat sat") % 97],
          [v + _fnv1a("the cat sat") % 97]]
  expected = sum(row0, [])
  assert a["ids"].shape[1] % 8 == 0
  assert a["ids"][0, :len(expected)].tolist() == expected and a["mask"][0].sum() == len(expected)
  assert a["ids"][1, 0] == vocab.encode(["cat"])[0] and a["mask"][1].sum() == 1
  assert a["num_words"].tolist() == [3, 1] and a["label"].tolist() == [1, 0]
  assert a["ids"].max() < v + 97
  uni = text_classify.text_arrays(toks, [1, 0], vocab, word_ngrams=1, max_tokens=10)
  assert uni["ids"][0, :4].tolist() == vocab.encode(toks[0]).tolist()  # "down" -> <unk>
  with pytest.raises(ValueError, match="--buckets"):
    text_classify.text_arrays(toks, [1, 0], vocab, word_ngrams=2, buckets=0)


# ------------------------------------------------------------------------------------------------- training


def _toy(n=256, seed=0):
  """Order-only classes: 'x y' -> 0, 'y x' -> 1 (same unigrams), plus noise words."""
  rng = np.random.default_rng(seed)
  toks, labels = [], []
  for _ in range(n):
    c = int(rng.integers(0, 2))
    noise = [f"w{int(i)}" for i in rng.integers(0, 8, 3)]
    toks.append(noise[:1] + (["x", "y"] if c == 0 else ["y", "x"]) + noise[1:])
    labels.append(c)
  return toks, np.asarray(labels)


def _train(task, arrays, steps, seed=0):
  batches = ArrayBatches({k: arrays[k] for k in ("ids", "mask", "label")}, global_batch_size=32, seed=seed)
  cfg = loop.LoopConfig(num_steps=steps, seed=seed, eval_every=0, checkpoint_every=0, progress_bar=False,
                        tensorboard=False)
  return loop.train(task, batches, config=cfg, mesh=task_lib.make_mesh(), workdir=None,
                    eval_data=text_classify.eval_batches(arrays, global_batch_size=64))


def test_hierarchical_softmax_trains_and_bigrams_separate_order():
  toks, labels = _toy()
  vocab = text_lib.Vocabulary.build(toks)
  accs = {}
  for n in (1, 2):
    a = text_classify.text_arrays(toks, labels, vocab, word_ngrams=n, buckets=101)
    m = FastText(num_embeddings=len(vocab) + (101 if n > 1 else 0), num_classes=2, dim=8, loss="hierarchical")
    task = text_classify.TextClassificationTask(model=m, num_steps=60, learning_rate=4.0, sparse_updates=True)
    _, res = _train(task, a, 60)
    accs[n] = res["eval_accuracy"]
  assert accs[2] > 0.95 and accs[1] < 0.7, accs  # only bigrams see the word order


def test_sparse_sgd_step_equals_dense_sgd():
  toks, labels = _toy(64, seed=1)
  vocab = text_lib.Vocabulary.build(toks)
  a = text_classify.text_arrays(toks, labels, vocab, word_ngrams=2, buckets=53)
  out = {}
  for sparse in (False, True):
    for loss in ("softmax", "hierarchical"):
      m = FastText(num_embeddings=len(vocab) + 53, num_classes=2, dim=4, loss=loss)
      task = text_classify.TextClassificationTask(model=m, num_steps=3, learning_rate=3.0, sparse_updates=sparse)
      state, _ = _train(task, a, 3)
      out[sparse, loss] = jax.tree.map(np.asarray, state.params)
  for loss in ("softmax", "hierarchical"):
    chex.assert_trees_all_close(out[True, loss], out[False, loss], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[True, loss]["embedding"], out[True, "softmax" if loss != "softmax" else
                                                               "hierarchical"]["embedding"])


def test_task_rejects_bad_settings():
  m = FastText(num_embeddings=10, num_classes=2)
  with pytest.raises(ValueError, match="sparse_updates"):
    text_classify.TextClassificationTask(model=TextCNN(num_embeddings=10, num_classes=2), num_steps=1,
                                         sparse_updates=True)
  with pytest.raises(ValueError, match="optimizer"):
    text_classify.TextClassificationTask(model=m, num_steps=1, optimizer_name="lbfgs")
  with pytest.raises(ValueError, match="loss"):
    FastText(num_embeddings=10, num_classes=2, loss="nce").init(jax.random.key(0), jnp.ones((1, 2), jnp.int32))


# ------------------------------------------------------------------------------------------------- corpus


def test_text_topics_order_cues_share_unigrams_and_generation_is_seeded():
  cfg = text_corpora.TextTopicsConfig(name="t", num_train=300, num_test=50, plain_cue_prob=0.0, seed=3)
  a, b = text_corpora.generate(cfg, "train"), text_corpora.generate(cfg, "train")
  assert a == b and text_corpora.generate(cfg, "test")["text"] != a["text"][:50]
  # with no plain cues and no label noise, the two stances of a topic have the same unigram distribution of
  # stance words, but disjoint "not X" bigrams
  clean = dataclasses_replace(cfg, label_noise=0.0)
  d = text_corpora.generate(clean, "train")
  stance_words = {w for pair in text_corpora.STANCE_PAIRS for w in pair}
  bigrams = {0: collections.Counter(), 1: collections.Counter()}
  unigrams = {0: collections.Counter(), 1: collections.Counter()}
  for text, stance in zip(d["text"], d["stance"]):
    toks = text.split()
    unigrams[stance].update(t for t in toks if t in stance_words)
    bigrams[stance].update(f"not {t}" for p, t in zip(toks, toks[1:]) if p == "not")
  pos_good = {f"not {n}" for _, n in text_corpora.STANCE_PAIRS}
  assert set(bigrams[0]) <= pos_good and not set(bigrams[1]) & pos_good  # positive: "not bad", negative: "not good"
  for w in stance_words:  # each pair's two words appear equally often within a stance (same unigram multisets)
    partner = next(q if p == w else p for p, q in text_corpora.STANCE_PAIRS if w in (p, q))
    assert unigrams[0][w] == unigrams[0][partner] and unigrams[1][w] == unigrams[1][partner]
  noisy = text_corpora.generate(dataclasses_replace(cfg, num_train=3000, label_noise=0.2), "train")
  clean_label = np.asarray(noisy["topic"]) * 2 + np.asarray(noisy["stance"])
  assert 0.15 < np.mean(clean_label != np.asarray(noisy["label"])) < 0.25
  with pytest.raises(ValueError, match="label_noise"):
    text_corpora.generate(dataclasses_replace(cfg, label_noise=1.0), "train")


def dataclasses_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("text_tfds"))


def test_text_topics_builder_and_reader(tfds_dir):
  texts, labels, names = text_corpora.load_text_split("text_topics/small", "test", tfds_dir)
  ref = text_corpora.generate(text_corpora.CONFIGS["small"], "test")
  assert texts == ref["text"] and labels.tolist() == ref["label"]  # index order, not TFDS's shuffled order
  assert names == list(text_corpora.CLASS_NAMES) and len(names) == 8
  with pytest.raises(ValueError, match="no feature"):
    text_corpora.load_text_split("text_topics/small", "test", tfds_dir, text_keys=("title",))


# ------------------------------------------------------------------------------------------------- experiment


def _tiny(**kw):
  base = dict(methods=("fasttext",), word_ngrams=(2,), buckets=1000, dim=4, epochs=1.0, batch_size=8,
              learning_rate=2.0, top_k=2, eval_batch_size=16, max_tokens=32)
  return fx.FastTextConfig(**{**base, **kw})


def test_experiment_reads_tsv_files(tmp_path):
  train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
  lines = [f"{'sport' if i % 2 else 'news'}\t{'goal match' if i % 2 else 'vote minister'} w{i % 5}"
           for i in range(40)]
  train.write_text("\n".join(lines) + "\n", encoding="utf-8")
  test.write_text("sport\tgoal match\nnews\tvote minister w1\n", encoding="utf-8")
  s = fx.run(_tiny(train_file=str(train), test_file=str(test), epochs=5.0), str(tmp_path / "w"))
  assert s["class_names"] == ["news", "sport"] and s["num_test"] == 2
  res = json.loads((tmp_path / "w" / "fasttext_bigram_seed0" / "results.json").read_text())
  assert res["test_accuracy"] == 1.0 and res["tokens_per_second"] > 0
  test.write_text("sport\tgoal\nweather\train today\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"--test_file=.*\['weather'\].*never occur in --train_file"):
    fx.run(_tiny(train_file=str(train), test_file=str(test)), str(tmp_path / "w2"))
  test.write_text("sport goal\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"test.tsv:1: no TAB"):
    fx.run(_tiny(train_file=str(train), test_file=str(test)), str(tmp_path / "w3"))


def test_experiment_reads_a_prepared_tfds_dataset_via_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path / "mock")):
    cfg = _tiny(dataset="ag_news_subset", data_dir=str(tmp_path / "mock"), text_keys=("title", "description"))
    data = fx.load_data(cfg)
    assert len(data["class_names"]) == 4 and len(data["tokens_train"]) == 24
    s = fx.run(cfg, str(tmp_path / "w"))
    assert np.isfinite(s["table"]["fasttext_bigram"]["test_accuracy"][0])
    with pytest.raises(ValueError, match=r"no feature\(s\) \['text'\].*title,description"):
      fx.load_data(_tiny(dataset="ag_news_subset", data_dir=str(tmp_path / "mock")))
    imdb = fx.load_data(_tiny(dataset="imdb_reviews", data_dir=str(tmp_path / "mock")))  # default --text_keys=text
    assert imdb["class_names"] == ["neg", "pos"] and len(imdb["tokens_test"]) == 24


@pytest.mark.parametrize("args, message", [
    (["--methods=fasttext,rnn"], "--methods"),
    (["--word_ngrams=0"], "--word_ngrams must list distinct n >= 1"),
    (["--train_file=/tmp/a.tsv"], "--train_file and --test_file go together"),
    (["--top_k=0"], "--top_k must be positive"),
    (["--loss=nce"], "--loss"),
    (["--epochs=0"], "--epochs must be positive"),
    (["--seeds=1,1"], "distinct seeds"),
    (["--text_keys="], "--text_keys must name at least one"),
])
def test_bad_flags_give_one_clear_error(args, message):
  check_flag_error("fasttext", args, message)


def test_top_k_larger_than_classes_is_an_error(tmp_path):
  train = tmp_path / "t.tsv"
  train.write_text("".join(f"{i % 2}\tw{i}\n" for i in range(20)), encoding="utf-8")
  with pytest.raises(ValueError, match="--top_k=3 exceeds the 2 classes"):
    fx.load_data(_tiny(train_file=str(train), test_file=str(train), top_k=3))


def _run_cli(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  return subprocess.run([sys.executable, "-m", "experiments.fasttext", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_smoke_flagfile_in_process(tmp_path, tfds_dir):
  """The smoke flagfile's settings (parsed by absl from the file) through the driver: every run and claim."""
  from absl import flags
  from experiments import fasttext as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}", f"--data_dir={tfds_dir}"])
  cfg = exp.config_from_flags(fv)
  assert cfg.methods == ("fasttext", "bilstm", "cnn") and cfg.loss == "hierarchical"
  summary = fx.run(cfg, str(tmp_path))
  assert set(summary["table"]) == {"fasttext_unigram", "fasttext_bigram", "bilstm", "cnn"}
  for row in summary["table"].values():
    assert np.isfinite(row["test_accuracy"][0]) and row["tokens_per_second"][0] > 0
  assert "bigrams_beat_unigrams" in summary["claims"] and "fasttext_speedup_cnn" in summary["claims"]
  assert (tmp_path / "summary.md").read_text().count("| fasttext_") == 2


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path, tfds_dir):
  """The smoke flagfile end to end through the CLI (~50 s); a re-run reuses the finished runs."""
  proc = _run_cli(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={tfds_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["table"]) == {"fasttext_unigram", "fasttext_bigram", "bilstm", "cnn"}
  for row in summary["table"].values():
    assert np.isfinite(row["test_accuracy"][0]) and np.isfinite(row["tokens_per_second"][0])
  assert "bigrams_beat_unigrams" in summary["claims"] and "fasttext_speedup_bilstm" in summary["claims"]
  res = json.loads((tmp_path / "fasttext_bigram_seed0" / "results.json").read_text())
  assert res["model_class"] == "FastText" and res["sparse_updates"] and "test_accuracy" in res
  assert "| run |" in proc.stdout
  again = _run_cli(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={tfds_dir}")
  assert again.returncode == 0 and json.loads((tmp_path / "summary.json").read_text())["table"] == summary["table"]


def test_cli_bad_flag_is_one_error_line(tmp_path):
  proc = _run_cli(f"--workdir={tmp_path}", "--word_ngrams=0", timeout=120)
  assert proc.returncode == 1 and "error: --word_ngrams must list distinct n >= 1" in proc.stderr, proc.stderr[-2000:]
