"""``shapes_video``: offline clips of periodic, phase-labelled shape actions as a real TFDS builder.

Each example is a clip of ``T`` frames of ONE action of :data:`VIDEO_ACTIONS` (``pour``, ``jump``, ``wave``; 3-4
named phases each) performed by a shape actor on a textured background with moving distractors, rendered by
``research.data.video_render`` (see its docstring for the motion model and the exact optical flow). Built for
temporal alignment (TCC, Dwibedi et al. 2019 §5: per-frame phase labels, few-shot phase classification) and for
dense video tasks (video segmentation, optical flow). Generated deterministically (seeded per split and clip;
actions balanced: clip ``i`` performs action ``i mod 3``) into ``data_dir`` as array_record on first use
(:func:`get_source`), and read back with ``tfds.data_source`` (no TensorFlow).

Configs (:data:`CONFIGS`; ``ShapesVideo(config="small")``):

* ``default``: 64x64 RGB, T = 32, 0.7-1.5 action cycles per clip from any start phase, 0-3 distractors;
  300 train / 60 validation clips (~15 s to build).
* ``small``: 32x32, T = 16, 24 / 12 clips (tests).
* ``tcc32``: 32x32, T = 24, ONE pass of the action from near its start (start phase < 0.08, 0.8-0.9 cycles:
  the phase grows monotonically, so frames of two clips align), a larger actor near the centre (30% position
  jitter), 0-1 distractor; 360 / 90 clips (~10 s).

Features (``H = W = image_size``):

* ``video``        Sequence of T Image uint8 [H, W, 3] (PNG)
* ``instance``     Sequence of T Image uint8 [H, W, 1]: 0 background, 1 the actor, k + 1 distractor k
* ``semantic``     Sequence of T Image uint8 [H, W, 1]: 0 background, shape class + 1 (``SHAPE_NAMES``)
* ``flow``         Tensor float32 [T, H, W, 2] (zlib): forward flow (dx, dy) px, frame t -> t + 1 (the last frame's
  flow is that of the analytic motion one frame beyond the clip)
* ``phase``        Tensor float32 [T] in [0, 1);  ``phase_label``: Tensor int64 [T], index into the action's phases
* ``action``       ClassLabel(ACTION_NAMES);  ``rate``: float32 cycles per frame;  ``video/id``: int64 1..N
* ``objects``      Sequence of (actor first): ``label`` ClassLabel(SHAPE_NAMES), ``color`` ClassLabel(COLOR_NAMES),
  ``is_actor`` bool
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from research.data import video_render as render
from research.data.shapes import _png  # PNG bytes of a uint8 array (fast compression)
from research.data.video_render import ACTION_NAMES, VIDEO_ACTIONS  # noqa: F401  (re-exported)

NAME = "shapes_video"
_SEEDS = {"train": 20190601, "validation": 20190602}


@dataclasses.dataclass
class ShapesVideoConfig(tfds.core.BuilderConfig):
  """A ``video_render.ClipConfig`` plus split sizes."""
  image_size: int = 64
  num_frames: int = 32
  cycles: tuple[float, float] = (0.7, 1.5)
  max_start_phase: float = 1.0
  max_distractors: int = 3
  actor_size: tuple[float, float] = (0.2, 0.3)
  position_jitter: float = 1.0
  num_train: int = 300
  num_validation: int = 60

  def clip_config(self) -> render.ClipConfig:
    return render.ClipConfig(image_size=self.image_size, num_frames=self.num_frames, cycles=tuple(self.cycles),
                             max_start_phase=self.max_start_phase, max_distractors=self.max_distractors,
                             actor_size=tuple(self.actor_size), position_jitter=self.position_jitter)


CONFIGS: dict[str, ShapesVideoConfig] = {c.name: c for c in (
    ShapesVideoConfig(name="default", description="64x64, T=32, 0.7-1.5 cycles from any phase, 300/60 clips."),
    ShapesVideoConfig(name="small", description="32x32, T=16 (tests), 24/12 clips.", image_size=32, num_frames=16,
                      num_train=24, num_validation=12),
    ShapesVideoConfig(name="tcc32", description="32x32, T=24, one monotone pass of the action, 360/90 clips.",
                      image_size=32, num_frames=24, cycles=(0.8, 0.9), max_start_phase=0.08, max_distractors=1,
                      actor_size=(0.35, 0.45), position_jitter=0.3, num_train=360, num_validation=90),
)}


class ShapesVideo(tfds.core.GeneratorBasedBuilder):
  """Procedural action clips: phases, instance/semantic maps and exact optical flow (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: pour / jump / wave; configs default, small, tcc32."}
  BUILDER_CONFIGS = list(CONFIGS.values())

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s, t = c.image_size, c.num_frames
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Sequence(tfds.features.Image(shape=(s, s, 3), encoding_format="png"), length=t),
            "instance": tfds.features.Sequence(tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                                               length=t),
            "semantic": tfds.features.Sequence(tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                                               length=t),
            "flow": tfds.features.Tensor(shape=(t, s, s, 2), dtype=np.float32, encoding="zlib"),
            "phase": tfds.features.Tensor(shape=(t,), dtype=np.float32),
            "phase_label": tfds.features.Tensor(shape=(t,), dtype=np.int64),
            "action": tfds.features.ClassLabel(names=list(ACTION_NAMES)),
            "rate": np.float32,
            "video/id": np.int64,
            "objects": tfds.features.Sequence({
                "label": tfds.features.ClassLabel(names=list(render.SHAPE_NAMES)),
                "color": tfds.features.ClassLabel(names=list(render.COLOR_NAMES)),
                "is_actor": np.bool_,
            }),
        }),
        homepage="https://example.invalid/research/shapes_video",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "validation": self._generate_examples("validation", c.num_validation)}

  def _generate_examples(self, split: str, num_clips: int):
    clip_config = self.builder_config.clip_config()
    for i in range(num_clips):
      yield i, clip_record(render_split_clip(split, i, clip_config), video_id=i + 1)


def render_split_clip(split: str, index: int, clip_config: render.ClipConfig) -> render.Clip:
  """Clip ``index`` of ``split`` exactly as the builder renders it (action ``index mod len(ACTION_NAMES)``)."""
  if split not in _SEEDS:
    raise ValueError(f"split={split!r}: shapes_video has splits {sorted(_SEEDS)}")
  return render.render_clip(render.clip_rng(_SEEDS[split], index), clip_config, action=index % len(ACTION_NAMES))


def clip_record(clip: render.Clip, *, video_id: int) -> dict[str, Any]:
  """The TFDS example (encoded: PNG bytes per frame) of one rendered clip."""
  n = len(clip.labels)
  return {
      "video": [_png(f) for f in clip.frames],
      "instance": [_png(m) for m in clip.instance],
      "semantic": [_png(m) for m in clip.semantic],
      "flow": clip.flow.astype(np.float32),
      "phase": clip.phase.astype(np.float32),
      "phase_label": clip.phase_label.astype(np.int64),
      "action": int(clip.action),
      "rate": np.float32(clip.rate),
      "video/id": int(video_id),
      "objects": {"label": [int(l) for l in clip.labels], "color": [int(c) for c in clip.colors],
                  "is_actor": [k == 0 for k in range(n)]},
  }


def to_video_example(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """One decoded record -> plain arrays (``T`` frames, ``H x W``):

  ``frames`` uint8 [T, H, W, 3], ``instance``/``semantic`` uint8 [T, H, W], ``flow`` float32 [T, H, W, 2],
  ``phase`` float32 [T], ``phase_label`` int32 [T], ``action`` int32 [], ``video_id`` int64 [].
  """
  frames = np.asarray(raw["video"], np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"to_video_example: 'video' must be [T, H, W, 3], got shape {frames.shape}")
  t, h, w = frames.shape[:3]
  out = {"frames": frames}
  for k in ("instance", "semantic"):
    out[k] = np.asarray(raw[k], np.uint8).reshape(t, h, w)
  out["flow"] = np.asarray(raw["flow"], np.float32).reshape(t, h, w, 2)
  out["phase"] = np.asarray(raw["phase"], np.float32).reshape(t)
  out["phase_label"] = np.asarray(raw["phase_label"]).astype(np.int32).reshape(t)
  out["action"] = np.int32(raw["action"])
  out["video_id"] = np.int64(raw.get("video/id", 0))
  return out


def builder(config: str = "default", data_dir: str | None = None) -> ShapesVideo:
  """The builder of ``config``, generated into ``data_dir`` on first use (array_record; with several JAX
  processes process 0 builds while the others wait, so ``data_dir`` must be shared)."""
  if config not in CONFIGS:
    raise ValueError(f"shapes_video config={config!r}; choose one of {sorted(CONFIGS)}")
  from research.data import pipeline  # the default data_dir; a late import keeps this module light
  data_dir = data_dir or pipeline.default_data_dir()
  return pipeline.build_on_first_use(lambda: ShapesVideo(config=config, data_dir=data_dir), f"shapes_video/{config}",
                                     data_dir)


def get_source(split: str, data_dir: str | None = None, config: str = "default"):
  """Random-access source of decoded ``shapes_video/<config>`` records of ``split`` (built on first use)."""
  b = builder(config, data_dir)
  if split not in ("train", "validation"):
    raise ValueError(f"split={split!r}: shapes_video has splits ['train', 'validation']")
  return b.as_data_source(split=split)


def load_clips(split: str, data_dir: str | None = None, config: str = "default", *,
               actions: Sequence[str] | None = None, keys: Sequence[str] = ("frames", "phase", "phase_label",
                                                                            "action", "video_id"),
               limit: int | None = None) -> dict[str, np.ndarray]:
  """A whole split (optionally only clips of ``actions``, at most ``limit`` of them) as stacked arrays of
  :func:`to_video_example` ``keys``: ``frames`` uint8 [N, T, H, W, 3], ``phase`` [N, T], ... (in
  ``video/id`` order; ``limit``: the first clips in that order)."""
  if actions is not None:
    unknown = [a for a in actions if a not in ACTION_NAMES]
    if unknown:
      raise ValueError(f"actions={list(actions)}: unknown {unknown}; choose from {ACTION_NAMES}")
  source = get_source(split, data_dir, config)
  wanted = None if actions is None else {ACTION_NAMES.index(a) for a in actions}
  rows = []
  for i in range(len(source)):
    raw = source[i]
    if wanted is not None and int(raw["action"]) not in wanted:
      continue
    ex = to_video_example(raw)
    rows.append((int(ex["video_id"]), {k: ex[k] for k in keys}))
  if not rows:
    raise ValueError(f"shapes_video/{config} {split}: no clips of actions {list(actions or ACTION_NAMES)}")
  rows = [r for _, r in sorted(rows, key=lambda r: r[0])][:limit]  # id order, not TFDS's shuffled key order
  return {k: np.stack([r[k] for r in rows]) for k in keys}


def dataset_dir(config: str, data_dir: str) -> str:
  """Where ``shapes_video/<config>`` lives under ``data_dir``."""
  return os.path.join(data_dir, NAME, config)
