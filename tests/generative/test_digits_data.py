"""``digits``: scikit-learn's real 8x8 digits as a TFDS builder (exact pixels, stratified seeded split, 16/32 px
configs, determinism), its registration in ``research.data.pipeline`` and the mock_data read path."""

from __future__ import annotations

import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from research.data import digits, pipeline


@pytest.fixture(scope="module")
def sk():
  """``(images float64 [1797, 8, 8] 0..16, labels [1797])`` straight from scikit-learn."""
  from sklearn.datasets import load_digits
  d = load_digits()
  return d.images, d.target


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data_dir holding all three configs (built on first use, ~1 s in all)."""
  d = str(tmp_path_factory.mktemp("digits"))
  for config in digits.CONFIGS:
    digits.builder(config, d)
  return d


@pytest.fixture(scope="module")
def arrays(data_dir):
  """``{(config, split): load_arrays(...) with index}`` for every config and split."""
  return {(c, s): digits.load_arrays(s, data_dir, c, keys=("image", "label", "index"))
          for c in digits.CONFIGS for s in digits.SPLITS}


def test_split_sizes_and_stratification(arrays, sk):
  _, labels = sk
  train, test = arrays["8", "train"], arrays["8", "test"]
  assert (len(train["label"]), len(test["label"])) == (1497, 300)
  np.testing.assert_array_equal(np.bincount(test["label"], minlength=10), [30] * 10)
  np.testing.assert_array_equal(np.bincount(train["label"], minlength=10), np.bincount(labels) - 30)
  # the two splits partition load_digits' rows, each in index order, as split_indices says
  np.testing.assert_array_equal(np.sort(np.concatenate([train["index"], test["index"]])), np.arange(1797))
  for split, a in (("train", train), ("test", test)):
    np.testing.assert_array_equal(a["index"], digits.split_indices(split, labels))
    np.testing.assert_array_equal(a["label"], labels[a["index"]])
    assert a["label"].dtype == np.int32 and a["image"].dtype == np.uint8


def test_native_pixels_are_sklearn_scaled_exactly(arrays, sk):
  images, _ = sk
  expected = np.round(images * 255.0 / 16.0).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  for split in digits.SPLITS:
    a = arrays["8", split]
    chex.assert_shape(a["image"], (len(a["index"]), 8, 8, 1))
    np.testing.assert_array_equal(a["image"], expected[a["index"]])
  assert expected.max() == 255 and expected.min() == 0


@pytest.mark.parametrize("size", [16, 32])
def test_resized_configs_are_bilinear_of_the_same_digit(arrays, sk, size):
  images, _ = sk
  native = np.round(images * 255.0 / 16.0).astype(np.uint8)
  for split in digits.SPLITS:
    a, a8 = arrays[str(size), split], arrays["8", split]
    chex.assert_shape(a["image"], (len(a["index"]), size, size, 1))
    np.testing.assert_array_equal(a["index"], a8["index"])  # the same rows in every config
    np.testing.assert_array_equal(a["label"], a8["label"])
    for j in (0, 7, len(a["index"]) - 1):  # exactly PIL's bilinear resize of that row's 8x8 image
      want = np.asarray(Image.fromarray(native[a["index"][j]]).resize((size, size), Image.BILINEAR))
      np.testing.assert_array_equal(a["image"][j, ..., 0], want)
  # the documented convention: half-pixel bilinear interpolation, jax.image.resize "linear" up to rounding
  x = arrays[str(size), "test"]
  ref = jax.image.resize(native[x["index"]].astype(np.float32), (len(x["index"]), size, size), "linear")
  assert np.abs(x["image"][..., 0].astype(np.float32) - np.asarray(ref)).max() <= 1.0


def test_two_builds_are_identical(arrays, tmp_path):
  again = {s: digits.load_arrays(s, str(tmp_path), "8", keys=("image", "label", "index")) for s in digits.SPLITS}
  for s in digits.SPLITS:
    for k in ("image", "label", "index"):
      np.testing.assert_array_equal(again[s][k], arrays["8", s][k])


def test_pipeline_registration_and_configs(data_dir):
  assert pipeline.PROCEDURAL["digits"] is digits.Digits
  spec = pipeline.get_spec("digits", data_dir)
  assert (spec.num_classes, spec.image_shape, spec.num_train, spec.num_test) == (10, (8, 8, 1), 1497, 300)
  assert spec.eval_split == "test" and spec.default_augment == "none" and len(spec.mean) == 1
  assert pipeline.get_info("digits", data_dir).features["label"].names == list(digits.CLASS_NAMES)
  for size in (16, 32):
    spec = pipeline.get_spec(f"digits/{size}", data_dir)
    assert (spec.image_shape, spec.num_train, spec.num_test) == ((size, size, 1), 1497, 300)
  src = pipeline.get_source("digits/32", "test", data_dir)
  assert len(src) == 300 and src[0]["image"].shape == (32, 32, 1)
  raw = pipeline.get_source("digits", "train", data_dir)[3]
  assert raw["image"].shape == (8, 8, 1) and 0 <= raw["label"] < 10
  assert pipeline.get_spec("digits/8", data_dir).image_shape == (8, 8, 1)  # the default config, named


def test_errors_name_the_fix(data_dir, monkeypatch):
  with pytest.raises(ValueError, match=r"configs \['8', '16', '32'\]"):
    pipeline.get_spec("digits/64", data_dir)
  with pytest.raises(ValueError, match="no configs; use --dataset=shapes"):
    pipeline.get_spec("shapes/large", data_dir)
  with pytest.raises(ValueError, match="config='64'"):
    digits.get_source("train", data_dir, "64")
  with pytest.raises(ValueError, match="split='validation'"):
    digits.get_source("validation", data_dir)
  with pytest.raises(ValueError, match="no split 'validation'"):
    pipeline.get_source("digits", "validation", data_dir)
  with pytest.raises(ValueError, match="unknown keys"):
    digits.load_arrays("test", data_dir, keys=("image", "pixels"))
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import sklearn.datasets now fails
  with pytest.raises(ImportError, match=r"ships inside scikit-learn: pip install 'research\[examples\]'"):
    digits.load_sklearn_digits()


def test_mock_data_read_path(tmp_path):
  """Under ``tfds.testing.mock_data`` nothing is generated: the same readers serve random records of the
  builder's features (digits) or of a prepared TFDS dataset (mnist, through the generic path)."""
  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
    src = pipeline.get_source("digits", "train", str(tmp_path))
    assert len(src) == 6 and src[0]["image"].shape == (8, 8, 1) and src[0]["image"].dtype == np.uint8
    a = digits.load_arrays("test", str(tmp_path), "16", keys=("image", "label", "index"))
    chex.assert_shape(a["image"], (6, 16, 16, 1))
    assert np.all(np.diff(a["index"]) >= 0)  # index order
    spec = pipeline.get_spec("digits/32", str(tmp_path))
    assert spec.image_shape == (32, 32, 1) and spec.num_classes == 10
    m = pipeline.load_arrays("mnist", "train", str(tmp_path), keys=("image", "label"))
    chex.assert_shape(m["image"], (6, 28, 28, 1))
    assert m["label"].shape == (6,)
  assert not (tmp_path / "digits" / "8" / "1.0.0" / "dataset_info.json").exists()
