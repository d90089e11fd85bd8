"""``shapes_video``: renderer (actions, exact flow, masks), the TFDS builder (determinism, read path), mock_data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import video
from research.data import video_render as render
from research.data.scenes_render import SHAPE_NAMES

SMALL = video.CONFIGS["small"]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  """A data_dir holding ``shapes_video/small`` (24 train / 12 validation clips, < 2 s), built by get_source."""
  d = str(tmp_path_factory.mktemp("shapes_video"))
  video.get_source("train", d, "small")
  return d


@pytest.fixture(scope="module")
def clips():
  cfg = render.ClipConfig(image_size=48, num_frames=12)
  return [render.render_clip(render.clip_rng(7, i), cfg, action=i % 3) for i in range(9)]


def test_actions_are_periodic_multi_phase_and_distinct():
  for name, act in video.VIDEO_ACTIONS.items():
    assert 2 <= len(act.phases) <= 4 and len(set(act.phases)) == len(act.phases)
    np.testing.assert_allclose(act.pose(0.0), act.pose(1.0), atol=1e-12)  # periodic
    np.testing.assert_allclose(act.pose(0.3), act.pose(2.3), atol=1e-12)
    # continuous: small phase steps, small pose steps
    grid = np.linspace(0, 1, 2001)
    assert np.abs(np.diff(act.pose(grid), axis=0)).max() < 0.02, name
    labels = act.phase_label(grid[:-1])
    np.testing.assert_array_equal(np.unique(labels), np.arange(len(act.phases)))
    assert (np.diff(labels) >= 0).all()  # phase labels follow the phase order
    # the middles of different phases are different poses (a loop, not a back-and-forth)
    mids = act.pose((act.boundaries[:-1] + act.boundaries[1:]) / 2)
    d = np.abs(mids[:, None] - mids[None]).sum(-1)
    assert d[~np.eye(len(mids), dtype=bool)].min() > 0.3, name
  with pytest.raises(ValueError, match="periodic"):
    render.Action("bad", ("a", "b"), ((0.0, (0, 0, 0, 1, 1)), (0.5, (1, 0, 0, 1, 1)), (1.0, (2, 0, 0, 1, 1))))


def test_clip_fields_phase_and_masks(clips):
  for c in clips:
    t, h, w = c.instance.shape
    assert c.frames.shape == (t, h, w, 3) and c.frames.dtype == np.uint8
    assert c.flow.shape == (t, h, w, 2) and c.flow.dtype == np.float32
    act = video.VIDEO_ACTIONS[video.ACTION_NAMES[c.action]]
    want = np.mod(c.start_phase + c.rate * np.arange(t), 1.0)
    np.testing.assert_allclose(c.phase, want, atol=1e-6)
    np.testing.assert_array_equal(c.phase_label, act.phase_label(want))
    assert ((c.phase >= 0) & (c.phase < 1)).all()
    # masks: the actor (instance 1) is visible in every frame; semantic = shape class + 1 of the instance
    assert ((c.instance == 1).sum(axis=(1, 2)) > 10).all()
    lut = np.concatenate([[0], c.labels + 1])
    np.testing.assert_array_equal(c.semantic, lut[c.instance])
    assert c.instance.max() <= len(c.labels)
    assert SHAPE_NAMES[c.labels[0]] in render.ACTOR_SHAPES
    # background: no flow; static background pixels identical across frames
    np.testing.assert_array_equal(c.flow[c.instance == 0], 0.0)
    bg = (c.instance == 0).all(axis=0)
    assert (c.frames[:, bg] == c.frames[:1, bg]).all()
    assert c.frames[0][bg].std() > 3  # textured


def test_flow_warps_frame_t_onto_frame_t_plus_1(clips):
  """Sampling frame t+1 at x + flow_t(x) reproduces frame t(x) on the actor's pixels whose destination lies
  inside the actor at t+1 (the texture is linear in the object's frame, so bilinear sampling is exact up to uint8
  rounding); a wrong flow (zero, negated, half) does not."""
  errs, errs_zero, errs_neg, n_checked, hits = [], [], [], 0, []
  for c in clips:
    t_count, h, w = c.instance.shape
    for t in range(t_count - 1):
      ys, xs = np.nonzero(c.instance[t] == 1)
      for scale, store in ((1.0, errs), (0.0, errs_zero), (-1.0, errs_neg)):
        x = xs + 0.5 + scale * c.flow[t, ys, xs, 0]
        y = ys + 0.5 + scale * c.flow[t, ys, xs, 1]
        val, inside = render.bilinear_sample(c.frames[t + 1], x, y)
        x0, y0 = np.floor(x - 0.5).astype(int), np.floor(y - 0.5).astype(int)
        ok = inside.copy()
        for dy in (0, 1):
          for dx in (0, 1):
            ok &= c.instance[t + 1][np.clip(y0 + dy, 0, h - 1), np.clip(x0 + dx, 0, w - 1)] == 1
        if scale == 1.0:
          n_checked += ok.sum()
          # the mask moves with the flow: the nearest pixel to x + flow shows the actor at t+1
          xi, yi = np.floor(x).astype(int), np.floor(y).astype(int)
          inb = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
          hits.append(c.instance[t + 1][yi[inb], xi[inb]] == 1)
        if ok.any():
          store.append(np.abs(val[ok] - c.frames[t][ys[ok], xs[ok]]).max(axis=-1))
  errs = np.concatenate(errs)
  assert n_checked > 2000 and np.concatenate(hits).mean() > 0.9  # misses: boundary pixels only
  assert errs.max() <= 1.01  # two uint8 roundings
  moving = np.concatenate(errs_zero)
  assert np.mean(moving > 1.01) > 0.3 and np.mean(np.concatenate(errs_neg) > 1.01) > 0.3


def test_flow_equals_affine_motion_of_pixels(clips):
  c = clips[1]
  t = 3
  for k in range(len(c.labels)):
    ys, xs = np.nonzero(c.instance[t] == k + 1)
    if not len(ys):
      continue
    a, b = c.affine[t, k, :, :2], c.affine[t, k, :, 2]
    a2, b2 = c.affine[t + 1, k, :, :2], c.affine[t + 1, k, :, 2]
    p = np.stack([xs + 0.5, ys + 0.5], -1)
    u = (p - b) @ np.linalg.inv(a).T
    np.testing.assert_allclose(c.flow[t, ys, xs], u @ a2.T + b2 - p, atol=1e-4)


def test_renderer_deterministic_and_config_checks():
  cfg = render.ClipConfig(image_size=32, num_frames=6)
  a = render.render_clip(render.clip_rng(1, 2), cfg)
  b = render.render_clip(render.clip_rng(1, 2), cfg)
  for f in ("frames", "instance", "flow", "phase"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  c = render.render_clip(render.clip_rng(1, 3), cfg)
  assert not np.array_equal(a.frames, c.frames)
  with pytest.raises(ValueError, match="num_frames"):
    render.ClipConfig(num_frames=1)
  with pytest.raises(ValueError, match="cycles"):
    render.ClipConfig(cycles=(2.0, 1.0))
  with pytest.raises(ValueError, match="action"):
    render.render_clip(render.clip_rng(0, 0), cfg, action=7)
  one_pass = video.CONFIGS["tcc32"].clip_config()
  for i in range(6):  # tcc32: one monotone pass, phase never wraps
    clip = video.render_split_clip("validation", i, one_pass)
    assert (np.diff(clip.phase) > 0).all() and clip.phase[0] < 0.08


def test_builder_splits_determinism_and_record_contents(small_dir):
  info = video.builder("small", small_dir).info
  assert {k: v.num_examples for k, v in info.splits.items()} == {"train": SMALL.num_train,
                                                                  "validation": SMALL.num_validation}
  assert info.features["action"].names == list(video.ACTION_NAMES)
  src = video.get_source("validation", small_dir, "small")
  records = {int(r["video/id"]): r for r in (src[i] for i in range(len(src)))}
  assert sorted(records) == list(range(1, SMALL.num_validation + 1))
  clip_cfg = SMALL.clip_config()
  for vid in (1, 5, SMALL.num_validation):
    ex = video.to_video_example(records[vid])
    clip = video.render_split_clip("validation", vid - 1, clip_cfg)
    for k in ("frames", "instance", "semantic", "flow", "phase", "phase_label"):
      np.testing.assert_array_equal(ex[k], getattr(clip, k), err_msg=k)
    assert int(ex["action"]) == (vid - 1) % 3 == clip.action
    objects = records[vid]["objects"]
    assert list(objects["is_actor"]) == [True] + [False] * (len(clip.labels) - 1)
    assert list(objects["label"]) == clip.labels.tolist()
  # generation is deterministic: the same bytes twice
  b = video.ShapesVideo(config="small", data_dir=small_dir)
  first = [r for _, r in zip(range(2), b._generate_examples("train", 2))]
  again = [r for _, r in zip(range(2), b._generate_examples("train", 2))]
  for (ka, ra), (kb, rb) in zip(first, again):
    assert ka == kb and ra["video"] == rb["video"] and np.array_equal(ra["flow"], rb["flow"])


def test_load_clips_filters_actions_in_id_order(small_dir):
  got = video.load_clips("train", small_dir, "small", actions=["wave"])
  assert (got["action"] == video.ACTION_NAMES.index("wave")).all()
  assert (np.diff(got["video_id"]) > 0).all() and len(got["video_id"]) == SMALL.num_train // 3
  assert got["frames"].shape == (SMALL.num_train // 3, SMALL.num_frames, 32, 32, 3)
  with pytest.raises(ValueError, match="unknown"):
    video.load_clips("train", small_dir, "small", actions=["dance"])
  with pytest.raises(ValueError, match="config"):
    video.get_source("train", small_dir, "huge")
  with pytest.raises(ValueError, match="split"):
    video.get_source("test", small_dir, "small")


def test_mock_data_read_path(tmp_path):
  """``tfds.testing.mock_data`` serves random records of the builder's features; the to-example helper turns them
  into arrays of the documented shapes without anything being generated."""
  with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
    src = video.get_source("train", str(tmp_path), "small")
    ex = video.to_video_example(src[0])
  t, s = SMALL.num_frames, SMALL.image_size
  assert ex["frames"].shape == (t, s, s, 3) and ex["frames"].dtype == np.uint8
  assert ex["instance"].shape == ex["semantic"].shape == (t, s, s)
  assert ex["flow"].shape == (t, s, s, 2) and ex["phase"].shape == ex["phase_label"].shape == (t,)
  assert not (tmp_path / "shapes_video" / "small" / "1.0.0" / "dataset_info.json").exists()
