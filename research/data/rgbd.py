"""``shapes_rgbd``: offline RGB-D scenes (shapes in front of a far wall, metric depth) as a real TFDS builder.

Each example is one scene rendered by ``research.data.rgbd_render`` (see its docstring for the geometry and the
textures): a colour image, its noise-free depth map in metres, and instance / semantic maps. Built for
colour-guided depth super-resolution (PAG-Net, Bansal et al. 2019, §1): depth edges are colour edges (every
object contrasts with the wall, every instance boundary is a depth step), while the wall's and half of the
objects' textures are colour edges WITHOUT a depth edge (the texture-copying trap). Generated deterministically
(seeded per split and scene) into ``data_dir`` as array_record on first use (:func:`get_source`), read back with
``tfds.data_source`` (no TensorFlow).

Configs (:data:`CONFIGS`; ``ShapesRGBD(config="small")``):

* ``default``: 64x64, 1-5 objects at 1-3 m, wall at 3.25-6.25 m; 1000 train / 100 validation scenes (~15 s to
  build on 2 CPU cores).
* ``small``: 32x32, 1-4 objects; 24 / 12 scenes (tests, ~1 s).

Features (``H = W = image_size``):

* ``image``      Image uint8 [H, W, 3] (PNG)
* ``depth``      Tensor float32 [H, W, 1] (zlib): metres, noise-free
* ``instance``   Image uint8 [H, W, 1]: 0 the wall, k + 1 object k;  ``semantic``: 0 the wall, shape class + 1
* ``background`` ClassLabel(``scenes_render.BACKGROUNDS``): the wall's texture;  ``scene/id``: int64 1..N
* ``objects``    Sequence of ``label`` ClassLabel(SHAPE_NAMES), ``color`` ClassLabel(COLOR_NAMES), ``surface``
  ClassLabel(``rgbd_render.SURFACES``), ``texture`` ClassLabel(``rgbd_render.OBJECT_TEXTURES``), ``depth``
  float32 (centre depth, m)

Degradation (NOT stored; :func:`degrade`, applied by the training/eval pipeline, ``research.train.depth_sr``): the
low-resolution depth is the high-resolution one downsampled by the scale factor ``s`` (``H`` and ``W`` divisible by
``s``), by ``area`` averaging (mean of each ``s x s`` block: a ToF pixel integrating its footprint) or by
antialiased ``bicubic`` resampling (the Keys cubic kernel, ``a = -0.5``, stretched by ``s``: exactly
``jax.image.resize(..., "cubic", antialias=True)``, MATLAB's ``imresize`` convention used by DSR benchmarks), plus
optional i.i.d. Gaussian noise of ``noise_std`` metres on the low-resolution samples.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from research.data import rgbd_render as render
from research.data.scenes_render import BACKGROUNDS, COLOR_NAMES, SHAPE_NAMES
from research.data.shapes import _png  # PNG bytes of a uint8 array (fast compression)

NAME = "shapes_rgbd"
_SEEDS = {"train": 20190731, "validation": 20190732}
DEGRADATIONS = ("area", "bicubic")


@dataclasses.dataclass
class ShapesRGBDConfig(tfds.core.BuilderConfig):
  """A ``rgbd_render.SceneConfig`` plus split sizes."""
  image_size: int = 64
  max_objects: int = 5
  object_size: tuple[float, float] = (0.2, 0.55)
  object_depth: tuple[float, float] = (1.0, 3.0)
  wall_depth: tuple[float, float] = (4.0, 5.5)
  wall_slope: float = 1.5
  texture_prob: float = 0.5
  num_train: int = 1000
  num_validation: int = 100

  def scene_config(self) -> render.SceneConfig:
    return render.SceneConfig(image_size=self.image_size, max_objects=self.max_objects,
                              object_size=tuple(self.object_size), object_depth=tuple(self.object_depth),
                              wall_depth=tuple(self.wall_depth), wall_slope=self.wall_slope,
                              texture_prob=self.texture_prob)


CONFIGS: dict[str, ShapesRGBDConfig] = {c.name: c for c in (
    ShapesRGBDConfig(name="default", description="64x64, 1-5 objects at 1-3 m, wall at 3.25-6.25 m, 1000/100."),
    ShapesRGBDConfig(name="small", description="32x32, 1-4 objects (tests), 24/12 scenes.", image_size=32,
                     max_objects=4, num_train=24, num_validation=12),
)}


class ShapesRGBD(tfds.core.GeneratorBasedBuilder):
  """Procedural RGB-D scenes: image, metric depth, instance / semantic maps (see the module docstring)."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default, small."}
  BUILDER_CONFIGS = list(CONFIGS.values())

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "depth": tfds.features.Tensor(shape=(s, s, 1), dtype=np.float32, encoding="zlib"),
            "instance": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
            "semantic": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
            "background": tfds.features.ClassLabel(names=list(BACKGROUNDS)),
            "scene/id": np.int64,
            "objects": tfds.features.Sequence({
                "label": tfds.features.ClassLabel(names=list(SHAPE_NAMES)),
                "color": tfds.features.ClassLabel(names=list(COLOR_NAMES)),
                "surface": tfds.features.ClassLabel(names=list(render.SURFACES)),
                "texture": tfds.features.ClassLabel(names=list(render.OBJECT_TEXTURES)),
                "depth": np.float32,
            }),
        }),
        homepage="https://example.invalid/research/shapes_rgbd",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "validation": self._generate_examples("validation", c.num_validation)}

  def _generate_examples(self, split: str, num_scenes: int):
    scene_config = self.builder_config.scene_config()
    for i in range(num_scenes):
      yield i, scene_record(render_split_scene(split, i, scene_config), scene_id=i + 1)


def render_split_scene(split: str, index: int, scene_config: render.SceneConfig) -> render.RGBDScene:
  """Scene ``index`` of ``split`` exactly as the builder renders it."""
  if split not in _SEEDS:
    raise ValueError(f"split={split!r}: shapes_rgbd has splits {sorted(_SEEDS)}")
  return render.render_scene(render.scene_rng(_SEEDS[split], index), scene_config)


def scene_record(scene: render.RGBDScene, *, scene_id: int) -> dict[str, Any]:
  """The TFDS example (encoded: PNG bytes) of one rendered scene."""
  return {
      "image": _png(scene.image),
      "depth": scene.depth[..., None].astype(np.float32),
      "instance": _png(scene.instance),
      "semantic": _png(scene.semantic),
      "background": BACKGROUNDS.index(scene.background),
      "scene/id": int(scene_id),
      "objects": {"label": [int(v) for v in scene.labels], "color": [int(v) for v in scene.colors],
                  "surface": [int(v) for v in scene.surfaces], "texture": [int(v) for v in scene.textures],
                  "depth": [np.float32(v) for v in scene.depths]},
  }


def to_rgbd_example(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """One decoded record -> plain arrays: ``image`` uint8 [H, W, 3], ``depth`` float32 [H, W, 1] (m),
  ``instance`` / ``semantic`` uint8 [H, W], ``scene_id`` int64 []."""
  image = np.asarray(raw["image"], np.uint8)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"to_rgbd_example: 'image' must be [H, W, 3], got shape {image.shape}")
  h, w = image.shape[:2]
  return {"image": image, "depth": np.asarray(raw["depth"], np.float32).reshape(h, w, 1),
          "instance": np.asarray(raw["instance"], np.uint8).reshape(h, w),
          "semantic": np.asarray(raw["semantic"], np.uint8).reshape(h, w),
          "scene_id": np.int64(raw.get("scene/id", 0))}


def builder(config: str = "default", data_dir: str | None = None) -> ShapesRGBD:
  """The builder of ``config``, generated into ``data_dir`` on first use (array_record; with several JAX
  processes process 0 builds while the others wait, so ``data_dir`` must be shared)."""
  if config not in CONFIGS:
    raise ValueError(f"shapes_rgbd config={config!r}; choose one of {sorted(CONFIGS)}")
  from research.data import pipeline  # the default data_dir; a late import keeps this module light
  data_dir = data_dir or pipeline.default_data_dir()
  return pipeline.build_on_first_use(lambda: ShapesRGBD(config=config, data_dir=data_dir), f"{NAME}/{config}",
                                     data_dir)


def get_source(split: str, data_dir: str | None = None, config: str = "default"):
  """Random-access source of decoded ``shapes_rgbd/<config>`` records of ``split`` (built on first use)."""
  if split not in _SEEDS:
    raise ValueError(f"split={split!r}: shapes_rgbd has splits {sorted(_SEEDS)}")
  return builder(config, data_dir).as_data_source(split=split)


def load_scenes(split: str, data_dir: str | None = None, config: str = "default", *,
                keys: Sequence[str] = ("image", "depth", "scene_id"), limit: int | None = None
                ) -> dict[str, np.ndarray]:
  """A whole split (at most its first ``limit`` scenes in ``scene/id`` order) as stacked arrays of
  :func:`to_rgbd_example` ``keys``: ``image`` uint8 [N, H, W, 3], ``depth`` float32 [N, H, W, 1], ..."""
  source = get_source(split, data_dir, config)
  try:  # batched random access (array_record), else one record at a time (e.g. tfds.testing.mock_data)
    raw = source.__getitems__(list(range(len(source))))
  except (AttributeError, TypeError):
    raw = [source[i] for i in range(len(source))]
  rows = [to_rgbd_example(r) for r in raw]
  rows.sort(key=lambda r: int(r["scene_id"]))  # id order, not TFDS's shuffled key order
  rows = rows[:limit]
  missing = [k for k in keys if k not in rows[0]]
  if missing:
    raise ValueError(f"load_scenes: unknown keys {missing}; choose from {sorted(rows[0])}")
  return {k: np.stack([r[k] for r in rows]) for k in keys}


# ------------------------------------------------------------------------------------------------ degradation


def _keys_cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (float64)."""
  x = np.abs(x)
  out = ((1.5 * x - 2.5) * x) * x + 1.0
  out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
  return np.where(x >= 2.0, 0.0, out)


def cubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """float64 [out_size, in_size]: the rows of ``jax.image.resize(..., "cubic", antialias=True)`` along one axis
  (half-pixel centres; when shrinking, the kernel is stretched by ``in_size / out_size``; rows sum to 1)."""
  scale = out_size / in_size
  inv = 1.0 / scale
  kernel_scale = max(inv, 1.0)
  sample = (np.arange(out_size) + 0.5) * inv - 0.5
  weights = _keys_cubic((sample[:, None] - np.arange(in_size)[None, :]) / kernel_scale)
  return weights / weights.sum(axis=1, keepdims=True)


def check_scale(scale: int, size: tuple[int, int] | None = None, *, what: str = "--scale") -> int:
  """``scale`` if it is 2, 4, 8 or 16 (and divides both sides of ``size`` (H, W)); else a ValueError naming it."""
  if scale not in (2, 4, 8, 16):
    raise ValueError(f"{what}={scale}: depth super-resolution works in x2 stages; use 2, 4, 8 or 16")
  if size is not None and (size[0] % scale or size[1] % scale):
    raise ValueError(f"{what}={scale} does not divide the image size {size[0]}x{size[1]}: use a scale that divides "
                     f"it (or a dataset config whose image size is a multiple of {scale})")
  return scale


def degrade(depth: np.ndarray, scale: int, *, method: str = "area", noise_std: float = 0.0,
            rng: np.random.Generator | None = None) -> np.ndarray:
  """Low-resolution depth [..., H/s, W/s, 1] float32 from depth [..., H, W, 1] (module docstring: ``area`` or
  ``bicubic`` downsampling by ``scale``, plus Gaussian noise of ``noise_std`` m drawn from ``rng``)."""
  d = np.asarray(depth, np.float64)
  if d.ndim < 3 or d.shape[-1] != 1:
    raise ValueError(f"degrade: depth must be [..., H, W, 1], got shape {d.shape}")
  h, w = d.shape[-3:-1]
  check_scale(scale, (h, w), what="degrade: scale")
  if method == "area":
    lr = d.reshape(d.shape[:-3] + (h // scale, scale, w // scale, scale, 1)).mean(axis=(-4, -2))
  elif method == "bicubic":
    mh, mw = cubic_resize_matrix(h, h // scale), cubic_resize_matrix(w, w // scale)
    lr = np.einsum("ih,...hwc,jw->...ijc", mh, d, mw)
  else:
    raise ValueError(f"degrade: method={method!r}; choose one of {DEGRADATIONS}")
  if noise_std < 0:
    raise ValueError(f"degrade: noise_std={noise_std} must be >= 0 (metres)")
  if noise_std > 0:
    if rng is None:
      raise ValueError("degrade: noise_std > 0 needs an rng (np.random.Generator)")
    lr = lr + rng.normal(0.0, noise_std, size=lr.shape)
  return lr.astype(np.float32)


def dataset_dir(config: str, data_dir: str) -> str:
  """Where ``shapes_rgbd/<config>`` lives under ``data_dir``."""
  return os.path.join(data_dir, NAME, config)
