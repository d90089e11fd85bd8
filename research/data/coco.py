"""COCO-format I/O: export detection examples as COCO JSON, read the official COCO layout, write a tiny COCO.

The shared detection example (produced by ``research.data.scenes.to_detection_example`` and by
:class:`CocoJsonSource`):

* ``image``     uint8 [H, W, 3];                    ``image_id`` int64 scalar
* ``boxes``     float32 [N, 4] absolute ``(x1, y1, x2, y2)`` px (the frame of ``research.data.transforms``: pixel
  ``(i, j)`` covers ``[j, j+1) x [i, i+1)``; it is also COCO's: ``x1 = bbox[0]``, ``x2 = bbox[0] + bbox[2]``)
* ``labels``    int32 [N], 0-based contiguous class index
* ``masks``     uint8 [N, H, W] 0/1 (only when the data has masks)
* ``is_crowd``  bool [N];                            ``area`` float32 [N]
* ``semantic``  uint8 [H, W] (only when the data has it)

API:

* :func:`to_coco_json` -- detection examples -> a COCO annotation dict (RLE segmentations when masks are present).
* :func:`export_split` -- the COCO JSON of a split of ``shapes_scenes`` (any dataset of ``research.data``).
* :class:`CocoJsonSource` -- random-access (grain) source over ``root/annotations/instances_{split}2017.json`` +
  ``root/{split}2017/<file_name>``; ``research.data.get_source("coco_json", split, data_dir=root)`` returns one.
* :func:`write_tiny_coco` -- a tiny dataset in that layout (polygon, compressed-RLE and crowd uncompressed-RLE
  segmentations, gapped category ids, an image without annotations) for tests and smoke runs.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

SPLITS = {"train": "train", "val": "val", "validation": "val"}


def _rle_encode(masks: np.ndarray) -> list[dict]:
  """``[N, H, W]`` 0/1 masks -> compressed RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
  from pycocotools import mask as mask_utils
  if len(masks) == 0:
    return []
  rles = mask_utils.encode(np.asfortranarray(np.transpose(np.asarray(masks) > 0, (1, 2, 0)).astype(np.uint8)))
  return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def to_coco_json(examples: Iterable[Mapping[str, Any]], class_names: Sequence[str], *,
                 category_ids: Sequence[int] | None = None) -> dict:
  """COCO annotation dict of detection examples (the shared format; see the module docstring).

  ``images``: ``id`` (= ``image_id``, must be unique), ``width``, ``height``, ``file_name`` (``%012d.png``).
  ``annotations``: ``id`` (1, 2, ... in order), ``image_id``, ``category_id`` (``category_ids[label]``, default
  ``label + 1``), ``bbox`` ``[x, y, w, h]`` from ``boxes``, ``area`` (the example's ``area``; else the mask or box
  area), ``iscrowd``, and ``segmentation`` as compressed RLE (``counts`` a str) when the example has ``masks``.
  ``categories``: ``{"id", "name", "supercategory": "object"}`` per class.
  """
  class_names = list(class_names)
  if category_ids is None:
    category_ids = list(range(1, len(class_names) + 1))
  category_ids = [int(c) for c in category_ids]
  if len(category_ids) != len(class_names) or len(set(category_ids)) != len(category_ids):
    raise ValueError(f"category_ids must hold {len(class_names)} distinct ids (one per class), got {category_ids}")
  images, annotations, seen = [], [], set()
  for ex in examples:
    image_id = int(ex["image_id"])
    if image_id in seen:
      raise ValueError(f"to_coco_json: image_id {image_id} appears twice")
    seen.add(image_id)
    h, w = np.shape(ex["image"])[:2]
    images.append({"id": image_id, "width": int(w), "height": int(h), "file_name": f"{image_id:012d}.png"})
    boxes = np.asarray(ex["boxes"], np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.asarray(ex["labels"]).reshape(-1)
    if labels.shape != (n,):
      raise ValueError(f"image {image_id}: {n} boxes but labels of shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
      raise ValueError(f"image {image_id}: labels {labels.tolist()} outside [0, {len(class_names)})")
    is_crowd = np.asarray(ex.get("is_crowd", np.zeros(n, bool))).reshape(-1)
    masks = ex.get("masks")
    rles = _rle_encode(masks) if masks is not None else None
    if "area" in ex:
      area = np.asarray(ex["area"], np.float64).reshape(-1)
    elif masks is not None:
      area = np.asarray(masks).reshape(n, -1).astype(bool).sum(axis=1).astype(np.float64)
    else:
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for k in range(n):
      x1, y1, x2, y2 = (float(v) for v in boxes[k])
      ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[int(labels[k])],
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area[k]), "iscrowd": int(bool(is_crowd[k]))}
      if rles is not None:
        ann["segmentation"] = rles[k]
      annotations.append(ann)
  categories = [{"id": c, "name": str(name), "supercategory": "object"}
                for c, name in zip(category_ids, class_names)]
  return {"info": {"description": "research.data.coco.to_coco_json"}, "images": images,
          "annotations": annotations, "categories": categories}


def _label_names(features) -> list[str]:
  """Class names of a detection dataset's features (``objects/label`` as in TFDS coco, or ``labels``)."""
  for path in (("objects", "label"), ("labels",)):
    f = features
    try:
      for key in path:
        f = f[key]
      f = getattr(f, "feature", f)  # a Sequence of ClassLabel
      return list(f.names)
    except (KeyError, AttributeError, TypeError):
      continue
  raise ValueError("cannot find the class names (an 'objects/label' or 'labels' ClassLabel feature)")


def export_split(name: str, split: str, data_dir: str | None, path: str | os.PathLike) -> str:
  """Writes the COCO JSON (:func:`to_coco_json`) of ``split`` of dataset ``name`` (e.g. ``shapes_scenes``, built on
  first use) to ``path`` atomically; returns ``path``. Only the annotation file is written, not the images."""
  from research import fileio
  from research.data import pipeline, scenes
  source = pipeline.get_source(name, split, data_dir)
  if isinstance(source, CocoJsonSource):
    class_names, category_ids = source.class_names, source.category_ids
  else:
    class_names, category_ids = _label_names(pipeline.get_info(name, data_dir).features), None

  def examples():
    for start in range(0, len(source), 64):
      for raw in pipeline._read(source, list(range(start, min(start + 64, len(source))))):
        yield raw if "boxes" in raw else scenes.to_detection_example(raw)

  coco_json = to_coco_json(examples(), class_names, category_ids=category_ids)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fileio.write_json_atomic(path, coco_json)
  return os.fspath(path)


def _load_coco(annotation_file: str):
  from pycocotools.coco import COCO
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
    return COCO(annotation_file)


class MissingAnnotationsError(ValueError, FileNotFoundError):
  """The COCO annotation file of a split is missing (a ``ValueError``: entry points report it in one line)."""


class CocoJsonSource:
  """Random-access source over the official COCO layout; items are shared detection examples.

  ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/<file_name>`` (JPEG or PNG, converted to
  RGB); ``split`` in ``{"train", "val"}`` (``"validation"`` means ``"val"``). Records are the images sorted by id
  (images without annotations included, ``N = 0``); an image's annotations are sorted by annotation id. Labels
  are the index of the category id in the sorted category ids (:attr:`category_ids` maps back; names in
  :attr:`class_names`). Masks are ``pycocotools`` ``annToMask`` of polygon / RLE / uncompressed-RLE
  segmentations (an annotation without a usable segmentation gets its box as mask). Only paths are stored: the
  annotation file is parsed on first use, in each process (pickling drops it), so grain workers can take it.
  """

  def __init__(self, root: str | os.PathLike, split: str, *, masks: bool = True):
    if split not in SPLITS:
      raise ValueError(f"CocoJsonSource: split={split!r}; choose one of {sorted(SPLITS)}")
    self.root = os.fspath(root)
    self.split = SPLITS[split]
    self.masks = masks
    self.annotation_file = os.path.join(self.root, "annotations", f"instances_{self.split}2017.json")
    self.image_dir = os.path.join(self.root, f"{self.split}2017")
    if not os.path.isfile(self.annotation_file):
      raise MissingAnnotationsError(
          f"no COCO annotations at {self.annotation_file}; expected the official layout "
          f"root/annotations/instances_{{train,val}}2017.json + root/{{train,val}}2017/ (--data_dir=root)")
    self._state = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_state"] = None
    return state

  def _load(self):
    if self._state is None:
      coco = _load_coco(self.annotation_file)
      category_ids = sorted(int(c) for c in coco.getCatIds())
      self._state = (coco, sorted(int(i) for i in coco.getImgIds()), category_ids,
                     {c: i for i, c in enumerate(category_ids)})
    return self._state

  @property
  def category_ids(self) -> list[int]:
    """Contiguous label -> COCO category id."""
    return list(self._load()[2])

  @property
  def class_names(self) -> list[str]:
    coco, _, category_ids, _ = self._load()
    return [coco.cats[c]["name"] for c in category_ids]

  def __len__(self) -> int:
    return len(self._load()[1])

  def __repr__(self) -> str:
    return f"CocoJsonSource(root={self.root!r}, split={self.split!r})"

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    coco, image_ids, _, label_of = self._load()
    image_id = image_ids[int(index)]
    info = coco.imgs[image_id]
    with Image.open(os.path.join(self.image_dir, info["file_name"])) as im:
      image = np.asarray(im.convert("RGB"))
    h, w = image.shape[:2]
    if (h, w) != (info["height"], info["width"]):
      raise ValueError(f"{info['file_name']}: image is {h}x{w} but the annotations say "
                       f"{info['height']}x{info['width']}")
    anns = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
    n = len(anns)
    xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(n, 4)
    out = {"image": image, "image_id": np.int64(image_id),
           "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
           "labels": np.array([label_of[int(a["category_id"])] for a in anns], np.int32).reshape(n),
           "is_crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(n),
           "area": np.array([a.get("area", b[2] * b[3]) for a, b in zip(anns, xywh)], np.float32).reshape(n)}
    if self.masks:
      out["masks"] = (np.stack([_ann_mask(coco, a, h, w) for a in anns]) if n
                      else np.zeros((0, h, w), np.uint8))
    return out


def _ann_mask(coco, ann: Mapping, h: int, w: int) -> np.ndarray:
  """uint8 [H, W] 0/1 mask of an annotation: ``annToMask``; degenerate polygons (< 3 points) are left out and
  an annotation with no usable segmentation gets its (rounded) box."""
  seg = ann.get("segmentation")
  if isinstance(seg, list):
    polygons = [p for p in seg if len(p) >= 6]
    if polygons:
      return coco.annToMask(dict(ann, segmentation=polygons)).astype(np.uint8)
  elif isinstance(seg, dict):
    return coco.annToMask(ann).astype(np.uint8)
  mask = np.zeros((h, w), np.uint8)
  x, y, bw, bh = ann["bbox"]
  mask[int(round(y)):int(round(y + bh)), int(round(x)):int(round(x + bw))] = 1
  return mask


def _run_polygons(mask: np.ndarray) -> list[list[float]]:
  """The mask as COCO polygons, one pixel-aligned rectangle per horizontal run (exact after rasterisation)."""
  polygons = []
  for y in range(mask.shape[0]):
    row = np.concatenate([[0], mask[y].astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(row))
    for x0, x1 in zip(edges[::2], edges[1::2]):
      polygons.append([float(v) for v in (x0, y, x1, y, x1, y + 1, x0, y + 1)])
  return polygons


def _uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO uncompressed RLE (as crowd annotations use): column-major run lengths, alternating 0s and 1s, starting
  with a (possibly empty) run of 0s."""
  flat = np.asarray(mask, np.uint8).ravel(order="F")
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  runs = [int(r) for r in np.diff(bounds)]
  if flat.size and flat[0]:
    runs = [0] + runs
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def write_tiny_coco(root: str | os.PathLike, *, num_images: int, image_size: int, seed: int) -> None:
  """A tiny COCO dataset in the official layout under ``root`` (``shapes_scenes`` scenes, PNG images).

  Each split (``train``, ``val``) has ``num_images`` images (ids unique across splits; train first). Categories:
  the ``shapes_scenes`` classes with GAPPED ids ``2 * label + 1`` (the contiguous label is the sorted-id
  index). Segmentations of non-crowd objects alternate between polygons (one pixel-aligned rectangle per mask
  run, exact after rasterisation) and compressed RLE; ``bbox`` is the mask's tight box, ``area`` its pixel count.
  The last image of each split has no annotations (background only) and, when the split has an object, the
  last object of its first image with one is a crowd annotation with an uncompressed-RLE segmentation.
  """
  from pycocotools import mask as mask_utils

  from research import fileio
  from research.data import scenes_render as render
  from research.data import transforms

  if num_images < 1:
    raise ValueError(f"write_tiny_coco: num_images must be >= 1, got {num_images}")
  root = os.fspath(root)
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  categories = [{"id": 2 * k + 1, "name": name, "supercategory": "shape"}
                for k, name in enumerate(render.SHAPE_NAMES)]
  image_id = 0
  for split_index, split in enumerate(("train", "val")):
    image_dir = os.path.join(root, f"{split}2017")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations, crowd_done = [], [], False
    for i in range(num_images):
      image_id += 1
      scene = render.render_scene(render.scene_rng(seed * 2 + split_index, i), image_size)
      image, masks, labels = scene.image, scene.masks, scene.labels
      if i == num_images - 1:  # an image with nothing on it
        rng = render.scene_rng(seed * 2 + split_index, 10**6 + i)
        image = render._background(rng, image_size, image_size)[0].astype(np.uint8)
        masks, labels = masks[:0], labels[:0]
      file_name = f"{image_id:012d}.png"
      Image.fromarray(image).save(os.path.join(image_dir, file_name), format="PNG")
      images.append({"id": image_id, "width": image_size, "height": image_size, "file_name": file_name})
      boxes = transforms.boxes_from_masks(masks)
      for k in range(len(labels)):
        crowd = not crowd_done and k == len(labels) - 1
        crowd_done |= crowd
        if crowd:
          segmentation = _uncompressed_rle(masks[k])
        elif len(annotations) % 2 == 0:
          segmentation = _run_polygons(masks[k])
        else:
          rle = mask_utils.encode(np.asfortranarray(masks[k]))
          segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        annotations.append({"id": len(annotations) + 1 + 100000 * split_index, "image_id": image_id,
                            "category_id": 2 * int(labels[k]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": float(masks[k].sum()), "iscrowd": int(crowd), "segmentation": segmentation})
    fileio.write_json_atomic(
        os.path.join(root, "annotations", f"instances_{split}2017.json"),
        {"info": {"description": f"research.data.coco.write_tiny_coco(seed={seed})"}, "licenses": [],
         "images": images, "annotations": annotations, "categories": categories})


def get_info(root: str | os.PathLike):
  """``research.data.DataInfo`` of the COCO layout under ``root``: the shared detection example's features
  (``labels`` a Sequence of ClassLabel with the category names) and the sizes of the splits present
  (``train``, ``validation``)."""
  import tensorflow_datasets as tfds

  from research.data import pipeline
  sizes, names = {}, None
  for split in ("train", "validation"):
    try:
      source = CocoJsonSource(root, split)
    except MissingAnnotationsError:
      continue
    sizes[split] = len(source)
    names = names or source.class_names
  if not sizes:
    raise ValueError(f"--dataset=coco_json: no COCO annotations under --data_dir={os.fspath(root)!r} "
                     f"(expected annotations/instances_{{train,val}}2017.json)")
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "image_id": tfds.features.Scalar(np.int64),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
      "masks": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8),
      "is_crowd": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      "area": tfds.features.Tensor(shape=(None,), dtype=np.float32),
  })
  dtypes = dict(features.np_dtype, labels=np.int32)
  return pipeline.DataInfo(name="coco_json", features=features, shapes=features.shape, dtypes=dtypes,
                           splits=sizes, eval_split="validation" if "validation" in sizes else None)
