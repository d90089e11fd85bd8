"""``shapes3d_parts``: procedurally assembled 3-D shapes with part annotations, as an offline TFDS builder.

Data for PQ-NET (Wu et al., CVPR 2020, "PQ-NET: A Generative Part Seq2Seq Network for 3D Shapes"): a shape is a
sequence of parts (§3.1), each part a voxel grid normalised into its own bounding box (the part auto-encoder's
input) plus that box (the Seq2Seq network's 6 box parameters, §3.2). PartNet is not reachable offline, so the
shapes are assembled from analytic primitives, 3 categories (:data:`CATEGORIES`):

* ``chair``: seat (box), back (box, at the back ``z`` end of the seat), 4 legs (all boxes or all vertical
  cylinders), optional 2 arms (boxes on the seat's left / right edges): 6 or 8 parts.
* ``table``: top (box) and either 4 legs (boxes or cylinders; 5 parts) or a central column (cylinder) on a base
  (flat cylinder or box; 3 parts).
* ``lamp``: base (flat cylinder or box), pole (thin cylinder), shade (solid cone frustum or cylinder): 3 parts.

Every dimension (sizes, heights, proportions, leg inset, the shape's offset in ``x`` / ``z``) is drawn from a
seeded generator per split and shape (``np.random.default_rng([split seed, index])``), so a shape does not depend
on the others or on the build order. Thin parts have a minimum thickness of 1-1.5 voxels at the config's
resolution, and a shape is redrawn (from the same generator) until every part owns at least 2 voxels.

Geometry: the unit cube ``[0, 1]^3`` with axes ``x`` (left -> right), ``y`` (up; the floor is ``y = 0.05``) and
``z`` (front -> back); a grid ``g[i, j, k]`` holds voxel ``(x, y, z) = ((i, j, k) + 0.5) / R``. Voxelisation is
analytic: a voxel belongs to a primitive when its centre does (half-open boxes ``lo <= p < hi``; vertical
cylinders / cone frusta ``y0 <= y < y1`` and ``(x - cx)^2 + (z - cz)^2 < r(y)^2`` with ``r`` linear in ``y``).
Primitives of one shape are disjoint (they touch along planes); were a voxel claimed twice, the earlier part in
the generator's order would keep it.

Part order and boxes: ``part_boxes[k]`` is part ``k``'s voxel-tight axis-aligned box ``(x0, y0, z0, x1, y1, z1)``
(min corner, max corner) in ``[0, 1]^3``: the union of its voxels' cells, ``[min index / R, (max index + 1) / R]``
per axis, so every voxel of the part lies inside it and the part normalised to it fills the unit cube (PQ-NET's
parts are scaled to fill their box, anisotropically). Parts are in a canonical order: top to bottom (decreasing
box centre ``y``), then left to right (increasing centre ``x``), then front to back (increasing centre ``z``),
compared exactly in voxel units; rows ``k >= num_parts`` of ``part_boxes`` / ``part_labels`` are zero.

Configs (:data:`CONFIGS`): ``default`` R = 32, 1200 train / 300 test shapes (~8 s to build on 2 CPU cores);
``small`` R = 16, 120 / 30 (tests, < 1 s). Shape ``i`` of a split has category ``i mod 3`` (balanced).

Features (``R`` = the config's resolution, ``P = MAX_PARTS = 8``):

* ``voxels``      Tensor uint8 [R, R, R] (zlib): occupancy 0/1
* ``parts``       Tensor uint8 [R, R, R] (zlib): part-label grid, 0 = empty, ``k + 1`` = part ``k`` (canonical order)
* ``num_parts``   int32
* ``part_boxes``  Tensor float32 [P, 6]: ``(x0, y0, z0, x1, y1, z1)`` per part, zero rows past ``num_parts``
* ``part_labels`` Tensor int32 [P]: semantic part class, an index into :data:`PART_NAMES` (0 = ``none`` padding)
* ``category``    ClassLabel(:data:`CATEGORIES`);  ``index``: int64, the shape's index in its split

Implicit-field samples (not stored; :func:`sample_points`, :func:`part_points`) follow IM-NET / PQ-NET's point
sampling, see :func:`sample_points`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

NAME = "shapes3d_parts"
CATEGORIES = ("chair", "table", "lamp")
PART_NAMES = ("none", "seat", "back", "leg", "arm", "top", "column", "base", "pole", "shade")
MAX_PARTS = 8
SPLITS = ("train", "test")
_SEEDS = {"train": 20200614, "test": 20200615}  # CVPR 2020 opened on 14 June
FLOOR = 0.05
_MIN_PART_VOXELS = 2
_KEYS = ("voxels", "parts", "num_parts", "part_boxes", "part_labels", "category", "index")


@dataclasses.dataclass
class Shapes3DPartsConfig(tfds.core.BuilderConfig):
  """Grid resolution ``R`` and split sizes."""
  resolution: int = 32
  num_train: int = 1200
  num_test: int = 300


CONFIGS: dict[str, Shapes3DPartsConfig] = {c.name: c for c in (
    Shapes3DPartsConfig(name="default", description="32^3 voxels, 1200 train / 300 test shapes."),
    Shapes3DPartsConfig(name="small", description="16^3 voxels, 120 train / 30 test shapes (tests).", resolution=16,
                        num_train=120, num_test=30),
)}


# ------------------------------------------------------------------------------------------------------ primitives


@dataclasses.dataclass(frozen=True)
class Box:
  """Axis-aligned box ``lo <= p < hi`` (``lo``, ``hi``: (x, y, z))."""
  lo: tuple[float, float, float]
  hi: tuple[float, float, float]

  def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    (x0, y0, z0), (x1, y1, z1) = self.lo, self.hi
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1) & (z >= z0) & (z < z1)


@dataclasses.dataclass(frozen=True)
class Cylinder:
  """Vertical cone frustum (a cylinder when ``r0 == r1``) around ``(cx, cz)`` for ``y0 <= y < y1``, radius ``r0``
  at ``y0`` and ``r1`` at ``y1``, linear in between."""
  cx: float
  cz: float
  y0: float
  y1: float
  r0: float
  r1: float

  def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    t = (y - self.y0) / (self.y1 - self.y0)
    r = self.r0 + (self.r1 - self.r0) * t
    return (y >= self.y0) & (y < self.y1) & ((x - self.cx) ** 2 + (z - self.cz) ** 2 < r * r)


Primitive = Box | Cylinder


@dataclasses.dataclass(frozen=True)
class Shape3D:
  """One generated shape (module docstring): ``voxels`` / ``parts`` uint8 [R, R, R], ``part_boxes`` float32
  [MAX_PARTS, 6], ``part_labels`` int32 [MAX_PARTS], ``num_parts`` and ``category`` (an index into CATEGORIES)."""
  voxels: np.ndarray
  parts: np.ndarray
  part_boxes: np.ndarray
  part_labels: np.ndarray
  num_parts: int
  category: int


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
  return float(rng.uniform(lo, hi))


def _legs(rng: np.random.Generator, x0: float, x1: float, z0: float, z1: float, y1: float, v: float
          ) -> list[tuple[str, Primitive]]:
  """4 legs (boxes or cylinders, chosen once) from the floor up to ``y1`` under the rectangle [x0,x1] x [z0,z1]."""
  inset = _u(rng, 0.0, 0.04)
  if rng.random() < 0.5:
    s = _u(rng, max(0.05, 1.5 * v), max(0.08, 2.5 * v))
    xs, zs = (x0 + inset, x1 - inset - s), (z0 + inset, z1 - inset - s)
    return [("leg", Box((lx, FLOOR, lz), (lx + s, y1, lz + s))) for lx in xs for lz in zs]
  r = _u(rng, max(0.03, 1.0 * v), max(0.045, 1.5 * v))
  xs, zs = (x0 + inset + r, x1 - inset - r), (z0 + inset + r, z1 - inset - r)
  return [("leg", Cylinder(cx, cz, FLOOR, y1, r, r)) for cx in xs for cz in zs]


def _chair(rng: np.random.Generator, v: float) -> list[tuple[str, Primitive]]:
  cx, cz = 0.5 + _u(rng, -0.03, 0.03), 0.5 + _u(rng, -0.03, 0.03)
  w, d = _u(rng, 0.4, 0.6), _u(rng, 0.4, 0.55)
  t, hs = _u(rng, max(0.06, 1.2 * v), max(0.1, 2.0 * v)), _u(rng, 0.3, 0.45)
  x0, x1, z0, z1 = cx - w / 2, cx + w / 2, cz - d / 2, cz + d / 2
  top = hs + t
  tb = _u(rng, max(0.06, 1.2 * v), max(0.1, 2.0 * v))
  hb = min(_u(rng, 0.3, 0.45), 0.95 - top)
  bw = w * _u(rng, 0.8, 1.0)
  parts = [("seat", Box((x0, hs, z0), (x1, top, z1))),
           ("back", Box((cx - bw / 2, top, z1 - tb), (cx + bw / 2, top + hb, z1)))]
  if rng.random() < 0.4:  # arms on the seat's left and right edges, in front of the back
    aw, ah = _u(rng, max(0.05, 1.2 * v), max(0.08, 2.0 * v)), _u(rng, 0.12, 0.6) * hb
    parts += [("arm", Box((x0, top, z0), (x0 + aw, top + ah, z1 - tb))),
              ("arm", Box((x1 - aw, top, z0), (x1, top + ah, z1 - tb)))]
  return parts + _legs(rng, x0, x1, z0, z1, hs, v)


def _table(rng: np.random.Generator, v: float) -> list[tuple[str, Primitive]]:
  cx, cz = 0.5 + _u(rng, -0.03, 0.03), 0.5 + _u(rng, -0.03, 0.03)
  w, d = _u(rng, 0.6, 0.9), _u(rng, 0.45, 0.8)
  t, ht = _u(rng, max(0.05, 1.2 * v), max(0.1, 2.0 * v)), _u(rng, 0.4, 0.65)
  x0, x1, z0, z1 = cx - w / 2, cx + w / 2, cz - d / 2, cz + d / 2
  parts: list[tuple[str, Primitive]] = [("top", Box((x0, ht, z0), (x1, ht + t, z1)))]
  if rng.random() < 0.6:
    return parts + _legs(rng, x0, x1, z0, z1, ht, v)
  bt = _u(rng, max(0.04, 1.2 * v), max(0.08, 2.0 * v))
  rc = _u(rng, max(0.04, 1.2 * v), max(0.08, 1.8 * v))
  if rng.random() < 0.5:
    rb = _u(rng, 0.15, 0.3)
    base: Primitive = Cylinder(cx, cz, FLOOR, FLOOR + bt, rb, rb)
  else:
    bw, bd = _u(rng, 0.3, 0.6), _u(rng, 0.3, 0.6)
    base = Box((cx - bw / 2, FLOOR, cz - bd / 2), (cx + bw / 2, FLOOR + bt, cz + bd / 2))
  return parts + [("column", Cylinder(cx, cz, FLOOR + bt, ht, rc, rc)), ("base", base)]


def _lamp(rng: np.random.Generator, v: float) -> list[tuple[str, Primitive]]:
  cx, cz = 0.5 + _u(rng, -0.03, 0.03), 0.5 + _u(rng, -0.03, 0.03)
  bt = _u(rng, max(0.04, 1.2 * v), max(0.08, 2.0 * v))
  if rng.random() < 0.7:
    rb = _u(rng, 0.12, 0.25)
    base: Primitive = Cylinder(cx, cz, FLOOR, FLOOR + bt, rb, rb)
  else:
    s = _u(rng, 0.24, 0.45)
    base = Box((cx - s / 2, FLOOR, cz - s / 2), (cx + s / 2, FLOOR + bt, cz + s / 2))
  rp = _u(rng, max(0.02, 0.9 * v), max(0.04, 1.3 * v))
  hp = _u(rng, 0.5, 0.75)
  hs = min(_u(rng, 0.15, 0.25), 0.95 - hp)
  r_bottom = _u(rng, 0.15, 0.3)
  r_top = r_bottom * (1.0 if rng.random() < 0.3 else _u(rng, 0.3, 0.8))  # cylinder or cone frustum
  return [("base", base), ("pole", Cylinder(cx, cz, FLOOR + bt, hp, rp, rp)),
          ("shade", Cylinder(cx, cz, hp, hp + hs, r_bottom, r_top))]


_GENERATORS = {"chair": _chair, "table": _table, "lamp": _lamp}


def voxel_centres(resolution: int) -> np.ndarray:
  """float64 [R]: the voxel centres ``(i + 0.5) / R`` along one axis."""
  return (np.arange(resolution) + 0.5) / resolution


def voxelize(primitives: Sequence[Primitive], resolution: int) -> np.ndarray:
  """uint8 [R, R, R] label grid: ``k + 1`` where voxel centres lie in ``primitives[k]`` (the first one wins), 0
  elsewhere (module docstring)."""
  c = voxel_centres(resolution)
  x, y, z = np.meshgrid(c, c, c, indexing="ij")
  grid = np.zeros((resolution,) * 3, np.uint8)
  for k, prim in enumerate(primitives):
    grid[(grid == 0) & prim.inside(x, y, z)] = k + 1
  return grid


def voxel_box(mask: np.ndarray) -> np.ndarray:
  """float64 [6] ``(x0, y0, z0, x1, y1, z1)``: the union of the cells of the True voxels of ``mask`` [R, R, R]
  (``[min index / R, (max index + 1) / R]`` per axis)."""
  idx = np.argwhere(mask)
  if len(idx) == 0:
    raise ValueError("voxel_box: the mask has no voxel; a part must own at least one")
  r = np.asarray(mask.shape, np.float64)
  return np.concatenate([idx.min(0) / r, (idx.max(0) + 1) / r])


def generate_shape(rng: np.random.Generator, category: str, resolution: int, max_tries: int = 100) -> Shape3D:
  """A random shape of ``category`` at ``resolution`` (module docstring), redrawn until every part owns at least
  ``_MIN_PART_VOXELS`` voxels; parts in canonical order."""
  if category not in _GENERATORS:
    raise ValueError(f"generate_shape: category={category!r}; choose one of {CATEGORIES}")
  if resolution < 8:
    raise ValueError(f"generate_shape: resolution={resolution} is too coarse for thin parts; use >= 8 (16, 32, 64)")
  v = 1.0 / resolution
  for _ in range(max_tries):
    named = _GENERATORS[category](rng, v)
    grid = voxelize([p for _, p in named], resolution)
    counts = np.bincount(grid.ravel(), minlength=len(named) + 1)[1:]
    if counts.min() >= _MIN_PART_VOXELS:
      break
  else:
    raise RuntimeError(f"generate_shape: no {category} with every part >= {_MIN_PART_VOXELS} voxels at "
                       f"resolution {resolution} in {max_tries} draws")
  n = len(named)
  if n > MAX_PARTS:
    raise RuntimeError(f"generate_shape: a {category} has {n} parts > MAX_PARTS={MAX_PARTS}")
  idx_boxes = []
  for k in range(n):
    ijk = np.argwhere(grid == k + 1)
    idx_boxes.append((ijk.min(0), ijk.max(0) + 1))  # integer voxel-tight box
  # canonical order: top to bottom, left to right, front to back (twice the centre, exact integers)
  order = sorted(range(n), key=lambda k: (-int(idx_boxes[k][0][1] + idx_boxes[k][1][1]),
                                          int(idx_boxes[k][0][0] + idx_boxes[k][1][0]),
                                          int(idx_boxes[k][0][2] + idx_boxes[k][1][2]), k))
  parts = np.zeros_like(grid)
  boxes = np.zeros((MAX_PARTS, 6), np.float32)
  labels = np.zeros((MAX_PARTS,), np.int32)
  for new, old in enumerate(order):
    parts[grid == old + 1] = new + 1
    lo, hi = idx_boxes[old]
    boxes[new] = np.concatenate([lo, hi]).astype(np.float64) / resolution
    labels[new] = PART_NAMES.index(named[old][0])
  return Shape3D(voxels=(parts > 0).astype(np.uint8), parts=parts, part_boxes=boxes, part_labels=labels,
                 num_parts=n, category=CATEGORIES.index(category))


def split_shape(split: str, index: int, config: str | Shapes3DPartsConfig = "default") -> Shape3D:
  """Shape ``index`` of ``split`` exactly as the builder generates it (category ``index mod 3``)."""
  _check_split(split)
  cfg = CONFIGS[_check_config(config)] if isinstance(config, str) else config
  rng = np.random.default_rng([_SEEDS[split], int(index)])
  return generate_shape(rng, CATEGORIES[index % len(CATEGORIES)], cfg.resolution)


# ---------------------------------------------------------------------------------------------------------- builder


class Shapes3DParts(tfds.core.GeneratorBasedBuilder):
  """Procedural chairs, tables and lamps with part-label grids and part boxes (see the module docstring)."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default (32^3, 1200/300), small (16^3, 120/30)."}
  BUILDER_CONFIGS = list(CONFIGS.values())

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "voxels": tfds.features.Tensor(shape=(r, r, r), dtype=np.uint8, encoding="zlib"),
            "parts": tfds.features.Tensor(shape=(r, r, r), dtype=np.uint8, encoding="zlib"),
            "num_parts": np.int32,
            "part_boxes": tfds.features.Tensor(shape=(MAX_PARTS, 6), dtype=np.float32),
            "part_labels": tfds.features.Tensor(shape=(MAX_PARTS,), dtype=np.int32),
            "category": tfds.features.ClassLabel(names=list(CATEGORIES)),
            "index": np.int64,
        }),
        homepage="https://example.invalid/research/shapes3d_parts",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split: str, num_shapes: int):
    for i in range(num_shapes):
      s = split_shape(split, i, self.builder_config)
      yield i, {"voxels": s.voxels, "parts": s.parts, "num_parts": np.int32(s.num_parts),
                "part_boxes": s.part_boxes, "part_labels": s.part_labels, "category": s.category, "index": i}


def _check_split(split: str) -> str:
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.check_split(NAME, SPLITS, split)


def _check_config(config: str) -> str:
  if config not in CONFIGS:
    raise ValueError(f"{NAME} config={config!r}; choose one of {list(CONFIGS)}")
  return config


def builder(config: str = "default", data_dir: str | None = None) -> Shapes3DParts:
  """The builder of ``config``, generated into ``data_dir`` on first use (array_record; with several JAX
  processes process 0 builds while the others wait, so ``data_dir`` must be shared)."""
  from research.data import pipeline  # late import: pipeline imports this module
  return pipeline.config_builder(Shapes3DParts, NAME, CONFIGS, config, data_dir)


def get_source(split: str, data_dir: str | None = None, config: str = "default"):
  """Random-access source of decoded ``shapes3d_parts/<config>`` records of ``split`` (built on first use)."""
  _check_split(split)
  return builder(config, data_dir).as_data_source(split=split)


def load_arrays(split: str, data_dir: str | None = None, config: str = "default", *,
                keys: Sequence[str] = _KEYS, limit: int | None = None) -> dict[str, np.ndarray]:
  """A whole split (at most its first ``limit`` shapes) in ``index`` order as stacked arrays: ``voxels`` / ``parts``
  uint8 [N, R, R, R], ``num_parts`` int32 [N], ``part_boxes`` float32 [N, 8, 6], ``part_labels`` int32 [N, 8],
  ``category`` int32 [N], ``index`` int64 [N] (those named in ``keys``)."""
  unknown = [k for k in keys if k not in _KEYS]
  if unknown:
    raise ValueError(f"load_arrays: unknown keys {unknown}; choose from {list(_KEYS)}")
  source = get_source(split, data_dir, config)
  try:  # batched random access (array_record), else one record at a time (e.g. tfds.testing.mock_data)
    raw = source.__getitems__(list(range(len(source))))
  except (AttributeError, TypeError):
    raw = [source[i] for i in range(len(source))]
  rows = sorted(raw, key=lambda r: int(r["index"]))[:limit]  # index order, not TFDS's shuffled key order
  r = CONFIGS[config].resolution
  dtypes = {"voxels": np.uint8, "parts": np.uint8, "num_parts": np.int32, "part_boxes": np.float32,
            "part_labels": np.int32, "category": np.int32, "index": np.int64}
  shapes = {"voxels": (r, r, r), "parts": (r, r, r), "part_boxes": (MAX_PARTS, 6), "part_labels": (MAX_PARTS,)}
  out: dict[str, Any] = {}
  for k in keys:
    out[k] = np.stack([np.asarray(row[k], dtypes[k]).reshape(shapes.get(k, ())) for row in rows])
  return out


# ------------------------------------------------------------------------------------------ implicit-field samples


def part_masks(parts: np.ndarray, num_parts: int | None = None, max_parts: int = MAX_PARTS) -> np.ndarray:
  """bool [max_parts, R, R, R] per-part occupancy of a label grid ``parts`` [R, R, R] (rows past ``num_parts``
  False)."""
  parts = np.asarray(parts)
  n = int(parts.max()) if num_parts is None else int(num_parts)
  if n > max_parts:
    raise ValueError(f"part_masks: num_parts={n} exceeds max_parts={max_parts}; raise max_parts")
  labels = np.arange(1, max_parts + 1).reshape((-1,) + (1,) * parts.ndim)
  return (parts[None] == labels) & (labels <= n)


def occupancy_at(voxels: np.ndarray, points: np.ndarray) -> np.ndarray:
  """uint8 [...]: the grid's occupancy at ``points`` [..., 3] in ``[0, 1]^3``: that of the voxel whose cell holds the
  point (``floor(p * R)``, clipped to the grid: the piecewise-constant occupancy the grid stands for)."""
  v = np.asarray(voxels)
  p = np.asarray(points, np.float64)
  if v.ndim != 3 or p.shape[-1] != 3:
    raise ValueError(f"occupancy_at: voxels must be [X, Y, Z] and points [..., 3], got {v.shape} and {p.shape}")
  idx = [np.clip(np.floor(p[..., a] * v.shape[a]).astype(np.int64), 0, v.shape[a] - 1) for a in range(3)]
  return (v[idx[0], idx[1], idx[2]] > 0).astype(np.uint8)


def surface_voxels(voxels: np.ndarray, window: int = 1) -> np.ndarray:
  """bool [X, Y, Z]: voxels whose ``(2 window + 1)^3`` neighbourhood holds both occupied and empty voxels (space
  outside the grid counts as empty), i.e. the voxels within ``window`` of the surface, on both sides."""
  v = np.asarray(voxels) > 0
  size = 2 * window + 1
  hi = ndimage.maximum_filter(v, size=size, mode="constant", cval=False)
  lo = ndimage.minimum_filter(v, size=size, mode="constant", cval=False)
  return hi & ~lo


def sample_points(voxels: np.ndarray, n: int, rng: np.random.Generator, *, surface_fraction: float = 0.5,
                  window: int = 1, jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Implicit-field training samples of an occupancy grid ``voxels`` [X, Y, Z]: ``(points float32 [n, 3] in
  [0, 1]^3, labels uint8 [n] 0/1)``.

  As IM-NET (Chen & Zhang 2019, §3.2; PQ-NET's ``sample_points_from_voxel.py``) the samples are biased towards the
  surface, where the decision boundary is: ``round(surface_fraction * n)`` voxels are drawn uniformly (with
  replacement) from :func:`surface_voxels` (the voxels within ``window`` of the surface, inside and outside; all
  of them are used at most once more than any other), the rest uniformly from the whole grid; a grid without
  surface uses the whole grid for all ``n``. Each sample is its voxel's centre, moved uniformly within the voxel's
  cell when ``jitter`` (IM-NET samples centres only; jitter makes the decoder see the whole cell). Labels are
  :func:`occupancy_at` of the returned float32 points: exactly the grid's piecewise-constant occupancy.
  """
  v = np.asarray(voxels) > 0
  if v.ndim != 3:
    raise ValueError(f"sample_points: voxels must be an occupancy grid [X, Y, Z], got shape {v.shape}")
  if n < 1:
    raise ValueError(f"sample_points: n={n} must be >= 1")
  if not 0.0 <= surface_fraction <= 1.0:
    raise ValueError(f"sample_points: surface_fraction={surface_fraction} must be in [0, 1]")
  near = np.flatnonzero(surface_voxels(v, window))
  n_surface = int(round(surface_fraction * n)) if len(near) else 0
  if n_surface:  # every surface voxel once per full pass, a random subset for the remainder
    reps, rem = divmod(n_surface, len(near))
    surface = np.concatenate([np.tile(near, reps), rng.choice(near, rem, replace=False)])
  else:
    surface = np.zeros((0,), np.int64)
  uniform = rng.integers(0, v.size, n - n_surface)
  flat = np.concatenate([surface, uniform])
  ijk = np.stack(np.unravel_index(flat, v.shape), -1).astype(np.float64)
  offset = rng.uniform(-0.5, 0.5, ijk.shape) if jitter else 0.0
  points = np.clip((ijk + 0.5 + offset) / np.asarray(v.shape, np.float64), 0.0, 1.0).astype(np.float32)
  return points, occupancy_at(v, points)


def normalized_part_voxels(parts: np.ndarray, part_boxes: np.ndarray, num_parts: int, resolution: int | None = None
                           ) -> np.ndarray:
  """uint8 [MAX_PARTS, r, r, r]: each part resampled into its own box (PQ-NET §3.1: every part is scaled,
  anisotropically, to fill a unit cube before the part auto-encoder); rows past ``num_parts`` zero.

  Local voxel ``(a, b, c)`` of part ``k`` holds the label grid's part-``k`` occupancy at the world point
  ``lo + ((a, b, c) + 0.5) / r * (hi - lo)`` (nearest-neighbour resampling, :func:`occupancy_at`); ``r`` defaults to
  the grid's ``R``. ``part_boxes`` [>= num_parts, 6] as stored (min corner, max corner)."""
  parts = np.asarray(parts)
  boxes = np.asarray(part_boxes, np.float64)
  r = parts.shape[0] if resolution is None else int(resolution)
  if parts.ndim != 3 or boxes.ndim != 2 or boxes.shape[1] != 6 or boxes.shape[0] < num_parts:
    raise ValueError(f"normalized_part_voxels: parts must be [R, R, R] and part_boxes [>= num_parts, 6], got "
                     f"{parts.shape} and {boxes.shape} (num_parts={num_parts})")
  out = np.zeros((MAX_PARTS, r, r, r), np.uint8)
  u = voxel_centres(r)
  for k in range(num_parts):
    lo, hi = boxes[k, :3], boxes[k, 3:]
    idx = [np.clip(np.floor((lo[a] + u * (hi[a] - lo[a])) * parts.shape[a]).astype(np.int64), 0, parts.shape[a] - 1)
           for a in range(3)]
    out[k] = parts[np.ix_(*idx)] == k + 1
  return out


def part_points(parts: np.ndarray, part_boxes: np.ndarray, num_parts: int, n: int, rng: np.random.Generator, *,
                resolution: int | None = None, surface_fraction: float = 0.5, window: int = 1, jitter: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-part implicit-field samples in each part's normalised frame (its box mapped to ``[0, 1]^3``):
  ``(part_voxels uint8 [MAX_PARTS, r, r, r], points float32 [MAX_PARTS, n, 3], labels uint8 [MAX_PARTS, n])``.

  ``part_voxels`` is :func:`normalized_part_voxels` (the part auto-encoder's input) and the samples are
  :func:`sample_points` of it, so the labels are that local grid's occupancy; a local point ``u`` is the world point
  ``lo + u * (hi - lo)``. Padding rows (``k >= num_parts``) have an empty grid: uniform points, labels 0."""
  grids = normalized_part_voxels(parts, part_boxes, num_parts, resolution)
  pts = np.zeros((MAX_PARTS, n, 3), np.float32)
  labels = np.zeros((MAX_PARTS, n), np.uint8)
  for k in range(MAX_PARTS):
    pts[k], labels[k] = sample_points(grids[k], n, rng, surface_fraction=surface_fraction, window=window,
                                      jitter=jitter)
  return grids, pts, labels
