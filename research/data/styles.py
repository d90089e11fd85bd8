"""``shapes_styles``: one random scene layout rendered in three domain styles, for exemplar-guided multi-domain
image-to-image translation (EDIT, issue 15 seed 000: "Exemplar-Domain aware Image-to-image Translation").

Each example is ONE layout (objects, classes, positions, occlusions) drawn by ``research.data.scenes_render``
(:func:`~research.data.scenes_render.render_scene` at 32x32 with at most :data:`MAX_OBJECTS` objects; only its
instance / semantic maps are used, not its image) and rendered in every domain of :data:`DOMAINS`:

* ``flat``: a plain neutral-grey background (grey level uniform in [200, 240], R = G = B) and every object filled
  with one flat saturated colour of :data:`PALETTE` (distinct colours within a layout, drawn per layout).
* ``sketch``: white background (255) and dark lines (grey level uniform in [0, 50]) on the object OUTLINES: the
  object pixels with a 4-neighbour of another instance id (background or another object; the image border does not
  draw a line). Interiors stay white. Outlines are 1 px wide.
* ``texture``: a 2x2-px checkerboard background of two neutral greys (levels ``a`` uniform in [60, 100] and
  ``a + b``, ``b`` uniform in [40, 70]) and every object filled with diagonal stripes of period 4 px in absolute
  image coordinates (``(i + j) mod 4 < 2``: the object's ``flat`` colour, else 45% of it).

Colours are paired: an object has the same hue in ``flat`` and ``texture``. The per-layout style parameters (grey
levels, line darkness) are drawn from a generator of their own (``scene_rng(seed + 1, index)``) so the three
renderings of a layout share everything but the style. No pixel noise. Backgrounds are neutral (chroma 0) and
object colours saturated (chroma >= 58 even in the dark stripes), so :func:`structure_mask` recovers the foreground
of ``flat`` and ``texture`` images and the outlines of ``sketch`` images exactly.

Features (``S`` = the config's image size, 32 by default):

* ``image_flat``, ``image_sketch``, ``image_texture``  Image uint8 [S, S, 3] (PNG): the same layout in each domain
  (paired; a translation model must train on unpaired data: see ``research.train.edit``).
* ``semantic``  Tensor uint8 [S, S]: 0 background, ``class + 1`` where an object of class ``class`` (index into
  ``scenes_render.SHAPE_NAMES``) is visible.
* ``layout_id``  int64: the example's index within its split (the layout is ``scene_rng(SEEDS[split], layout_id)``).

Configs (:data:`CONFIGS`): ``32`` (default: 3,000 train / 300 test layouts) and ``small`` (64 / 16, for tests).
Generated deterministically into ``data_dir`` as array_record on first use (:func:`builder`,
``research.data.get_source("shapes_styles/small", ...)``), read back with ``tfds.data_source``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from research.data import scenes_render as render
from research.data.shapes import _png  # PNG bytes of a uint8 array (fast compression)

NAME = "shapes_styles"
DOMAINS = ("flat", "sketch", "texture")
SPLITS = ("train", "test")
SEEDS = {"train": 20250301, "test": 20250302}
MAX_OBJECTS = 4
# Saturated object colours (the first eight of scenes_render.COLORS: red ... purple); chroma max - min >= 130.
PALETTE = render.COLORS[:8].astype(np.float32)
DARK_STRIPE = 0.45  # the dark stripes of `texture` objects: 45% of the object colour
CHROMA_THRESHOLD = 30.0  # structure_mask: foreground where max - min over RGB > this (0..255)
DARK_THRESHOLD = 128.0  # structure_mask: a sketch line where the mean over RGB < this


@dataclasses.dataclass
class ShapesStylesConfig(tfds.core.BuilderConfig):
  """``image_size``: H = W in px; ``num_train`` / ``num_test``: layouts per split."""
  image_size: int = 32
  num_train: int = 3000
  num_test: int = 300


CONFIGS: dict[str, ShapesStylesConfig] = {c.name: c for c in (
    ShapesStylesConfig(name="32", description="32x32, 3000 train / 300 test layouts.", num_train=3000,
                       num_test=300),
    ShapesStylesConfig(name="small", description="32x32, 64 train / 16 test layouts (tests, smoke runs).",
                       num_train=64, num_test=16),
)}


# ------------------------------------------------------------------------------------------------ rendering


def outline(instance: np.ndarray) -> np.ndarray:
  """bool [H, W]: object pixels (``instance > 0``) with a 4-neighbour of another id (not across the border)."""
  inst = np.asarray(instance)
  edge = np.zeros(inst.shape, bool)
  edge[1:] |= inst[1:] != inst[:-1]
  edge[:-1] |= inst[:-1] != inst[1:]
  edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
  edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
  return edge & (inst > 0)


def render_layout(seed: int, index: int, image_size: int = 32) -> dict[str, np.ndarray]:
  """Layout ``index`` of a split with ``seed`` in every domain: ``{'image_<domain>': uint8 [S, S, 3],
  'semantic': uint8 [S, S], 'instance': uint8 [S, S]}`` (see the module docstring); deterministic."""
  scene = render.render_scene(render.scene_rng(seed, index), image_size, max_objects=MAX_OBJECTS)
  rng = render.scene_rng(seed + 1, index)  # the style parameters: independent of the layout's generator
  n = len(scene.labels)
  colors = PALETTE[rng.permutation(len(PALETTE))[:n]]  # distinct colours within the layout
  flat_bg = float(rng.uniform(200, 240))
  line = float(rng.uniform(0, 50))
  tex_a = float(rng.uniform(60, 100))
  tex_b = tex_a + float(rng.uniform(40, 70))
  inst = scene.instance.astype(np.int64)
  fg = inst > 0
  lut = np.concatenate([np.zeros((1, 3), np.float32), colors], 0)  # instance id -> colour
  obj = lut[inst]  # [S, S, 3]
  ii, jj = np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij")

  flat = np.where(fg[..., None], obj, flat_bg)
  sketch = np.where(outline(inst)[..., None], line, 255.0) * np.ones((1, 1, 3), np.float32)
  checker = ((ii // 2 + jj // 2) % 2).astype(np.float32)[..., None]
  stripes = (((ii + jj) % 4) < 2)[..., None]
  texture = np.where(fg[..., None], np.where(stripes, obj, DARK_STRIPE * obj), tex_a + (tex_b - tex_a) * checker)
  to_u8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
  return {"image_flat": to_u8(flat), "image_sketch": to_u8(sketch), "image_texture": to_u8(texture),
          "semantic": scene.semantic.astype(np.uint8), "instance": scene.instance.astype(np.uint8)}


def structure_mask(images: np.ndarray, domain: str) -> np.ndarray:
  """The structure visible in images of ``domain``: bool [..., S, S] from uint8 [..., S, S, 3] (0..255) or float
  images in [-1, 1]. ``flat`` / ``texture``: the foreground (chroma = max - min over RGB > CHROMA_THRESHOLD; equals
  ``semantic > 0`` on the dataset's renderings); ``sketch``: the outline pixels (mean over RGB < DARK_THRESHOLD)."""
  _check_domain(domain)
  x = np.asarray(images)
  x = x.astype(np.float32) if x.dtype == np.uint8 else (x.astype(np.float32) + 1.0) * 127.5
  if domain == "sketch":
    return x.mean(-1) < DARK_THRESHOLD
  return (x.max(-1) - x.min(-1)) > CHROMA_THRESHOLD


# ------------------------------------------------------------------------------------------------ the builder


class ShapesStyles(tfds.core.GeneratorBasedBuilder):
  """One scene layout in three paired domain styles (flat, sketch, texture), see the module docstring."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: domains flat / sketch / texture; configs 32 (3000/300), small (64/16)."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_BUILDER_CONFIG_NAME = "32"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    images = {f"image_{d}": tfds.features.Image(shape=(s, s, 3), encoding_format="png") for d in DOMAINS}
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            **images,
            "semantic": tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
            "layout_id": np.int64,
        }),
        homepage="https://example.invalid/research/shapes_styles",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train), "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split: str, num: int):
    s = self.builder_config.image_size
    for i in range(num):
      r = render_layout(SEEDS[split], i, s)
      yield i, {**{f"image_{d}": _png(r[f"image_{d}"]) for d in DOMAINS}, "semantic": r["semantic"], "layout_id": i}


def _check_domain(domain: str) -> str:
  if domain not in DOMAINS:
    raise ValueError(f"domain={domain!r}; shapes_styles has the domains {list(DOMAINS)}")
  return domain


def _check_split(split: str) -> str:
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.check_split(NAME, SPLITS, split)


def builder(config: str = "32", data_dir: str | None = None) -> ShapesStyles:
  """The builder of ``config``, generated into ``data_dir`` on first use (array_record; ~5 s for ``32``)."""
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.config_builder(ShapesStyles, NAME, CONFIGS, config, data_dir)


def load_arrays(split: str, data_dir: str | None = None, config: str = "32", *,
                domains: Sequence[str] = DOMAINS) -> dict[str, np.ndarray]:
  """A whole split in ``layout_id`` order: ``images`` uint8 [N, D, S, S, 3] (domains in the order of ``domains``),
  ``semantic`` uint8 [N, S, S], ``layout_id`` int64 [N]."""
  _check_split(split)
  for d in domains:
    _check_domain(d)
  source = builder(config, data_dir).as_data_source(split=split)
  try:  # batched random access (array_record), else one record at a time
    raw = source.__getitems__(list(range(len(source))))
  except (AttributeError, TypeError):
    raw = [source[i] for i in range(len(source))]
  rows = sorted(raw, key=lambda r: int(r["layout_id"]))
  s = CONFIGS[config].image_size
  out: dict[str, Any] = {
      "images": np.stack([np.stack([np.asarray(r[f"image_{d}"], np.uint8).reshape(s, s, 3) for d in domains])
                          for r in rows]),
      "semantic": np.stack([np.asarray(r["semantic"], np.uint8).reshape(s, s) for r in rows]),
      "layout_id": np.asarray([int(r["layout_id"]) for r in rows], np.int64),
  }
  return out
