"""Drawing detections on images (translucent masks, boxes, "name score" labels) and saving image grids, with PIL."""

from __future__ import annotations

import colorsys
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from research import fileio

MASK_ALPHA = 0.45


def class_color(label: int) -> tuple[int, int, int]:
  """A fixed, saturated RGB colour per class (hues spread by the golden ratio, so neighbouring labels differ)."""
  h = (int(label) * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
  return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ValueError, OSError, ImportError):  # no FreeType: the fixed-size bitmap font
    return ImageFont.load_default()


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, *,
                    masks: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                    score_threshold: float = 0.5, scale: int = 1) -> np.ndarray:
  """Draws the detections scoring >= ``score_threshold`` on a copy of ``image``.

  Args:
    image: ``uint8 [H, W, 3]``.
    boxes: ``[D, 4]`` absolute ``(x1, y1, x2, y2)`` pixels of ``image``.
    labels: ``[D]`` int class indices (colour per class: ``class_color``).
    scores: ``[D]``.
    masks: optional ``[D, H', W']`` bool / uint8 (nonzero = foreground) or float (>= 0.5) with ``H' >= H``,
      ``W' >= W`` (a padded size is cropped to the image), blended in the class colour with alpha 0.45.
    class_names: label -> name for the text; default the label number.
    score_threshold: detections below it (and NaN scores) are not drawn.
    scale: integer upscaling (nearest neighbour) before drawing, so that text and thin boxes stay legible.

  Returns:
    ``uint8 [H*scale, W*scale, 3]``: masks first, then box outlines and ``"name 0.93"`` labels, lower scores
    under higher ones.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"draw_detections expects an RGB image [H, W, 3], got shape {image.shape}")
  scale = int(scale)
  if scale < 1:
    raise ValueError(f"draw_detections: scale must be a positive integer, got {scale}")
  h, w = image.shape[:2]
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
  if not len(boxes) == len(labels) == len(scores):
    raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(labels)} labels, {len(scores)} scores")
  keep = np.flatnonzero(scores >= score_threshold)  # NaN compares False: dropped
  keep = keep[np.argsort(scores[keep], kind="stable")]  # highest drawn last, on top
  out = np.repeat(np.repeat(image.astype(np.uint8), scale, 0), scale, 1)
  if masks is not None and keep.size:
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != len(boxes) or masks.shape[1] < h or masks.shape[2] < w:
      raise ValueError(f"draw_detections: masks must be [D, >=H, >=W] = [{len(boxes)}, >={h}, >={w}], "
                       f"got {masks.shape}")
    masks = masks[:, :h, :w]
    masks = masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    blended = out.astype(np.float32)
    for i in keep:
      m = np.repeat(np.repeat(masks[i], scale, 0), scale, 1)
      blended[m] = (1 - MASK_ALPHA) * blended[m] + MASK_ALPHA * np.asarray(class_color(labels[i]), np.float32)
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  if not keep.size:
    return out
  pil = Image.fromarray(out)
  draw = ImageDraw.Draw(pil)
  font = _font(10 * scale)
  width = max(1, scale)
  for i in keep:
    color = class_color(labels[i])
    x1, y1, x2, y2 = (float(v) * scale for v in boxes[i])
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
    name = class_names[int(labels[i])] if class_names is not None else str(int(labels[i]))
    text = f"{name} {scores[i]:.2f}"
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - l, b - t
    ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box, else inside its top edge
    tx = min(max(x1, 0), max(out.shape[1] - tw - 2, 0))
    draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=color)
    text_color = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
    draw.text((tx + 1 - l, ty + 1 - t), text, fill=text_color, font=font)
  return np.asarray(pil, np.uint8)


def image_grid(images: Sequence[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
  """``uint8 [rows*(Hm+pad)+pad, cols'*(Wm+pad)+pad, 3]``: images row-major on a black canvas, each top-left in
  a cell of the largest height ``Hm`` / width ``Wm``; ``cols' = min(cols, len(images))``."""
  if not images:
    raise ValueError("image_grid: no images")
  images = [np.asarray(im) for im in images]
  images = [np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in images]
  hm, wm = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
  cols = max(1, min(int(cols), len(images)))
  rows = -(-len(images) // cols)
  grid = np.zeros((rows * (hm + pad) + pad, cols * (wm + pad) + pad, 3), np.uint8)
  for n, im in enumerate(images):
    r, c = divmod(n, cols)
    y, x = pad + r * (hm + pad), pad + c * (wm + pad)
    grid[y:y + im.shape[0], x:x + im.shape[1]] = im[..., :3]
  return grid


def save_grid(images: Sequence[np.ndarray], path: str | os.PathLike, cols: int = 4) -> None:
  """``images`` (``uint8 [H, W, 3]``, sizes may differ) tiled by ``image_grid`` and written to ``path`` as PNG,
  atomically (``research.fileio.write_atomic``), creating the directory; process 0 only."""
  if not fileio.main_process():
    return
  buf = io.BytesIO()
  Image.fromarray(image_grid(images, cols)).save(buf, format="PNG")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fileio.write_atomic(path, buf.getvalue())
