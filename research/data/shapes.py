"""``shapes``: the offline, procedurally drawn CIFAR-100-like dataset as a real TFDS builder.

Features match CIFAR-100 (``image`` uint8 [32,32,3] PNG-encoded, ``label`` 100 fine classes,
``coarse_label`` 20 superclasses); the hierarchy fine -> coarse -> group is documented in
``research.data.shapes_render``. Generated deterministically (seeded) into ``data_dir`` as array_record
on first use, in a few seconds, and read back with ``tfds.data_source`` (no TensorFlow).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from research.data import shapes_render as render

TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 50
_SEEDS = {"train": 20190101, "test": 20190102}


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes: 100 fine classes in 20 families in 5 groups (see shapes_render)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 300 train / 50 test images per fine class."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(render.FINE_NAMES)),
            "coarse_label": tfds.features.ClassLabel(names=list(render.COARSE_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage="https://example.invalid/research/shapes",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {
        "train": self._generate_examples("train", TRAIN_PER_CLASS),
        "test": self._generate_examples("test", TEST_PER_CLASS),
    }

  def _generate_examples(self, split: str, per_class: int):
    images, labels = render.render_split(per_class, _SEEDS[split])
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {
          "image": _png(image),
          "label": int(label),
          "coarse_label": int(render.FINE_TO_COARSE[label]),
      }
