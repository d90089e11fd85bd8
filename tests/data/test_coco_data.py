"""COCO-format I/O: ``write_tiny_coco`` -> ``CocoJsonSource`` round trip, ``to_coco_json`` / ``export_split`` read
back by pycocotools, and ground truth evaluated as detections scoring AP = 1."""

import contextlib
import io
import json
import os
import pickle

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from research import data
from research.data import coco, scenes
from research.data import scenes_render as render

NUM_IMAGES, SIZE, SEED = 5, 64, 3


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tiny_coco"))
  coco.write_tiny_coco(root, num_images=NUM_IMAGES, image_size=SIZE, seed=SEED)
  return root


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("shapes_scenes"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(scenes, "NUM_TRAIN", 8)
    mp.setattr(scenes, "NUM_VALIDATION", 6)
    data.get_source("shapes_scenes", "validation", d)  # builds it
  return d


def _quiet(fn, *args):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


def test_tiny_coco_layout(tiny_root):
  assert sorted(os.listdir(tiny_root)) == ["annotations", "train2017", "val2017"]
  for split, first_id in (("train", 1), ("val", NUM_IMAGES + 1)):
    with open(os.path.join(tiny_root, "annotations", f"instances_{split}2017.json")) as f:
      js = json.load(f)
    assert [im["id"] for im in js["images"]] == list(range(first_id, first_id + NUM_IMAGES))
    assert all(os.path.isfile(os.path.join(tiny_root, f"{split}2017", im["file_name"])) for im in js["images"])
    segs = [a["segmentation"] for a in js["annotations"]]
    assert any(isinstance(s, list) for s in segs)  # polygons
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)  # compressed RLE
    crowd = [a for a in js["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)  # uncompressed RLE
    assert not any(a["image_id"] == js["images"][-1]["id"] for a in js["annotations"])  # an empty image
    assert [c["id"] for c in js["categories"]] == [2 * k + 1 for k in range(len(render.SHAPE_NAMES))]


def test_coco_json_source_round_trip(tiny_root):
  for split, split_index in (("train", 0), ("validation", 1)):
    src = coco.CocoJsonSource(tiny_root, split)
    assert len(src) == NUM_IMAGES
    assert src.class_names == list(render.SHAPE_NAMES)
    assert src.category_ids == [2 * k + 1 for k in range(len(render.SHAPE_NAMES))]
    with open(src.annotation_file) as f:
      anns = json.load(f)["annotations"]
    items = src.__getitems__(list(range(len(src))))
    crowd = 0
    for i, ex in enumerate(items):
      n = len(ex["labels"])
      assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.uint8
      assert int(ex["image_id"]) == split_index * NUM_IMAGES + i + 1 and ex["image_id"].dtype == np.int64
      assert ex["boxes"].shape == (n, 4) and ex["boxes"].dtype == np.float32
      assert ex["masks"].shape == (n, SIZE, SIZE) and ex["masks"].dtype == np.uint8
      assert ex["labels"].dtype == np.int32 and ex["is_crowd"].dtype == np.bool_ and ex["area"].dtype == np.float32
      mine = sorted((a for a in anns if a["image_id"] == ex["image_id"]), key=lambda a: a["id"])
      # boxes are xyxy of the JSON's xywh; labels the index of the sorted category ids
      want = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)]).reshape(n, 4)
      np.testing.assert_array_equal(ex["boxes"], want)
      assert ex["labels"].tolist() == [(a["category_id"] - 1) // 2 for a in mine]
      crowd += int(ex["is_crowd"].sum())
      if i == NUM_IMAGES - 1:
        assert n == 0  # the image without annotations is kept
        continue
      # polygons, RLE and the crowd's uncompressed RLE all decode to the rendered visible masks
      scene = render.render_scene(render.scene_rng(SEED * 2 + split_index, i), SIZE)
      np.testing.assert_array_equal(ex["image"], scene.image)
      np.testing.assert_array_equal(ex["masks"], scene.masks)
      assert ex["labels"].tolist() == scene.labels.tolist()
      np.testing.assert_array_equal(ex["area"], scene.masks.reshape(n, -1).sum(axis=1))
    assert crowd == 1


def test_coco_json_source_is_light_to_pickle_and_routed_by_the_pipeline(tiny_root):
  src = coco.CocoJsonSource(tiny_root, "val")
  want = src[1]
  blob = pickle.dumps(src)
  assert len(blob) < 1000  # paths only: the parsed annotations stay behind
  got = pickle.loads(blob)[1]
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  routed = data.get_source("coco_json", "validation", tiny_root)
  assert isinstance(routed, coco.CocoJsonSource) and routed.split == "val"
  info = data.get_info("coco_json", tiny_root)
  assert info.splits == {"train": NUM_IMAGES, "validation": NUM_IMAGES} and info.eval_split == "validation"
  assert info.features["labels"].feature.names == list(render.SHAPE_NAMES) and info.dtypes["labels"] == np.int32
  with pytest.raises(ValueError, match="split"):
    coco.CocoJsonSource(tiny_root, "test")
  with pytest.raises(FileNotFoundError, match="instances_train2017"):
    coco.CocoJsonSource(os.path.join(tiny_root, "nowhere"), "train")


def _examples(scenes_dir):
  src = data.get_source("shapes_scenes", "validation", scenes_dir)
  return [scenes.to_detection_example(r) for r in src.__getitems__(list(range(len(src))))]


def test_export_split_loads_in_pycocotools_and_gt_scores_ap_1(scenes_dir, tmp_path):
  path = coco.export_split("shapes_scenes", "validation", scenes_dir, tmp_path / "val.json")
  assert path == str(tmp_path / "val.json")
  gt = _quiet(COCO, path)
  examples = {int(ex["image_id"]): ex for ex in _examples(scenes_dir)}
  assert sorted(gt.getImgIds()) == sorted(examples)
  assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(scenes.CLASS_NAMES)
  bbox_dets, segm_dets = [], []
  for image_id, ex in examples.items():
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
    assert len(anns) == len(ex["labels"]) > 0
    for a, box, mask, label in zip(anns, ex["boxes"], ex["masks"], ex["labels"]):
      np.testing.assert_array_equal(gt.annToMask(a), mask)
      np.testing.assert_allclose(a["bbox"], [box[0], box[1], box[2] - box[0], box[3] - box[1]])
      assert a["category_id"] == label + 1 and a["area"] == mask.sum() and a["iscrowd"] == 0
      bbox_dets.append({"image_id": image_id, "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0})
      segm_dets.append({"image_id": image_id, "category_id": a["category_id"], "segmentation": a["segmentation"],
                        "score": 1.0})
  for iou_type, dets in (("bbox", bbox_dets), ("segm", segm_dets)):
    ev = COCOeval(gt, _quiet(gt.loadRes, dets), iou_type)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0), iou_type


def test_to_coco_json_options(scenes_dir):
  examples = _examples(scenes_dir)[:2]
  no_masks = [{k: v for k, v in ex.items() if k != "masks"} for ex in examples]
  ids = [10 * k + 7 for k in range(scenes.NUM_CLASSES)]
  js = coco.to_coco_json(no_masks, scenes.CLASS_NAMES, category_ids=ids)
  assert [c["id"] for c in js["categories"]] == ids
  assert all("segmentation" not in a for a in js["annotations"])
  labels = np.concatenate([ex["labels"] for ex in examples])
  assert [a["category_id"] for a in js["annotations"]] == [ids[l] for l in labels]
  assert [a["id"] for a in js["annotations"]] == list(range(1, len(labels) + 1))
  assert js["images"][0] == {"id": int(examples[0]["image_id"]), "width": 128, "height": 128,
                             "file_name": f"{int(examples[0]['image_id']):012d}.png"}
  empty = dict(examples[0], boxes=np.zeros((0, 4), np.float32), labels=np.zeros((0,), np.int32),
               masks=np.zeros((0, 128, 128), np.uint8), is_crowd=np.zeros((0,), bool), area=np.zeros((0,), np.float32))
  js = coco.to_coco_json([empty], scenes.CLASS_NAMES)
  assert len(js["images"]) == 1 and js["annotations"] == []
  json.dumps(js)  # plain JSON types
  with pytest.raises(ValueError, match="twice"):
    coco.to_coco_json([examples[0], examples[0]], scenes.CLASS_NAMES)
  with pytest.raises(ValueError, match="category_ids"):
    coco.to_coco_json(examples, scenes.CLASS_NAMES, category_ids=[1, 2])
