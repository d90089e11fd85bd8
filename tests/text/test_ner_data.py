"""grammar_ner (research.data.ner): the TFDS builder and its properties (IOB2, ambiguity, held-out entities, label
noise), the conll2003 path under tfds.testing.mock_data (IOB1 -> IOB2, dev as validation), encoding; BPE."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import bpe, ner, pipeline
from research.train import sequence_metrics as sm


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("ner_tfds"))


def test_builder_features_and_splits_like_conll2003(data_dir):
  info = pipeline.get_info("grammar_ner/small", data_dir)
  assert tuple(info.features["ner"].feature.names) == ner.NER_TAGS
  assert info.splits == {"train": 64, "validation": 16, "test": 16}
  a = ner.load_split("grammar_ner/small", "test", data_dir)
  b = ner.generate_split(ner.CONFIGS["small"], "test")  # deterministic: the records are the generated ones (TFDS
  # stores them in the order of its key hashes)
  assert sorted(zip(map(tuple, a.tokens), map(tuple, a.tags))) == sorted((tuple(x["tokens"]), tuple(x["ner"]))
                                                                         for x in b)
  assert all(len(t) == len(g) == len(u) for t, g, u in zip(a.tokens, a.tags, a.unseen))
  assert len(ner.load_split("grammar_ner/small", "train", data_dir, limit=5)) == 5


def test_grammar_properties():
  cfg = ner.CONFIGS["default"]
  train, test = ner.generate_split(cfg, "train"), ner.generate_split(cfg, "test")
  for split in (train, test):
    for x in split:
      assert ner.to_iob2(x["ner"]) == x["ner"]  # valid IOB2
  assert not any(any(x["unseen"]) for x in train)
  frac = np.mean([any(x["unseen"]) for x in test if any(t != "O" for t in x["ner"])])
  assert 0.3 < frac < 0.95
  train_words = {w for x in train for w in x["tokens"]}
  unseen_words = {w for x in test for w, u in zip(x["tokens"], x["unseen"]) if u}
  assert len(unseen_words - train_words) > 0.5 * len(unseen_words)  # held-out names are new to training
  # every type, multi-token entities, and ambiguity: one word with different labels in different contexts
  ents = [e for x in test for e in sm.extract_entities(x["ner"])]
  assert {e[0] for e in ents} == set(ner.ENTITY_TYPES) and any(e[2] - e[1] >= 2 for e in ents)
  labels = collections.defaultdict(set)
  for x in test:
    for w, t in zip(x["tokens"], x["ner"]):
      labels[w].add(t[2:] if t != "O" else "O")
  assert {"LOC", "PER"} <= labels["Jordan"] or {"LOC", "PER"} <= labels["Florence"]
  assert sum(len(v) > 1 for v in labels.values()) > 20  # cities as LOC and as ORG (teams), ...
  assert labels["May"] >= {"O"} and labels["Hope"] >= {"O"}


def test_label_noise_rate():
  rng = np.random.default_rng(0)
  tags = ["B-PER", "I-PER", "O", "B-LOC"] * 5000
  noisy = ner.corrupt_labels(tags, rng, 0.02)
  changed = sum(a != b for a, b in zip(sm.extract_entities(tags), sm.extract_entities(noisy)))
  ents = len(sm.extract_entities(tags))
  assert 0.01 < 1 - len(set(sm.extract_entities(tags)) & set(sm.extract_entities(noisy))) / ents < 0.03
  assert changed > 0 and ner.to_iob2(noisy) == noisy
  cfg0 = ner.GrammarNERConfig(name="x", num_train=200, label_noise=0.0)
  noisy_cfg = ner.GrammarNERConfig(name="y", num_train=200, label_noise=0.5)
  a, b = ner.generate_split(cfg0, "train"), ner.generate_split(noisy_cfg, "train")
  assert [x["tokens"] for x in a][:1] == [x["tokens"] for x in b][:1]  # same sentences, only labels differ ...
  assert a[0]["ner"] != b[0]["ner"] or a[1]["ner"] != b[1]["ner"] or a[2]["ner"] != b[2]["ner"]


def test_to_iob2_is_conlleval_reading():
  rng = np.random.default_rng(1)
  names = list(ner.NER_TAGS)
  for _ in range(300):
    tags = [names[i] for i in rng.integers(0, len(names), rng.integers(1, 12))]
    assert sm.extract_entities(ner.to_iob2(tags)) == sm.extract_entities(tags)
  assert ner.to_iob2(["I-PER", "I-PER", "I-LOC", "O", "I-LOC"]) == ["B-PER", "I-PER", "B-LOC", "O", "B-LOC"]


def _conll_records():
  rec = lambda toks, ner_ids: {"tokens": np.array([t.encode() for t in toks], object), "pos": np.zeros(len(toks), int),
                               "chunks": np.zeros(len(toks), int), "ner": np.array(ner_ids)}
  return {"train": [rec(["EU", "rejects", "German", "call"], [4, 0, 8, 0]), rec([], []),
                    rec(["Peter", "Blackburn", "in", "Brussels"], [2, 2, 0, 6])] * 4,
          "dev": [rec(["Peter", "Blackburn"], [2, 2])],
          "test": [rec(["Japan", "wins", "in", "Asian", "Cup"], [6, 0, 0, 8, 8])]}


def test_conll2003_through_mock_data(tmp_path):
  """A user's prepared TFDS conll2003 (IOB1 tags, a 'dev' split) is read by the same code."""
  recs = _conll_records()
  with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kw: recs[split], data_dir=str(tmp_path)):
    train = ner.load_split("conll2003", "train", str(tmp_path))
    dev = ner.load_split("conll2003", "validation", str(tmp_path))
    test = ner.load_split("conll2003", "test", str(tmp_path))
  assert len(train) == 8 and train.unseen is None  # the empty sentences are skipped
  assert train.tags[1] == ["B-PER", "I-PER", "O", "B-LOC"]  # IOB1 -> IOB2
  assert dev.tokens == [["Peter", "Blackburn"]] and dev.tags == [["B-PER", "I-PER"]]
  assert test.tags == [["B-LOC", "O", "O", "B-MISC", "I-MISC"]]


def test_encode_and_vocabularies():
  s = ner.Sentences([["The", "Cat", "sat"], ["the", "dog"]], [["O", "B-PER", "O"], ["O", "B-LOC"]])
  words, chars = ner.build_vocabularies(s.tokens, min_word_count=2)
  assert words.tokens == ["<pad>", "<unk>", "the"] and "C" in chars
  a = ner.encode(s, words, chars, ner.NER_TAGS, max_len=4, max_word_len=2)
  np.testing.assert_array_equal(a["words"], [[2, 1, 1, 0], [2, 1, 0, 0]])
  np.testing.assert_array_equal(a["tags"], [[0, 1, 0, 0], [0, 5, 0, 0]])
  np.testing.assert_array_equal(a["length"], [3, 2])
  assert chars.decode(a["chars"][0, 1]) == ["C", "a"] and (a["chars"][0, 3] == 0).all()
  with pytest.raises(ValueError, match="not in the tag set"):
    ner.encode(ner.Sentences([["x"]], [["B-FOO"]]), words, chars, ner.NER_TAGS, max_len=2, max_word_len=2)


# ------------------------------------------------------------------------------------------------------ BPE


def _np_learn_bpe(counts, n):
  """Sennrich et al.'s Algorithm 1 on space-joined strings (an independent re-implementation)."""
  vocab = {" ".join(list(w) + ["</w>"]): c for w, c in counts.items()}
  merges = []
  for _ in range(n):
    pairs = collections.Counter()
    for w, c in vocab.items():
      s = w.split()
      for i in range(len(s) - 1):
        pairs[s[i], s[i + 1]] += c
    if not pairs:
      break
    top = max(pairs.values())
    if top < 2:
      break
    best = sorted(p for p, c in pairs.items() if c == top)[0]
    merges.append(best)
    new = {}
    for w, c in vocab.items():
      s, out, i = w.split(), [], 0
      while i < len(s):
        if i + 1 < len(s) and (s[i], s[i + 1]) == best:
          out.append(s[i] + s[i + 1])
          i += 2
        else:
          out.append(s[i])
          i += 1
      new[" ".join(out)] = c
    vocab = new
  return merges, vocab


def test_bpe_matches_algorithm_1_and_segments_training_words():
  counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
  merges = bpe.learn_bpe(counts, 10)
  assert merges[:5] == [("e", "s"), ("es", "t"), ("est", "</w>"), ("l", "o"), ("lo", "w")]
  rng = np.random.default_rng(0)
  words = collections.Counter("".join(rng.choice(list("abcde"), rng.integers(1, 7))) for _ in range(400))
  merges, vocab = bpe.learn_bpe(words, 40), None
  want, vocab = _np_learn_bpe(words, 40)
  assert merges == want
  seg = bpe.BPE(merges)
  for w in words:  # the learned segmentation of every training word is reproduced
    assert " ".join(seg.segment(w)) in vocab
  assert "".join(seg.segment("edcbaxyz")).replace("</w>", "") == "edcbaxyz"
  assert bpe.learn_bpe(counts, 0) == [] and seg.segment("q") == ("q", "</w>")
