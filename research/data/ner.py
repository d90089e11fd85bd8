"""``grammar_ner``: an offline named-entity-recognition corpus generated from a small grammar, as a TFDS builder
shaped like TFDS ``conll2003``; and :func:`load_split`, which reads it or a user's prepared ``conll2003`` alike.

Sentences come from ~25 newswire-like templates (sport results, business, politics; CoNLL-2003's genre) whose slots
are filled from seeded entity lexicons of the four CoNLL types PER, ORG, LOC, MISC:

* multi-token entities: ``First Last`` (PER), ``Stem Corp`` / ``Bank of X`` / ``X United`` (ORG), ``New X`` (LOC),
  ``X Open`` / ``World Cup`` (MISC); an ORG may contain a LOC or MISC word (``Bank of Valdoria`` is one ORG);
* capitalisation: entities are capitalised, common words are not, except sentence-initially (``Hope remains ...``,
  ``May sales ...`` are O);
* ambiguous words whose label depends on the context, as in CoNLL: a city is LOC after ``in`` / ``to`` but ORG as a
  sports team (``Ardburg beat Kelton 2-1``, ``for Ardburg``); ``Jordan``-like words are LOC (``in Jordan``) or part of
  a PER (``Jordan Vasson said``); ``Rose``, ``Bill``, ``Mark`` ... are first names before a surname and common words
  (``rose``, ``the bill``) elsewhere; a nationality is MISC alone and part of an ORG in ``Valdorian National Party``;
* unseen entities: every lexicon is split once (seeded) into a seen part (70%) and a held-out part; ``train`` draws
  only seen names, ``validation`` and ``test`` draw each entity from the held-out part with probability
  ``unseen_rate`` (such tokens have ``unseen`` True), so a tagger must generalise from spelling and context;
* label noise: in ``train`` each entity's label is corrupted with probability ``label_noise`` (~2%, half type
  swaps, half dropped to O); ``validation`` and ``test`` labels are clean, so test F1 measures the truth.

Features (named as TFDS ``conll2003``; that dataset also has ``pos`` and ``chunks``, which are not used):

* ``tokens``    Sequence(Text)
* ``ner``       Sequence(ClassLabel(names=:data:`NER_TAGS`)), IOB2 (BIO)
* ``unseen``    Sequence(bool): the token belongs to an entity drawn from a held-out lexicon part
* ``template``  int32: the template the sentence came from

Configs (:data:`CONFIGS`): ``default`` (3,000 / 500 / 1,000 sentences) and ``small`` (64 / 16 / 16, for tests).
Generated deterministically (``np.random.default_rng([LEXICON_SEED])`` for the lexicons, ``[seed, split]`` per
split) into ``data_dir`` as array_record on first use (``research.data.get_source("grammar_ner/small", ...)``).

:func:`load_split` reads ``grammar_ner[/config]`` or any TFDS dataset with ``tokens`` and ``ner`` features (a
``conll2003`` prepared with ``tfds build conll2003 --file_format=array_record``; its ``dev`` split serves as
``validation``). CoNLL-2003's original files are IOB1; tags are converted to IOB2 on reading (:func:`to_iob2`,
the identity on IOB2 data), which changes no entity under conlleval's reading.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

NAME = "grammar_ner"
NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
SPLITS = ("train", "validation", "test")
LEXICON_SEED = 20191010  # TENER's arXiv date
SEEN_FRACTION = 0.7


@dataclasses.dataclass
class GrammarNERConfig(tfds.core.BuilderConfig):
  """Split sizes, the held-out-entity rate of validation/test and the train label noise."""
  num_train: int = 3000
  num_validation: int = 500
  num_test: int = 1000
  unseen_rate: float = 0.5
  label_noise: float = 0.02
  seed: int = 0


CONFIGS: dict[str, GrammarNERConfig] = {c.name: c for c in (
    GrammarNERConfig(name="default", num_train=2000, description="2000 / 500 / 1000 sentences."),
    GrammarNERConfig(name="small", num_train=64, num_validation=16, num_test=16,
                     description="64 / 16 / 16 sentences (tests)."),
)}

# ------------------------------------------------------------------------------------------------------ lexicons

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st",
           "tr", "sh", "ch", "h", "j")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "ei")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m")
_FIRST_END = ("", "a", "o", "el", "in", "ie")
_LAST_END = ("son", "sen", "ov", "ez", "ski", "elli", "man", "er")
_SHARED_END = ("ton", "son", "er", "an", "ia", "ex", "ford", "ez")
SHARED_SUFFIX_P = 0.4
_CITY_END = ("burg", "ville", "stad", "grad", "port", "ton", "ford", "heim", "field", "mouth")
_COUNTRY_END = ("ia", "land", "istan", "ica")
_ORG_STEM_END = ("tex", "co", "tron", "ex", "ica", "on", "ix", "ara")
_ORG_SUFFIX = ("Corp", "Inc", "Group", "Holdings", "Motors", "Airlines", "Systems", "Bank", "Telecom")
_CLUB_SUFFIX = ("United", "Rovers", "City", "Athletic", "Wanderers")
_EVENT_SUFFIX = ("Open", "Cup", "Games", "Classic", "Grand Prix")
# Words that are LOC in one context and (part of) a PER in another, and first names that are common words.
AMBIGUOUS_PLACES = ("Jordan", "Florence", "Chelsea", "Victoria", "Lincoln", "Kent", "Austin", "Phoenix", "Orlando",
                    "Sydney")
AMBIGUOUS_FIRST = {"Rose": "rose", "Mark": "mark", "Bill": "bill", "Grant": "grant", "Hope": "hope",
                   "Frank": "frank", "Will": "will", "May": "may", "Faith": "faith", "Pat": "pat"}


def _pick(rng: np.random.Generator, ends: tuple[str, ...]) -> str:
  pool = _SHARED_END if rng.random() < SHARED_SUFFIX_P else ends
  return pool[rng.integers(len(pool))]


def _stems(rng: np.random.Generator, n: int, syllables: tuple[int, ...]) -> list[str]:
  out: set[str] = set()
  while len(out) < n:
    k = int(rng.choice(syllables))
    s = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(k))
    out.add(s + _CODAS[rng.integers(len(_CODAS))])
  return sorted(out)


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Entity name lists, each split into ``seen`` (train) and ``held_out`` (validation/test only) parts."""
  first: tuple[tuple[str, ...], tuple[str, ...]]
  last: tuple[tuple[str, ...], tuple[str, ...]]
  city: tuple[tuple[str, ...], tuple[str, ...]]
  country: tuple[tuple[str, ...], tuple[str, ...]]
  org_stem: tuple[tuple[str, ...], tuple[str, ...]]


def _split(rng: np.random.Generator, names: list[str], always_seen: Sequence[str] = ()) -> tuple[tuple, tuple]:
  order = [names[i] for i in rng.permutation(len(names))]
  k = int(round(SEEN_FRACTION * len(order)))
  return tuple(sorted(order[:k]) + list(always_seen)), tuple(sorted(order[k:]))


def build_lexicon() -> Lexicon:
  """The seeded lexicons (the same for every config and split). A name takes a suffix typical of its type, or with
  probability :data:`SHARED_SUFFIX_P` one of :data:`_SHARED_END` that every type uses, so spelling alone often
  cannot tell a new name's type."""
  rng = np.random.default_rng(LEXICON_SEED)
  cap = lambda s: s[0].upper() + s[1:]
  pick = lambda ends: _pick(rng, ends)
  first = sorted({cap(s + pick(_FIRST_END)) for s in _stems(rng, 160, (2,))})
  last = sorted({cap(s + pick(_LAST_END)) for s in _stems(rng, 320, (1, 2))})
  city = sorted({cap(s + pick(_CITY_END)) for s in _stems(rng, 220, (1, 2))})
  country = sorted({cap(s + pick(_COUNTRY_END)) for s in _stems(rng, 70, (1, 2))})
  org = sorted({cap(s + pick(_ORG_STEM_END)) for s in _stems(rng, 160, (1, 2))})
  taken = set(AMBIGUOUS_PLACES) | set(AMBIGUOUS_FIRST)
  clean = lambda xs: [x for x in xs if x not in taken]
  return Lexicon(first=_split(rng, clean(first)), last=_split(rng, clean(last)),
                 city=_split(rng, clean(city)), country=_split(rng, clean(country)), org_stem=_split(rng, clean(org)))


def nationality(country: str) -> str:
  """The adjective of a country name (MISC): ``Valdoria -> Valdorian``, ``Brenland -> Brenlandish``, ..."""
  for end, adj in (("ia", "ian"), ("ica", "ican"), ("istan", "istani"), ("land", "landish")):
    if country.endswith(end):
      return country[:-len(end)] + adj
  return country + "ese"


# ------------------------------------------------------------------------------------------------------ grammar

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "March", "April", "June", "July", "August", "October", "December")

# Slots: PER (full name or surname), FIRSTAMB (an ambiguous first name + surname), LAST (surname), ORG, SPEAKER
# (PER or ORG: the context does not tell which), LOC (city, country or "New X"), CITY, TEAM (a city as a sports team:
# ORG), AMBLOC (an ambiguous place: LOC), NAT (nationality: MISC), EVENT (MISC), NUM, SCORE, DAY, MONTH, YEAR.
# A sentence is an optional opening phrase, one or two clauses (joined by a conjunction) and a full stop; its first
# word is capitalised (so "hope remains ..." opens as "Hope remains ...").
CLAUSES = (
    "{TEAM} beat {TEAM} {SCORE}",
    "{TEAM} drew {SCORE} with {TEAM} in {CITY}",
    "{PER} scored twice for {TEAM}",
    "{FIRSTAMB} scored for {TEAM} against {TEAM}",
    "{LAST} beat {PER} {SCORE} in the {EVENT}",
    "{FIRSTAMB} , a {NAT} citizen , won the {EVENT}",
    "the {NAT} team will play {TEAM} in {CITY}",
    "rain stopped play in {CITY}",
    "{PER} ( {TEAM} ) won in {NUM} minutes",
    "shares of {ORG} rose {NUM} percent in {CITY} trading",
    "{ORG} and {ORG} signed a deal worth {NUM} million dollars",
    "{ORG} chief executive {PER} resigned on {DAY}",
    "{SPEAKER} said profits fell {NUM} percent",
    "{ORG} will open an office in {LOC}",
    "analysts at {ORG} expect {SPEAKER} to grow",
    "{PER} , who joined {ORG} in {YEAR} , lives in {CITY}",
    "the {NAT} government said {PER} will visit {LOC}",
    "{NAT} officials met {PER} in {AMBLOC}",
    "{PER} told reporters in {AMBLOC} that prices will rise",
    "police in {CITY} said {NUM} people were hurt",
    "Mr. {LAST} flew from {CITY} to {CITY}",
    "the grant to {ORG} was approved by the {NAT} parliament",
    "{SPEAKER} 's spokesman denied the report",
    "according to {SPEAKER} , talks in {LOC} ended on {DAY}",
    "{FIRSTAMB} will mark the day in {AMBLOC}",
    "officials in {AMBLOC} hope for rain",
    "the bill was signed by {PER} in {MONTH}",
    "frank talks between {NAT} and {NAT} leaders ended in {CITY}",
    "{LOC} and {LOC} agreed to hold the {EVENT}",
    "{PER} of {ORG} said the market rose",
    "hope remains that {SPEAKER} will win",
    "may sales at {ORG} rose {NUM} percent",
    "{SPEAKER} will visit {LOC} in {MONTH}",
    "{TEAM} fans travelled to {CITY}",
)
OPENINGS = ("", "", "", "on {DAY} ,", "in {CITY} ,", "meanwhile ,", "{CITY} {DAY} :", "in {MONTH} ,")
JOINERS = (", and", ", while", "; meanwhile ,", ", but", "after")
TEMPLATES = CLAUSES  # one clause per template index (the ``template`` feature is the first clause's index)


class _Filler:
  """Expands slots to ``(tokens, tags, unseen)``; ``held_out_p``: chance to draw each name from the held-out part."""

  def __init__(self, lex: Lexicon, rng: np.random.Generator, held_out_p: float):
    self.lex, self.rng, self.p = lex, rng, held_out_p

  def _name(self, parts) -> tuple[str, bool]:
    seen, held = parts
    use_held = bool(held) and self.rng.random() < self.p
    pool = held if use_held else seen
    return pool[self.rng.integers(len(pool))], use_held

  def _choice(self, xs):
    return xs[self.rng.integers(len(xs))]

  def slot(self, kind: str) -> tuple[list[str], str | None, bool]:
    """``(tokens, entity type or None, unseen)``."""
    r = self.rng.random()
    if kind in ("PER", "LAST", "FIRSTAMB"):
      last, u1 = self._name(self.lex.last)
      if kind == "LAST" or (kind == "PER" and r < 0.25):
        return [last], "PER", u1
      if kind == "FIRSTAMB":
        first, u2 = (self._choice(tuple(AMBIGUOUS_FIRST) + AMBIGUOUS_PLACES), False)
      else:
        first, u2 = self._name(self.lex.first)
      return [first, last], "PER", u1 or u2
    if kind == "SPEAKER":
      return self.slot("PER" if r < 0.6 else "ORG")
    if kind == "ORG":
      if r < 0.45:
        stem, u = self._name(self.lex.org_stem)
        return [stem, self._choice(_ORG_SUFFIX)], "ORG", u
      if r < 0.6:
        stem, u = self._name(self.lex.org_stem)
        return [stem], "ORG", u
      if r < 0.75:
        c, u = self._name(self.lex.country)
        return [self._choice(("Bank", "University", "Council")), "of", c], "ORG", u
      if r < 0.9:
        c, u = self._name(self.lex.city)
        return [c, self._choice(_CLUB_SUFFIX)], "ORG", u
      c, u = self._name(self.lex.country)
      return [nationality(c), "National", "Party"], "ORG", u
    if kind in ("LOC", "CITY", "TEAM"):
      if kind == "LOC" and r < 0.3:
        c, u = self._name(self.lex.country)
        return [c], "LOC", u
      c, u = self._name(self.lex.city)
      if kind == "LOC" and r > 0.85:
        return ["New", c], "LOC", u
      return [c], "ORG" if kind == "TEAM" else "LOC", u
    if kind == "AMBLOC":
      return [self._choice(AMBIGUOUS_PLACES)], "LOC", False
    if kind == "NAT":
      c, u = self._name(self.lex.country)
      return [nationality(c)], "MISC", u
    if kind == "EVENT":
      if r < 0.2:
        return ["World", "Cup"], "MISC", False
      c, u = self._name(self.lex.city)
      return [c] + self._choice(_EVENT_SUFFIX).split(), "MISC", u
    if kind == "NUM":
      return [str(int(self.rng.integers(1, 100)))], None, False
    if kind == "SCORE":
      return [f"{self.rng.integers(0, 5)}-{self.rng.integers(0, 5)}"], None, False
    if kind == "DAY":
      return [self._choice(_DAYS)], None, False
    if kind == "MONTH":
      return [self._choice(_MONTHS)], None, False
    if kind == "YEAR":
      return [str(int(self.rng.integers(1980, 2020)))], None, False
    raise ValueError(f"unknown template slot {{{kind}}}")


def generate_sentence(template: str, filler: _Filler) -> tuple[list[str], list[str], list[bool]]:
  """One sentence of ``template``: tokens, IOB2 tags, unseen flags."""
  tokens, tags, unseen = [], [], []
  for word in template.split():
    if word.startswith("{") and word.endswith("}") and len(word) > 2:
      toks, typ, u = filler.slot(word[1:-1])
      tokens += toks
      tags += ["O"] * len(toks) if typ is None else [f"B-{typ}"] + [f"I-{typ}"] * (len(toks) - 1)
      unseen += [u and typ is not None] * len(toks)
    else:
      tokens.append(word)
      tags.append("O")
      unseen.append(False)
  return tokens, tags, unseen


def corrupt_labels(tags: list[str], rng: np.random.Generator, rate: float) -> list[str]:
  """Label noise: each entity (IOB2) is, with probability ``rate``, relabelled as another type (half the time) or
  dropped to O."""
  out = list(tags)
  i = 0
  while i < len(out):
    if out[i].startswith("B-"):
      j = i + 1
      while j < len(out) and out[j] == "I-" + out[i][2:]:
        j += 1
      if rng.random() < rate:
        if rng.random() < 0.5:
          new = [t for t in ENTITY_TYPES if t != out[i][2:]][rng.integers(len(ENTITY_TYPES) - 1)]
          out[i:j] = [f"B-{new}"] + [f"I-{new}"] * (j - i - 1)
        else:
          out[i:j] = ["O"] * (j - i)
      i = j
    else:
      i += 1
  return out


def compose(rng: np.random.Generator) -> tuple[str, int]:
  """A sentence template: opening phrase, one or two clauses, full stop; and the first clause's index."""
  k = int(rng.integers(len(CLAUSES)))
  parts = [OPENINGS[rng.integers(len(OPENINGS))], CLAUSES[k]]
  if rng.random() < 0.4:
    parts += [JOINERS[rng.integers(len(JOINERS))], CLAUSES[rng.integers(len(CLAUSES))]]
  return " ".join(p for p in parts if p) + " .", k


def generate_split(config: GrammarNERConfig, split: str) -> list[dict]:
  """The sentences of one split as dicts ``{tokens, ner (tag strings), unseen, template}``."""
  from research.data import pipeline  # late import: pipeline imports this module
  pipeline.check_split(NAME, SPLITS, split)
  n = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}[split]
  rng = np.random.default_rng([config.seed, SPLITS.index(split)])
  filler = _Filler(build_lexicon(), rng, 0.0 if split == "train" else config.unseen_rate)
  out = []
  for _ in range(n):
    template, k = compose(rng)
    tokens, tags, unseen = generate_sentence(template, filler)
    tokens[0] = tokens[0][0].upper() + tokens[0][1:]
    if split == "train" and config.label_noise:
      tags = corrupt_labels(tags, rng, config.label_noise)
    out.append({"tokens": tokens, "ner": tags, "unseen": unseen, "template": k})
  return out


class GrammarNER(tfds.core.GeneratorBasedBuilder):
  """Template-grammar NER sentences with CoNLL-2003's tag set (see the module docstring)."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default, small."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Sequence(tfds.features.Text()),
            "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=list(NER_TAGS))),
            "unseen": tfds.features.Sequence(np.bool_),
            "template": np.int32,
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    for i, ex in enumerate(generate_split(self.builder_config, split)):
      yield f"{split}_{i}", ex


# ------------------------------------------------------------------------------------------------------ reading


def to_iob2(tags: Sequence[str]) -> list[str]:
  """IOB1 (or IOB2) -> IOB2: an ``I-X`` that does not continue an entity of type ``X`` becomes ``B-X`` (what
  conlleval reads it as)."""
  out = []
  prev = "O"
  for t in tags:
    if t.startswith("I-") and prev[2:] != t[2:]:
      t = "B-" + t[2:]
    out.append(t)
    prev = t
  return out


@dataclasses.dataclass
class Sentences:
  """A split in memory: per-sentence ``tokens`` and IOB2 ``tags`` (strings), optional per-token ``unseen``, and the
  dataset's tag names (``tag_names``, in its ClassLabel order)."""
  tokens: list[list[str]]
  tags: list[list[str]]
  unseen: list[np.ndarray] | None = None
  tag_names: tuple[str, ...] = NER_TAGS

  def __len__(self) -> int:
    return len(self.tokens)


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _register_conll2003() -> None:
  """Makes ``tfds.builder("conll2003")`` known (TFDS registers catalog datasets when their module is imported)."""
  try:
    from tensorflow_datasets.text import conll2003  # noqa: F401
  except ImportError:  # an older/newer TFDS layout: a prepared dataset is still read from its dataset_info.json
    pass


def resolve_split(splits: Sequence[str], split: str, name: str) -> str:
  """``split``, or ``dev`` for ``validation`` when the dataset names it so (TFDS conll2003)."""
  if split in splits:
    return split
  if split == "validation" and "dev" in splits:
    return "dev"
  raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(splits)}")


def load_split(name: str, split: str, data_dir: str | None = None, *, limit: int | None = None) -> Sentences:
  """A split of ``grammar_ner[/config]`` (built on first use) or any prepared TFDS NER dataset with ``tokens``
  (Sequence(Text)) and ``ner`` (Sequence(ClassLabel) of ``B-``/``I-``/``O`` tags) features, e.g. ``conll2003``.
  Empty sentences are skipped; tags are converted to IOB2 (:func:`to_iob2`). ``limit``: the first N sentences."""
  from research.data import pipeline
  if name.partition("/")[0] != NAME:
    _register_conll2003()
  info = pipeline.get_info(name, data_dir)
  missing = [k for k in ("tokens", "ner") if k not in info.features]
  if missing:
    raise ValueError(f"--dataset={name!r} has no {missing} feature(s) (it has {sorted(info.features)}); an NER "
                     f"dataset needs 'tokens' (Sequence(Text)) and 'ner' (Sequence(ClassLabel)) as TFDS conll2003")
  names = tuple(info.features["ner"].feature.names)
  bad = [t for t in names if t != "O" and t[:2] not in ("B-", "I-")]
  if bad:
    raise ValueError(f"--dataset={name!r}: 'ner' tags {bad} are not O / B-X / I-X")
  source = pipeline.get_source(name, resolve_split(tuple(info.splits), split, name), data_dir)
  n = len(source) if limit is None else min(limit, len(source))
  tokens, tags, unseen = [], [], []
  has_unseen = "unseen" in info.features
  for i in range(n):
    ex = source[i]
    toks = [_text(t) for t in np.asarray(ex["tokens"]).reshape(-1).tolist()]
    ids = np.asarray(ex["ner"]).reshape(-1)
    if len(toks) != len(ids):
      raise ValueError(f"--dataset={name!r} split {split!r} record {i}: {len(toks)} tokens but {len(ids)} ner tags")
    if not toks:
      continue
    if ids.min() < 0 or ids.max() >= len(names):
      raise ValueError(f"--dataset={name!r} split {split!r} record {i}: ner ids {ids.tolist()} outside the "
                       f"{len(names)} tag names")
    tokens.append(toks)
    tags.append(to_iob2([names[int(k)] for k in ids]))
    if has_unseen:
      unseen.append(np.asarray(ex["unseen"], bool).reshape(-1))
  return Sentences(tokens, tags, unseen if has_unseen else None, names)


# ------------------------------------------------------------------------------------------------------ encoding


def build_vocabularies(tokens: Sequence[Sequence[str]], *, min_word_count: int = 1, lowercase: bool = True):
  """``(word_vocab, char_vocab)`` (``research.data.text.Vocabulary``, ``<pad>`` = 0, ``<unk>`` = 1) of the training
  sentences: words (lowercased when ``lowercase``; capitalisation then reaches the model through the characters)
  seen ``min_word_count`` times or more, and every character."""
  from research.data.text import Vocabulary
  words = Vocabulary.build(([t.lower() if lowercase else t for t in s] for s in tokens), min_count=min_word_count)
  chars = Vocabulary.build((list(t) for s in tokens for t in s))
  return words, chars


def encode(sentences: Sentences, word_vocab, char_vocab, tag_names: Sequence[str], *, max_len: int,
           max_word_len: int, lowercase: bool = True) -> dict[str, np.ndarray]:
  """Padded arrays of a split: ``words [N, T]`` int32 (0 = padding, so ``words > 0`` is the token mask),
  ``chars [N, T, C]`` int32 (each word's first ``C = max_word_len`` characters), ``tags [N, T]`` int32 (indices
  into ``tag_names``), ``length [N]`` int32 and, when the split has it, ``unseen [N, T]`` bool. Sentences longer
  than ``T = max_len`` are truncated (their gold tags too)."""
  from research.data.text import pad_batch
  if max_len < 1 or max_word_len < 1:
    raise ValueError(f"max_len={max_len} and max_word_len={max_word_len} must be >= 1")
  index = {t: i for i, t in enumerate(tag_names)}
  n = len(sentences)
  words, _ = pad_batch([word_vocab.encode([t.lower() if lowercase else t for t in s]) for s in sentences.tokens],
                       max_len, word_vocab.pad_id)
  chars = np.full((n, max_len, max_word_len), char_vocab.pad_id, np.int32)
  tags = np.zeros((n, max_len), np.int32)
  for i, (toks, tg) in enumerate(zip(sentences.tokens, sentences.tags)):
    for j, tok in enumerate(toks[:max_len]):
      ids = char_vocab.encode(list(tok))[:max_word_len]
      chars[i, j, :len(ids)] = ids
    missing = sorted(set(tg) - set(index))
    if missing:
      raise ValueError(f"sentence {i}: tags {missing} are not in the tag set {list(tag_names)}")
    tags[i, :min(len(tg), max_len)] = [index[t] for t in tg[:max_len]]
  out = {"words": words, "chars": chars, "tags": tags,
         "length": np.asarray([min(len(s), max_len) for s in sentences.tokens], np.int32)}
  if sentences.unseen is not None:
    out["unseen"], _ = pad_batch([u.astype(np.int32) for u in sentences.unseen], max_len, 0)
    out["unseen"] = out["unseen"].astype(bool)
  return out
