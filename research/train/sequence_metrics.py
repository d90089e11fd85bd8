"""Entity-level precision / recall / F1 of sequence tagging, as the CoNLL shared tasks' ``conlleval`` script (and
``seqeval``'s default mode, which follows it) define them.

Tags are strings ``PREFIX-TYPE`` (``B-PER``, ``I-LOC``, ...) or ``O``; the prefixes ``B`` (begin), ``I`` (inside),
``E`` (end), ``S`` (single) cover the IOB1, IOB2/BIO and IOBES schemes. A chunk (entity) ends before tag ``t``
(given the previous tag ``p``, see :func:`end_of_chunk`) and one starts at ``t`` (:func:`start_of_chunk`) by
conlleval's rules; in particular a stray ``I-X`` after ``O`` or after a tag of another type STARTS an entity of type
``X`` (so IOB1 data are read correctly), and a type change inside a run of ``I`` tags ends one entity and starts
another. Sentences are independent (an entity never crosses a sentence boundary).

An entity is a triple ``(type, start, end)`` (token indices, ``end`` exclusive). A predicted entity is correct iff
the same triple is in the gold sentence. Micro-averaged over all types: ``precision = correct / predicted``,
``recall = correct / gold``, ``F1 = 2 P R / (P + R)``, each 0 when its denominator is 0 (seqeval's
``zero_division`` default, without the warning); per type the same with that type's counts.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def split_tag(tag: str) -> tuple[str, str]:
  """``(prefix, type)``: ``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", "")``; a tag without ``-`` has type ``""``."""
  if tag == "O":
    return "O", ""
  prefix, _, typ = tag.partition("-")
  return prefix, typ


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
  """conlleval's ``endOfChunk``: does the chunk open at the previous token end before this one?"""
  if prev_tag in ("E", "S"):
    return True
  if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev_tag not in ("O", ".") and prev_type != typ


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
  """conlleval's ``startOfChunk``: does a chunk start at this token?"""
  if tag in ("B", "S"):
    return True
  if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
    return True
  return tag not in ("O", ".") and prev_type != typ


def extract_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """The entities ``[(type, start, end)]`` (``end`` exclusive) of one sentence's tags, in order."""
  entities = []
  prev_tag, prev_type, begin = "O", "", 0
  for i, t in enumerate(list(tags) + ["O"]):  # the final "O" closes an entity running to the end
    tag, typ = split_tag(t)
    if end_of_chunk(prev_tag, tag, prev_type, typ):
      entities.append((prev_type, begin, i))
    if start_of_chunk(prev_tag, tag, prev_type, typ):
      begin = i
    prev_tag, prev_type = tag, typ
  return entities


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
  p = correct / predicted if predicted else 0.0
  r = correct / gold if gold else 0.0
  f = 2 * p * r / (p + r) if p + r else 0.0
  return {"precision": p, "recall": r, "f1": f}


def entity_counts(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]
                  ) -> dict[str, tuple[int, int, int]]:
  """Per type ``(correct, predicted, gold)`` entity counts over sentence pairs (same lengths required)."""
  counts: dict[str, list[int]] = {}
  for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
    if len(g) != len(p):
      raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
    eg, ep = set(extract_entities(g)), set(extract_entities(p))
    for typ, *_ in eg:
      counts.setdefault(typ, [0, 0, 0])[2] += 1
    for e in ep:
      c = counts.setdefault(e[0], [0, 0, 0])
      c[1] += 1
      c[0] += e in eg
  return {k: tuple(v) for k, v in sorted(counts.items())}


def entity_scores(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> dict:
  """Micro ``precision``, ``recall``, ``f1`` and the counts, plus ``per_type`` ``{type: {precision, recall, f1,
  support}}`` (module docstring). ``gold``/``pred``: per-sentence tag strings."""
  counts = entity_counts(gold, pred)
  c, p, g = (sum(v[i] for v in counts.values()) for i in range(3))
  out = {**_prf(c, p, g), "correct": c, "predicted": p, "gold": g, "per_type": {}}
  for typ, (ct, pt, gt) in counts.items():
    out["per_type"][typ] = {**_prf(ct, pt, gt), "support": gt}
  return out


def ids_to_tags(ids: np.ndarray, lengths: Sequence[int], names: Sequence[str]) -> list[list[str]]:
  """Per-sentence tag strings of padded tag ids ``[N, T]`` with ``lengths [N]`` real tokens each."""
  ids = np.asarray(ids)
  return [[names[int(t)] for t in row[:int(n)]] for row, n in zip(ids, lengths)]


def token_accuracy(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> float:
  """conlleval's token accuracy: the fraction of tokens whose tag is exactly right."""
  ok = n = 0
  for g, p in zip(gold, pred, strict=True):
    ok += sum(a == b for a, b in zip(g, p))
    n += len(g)
  return ok / n if n else 0.0
