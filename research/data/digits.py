"""``digits``: scikit-learn's real handwritten digits (UCI optdigits test set) as an offline TFDS builder.

1,797 real 8x8 grey-level digits (43 writers; each pixel counts the ink in a 4x4 block of a 32x32 bitmap, 0..16),
shipped inside scikit-learn as ``sklearn/datasets/data/digits.csv.gz`` and read with
``sklearn.datasets.load_digits()``: a small real image dataset that needs no download, for the generative models
(GAN / VAE samples, their quality metrics) and quick classification checks. Generated deterministically into
``data_dir`` as array_record on first use (:func:`get_source`, ``research.data.get_spec("digits", DIR)``), read back
with ``tfds.data_source`` (no TensorFlow).

Pixels: ``round(v * 255 / 16)`` of the 0..16 count ``v`` (``np.round``: the one half-way value, 8 -> 127.5, rounds
to 128), so 0 is background and 255 full ink.

Configs (:data:`CONFIGS`; ``Digits(config="16")``, ``get_spec("digits/16", DIR)``):

* ``8`` (default): the native 8x8 images.
* ``16``, ``32``: the 0..255 8x8 image resized with PIL's bilinear filter (``Image.resize((S, S),
  Image.BILINEAR)``: for upsampling, interpolation between the 4 nearest pixel centres with half-pixel alignment
  and edge pixels repeated, i.e. ``jax.image.resize(..., "linear")`` up to rounding). Bilinear rather than nearest
  (whose 2x2 / 4x4 pixel blocks a generator would have to learn to copy) or bicubic (which overshoots: rings around
  strokes, clipped to 0..255): smooth strokes whose values stay within the range of the neighbouring pixels. The
  resized images hold no detail beyond the 8x8 ones; they exist for nets (DCGAN-style generators, the 32x32 models)
  that want a larger input.

Features (``S`` = the config's image size):

* ``image``  Image uint8 [S, S, 1] (PNG), 0 = background
* ``label``  ClassLabel, 10 names ``"0"`` .. ``"9"``
* ``index``  int64: the row in ``sklearn.datasets.load_digits()`` (the same digit in every config)

Splits (the same rows in every config): ``test`` holds :data:`TEST_PER_CLASS` = 30 digits of each class (300),
``train`` the other 1,497 (174-183 per class before the split). Stratified and seeded: for each class in turn the
rows of that class are ordered by ``argsort(rng.random(n))`` with ``rng = np.random.default_rng(SPLIT_SEED)``,
``SPLIT_SEED = 19980701`` (the date optdigits entered the UCI repository), and the first 30 go to ``test``
(:func:`split_indices`). ``Generator.random`` of PCG64 is a stable stream, so the split is the same on every
machine and NumPy version.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from research.data.shapes import _png  # PNG bytes of a uint8 array (fast compression)

NAME = "digits"
NUM_CLASSES = 10
NUM_DIGITS = 1797
TEST_PER_CLASS = 30
SPLIT_SEED = 19980701
SPLITS = ("train", "test")
CLASS_NAMES = tuple(str(c) for c in range(NUM_CLASSES))
_INSTALL = "the digits dataset ships inside scikit-learn: pip install 'research[examples]'"


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  """One image size (``image_size`` x ``image_size``)."""
  image_size: int = 8


CONFIGS: dict[str, DigitsConfig] = {c.name: c for c in (
    DigitsConfig(name="8", image_size=8, description="The native 8x8 images (0..16 scaled to 0..255)."),
    DigitsConfig(name="16", image_size=16, description="8x8 images resized to 16x16 with PIL bilinear."),
    DigitsConfig(name="32", image_size=32, description="8x8 images resized to 32x32 with PIL bilinear."),
)}


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 [1797, 8, 8] 0..255, labels int64 [1797])`` in ``load_digits()`` row order (module docstring:
  ``round(v * 255 / 16)``). ImportError naming the fix when scikit-learn is missing."""
  try:
    from sklearn.datasets import load_digits
  except ImportError:
    raise ImportError(_INSTALL) from None
  d = load_digits()
  images = np.round(np.asarray(d.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)
  labels = np.asarray(d.target, np.int64)
  if images.shape != (NUM_DIGITS, 8, 8):
    raise ValueError(f"load_digits() returned images of shape {images.shape}, expected ({NUM_DIGITS}, 8, 8): "
                     f"an unexpected scikit-learn build; {_INSTALL}")
  return images, labels


def split_indices(split: str, labels: np.ndarray) -> np.ndarray:
  """int64 [N]: the ``load_digits()`` rows of ``split`` in increasing order (the seeded stratified split of the
  module docstring; ``labels`` int [1797] are ``load_digits().target``)."""
  _check_split(split)
  labels = np.asarray(labels)
  rng = np.random.default_rng(SPLIT_SEED)
  test = []
  for c in range(NUM_CLASSES):
    rows = np.flatnonzero(labels == c)
    if len(rows) <= TEST_PER_CLASS:
      raise ValueError(f"split_indices: class {c} has {len(rows)} digits, needs more than {TEST_PER_CLASS}")
    test.append(rows[np.argsort(rng.random(len(rows)), kind="stable")[:TEST_PER_CLASS]])
  test = np.sort(np.concatenate(test))
  if split == "test":
    return test.astype(np.int64)
  return np.setdiff1d(np.arange(len(labels)), test).astype(np.int64)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [8, 8] -> uint8 [size, size] with PIL bilinear (the identity for size 8); see the module docstring."""
  image = np.asarray(image, np.uint8)
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.uint8)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1,797 real handwritten 8x8 digits at 8, 16 or 32 pixels (see the module docstring)."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs 8, 16, 32; 1497 train / 300 test (30 per class)."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_BUILDER_CONFIG_NAME = "8"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data ships inside scikit-learn
    images, labels = load_sklearn_digits()
    return {split: self._generate_examples(images, labels, split_indices(split, labels)) for split in SPLITS}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
    s = self.builder_config.image_size
    for i in rows:
      yield int(i), {"image": _png(resize(images[i], s)), "label": int(labels[i]), "index": int(i)}


def _check_split(split: str) -> str:
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.check_split(NAME, SPLITS, split)


def builder(config: str = "8", data_dir: str | None = None) -> Digits:
  """The builder of ``config``, generated into ``data_dir`` on first use (array_record, ~1 s; with several JAX
  processes process 0 builds while the others wait, so ``data_dir`` must be shared)."""
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.config_builder(Digits, NAME, CONFIGS, config, data_dir, hint=" (the image size)")


def get_source(split: str, data_dir: str | None = None, config: str = "8"):
  """Random-access source of decoded ``digits/<config>`` records of ``split`` (built on first use): dicts with
  ``image`` uint8 [S, S, 1], ``label`` and ``index`` ints."""
  _check_split(split)
  return builder(config, data_dir).as_data_source(split=split)


def load_arrays(split: str, data_dir: str | None = None, config: str = "8", *,
                keys: Sequence[str] = ("image", "label")) -> dict[str, np.ndarray]:
  """A whole split in ``index`` order as stacked arrays: ``image`` uint8 [N, S, S, 1], ``label`` int32 [N] (and
  ``index`` int64 [N] if asked for in ``keys``)."""
  unknown = [k for k in keys if k not in ("image", "label", "index")]
  if unknown:
    raise ValueError(f"load_arrays: unknown keys {unknown}; choose from ['image', 'index', 'label']")
  source = get_source(split, data_dir, config)
  try:  # batched random access (array_record), else one record at a time (e.g. tfds.testing.mock_data)
    raw = source.__getitems__(list(range(len(source))))
  except (AttributeError, TypeError):
    raw = [source[i] for i in range(len(source))]
  rows = sorted(raw, key=lambda r: int(r["index"]))  # load_digits order, not TFDS's shuffled key order
  s = CONFIGS[config].image_size
  out: dict[str, Any] = {}
  if "image" in keys:
    out["image"] = np.stack([np.asarray(r["image"], np.uint8).reshape(s, s, 1) for r in rows])
  if "label" in keys:
    out["label"] = np.asarray([int(r["label"]) for r in rows], np.int32)
  if "index" in keys:
    out["index"] = np.asarray([int(r["index"]) for r in rows], np.int64)
  return out
