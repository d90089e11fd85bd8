"""Generic pipelines: any TFDS feature dict (boxes, masks, token ids, graphs), grayscale and non-square images,
checkpointable iterator state, padded eval batches, and the multi-process build of procedural datasets."""

import dataclasses
import io

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from research import data
from research.data import pipeline
from research.data import transforms as T

H, W = 24, 40  # non-square on purpose


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class ResearchTestScenes(tfds.core.GeneratorBasedBuilder):
  """Tiny detection/segmentation/sequence/graph dataset: 24x40 RGB, 0-3 boxes with masks, token ids, a graph."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(H, W, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(num_classes=3),
        "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        "masks": tfds.features.Tensor(shape=(None, H, W), dtype=np.uint8),
        "classes": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "edges": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 24), "test": self._generate_examples(1, 5)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      k = int(rng.integers(0, 4))
      masks = np.zeros((k, H, W), np.uint8)
      for j in range(k):
        y0, x0 = rng.integers(0, H - 4), rng.integers(0, W - 4)
        masks[j, y0:y0 + rng.integers(2, 8), x0:x0 + rng.integers(2, 12)] = 1
      nodes = int(rng.integers(1, 6))
      yield i, {"image": _png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)), "label": i % 3,
                "boxes": T.boxes_from_masks(masks), "masks": masks, "classes": rng.integers(0, 5, k),
                "tokens": rng.integers(1, 100, int(rng.integers(0, 9))).astype(np.int32),
                "edges": rng.integers(0, nodes, (int(rng.integers(0, 7)), 2)).astype(np.int32)}


class ResearchTestUnlabelled(tfds.core.GeneratorBasedBuilder):
  """No 'label' and no 'image': only token ids."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {"tokens": np.arange(i, dtype=np.int32)}


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("scenes"))
  ResearchTestScenes(data_dir=d).download_and_prepare(file_format="array_record")
  return d


MAX_BOXES, MAX_TOKENS, MAX_EDGES = 4, 8, 8


class DetectionTransform:
  """Decoded example -> fixed shapes: flip + scale + crop back to 24x40, instances/tokens/edges padded."""

  def __call__(self, ex, rng=None):
    out = {"image": ex["image"], "boxes": ex["boxes"], "masks": ex["masks"], "classes": ex["classes"]}
    if rng is not None:
      out = T.random_hflip(out, rng)
      out = T.random_scale(out, rng, 0.8, 1.25)
      out = T.random_crop(out, rng, (H, W))
    out = T.pad_instances(out, MAX_BOXES, pad_values={"classes": -1})
    out["image"] = data.normalize(out["image"], (0.5,) * 3, (0.25,) * 3)
    out["tokens"], out["tokens_mask"] = data.pad_to(ex["tokens"], MAX_TOKENS, name="tokens")
    out["edges"], out["edges_mask"] = data.pad_to(ex["edges"], MAX_EDGES, name="edges")
    return out


def test_generic_train_loader_shapes_and_state_roundtrip(scenes_dir):
  src = data.get_source("research_test_scenes", "train", scenes_dir)
  loader = lambda: data.make_train_loader(src, global_batch_size=8, seed=3, transform=DetectionTransform())
  it = iter(loader())
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  b = first[0]
  chex.assert_shape([b["image"], b["boxes"], b["masks"], b["classes"], b["instance_mask"], b["tokens"],
                     b["tokens_mask"], b["edges"], b["edges_mask"]],
                    [(8, H, W, 3), (8, MAX_BOXES, 4), (8, MAX_BOXES, H, W), (8, MAX_BOXES), (8, MAX_BOXES),
                     (8, MAX_TOKENS), (8, MAX_TOKENS), (8, MAX_EDGES, 2), (8, MAX_EDGES)])
  assert b["image"].dtype == np.float32 and b["masks"].dtype == np.uint8 and b["tokens"].dtype == np.int32
  for batch in first:  # padded instances are zero; real ones keep their masks inside their boxes
    assert not batch["masks"][batch["instance_mask"] == 0].any()
    assert (batch["classes"][batch["instance_mask"] == 0] == -1).all()
    assert not batch["tokens"][batch["tokens_mask"] == 0].any()
  resumed = iter(loader())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert sorted(got) == sorted(want)
    for k in want:
      assert got[k].dtype == want[k].dtype
      np.testing.assert_array_equal(got[k], want[k])
  # the same seed gives the same stream, which is the classification loader's stream (same records, same order)
  again = next(iter(loader()))
  np.testing.assert_array_equal(again["tokens"], first[0]["tokens"])
  ids = iter(data.make_train_loader(src, global_batch_size=8, seed=3,
                                    transform=lambda ex, rng: {"label": np.int32(ex["label"]), "tokens":
                                                               data.pad_to(ex["tokens"], MAX_TOKENS)[0]}))
  cls = iter(data.train_loader(src, global_batch_size=8, seed=3, augment="none", mean=(0.5,) * 3, std=(0.25,) * 3))
  for want in first:
    got, c = next(ids), next(cls)
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["label"], c["label"])


def test_transform_with_variable_shapes_is_named(scenes_dir):
  src = data.get_source("research_test_scenes", "train", scenes_dir)
  loader = data.make_train_loader(src, global_batch_size=8, seed=0,
                                  transform=lambda ex, rng: {"tokens": ex["tokens"]})
  with pytest.raises(Exception, match="'tokens'.*shape"):
    for _ in range(4):
      next(iter(loader))


def test_generic_eval_batches_pad_with_zeros_and_valid(scenes_dir, monkeypatch):
  src = data.get_source("research_test_scenes", "test", scenes_dir)
  assert len(src) == 5
  batches = list(data.make_eval_batches(src, global_batch_size=8, transform=DetectionTransform()))
  assert len(batches) == 1
  b = batches[0]
  assert b["valid"].dtype == np.float32 and b["valid"].tolist() == [1] * 5 + [0] * 3
  for k, v in b.items():
    assert v.shape[0] == 8
    if k != "valid":
      assert not v[5:].any(), k  # every feature zero on padding rows
  want = DetectionTransform()(src[2])
  for k in want:
    np.testing.assert_array_equal(b[k][2], want[k])
  # process 1 of 2 reads rows 4..7 of each global batch; with 3 examples they are all padding
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  rows = list(data.make_eval_batches(src, global_batch_size=8, transform=DetectionTransform()))
  assert rows[0]["valid"].tolist() == [1, 0, 0, 0] and rows[0]["image"].shape == (4, H, W, 3)
  np.testing.assert_array_equal(rows[0]["tokens"][0], DetectionTransform()(src[4])["tokens"])
  three = [src[i] for i in range(3)]
  rows = list(data.make_eval_batches(three, global_batch_size=8, transform=DetectionTransform()))
  assert rows[0]["valid"].tolist() == [0, 0, 0, 0] and rows[0]["masks"].shape == (4, MAX_BOXES, H, W)


def test_non_square_classification_path(scenes_dir):
  spec = data.get_spec("research_test_scenes", scenes_dir)
  assert spec.image_shape == (H, W, 3) and spec.num_classes == 3 and len(spec.mean) == 3
  src = data.get_source("research_test_scenes", "train", scenes_dir)
  for augment in data.AUGMENTATIONS:
    b = next(iter(data.train_loader(src, global_batch_size=8, seed=0, augment=augment, mean=spec.mean,
                                    std=spec.std)))
    chex.assert_shape(b["image"], (8, H, W, 3))
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
  ev = list(data.eval_batches(data.get_source("research_test_scenes", "test", scenes_dir), global_batch_size=4,
                              mean=spec.mean, std=spec.std, image_shape=spec.image_shape))
  assert [e["image"].shape for e in ev] == [(4, H, W, 3)] * 2
  assert ev[1]["valid"].tolist() == ev[1]["mask"].tolist() == [1, 0, 0, 0]
  img = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
  assert data.random_crop_flip(img, np.random.default_rng(0)).shape == (H, W, 3)


def test_mnist_grayscale_through_the_classification_path(tmp_path):
  with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
    spec = data.get_spec("mnist", str(tmp_path))
    assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10
    assert (spec.mean, spec.std, spec.default_augment) == ((0.1307,), (0.3081,), "crop")
    src = data.get_source("mnist", "train", str(tmp_path))
    for augment in ("crop", "crop_flip"):
      b = next(iter(data.train_loader(src, global_batch_size=8, seed=0, augment=augment, mean=spec.mean,
                                      std=spec.std)))
      chex.assert_shape([b["image"], b["label"]], [(8, 28, 28, 1), (8,)])
      assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
    ev = list(data.eval_batches(data.get_source("mnist", spec.eval_split, str(tmp_path)), global_batch_size=16,
                                mean=spec.mean, std=spec.std, image_shape=spec.image_shape))
    assert [e["image"].shape for e in ev] == [(16, 28, 28, 1)] * 2
    assert sum(e["valid"].sum() for e in ev) == 20
    first = data.get_source("mnist", spec.eval_split, str(tmp_path))[0]["image"]
    np.testing.assert_allclose(ev[0]["image"][0], (first / 255.0 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)
    info = data.get_info("mnist", str(tmp_path))
    assert info.shapes["image"] == (28, 28, 1) and info.splits["train"] == 20


def test_channel_statistics_and_normalize_checks():
  assert data.image_stats("unknown_ds", 1)[:2] == ((0.5,), (0.25,))
  assert data.image_stats("unknown_ds", 4)[:2] == ((0.5,) * 4, (0.25,) * 4)
  with pytest.raises(ValueError, match="3 channels"):
    data.image_stats("cifar10", 1)
  gray = np.full((2, 5, 7, 1), 255, np.uint8)
  np.testing.assert_allclose(data.normalize(gray, (0.5,), (0.25,)), 2.0)
  with pytest.raises(ValueError, match="3 entries.*1 channels"):
    data.normalize(gray, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_get_info_needs_no_label(tmp_path):
  ResearchTestUnlabelled(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  info = data.get_info("research_test_unlabelled", str(tmp_path))
  assert info.shapes == {"tokens": (None,)} and info.splits == {"train": 6} and info.eval_split is None
  with pytest.raises(ValueError, match="needs 'image' and 'label'"):
    data.get_spec("research_test_unlabelled", str(tmp_path))
  src = data.get_source("research_test_unlabelled", "train", str(tmp_path))
  b = next(iter(data.make_train_loader(
      src, global_batch_size=4, seed=0,
      transform=lambda ex, rng: dict(zip(("tokens", "tokens_mask"), data.pad_to(ex["tokens"], 6))))))
  assert b["tokens"].shape == (4, 6) and b["tokens_mask"].shape == (4, 6)
  for tokens, mask in zip(b["tokens"], b["tokens_mask"]):  # example i holds tokens 0..i-1
    n = int(mask.sum())
    assert tokens[:n].tolist() == list(range(n)) and not tokens[n:].any()


def test_procedural_dataset_built_by_process_zero_only(tmp_path, monkeypatch):
  """Multi-process: process 0 builds, every process meets at the barrier, the others then open the files."""
  monkeypatch.setitem(pipeline.PROCEDURAL, "research_test_unlabelled", ResearchTestUnlabelled)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  calls = []
  prepared = lambda d: ResearchTestUnlabelled(data_dir=d).is_prepared()
  monkeypatch.setattr(pipeline.multihost_utils, "sync_global_devices",
                      lambda name: calls.append((jax.process_index(), prepared(d), name)))

  d = str(tmp_path / "a")  # process 1 first: it must not build, and reaches the barrier with nothing there
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with pytest.raises(ValueError, match="cannot see.*shared"):
    data.get_info("research_test_unlabelled", d)  # (nobody built it in this simulation)
  assert calls == [(1, False, f"research.data: build research_test_unlabelled in {d}")]
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  assert data.get_info("research_test_unlabelled", d).splits == {"train": 6}
  assert calls[-1][:2] == (0, True)  # built before the barrier
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert data.get_info("research_test_unlabelled", d).splits == {"train": 6}
  assert calls[-1][:2] == (1, True) and len(calls) == 3
  # one process: no barrier, built in place as before
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  assert data.get_info("research_test_unlabelled", str(tmp_path / "b")).splits == {"train": 6}
  assert len(calls) == 3


@pytest.mark.parametrize("dataset", ["mnist", "research_test_scenes"])
def test_classify_trains_on_grayscale_and_non_square_images(dataset, scenes_dir, tmp_path):
  """`experiments.classify --dataset=mnist` used to die in the first step (3-channel stats broadcast a 1-channel
  image); any channel count and H != W now train end to end."""
  from research.train import classify
  cfg = classify.ClassifyConfig(model="wrn10_1", dataset=dataset, num_steps=2, batch_size=8, eval_every=2,
                                checkpoint_every=2, progress_bar=False, data_dir=str(tmp_path / "d"))
  if dataset == "mnist":
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path / "d")):
      res = classify.train_and_evaluate(cfg, str(tmp_path / "w"))
  else:
    res = classify.train_and_evaluate(dataclasses.replace(cfg, data_dir=scenes_dir), str(tmp_path / "w"))
  assert res["step"] == 2 and res["eval_count"] == (20 if dataset == "mnist" else 5)
  assert np.isfinite(res["final_train_loss"]) and np.isfinite(res["eval_loss"])
