"""Offline `shapes` TFDS builder, hierarchy, grain pipelines, sharding and iterator checkpoints."""

import chex
import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import data
from research.data import shapes_render as sr


def test_hierarchy_is_a_tree():
  assert sr.NUM_FINE == 100 and sr.NUM_COARSE == 20 and sr.NUM_GROUPS == 5
  assert len(set(sr.FINE_NAMES)) == 100
  np.testing.assert_array_equal(np.bincount(sr.FINE_TO_COARSE), np.full(20, 5))
  np.testing.assert_array_equal(np.bincount(sr.COARSE_TO_GROUP), np.full(5, 4))
  for f, name in enumerate(sr.FINE_NAMES):  # a fine name starts with its coarse family
    assert name.split("/")[0] == sr.COARSE_NAMES[sr.FINE_TO_COARSE[f]]
  assert sr.taxonomic_distance(0, 0) == 0
  assert sr.taxonomic_distance(0, 4) == 1  # triangle/up vs triangle/thin_up
  assert sr.taxonomic_distance(0, 5) == 2  # triangle vs quadrilateral (both polygons)
  assert sr.taxonomic_distance(0, 99) == 3


def test_render_is_deterministic_and_seed_dependent():
  a, la = sr.render_split(3, seed=7)
  b, lb = sr.render_split(3, seed=7)
  c, _ = sr.render_split(3, seed=8)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert not np.array_equal(a, c)
  chex.assert_shape(a, (300, 32, 32, 3))
  assert a.dtype == np.uint8 and np.bincount(la).tolist() == [3] * 100


def test_classes_differ_and_nuisance_varies():
  rng = np.random.default_rng(0)
  imgs = sr.render_class(0, 8, rng)
  assert imgs.std(axis=0).mean() > 10  # colours/positions vary within a class
  # The class-conditional mean masks of two variants differ (the label is visible in the pixels).
  m0 = sr.render_class(sr.FINE_NAMES.index("bar/horizontal"), 64, rng).std(-1).mean(0)
  m1 = sr.render_class(sr.FINE_NAMES.index("bar/vertical"), 64, rng).std(-1).mean(0)
  assert np.abs(m0 - m1).mean() > 1.0


def test_builder_source_and_spec(shapes_data_dir):
  spec = data.get_spec("shapes", shapes_data_dir)
  assert (spec.num_classes, spec.num_coarse_classes, spec.image_shape) == (100, 20, (32, 32, 3))
  src = data.get_source("shapes", "train", shapes_data_dir)
  assert len(src) == spec.num_train == 30000
  ex = src[0]
  assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
  assert sr.FINE_TO_COARSE[ex["label"]] == ex["coarse_label"]
  # Reading through the public TFDS API gives identical records (array_record on disk, no TensorFlow).
  same = tfds.data_source("shapes", split="train", data_dir=shapes_data_dir)
  np.testing.assert_array_equal(same[123]["image"], src[123]["image"])
  assert list((__import__("pathlib").Path(shapes_data_dir) / "shapes" / "1.0.0").glob("*.array_record*"))


def test_load_arrays_matches_source(shapes_data_dir):
  arr = data.load_arrays("shapes", "test", shapes_data_dir)
  src = data.get_source("shapes", "test", shapes_data_dir)
  assert arr["image"].shape == (5000, 32, 32, 3)
  np.testing.assert_array_equal(arr["image"][17], src[17]["image"])
  np.testing.assert_array_equal(np.bincount(arr["label"]), np.full(100, 50))
  np.testing.assert_array_equal(sr.FINE_TO_COARSE[arr["label"]], arr["coarse_label"])


def _loader(src, seed, **kw):
  spec_mean, spec_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  return data.train_loader(src, global_batch_size=8, seed=seed, augment=kw.pop("augment", "crop"),
                           mean=spec_mean, std=spec_std, **kw)


def test_train_loader_seeded_and_resumable(shapes_data_dir):
  src = data.get_source("shapes", "train", shapes_data_dir)
  it1 = iter(_loader(src, 0))
  first = [next(it1) for _ in range(3)]
  state = it1.get_state()
  nxt = next(it1)
  it2 = iter(_loader(src, 0))
  again = [next(it2) for _ in range(3)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  it3 = iter(_loader(src, 0))
  it3.set_state(state)  # checkpointable iterator state: resumes at batch 4
  np.testing.assert_array_equal(next(it3)["image"], nxt["image"])
  other = next(iter(_loader(src, 1)))
  assert not np.array_equal(other["label"], first[0]["label"])
  chex.assert_shape(first[0]["image"], (8, 32, 32, 3))
  assert first[0]["image"].dtype == np.float32 and first[0]["label"].dtype == np.int32


def test_random_crop_flip():
  img = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  rng = np.random.default_rng(0)
  outs = [data.random_crop_flip(img, rng) for _ in range(50)]
  assert all(o.shape == img.shape for o in outs)
  shifted = [o for o in outs if not np.array_equal(o, img) and not np.array_equal(o, img[:, ::-1])]
  assert shifted, "crops never moved the image"
  no_flip = [data.random_crop_flip(img, rng, pad=0, flip=False) for _ in range(5)]
  assert all(np.array_equal(o, img) for o in no_flip)
  flips = [data.random_crop_flip(img, np.random.default_rng(s), pad=0) for s in range(20)]
  assert any(np.array_equal(o, img[:, ::-1]) for o in flips)


def test_eval_batches_pad_and_mask(shapes_data_dir):
  src = data.get_source("shapes", "test", shapes_data_dir)
  batches = list(data.eval_batches(src, global_batch_size=1200, mean=(0, 0, 0), std=(1, 1, 1),
                                   image_shape=(32, 32, 3)))
  assert len(batches) == 5  # ceil(5000 / 1200)
  assert sum(b["mask"].sum() for b in batches) == 5000
  assert batches[-1]["mask"][:200].all() and not batches[-1]["mask"][200:].any()
  for b in batches:  # `valid` (the key of make_eval_batches) holds the same values as `mask`
    assert b["valid"].dtype == np.float32
    np.testing.assert_array_equal(b["valid"], b["mask"])
  np.testing.assert_allclose(batches[0]["image"][3], src[3]["image"] / 255.0, atol=1e-6)


def test_sharding_options_per_process():
  # ShardByJaxProcess in a single process covers everything; two shards partition the records.
  opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  assert (opts.shard_index, opts.shard_count) == (0, 1)
  s0 = grain.samplers.IndexSampler(10, grain.sharding.ShardOptions(0, 2, drop_remainder=True), shuffle=True,
                                   num_epochs=1, seed=3)
  s1 = grain.samplers.IndexSampler(10, grain.sharding.ShardOptions(1, 2, drop_remainder=True), shuffle=True,
                                   num_epochs=1, seed=3)
  idx0 = {s0[i].record_key for i in range(0, 10) if _ok(s0, i)}
  idx1 = {s1[i].record_key for i in range(0, 10) if _ok(s1, i)}
  assert idx0 and idx1 and not idx0 & idx1 and idx0 | idx1 == set(range(10))


def _ok(sampler, i):
  try:
    sampler[i]
    return True
  except IndexError:
    return False


def test_errors_name_the_flag(tmp_path):
  with pytest.raises(ValueError, match="not prepared|neither"):
    data.get_spec("cifar100", str(tmp_path))
  with pytest.raises(ValueError, match="augment"):
    data.train_loader([0] * 100, global_batch_size=8, seed=0, augment="rotate", mean=0, std=1)
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    data.train_loader([0] * 100, global_batch_size=6, seed=0, augment="none", mean=0, std=1)
  with pytest.raises(ValueError, match="fewer than one batch"):
    data.train_loader([0] * 4, global_batch_size=8, seed=0, augment="none", mean=0, std=1)


def test_prepared_tfds_dataset_uses_same_code_path(tmp_path):
  """`--dataset=cifar100 --data_dir=...`: the same get_spec/get_source path serves any prepared TFDS dataset."""
  with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
    spec = data.get_spec("cifar100", str(tmp_path))
    assert (spec.num_classes, spec.num_coarse_classes, spec.image_shape) == (100, 20, (32, 32, 3))
    src = data.get_source("cifar100", "train", str(tmp_path))
    assert len(src) == 24
    ex = src[5]
    assert ex["image"].shape == (32, 32, 3) and 0 <= ex["label"] < 100 and 0 <= ex["coarse_label"] < 20
    batch = next(iter(data.train_loader(src, global_batch_size=8, seed=0, augment="crop_flip",
                                        mean=spec.mean, std=spec.std)))
    chex.assert_shape(batch["image"], (8, 32, 32, 3))
