"""``shapes_rgbd``: renderer (depth model, occlusion, edge alignment, textures), TFDS builder, degradation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import pipeline, rgbd
from research.data import rgbd_render as render
from research.data.scenes_render import SHAPE_NAMES

SMALL = rgbd.CONFIGS["small"]
DEFAULT = rgbd.CONFIGS["default"]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  """A data_dir holding ``shapes_rgbd/small`` (24 train / 12 validation scenes, ~1 s), built by get_source."""
  d = str(tmp_path_factory.mktemp("shapes_rgbd"))
  rgbd.get_source("train", d, "small")
  return d


@pytest.fixture(scope="module")
def scenes():
  cfg = DEFAULT.scene_config()
  return cfg, [render.render_scene(render.scene_rng(11, i), cfg) for i in range(60)]


def test_render_is_deterministic_and_seeded():
  cfg = SMALL.scene_config()
  a = render.render_scene(render.scene_rng(5, 3), cfg)
  b = render.render_scene(render.scene_rng(5, 3), cfg)
  c = render.render_scene(render.scene_rng(5, 4), cfg)
  for k in ("image", "depth", "instance", "semantic", "labels", "depths"):
    np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
  assert not np.array_equal(a.depth, c.depth)
  # the builder's scenes are the renderer's with the split seed; the splits differ
  t = rgbd.render_split_scene("train", 2, cfg)
  v = rgbd.render_split_scene("validation", 2, cfg)
  assert not np.array_equal(t.depth, v.depth)
  with pytest.raises(ValueError, match="splits"):
    rgbd.render_split_scene("test", 0, cfg)


def test_scene_fields_depth_ranges_and_masks(scenes):
  cfg, items = scenes
  spread = 0.2 * (cfg.object_depth[1] - cfg.object_depth[0]) / cfg.max_objects
  kinds = set()
  for s in items:
    h = w = cfg.image_size
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
    assert s.depth.shape == (h, w) and s.depth.dtype == np.float32
    n = len(s.labels)
    assert 1 <= n <= cfg.max_objects
    # every listed object is visible, ids are 1..N, semantic = class + 1 of the instance
    np.testing.assert_array_equal(np.unique(s.instance[s.instance > 0]), np.arange(1, n + 1))
    np.testing.assert_array_equal(s.semantic, np.concatenate([[0], s.labels + 1]).astype(np.uint8)[s.instance])
    assert s.semantic.max() <= len(SHAPE_NAMES)
    # depth in metres: each visible object pixel lies on its own surface (within spread of its centre depth) and
    # in front of the far wall; the wall stays within its range
    for k in range(n):
      zk = s.depth[s.instance == k + 1].astype(np.float64)
      assert np.all(np.abs(zk - s.depths[k]) <= spread + 1e-5)
      assert cfg.object_depth[0] <= s.depths[k] <= cfg.object_depth[1]
    wall = s.depth[s.instance == 0]
    if wall.size:
      assert wall.min() >= cfg.wall_depth[0] - cfg.wall_slope / 2 - 1e-5
      assert wall.max() <= cfg.wall_depth[1] + cfg.wall_slope / 2 + 1e-5
    kinds.update(render.SURFACES[i] for i in s.surfaces)
  assert kinds == set(render.SURFACES)


def test_occlusion_follows_depth_order(scenes):
  """Each pixel shows the NEAREST object whose full (amodal) mask covers it, the wall where none does (a z-buffer,
  whatever the drawing order); occluded objects are partly hidden in some scenes."""
  _, items = scenes
  occluded = 0
  for s in items:
    covering = s.amodal.astype(bool)  # [N, H, W]
    z = np.where(covering, s.depths[:, None, None].astype(np.float64), np.inf)
    want = np.where(covering.any(0), np.argmin(z, axis=0) + 1, 0)
    np.testing.assert_array_equal(s.instance, want)
    visible = np.stack([s.instance == k + 1 for k in range(len(s.labels))])
    occluded += int(np.sum(covering.sum(axis=(1, 2)) > visible.sum(axis=(1, 2))))
  assert occluded > 10


def test_depth_edges_are_exactly_the_instance_boundaries(scenes):
  cfg, items = scenes
  for s in items:
    np.testing.assert_array_equal(render.depth_edges(s.depth, cfg.edge_threshold), render.label_edges(s.instance))


def test_colour_edges_at_depth_edges_and_texture_without_depth_edges(scenes):
  """Depth edges are colour edges (objects contrast with the wall), and there is colour texture on smooth
  surfaces (the texture-copying trap): strong colour steps between pixels of the SAME surface."""
  cfg, items = scenes
  across, textured_pairs = [], 0
  for s in items:
    img = s.image.astype(np.float64)
    for axis in (0, 1):
      ia, ib = np.moveaxis(s.instance, axis, 0)[1:], np.moveaxis(s.instance, axis, 0)[:-1]
      ca, cb = np.moveaxis(img, axis, 0)[1:], np.moveaxis(img, axis, 0)[:-1]
      za, zb = np.moveaxis(s.depth, axis, 0)[1:], np.moveaxis(s.depth, axis, 0)[:-1]
      dcol = np.abs(ca - cb).max(-1)
      across.append(dcol[ia != ib])
      same = (ia == ib) & (np.abs(za - zb) < cfg.edge_threshold)
      textured_pairs += int(np.sum(same & (dcol > 80)))
  across = np.concatenate(across)
  assert np.median(across) > 60  # colour changes where depth does
  assert textured_pairs > 500  # and where it does not
  assert any((s.textures > 0).any() for s in items) and any((s.textures == 0).any() for s in items)


def test_builder_reads_back_the_rendered_scenes(small_dir):
  src = rgbd.get_source("validation", small_dir, "small")
  assert len(src) == SMALL.num_validation and len(rgbd.get_source("train", small_dir, "small")) == SMALL.num_train
  arrays = rgbd.load_scenes("validation", small_dir, "small", keys=("image", "depth", "instance", "semantic",
                                                                      "scene_id"))
  chex.assert_shape([arrays["image"], arrays["depth"], arrays["instance"]],
                    [(12, 32, 32, 3), (12, 32, 32, 1), (12, 32, 32)])
  assert arrays["depth"].dtype == np.float32
  np.testing.assert_array_equal(arrays["scene_id"], np.arange(1, 13))
  for i in (0, 7):
    s = rgbd.render_split_scene("validation", i, SMALL.scene_config())
    np.testing.assert_array_equal(arrays["image"][i], s.image)
    np.testing.assert_array_equal(arrays["depth"][i, ..., 0], s.depth)
    np.testing.assert_array_equal(arrays["instance"][i], s.instance)
    np.testing.assert_array_equal(arrays["semantic"][i], s.semantic)
  raw = next(r for r in (src[j] for j in range(len(src))) if int(r["scene/id"]) == 1)
  s = rgbd.render_split_scene("validation", 0, SMALL.scene_config())
  np.testing.assert_array_equal(raw["objects"]["label"], s.labels)
  np.testing.assert_allclose(raw["objects"]["depth"], s.depths)
  assert pipeline.PROCEDURAL["shapes_rgbd"] is rgbd.ShapesRGBD
  with pytest.raises(ValueError, match="config"):
    rgbd.builder("huge", small_dir)
  with pytest.raises(ValueError, match="unknown keys"):
    rgbd.load_scenes("validation", small_dir, "small", keys=("flow",))


# ------------------------------------------------------------------------------------------------ degradation


def _area_loop(d, s):
  n, h, w, _ = d.shape
  out = np.zeros((n, h // s, w // s, 1))
  for b in range(n):
    for i in range(h // s):
      for j in range(w // s):
        out[b, i, j, 0] = np.mean(d[b, i * s:(i + 1) * s, j * s:(j + 1) * s, 0], dtype=np.float64)
  return out


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
def test_area_degradation_matches_a_numpy_loop(scale):
  d = np.random.default_rng(scale).uniform(1, 5, (2, 32, 32, 1)).astype(np.float32)
  lr = rgbd.degrade(d, scale, method="area")
  chex.assert_shape(lr, (2, 32 // scale, 32 // scale, 1))
  np.testing.assert_allclose(lr, _area_loop(d, scale), rtol=1e-6)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_bicubic_degradation_is_jax_antialiased_cubic_resize(scale):
  d = np.random.default_rng(scale).uniform(1, 5, (2, 32, 32, 1)).astype(np.float32)
  lr = rgbd.degrade(d, scale, method="bicubic")
  ref = jax.image.resize(jnp.asarray(d), (2, 32 // scale, 32 // scale, 1), "cubic", antialias=True)
  np.testing.assert_allclose(lr, np.asarray(ref), atol=2e-5)
  m = rgbd.cubic_resize_matrix(32, 32 // scale)
  np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-12)
  # upsampling rows are jax's too (the bicubic baseline)
  up = jax.image.resize(jnp.asarray(lr), (2, 32, 32, 1), "cubic")
  mu = rgbd.cubic_resize_matrix(32 // scale, 32)
  np.testing.assert_allclose(np.einsum("ih,bhwc,jw->bijc", mu, lr.astype(np.float64), mu), np.asarray(up),
                             atol=2e-5)


def test_noise_is_seeded_and_has_the_requested_std():
  d = np.full((4, 64, 64, 1), 2.0, np.float32)
  a = rgbd.degrade(d, 2, noise_std=0.05, rng=np.random.default_rng(0))
  b = rgbd.degrade(d, 2, noise_std=0.05, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(a, b)
  assert abs(float(np.std(a - 2.0)) - 0.05) < 0.003 and abs(float(np.mean(a - 2.0))) < 0.003
  np.testing.assert_array_equal(rgbd.degrade(d, 2), np.full((4, 32, 32, 1), 2.0, np.float32))


def test_bad_degradation_inputs_raise_clear_errors():
  d = np.zeros((1, 24, 24, 1), np.float32)
  with pytest.raises(ValueError, match="2, 4, 8 or 16"):
    rgbd.degrade(d, 3)
  with pytest.raises(ValueError, match="does not divide the image size 24x24"):
    rgbd.degrade(d, 16)
  with pytest.raises(ValueError, match="method"):
    rgbd.degrade(d, 2, method="nearest")
  with pytest.raises(ValueError, match="needs an rng"):
    rgbd.degrade(d, 2, noise_std=0.1)
  with pytest.raises(ValueError, match=r"\[..., H, W, 1\]"):
    rgbd.degrade(np.zeros((24, 24)), 2)
  with pytest.raises(ValueError, match="behind the farthest object"):
    render.SceneConfig(wall_depth=(3.1, 4.0))
  with pytest.raises(ValueError, match="wall_slope"):
    render.SceneConfig(image_size=16, wall_slope=2.0, wall_depth=(6.0, 7.0))
