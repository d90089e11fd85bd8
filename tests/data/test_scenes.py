"""``shapes_scenes``: the offline detection dataset (renderer, TFDS builder, ``to_detection_example``)."""

import json

import numpy as np
import pytest

from research import data
from research.data import pipeline, scenes
from research.data import scenes_render as render
from research.data import transforms as T

NUM_TRAIN, NUM_VALIDATION = 40, 10
S = 128


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  """A data_dir with a small ``shapes_scenes`` (40 train / 10 validation scenes), built by get_source."""
  d = str(tmp_path_factory.mktemp("shapes_scenes"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(scenes, "NUM_TRAIN", NUM_TRAIN)
    mp.setattr(scenes, "NUM_VALIDATION", NUM_VALIDATION)
    data.get_source("shapes_scenes", "train", d)  # builds both splits
  return d


@pytest.fixture(scope="module")
def train_records(scenes_dir):
  src = data.get_source("shapes_scenes", "train", scenes_dir)
  return src.__getitems__(list(range(len(src))))


def _flat(record):
  """The flattened layout: ``objects/bbox`` etc. as stacked arrays (as tf.data / TFDS numpy give them)."""
  out = {k: v for k, v in record.items() if k != "objects"}
  for k, v in record["objects"].items():
    out[f"objects/{k}"] = np.asarray(v)
  return out


def test_registered_with_default_config_and_split_sizes(scenes_dir):
  assert pipeline.PROCEDURAL["shapes_scenes"] is scenes.ShapesScenes
  assert scenes.ShapesScenes.BUILDER_CONFIGS[0].name == "128"
  assert (scenes.NUM_TRAIN, scenes.NUM_VALIDATION) == (5000, 500)  # the monkeypatch is gone
  info = data.get_info("shapes_scenes", scenes_dir)
  assert info.splits == {"train": NUM_TRAIN, "validation": NUM_VALIDATION} and info.eval_split == "validation"
  assert info.shapes["image"] == (S, S, 3) and info.shapes["objects"]["mask"] == (None, S, S, 1)
  assert info.features["objects"]["label"].names == list(scenes.CLASS_NAMES)
  assert scenes.NUM_CLASSES == len(scenes.CLASS_NAMES) >= 10 and len(set(scenes.CLASS_NAMES)) == scenes.NUM_CLASSES
  assert len(scenes.COLOR_NAMES) == len(render.COLORS)


def test_deterministic_and_equal_to_a_fresh_render(scenes_dir, train_records):
  builder = scenes.ShapesScenes(data_dir=scenes_dir)
  a = list(builder._generate_examples("validation", 3))
  b = list(builder._generate_examples("validation", 3))
  assert a == b  # same seed -> the same bytes (PNGs, boxes, description)
  other = list(builder._generate_examples("train", 3))
  assert a[0][1]["image"] != other[0][1]["image"]  # splits differ
  # what was written is what the renderer draws for that image id
  by_id = {int(r["image/id"]): r for r in train_records}
  assert sorted(by_id) == list(range(1, NUM_TRAIN + 1))
  for image_id in (1, 7, NUM_TRAIN):
    scene = render.render_scene(render.scene_rng(scenes._SEEDS["train"], image_id - 1), S)
    r = by_id[image_id]
    np.testing.assert_array_equal(r["image"], scene.image)
    np.testing.assert_array_equal(r["instance"][..., 0], scene.instance)
    assert list(r["objects"]["label"]) == scene.labels.tolist()


def test_annotations_consistent(train_records):
  ann_ids, labels, sides, areas = [], [], [], []
  for r in train_records:
    ex = scenes.to_detection_example(r)
    n = len(ex["labels"])
    assert 1 <= n <= render.MAX_OBJECTS
    masks = ex["masks"]
    # boxes are the tight boxes of the visible masks, in the transforms' pixel frame
    np.testing.assert_allclose(ex["boxes"], T.boxes_from_masks(masks), atol=1e-4)
    np.testing.assert_array_equal(ex["area"], masks.reshape(n, -1).sum(axis=1))
    # every kept object is visible; masks are disjoint; the dense maps agree with them
    assert (ex["area"] >= render.MIN_VISIBLE_PIXELS).all()
    assert masks.sum(axis=0).max() <= 1
    instance = r["instance"][..., 0]
    np.testing.assert_array_equal(instance, (masks * np.arange(1, n + 1)[:, None, None]).sum(axis=0))
    np.testing.assert_array_equal(ex["semantic"], (masks * (ex["labels"] + 1)[:, None, None]).sum(axis=0))
    assert not ex["is_crowd"].any()
    desc = json.loads(r["description"])
    assert [d["class"] for d in desc] == [scenes.CLASS_NAMES[l] for l in ex["labels"]]
    for d, box in zip(desc, ex["boxes"]):
      assert d["color"] in scenes.COLOR_NAMES and d["size"] in ("small", "medium", "large")
      assert d["x"] == pytest.approx((box[0] + box[2]) / 2 / S, abs=1e-3)
      assert d["y"] == pytest.approx((box[1] + box[3]) / 2 / S, abs=1e-3)
    ann_ids += list(r["objects"]["id"])
    labels += ex["labels"].tolist()
    sides += np.maximum(ex["boxes"][:, 2] - ex["boxes"][:, 0], ex["boxes"][:, 3] - ex["boxes"][:, 1]).tolist()
    areas += ex["area"].tolist()
  assert sorted(ann_ids) == list(range(1, len(ann_ids) + 1))  # unique over the split
  assert len(set(labels)) >= 10
  sides, areas = np.array(sides), np.array(areas)
  assert sides.max() <= render.MAX_SIZE * 1.2 + 2 and (sides < 16).mean() > 0.15 and (sides > 64).any()
  assert (areas < 32**2).mean() > 0.4  # COCO 'small' objects are common


def test_renderer_object_statistics():
  scenes_ = [render.render_scene(render.scene_rng(5, i)) for i in range(150)]
  sizes = np.concatenate([s.sizes for s in scenes_])
  assert sizes.min() >= render.MIN_SIZE and sizes.max() <= render.MAX_SIZE
  assert (sizes < 20).mean() > 0.25 and (sizes > 60).mean() > 0.1  # log-uniform scales
  assert len(np.unique(np.concatenate([s.labels for s in scenes_]))) == len(render.SHAPE_NAMES)
  assert {s.background for s in scenes_} == set(render.BACKGROUNDS)
  counts = [len(s.labels) for s in scenes_]
  assert min(counts) >= 1 and max(counts) >= 9
  for s in scenes_[:20]:
    full_background = s.instance == 0
    assert s.image[full_background].std() > 3  # textured, not a flat colour
  small = render.render_scene(render.scene_rng(0, 0), 64)
  assert small.image.shape == (64, 64, 3) and small.masks.shape[1:] == (64, 64)


def test_to_detection_example_layouts(train_records):
  r = train_records[0]
  ex = scenes.to_detection_example(r)
  n = len(r["objects"]["label"])
  want = {"image": ((S, S, 3), np.uint8), "image_id": ((), np.int64), "boxes": ((n, 4), np.float32),
          "labels": ((n,), np.int32), "masks": ((n, S, S), np.uint8), "is_crowd": ((n,), np.bool_),
          "area": ((n,), np.float32), "semantic": ((S, S), np.uint8)}
  assert sorted(ex) == sorted(want)
  for k, (shape, dtype) in want.items():
    assert np.shape(ex[k]) == shape and np.asarray(ex[k]).dtype == dtype, k
  assert set(np.unique(ex["masks"])) <= {0, 1}
  flat = scenes.to_detection_example(_flat(r))
  for k in want:
    np.testing.assert_array_equal(flat[k], ex[k])
  # the TFDS coco/2017 layout: no masks, no semantic map -> no such keys
  coco_like = {k: v for k, v in _flat(r).items() if k not in ("objects/mask", "semantic", "instance")}
  ex2 = scenes.to_detection_example(coco_like)
  assert "masks" not in ex2 and "semantic" not in ex2
  np.testing.assert_array_equal(ex2["boxes"], ex["boxes"])


def test_to_detection_example_without_objects(train_records):
  r = train_records[0]
  empty_nested = dict(r, objects={k: [] for k in r["objects"]})
  empty_flat = {k: v for k, v in _flat(r).items() if not k.startswith("objects/")}
  empty_flat.update({"objects/bbox": np.zeros((0, 4), np.float32), "objects/label": np.zeros((0,), np.int64),
                     "objects/is_crowd": np.zeros((0,), bool), "objects/area": np.zeros((0,), np.int64),
                     "objects/mask": np.zeros((0, S, S, 1), np.uint8)})
  for raw in (empty_nested, empty_flat):
    ex = scenes.to_detection_example(raw)
    assert ex["boxes"].shape == (0, 4) and ex["boxes"].dtype == np.float32
    assert ex["masks"].shape == (0, S, S) and ex["masks"].dtype == np.uint8
    assert ex["labels"].shape == ex["is_crowd"].shape == ex["area"].shape == (0,)
    assert ex["labels"].dtype == np.int32 and ex["is_crowd"].dtype == np.bool_
  # and it pads like any other example
  padded = T.pad_instances(scenes.to_detection_example(empty_nested), 4, pad_values={"labels": -1})
  assert padded["boxes"].shape == (4, 4) and padded["instance_mask"].tolist() == [0, 0, 0, 0]
