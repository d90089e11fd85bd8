"""Text data utilities in pure numpy/python: tokenization, n-grams, hashing, vocabularies, padding, user files.

* ``tokenize(text)``: lower-cased (optional) split on whitespace with every punctuation mark its own token
  (unicode-aware: letters/digits of any script form words, any other non-space character is one token).
* ``word_ngrams(tokens, n)`` / ``char_ngrams(word)``: word n-grams (joined by one space) and fastText-style
  character n-grams of ``"<word>"`` (Bojanowski et al., "Enriching Word Vectors with Subword Information", 2017, §3.2).
* ``hash_bucket(s, buckets)``: the hashing trick (Weinberger et al., 2009) used by fastText for n-gram features
  (Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017, §2.2): the 32-bit FNV-1a hash of the
  UTF-8 bytes of ``s`` modulo ``buckets``. Stable across processes and platforms (unlike Python's ``hash``).
* ``Vocabulary``: token <-> id with special tokens first, JSON serialisation (no pickle).
* ``pad_batch``: a list of variable-length id arrays -> ``ids [B, L]`` int32 + ``mask [B, L]`` bool.
* ``read_label_text_file``: the user-data format ``label<TAB>text`` (UTF-8, one example per line).
* ``SentencePieceTokenizer``: wraps a user's SentencePiece model (the package is optional and imported lazily).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

# A word is a run of word characters (letters, digits, '_') of any script, with combining marks (vowel signs of Indic
# scripts, decomposed accents) kept inside it; every other non-whitespace character is a token on its own.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)

FNV_OFFSET_BASIS_32 = 0x811C9DC5
FNV_PRIME_32 = 0x01000193
LABEL_TEXT_FORMAT = "label<TAB>text (UTF-8, one example per line)"


def tokenize(text: str, *, lower: bool = True) -> list[str]:
  """Whitespace + punctuation tokenization.

  ``"Good, not GREAT!" -> ["good", ",", "not", "great", "!"]``. Text is NFC-normalised first so that composed and
  decomposed accents give the same tokens; ``lower`` applies ``str.lower``. Apostrophes split words
  (``"don't" -> ["don", "'", "t"]``), ``_`` is a word character, and combining marks stay inside their word
  (``"हिन्दी"`` is one token).
  """
  if not isinstance(text, str):
    raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
  text = unicodedata.normalize("NFC", text)
  if lower:
    text = text.lower()
  tokens, last_end, last_word = [], -1, False
  for m in _TOKEN_RE.finditer(text):
    tok = m.group()
    is_word = tok[0] == "_" or tok[0].isalnum() or unicodedata.category(tok[0])[0] == "M"
    if tokens and last_word and is_word and m.start() == last_end:
      tokens[-1] += tok  # a combining mark (not matched by \w) continues the word it is attached to
    else:
      tokens.append(tok)
    last_end, last_word = m.end(), is_word
  return tokens


def word_ngrams(tokens: Sequence[str], n: int) -> list[str]:
  """Contiguous word ``n``-grams, each joined by one space: ``(["a", "b", "c"], 2) -> ["a b", "b c"]``.

  ``n = 1`` returns the tokens themselves; a sequence shorter than ``n`` has no n-grams.
  """
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  tokens = list(tokens)
  return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


word_ngrams_fn = word_ngrams  # alias usable inside functions whose argument is called ``word_ngrams``


def char_ngrams(word: str, n_min: int = 3, n_max: int = 6) -> list[str]:
  """fastText character n-grams of ``"<" + word + ">"`` for ``n_min <= n <= n_max``, plus the whole ``"<word>"``.

  Ordered by start position, then length (``"ab", 2, 3 -> ["<a", "<ab", "ab", "ab>", "b>", "<ab>"]``); the whole
  bracketed word is appended once at the end (not duplicated when it is itself one of the n-grams).
  """
  if n_min < 1 or n_max < n_min:
    raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
  w = f"<{word}>"
  out = [w[i:i + n] for i in range(len(w)) for n in range(n_min, n_max + 1) if i + n <= len(w)]
  out = [g for g in out if g != w]
  out.append(w)
  return out


@functools.lru_cache(maxsize=1 << 20)
def fnv1a_32(s: str) -> int:
  """32-bit FNV-1a of the UTF-8 bytes of ``s``: ``h = 2166136261; for byte b: h = ((h ^ b) * 16777619) mod 2^32``.

  (fastText's C++ hash differs for non-ASCII bytes, which it sign-extends from ``int8``; this is the standard FNV-1a.)
  """
  h = FNV_OFFSET_BASIS_32
  for b in s.encode("utf-8"):
    h = ((h ^ b) * FNV_PRIME_32) & 0xFFFFFFFF
  return h


def hash_bucket(s: str, buckets: int) -> int:
  """``fnv1a_32(s) % buckets``: the stable bucket in ``[0, buckets)`` of string ``s`` (hashing trick)."""
  if buckets < 1:
    raise ValueError(f"buckets must be >= 1, got {buckets}")
  return fnv1a_32(s) % buckets


class Vocabulary:
  """Token <-> id map. Special tokens take ids ``0..len(specials)-1`` (by default ``<pad>`` = 0, ``<unk>`` = 1)."""

  def __init__(self, tokens: Sequence[str], *, pad_token: str | None = "<pad>", unk_token: str | None = "<unk>"):
    tokens = list(tokens)
    if len(set(tokens)) != len(tokens):
      dup = [t for t, c in collections.Counter(tokens).items() if c > 1][:5]
      raise ValueError(f"Vocabulary tokens must be unique, duplicates: {dup}")
    for name, tok in (("pad_token", pad_token), ("unk_token", unk_token)):
      if tok is not None and tok not in tokens:
        raise ValueError(f"{name}={tok!r} is not in the vocabulary tokens")
    self._tokens = tokens
    self._index = {t: i for i, t in enumerate(tokens)}
    self.pad_token, self.unk_token = pad_token, unk_token

  @classmethod
  def build(cls, token_lists: Iterable[Sequence[str]], *, min_count: int = 1, max_size: int | None = None,
            specials: Sequence[str] = ("<pad>", "<unk>")) -> "Vocabulary":
    """Vocabulary of the tokens seen at least ``min_count`` times, most frequent first.

    Ties are broken deterministically: count descending, then token (code-point order). ``max_size`` caps the number
    of regular (non-special) tokens. ``<pad>``/``<unk>`` are the pad/unknown tokens when present in ``specials``.
    """
    if min_count < 1:
      raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 0:
      raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
    counts = collections.Counter()
    for toks in token_lists:
      counts.update(toks)
    specials = list(specials)
    words = sorted((t for t, c in counts.items() if c >= min_count and t not in specials),
                   key=lambda t: (-counts[t], t))
    if max_size is not None:
      words = words[:max_size]
    return cls(specials + words, pad_token="<pad>" if "<pad>" in specials else None,
               unk_token="<unk>" if "<unk>" in specials else None)

  def __len__(self) -> int:
    return len(self._tokens)

  def __contains__(self, token: str) -> bool:
    return token in self._index

  @property
  def tokens(self) -> list[str]:
    return list(self._tokens)

  @property
  def pad_id(self) -> int:
    if self.pad_token is None:
      raise ValueError("this Vocabulary has no pad token")
    return self._index[self.pad_token]

  @property
  def unk_id(self) -> int:
    if self.unk_token is None:
      raise ValueError("this Vocabulary has no unknown token")
    return self._index[self.unk_token]

  def encode(self, tokens: Sequence[str]) -> np.ndarray:
    """``[len(tokens)]`` int32 ids; tokens not in the vocabulary map to ``unk_id``."""
    if self.unk_token is None:
      missing = [t for t in tokens if t not in self._index]
      if missing:
        raise ValueError(f"tokens {missing[:5]} are not in a Vocabulary without an unknown token")
      return np.asarray([self._index[t] for t in tokens], dtype=np.int32).reshape(-1)
    unk = self._index[self.unk_token]
    return np.asarray([self._index.get(t, unk) for t in tokens], dtype=np.int32).reshape(-1)

  def decode(self, ids) -> list[str]:
    """Tokens of ``ids`` (any int sequence); an id outside ``[0, len)`` is a ValueError."""
    ids = np.asarray(ids).reshape(-1)
    bad = ids[(ids < 0) | (ids >= len(self._tokens))]
    if bad.size:
      raise ValueError(f"ids {bad[:5].tolist()} are outside [0, {len(self._tokens)})")
    return [self._tokens[int(i)] for i in ids]

  def to_json(self) -> str:
    return json.dumps({"tokens": self._tokens, "pad_token": self.pad_token, "unk_token": self.unk_token},
                      ensure_ascii=False)

  @classmethod
  def from_json(cls, s: str) -> "Vocabulary":
    d = json.loads(s)
    if not isinstance(d, dict) or "tokens" not in d:
      raise ValueError("Vocabulary JSON must be an object with a 'tokens' list")
    return cls(d["tokens"], pad_token=d.get("pad_token"), unk_token=d.get("unk_token"))

  def save(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      f.write(self.to_json())

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    with open(path, encoding="utf-8") as f:
      return cls.from_json(f.read())

  def __eq__(self, other) -> bool:
    return (isinstance(other, Vocabulary) and self._tokens == other._tokens and self.pad_token == other.pad_token
            and self.unk_token == other.unk_token)

  def __repr__(self) -> str:
    return f"Vocabulary(size={len(self)}, first={self._tokens[:6]})"


def pad_batch(seqs: Sequence[np.ndarray], max_len: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-pad (and truncate) sequences to ``max_len``.

  Returns:
    ``ids [B, max_len]`` int32 (``pad_id`` after each sequence) and ``mask [B, max_len]`` bool (True on tokens).
  """
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  ids = np.full((len(seqs), max_len), pad_id, dtype=np.int32)
  mask = np.zeros((len(seqs), max_len), dtype=bool)
  for i, s in enumerate(seqs):
    s = np.asarray(s).reshape(-1)[:max_len]
    ids[i, :s.shape[0]] = s
    mask[i, :s.shape[0]] = True
  return ids, mask


def ngram_bag(tokens: Sequence[str], vocab: Vocabulary, *, word_ngrams: int = 2, buckets: int = 2_000_000,
              max_len: int | None = None) -> np.ndarray:
  """fastText input features (Joulin et al. 2017, §2.2): word ids followed by hashed word n-grams.

  Ids: ``vocab.encode(tokens)`` (``[0, len(vocab))``), then for ``2 <= n <= word_ngrams`` every n-gram's id
  ``len(vocab) + hash_bucket(ngram, buckets)`` (``[len(vocab), len(vocab) + buckets)``), so words and n-grams index
  one embedding table of ``len(vocab) + buckets`` rows. Returns ``[num_words + num_ngrams]`` int32, cut to
  ``max_len`` if given.
  """
  if word_ngrams < 1:
    raise ValueError(f"word_ngrams must be >= 1, got {word_ngrams}")
  parts = [vocab.encode(tokens)]
  for n in range(2, word_ngrams + 1):
    grams = word_ngrams_fn(tokens, n)
    parts.append(np.asarray([len(vocab) + hash_bucket(g, buckets) for g in grams], dtype=np.int64))
  out = np.concatenate(parts).astype(np.int64)
  if out.size and out.max() > np.iinfo(np.int32).max:
    raise ValueError(f"len(vocab) + buckets = {len(vocab) + buckets} overflows int32 ids")
  out = out.astype(np.int32)
  return out if max_len is None else out[:max_len]


def read_label_text_file(path: str) -> tuple[list[str], list[str]]:
  """Read ``label<TAB>text`` lines (UTF-8). Returns ``(labels, texts)``.

  Labels are arbitrary non-empty strings (the text after the first TAB may contain more TABs). Blank lines are
  skipped; a line without a TAB or with an empty label is a ValueError naming the file and the line number.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file (expected format {LABEL_TEXT_FORMAT})")
  labels, texts = [], []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      if "\t" not in line:
        raise ValueError(f"{path}:{lineno}: no TAB found; expected {LABEL_TEXT_FORMAT}, got {line[:60]!r}")
      label, text = line.split("\t", 1)
      label = label.strip()
      if not label:
        raise ValueError(f"{path}:{lineno}: empty label; expected {LABEL_TEXT_FORMAT}, got {line[:60]!r}")
      labels.append(label)
      texts.append(text)
  return labels, texts


class SentencePieceTokenizer:
  """Subword tokenization with a user's SentencePiece model (``.model`` file); needs ``pip install sentencepiece``.

  ``tokenize(text) -> list[str]`` pieces (usable with ``Vocabulary``), ``encode(text) -> np.ndarray`` int32 ids of
  the model's own vocabulary, ``decode(ids) -> str``.
  """

  def __init__(self, model_path: str):
    try:
      import sentencepiece  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("SentencePieceTokenizer needs the optional package 'sentencepiece', which is not installed; "
                        "install it with `pip install sentencepiece` (or use research.data.text.tokenize)") from e
    if not os.path.exists(model_path):
      raise FileNotFoundError(f"SentencePiece model_path={model_path!r} does not exist")
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)

  def __len__(self) -> int:
    return int(self._sp.get_piece_size())

  def tokenize(self, text: str) -> list[str]:
    return list(self._sp.encode(text, out_type=str))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text, out_type=int), dtype=np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])


__all__ = [
    "LABEL_TEXT_FORMAT",
    "SentencePieceTokenizer",
    "Vocabulary",
    "char_ngrams",
    "fnv1a_32",
    "hash_bucket",
    "ngram_bag",
    "pad_batch",
    "read_label_text_file",
    "tokenize",
    "word_ngrams",
]
