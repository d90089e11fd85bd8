"""Caption metrics on tokenised sentences (pure python / numpy): corpus BLEU-4 and CIDEr-D.

Inputs are token lists: ``hypotheses`` [N] (one generated caption per image, a list of str) and ``references``
[N] (a list of reference captions per image, each a list of str; the number may vary per image). Tokenisation is the
caller's (``research.data.text.tokenize``); nothing here lower-cases or splits again.

* :func:`corpus_bleu` -- BLEU (Papineni et al., ACL 2002, §2): modified n-gram precisions ``p_n`` for
  ``n = 1..max_n`` with each hypothesis n-gram count clipped at its maximum count in any one reference, summed over
  the corpus before dividing; brevity penalty ``BP = 1 if c > r else exp(1 - r / c)`` with ``c`` the total
  hypothesis length and ``r`` the sum over images of the reference length CLOSEST to the hypothesis length (ties:
  the shorter; ``BP = 0`` for ``c = 0``); ``BLEU = BP * exp(mean_n log p_n)``, 0 when any ``p_n`` is 0 (no
  smoothing). The same statistics as ``sacrebleu.corpus_bleu(..., tokenize="none", smooth_method="none",
  force=True)`` (which reports 100x the value).
* :func:`cider_d` -- CIDEr-D (Vedantam et al., CVPR 2015, §3 and §5 "CIDEr-D"): for ``n = 1..4`` a TF-IDF vector
  ``g^n(s)`` over n-grams, ``g_k(s) = tf_k(s) * log(|I| / max(1, df_k))`` with ``df_k`` the number of images whose
  REFERENCES contain n-gram ``k`` and ``|I|`` the number of images;

      CIDEr-D_n(c, S) = 10 / m * sum_j exp(-(l(c) - l(s_j))^2 / (2 sigma^2))
                                    * <min(g^n(c), g^n(s_j)), g^n(s_j)> / (||g^n(c)|| ||g^n(s_j)||)

  (``m`` references, ``l`` the length in tokens, ``sigma = 6``, ``min`` elementwise: the clipping; a zero norm gives
  0), ``CIDEr-D = mean_n CIDEr-D_n`` per image and the corpus score is the mean over images.
  ``term_frequency="count"`` (default) uses raw n-gram counts as ``tf``, as the coco-caption code every published
  CIDEr-D number comes from (``pycocoevalcap.cider``); ``"normalized"`` divides by the number of n-grams of that
  order in the sentence (the paper's eq. 2). Cosine similarity is invariant to that scale, the clipping is not, so
  the two differ when lengths differ. (coco-caption measures ``l`` in bigrams, ``len - 1``: the same difference for
  non-empty sentences.)
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

Tokens = Sequence[str]


def ngrams(tokens: Tokens, n: int) -> collections.Counter:
  """Counts of the contiguous ``n``-grams (tuples) of ``tokens``."""
  tokens = tuple(tokens)
  return collections.Counter(tokens[i:i + n] for i in range(len(tokens) - n + 1))


def _check(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], what: str) -> None:
  if len(hypotheses) != len(references):
    raise ValueError(f"{what}: {len(hypotheses)} hypotheses but {len(references)} reference lists")
  if not hypotheses:
    raise ValueError(f"{what}: no hypotheses")
  for i, refs in enumerate(references):
    if not refs:
      raise ValueError(f"{what}: image {i} has no references")
  for i, h in enumerate(hypotheses):
    if isinstance(h, str):
      raise TypeError(f"{what}: hypothesis {i} is a str; pass token lists (research.data.text.tokenize)")


def closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
  """The reference length closest to ``hyp_len`` (ties: the shorter one)."""
  return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def bleu_statistics(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4
                    ) -> dict[str, np.ndarray | int]:
  """Corpus sufficient statistics: ``correct`` [max_n] (clipped matches), ``total`` [max_n] (hypothesis n-grams),
  ``hyp_len`` and ``ref_len`` (sum of closest reference lengths)."""
  _check(hypotheses, references, "bleu")
  correct, total = np.zeros(max_n, np.int64), np.zeros(max_n, np.int64)
  hyp_len = ref_len = 0
  for hyp, refs in zip(hypotheses, references):
    hyp_len += len(hyp)
    ref_len += closest_ref_length(len(hyp), [len(r) for r in refs])
    for n in range(1, max_n + 1):
      h = ngrams(hyp, n)
      best: collections.Counter = collections.Counter()
      for r in refs:
        best |= ngrams(r, n)  # elementwise max over the references
      correct[n - 1] += sum(min(c, best[g]) for g, c in h.items())
      total[n - 1] += max(len(hyp) - n + 1, 0)
  return {"correct": correct, "total": total, "hyp_len": hyp_len, "ref_len": ref_len}


def corpus_bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4
                ) -> dict[str, float | list[float]]:
  """Corpus BLEU-``max_n`` in [0, 1] (module docstring): ``{'bleu', 'precisions' [max_n], 'brevity_penalty',
  'hyp_len', 'ref_len'}``."""
  s = bleu_statistics(hypotheses, references, max_n)
  c, r = s["hyp_len"], s["ref_len"]
  bp = 1.0 if c >= r else (math.exp(1.0 - r / c) if c > 0 else 0.0)
  prec = [float(k) / t if t > 0 else 0.0 for k, t in zip(s["correct"], s["total"])]
  bleu = 0.0 if min(prec) <= 0 else bp * math.exp(sum(math.log(p) for p in prec) / max_n)
  return {"bleu": bleu, "precisions": prec, "brevity_penalty": bp, "hyp_len": int(c), "ref_len": int(r)}


def _tfidf(tokens: Tokens, n: int, df: collections.Counter, log_images: float, normalized: bool
           ) -> dict[tuple, float]:
  counts = ngrams(tokens, n)
  scale = 1.0 / max(sum(counts.values()), 1) if normalized else 1.0
  return {g: c * scale * (log_images - math.log(max(1.0, df[g]))) for g, c in counts.items()}


def _norm(v: dict) -> float:
  return math.sqrt(sum(x * x for x in v.values()))


def cider_d(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], *, sigma: float = 6.0,
            max_n: int = 4, term_frequency: str = "count") -> tuple[float, np.ndarray]:
  """CIDEr-D (module docstring): ``(corpus score, per-image scores [N])``; document frequencies come from the
  ``references`` given (the evaluated split), as in coco-caption."""
  _check(hypotheses, references, "cider_d")
  if term_frequency not in ("count", "normalized"):
    raise ValueError(f"term_frequency={term_frequency!r}; choose 'count' (coco-caption) or 'normalized' (paper)")
  if sigma <= 0:
    raise ValueError(f"sigma={sigma} must be positive")
  normalized = term_frequency == "normalized"
  df: collections.Counter = collections.Counter()
  for refs in references:
    df.update({g for r in refs for n in range(1, max_n + 1) for g in ngrams(r, n)})
  log_images = math.log(float(len(references)))
  scores = np.zeros(len(hypotheses))
  for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
    per_n = np.zeros(max_n)
    for n in range(1, max_n + 1):
      vh = _tfidf(hyp, n, df, log_images, normalized)
      nh = _norm(vh)
      for ref in refs:
        vr = _tfidf(ref, n, df, log_images, normalized)
        nr = _norm(vr)
        dot = sum(min(x, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, x in vh.items())
        val = dot / (nh * nr) if nh > 0 and nr > 0 else 0.0
        per_n[n - 1] += val * math.exp(-((len(hyp) - len(ref)) ** 2) / (2.0 * sigma ** 2))
    scores[i] = 10.0 * per_n.mean() / len(refs)
  return float(scores.mean()), scores
