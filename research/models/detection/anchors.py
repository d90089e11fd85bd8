"""Anchors (Ren et al. 2015, §3.1.1; FPN: Lin et al. 2017, §4.1): ``sizes x aspect ratios`` at every
location of every pyramid level, as a static numpy array (image size and feature strides are static).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], *, round_base: bool = False) -> np.ndarray:
  """Anchors centred on the origin ``[len(aspect_ratios) * len(sizes), 4]``, ratio-major (torchvision's order).

  An anchor of size ``s`` and aspect ratio ``r = h / w`` has area ``s²``: ``w = s / sqrt(r)``, ``h = s·sqrt(r)``.
  ``round_base=True`` rounds the corners to integers as torchvision's ``AnchorGenerator`` does (a legacy of
  integer pixel boxes; it shifts non-square anchors by up to half a pixel).
  """
  sizes = np.asarray(sizes, np.float64)
  ratios = np.asarray(aspect_ratios, np.float64)
  if sizes.ndim != 1 or ratios.ndim != 1 or (sizes <= 0).any() or (ratios <= 0).any():
    raise ValueError(f"anchor sizes {tuple(sizes)} and aspect_ratios {tuple(ratios)} must be positive 1-D lists")
  h_ratio = np.sqrt(ratios)
  ws = (sizes[None, :] / h_ratio[:, None]).reshape(-1)
  hs = (sizes[None, :] * h_ratio[:, None]).reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / 2
  if round_base:
    base = np.round(base)
  return base.astype(np.float32)


def grid_anchors(grid_size: tuple[int, int], stride: int | tuple[int, int], base: np.ndarray, *,
                 offset: float = 0.5) -> np.ndarray:
  """Anchors of one level ``[gh * gw * A, 4]``, location-major (row, column), anchor-minor.

  The anchors of feature cell ``(i, j)`` are centred at ``((j + offset) * stride_x, (i + offset) * stride_y)``.
  ``offset=0.5`` is the centre of the cell in the continuous pixel frame (what the cell's receptive field is
  centred on); torchvision and detectron2 use ``offset=0`` (the cell's top-left corner).
  """
  gh, gw = grid_size
  sy, sx = (stride, stride) if isinstance(stride, int) else stride
  ys = (np.arange(gh, dtype=np.float64) + offset) * sy
  xs = (np.arange(gw, dtype=np.float64) + offset) * sx
  yy, xx = np.meshgrid(ys, xs, indexing="ij")
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4).astype(np.float32)


def multilevel_anchors(image_size: tuple[int, int], strides: Sequence[int], sizes: Sequence[Sequence[float]],
                       aspect_ratios: Sequence[float], *, offset: float = 0.5,
                       round_base: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
  """All anchors of a pyramid: ``(anchors [N, 4], level [N] int32, counts per level)``.

  Level ``l`` has stride ``strides[l]``, a ``ceil(H / stride) x ceil(W / stride)`` grid (the size of a
  stride-s map of the backbones here) and anchors ``sizes[l] x aspect_ratios``; levels are concatenated in order.
  """
  if len(strides) != len(sizes):
    raise ValueError(f"{len(strides)} strides {tuple(strides)} but {len(sizes)} anchor size lists {tuple(sizes)}")
  h, w = image_size
  out, level, counts = [], [], []
  for l, (stride, s) in enumerate(zip(strides, sizes)):
    grid = (-(-h // stride), -(-w // stride))
    a = grid_anchors(grid, stride, cell_anchors(s, aspect_ratios, round_base=round_base), offset=offset)
    out.append(a)
    level.append(np.full((len(a),), l, np.int32))
    counts.append(len(a))
  return np.concatenate(out), np.concatenate(level), tuple(counts)
