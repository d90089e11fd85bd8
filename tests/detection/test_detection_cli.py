"""The detection experiments end to end as a user runs them: COCO-layout data (--dataset=coco_json), COCO eval
files, --predict, and one-line errors for bad flags."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from research.data import coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module, *args, devices=1, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             + os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  flagfile = os.path.join(ROOT, "experiments", "configs", f"{module}_smoke.flags")
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", f"--flagfile={flagfile}", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("coco"))
  coco.write_tiny_coco(root, num_images=6, image_size=64, seed=0)
  return root


def test_mask_rcnn_on_official_coco_layout_writes_coco_results(tiny_coco, tmp_path):
  """Two devices (data-parallel shard_map step with the C++ RoIAlign backward inside), COCO JSON data."""
  from pycocotools.coco import COCO
  work = str(tmp_path / "run")
  proc = _run("mask_rcnn", "--dataset=coco_json", f"--data_dir={tiny_coco}", f"--workdir={work}", "--eval_examples=0",
              devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(work, "results.json")))
  assert results["step"] == 4 and results["num_devices"] == 2
  for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "segm/AP", "segm/AP75"):
    assert 0.0 <= results[f"eval_{k}"] <= 1.0 or results[f"eval_{k}"] == -1.0, k
  gt = COCO(os.path.join(work, "gt_coco.json"))
  assert len(gt.getImgIds()) == 6  # the whole val split, the image without objects included
  dets = json.load(open(os.path.join(work, "detections.json")))
  assert isinstance(dets, list)
  for d in dets[:5]:
    assert set(d) >= {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert d["image_id"] in gt.getImgIds() and d["category_id"] in gt.getCatIds()


def test_bad_flag_is_one_clear_error(tmp_path):
  proc = _run("mask_rcnn", f"--workdir={tmp_path}", "--backbone=resnet5", timeout=120)
  assert proc.returncode == 1
  err = proc.stderr.strip().splitlines()
  assert err[-1].startswith("error: --backbone='resnet5' is not a registered backbone"), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides,message", [
    ({"model": "mask_rcnn_c9"}, "--model='mask_rcnn_c9'; choose one of"),
    ({"image_size": 100}, "--image_size=100 must be a positive multiple of 32"),
    ({"batch_size": 0}, "--batch_size must be positive"),
])
def test_bad_config_values_name_the_flag(overrides, message):
  import dataclasses
  from research.train import detection
  with pytest.raises(ValueError, match=re.escape(message)):
    detection.validate(dataclasses.replace(detection.DetectionConfig(), **overrides))


def test_missing_coco_layout_and_bad_poolers_name_the_fix(tmp_path):
  from research.train import detection
  cfg = detection.DetectionConfig(dataset="coco_json", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="instances_train2017.json; expected the official layout"):
    detection.prepare_data(cfg)
  from experiments import mask_rcnn
  with pytest.raises(ValueError, match=re.escape("--poolers=align,warp: ['warp'] not in (align, pool)")):
    mask_rcnn.pooler_conditions(("align", "warp"), "align")
  assert mask_rcnn.pooler_conditions((), "pool") == {"roi_pool": {"pooler": "pool"}}


@pytest.mark.slow
def test_predict_draws_the_trained_models_detections(tiny_coco, tmp_path):
  """A 2-device training run, then --predict on one device (the checkpoint restores onto any device count)."""
  work = str(tmp_path / "run")
  proc = _run("mask_rcnn", "--dataset=coco_json", f"--data_dir={tiny_coco}", f"--workdir={work}", "--num_steps=2",
              "--checkpoint_every=2", "--eval_every=2", devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _run("mask_rcnn", "--dataset=coco_json", f"--data_dir={tiny_coco}", f"--workdir={work}", "--predict",
              "--num_predict=3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  from PIL import Image
  png = np.asarray(Image.open(os.path.join(work, "predictions.png")))
  assert png.ndim == 3 and png.shape[0] >= 64 * 3


@pytest.mark.slow
def test_faster_rcnn_smoke_c4_vs_fpn(tiny_coco, tmp_path):
  proc = _run("faster_rcnn", "--dataset=coco_json", f"--data_dir={tiny_coco}", f"--workdir={tmp_path}",
              "--seeds=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(os.path.join(tmp_path, "summary.json")))
  assert set(summary["runs"]) == {"c4", "fpn"}
  assert os.path.exists(os.path.join(tmp_path, "c4_seed0", "detections.json"))


def test_deformable_variants_parse_to_conditions():
  from experiments.deformable import variant_conditions
  assert variant_conditions(("none", "v2", "v2+pool"), "none") == {
      "plain": {"deformable": "none"}, "dcn_v2": {"deformable": "v2"},
      "dcn_v2_deform_roi_pool": {"deformable": "v2", "pooler": "deform"}}
  assert variant_conditions((), "v1") == {"dcn_v1": {"deformable": "v1"}}
  for bad in ("v3", "v2+roi", "none+"):
    with pytest.raises(ValueError, match="optionally"):
      variant_conditions((bad,), "none")
