"""Procedural renderer for the offline ``shapes`` dataset (no TFDS dependency; pure numpy).

Taxonomy (fine -> coarse -> group), CIFAR-100-like: 100 fine classes, 20 coarse classes (shape
families), 5 groups (kinds of visual cue). Fine classes differ by a family-specific attribute
(orientation, size, count, frequency, topology); colour, position (+-4 px), scale (x0.85-1.15),
small rotations, background gradients and pixel noise are nuisance factors drawn per image.

  group        coarse (family)   fine variants
  polygons     triangle          up, down, left, right, thin_up
               quadrilateral     square, diamond, wide_rect, tall_rect, parallelogram
               polygon           pentagon, hexagon, octagon, pentagon_outline, hexagon_outline
               star              star4, star5, star6, star8, star5_fat
  curves       disc              small_disc, large_disc, half_top, half_bottom, quarter
               ring              thin_ring, thick_ring, double_ring, bullseye, broken_ring
               ellipse           horizontal, vertical, diag_up, diag_down, ellipse_ring
               crescent          left, right, up, down, smile
  lines        bar               horizontal, vertical, diag_up, diag_down, short_thick
               cross             plus, times, tee, ell, aitch
               parallel          two_horizontal, two_vertical, three_horizontal, three_vertical, two_diagonal
               wave              wave1, wave2, wave3, vertical_wave, zigzag
  textures     grating           horizontal, vertical, diag_up, diag_down, fine_horizontal
               checker           period4, period8, period16, diagonal, rect4x16
               dots              small_p6, small_p10, large_p10, hex_lattice, random
               radial            rings_low, rings_high, spokes6, spokes12, spiral
  composites   two_discs         side_by_side, stacked, diagonal, overlapping, big_small
               disc_square       disc_left, disc_above, disc_in_square, square_in_disc, disc_in_corner
               frame             square_frame, circle_frame, thick_frame, double_frame, corner_brackets
               grid              grid2x2_squares, grid2x2_discs, grid3x3_dots, row3_squares, column3_squares

Images are ``uint8 [32, 32, 3]``. Rendering is vectorised per class, so a whole split takes seconds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SIZE = 32

GROUPS = ("polygons", "curves", "lines", "textures", "composites")
COARSE = (
    ("triangle", ("up", "down", "left", "right", "thin_up")),
    ("quadrilateral", ("square", "diamond", "wide_rect", "tall_rect", "parallelogram")),
    ("polygon", ("pentagon", "hexagon", "octagon", "pentagon_outline", "hexagon_outline")),
    ("star", ("star4", "star5", "star6", "star8", "star5_fat")),
    ("disc", ("small_disc", "large_disc", "half_top", "half_bottom", "quarter")),
    ("ring", ("thin_ring", "thick_ring", "double_ring", "bullseye", "broken_ring")),
    ("ellipse", ("horizontal", "vertical", "diag_up", "diag_down", "ellipse_ring")),
    ("crescent", ("left", "right", "up", "down", "smile")),
    ("bar", ("horizontal", "vertical", "diag_up", "diag_down", "short_thick")),
    ("cross", ("plus", "times", "tee", "ell", "aitch")),
    ("parallel", ("two_horizontal", "two_vertical", "three_horizontal", "three_vertical", "two_diagonal")),
    ("wave", ("wave1", "wave2", "wave3", "vertical_wave", "zigzag")),
    ("grating", ("horizontal", "vertical", "diag_up", "diag_down", "fine_horizontal")),
    ("checker", ("period4", "period8", "period16", "diagonal", "rect4x16")),
    ("dots", ("small_p6", "small_p10", "large_p10", "hex_lattice", "random")),
    ("radial", ("rings_low", "rings_high", "spokes6", "spokes12", "spiral")),
    ("two_discs", ("side_by_side", "stacked", "diagonal", "overlapping", "big_small")),
    ("disc_square", ("disc_left", "disc_above", "disc_in_square", "square_in_disc", "disc_in_corner")),
    ("frame", ("square_frame", "circle_frame", "thick_frame", "double_frame", "corner_brackets")),
    ("grid", ("grid2x2_squares", "grid2x2_discs", "grid3x3_dots", "row3_squares", "column3_squares")),
)
NUM_GROUPS = len(GROUPS)
NUM_COARSE = len(COARSE)
FINE_PER_COARSE = 5
NUM_FINE = NUM_COARSE * FINE_PER_COARSE
COARSE_NAMES = tuple(c for c, _ in COARSE)
FINE_NAMES = tuple(f"{c}/{f}" for c, fs in COARSE for f in fs)
# fine -> coarse -> group; the class hierarchy later experiments (Task2Vec) use as a taxonomy.
FINE_TO_COARSE = np.repeat(np.arange(NUM_COARSE), FINE_PER_COARSE)
COARSE_TO_GROUP = np.repeat(np.arange(NUM_GROUPS), NUM_COARSE // NUM_GROUPS)
FINE_TO_GROUP = COARSE_TO_GROUP[FINE_TO_COARSE]


def taxonomic_distance(fine_a: int, fine_b: int) -> int:
  """Tree distance in the hierarchy: 0 same fine class, 1 same coarse, 2 same group, 3 otherwise."""
  if fine_a == fine_b:
    return 0
  if FINE_TO_COARSE[fine_a] == FINE_TO_COARSE[fine_b]:
    return 1
  if FINE_TO_GROUP[fine_a] == FINE_TO_GROUP[fine_b]:
    return 2
  return 3


# ---------------------------------------------------------------------------------------------------------
# Geometry helpers. Every mask function takes local coordinates ``(u, v)`` of shape [n, S, S] (unit = the
# nominal shape radius, v pointing down) plus the per-image generator and returns a float mask in [0, 1].


def _rot(u, v, angle):
  c, s = np.cos(angle), np.sin(angle)
  return c * u + s * v, -s * u + c * v


def _polygon(u, v, n, angle=0.0, radius=1.0):
  """Regular n-gon with a vertex pointing up (-v) when angle=0."""
  ur, vr = _rot(u, v, angle)
  inside = np.ones(u.shape, bool)
  apothem = radius * np.cos(np.pi / n)
  for k in range(n):
    a = np.pi / n + 2 * np.pi * k / n - np.pi / 2 + np.pi  # edge normals, vertex at top
    inside &= ur * np.cos(a) + vr * np.sin(a) <= apothem
  return inside


def _disc(u, v, r=1.0, cu=0.0, cv=0.0):
  return (u - cu) ** 2 + (v - cv) ** 2 <= r**2


def _ring(u, v, r_in, r_out, cu=0.0, cv=0.0):
  d2 = (u - cu) ** 2 + (v - cv) ** 2
  return (d2 <= r_out**2) & (d2 >= r_in**2)


def _box(u, v, hu, hv, cu=0.0, cv=0.0):
  return (np.abs(u - cu) <= hu) & (np.abs(v - cv) <= hv)


def _bar(u, v, angle, half_len=1.1, half_width=0.18, cu=0.0, cv=0.0):
  ur, vr = _rot(u - cu, v - cv, angle)
  return (np.abs(ur) <= half_len) & (np.abs(vr) <= half_width)


def _star(u, v, points, depth=0.45, radius=1.1):
  r = np.sqrt(u**2 + v**2)
  phi = np.arctan2(u, -v)
  edge = radius * (1 - depth * (0.5 - 0.5 * np.cos(points * phi)))
  return r <= edge


def _ellipse(u, v, a, b, angle=0.0):
  ur, vr = _rot(u, v, angle)
  return (ur / a) ** 2 + (vr / b) ** 2 <= 1.0


def _frame(u, v, half, width):
  return _box(u, v, half, half) & ~_box(u, v, half - width, half - width)


D = np.pi / 180.0
_SHAPES: dict[str, Callable[..., np.ndarray]] = {
    # polygons
    "triangle/up": lambda u, v: _polygon(u, v, 3),
    "triangle/down": lambda u, v: _polygon(u, v, 3, 180 * D),
    "triangle/left": lambda u, v: _polygon(u, v, 3, -90 * D),
    "triangle/right": lambda u, v: _polygon(u, v, 3, 90 * D),
    "triangle/thin_up": lambda u, v: _polygon(u * 2.0, v, 3),
    "quadrilateral/square": lambda u, v: _box(u, v, 0.75, 0.75),
    "quadrilateral/diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.05,
    "quadrilateral/wide_rect": lambda u, v: _box(u, v, 1.1, 0.45),
    "quadrilateral/tall_rect": lambda u, v: _box(u, v, 0.45, 1.1),
    "quadrilateral/parallelogram": lambda u, v: _box(u + 0.6 * v, v, 0.7, 0.6),
    "polygon/pentagon": lambda u, v: _polygon(u, v, 5),
    "polygon/hexagon": lambda u, v: _polygon(u, v, 6),
    "polygon/octagon": lambda u, v: _polygon(u, v, 8, 22.5 * D),
    "polygon/pentagon_outline": lambda u, v: _polygon(u, v, 5) & ~_polygon(u, v, 5, radius=0.6),
    "polygon/hexagon_outline": lambda u, v: _polygon(u, v, 6) & ~_polygon(u, v, 6, radius=0.6),
    "star/star4": lambda u, v: _star(u, v, 4),
    "star/star5": lambda u, v: _star(u, v, 5),
    "star/star6": lambda u, v: _star(u, v, 6),
    "star/star8": lambda u, v: _star(u, v, 8),
    "star/star5_fat": lambda u, v: _star(u, v, 5, depth=0.25),
    # curves
    "disc/small_disc": lambda u, v: _disc(u, v, 0.5),
    "disc/large_disc": lambda u, v: _disc(u, v, 1.15),
    "disc/half_top": lambda u, v: _disc(u, v, 1.0, 0, 0.3) & (v <= 0.3),
    "disc/half_bottom": lambda u, v: _disc(u, v, 1.0, 0, -0.3) & (v >= -0.3),
    "disc/quarter": lambda u, v: _disc(u, v, 1.3, -0.5, 0.5) & (u >= -0.5) & (v <= 0.5),
    "ring/thin_ring": lambda u, v: _ring(u, v, 0.8, 1.0),
    "ring/thick_ring": lambda u, v: _ring(u, v, 0.45, 1.05),
    "ring/double_ring": lambda u, v: _ring(u, v, 0.85, 1.05) | _ring(u, v, 0.4, 0.6),
    "ring/bullseye": lambda u, v: _ring(u, v, 0.7, 1.0) | _disc(u, v, 0.3),
    "ring/broken_ring": lambda u, v: _ring(u, v, 0.6, 1.0) & ~((u > 0) & (np.abs(v) < 0.35)),
    "ellipse/horizontal": lambda u, v: _ellipse(u, v, 1.2, 0.5),
    "ellipse/vertical": lambda u, v: _ellipse(u, v, 0.5, 1.2),
    "ellipse/diag_up": lambda u, v: _ellipse(u, v, 1.2, 0.45, -45 * D),
    "ellipse/diag_down": lambda u, v: _ellipse(u, v, 1.2, 0.45, 45 * D),
    "ellipse/ellipse_ring": lambda u, v: _ellipse(u, v, 1.2, 0.7) & ~_ellipse(u, v, 0.85, 0.4),
    "crescent/left": lambda u, v: _disc(u, v, 1.0) & ~_disc(u, v, 0.85, 0.45, 0),
    "crescent/right": lambda u, v: _disc(u, v, 1.0) & ~_disc(u, v, 0.85, -0.45, 0),
    "crescent/up": lambda u, v: _disc(u, v, 1.0) & ~_disc(u, v, 0.85, 0, 0.45),
    "crescent/down": lambda u, v: _disc(u, v, 1.0) & ~_disc(u, v, 0.85, 0, -0.45),
    "crescent/smile": lambda u, v: _ring(u, v, 0.75, 1.0) & (v >= 0.1),
    # lines
    "bar/horizontal": lambda u, v: _bar(u, v, 0.0),
    "bar/vertical": lambda u, v: _bar(u, v, 90 * D),
    "bar/diag_up": lambda u, v: _bar(u, v, -45 * D),
    "bar/diag_down": lambda u, v: _bar(u, v, 45 * D),
    "bar/short_thick": lambda u, v: _bar(u, v, 0.0, 0.55, 0.4),
    "cross/plus": lambda u, v: _bar(u, v, 0) | _bar(u, v, 90 * D),
    "cross/times": lambda u, v: _bar(u, v, 45 * D) | _bar(u, v, -45 * D),
    "cross/tee": lambda u, v: _bar(u, v, 0, cv=-0.9) | _bar(u, v, 90 * D, half_len=0.9, cv=0.1),
    "cross/ell": lambda u, v: _bar(u, v, 90 * D, cu=-0.7) | _bar(u, v, 0, half_len=0.8, cv=0.95, cu=0.1),
    "cross/aitch": lambda u, v: (_bar(u, v, 90 * D, cu=-0.75) | _bar(u, v, 90 * D, cu=0.75)
                                 | _bar(u, v, 0, half_len=0.75)),
    "parallel/two_horizontal": lambda u, v: _bar(u, v, 0, cv=-0.5) | _bar(u, v, 0, cv=0.5),
    "parallel/two_vertical": lambda u, v: _bar(u, v, 90 * D, cu=-0.5) | _bar(u, v, 90 * D, cu=0.5),
    "parallel/three_horizontal": lambda u, v: _bar(u, v, 0, cv=-0.75) | _bar(u, v, 0) | _bar(u, v, 0, cv=0.75),
    "parallel/three_vertical": lambda u, v: (_bar(u, v, 90 * D, cu=-0.75) | _bar(u, v, 90 * D)
                                             | _bar(u, v, 90 * D, cu=0.75)),
    "parallel/two_diagonal": lambda u, v: (_bar(u, v, 45 * D, cu=-0.4, cv=0.4) | _bar(u, v, 45 * D, cu=0.4, cv=-0.4)),
    "wave/wave1": lambda u, v: (np.abs(v - 0.5 * np.sin(np.pi * u)) <= 0.2) & (np.abs(u) <= 1.3),
    "wave/wave2": lambda u, v: (np.abs(v - 0.45 * np.sin(2 * np.pi * u)) <= 0.2) & (np.abs(u) <= 1.3),
    "wave/wave3": lambda u, v: (np.abs(v - 0.4 * np.sin(3 * np.pi * u)) <= 0.2) & (np.abs(u) <= 1.3),
    "wave/vertical_wave": lambda u, v: (np.abs(u - 0.45 * np.sin(2 * np.pi * v)) <= 0.2) & (np.abs(v) <= 1.3),
    "wave/zigzag": lambda u, v: (np.abs(v - 0.5 * (2 * np.abs(2 * ((u + 1.3) / 1.0 % 1.0) - 1) - 1)) <= 0.2)
                                & (np.abs(u) <= 1.3),
    # textures (full canvas; u, v span about [-1.8, 1.8])
    "grating/horizontal": lambda u, v: np.sin(2 * np.pi * v / 0.55) > 0,
    "grating/vertical": lambda u, v: np.sin(2 * np.pi * u / 0.55) > 0,
    "grating/diag_up": lambda u, v: np.sin(2 * np.pi * (u + v) / 0.75) > 0,
    "grating/diag_down": lambda u, v: np.sin(2 * np.pi * (u - v) / 0.75) > 0,
    "grating/fine_horizontal": lambda u, v: np.sin(2 * np.pi * v / 0.28) > 0,
    "checker/period4": lambda u, v: np.sin(np.pi * u / 0.22) * np.sin(np.pi * v / 0.22) > 0,
    "checker/period8": lambda u, v: np.sin(np.pi * u / 0.45) * np.sin(np.pi * v / 0.45) > 0,
    "checker/period16": lambda u, v: np.sin(np.pi * u / 0.9) * np.sin(np.pi * v / 0.9) > 0,
    "checker/diagonal": lambda u, v: np.sin(np.pi * (u + v) / 0.6) * np.sin(np.pi * (u - v) / 0.6) > 0,
    "checker/rect4x16": lambda u, v: np.sin(np.pi * u / 0.22) * np.sin(np.pi * v / 0.9) > 0,
    "dots/small_p6": lambda u, v: ((u / 0.34 % 1 - 0.5) ** 2 + (v / 0.34 % 1 - 0.5) ** 2) <= 0.06,
    "dots/small_p10": lambda u, v: ((u / 0.56 % 1 - 0.5) ** 2 + (v / 0.56 % 1 - 0.5) ** 2) <= 0.03,
    "dots/large_p10": lambda u, v: ((u / 0.56 % 1 - 0.5) ** 2 + (v / 0.56 % 1 - 0.5) ** 2) <= 0.12,
    "dots/hex_lattice": lambda u, v: (((u / 0.5 + 0.5 * (np.floor(v / 0.43) % 2)) % 1 - 0.5) ** 2
                                      + (v / 0.43 % 1 - 0.5) ** 2) <= 0.08,
    "dots/random": None,  # needs the generator: see _random_dots
    "radial/rings_low": lambda u, v: np.sin(2 * np.pi * np.sqrt(u**2 + v**2) / 0.6) > 0,
    "radial/rings_high": lambda u, v: np.sin(2 * np.pi * np.sqrt(u**2 + v**2) / 0.3) > 0,
    "radial/spokes6": lambda u, v: np.sin(6 * np.arctan2(v, u)) > 0,
    "radial/spokes12": lambda u, v: np.sin(12 * np.arctan2(v, u)) > 0,
    "radial/spiral": lambda u, v: np.sin(2 * np.arctan2(v, u) + 2 * np.pi * np.sqrt(u**2 + v**2) / 0.6) > 0,
    # composites
    "two_discs/side_by_side": lambda u, v: _disc(u, v, 0.5, -0.65) | _disc(u, v, 0.5, 0.65),
    "two_discs/stacked": lambda u, v: _disc(u, v, 0.5, 0, -0.65) | _disc(u, v, 0.5, 0, 0.65),
    "two_discs/diagonal": lambda u, v: _disc(u, v, 0.45, -0.6, 0.6) | _disc(u, v, 0.45, 0.6, -0.6),
    "two_discs/overlapping": lambda u, v: _disc(u, v, 0.65, -0.35) | _disc(u, v, 0.65, 0.35),
    "two_discs/big_small": lambda u, v: _disc(u, v, 0.75, -0.35) | _disc(u, v, 0.3, 0.9),
    "disc_square/disc_left": lambda u, v: _disc(u, v, 0.45, -0.65) | _box(u, v, 0.4, 0.4, 0.65),
    "disc_square/disc_above": lambda u, v: _disc(u, v, 0.45, 0, -0.65) | _box(u, v, 0.4, 0.4, 0, 0.65),
    "disc_square/disc_in_square": lambda u, v: _box(u, v, 1.0, 1.0) & ~_box(u, v, 0.8, 0.8) | _disc(u, v, 0.5),
    "disc_square/square_in_disc": lambda u, v: _ring(u, v, 0.85, 1.05) | _box(u, v, 0.4, 0.4),
    "disc_square/disc_in_corner": lambda u, v: _box(u, v, 1.0, 1.0) & ~_box(u, v, 0.8, 0.8) | _disc(u, v, 0.35, 0.4, 0.4),
    "frame/square_frame": lambda u, v: _frame(u, v, 1.1, 0.2),
    "frame/circle_frame": lambda u, v: _ring(u, v, 0.9, 1.15) & ~_frame(u, v, 2.0, 0.0),
    "frame/thick_frame": lambda u, v: _frame(u, v, 1.1, 0.45),
    "frame/double_frame": lambda u, v: _frame(u, v, 1.15, 0.15) | _frame(u, v, 0.65, 0.15),
    "frame/corner_brackets": lambda u, v: _frame(u, v, 1.1, 0.2) & ~(_box(u, v, 0.5, 2.0) | _box(u, v, 2.0, 0.5)),
    "grid/grid2x2_squares": lambda u, v: (_box(u, v, 0.3, 0.3, -0.55, -0.55) | _box(u, v, 0.3, 0.3, 0.55, -0.55)
                                          | _box(u, v, 0.3, 0.3, -0.55, 0.55) | _box(u, v, 0.3, 0.3, 0.55, 0.55)),
    "grid/grid2x2_discs": lambda u, v: (_disc(u, v, 0.33, -0.55, -0.55) | _disc(u, v, 0.33, 0.55, -0.55)
                                        | _disc(u, v, 0.33, -0.55, 0.55) | _disc(u, v, 0.33, 0.55, 0.55)),
    "grid/grid3x3_dots": lambda u, v: ((np.abs(u) <= 1.05) & (np.abs(v) <= 1.05)
                                       & (((u + 1.05) / 0.7 % 1 - 0.5) ** 2 + ((v + 1.05) / 0.7 % 1 - 0.5) ** 2 <= 0.09)),
    "grid/row3_squares": lambda u, v: (_box(u, v, 0.25, 0.25, -0.75) | _box(u, v, 0.25, 0.25)
                                       | _box(u, v, 0.25, 0.25, 0.75)),
    "grid/column3_squares": lambda u, v: (_box(u, v, 0.25, 0.25, 0, -0.75) | _box(u, v, 0.25, 0.25)
                                          | _box(u, v, 0.25, 0.25, 0, 0.75)),
}
assert set(_SHAPES) == set(FINE_NAMES), set(FINE_NAMES) ^ set(_SHAPES)


def _random_dots(n: int, rng: np.random.Generator) -> np.ndarray:
  masks = np.zeros((n, SIZE, SIZE), bool)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE]
  for i in range(n):
    k = rng.integers(12, 20)
    cy, cx = rng.uniform(0, SIZE, k), rng.uniform(0, SIZE, k)
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    masks[i] = (d2 <= rng.uniform(1.5, 3.0) ** 2).any(0)
  return masks


def render_class(fine: int, n: int, rng: np.random.Generator) -> np.ndarray:
  """Renders ``n`` images of fine class ``fine`` -> uint8 ``[n, 32, 32, 3]``."""
  name = FINE_NAMES[fine]
  is_texture = GROUPS[FINE_TO_GROUP[fine]] == "textures"
  radius = 10.0  # pixels per local unit
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
  centre = SIZE / 2 + (0 if is_texture else 1) * rng.uniform(-4, 4, size=(n, 2))
  if is_texture:
    centre = SIZE / 2 + rng.uniform(-3, 3, size=(n, 2))  # phase jitter of the texture
  scale = rng.uniform(0.85, 1.15, size=n) * radius
  angle = rng.uniform(-10, 10, size=n) * D
  du = (xx[None] - centre[:, 0, None, None]) / scale[:, None, None]
  dv = (yy[None] - centre[:, 1, None, None]) / scale[:, None, None]
  u, v = _rot(du, dv, angle[:, None, None])
  if name == "dots/random":
    mask = _random_dots(n, rng)
  else:
    mask = _SHAPES[name](u, v)
  mask = mask.astype(np.float32)[..., None]

  # Foreground/background colours with a minimum contrast; smooth background gradient; pixel noise.
  fg = rng.uniform(0, 1, size=(n, 3)).astype(np.float32)
  bg = rng.uniform(0, 1, size=(n, 3)).astype(np.float32)
  lum = lambda c: c @ np.array([0.299, 0.587, 0.114], np.float32)
  low = np.abs(lum(fg) - lum(bg)) < 0.3
  bg[low] = np.clip(1.0 - fg[low] + rng.normal(0, 0.1, size=(int(low.sum()), 3)), 0, 1)
  grad_dir = rng.normal(size=(n, 2)).astype(np.float32)
  ramp = (grad_dir[:, 0, None, None] * (xx[None] / SIZE - 0.5) + grad_dir[:, 1, None, None] * (yy[None] / SIZE - 0.5))
  background = bg[:, None, None, :] + 0.15 * ramp[..., None]
  image = mask * fg[:, None, None, :] + (1 - mask) * background
  image += rng.normal(0, rng.uniform(0.02, 0.08, size=(n, 1, 1, 1)), size=image.shape).astype(np.float32)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def render_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """All classes, ``per_class`` images each, shuffled with ``seed`` -> (images [N,32,32,3], fine labels [N])."""
  rng = np.random.default_rng(seed)
  images = np.concatenate([render_class(c, per_class, rng) for c in range(NUM_FINE)])
  labels = np.repeat(np.arange(NUM_FINE), per_class)
  order = rng.permutation(len(labels))
  return images[order], labels[order]
