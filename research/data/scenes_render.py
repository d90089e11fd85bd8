"""Procedural renderer for the offline detection dataset ``shapes_scenes`` (pure numpy, no TFDS dependency).

A scene is an RGB image ``uint8 [H, W, 3]`` (default 128x128) holding 1-12 objects drawn from
:data:`SHAPE_NAMES` (12 classes) on a textured background. Per object: class, nominal size ``s`` (the diameter of
the circle the shape fits in, log-uniform in ``[MIN_SIZE, MAX_SIZE * H / 128]`` px, so small objects are common),
centre, rotation (uniform), a mild aspect jitter and a colour from :data:`COLOR_NAMES` (chosen to contrast with
what lies under the object, plus a small jitter). Objects are painted in order, later ones occluding earlier ones;
an object whose VISIBLE part is smaller than :data:`MIN_VISIBLE_PIXELS` pixels or than
:data:`MIN_VISIBLE_FRACTION` of its in-image area is removed from the scene before painting (removing objects only
uncovers others, so every kept object is visible and every painted pixel belongs to an annotated object or the
background). Backgrounds (:data:`BACKGROUNDS`): smooth colour noise, stripes, checkers or linear gradients, plus
per-pixel noise over the whole image, so a detector cannot just threshold the background.

Coordinates: pixel (row ``i``, column ``j``) is the unit square ``[j, j+1) x [i, i+1)`` (the frame of
``research.data.transforms``); shapes are sampled at pixel centres (no anti-aliasing). Rendering is vectorised per
object over its bounding window: a 128x128 scene takes a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np

SHAPE_NAMES = ("disc", "square", "triangle", "ring", "star", "cross", "ellipse", "hexagon", "bar", "crescent",
               "heart", "arrow")
COLOR_NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "white", "black", "gray",
               "brown")
COLORS = np.array([(220, 30, 30), (30, 170, 40), (30, 60, 220), (240, 220, 30), (40, 210, 220), (220, 40, 200),
                   (250, 140, 20), (120, 40, 170), (245, 245, 245), (15, 15, 15), (128, 128, 128), (130, 80, 30)],
                  np.float32)
BACKGROUNDS = ("noise", "stripes", "checker", "gradient")
SIZE_WORDS = ("small", "medium", "large")

DEFAULT_IMAGE_SIZE = 128
MIN_SIZE = 8.0  # nominal object diameter range in px, for a 128 px image (MAX_SIZE scales with the image)
MAX_SIZE = 100.0
MAX_OBJECTS = 12
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.15
# Nominal diameter (px, for a 128 px image) below which an object is described as "small" / "medium".
SIZE_THRESHOLDS = (20.0, 48.0)
_WINDOW = 1.2  # every shape (aspect jitter included) lies within radius 1.2 of its centre, in units of s/2


# ---------------------------------------------------------------------------------------------------- shapes
# Each shape takes local coordinates ``(u, v)`` (unit = half the nominal size, v pointing down, already rotated)
# of any shape and returns a bool mask; every shape fits in the unit circle (the heart up to ~0.96).

def _regular_polygon(u, v, n: int, radius: float = 1.0):
  """Regular n-gon inscribed in a circle of ``radius`` with a vertex pointing up (-v)."""
  inside = np.ones(np.shape(u), bool)
  apothem = radius * np.cos(np.pi / n)
  for k in range(n):
    a = -np.pi / 2 + np.pi / n + 2 * np.pi * k / n  # outward edge normals (vertex at -v)
    inside &= u * np.cos(a) + v * np.sin(a) <= apothem
  return inside


def _star(u, v, points: int = 5, inner: float = 0.45):
  """Star polygon: outer vertices on the unit circle (one pointing up), inner vertices at radius ``inner``."""
  sector = 2 * np.pi / points
  t = np.mod(np.arctan2(u, -v), sector)
  t = np.abs(t - sector / 2)  # 0 at an inner vertex, sector/2 at an outer one
  r = np.sqrt(u**2 + v**2)
  half = sector / 2
  nx, ny = np.sin(half), inner - np.cos(half)  # normal of the edge inner vertex -> outer vertex (folded sector)
  return r * (np.cos(t) * nx + np.sin(t) * ny) <= inner * nx


def _heart(u, v):
  x, y = 1.2 * u, -1.2 * v + 0.12
  return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def _arrow(u, v):
  shaft = (u >= -1.0) & (u <= 0.15) & (np.abs(v) <= 0.2)
  head = (u >= 0.1) & (np.abs(v) <= 0.65 * (0.95 - u) / 0.85)
  return shaft | head


def _cross(u, v):
  return ((np.abs(u) <= 1.0) & (np.abs(v) <= 0.28)) | ((np.abs(v) <= 1.0) & (np.abs(u) <= 0.28))


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u**2 + v**2 <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72),
    "triangle": lambda u, v: _regular_polygon(u, v, 3),
    "ring": lambda u, v: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.55**2),
    "star": _star,
    "cross": _cross,
    "ellipse": lambda u, v: u**2 + (v / 0.55) ** 2 <= 1.0,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6),
    "bar": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.25),
    "crescent": lambda u, v: (u**2 + v**2 <= 1.0) & ((u - 0.45) ** 2 + v**2 > 0.85**2),
    "heart": _heart,
    "arrow": _arrow,
}
assert tuple(SHAPES) == SHAPE_NAMES


# ------------------------------------------------------------------------------------------------ the scene

@dataclasses.dataclass
class Scene:
  """One rendered scene with ``N`` kept objects, in drawing order (back to front).

  image:      uint8 [H, W, 3]
  masks:      uint8 [N, H, W] VISIBLE masks (0/1), non-empty and pairwise disjoint
  labels:     int64 [N] index into SHAPE_NAMES
  colors:     int64 [N] index into COLOR_NAMES
  sizes:      float32 [N] nominal diameter in px
  centers:    float32 [N, 2] (x, y) of the shape's centre in px (may lie under an occluder)
  angles:     float32 [N] rotation in radians
  instance:   uint8 [H, W]: 0 background, k + 1 where object k is visible
  semantic:   uint8 [H, W]: 0 background, labels[k] + 1 where object k is visible
  background: one of BACKGROUNDS
  """
  image: np.ndarray
  masks: np.ndarray
  labels: np.ndarray
  colors: np.ndarray
  sizes: np.ndarray
  centers: np.ndarray
  angles: np.ndarray
  instance: np.ndarray
  semantic: np.ndarray
  background: str


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates ``(y [H, 1], x [1, W])`` (float32, read-only)."""
  yy = np.arange(h, dtype=np.float32)[:, None] + 0.5
  xx = np.arange(w, dtype=np.float32)[None, :] + 0.5
  yy.flags.writeable = xx.flags.writeable = False
  return yy, xx


def _linear_upsample(n: int, g: int) -> np.ndarray:
  """float32 [n, g + 1]: weights of the g + 1 grid nodes for each of n pixel centres (linear interpolation)."""
  pos = (np.arange(n, dtype=np.float32) + 0.5) / n * g
  i0 = np.minimum(pos.astype(np.int64), g - 1)
  f = pos - i0
  weights = np.zeros((n, g + 1), np.float32)
  weights[np.arange(n), i0] = 1 - f
  weights[np.arange(n), i0 + 1] = f
  return weights


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
  """float32 [H, W, 3] in [0, 255] and its kind."""
  kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  yy, xx = _grid(h, w)
  c1, c2 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
  if kind == "noise":  # smooth colour noise: a coarse random grid, bilinearly upsampled (separably)
    g = int(rng.integers(2, 7))
    coarse = rng.uniform(0, 255, size=(g + 1, g + 1, 3)).astype(np.float32)
    return np.einsum("hi,ijc,wj->hwc", _linear_upsample(h, g), coarse, _linear_upsample(w, g), optimize=True), kind
  theta = float(rng.uniform(0, np.pi))
  along = xx * math.cos(theta) + yy * math.sin(theta)
  if kind == "gradient":
    t = np.broadcast_to((along - along.min()) / max(float(np.ptp(along)), 1e-6), (h, w))
  else:
    period = rng.uniform(6, 32) * h / DEFAULT_IMAGE_SIZE
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * along / period + phase)
    if kind == "checker":
      across = -xx * math.sin(theta) + yy * math.cos(theta)
      wave = wave * np.sin(2 * np.pi * across / period)
    t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave  # hard or soft edges
  t = t[..., None].astype(np.float32)
  return c1 * (1 - t) + c2 * t, kind


def _object_mask(label: int, size: float, cx: float, cy: float, angle: float, aspect: float, h: int, w: int):
  """Full (unoccluded) mask of one object inside the image: ``(bool [y1-y0, x1-x0], (y0, y1, x0, x1))``."""
  r = size / 2
  reach = _WINDOW * r
  y0, y1 = max(0, int(np.floor(cy - reach))), min(h, int(np.ceil(cy + reach)) + 1)
  x0, x1 = max(0, int(np.floor(cx - reach))), min(w, int(np.ceil(cx + reach)) + 1)
  if y1 <= y0 or x1 <= x0:
    return np.zeros((0, 0), bool), (0, 0, 0, 0)
  dy = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / r)[:, None]
  dx = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / r)[None, :]
  c, s = np.cos(angle), np.sin(angle)
  u = (c * dx + s * dy) / aspect
  v = (-s * dx + c * dy) * aspect
  return SHAPES[SHAPE_NAMES[label]](u, v), (y0, y1, x0, x1)


def size_word(size: float, image_size: int = DEFAULT_IMAGE_SIZE) -> str:
  """'small' / 'medium' / 'large' for a nominal diameter (thresholds SIZE_THRESHOLDS scaled to the image)."""
  scale = image_size / DEFAULT_IMAGE_SIZE
  return SIZE_WORDS[int(np.searchsorted(np.asarray(SIZE_THRESHOLDS) * scale, size, side="right"))]


def render_scene(rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE, *,
                 max_objects: int = MAX_OBJECTS) -> Scene:
  """One random scene (see the module docstring); deterministic given the state of ``rng``."""
  h = w = int(image_size)
  max_size = max(MAX_SIZE * h / DEFAULT_IMAGE_SIZE, MIN_SIZE * 1.5)
  while True:  # resample in the rare case that no object survives the visibility rule
    n = int(rng.integers(1, max_objects + 1))
    labels = rng.integers(0, len(SHAPE_NAMES), size=n)
    sizes = np.exp(rng.uniform(np.log(MIN_SIZE), np.log(max_size), size=n)).astype(np.float32)
    margin = np.minimum(0.3 * sizes / 2, h / 2)  # centres keep >= ~30% of the radius inside the image
    cx = rng.uniform(margin, w - margin).astype(np.float32)
    cy = rng.uniform(margin, h - margin).astype(np.float32)
    angles = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    aspects = rng.uniform(0.87, 1.15, size=n).astype(np.float32)
    color_order = np.argsort(rng.random((n, len(COLOR_NAMES))), axis=1)
    jitter = rng.uniform(-20, 20, size=(n, 3)).astype(np.float32)
    background, kind = _background(rng, h, w)
    noise_amplitude = np.float32(rng.uniform(4, 14))  # uniform pixel noise (cheaper to draw than Gaussian)
    noise = (rng.random(size=(h, w, 3), dtype=np.float32) - np.float32(0.5)) * (2 * noise_amplitude)

    full = [_object_mask(int(labels[k]), float(sizes[k]), float(cx[k]), float(cy[k]), float(angles[k]),
                         float(aspects[k]), h, w) for k in range(n)]
    full_area = np.array([m.sum() for m, _ in full])
    # Painter's algorithm on ids; objects that end up (almost) hidden are removed, which only uncovers others.
    instance = np.zeros((h, w), np.int32)
    for k, (m, (y0, y1, x0, x1)) in enumerate(full):
      instance[y0:y1, x0:x1][m] = k + 1
    visible = np.bincount(instance.ravel(), minlength=n + 1)[1:]
    keep = (visible >= MIN_VISIBLE_PIXELS) & (visible >= MIN_VISIBLE_FRACTION * np.maximum(full_area, 1))
    if keep.any():
      break
  kept = np.flatnonzero(keep)

  image = background
  instance = np.zeros((h, w), np.uint8)
  colors = np.zeros(len(kept), np.int64)
  for new, k in enumerate(kept):
    m, (y0, y1, x0, x1) = full[k]
    window = image[y0:y1, x0:x1]
    under = window[m].mean(axis=0)
    dist = np.linalg.norm(COLORS[color_order[k]] - under, axis=1)
    ok = np.flatnonzero(dist >= 110)  # first colour (random order) contrasting with what is under the object
    pick = color_order[k][ok[0] if ok.size else int(np.argmax(dist))]
    colors[new] = pick
    window[m] = np.clip(COLORS[pick] + jitter[k], 0, 255)
    instance[y0:y1, x0:x1][m] = new + 1
  image = np.clip(np.round(image + noise), 0, 255).astype(np.uint8)

  ids = np.arange(1, len(kept) + 1, dtype=np.uint8)
  masks = (instance[None] == ids[:, None, None]).astype(np.uint8)
  labels = labels[kept].astype(np.int64)
  lut = np.concatenate([[0], labels + 1]).astype(np.uint8)
  return Scene(image=image, masks=masks, labels=labels, colors=colors, sizes=sizes[kept],
               centers=np.stack([cx[kept], cy[kept]], axis=-1), angles=angles[kept], instance=instance,
               semantic=lut[instance], background=kind)


def scene_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of scene ``index`` of a split with ``seed`` (scenes are independent of each other)."""
  return np.random.default_rng([int(seed), int(index)])


def describe(scene: Scene, image_size: int | None = None) -> list[dict]:
  """Per kept object (drawing order): ``{"class", "color", "size", "x", "y"}``; ``x``/``y`` are the centre of the
  VISIBLE box, normalised to [0, 1] (3 decimals); ``size`` is :func:`size_word` of the nominal diameter."""
  h, w = scene.instance.shape
  image_size = image_size or h
  out = []
  for k in range(len(scene.labels)):
    rows, cols = np.flatnonzero(scene.masks[k].any(axis=1)), np.flatnonzero(scene.masks[k].any(axis=0))
    out.append({"class": SHAPE_NAMES[int(scene.labels[k])], "color": COLOR_NAMES[int(scene.colors[k])],
                "size": size_word(float(scene.sizes[k]), image_size),
                "x": round((cols[0] + cols[-1] + 1) / 2 / w, 3), "y": round((rows[0] + rows[-1] + 1) / 2 / h, 3)})
  return out
