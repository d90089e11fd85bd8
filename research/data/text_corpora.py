"""``text_topics``: an offline topic-and-stance text-classification corpus as a real TFDS builder, plus the reader of
any TFDS text-classification dataset (``load_text_split``).

Why: fastText's claims (Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017) are about
bag-of-words text classifiers -- that bigram features help (§2.2, Table 1) and that a linear bag model trains orders of
magnitude faster than recurrent / convolutional networks at similar accuracy (§3.1, Table 2). This corpus needs no
download and has the structure that makes both claims measurable: topical evidence in unigrams AND evidence that lives
only in word order.

Generative process (config fields in ``code``). ``K = 4`` topics (:data:`TOPICS`: sports, politics, science,
business) times 2 stances (positive, negative) = 8 classes named ``"<topic>_<stance>"`` (:data:`CLASS_NAMES`). Every
draw comes from ``numpy.random.default_rng([seed, split index])`` (train 0, test 1), one document after the other.

1. **Lexicons.** Each topic has nouns, verbs and modifiers (hand-written English words) plus ``names_per_topic``
   pseudo-word proper names made of syllables (a long tail of rare words); the shared vocabulary has determiners,
   generic nouns/verbs and prepositional phrases. Within a lexicon word ``r`` (in list order) has Zipf weight
   ``(r + 1)^-1``.
2. **Topical sentences** (``1 + Poisson(topic_sentences - 1)`` per document): ``DET [MOD] NOUN VERB DET NOUN [PP] .``
   Every content slot (MOD, NOUN, VERB) draws from the document's topic lexicon with probability ``topic_purity``,
   else from the shared vocabulary (probability ``shared_prob``) or from another random topic (the rest), so single
   words are ambiguous and short documents can be misread.
3. **Stance sentences** (``1 + Binomial(1, 0.5)`` per document) carry the stance. With probability ``plain_cue_prob``
   a sentence is a *plain cue*, ``a truly STRONG NOUN .`` with ``STRONG`` from a positive or a negative word list
   (evidence a unigram model can use). Otherwise it is an *order cue* built from one adjective pair ``(P, N)`` of
   :data:`STANCE_PAIRS` (e.g. good / bad) in one of three templates::

       positive:  "the NOUN was not N but P ."   "P , not N ."   "it was P rather than N ."
       negative:  "the NOUN was not P but N ."   "N , not P ."   "it was N rather than P ."

   Both stances use exactly the same words (the multiset of unigrams of a positive and of a negative order cue is
   identical), so the stance of a document without a plain cue is invisible to a bag of unigrams and visible to word
   bigrams (``"not bad"`` vs ``"not good"``, ``"but good"`` vs ``"but bad"``). With the defaults about 60% of the
   documents have only order cues: a unigram model tops out near ``topic accuracy x (0.4 + 0.6 / 2)``, while a bigram
   model can reach the label-noise ceiling.
4. Sentences are shuffled; tokens are joined by single spaces (punctuation is its own token), so documents have
   roughly 15-70 tokens (mean ~35 with the defaults).
5. **Label noise**: with probability ``label_noise`` (default 5%) the stored label is replaced by a uniformly drawn
   *other* class, so the best achievable test accuracy is about ``1 - label_noise``.

Features, named as TFDS ``imdb_reviews``: ``text`` (``tfds.features.Text``) and ``label`` (``ClassLabel`` with
:data:`CLASS_NAMES`); plus ``topic`` and ``stance`` ints (the clean, noise-free factors, for analysis) and ``index``.
Splits ``train`` and ``test``. Configs: ``default`` (30,000 / 5,000 documents, builds in ~10 s) and ``small``
(2,000 / 500, for tests).

:func:`load_text_split` reads ``text_topics`` or any TFDS dataset a user prepared (``imdb_reviews``: ``text``;
``ag_news_subset``: ``title`` + ``description``, joined with a space) into ``(texts, labels, class_names)``.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

NAME = "text_topics"
TOPICS = ("sports", "politics", "science", "business")
STANCES = ("positive", "negative")
CLASS_NAMES = tuple(f"{t}_{s}" for t in TOPICS for s in STANCES)
SPLITS = ("train", "test")

_LEX = {
    "sports": dict(
        nouns="team match coach goal season player league striker referee stadium championship fans keeper "
              "tournament final captain squad pitch transfer trophy defender medal race sprint".split(),
        verbs="scored won lost defeated tackled signed trained celebrated beat missed equalised drafted".split(),
        mods="home away injured unbeaten veteran young rival top-flight".split()),
    "politics": dict(
        nouns="minister parliament election vote senator party campaign bill reform government coalition "
              "president policy law ballot debate cabinet mayor treaty referendum opposition candidate".split(),
        verbs="passed vetoed debated proposed elected resigned signed campaigned opposed negotiated appointed "
              "announced".split(),
        mods="federal liberal conservative ruling local national bipartisan electoral".split()),
    "science": dict(
        nouns="researchers study experiment telescope genome molecule laboratory particle climate protein "
              "vaccine physicist galaxy data hypothesis species fossil cell theory satellite journal enzyme".split(),
        verbs="discovered measured observed published tested sequenced confirmed simulated analysed detected "
              "synthesised replicated".split(),
        mods="quantum genetic orbital clinical molecular peer-reviewed experimental thermal".split()),
    "business": dict(
        nouns="company shares market investors profit revenue merger bank startup stock earnings ceo "
              "quarter dividend retailer factory supplier loan acquisition brand exports inflation".split(),
        verbs="acquired reported invested raised cut hired launched merged sold borrowed forecast "
              "expanded".split(),
        mods="quarterly annual global corporate fiscal private retail wholesale".split()),
}
_SHARED = dict(
    dets="the a this that one another every their".split(),
    nouns="people report week year officials group plan news statement results day city country month "
          "issue story time record".split(),
    verbs="said saw made expected noted showed followed reached described".split(),
    mods="new major recent large small early final second".split(),
    pps="on monday|in the city|after the meeting|this week|last year|at the weekend|in the end|for the first "
        "time|despite the rain|by a wide margin".split("|"),
)
STANCE_PAIRS = (("good", "bad"), ("exciting", "boring"), ("strong", "weak"), ("clear", "confusing"),
                ("fair", "unfair"), ("smart", "foolish"), ("fresh", "stale"), ("bright", "dull"))
_STRONG = {"positive": "excellent wonderful superb delightful impressive brilliant".split(),
           "negative": "awful terrible dreadful disappointing miserable shoddy".split()}
_SYLLABLES = "ka lo mi ren tu sa vor el dan ri po zen bel ta nor fi gu"


@dataclasses.dataclass
class TextTopicsConfig(tfds.core.BuilderConfig):
  """Parameters of the generative process (module docstring, steps 1-5)."""
  num_train: int = 30_000
  num_test: int = 5_000
  topic_sentences: float = 3.0
  topic_purity: float = 0.7
  shared_prob: float = 0.2
  plain_cue_prob: float = 0.25
  label_noise: float = 0.05
  names_per_topic: int = 40
  seed: int = 0


CONFIGS = {
    "default": TextTopicsConfig(name="default", description="30,000 train / 5,000 test documents, 8 classes."),
    "small": TextTopicsConfig(name="small", description="2,000 train / 500 test documents (tests).",
                              num_train=2_000, num_test=500, seed=1),
}


def _check_config(c: TextTopicsConfig) -> None:
  checks = [
      (c.num_train >= 1 and c.num_test >= 1, "num_train/num_test", (c.num_train, c.num_test), "use >= 1 documents"),
      (c.topic_sentences >= 1, "topic_sentences", c.topic_sentences, "use a mean >= 1"),
      (0 <= c.topic_purity <= 1 and 0 <= c.shared_prob <= 1 - c.topic_purity, "topic_purity/shared_prob",
       (c.topic_purity, c.shared_prob), "use probabilities with topic_purity + shared_prob <= 1"),
      (0 <= c.plain_cue_prob <= 1, "plain_cue_prob", c.plain_cue_prob, "use a probability"),
      (0 <= c.label_noise < 1, "label_noise", c.label_noise, "use a probability < 1"),
      (c.names_per_topic >= 0, "names_per_topic", c.names_per_topic, "use >= 0"),
  ]
  for ok, field, value, fix in checks:
    if not ok:
      raise ValueError(f"TextTopicsConfig.{field}={value!r} is invalid: {fix}.")


class _Uniforms:
  """Sequential ``U[0, 1)`` draws from a numpy Generator, fetched in blocks (fast scalar draws, same stream)."""

  def __init__(self, rng: np.random.Generator, block: int = 4096):
    self._rng, self._block = rng, block
    self._buf, self._i = rng.random(block), 0

  def __call__(self) -> float:
    if self._i == self._block:
      self._buf, self._i = self._rng.random(self._block), 0
    u = self._buf[self._i]
    self._i += 1
    return float(u)


class _Lexicon:
  """Words with Zipf weights ``(r + 1)^-1`` by list position; ``draw(u)`` maps one uniform to a word."""

  def __init__(self, words: Sequence[str]):
    self.words = list(words)
    cum = np.cumsum(1.0 / (np.arange(len(self.words)) + 1.0))
    self.cum = (cum / cum[-1]).tolist()

  def draw(self, u: float) -> str:
    return self.words[min(bisect.bisect_right(self.cum, u), len(self.words) - 1)]


def _names(rng: np.random.Generator, n: int, taken: set) -> list[str]:
  """``n`` distinct pseudo-word proper names of 2-3 syllables not in ``taken``."""
  syl = _SYLLABLES.split()
  out = []
  while len(out) < n:
    k = int(rng.integers(2, 4))
    w = "".join(syl[int(i)] for i in rng.integers(0, len(syl), size=k))
    if w not in taken:
      taken.add(w)
      out.append(w)
  return out


def lexicons(config: TextTopicsConfig) -> dict:
  """The lexicons of step 1: ``{topic: {'nouns', 'verbs', 'mods'}: _Lexicon}`` and ``'shared'``; names are
  drawn from ``default_rng([seed, 2])`` (the same in both splits) and appended to each topic's nouns."""
  rng = np.random.default_rng([config.seed, 2])
  taken = {w for lex in _LEX.values() for ws in lex.values() for w in ws}
  out = {}
  for t in TOPICS:
    lex = _LEX[t]
    out[t] = {"nouns": _Lexicon(lex["nouns"] + _names(rng, config.names_per_topic, taken)),
              "verbs": _Lexicon(lex["verbs"]), "mods": _Lexicon(lex["mods"])}
  out["shared"] = {k: _Lexicon(v) for k, v in _SHARED.items()}
  return out


def _slot(u: _Uniforms, lex: dict, topic: str, kind: str, config: TextTopicsConfig) -> str:
  """A content word (``kind`` in nouns/verbs/mods) for a document of ``topic`` (step 2's mixture)."""
  r = u()
  if r < config.topic_purity:
    source = topic
  elif r < config.topic_purity + config.shared_prob:
    source = "shared"
  else:
    others = [t for t in TOPICS if t != topic]
    source = others[min(int(u() * len(others)), len(others) - 1)]
  return lex[source][kind].draw(u())


def _topical_sentence(u: _Uniforms, lex: dict, topic: str, config: TextTopicsConfig) -> list[str]:
  sh = lex["shared"]
  words = [sh["dets"].draw(u())]
  if u() < 0.5:
    words.append(_slot(u, lex, topic, "mods", config))
  words += [_slot(u, lex, topic, "nouns", config), _slot(u, lex, topic, "verbs", config), sh["dets"].draw(u()),
            _slot(u, lex, topic, "nouns", config)]
  if u() < 0.4:
    words += sh["pps"].draw(u()).split()
  return words + ["."]


def _stance_sentence(u: _Uniforms, lex: dict, topic: str, stance: str, config: TextTopicsConfig) -> list[str]:
  """Step 3: a plain cue (unigram evidence) or an order cue (identical unigrams for both stances)."""
  if u() < config.plain_cue_prob:
    strong = _STRONG[stance]
    return ["a", "truly", strong[min(int(u() * len(strong)), len(strong) - 1)],
            _slot(u, lex, topic, "nouns", config), "."]
  pos, neg = STANCE_PAIRS[min(int(u() * len(STANCE_PAIRS)), len(STANCE_PAIRS) - 1)]
  good, bad = (pos, neg) if stance == "positive" else (neg, pos)
  template = min(int(u() * 3), 2)
  if template == 0:
    return ["the", _slot(u, lex, topic, "nouns", config), "was", "not", bad, "but", good, "."]
  if template == 1:
    return [good, ",", "not", bad, "."]
  return ["it", "was", good, "rather", "than", bad, "."]


def _poisson(u: _Uniforms, lam: float) -> int:
  """Poisson(lam) by inversion of one uniform (small lam)."""
  r, k, p = u(), 0, np.exp(-lam)
  cdf = p
  while r > cdf and k < 100:
    k += 1
    p *= lam / k
    cdf += p
  return k


def generate(config: TextTopicsConfig, split: str) -> dict[str, list]:
  """The documents of ``split`` (module docstring): ``text`` [N] str, ``label`` / ``topic`` / ``stance`` [N] int."""
  _check_config(config)
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: {NAME} has splits {list(SPLITS)}")
  n = config.num_train if split == "train" else config.num_test
  u = _Uniforms(np.random.default_rng([config.seed, SPLITS.index(split)]))
  lex = lexicons(config)
  texts, labels, topics, stances = [], [], [], []
  k = len(CLASS_NAMES)
  for _ in range(n):
    ti = min(int(u() * len(TOPICS)), len(TOPICS) - 1)
    si = int(u() < 0.5)
    topic, stance = TOPICS[ti], STANCES[si]
    sentences = [_topical_sentence(u, lex, topic, config)
                 for _ in range(1 + _poisson(u, config.topic_sentences - 1))]
    sentences += [_stance_sentence(u, lex, topic, stance, config) for _ in range(1 + int(u() < 0.5))]
    order = sorted(range(len(sentences)), key=lambda _: u())  # a seeded shuffle
    texts.append(" ".join(w for i in order for w in sentences[i]))
    label = ti * 2 + si
    if u() < config.label_noise:
      label = (label + 1 + min(int(u() * (k - 1)), k - 2)) % k  # a uniformly drawn other class
    labels.append(label)
    topics.append(ti)
    stances.append(si)
  return {"text": texts, "label": labels, "topic": topics, "stance": stances}


class TextTopics(tfds.core.GeneratorBasedBuilder):
  """Topic x stance documents from a small probabilistic grammar (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default and small."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "topic": np.int32,
            "stance": np.int32,
            "index": np.int64,
        }),
        supervised_keys=("text", "label"),
        homepage="https://example.invalid/research/text_topics",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    docs = generate(self.builder_config, split)
    for i, (text, label, topic, stance) in enumerate(zip(docs["text"], docs["label"], docs["topic"],
                                                          docs["stance"])):
      yield i, {"text": text, "label": label, "topic": topic, "stance": stance, "index": i}


# ------------------------------------------------------------------------------------------------ reading


def _as_str(v) -> str:
  if isinstance(v, (bytes, np.bytes_)):
    return v.decode("utf-8")
  if isinstance(v, np.ndarray):
    return _as_str(v.item())
  return str(v)


def load_text_split(dataset: str, split: str, data_dir: str | None = None, *, text_keys: Sequence[str] = ("text",),
                    label_key: str = "label", limit: int | None = None) -> tuple[list[str], np.ndarray, list[str]]:
  """One split of a TFDS text-classification dataset as ``(texts [N] str, labels [N] int32, class_names)``.

  ``dataset``: ``text_topics`` (``text_topics/small``: a config), built on first use, or any TFDS dataset prepared
  in ``data_dir`` in array_record format. ``text_keys``: the string features joined (with one space) into each
  text, e.g. ``("title", "description")`` for ``ag_news_subset``. ``label_key`` must be a ``ClassLabel``. Records
  are returned in ``index`` order when the dataset has that feature (TFDS shuffles keys), else in source order;
  ``limit`` keeps the first ``limit``.
  """
  from research.data import pipeline  # late import: pipeline imports this module
  if not text_keys:
    raise ValueError("--text_keys must name at least one text feature (e.g. text, or title,description)")
  info = pipeline.get_info(dataset, data_dir)
  features = info.features
  missing = [k for k in (*text_keys, label_key) if k not in features]
  if missing:
    raise ValueError(f"--text_keys / label: dataset {dataset!r} has no feature(s) {missing}; its features are "
                     f"{sorted(features)} (ag_news_subset: --text_keys=title,description; imdb_reviews: text)")
  not_text = [k for k in text_keys if not isinstance(features[k], tfds.features.Text)]
  if not_text:
    raise ValueError(f"--text_keys={','.join(text_keys)}: {not_text} of dataset {dataset!r} are not "
                     f"tfds.features.Text features")
  if not isinstance(features[label_key], tfds.features.ClassLabel):
    raise ValueError(f"dataset {dataset!r}: feature {label_key!r} must be a ClassLabel, got "
                     f"{type(features[label_key]).__name__}")
  rows = pipeline.read_split(dataset, split, data_dir, order_by="index" if "index" in features else None)
  if limit is not None:
    rows = rows[:limit]
  texts = [" ".join(_as_str(r[k]) for k in text_keys) for r in rows]
  labels = np.asarray([int(r[label_key]) for r in rows], np.int32)
  return texts, labels, list(features[label_key].names)


__all__ = ["CLASS_NAMES", "CONFIGS", "STANCE_PAIRS", "TOPICS", "TextTopics", "TextTopicsConfig", "generate",
           "lexicons", "load_text_split"]
