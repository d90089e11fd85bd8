"""One-shot segmentation (OSLSM, Shaban et al. 2017): episodes, model, baselines, metric vs numpy, tasks on the loop,
config errors, the experiment's smoke settings (in-process; the CLI flagfile run is -m slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data.memory import ArrayBatches
from research.models.segmentation import one_shot as model_lib
from research.train import dense_metrics
from research.train import loop
from research.train import one_shot as osl
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "one_shot_segmentation_smoke.flags")
TINY = dict(widths=(4, 8), cond_widths=(4, 8), convs_per_stage=1, feature_dim=8, cond_hidden=8, groups=4)


def _synthetic_scenes(n=24, size=16, num_classes=6, seed=0):
  """uint8 images [n, size, size, 3] and semantic maps with 1-3 axis-aligned rectangles of random classes each."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
  sem = np.zeros((n, size, size), np.uint8)
  for i in range(n):
    for _ in range(rng.integers(1, 4)):
      y, x = rng.integers(0, size - 4, 2)
      h, w = rng.integers(3, 8, 2)
      sem[i, y:y + h, x:x + w] = rng.integers(0, num_classes) + 1
  return images, sem


# --------------------------------------------------------------------------------------------- folds, data


def test_fold_classes_and_bad_fold_errors():
  assert osl.fold_classes(0, 4, 12) == ((3, 4, 5, 6, 7, 8, 9, 10, 11), (0, 1, 2))
  train, test = osl.fold_classes(3, 4, 12)
  assert test == (9, 10, 11) and set(train) | set(test) == set(range(12)) and not set(train) & set(test)
  with pytest.raises(ValueError, match=r"--fold=4 is not a fold index: choose one in \[0, 3\]"):
    osl.fold_classes(4, 4, 12)
  with pytest.raises(ValueError, match="--fold=-1"):
    osl.fold_classes(-1, 4, 12)
  with pytest.raises(ValueError, match="--num_folds=5 must be >= 2 and divide the 12 classes"):
    osl.fold_classes(0, 5, 12)


def test_downsample_matches_numpy_blocks():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
  sem = rng.integers(0, 4, (3, 8, 8)).astype(np.uint8)
  sem[0, :2, :2] = [[1, 2], [2, 1]]  # a tie: 2 x label 1, 2 x label 2 -> the lower label
  img, lab = osl.downsample_scenes(images, sem, 4)
  chex.assert_shape([img, lab], [(3, 4, 4, 3), (3, 4, 4)])
  for n in range(3):
    for i in range(4):
      for j in range(4):
        blk = images[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(4, 3).astype(np.float64)
        np.testing.assert_array_equal(img[n, i, j], np.rint(blk.mean(0)))
        counts = np.bincount(sem[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel(), minlength=4)
        assert lab[n, i, j] == np.argmax(counts)
  assert lab[0, 0, 0] == 1
  with pytest.raises(ValueError, match="--image_size=3 must divide"):
    osl.downsample_scenes(images, sem, 3)


def test_episode_sampler_contents_unseen_classes_and_determinism():
  images, sem = _synthetic_scenes()
  train_classes, test_classes = (2, 3, 4, 5), (0, 1)
  sampler = osl.EpisodeSampler(images, sem, train_classes, global_batch_size=8, seed=3, num_classes=6, min_pixels=4)
  again = osl.EpisodeSampler(images, sem, train_classes, global_batch_size=8, seed=3, num_classes=6, min_pixels=4)
  other = osl.EpisodeSampler(images, sem, train_classes, global_batch_size=8, seed=4, num_classes=6, min_pixels=4)
  seen = set()
  for step in range(25):
    batch, twin = next(sampler), next(again)
    chex.assert_trees_all_equal(batch, twin)  # same (seed, step) -> the same episodes
    chex.assert_shape([batch["support_image"], batch["support_mask"], batch["query_mask"], batch["class_id"]],
                      [(8, 16, 16, 3), (8, 16, 16), (8, 16, 16), (8,)])
    cls, sup, qry = sampler.indices(step)
    assert np.all(sup != qry)  # support and query are different images
    np.testing.assert_array_equal(batch["class_id"], cls)
    np.testing.assert_array_equal(batch["support_image"], images[sup])
    np.testing.assert_array_equal(batch["query_mask"], sem[qry] == cls[:, None, None] + 1)
    assert batch["support_mask"].sum(axis=(1, 2)).min() >= 4 and batch["query_mask"].sum(axis=(1, 2)).min() >= 4
    assert not set(batch["class_id"].tolist()) & set(test_classes)  # unseen classes are never the target
    seen |= set(batch["class_id"].tolist())
  assert seen == set(train_classes)
  assert any(not np.array_equal(next(other)["class_id"], next(sampler)["class_id"]) for _ in range(5))


def test_episode_sampler_state_save_restore():
  images, sem = _synthetic_scenes()
  kw = dict(global_batch_size=4, seed=0, num_classes=6, min_pixels=4)
  a = osl.EpisodeSampler(images, sem, (2, 3, 4), **kw)
  for _ in range(3):
    next(a)
  state = a.get_state()
  want = [next(a) for _ in range(2)]
  b = osl.EpisodeSampler(images, sem, (2, 3, 4), **kw)
  b.set_state(state)
  chex.assert_trees_all_equal([next(b) for _ in range(2)], want)
  assert json.loads(state) == {"step": 3, "seed": 0, "global_batch_size": 4}
  with pytest.raises(ValueError, match="another seed or batch size"):
    osl.EpisodeSampler(images, sem, (2, 3, 4), **{**kw, "seed": 1}).set_state(state)


def test_pools_need_two_images_per_class():
  images, sem = _synthetic_scenes()
  with pytest.raises(ValueError, match="have < 2 images with >= 10000 pixels"):
    osl.EpisodeSampler(images, sem, (2,), global_batch_size=4, seed=0, num_classes=6, min_pixels=10_000)


def test_test_episodes_fixed_balanced_and_padded_batches():
  images, sem = _synthetic_scenes()
  ep = osl.make_test_episodes(sem, (0, 1), num_episodes=7, seed=5, num_classes=6, min_pixels=4)
  chex.assert_trees_all_equal(ep, osl.make_test_episodes(sem, (0, 1), num_episodes=7, seed=5, num_classes=6,
                                                         min_pixels=4))
  assert ep["class_id"].tolist() == [0, 1, 0, 1, 0, 1, 0] and np.all(ep["support"] != ep["query"])
  pix = osl.class_pixels(sem, 6)
  assert np.all(pix[ep["support"], ep["class_id"]] >= 4) and np.all(pix[ep["query"], ep["class_id"]] >= 4)
  batches = list(osl.episode_batches(images, sem, ep, global_batch_size=4)())
  assert [b["valid"].tolist() for b in batches] == [[1, 1, 1, 1], [1, 1, 1, 0]]
  np.testing.assert_array_equal(batches[1]["query_image"][2], images[ep["query"][6]])
  with pytest.raises(ValueError, match="--num_test_episodes must be positive"):
    osl.make_test_episodes(sem, (0, 1), num_episodes=0, seed=5, num_classes=6)


def test_semantic_labels_map_unseen_classes_to_background():
  t = osl.SemanticLabels((3, 5), 6)
  sem = np.array([[[0, 1, 4, 6, 2]]], np.uint8)  # background, class 0, class 3, class 5, class 1
  out = t({"image": np.zeros((1, 1, 5, 3), np.uint8), "semantic": sem}, np.random.default_rng(0))
  assert out["labels"].tolist() == [[[0, 0, 1, 2, 0]]]


# --------------------------------------------------------------------------------------------- model


def _np_bilinear_up(x, f):
  """float64 loop: output pixel o samples (o + 0.5) / f - 0.5 clamped to [0, n - 1] on each axis."""
  b, h, w = x.shape
  out = np.zeros((b, h * f, w * f))
  for i in range(h * f):
    for j in range(w * f):
      y, xx = np.clip((i + 0.5) / f - 0.5, 0, h - 1), np.clip((j + 0.5) / f - 0.5, 0, w - 1)
      y0, x0 = int(np.floor(y)), int(np.floor(xx))
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      dy, dx = y - y0, xx - x0
      out[:, i, j] = ((1 - dy) * (1 - dx) * x[:, y0, x0] + (1 - dy) * dx * x[:, y0, x1] + dy * (1 - dx) * x[:, y1, x0]
                      + dy * dx * x[:, y1, x1])
  return out


def test_upsample_bilinear_matches_numpy_loop():
  x = np.random.default_rng(0).normal(size=(2, 3, 5))
  for f in (1, 2, 4):
    np.testing.assert_allclose(np.asarray(model_lib.upsample_bilinear(jnp.asarray(x, jnp.float32), f)),
                               _np_bilinear_up(x, f), rtol=1e-5, atol=1e-5)
  x4 = np.random.default_rng(1).normal(size=(1, 3, 3, 2))
  got = np.asarray(model_lib.upsample_bilinear(jnp.asarray(x4, jnp.float32), 4))
  for c in range(2):
    np.testing.assert_allclose(got[..., c], _np_bilinear_up(x4[..., c], 4), rtol=1e-5, atol=1e-5)


def _model_inputs(b=2, s=16, seed=0):
  rng = np.random.default_rng(seed)
  img = jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32)
  mask = np.zeros((b, s, s), np.float32)
  mask[:, 4:10, 3:12] = 1
  return img, jnp.asarray(mask), jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32)


def test_model_shapes_registry_and_segmenter():
  from research.models import registry
  assert "oslsm" in registry.names("dense")
  net = registry.create("oslsm", **TINY)
  assert isinstance(net, model_lib.OneShotSegmenter) and net.stride == 2
  sup, mask, qry = _model_inputs()
  params = net.init(jax.random.key(0), sup, mask, qry, train=False)
  logits = net.apply(params, sup, mask, qry, train=True)
  w, b = net.apply(params, sup, mask, method=net.condition)
  feats = net.apply(params, qry, method=net.dense_features)
  chex.assert_shape([logits, w, b, feats], [(2, 16, 16), (2, 8), (2,), (2, 8, 8, 8)])
  chex.assert_tree_all_finite(logits)
  # the logits are the upsampled <w, f(x)> + b of the two branches
  want = model_lib.upsample_bilinear(jnp.einsum("bhwd,bd->bhw", feats, w) + b[:, None, None], 2)
  chex.assert_trees_all_close(logits, want, rtol=1e-5, atol=1e-5)
  fcn = model_lib.FCNSegmenter(num_classes=5, **{k: v for k, v in TINY.items() if "cond" not in k})
  fp = fcn.init(jax.random.key(1), qry, train=False)
  chex.assert_shape(fcn.apply(fp, qry, train=False), (2, 16, 16, 5))
  # same segmentation-branch parameter tree: the segmenter's features could initialise OSLSM's
  chex.assert_trees_all_equal_shapes(fp["params"]["features"], params["params"]["features"])
  with pytest.raises(ValueError, match="multiple of the stride 2"):
    net.apply(params, sup[:, :15, :15], mask[:, :15, :15], qry[:, :15, :15], train=False)
  with pytest.raises(ValueError, match="support_mask must be"):
    net.apply(params, sup, mask[:, :8], qry, train=False)


def test_theta_depends_on_the_support():
  net = model_lib.OneShotSegmenter(**TINY)
  sup, mask, qry = _model_inputs()
  params = net.init(jax.random.key(0), sup, mask, qry, train=False)
  w1, b1 = net.apply(params, sup, mask, method=net.condition)
  other = jnp.zeros_like(mask).at[:, 10:15, 0:6].set(1.0)
  w2, b2 = net.apply(params, sup, other, method=net.condition)
  w3, _ = net.apply(params, sup[::-1], mask, method=net.condition)  # another support image, same mask
  assert float(jnp.max(jnp.abs(w1 - w2))) > 1e-4 and float(jnp.max(jnp.abs(b1 - b2))) > 1e-6
  assert float(jnp.max(jnp.abs(w1 - w3))) > 1e-4
  l1 = net.apply(params, sup, mask, qry, train=False)
  l2 = net.apply(params, sup, other, qry, train=False)
  assert float(jnp.max(jnp.abs(l1 - l2))) > 1e-4  # the same query gets another mask from another support
  chex.assert_trees_all_close(net.apply(params, sup, mask, method=net.condition), (w1, b1))
  # only the masked image reaches g: changing pixels outside the mask changes nothing
  outside = sup + 5.0 * (1 - mask)[..., None]
  chex.assert_trees_all_close(net.apply(params, outside, mask, method=net.condition), (w1, b1), rtol=1e-6)


def test_weight_hashing_maps_buckets_with_signs():
  net = model_lib.OneShotSegmenter(**TINY, hash_dim=5, hash_seed=2)
  plain = model_lib.OneShotSegmenter(**TINY)
  sup, mask, qry = _model_inputs()
  params = net.init(jax.random.key(0), sup, mask, qry, train=False)
  w, b = net.apply(params, sup, mask, method=net.condition)
  z = net.apply(params, net.apply(params, sup, mask, method=net.support_input), train=False,
                method=lambda m, x, train: m.conditioning(x, train=train))
  bucket, sign = model_lib.hashing_table(9, 5, 2)
  assert bucket.min() >= 0 and bucket.max() < 5 and set(np.unique(sign)) <= {-1.0, 1.0}
  theta = np.asarray(z)[:, bucket] * sign
  np.testing.assert_allclose(np.asarray(w), theta[:, :-1], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(b), theta[:, -1], rtol=1e-6)
  assert params["params"]["conditioning"]["theta"]["kernel"].shape[-1] == 5
  assert plain.init(jax.random.key(0), sup, mask, qry, train=False)["params"]["conditioning"]["theta"][
      "kernel"].shape[-1] == 9


# --------------------------------------------------------------------------------------------- metric


def test_episode_iou_matches_numpy_and_confusion_matrix():
  rng = np.random.default_rng(0)
  b, k = 11, 3
  pred = rng.random((b, 6, 7)) > 0.6
  gt = rng.random((b, 6, 7)) > 0.7
  cls = rng.choice([4, 7, 9], b)
  valid = (np.arange(b) < 9).astype(np.float32)  # two padding rows
  sums = osl.episode_iou_sums(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(cls), jnp.asarray(valid), (4, 7, 9))
  scores = osl.episode_scores({kk: np.asarray(v) for kk, v in sums.items()}, ("a", "b", "c"))
  ious, tot = [], np.zeros(4)
  for j, c in enumerate((4, 7, 9)):
    sel = (cls == c) & (valid > 0)
    tp, fp = np.sum(pred[sel] & gt[sel]), np.sum(pred[sel] & ~gt[sel])
    fn, tn = np.sum(~pred[sel] & gt[sel]), np.sum(~pred[sel] & ~gt[sel])
    tot += [tp, fp, fn, tn]
    assert float(sums["episodes"][j]) == sel.sum()
    ious.append(tp / (tp + fp + fn))
    assert scores[f"iou/{'abc'[j]}"] == pytest.approx(ious[-1], rel=1e-12)
    # the same number from the shared dense metric: a 2-class confusion matrix over the class's episodes
    conf = dense_metrics.confusion_matrix(jnp.asarray(pred[sel]), jnp.asarray(gt[sel]), 2)
    assert dense_metrics.segmentation_scores(np.asarray(conf))["iou/1"] == pytest.approx(ious[-1], rel=1e-6)
  assert scores["miou"] == pytest.approx(np.mean(ious), rel=1e-12)
  tp, fp, fn, tn = tot
  assert scores["fb_iou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2, rel=1e-12)
  assert scores["episodes"] == 9
  assert k == len(ious)


def test_all_foreground_reference_equals_the_metric_of_an_all_ones_prediction():
  from research.methods.one_shot_experiment import all_foreground_miou
  images, sem = _synthetic_scenes()
  ep = osl.make_test_episodes(sem, (0, 1), num_episodes=8, seed=1, num_classes=6, min_pixels=4)
  batch = next(iter(osl.episode_batches(images, sem, ep, global_batch_size=8)()))
  sums = osl.episode_iou_sums(jnp.ones((8, 16, 16), bool), jnp.asarray(batch["query_mask"]),
                              jnp.asarray(batch["class_id"]), jnp.asarray(batch["valid"]), (0, 1))
  assert all_foreground_miou(sem, ep, (0, 1)) == pytest.approx(osl.episode_scores(sums, ("a", "b"))["miou"],
                                                               rel=1e-6)


# --------------------------------------------------------------------------------------------- baselines


def test_nearest_neighbor_scores_match_numpy():
  rng = np.random.default_rng(0)
  sf, qf = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
  frac = rng.random((2, 3, 4))
  got = np.asarray(osl.nearest_neighbor_scores(jnp.asarray(sf), jnp.asarray(frac), jnp.asarray(qf)))
  for e in range(2):
    s = sf[e].reshape(-1, 5)
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    for i in range(3):
      for j in range(4):
        q = qf[e, i, j] / np.linalg.norm(qf[e, i, j])
        assert got[e, i, j] == pytest.approx(frac[e].reshape(-1)[np.argmax(s @ q)], rel=1e-6)
  mask = np.zeros((1, 8, 8))
  mask[0, :4, :2] = 1
  np.testing.assert_allclose(np.asarray(osl.cell_fractions(jnp.asarray(mask), 4)), [[[0.5, 0], [0, 0]]])


def test_support_logreg_separates_a_separable_support():
  rng = np.random.default_rng(0)
  y = (rng.random((1, 6, 6)) > 0.7).astype(np.float32)
  feats = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
  feats[..., 0] += 4.0 * (2 * y - 1)  # feature 0 separates the classes
  p = osl.fit_support_logreg(jnp.asarray(feats), jnp.asarray(y), steps=200)
  pred = np.asarray(osl.logreg_logits(p, jnp.asarray(feats))) > 0
  np.testing.assert_array_equal(pred, y > 0.5)
  assert float(p["w"][0, 0]) > 2 * float(jnp.max(jnp.abs(p["w"][0, 1:])))


def test_nn1_baseline_is_perfect_when_query_equals_support():
  """Hand-made case: the query IS the support image (random texture, block-aligned rectangles): each query cell's
  nearest support cell is itself, so 1-NN reproduces the support mask exactly (IoU 1). (LogReg fits a linear
  boundary to 8 random features here, which need not separate the cells: it is checked on a separable support in
  ``test_support_logreg_separates_a_separable_support``.)"""
  task = osl.SegmenterBaselineTask(train_classes=(1, 2), test_classes=(0,), class_names=("a",),
                                   model_kwargs={k: v for k, v in TINY.items() if "cond" not in k})
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
  mask = np.zeros((2, 16, 16), np.uint8)
  mask[0, 4:10, 2:8] = 1
  mask[1, 6:14, 8:16] = 1
  batch = {"support_image": img, "support_mask": mask, "query_image": img, "query_mask": mask,
           "class_id": np.zeros(2, np.int32), "valid": np.ones(2, np.float32)}
  params, _ = task.init(jax.random.key(0), {"image": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8)})
  preds = task.baseline_predictions(params, {k: jnp.asarray(v) for k, v in batch.items()})
  assert set(preds) == {"nn1", "logreg"}
  sums = osl.episode_iou_sums(preds["nn1"], jnp.asarray(mask), jnp.zeros(2, jnp.int32), jnp.ones(2), (0,))
  assert osl.episode_scores(sums, ("a",))["miou"] == 1.0
  np.testing.assert_array_equal(np.asarray(preds["nn1"]), mask > 0)


def _episode_batch(n=2, s=16):
  images, sem = _synthetic_scenes(n=24, size=s)
  return osl.EpisodeSampler(images, sem, (2, 3, 4), global_batch_size=n, seed=0, num_classes=6, min_pixels=4).__next__()


def test_init_features_from_the_segmenter_and_mismatch_error():
  seg_kw = {k: v for k, v in TINY.items() if "cond" not in k}
  seg = osl.SegmenterBaselineTask(train_classes=(1, 2), test_classes=(0,), class_names=("a",), model_kwargs=seg_kw)
  seg_params, _ = seg.init(jax.random.key(3), {"image": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8)})
  batch = _episode_batch()
  task = osl.OneShotTask(test_classes=(0,), class_names=("a",), model_kwargs=TINY,
                         init_features=seg_params["model"]["features"])
  params, _ = task.init(jax.random.key(0), batch)
  chex.assert_trees_all_equal(params["model"]["features"], seg_params["model"]["features"])
  fresh, _ = osl.OneShotTask(test_classes=(0,), class_names=("a",), model_kwargs=TINY).init(jax.random.key(0), batch)
  chex.assert_trees_all_equal(params["model"]["conditioning"], fresh["model"]["conditioning"])
  wide = osl.OneShotTask(test_classes=(0,), class_names=("a",), model_kwargs={**TINY, "feature_dim": 4},
                         init_features=seg_params["model"]["features"])
  with pytest.raises(ValueError, match="init_features do not match"):
    wide.init(jax.random.key(0), batch)


def test_pos_weight_scales_the_foreground_terms():
  batch = {k: jnp.asarray(v) for k, v in _episode_batch().items()}
  task = osl.OneShotTask(test_classes=(0,), class_names=("a",), model_kwargs=TINY)
  params, _ = task.init(jax.random.key(0), batch)
  logits = np.asarray(task.logits(params, batch, train=False), np.float64)
  y = np.asarray(batch["query_mask"], np.float64)
  per = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))  # float64 logistic loss
  for pw in (1.0, 3.0):
    t = osl.OneShotTask(test_classes=(0,), class_names=("a",), model_kwargs=TINY, pos_weight=pw)
    loss, _ = t.loss(params, {}, batch, None, train=False)
    assert float(loss) == pytest.approx(np.mean(np.where(y > 0, pw, 1.0) * per), rel=1e-5)


# --------------------------------------------------------------------------------------------- tasks on the loop


def _loop_config(steps):
  return loop.LoopConfig(num_steps=steps, eval_every=0, checkpoint_every=0, log_every=1, progress_bar=False,
                         tensorboard=False)


def test_tasks_train_through_the_loop_with_finite_loss(tmp_path):
  images, sem = _synthetic_scenes(n=24)
  train_classes, test_classes = (2, 3, 4, 5), (0, 1)
  n = jax.device_count()
  episodes = osl.make_test_episodes(sem, test_classes, num_episodes=6, seed=0, num_classes=6, min_pixels=4)
  evals = osl.episode_batches(images, sem, episodes, global_batch_size=n)
  task = osl.OneShotTask(test_classes=test_classes, class_names=("c0", "c1"), model_kwargs=TINY, num_steps=3)
  sampler = osl.EpisodeSampler(images, sem, train_classes, global_batch_size=n, seed=0, num_classes=6, min_pixels=4)
  state, res = loop.train(task, sampler, config=_loop_config(3), mesh=task_lib.make_mesh(), workdir=str(tmp_path / "o"),
                          eval_data=evals)
  assert res["step"] == 3 and np.isfinite(res["final_train_loss"]) and res["eval_episodes"] == 6
  assert 0 <= res["eval_miou"] <= 1 and np.isfinite(res["eval_fb_iou"])
  rows = [json.loads(line) for line in open(tmp_path / "o" / "metrics.jsonl")]
  assert all(np.isfinite(r["bce"]) for r in rows if "bce" in r)
  seg = osl.SegmenterBaselineTask(train_classes=train_classes, test_classes=test_classes, class_names=("c0", "c1"),
                                  model_kwargs={k: v for k, v in TINY.items() if "cond" not in k}, num_steps=2,
                                  logreg_steps=5)
  batches = ArrayBatches({"image": images, "semantic": sem}, global_batch_size=n, seed=0,
                         transform=osl.SemanticLabels(train_classes, 6))
  _, res = loop.train(seg, batches, config=_loop_config(2), mesh=task_lib.make_mesh(), workdir=None, eval_data=evals)
  assert np.isfinite(res["final_train_loss"]) and res["eval_nn1/episodes"] == res["eval_logreg/episodes"] == 6
  assert all(0 <= res[f"eval_{m}/miou"] <= 1 for m in ("nn1", "logreg"))


# --------------------------------------------------------------------------------------------- config, experiment


@pytest.mark.parametrize("kwargs, message", [
    (dict(folds=(4,)), r"--fold=4 is not a fold index: choose one in \[0, 3\]"),
    (dict(folds=(0, 0)), "distinct fold indices"),
    (dict(num_folds=5), "--num_folds=5 must be >= 2 and divide the 12 classes"),
    (dict(num_steps=0), "--num_steps must be positive"),
    (dict(seeds=()), "--seeds must list distinct seeds"),
    (dict(image_size=30), "--image_size=30 must be a multiple of the feature stride 4"),
    (dict(hash_dim=-1), "--hash_dim must be >= 0"),
    (dict(widths=()), "--widths"),
    (dict(pos_weight=0.0), "--pos_weight must be positive"),
])
def test_config_bad_values(kwargs, message):
  from research.methods.one_shot_experiment import OneShotConfig
  with pytest.raises(ValueError, match=message):
    OneShotConfig(**kwargs)


def test_cli_bad_fold_is_one_clear_error(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.one_shot_segmentation", "--fold=7", "--data_dir=/none",
                         f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and "error: --fold=7 is not a fold index: choose one in [0, 3]" in proc.stderr, \
      proc.stderr[-2000:]


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
  """A data_dir with a small ``shapes_scenes`` (120 train / 40 validation scenes at 128 px), built once."""
  from research import data
  from research.data import scenes
  d = str(tmp_path_factory.mktemp("one_shot_scenes"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(scenes, "NUM_TRAIN", 120)
    mp.setattr(scenes, "NUM_VALIDATION", 40)
    data.get_source("shapes_scenes", "train", d)
  return d


def _smoke_config(data_dir, **kw):
  """The settings of the smoke flagfile (batch sizes: a multiple of this session's devices)."""
  from research.methods.one_shot_experiment import OneShotConfig
  n = jax.device_count()
  base = dict(data_dir=data_dir, image_size=32, folds=(1,), seeds=(0,), num_steps=3, batch_size=n, widths=(8, 16),
              cond_widths=(8, 16), feature_dim=16, cond_hidden=16, min_pixels=4, num_test_episodes=12,
              eval_batch_size=2 * n, logreg_steps=10)
  return OneShotConfig(**{**base, **kw})


def test_smoke_settings_run_the_experiment_in_process(tmp_path, scenes_dir):
  """The default suite's smoke: OSLSM and the baseline segmenter train on the loop, every score is finite, the
  summary (both claims, per-class IoU of the fold's unseen classes) is written; a re-run reuses finished runs."""
  from research.methods import one_shot_experiment
  summary = one_shot_experiment.run(_smoke_config(scenes_dir), str(tmp_path))
  fold = summary["folds"]["1"]
  assert fold["test_classes"] == ["ring", "star", "cross"] and fold["num_test_episodes"] == 12
  assert set(fold["table"]) == {"oslsm", "nn1", "logreg"}
  for row in fold["table"].values():
    assert all(np.isfinite(v[0]) and 0 <= v[0] <= 1 for v in row.values())
  assert set(summary["claims"]) >= {"oslsm_beats_nn1", "oslsm_beats_logreg"}
  assert 0 < fold["all_foreground_miou"] < 1
  assert json.loads((tmp_path / "fold1_oslsm_seed0" / "results.json").read_text())["step"] == 3
  assert "| method |" in (tmp_path / "summary.md").read_text()
  again = one_shot_experiment.run(_smoke_config(scenes_dir), str(tmp_path))
  assert again["folds"]["1"]["table"] == fold["table"]


@pytest.mark.slow  # ~12 s idle; kept runnable with -m slow
def test_exclude_unseen_images_drops_them(scenes_dir, tmp_path):
  from research.methods import one_shot_experiment
  cfg = _smoke_config(scenes_dir, exclude_unseen_images=True, baselines=False, num_steps=1, folds=(3,),
                      min_pixels=1)
  summary = one_shot_experiment.run(cfg, str(tmp_path))
  _, sem = one_shot_experiment.load_split("train", cfg)
  clean = osl.class_pixels(sem, 12)[:, 9:].sum(axis=1) == 0
  assert summary["folds"]["3"]["num_train_images"] == int(clean.sum()) < len(sem)
  assert summary["claims"] == {}


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path, scenes_dir):
  """The smoke flagfile end to end in a subprocess (1 device) on the small data_dir."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1 "
             + os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  proc = subprocess.run([sys.executable, "-m", "experiments.one_shot_segmentation", f"--flagfile={SMOKE}",
                         f"--data_dir={scenes_dir}", f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["folds"]["0"]["table"]) == {"oslsm", "nn1", "logreg"} and "| method |" in proc.stdout


def test_padded_eval_rows_cover_every_item_once_and_check_the_batch():
  from research.data.memory import padded_eval_rows
  out = list(padded_eval_rows(10, 4))
  rows = np.concatenate([r for r, _ in out])
  valid = np.concatenate([v for _, v in out])
  assert [len(r) for r, _ in out] == [4, 4, 4]
  np.testing.assert_array_equal(rows[valid > 0], np.arange(10))
  np.testing.assert_array_equal(valid, [1] * 10 + [0, 0])
  assert list(padded_eval_rows(0, 4)) == []
  with pytest.raises(ValueError, match="eval batch 0 must be positive"):
    padded_eval_rows(10, 0)
