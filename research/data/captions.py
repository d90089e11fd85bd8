"""``shapes_captions``: images of ``shapes_scenes`` with several English captions each, as a real TFDS builder.

The scenes are those of ``shapes_scenes`` (the same renderer, ``research.data.scenes_render``, and the same
:func:`~research.data.scenes_render.describe`), with fewer objects per image (``max_objects``, default 4) so that a
caption can name all of them; the captions come from a small template grammar over the scene description
(:func:`generate_captions`), deterministic given a seed. Generated into ``data_dir`` as array_record on first use
(``research.data.get_source("shapes_captions/64", split)``, :func:`load_split`; 5000 + 500 images at 64 px in
~20 s), read back with ``tfds.data_source`` (no TensorFlow).

Configs (:data:`CONFIGS`):

* ``64`` (default): 64x64 RGB, 1-4 objects, :data:`NUM_CAPTIONS` = 5 captions per image, 5000 train / 500
  validation images.
* ``small``: 32x32, 1-3 objects, 5 captions, 64 / 16 images (tests, smoke runs).

Features:

* ``image``        Image uint8 [H, W, 3] (PNG);  ``image/id``: int64, 1..N within a split.
* ``captions``     Sequence(Text): the image's ``num_captions`` reference captions (lower case, tokens separated
  by single spaces, the comma a token of its own: ``"a large red disc to the left of a small blue star"``).
* ``description``  Text: the JSON scene description of ``shapes_scenes`` (one ``{class, color, size, x, y}`` dict
  per object, drawing order).

The grammar (:func:`generate_captions`). Objects are ordered by SALIENCE: size word (large, medium, small), then
front to back (later in the drawing order first). Let ``o1, o2, o3`` be the most salient objects, ``n`` their
number, ``NP(o)`` the noun phrase ``"a [size] color class"`` (``an`` before a vowel), ``REL(a, b)`` the relation
of ``a`` to ``b`` from their centres (``|dx| >= |dy|``: ``"to the left of"`` / ``"to the right of"``, else
``"above"`` / ``"below"``; ``y`` grows downwards) and ``WHERE(o)`` the third of the image ``o`` lies in
(``"in the top left"``, ``"at the top"``, ..., ``"in the middle"``). The candidate captions, one per template:

1. count:         ``"there are three shapes in the picture , among them a red disc"`` (one object: ``"there is
                  one shape in the picture , a red disc"``)
2. list:          ``"a red disc , a blue star and a green square"`` (the 3 most salient, then
                  ``"and one more shape"`` / ``"and two more shapes"``)
3. relation:      ``"a large red disc to the left of a small blue star"`` (o1 REL o2; one object: ``NP WHERE``)
4. inverse:       ``"a small blue star to the right of a large red disc"`` (o2 REL o1; one object: ``"the only
                  shape is a red disc"``)
5. count + first: ``"three shapes , the biggest is a red disc"`` (``"one of them is"`` when o1 and o2 have the same
                  size word; one object: ``"a single red disc"``)
6. where:         ``"a red disc in the top left of the picture"`` (o1)
7. colours:       ``"the shapes are red , blue and green"`` (distinct colours in salience order; one object:
                  ``"the shape is red"``)
8. pair:          ``"an image of a red disc and a blue star"`` (o1 and o2; one object: ``"an image of a red disc"``)

Synonyms (``shapes``/``objects``, ``picture``/``image``, ``biggest``/``largest``, sizes dropped or kept) are drawn
per caption; ``num_captions`` distinct captions are drawn from the templates in a seeded random order (rejection of
duplicates). Every caption mentions only objects of the scene (the tests check it) and the true count, and all but
the colour template name the most salient object (a caption model cannot score by counting alone).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from research.data import scenes_render as render
from research.data.shapes import _png  # PNG bytes of a uint8 array (fast compression)

NAME = "shapes_captions"
NUM_CAPTIONS = 5
SPLITS = ("train", "validation")
_SEEDS = {"train": 20241601, "validation": 20241602}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")
_SIZE_RANK = {"large": 0, "medium": 1, "small": 2}
NUM_TEMPLATES = 8


@dataclasses.dataclass
class ShapesCaptionsConfig(tfds.core.BuilderConfig):
  """``image_size``: H = W px; ``max_objects``: 1..max objects per scene (before the visibility rule of the
  renderer removes hidden ones); ``num_captions``: captions per image; split sizes."""
  image_size: int = 64
  max_objects: int = 4
  num_captions: int = NUM_CAPTIONS
  num_train: int = 5000
  num_validation: int = 500


CONFIGS: dict[str, ShapesCaptionsConfig] = {c.name: c for c in (
    ShapesCaptionsConfig(name="64", description="64x64, 1-4 objects, 5 captions, 5000/500 images."),
    ShapesCaptionsConfig(name="small", description="32x32, 1-3 objects, 5 captions, 64/16 images (tests).",
                         image_size=32, max_objects=3, num_train=64, num_validation=16),
)}


# ------------------------------------------------------------------------------------------------- the grammar


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def salience_order(description: Sequence[Mapping[str, Any]]) -> list[int]:
  """Object indices, most salient first: size word (large > medium > small), then front to back."""
  n = len(description)
  return sorted(range(n), key=lambda k: (_SIZE_RANK[description[k]["size"]], -k))


def noun_phrase(obj: Mapping[str, Any], with_size: bool) -> str:
  """``"a [size] color class"`` with ``an`` before a vowel."""
  words = ([obj["size"]] if with_size else []) + [obj["color"], obj["class"]]
  return f"{_article(words[0])} {' '.join(words)}"


def relation(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
  """Where ``a`` lies relative to ``b``: the dominant axis of the centre difference (``y`` grows downwards)."""
  dx, dy = float(b["x"]) - float(a["x"]), float(b["y"]) - float(a["y"])
  if abs(dx) >= abs(dy):
    return "to the left of" if dx > 0 else "to the right of"
  return "above" if dy > 0 else "below"


def where(obj: Mapping[str, Any]) -> str:
  """The third of the image holding the object's centre: ``"in the top left"``, ``"at the top"``, ...,
  ``"in the middle"``."""
  col = 0 if obj["x"] < 1 / 3 else (2 if obj["x"] > 2 / 3 else 1)
  row = 0 if obj["y"] < 1 / 3 else (2 if obj["y"] > 2 / 3 else 1)
  vert, horiz = ("top", "", "bottom")[row], ("left", "", "right")[col]
  if vert and horiz:
    return f"in the {vert} {horiz}"
  if vert:
    return f"at the {vert}"
  if horiz:
    return f"on the {horiz}"
  return "in the middle"


def _count_phrase(n: int, noun: str) -> str:
  return f"{NUMBER_WORDS[n]} {noun}{'s' if n != 1 else ''}"


def _listing(items: Sequence[str]) -> str:
  """``a``, ``a and b``, ``a , b and c``."""
  if len(items) == 1:
    return items[0]
  return " , ".join(items[:-1]) + " and " + items[-1]


def _template(t: int, objs: list[Mapping[str, Any]], rng: np.random.Generator) -> str:
  n = len(objs)
  noun = "shape" if rng.random() < 0.5 else "object"
  picture = "picture" if rng.random() < 0.5 else "image"
  sized = rng.random() < 0.5
  o1 = objs[0]
  if t == 0:
    if n == 1:
      return f"there is one {noun} in the {picture} , {noun_phrase(o1, sized)}"
    return f"there are {_count_phrase(n, noun)} in the {picture} , among them {noun_phrase(o1, sized)}"
  if t == 1:
    head = [noun_phrase(o, sized) for o in objs[:3]]
    if n > 3:
      head.append(f"{NUMBER_WORDS[n - 3]} more {noun}{'s' if n - 3 > 1 else ''}")
    return _listing(head)
  if t == 2:
    if n == 1:
      return f"{noun_phrase(o1, sized)} {where(o1)}"
    return f"{noun_phrase(o1, sized)} {relation(o1, objs[1])} {noun_phrase(objs[1], sized)}"
  if t == 3:
    if n == 1:
      return f"the only {noun} is {noun_phrase(o1, sized)}"
    return f"{noun_phrase(objs[1], sized)} {relation(objs[1], o1)} {noun_phrase(o1, sized)}"
  if t == 4:
    if n == 1:
      return f"a single {o1['color']} {o1['class']}"
    if _SIZE_RANK[o1["size"]] < _SIZE_RANK[objs[1]["size"]]:
      big = "the biggest" if rng.random() < 0.5 else "the largest"
    else:  # a tie in size: no superlative
      big = "one of them"
    return f"{_count_phrase(n, noun)} , {big} is {noun_phrase(o1, False)}"
  if t == 5:
    return f"{noun_phrase(o1, sized)} {where(o1)} of the {picture}"
  if t == 6:
    colors = list(dict.fromkeys(o["color"] for o in objs))
    if n == 1:
      return f"the {noun} is {o1['color']}"
    return f"the {noun}s are {_listing(colors)}"
  if t == 7:
    return f"{_article(picture)} {picture} of " + " and ".join(noun_phrase(o, sized) for o in objs[:2])
  raise ValueError(f"template {t} out of range [0, {NUM_TEMPLATES})")


def generate_captions(description: Sequence[Mapping[str, Any]] | str | bytes, seed: int | Sequence[int],
                      num_captions: int = NUM_CAPTIONS) -> list[str]:
  """``num_captions`` distinct captions of a scene (module docstring grammar), deterministic in ``seed``.

  ``description``: the scene's object list (``shapes_scenes``'s JSON, as a string/bytes or parsed). Raises
  ``ValueError`` for an empty scene or when fewer than ``num_captions`` distinct captions exist."""
  if isinstance(description, (str, bytes)):
    description = json.loads(description)
  objs = [description[k] for k in salience_order(description)]
  if not objs:
    raise ValueError("generate_captions: the scene has no objects")
  if len(objs) >= len(NUMBER_WORDS):
    raise ValueError(f"generate_captions: {len(objs)} objects; at most {len(NUMBER_WORDS) - 1} can be counted")
  if not 1 <= num_captions <= NUM_TEMPLATES:
    raise ValueError(f"num_captions={num_captions} must lie in [1, {NUM_TEMPLATES}]")
  rng = np.random.default_rng(seed)
  out: list[str] = []
  for _ in range(8):  # rounds over the templates in fresh random orders; synonyms vary between rounds
    for t in rng.permutation(NUM_TEMPLATES):
      c = _template(int(t), objs, rng)
      if c not in out:
        out.append(c)
      if len(out) == num_captions:
        return out
  raise ValueError(f"generate_captions: only {len(out)} distinct captions for this scene, asked {num_captions}")


# ----------------------------------------------------------------------------------------------- the builder


class ShapesCaptions(tfds.core.GeneratorBasedBuilder):
  """``shapes_scenes`` images with template captions (see the module docstring)."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs 64 (5000/500) and small (64/16); 5 captions per image."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_BUILDER_CONFIG_NAME = "64"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "image/id": np.int64,
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "description": tfds.features.Text(),
        }),
        homepage="https://example.invalid/research/shapes_captions",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "validation": self._generate_examples("validation", c.num_validation)}

  def _generate_examples(self, split: str, num_images: int):
    c = self.builder_config
    for i in range(num_images):
      yield i, caption_record(split, i, c)


def caption_record(split: str, index: int, config: ShapesCaptionsConfig) -> dict[str, Any]:
  """The TFDS example (encoded) of image ``index`` of ``split``: scene ``scene_rng(seed, index)`` and captions
  seeded with ``(seed, index)``."""
  seed = _SEEDS[split]
  scene = render.render_scene(render.scene_rng(seed, index), config.image_size, max_objects=config.max_objects)
  desc = render.describe(scene)
  desc = [{k: (float(v) if k in ("x", "y") else v) for k, v in d.items()} for d in desc]
  return {"image": _png(scene.image), "image/id": index + 1,
          "captions": generate_captions(desc, (seed, index), config.num_captions),
          "description": json.dumps(desc)}


def _decode_text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def to_caption_example(raw: Mapping[str, Any]) -> dict[str, Any]:
  """A decoded record (``tfds.data_source``) -> ``{'image': uint8 [H, W, 3], 'image_id': int64, 'captions':
  list[str], 'description': list[dict]}``; works for any TFDS dataset with ``image`` and ``captions`` (Text
  sequence) features (``description``: ``[]`` when absent or not JSON)."""
  image = np.asarray(raw["image"], np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  try:
    desc = json.loads(_decode_text(raw["description"])) if "description" in raw else []
  except json.JSONDecodeError:  # a user dataset's free-text description: informational only
    desc = []
  return {"image": image, "image_id": np.int64(raw.get("image/id", 0)),
          "captions": [_decode_text(c) for c in raw["captions"]], "description": desc}


def builder(config: str = "64", data_dir: str | None = None) -> ShapesCaptions:
  """The builder of ``config``, generated into ``data_dir`` on first use (``pipeline.config_builder``)."""
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.config_builder(ShapesCaptions, NAME, CONFIGS, config, data_dir)


def load_split(split: str, data_dir: str | None = None, dataset: str = "shapes_captions/64", *,
               limit: int | None = None) -> dict[str, Any]:
  """A whole split of a captioning dataset, in ``image/id`` order: ``images`` uint8 [N, H, W, 3], ``image_ids``
  int64 [N], ``captions`` (N lists of str), ``descriptions`` (N object lists; empty without a ``description``
  feature); ``limit``: only the first N images. ``dataset``: ``shapes_captions/<config>`` (built on first use) or
  any TFDS dataset prepared in ``data_dir`` (array_record) with ``image`` and ``captions`` (Sequence of Text)
  features and all images of one size."""
  from research.data import pipeline  # late import: pipeline imports this module
  source = pipeline.get_source(dataset, split, data_dir)
  n = len(source)
  if n == 0:
    raise ValueError(f"dataset {dataset!r} split {split!r} is empty")
  first = source[0]
  missing = [k for k in ("image", "captions") if k not in first]
  if missing:
    raise ValueError(f"--dataset={dataset!r} has no {missing} feature(s): a captioning dataset needs 'image' and "
                     f"'captions' (Sequence of Text); it has {sorted(first)}")
  rows = sorted((to_caption_example(source[i]) for i in range(n)), key=lambda r: int(r["image_id"]))[:limit]
  shapes = {r["image"].shape for r in rows}
  if len(shapes) != 1:
    raise ValueError(f"--dataset={dataset!r} {split}: images of several sizes {sorted(shapes)[:3]}; resize them "
                     f"to one size first")
  return {"images": np.stack([r["image"] for r in rows]), "image_ids": np.array([r["image_id"] for r in rows]),
          "captions": [r["captions"] for r in rows], "descriptions": [r["description"] for r in rows]}
