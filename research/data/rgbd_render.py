"""Procedural renderer of ``shapes_rgbd`` RGB-D scenes (pure numpy, no TFDS dependency).

Built for colour-guided depth super-resolution (PAG-Net, Bansal et al. 2019, §1: a high-resolution colour image
guides the upsampling of a low-resolution depth map, at the risk of TEXTURE COPYING where a smooth surface carries
colour texture, and of blur at depth edges). A scene is a far wall plus 1-``max_objects`` flat shapes of
``scenes_render.SHAPE_NAMES`` standing in front of it; every pixel has a metric depth and a colour.

Geometry (depth in metres, float32; pixel (row ``i``, column ``j``) is the unit square ``[j, j+1) x [i, i+1)``,
sampled at pixel centres, as ``scenes_render``):

* Background: a slanted plane ``z = z0 + gx (x / W - 1/2) + gy (y / H - 1/2)`` with ``z0`` in ``wall_depth`` and
  slopes such that it stays at least ``wall_depth[0] - wall_slope / 2`` away (the "far wall").
* Object ``k`` (shape mask in its own unit frame ``(u, v)``, rotated and aspect-jittered like
  ``scenes_render._object_mask``) lives in a depth slot: the object range ``object_depth`` is cut into ``N`` slots
  and every object takes one (in random order) with its centre depth ``c_k`` jittered by 15% of a slot. Its surface
  is one of :data:`SURFACES`: ``plane`` (``z = c_k``, fronto-parallel), ``slanted`` (``z = c_k + a u + b v``) or
  ``sphere`` (``z = c_k - bulge sqrt(1 - rho^2)``, ``rho`` = the pixel's radius in the unit frame, clipped to 1).
  With ``m = (far - near) / max_objects`` (the smallest slot), the depth inside an object stays within ``0.2 * m``
  of ``c_k``, so where two objects (or an object and the wall) meet their depths differ by >= ``0.3 * m``, while
  neighbouring pixels of one surface differ by <= ``0.2 * m`` (wall: ``wall_slope / image_size``). Hence
  ``depth_edges(depth, SceneConfig.edge_threshold) == label_edges(instance)`` exactly: every depth edge is an
  instance boundary and vice versa (>= 0.12 m vs <= 0.08 m at the default range,
  threshold 0.1 m).
* Visibility is a z-buffer: each pixel shows the nearest surface covering it (occlusion by depth order, also for
  objects whose drawing order would say otherwise); objects left with no visible pixel are dropped.

Appearance (uint8 RGB): the wall is a ``scenes_render`` textured background (smooth colour noise, stripes,
checkers or gradients); each object has a colour of ``COLOR_NAMES`` chosen to contrast with the wall under it (as
``scenes_render``), so depth edges are colour edges. With probability ``texture_prob`` an object carries its own
texture -- stripes or checkers of a second contrasting colour in its unit frame -- i.e. strong colour edges on a
SMOOTH depth surface (no depth edge), like the wall's stripes: what a guided network must not copy into the depth.
Uniform per-pixel colour noise is added last. ``depth`` itself is noise-free (the low-resolution input and its
noise are made in the pipeline, ``research.data.rgbd.degrade``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.data import scenes_render as scenes
from research.data.scenes_render import COLOR_NAMES, COLORS, SHAPE_NAMES

SURFACES = ("plane", "slanted", "sphere")
OBJECT_TEXTURES = ("none", "stripes", "checker")
_REACH = 1.2  # every shape (aspect jitter included) lies within this radius of its centre in the unit frame
_SLOT_JITTER = 0.15  # centre depth jitter, fraction of a slot (either side)
_SLOT_SPREAD = 0.2  # in-object depth variation, fraction of the smallest slot (either side of the centre depth)


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """What an RGB-D scene looks like. Depths in metres; ``object_size``: (min, max) nominal diameter as a fraction
  of the image side; ``wall_slope``: largest depth change of the wall across the image (m)."""
  image_size: int = 64
  max_objects: int = 5
  object_size: tuple[float, float] = (0.2, 0.55)
  object_depth: tuple[float, float] = (1.0, 3.0)
  wall_depth: tuple[float, float] = (4.0, 5.5)
  wall_slope: float = 1.5
  texture_prob: float = 0.5

  @property
  def edge_threshold(self) -> float:
    """Depth step (m) separating surfaces from depth edges: ``1.25 * _SLOT_SPREAD * m``, ``m`` the smallest slot."""
    return 1.25 * _SLOT_SPREAD * (self.object_depth[1] - self.object_depth[0]) / self.max_objects

  def __post_init__(self):
    if self.image_size < 16:
      raise ValueError(f"image_size={self.image_size} is too small: use >= 16 px")
    if self.max_objects < 1:
      raise ValueError(f"max_objects={self.max_objects}: a scene needs >= 1 object")
    if not 0 < self.object_size[0] <= self.object_size[1] <= 1:
      raise ValueError(f"object_size={self.object_size} must be (min, max) fractions with 0 < min <= max <= 1")
    if not 0 < self.object_depth[0] < self.object_depth[1]:
      raise ValueError(f"object_depth={self.object_depth} must be (near, far) metres with 0 < near < far")
    if not self.wall_depth[0] <= self.wall_depth[1] or self.wall_slope < 0:
      raise ValueError(f"wall_depth={self.wall_depth} must be (min, max) and wall_slope={self.wall_slope} >= 0")
    gap = 1.5 * self.edge_threshold  # 0.3 m: the least depth step between two surfaces
    if self.wall_depth[0] - self.wall_slope / 2 < self.object_depth[1] + gap:
      raise ValueError(f"the wall (wall_depth[0] - wall_slope / 2 = {self.wall_depth[0] - self.wall_slope / 2} m) "
                       f"must lie >= {gap:.3f} m behind the farthest object (object_depth[1] = "
                       f"{self.object_depth[1]} m): raise wall_depth")
    if self.wall_slope / self.image_size >= 0.8 * self.edge_threshold:
      raise ValueError(f"wall_slope={self.wall_slope} m changes the wall's depth by up to "
                       f"{self.wall_slope / self.image_size:.3f} m per pixel, too close to the depth-edge threshold "
                       f"{self.edge_threshold:.3f} m: lower wall_slope")
    if not 0 <= self.texture_prob <= 1:
      raise ValueError(f"texture_prob={self.texture_prob} must lie in [0, 1]")


@dataclasses.dataclass
class RGBDScene:
  """One rendered scene with ``N`` visible objects (in the order they were generated).

  image:     uint8 [H, W, 3]
  depth:     float32 [H, W] metres (noise-free)
  instance:  uint8 [H, W]: 0 the wall, k + 1 where object k is visible
  semantic:  uint8 [H, W]: 0 the wall, labels[k] + 1 where object k is visible
  labels:    int64 [N] shape classes (SHAPE_NAMES);  colors: int64 [N] (COLOR_NAMES)
  surfaces:  int64 [N] (SURFACES);  textures: int64 [N] (OBJECT_TEXTURES)
  depths:    float32 [N] centre depth c_k (m)
  amodal:    uint8 [N, H, W] full (unoccluded) masks of the objects inside the image (0/1)
  background: the wall's texture kind (``scenes_render.BACKGROUNDS``)
  """
  image: np.ndarray
  depth: np.ndarray
  instance: np.ndarray
  semantic: np.ndarray
  labels: np.ndarray
  colors: np.ndarray
  surfaces: np.ndarray
  textures: np.ndarray
  depths: np.ndarray
  amodal: np.ndarray
  background: str


def scene_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of scene ``index`` of a split with ``seed`` (scenes are independent of each other)."""
  return np.random.default_rng([int(seed), int(index)])


def _contrasting(rng: np.random.Generator, under: np.ndarray, avoid: int | None = None) -> int:
  """A random colour index whose RGB lies >= 110 from ``under`` [3] (the farthest one if none does)."""
  order = rng.permutation(len(COLOR_NAMES))
  if avoid is not None:
    order = order[order != avoid]
  dist = np.linalg.norm(COLORS[order] - under, axis=1)
  ok = np.flatnonzero(dist >= 110)
  return int(order[ok[0]] if ok.size else order[int(np.argmax(dist))])


def render_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> RGBDScene:
  """One random RGB-D scene (see the module docstring); deterministic given the state of ``rng``."""
  h = w = int(config.image_size)
  yy, xx = scenes._grid(h, w)
  yy, xx = yy.astype(np.float64), xx.astype(np.float64)

  # the far wall: a slanted plane with a scenes_render texture
  z0 = rng.uniform(*config.wall_depth)
  grad = rng.uniform(-1, 1, size=2)
  grad *= config.wall_slope / max(np.abs(grad).sum(), 1e-9) * rng.uniform(0, 1)
  depth = z0 + grad[0] * (xx / w - 0.5) + grad[1] * (yy / h - 0.5)
  depth = np.broadcast_to(depth, (h, w)).copy()
  wall, kind = scenes._background(rng, h, w)
  image = wall.astype(np.float64)

  n = int(rng.integers(1, config.max_objects + 1))
  slot = (config.object_depth[1] - config.object_depth[0]) / n
  spread = _SLOT_SPREAD * (config.object_depth[1] - config.object_depth[0]) / config.max_objects
  slots = rng.permutation(n)
  instance = np.zeros((h, w), np.int32)
  amodal = np.zeros((n, h, w), np.uint8)
  labels = rng.integers(0, len(SHAPE_NAMES), size=n)
  sizes = rng.uniform(*config.object_size, size=n) * h
  centres = rng.uniform(0.1 * h, 0.9 * h, size=(n, 2))
  angles = rng.uniform(0, 2 * np.pi, size=n)
  aspects = rng.uniform(0.87, 1.15, size=n)
  surfaces = rng.integers(0, len(SURFACES), size=n)
  textured = rng.random(n) < config.texture_prob
  textures = np.where(textured, rng.integers(1, len(OBJECT_TEXTURES), size=n), 0)
  colors = np.zeros(n, np.int64)
  centre_depth = np.zeros(n)
  for k in range(n):
    r = sizes[k] / 2
    reach = _REACH * r
    cx, cy = centres[k]
    y0, y1 = max(0, int(np.floor(cy - reach))), min(h, int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(np.floor(cx - reach))), min(w, int(np.ceil(cx + reach)) + 1)
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / r
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / r
    c, s = np.cos(angles[k]), np.sin(angles[k])
    u = (c * dx + s * dy) / aspects[k]
    v = (-s * dx + c * dy) * aspects[k]
    mask = scenes.SHAPES[SHAPE_NAMES[int(labels[k])]](u, v)
    amodal[k, y0:y1, x0:x1] = mask
    # depth: centre in the object's slot, surface variation within +-spread of it
    c_k = config.object_depth[0] + slot * (slots[k] + 0.5 + rng.uniform(-_SLOT_JITTER, _SLOT_JITTER))
    centre_depth[k] = c_k
    if SURFACES[surfaces[k]] == "plane":
      z = np.full(u.shape, c_k)
    elif SURFACES[surfaces[k]] == "slanted":
      ab = rng.uniform(-1, 1, size=2)
      ab *= spread / (_REACH * max(np.abs(ab).sum(), 1e-9))  # |a u + b v| <= spread for |u|, |v| <= _REACH
      z = c_k + ab[0] * u + ab[1] * v
    else:  # sphere-ish bulge towards the camera
      rho2 = np.minimum(u ** 2 + v ** 2, 1.0)
      z = c_k - spread * rng.uniform(0.5, 1.0) * np.sqrt(1.0 - rho2)
    # colour: contrasting with the wall under the object; texture: a second colour in stripes / checkers
    win = image[y0:y1, x0:x1]
    under = win[mask].mean(axis=0) if mask.any() else wall.reshape(-1, 3).mean(0)
    colors[k] = _contrasting(rng, under)
    col = np.broadcast_to(COLORS[colors[k]].astype(np.float64) + rng.uniform(-20, 20, 3), u.shape + (3,)).copy()
    period = rng.uniform(0.35, 0.8)  # in unit-frame units: 2-6 bands across an object
    phase = rng.uniform(0, 2 * np.pi)
    if OBJECT_TEXTURES[textures[k]] != "none":
      second = COLORS[_contrasting(rng, COLORS[colors[k]], avoid=int(colors[k]))].astype(np.float64)
      band = np.sin(2 * np.pi * u / period + phase) > 0
      if OBJECT_TEXTURES[textures[k]] == "checker":
        band = band ^ (np.sin(2 * np.pi * v / period) > 0)
      col[band] = second
    # z-buffer: the object wins where it is nearer than what is there
    zwin = depth[y0:y1, x0:x1]
    front = mask & (z < zwin)
    zwin[front] = z[front]
    win[front] = col[front]
    instance[y0:y1, x0:x1][front] = k + 1

  visible = np.bincount(instance.ravel(), minlength=n + 1)[1:] > 0
  kept = np.flatnonzero(visible)
  relabel = np.zeros(n + 1, np.int32)
  relabel[kept + 1] = np.arange(1, len(kept) + 1)
  instance = relabel[instance].astype(np.uint8)
  noise_amplitude = rng.uniform(3, 10)
  image = image + rng.uniform(-noise_amplitude, noise_amplitude, size=(h, w, 3))
  labels = labels[kept].astype(np.int64)
  lut = np.concatenate([[0], labels + 1]).astype(np.uint8)
  return RGBDScene(image=np.clip(np.round(image), 0, 255).astype(np.uint8), depth=depth.astype(np.float32),
                   instance=instance, semantic=lut[instance], labels=labels, colors=colors[kept],
                   surfaces=surfaces[kept].astype(np.int64), textures=textures[kept].astype(np.int64),
                   depths=centre_depth[kept].astype(np.float32), amodal=amodal[kept], background=kind)


def depth_edges(depth: np.ndarray, threshold: float = 0.05) -> np.ndarray:
  """bool [H, W]: pixels with a 4-neighbour whose depth differs by more than ``threshold`` (m); depth [H, W]."""
  d = np.asarray(depth, np.float64)
  edge = np.zeros(d.shape, bool)
  dv = np.abs(np.diff(d, axis=0)) > threshold
  dh = np.abs(np.diff(d, axis=1)) > threshold
  edge[1:] |= dv
  edge[:-1] |= dv
  edge[:, 1:] |= dh
  edge[:, :-1] |= dh
  return edge


def label_edges(labels: np.ndarray) -> np.ndarray:
  """bool [H, W]: pixels with a 4-neighbour of another label (instance boundaries); labels int [H, W]."""
  edge = np.zeros(labels.shape, bool)
  dv = labels[1:] != labels[:-1]
  dh = labels[:, 1:] != labels[:, :-1]
  edge[1:] |= dv
  edge[:-1] |= dv
  edge[:, 1:] |= dh
  edge[:, :-1] |= dh
  return edge


__all__ = ["OBJECT_TEXTURES", "RGBDScene", "SURFACES", "SceneConfig", "depth_edges", "label_edges", "render_scene",
           "scene_rng"]
