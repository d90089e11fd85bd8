"""Byte-pair-encoding subword units (Sennrich, Haddow & Birch, "Neural Machine Translation of Rare Words with Subword
Units", ACL 2016, §3.2, Algorithm 1), as ESuLMO (Li et al. 2019) uses them for its subword language model.

Learning: every word is a sequence of characters plus the end-of-word symbol ``</w>``, weighted by its count; each
merge operation replaces the most frequent adjacent symbol pair ``(a, b)`` everywhere by the new symbol ``ab``. Ties
are broken deterministically by the smaller pair (code-point order of ``(a, b)``). Learning stops after
``num_merges`` merges, or earlier when the most frequent pair occurs fewer than ``min_pair_count`` times.

Segmentation (:func:`segment`): a word's characters + ``</w>``; repeatedly apply the applicable merge that was
learned first, until none applies (the standard greedy application of the ordered merge list). Out-of-vocabulary
words always segment, down to single characters.
"""

from __future__ import annotations

import collections
from typing import Iterable, Mapping, Sequence

END = "</w>"


def _pairs(symbols: Sequence[str]) -> Iterable[tuple[str, str]]:
  return zip(symbols[:-1], symbols[1:])


def _merge_word(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
  out, i = [], 0
  while i < len(symbols):
    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
      out.append(symbols[i] + symbols[i + 1])
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return tuple(out)


def learn_bpe(word_counts: Mapping[str, int], num_merges: int, *, min_pair_count: int = 2) -> list[tuple[str, str]]:
  """The ordered merge operations (Algorithm 1 of Sennrich et al.) learned from ``{word: count}``."""
  if num_merges < 0:
    raise ValueError(f"num_merges must be >= 0, got {num_merges}")
  vocab = {tuple(w) + (END,): c for w, c in word_counts.items() if w and c > 0}
  merges: list[tuple[str, str]] = []
  for _ in range(num_merges):
    stats: collections.Counter = collections.Counter()
    for symbols, c in vocab.items():
      for p in _pairs(symbols):
        stats[p] += c
    if not stats:
      break
    best = min(stats, key=lambda p: (-stats[p], p))
    if stats[best] < min_pair_count:
      break
    merges.append(best)
    vocab = {_merge_word(s, best): c for s, c in vocab.items()}
  return merges


class BPE:
  """Segments words with an ordered merge list (module docstring); results are cached per word."""

  def __init__(self, merges: Sequence[tuple[str, str]]):
    self.merges = [tuple(m) for m in merges]
    self._rank = {m: i for i, m in enumerate(self.merges)}
    self._cache: dict[str, tuple[str, ...]] = {}

  def segment(self, word: str) -> tuple[str, ...]:
    """The subword units of ``word`` (the last one ends with ``</w>``)."""
    if not word:
      raise ValueError("BPE.segment: empty word")
    if word in self._cache:
      return self._cache[word]
    symbols = tuple(word) + (END,)
    while len(symbols) > 1:
      ranked = [(self._rank[p], p) for p in _pairs(symbols) if p in self._rank]
      if not ranked:
        break
      symbols = _merge_word(symbols, min(ranked)[1])
    self._cache[word] = symbols
    return symbols


def segment(word: str, merges: Sequence[tuple[str, str]]) -> tuple[str, ...]:
  """``BPE(merges).segment(word)``."""
  return BPE(merges).segment(word)
