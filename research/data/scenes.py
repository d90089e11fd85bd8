"""``shapes_scenes``: the offline detection / instance / semantic segmentation dataset as a real TFDS builder.

Scenes of 1-12 shapes (12 classes, :data:`CLASS_NAMES`) on textured backgrounds, rendered by
``research.data.scenes_render`` (see its docstring for the generative process). Generated deterministically
(seeded per split and image) into ``data_dir`` as array_record on first use (``research.data.get_source``), in
well under a minute, and read back with ``tfds.data_source`` (no TensorFlow).

Configs: ``shapes_scenes/128`` (the default: 128x128 RGB, :data:`NUM_TRAIN` train / :data:`NUM_VALIDATION`
validation images). Other sizes: ``ShapesScenes(config=ShapesScenesConfig(name="64", image_size=64))``.

Features (``H = W = image_size``), the layout of TFDS ``coco/2017`` plus masks and dense maps:

* ``image``        Image uint8 [H, W, 3] (PNG);  ``image/id``: int64, 1..N within a split.
* ``objects``      Sequence of (one entry per object, drawing order = back to front):

  - ``bbox``       BBoxFeature, normalised ``[ymin, xmin, ymax, xmax]`` of the VISIBLE mask (pixel edges);
  - ``label``      ClassLabel(names=CLASS_NAMES);
  - ``area``       int64, visible pixels;
  - ``is_crowd``   bool (always False);
  - ``id``         int64 annotation id, unique within the split, 1..M;
  - ``mask``       Image uint8 [H, W, 1] (PNG), the visible mask, 0/1.

* ``semantic``     Image uint8 [H, W, 1]: 0 background, ``label + 1`` where an object is visible.
* ``instance``     Image uint8 [H, W, 1]: 0 background, ``k + 1`` where object ``k`` of ``objects`` is visible
  (with ``semantic`` this is a panoptic map; masks are pairwise disjoint).
* ``description``  Text: JSON list, one dict per object in ``objects`` order:
  ``{"class": "disc", "color": "red", "size": "small", "x": 0.31, "y": 0.7}`` with ``class`` in CLASS_NAMES,
  ``color`` in COLOR_NAMES, ``size`` in ``("small", "medium", "large")`` (nominal diameter < 20, < 48, >= 48 px at
  128 px, scaled with the image), ``x``/``y`` the centre of the visible box normalised to [0, 1] (x to the right,
  y down, 3 decimals). ``tfds.data_source`` decodes it as bytes (``json.loads`` takes them as they are).

Decoded records (``tfds.data_source``) hold ``objects`` as a dict of per-object LISTS (empty lists for no
objects); :func:`to_detection_example` turns them (or TFDS ``coco/2017`` records) into the shared detection
example format.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from research.data import scenes_render as render
from research.data import transforms
from research.data.shapes import _png  # PNG bytes of a uint8 array (fast compression)

CLASS_NAMES: tuple[str, ...] = render.SHAPE_NAMES
NUM_CLASSES = len(CLASS_NAMES)
COLOR_NAMES: tuple[str, ...] = render.COLOR_NAMES
NUM_TRAIN = 5000
NUM_VALIDATION = 500
_SEEDS = {"train": 20240101, "validation": 20240102}


@dataclasses.dataclass
class ShapesScenesConfig(tfds.core.BuilderConfig):
  """``image_size``: H = W in px. ``num_train``/``num_validation``: split sizes (None: NUM_TRAIN/NUM_VALIDATION
  at build time)."""
  image_size: int = render.DEFAULT_IMAGE_SIZE
  num_train: int | None = None
  num_validation: int | None = None


class ShapesScenes(tfds.core.GeneratorBasedBuilder):
  """Procedural detection scenes: 12 shape classes, boxes, instance masks, semantic/instance maps, descriptions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 128x128, 5000 train / 500 validation scenes."}
  BUILDER_CONFIGS = [ShapesScenesConfig(name="128", description="128x128 RGB scenes.", image_size=128)]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "area": np.int64,
                "is_crowd": np.bool_,
                "id": np.int64,
                "mask": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
            }),
            "semantic": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
            "instance": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
            "description": tfds.features.Text(),
        }),
        homepage="https://example.invalid/research/shapes_scenes",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.num_train or NUM_TRAIN),
        "validation": self._generate_examples("validation", config.num_validation or NUM_VALIDATION),
    }

  def _generate_examples(self, split: str, num_images: int):
    size = self.builder_config.image_size
    next_id = 1
    for i in range(num_images):
      scene = render.render_scene(render.scene_rng(_SEEDS[split], i), size)
      yield i, scene_record(scene, image_id=i + 1, first_annotation_id=next_id)
      next_id += len(scene.labels)


def scene_record(scene: render.Scene, *, image_id: int, first_annotation_id: int) -> dict[str, Any]:
  """The TFDS example (encoded, PNG bytes) of one rendered scene."""
  h, w = scene.instance.shape
  n = len(scene.labels)
  boxes = transforms.boxes_from_masks(scene.masks)
  bbox = transforms.boxes_to_tfds(boxes, h, w)
  return {
      "image": _png(scene.image),
      "image/id": image_id,
      "objects": {
          "bbox": [tfds.features.BBox(*map(float, b)) for b in bbox],
          "label": [int(l) for l in scene.labels],
          "area": [int(a) for a in scene.masks.reshape(n, -1).sum(axis=1)],
          "is_crowd": [False] * n,
          "id": list(range(first_annotation_id, first_annotation_id + n)),
          "mask": [_png(m) for m in scene.masks],
      },
      "semantic": _png(scene.semantic),
      "instance": _png(scene.instance),
      "description": json.dumps(render.describe(scene)),
  }


def _objects(raw: Mapping[str, Any]) -> dict[str, Any]:
  """Per-object features of a decoded record: nested ``raw['objects'][k]`` or flattened ``raw['objects/k']``."""
  if isinstance(raw.get("objects"), Mapping):
    return dict(raw["objects"])
  return {k[len("objects/"):]: v for k, v in raw.items() if k.startswith("objects/")}


def to_detection_example(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """One decoded TFDS record (``shapes_scenes``, or ``coco/2017`` without masks) -> the shared detection example.

  Output (``N`` objects; ``N = 0`` gives empty leading axes):

  * ``image``     uint8 [H, W, 3]          * ``image_id``  int64 scalar (``image/id``)
  * ``boxes``     float32 [N, 4] absolute ``(x1, y1, x2, y2)`` px (frame of ``research.data.transforms``)
  * ``labels``    int32 [N], 0-based contiguous class index
  * ``masks``     uint8 [N, H, W] 0/1 -- only when the record has ``objects/mask``
  * ``is_crowd``  bool [N]                 * ``area``      float32 [N]
  * ``semantic``  uint8 [H, W] -- only when the record has ``semantic``

  ``objects`` may be nested (``tfds.data_source`` gives a dict of per-object lists) or flattened
  (``objects/bbox``, ...). Without ``area`` the mask area (else the box area) is used.
  """
  image = np.asarray(raw["image"], np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  h, w = image.shape[:2]
  objects = _objects(raw)
  boxes = transforms.boxes_from_tfds(np.asarray(objects.get("bbox", []), np.float32).reshape(-1, 4), h, w)
  n = boxes.shape[0]
  labels = np.asarray(objects.get("label", []), np.int64).reshape(-1).astype(np.int32)
  is_crowd = np.asarray(objects.get("is_crowd", np.zeros(n, bool))).reshape(-1).astype(bool)
  out = {"image": image, "image_id": np.int64(raw.get("image/id", 0)), "boxes": boxes.astype(np.float32),
         "labels": labels, "is_crowd": is_crowd}
  if "mask" in objects:
    masks = np.asarray(objects["mask"])
    masks = (masks.reshape(n, h, w) > 0).astype(np.uint8) if n else np.zeros((0, h, w), np.uint8)
    out["masks"] = masks
  if "area" in objects:
    area = np.asarray(objects["area"], np.float32).reshape(-1)
  elif "masks" in out:
    area = out["masks"].reshape(n, -1).sum(axis=1).astype(np.float32)
  else:
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)
  out["area"] = area
  for k in ("labels", "is_crowd", "area"):
    if out[k].shape != (n,):
      raise ValueError(f"to_detection_example: {n} boxes but {k!r} has shape {out[k].shape}")
  if "semantic" in raw:
    out["semantic"] = np.asarray(raw["semantic"], np.uint8).reshape(h, w)
  return out
