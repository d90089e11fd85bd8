"""Geometric augmentations that move every target with the image (pure numpy, no TensorFlow).

Every function takes an example ``dict`` and returns a NEW dict (inputs are never modified); keys it does not
know pass through unchanged. Known keys, all optional:

* ``image``     ``[H, W, C]`` (or ``[H, W]``), any dtype; resized bilinearly.
* ``boxes``     ``[N, 4]`` float32 ``(x1, y1, x2, y2)`` in absolute pixels (see the coordinate frame below).
* ``masks``     ``[N, H, W]`` uint8 instance masks; resized nearest-neighbour.
* ``semantic``  ``[H, W]`` integer class map; resized nearest-neighbour; padded with ``semantic_fill``
  (default 255, the usual ignore label).
* ``keypoints`` ``[N, K, 3]`` float32 ``(x, y, v)``; ``v`` as in COCO: 0 = not labelled (or outside the
  image after a crop), 1 = labelled but occluded, 2 = visible. Transforms never make a ``v = 0`` point visible.
* per-instance keys named in ``instance_keys`` (default :data:`INSTANCE_KEYS`: ``labels``, ``classes``,
  ``is_crowd``, ``instance_ids``): ``[N, ...]`` arrays that are dropped / padded together with the boxes.

**Coordinate frame (one for boxes and keypoints).** Continuous pixel coordinates: the image covers
``[0, W] x [0, H]``; pixel (row ``i``, column ``j``) is the unit square ``[j, j+1) x [i, i+1)`` whose centre is
``(j + 0.5, i + 0.5)``. So box ``[1, 0, 3, 2]`` covers exactly columns 1-2 and rows 0-1, and a keypoint ON the
centre of pixel ``(i, j)`` has ``(x, y) = (j + 0.5, i + 0.5)``. In this frame every transform is one affine map of
the plane applied alike to boxes, keypoints and pixels (this is what keeps them consistent):

* horizontal flip: ``x' = W - x`` (boxes: ``x1' = W - x2``, ``x2' = W - x1``). A keypoint on the centre of
  column ``j`` lands on the centre of the mirrored column ``W - 1 - j``: ``x' = W - x`` here equals the
  ``x' = W - 1 - x`` rule of the pixel-INDEX convention. Mixing the two conventions is the classic 1-pixel
  flip bug: datasets that store keypoints as integer pixel indices (COCO, MPII) should go through
  :func:`keypoints_from_pixel_indices` (adds 0.5) once, on load.
* scale to ``H' x W'``: ``x' = x * W'/W``, ``y' = y * H'/H`` (pixel-centre aligned resampling, i.e.
  ``align_corners=False``);
* crop at ``(y0, x0)``: ``x' = x - x0``, ``y' = y - y0``.

TFDS stores boxes as normalised ``[ymin, xmin, ymax, xmax]`` (``tfds.features.BBoxFeature``): convert with
:func:`boxes_from_tfds`. Apply these transforms BEFORE :func:`pad_instances` (padding rows have zero-area boxes,
which a crop would drop).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

INSTANCE_KEYS = ("labels", "classes", "is_crowd", "instance_ids")
_GEOMETRIC_INSTANCE_KEYS = ("boxes", "masks", "keypoints")


# ----------------------------------------------------------------------------------------------- padding

def pad_to(x, length: int, axis: int = 0, value=0, *, truncate: bool = False,
           name: str = "feature") -> tuple[np.ndarray, np.ndarray]:
  """Pads (or, with ``truncate=True``, cuts) ``x`` along ``axis`` to ``length``; returns ``(padded, mask)``.

  ``mask`` is float32 ``[length]``, 1 for the real items. More than ``length`` items with ``truncate=False``
  raise a ``ValueError`` naming ``name`` (the feature).
  """
  x = np.asarray(x)
  if x.ndim == 0:
    raise ValueError(f"feature {name!r} is a scalar; pad_to pads arrays along an axis")
  axis = axis % x.ndim
  n = x.shape[axis]
  if n > length:
    if not truncate:
      raise ValueError(f"feature {name!r} has {n} items along axis {axis}, more than the padded length {length}; "
                       f"raise the length or pass truncate=True")
    x = np.take(x, np.arange(length), axis=axis)
    n = length
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - n)
  padded = np.pad(x, widths, constant_values=value)
  mask = np.zeros((length,), np.float32)
  mask[:n] = 1.0
  return padded, mask


def _num_instances(example: Mapping, instance_keys: Sequence[str]) -> int | None:
  n, first = None, None
  for k in (*_GEOMETRIC_INSTANCE_KEYS, *instance_keys):
    if k in example:
      m = np.shape(example[k])[0]
      if n is None:
        n, first = m, k
      elif m != n:
        raise ValueError(f"per-instance features disagree on the number of instances: {first!r} has {n}, "
                         f"{k!r} has {m}")
  return n


def pad_instances(example: Mapping, max_instances: int, *, truncate: bool = False,
                  pad_values: Mapping[str, float] | None = None,
                  instance_keys: Sequence[str] = INSTANCE_KEYS) -> dict:
  """Variable-``N`` instance arrays -> fixed ``[max_instances, ...]`` plus ``instance_mask`` float32 [max_instances].

  Padding rows are 0 (boxes, masks, keypoints with ``v = 0``) unless ``pad_values`` says otherwise
  (e.g. ``{"labels": -1}``). More than ``max_instances`` instances raise a ``ValueError`` unless ``truncate``.
  """
  pad_values = dict(pad_values or {})
  out = dict(example)
  _num_instances(example, instance_keys)  # checks that they agree
  mask = None
  for k in (*_GEOMETRIC_INSTANCE_KEYS, *instance_keys):
    if k in example:
      out[k], mask = pad_to(example[k], max_instances, 0, pad_values.get(k, 0), truncate=truncate, name=k)
  if mask is None:  # no instance features at all
    mask = np.zeros((max_instances,), np.float32)
  out["instance_mask"] = mask
  return out


def select_instances(example: Mapping, keep, instance_keys: Sequence[str] = INSTANCE_KEYS) -> dict:
  """The instances where ``keep`` (bool [N] or indices) holds, in every per-instance feature at once."""
  out = dict(example)
  for k in (*_GEOMETRIC_INSTANCE_KEYS, *instance_keys):
    if k in example:
      out[k] = np.asarray(example[k])[keep]
  return out


# ------------------------------------------------------------------------------------------ conversions

def boxes_from_tfds(bbox, height: int, width: int) -> np.ndarray:
  """TFDS ``BBoxFeature`` (normalised ``[ymin, xmin, ymax, xmax]``) -> absolute ``(x1, y1, x2, y2)`` float32."""
  b = np.asarray(bbox, np.float32).reshape(-1, 4)
  return np.stack([b[:, 1] * width, b[:, 0] * height, b[:, 3] * width, b[:, 2] * height], axis=-1)


def boxes_to_tfds(boxes, height: int, width: int) -> np.ndarray:
  """Absolute ``(x1, y1, x2, y2)`` -> TFDS normalised ``[ymin, xmin, ymax, xmax]`` float32."""
  b = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.stack([b[:, 1] / height, b[:, 0] / width, b[:, 3] / height, b[:, 2] / width], axis=-1)


def keypoints_from_pixel_indices(keypoints) -> np.ndarray:
  """Keypoints stored as integer pixel indices (COCO, MPII: ``x = j`` on column ``j``) -> this module's frame
  (``x = j + 0.5``). Visibility is kept."""
  kp = np.array(keypoints, np.float32)
  kp[..., :2] += 0.5
  return kp


def boxes_from_masks(masks) -> np.ndarray:
  """Tight box ``(x1, y1, x2, y2)`` of each ``[N, H, W]`` mask in this frame (an empty mask gives zeros)."""
  masks = np.asarray(masks)
  out = np.zeros((masks.shape[0], 4), np.float32)
  for i, m in enumerate(masks):
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size:
      out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
  return out


# ------------------------------------------------------------------------------------------- resampling

def _size(example: Mapping) -> tuple[int, int]:
  if "image" in example:
    return tuple(np.shape(example["image"])[:2])
  if "semantic" in example:
    return tuple(np.shape(example["semantic"])[:2])
  if "masks" in example:
    return tuple(np.shape(example["masks"])[1:3])
  raise ValueError(f"the example has no 'image', 'semantic' or 'masks' to take the image size from; keys: "
                   f"{sorted(example)}")


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """Source index of each output pixel: the input pixel containing its centre (``align_corners=False``)."""
  return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _linear_weights(n_in: int, n_out: int):
  src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pixel-centre aligned bilinear resize of ``[H, W, ...]`` (no antialiasing); integer dtypes are rounded."""
  image = np.asarray(image)
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image.copy()
  y0, y1, wy = _linear_weights(h, height)
  x0, x1, wx = _linear_weights(w, width)
  extra = (1,) * (image.ndim - 2)
  wy = wy.reshape((-1, 1) + extra)
  wx = wx.reshape((1, -1) + extra)
  x = image.astype(np.float32)
  r0, r1 = x[y0], x[y1]
  top = r0[:, x0] * (1 - wx) + r0[:, x1] * wx
  bottom = r1[:, x0] * (1 - wx) + r1[:, x1] * wx
  out = top * (1 - wy) + bottom * wy
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
  return out.astype(image.dtype)


def resize_nearest(array: np.ndarray, height: int, width: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
  """Nearest-neighbour resize of the two ``axes`` (pixel-centre aligned, like the bilinear one)."""
  array = np.asarray(array)
  rows = _nearest_index(array.shape[axes[0]], height)
  cols = _nearest_index(array.shape[axes[1]], width)
  return np.take(np.take(array, rows, axis=axes[0]), cols, axis=axes[1])


def resize_to(example: Mapping, size: tuple[int, int]) -> dict:
  """Resizes to exactly ``size = (H', W')`` (aspect ratio not kept): image bilinear, masks/semantic nearest,
  boxes and keypoints scaled by ``(W'/W, H'/H)``."""
  out_h, out_w = int(size[0]), int(size[1])
  if out_h < 1 or out_w < 1:
    raise ValueError(f"resize_to: size must be positive, got {size}")
  h, w = _size(example)
  sx, sy = out_w / w, out_h / h
  out = dict(example)
  if "image" in example:
    out["image"] = resize_bilinear(example["image"], out_h, out_w)
  if "masks" in example:
    out["masks"] = resize_nearest(example["masks"], out_h, out_w, axes=(1, 2))
  if "semantic" in example:
    out["semantic"] = resize_nearest(example["semantic"], out_h, out_w)
  if "boxes" in example:
    out["boxes"] = (np.asarray(example["boxes"], np.float32) * np.float32([sx, sy, sx, sy])).astype(np.float32)
  if "keypoints" in example:
    kp = np.array(example["keypoints"], np.float32)
    kp[..., 0] *= sx
    kp[..., 1] *= sy
    out["keypoints"] = kp
  return out


def random_scale(example: Mapping, rng: np.random.Generator, min_scale: float, max_scale: float) -> dict:
  """Resizes by one factor ``s ~ U[min_scale, max_scale]`` (both sides, rounded to whole pixels, >= 1)."""
  if not 0 < min_scale <= max_scale:
    raise ValueError(f"random_scale needs 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
  s = rng.uniform(min_scale, max_scale)
  h, w = _size(example)
  return resize_to(example, (max(1, int(round(h * s))), max(1, int(round(w * s)))))


# --------------------------------------------------------------------------------------------------- flip

def hflip(example: Mapping, flip_permutation: Sequence[int] | None = None) -> dict:
  """Horizontal flip: ``x -> W - x`` for boxes and keypoints, pixels mirrored.

  ``flip_permutation[k]`` is the keypoint that becomes keypoint ``k`` (e.g. left/right eye swapped:
  ``[1, 0, ...]``); visibility moves with its keypoint, so invisible points stay invisible.
  """
  h, w = _size(example)
  out = dict(example)
  if "image" in example:
    out["image"] = np.ascontiguousarray(np.asarray(example["image"])[:, ::-1])
  if "semantic" in example:
    out["semantic"] = np.ascontiguousarray(np.asarray(example["semantic"])[:, ::-1])
  if "masks" in example:
    out["masks"] = np.ascontiguousarray(np.asarray(example["masks"])[:, :, ::-1])
  if "boxes" in example:
    b = np.asarray(example["boxes"], np.float32)
    out["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=-1).astype(np.float32)
  if "keypoints" in example:
    kp = np.array(example["keypoints"], np.float32)
    kp[..., 0] = w - kp[..., 0]
    if flip_permutation is not None:
      perm = np.asarray(flip_permutation)
      if perm.shape != (kp.shape[1],) or sorted(perm.tolist()) != list(range(kp.shape[1])):
        raise ValueError(f"flip_permutation must be a permutation of the {kp.shape[1]} keypoints, got {perm}")
      kp = kp[:, perm]
    out["keypoints"] = kp
  return out


def random_hflip(example: Mapping, rng: np.random.Generator, p: float = 0.5,
                 flip_permutation: Sequence[int] | None = None) -> dict:
  """:func:`hflip` with probability ``p`` (one ``rng.random()`` draw either way)."""
  return hflip(example, flip_permutation) if rng.random() < p else dict(example)


# --------------------------------------------------------------------------------------------------- crop

def _paste(array: np.ndarray, y0: int, x0: int, h: int, w: int, fill, axes=(0, 1)) -> np.ndarray:
  """Window ``[y0, y0+h) x [x0, x0+w)`` of ``array`` along ``axes``; parts outside it are ``fill``."""
  array = np.asarray(array)
  ay, ax = axes
  hh, ww = array.shape[ay], array.shape[ax]
  shape = list(array.shape)
  shape[ay], shape[ax] = h, w
  out = np.full(shape, fill, array.dtype)
  sy0, sy1 = max(y0, 0), min(y0 + h, hh)
  sx0, sx1 = max(x0, 0), min(x0 + w, ww)
  if sy1 > sy0 and sx1 > sx0:
    src = [slice(None)] * array.ndim
    dst = [slice(None)] * array.ndim
    src[ay], src[ax] = slice(sy0, sy1), slice(sx0, sx1)
    dst[ay], dst[ax] = slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0)
    out[tuple(dst)] = array[tuple(src)]
  return out


def crop(example: Mapping, y0: int, x0: int, h: int, w: int, *, fill=0, semantic_fill=255,
         instance_keys: Sequence[str] = INSTANCE_KEYS) -> dict:
  """The window ``[y0, y0+h) x [x0, x0+w)``; parts of it outside the image are padded (image ``fill``, masks 0,
  semantic ``semantic_fill``).

  Boxes are shifted and clipped to the window (and the image); boxes left with zero area are dropped together
  with their masks, keypoints and ``instance_keys`` features. Keypoints outside the window get ``v = 0``.
  """
  y0, x0, h, w = int(y0), int(x0), int(h), int(w)
  if h < 1 or w < 1:
    raise ValueError(f"crop: size must be positive, got {(h, w)}")
  img_h, img_w = _size(example)
  out = dict(example)
  if "image" in example:
    out["image"] = _paste(example["image"], y0, x0, h, w, fill)
  if "semantic" in example:
    out["semantic"] = _paste(example["semantic"], y0, x0, h, w, semantic_fill)
  if "masks" in example:
    out["masks"] = _paste(example["masks"], y0, x0, h, w, 0, axes=(1, 2))
  if "keypoints" in example:
    kp = np.array(example["keypoints"], np.float32)
    kp[..., 0] -= x0
    kp[..., 1] -= y0
    inside = ((kp[..., 0] >= max(0, -x0)) & (kp[..., 0] < min(w, img_w - x0))
              & (kp[..., 1] >= max(0, -y0)) & (kp[..., 1] < min(h, img_h - y0)))
    kp[..., 2] = np.where(inside, kp[..., 2], 0)
    out["keypoints"] = kp
  if "boxes" in example:
    b = np.asarray(example["boxes"], np.float32) - np.float32([x0, y0, x0, y0])
    lo = np.float32([max(0, -x0), max(0, -y0)] * 2)
    hi = np.float32([min(w, img_w - x0), min(h, img_h - y0)] * 2)
    b = np.clip(b, lo, hi).astype(np.float32)
    out["boxes"] = b
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if not keep.all():
      out = select_instances(out, keep, instance_keys)
  return out


def random_crop(example: Mapping, rng: np.random.Generator, size: tuple[int, int], **kwargs) -> dict:
  """A ``size = (h, w)`` window at a uniformly random offset (draws ``y0`` then ``x0``).

  Where the image is smaller than the window along an axis, the whole image lands at a random offset inside it
  and the rest is padded. Keyword arguments go to :func:`crop`.
  """
  h, w = int(size[0]), int(size[1])
  img_h, img_w = _size(example)
  y0 = int(rng.integers(min(0, img_h - h), max(0, img_h - h) + 1))
  x0 = int(rng.integers(min(0, img_w - w), max(0, img_w - w) + 1))
  return crop(example, y0, x0, h, w, **kwargs)
