"""research.data.text: tokenization, n-grams, FNV-1a hashing vs published/hand-computed values, Vocabulary, padding,
label<TAB>text files, optional SentencePiece."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from research.data import text


# ------------------------------------------------------------------------------------------ tokenize / n-grams


def test_tokenize_splits_punctuation_and_lowercases():
  assert text.tokenize("Good, not GREAT!") == ["good", ",", "not", "great", "!"]
  assert text.tokenize("Good, not GREAT!", lower=False) == ["Good", ",", "not", "GREAT", "!"]
  assert text.tokenize("  a\tb\n\nc  ") == ["a", "b", "c"]
  assert text.tokenize("don't") == ["don", "'", "t"]
  assert text.tokenize("3.5%") == ["3", ".", "5", "%"]
  assert text.tokenize("") == []


def test_tokenize_unicode():
  # decomposed "é" (e + U+0301) and composed "é" give the same token; Indic vowel signs stay in their word.
  assert text.tokenize("Caf\u00e9 cafe\u0301") == ["caf\u00e9", "caf\u00e9"]
  assert text.tokenize("हिन्दी भाषा।") == ["हिन्दी", "भाषा", "।"]
  assert text.tokenize("Ελληνικά, русский «текст»") == ["ελληνικά", ",", "русский", "«", "текст", "»"]
  assert text.tokenize("ok😀!") == ["ok", "😀", "!"]
  with pytest.raises(TypeError):
    text.tokenize(b"bytes")


def test_word_ngrams():
  toks = ["a", "b", "c", "d"]
  assert text.word_ngrams(toks, 1) == toks
  assert text.word_ngrams(toks, 2) == ["a b", "b c", "c d"]
  assert text.word_ngrams(toks, 3) == ["a b c", "b c d"]
  assert text.word_ngrams(["a"], 2) == []
  with pytest.raises(ValueError, match="n must be"):
    text.word_ngrams(toks, 0)


def test_char_ngrams_fasttext_style():
  # Bojanowski et al. 2017 §3.2: "where", n = 3 -> <wh, whe, her, ere, re> plus the special sequence <where>.
  assert text.char_ngrams("where", 3, 3) == ["<wh", "whe", "her", "ere", "re>", "<where>"]
  got = text.char_ngrams("where")
  brute = {"<where>"[i:i + n] for n in range(3, 7) for i in range(0, 7 - n + 1)} | {"<where>"}
  assert set(got) == brute and len(got) == len(brute)
  assert text.char_ngrams("ab", 2, 3) == ["<a", "<ab", "ab", "ab>", "b>", "<ab>"]
  assert text.char_ngrams("a", 3, 6) == ["<a>"]  # the whole word is not duplicated
  with pytest.raises(ValueError):
    text.char_ngrams("a", 4, 3)


# ------------------------------------------------------------------------------------------ hashing


def test_fnv1a_published_and_hand_computed_values():
  # Published FNV-1a 32-bit test vectors (Fowler/Noll/Vo reference test suite).
  assert text.fnv1a_32("") == 0x811C9DC5
  assert text.fnv1a_32("a") == 0xE40C292C
  assert text.fnv1a_32("foobar") == 0xBF9CF968
  # By hand: "a" = 0x61, (0x811C9DC5 ^ 0x61) * 0x01000193 mod 2^32.
  assert text.fnv1a_32("a") == ((0x811C9DC5 ^ 0x61) * 0x01000193) % 2**32
  # Two bytes by hand, then a non-ASCII character hashed over its UTF-8 bytes (0xC3 0xA9).
  h = ((0x811C9DC5 ^ ord("a")) * 16777619) % 2**32
  h = ((h ^ ord("b")) * 16777619) % 2**32
  assert text.fnv1a_32("ab") == h
  h = 0x811C9DC5
  for b in (0xC3, 0xA9):
    h = ((h ^ b) * 16777619) % 2**32
  assert text.fnv1a_32("\u00e9") == h


def test_hash_bucket_range_and_stability():
  assert text.hash_bucket("foobar", 1000) == 0xBF9CF968 % 1000
  vals = [text.hash_bucket(f"w{i} w{i + 1}", 97) for i in range(2000)]
  assert min(vals) >= 0 and max(vals) < 97
  counts = np.bincount(vals, minlength=97)
  assert counts.min() > 0  # spreads over all buckets
  with pytest.raises(ValueError, match="buckets"):
    text.hash_bucket("a", 0)


# ------------------------------------------------------------------------------------------ Vocabulary


def test_vocabulary_build_order_and_ties():
  docs = [["b", "a", "c"], ["a", "b", "d"], ["a", "e"]]
  v = text.Vocabulary.build(docs)
  # specials, then count desc (a:3, b:2), then ties by token (c, d, e all 1)
  assert v.tokens == ["<pad>", "<unk>", "a", "b", "c", "d", "e"]
  assert (v.pad_id, v.unk_id, len(v)) == (0, 1, 7)
  assert text.Vocabulary.build(docs, min_count=2).tokens == ["<pad>", "<unk>", "a", "b"]
  assert text.Vocabulary.build(docs, max_size=3).tokens == ["<pad>", "<unk>", "a", "b", "c"]
  # order of documents does not matter
  assert text.Vocabulary.build(docs[::-1]).tokens == v.tokens


def test_vocabulary_encode_decode_roundtrip_and_unknown():
  v = text.Vocabulary.build([["x", "y", "y"]])
  ids = v.encode(["y", "x", "zzz"])
  assert ids.dtype == np.int32 and ids.tolist() == [2, 3, 1]
  assert v.decode(ids) == ["y", "x", "<unk>"]
  assert v.encode([]).shape == (0,)
  with pytest.raises(ValueError, match="outside"):
    v.decode([7])


def test_vocabulary_json_and_file_roundtrip(tmp_path):
  v = text.Vocabulary.build([["héllo", "wörld", "héllo"]], specials=("<pad>", "<unk>", "<bos>"))
  s = v.to_json()
  assert json.loads(s)["tokens"][:3] == ["<pad>", "<unk>", "<bos>"]
  assert text.Vocabulary.from_json(s) == v
  path = str(tmp_path / "vocab.json")
  v.save(path)
  w = text.Vocabulary.load(path)
  assert w == v and w.encode(["wörld"]).tolist() == v.encode(["wörld"]).tolist()
  with pytest.raises(ValueError, match="tokens"):
    text.Vocabulary.from_json("[1, 2]")
  with pytest.raises(ValueError, match="unique"):
    text.Vocabulary(["<pad>", "<unk>", "a", "a"])


def test_vocabulary_without_unk():
  v = text.Vocabulary.build([["a"]], specials=("<pad>",))
  assert v.encode(["a"]).tolist() == [1]
  with pytest.raises(ValueError, match="unknown"):
    _ = v.unk_id
  with pytest.raises(ValueError, match="not in a Vocabulary"):
    v.encode(["b"])


# ------------------------------------------------------------------------------------------ padding / features


def test_pad_batch_pads_and_truncates():
  ids, mask = text.pad_batch([np.array([5, 6, 7]), np.array([], np.int32), np.arange(1, 7)], max_len=4, pad_id=0)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (3, 4)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  ids, _ = text.pad_batch([np.array([1])], max_len=2, pad_id=9)
  assert ids.tolist() == [[1, 9]]
  assert text.pad_batch([], max_len=3)[0].shape == (0, 3)
  with pytest.raises(ValueError, match="max_len"):
    text.pad_batch([np.array([1])], max_len=0)


def test_ngram_bag_ids():
  v = text.Vocabulary.build([["a", "b", "c"]])
  toks = ["a", "b", "zz"]
  uni = text.ngram_bag(toks, v, word_ngrams=1, buckets=10)
  assert uni.tolist() == [2, 3, 1]
  bi = text.ngram_bag(toks, v, word_ngrams=2, buckets=10)
  expected = [2, 3, 1] + [len(v) + text.fnv1a_32(g) % 10 for g in ("a b", "b zz")]
  assert bi.tolist() == expected
  tri = text.ngram_bag(toks, v, word_ngrams=3, buckets=10)
  assert tri.tolist() == expected + [len(v) + text.fnv1a_32("a b zz") % 10]
  assert text.ngram_bag(toks, v, word_ngrams=2, buckets=10, max_len=4).tolist() == expected[:4]


# ------------------------------------------------------------------------------------------ files


def test_read_label_text_file(tmp_path):
  p = tmp_path / "train.tsv"
  p.write_text("pos\tgood movie\n\n  \nneg\tbad\tmovie\r\nsport\tJoué à Paris\n", encoding="utf-8")
  labels, texts = text.read_label_text_file(str(p))
  assert labels == ["pos", "neg", "sport"]
  assert texts == ["good movie", "bad\tmovie", "Joué à Paris"]


def test_read_label_text_file_errors(tmp_path):
  p = tmp_path / "bad.tsv"
  p.write_text("pos\tok\nno tab here\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.tsv:2: no TAB.*label<TAB>text"):
    text.read_label_text_file(str(p))
  p.write_text("\tmissing label\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.tsv:1: empty label"):
    text.read_label_text_file(str(p))
  with pytest.raises(FileNotFoundError, match="label<TAB>text"):
    text.read_label_text_file(str(tmp_path / "missing.tsv"))


def test_sentencepiece_missing_gives_install_hint(monkeypatch):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "sentencepiece":
      raise ImportError("No module named 'sentencepiece'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ImportError, match="pip install sentencepiece"):
    text.SentencePieceTokenizer("model.model")
