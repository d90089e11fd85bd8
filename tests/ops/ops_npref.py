"""Independent float64 numpy references for research.ops, written from torchvision's semantics (loops).

Channels-last. Deliberately naive (one sample at a time) and independent of research.ops.
"""

import math

import numpy as np


def bilinear_roi(img, y, x):
  """RoIAlign's bilinear sample of img [H, W, C] at (y, x) (torchvision roi_align rules)."""
  h, w = img.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(img.shape[2])
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(y), int(x)
  if y0 >= h - 1:
    y0 = y1 = h - 1
    y = float(y0)
  else:
    y1 = y0 + 1
  if x0 >= w - 1:
    x0 = x1 = w - 1
    x = float(x0)
  else:
    x1 = x0 + 1
  ly, lx = y - y0, x - x0
  hy, hx = 1 - ly, 1 - lx
  return hy * hx * img[y0, x0] + hy * lx * img[y0, x1] + ly * hx * img[y1, x0] + ly * lx * img[y1, x1]


def _roi_bins(box, scale, ph, pw, sampling_ratio, aligned):
  off = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = [float(v) * scale - off for v in box]
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = max(rw, 1.0), max(rh, 1.0)
  bh, bw = rh / ph, rw / pw
  gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / ph))
  gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / pw))
  return y1, x1, bh, bw, gh, gw


def roi_align(features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True,
              ps=False):
  f = np.asarray(features, np.float64)
  n, _, _, c = f.shape
  ph, pw = output_size
  co = c // (ph * pw) if ps else c
  out = np.zeros((len(boxes), ph, pw, co))
  for k, (box, bi) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(box_indices))):
    if not np.all(np.isfinite(box)) or not 0 <= bi < n:
      continue
    y1, x1, bh, bw, gh, gw = _roi_bins(box, spatial_scale, ph, pw, sampling_ratio, aligned or ps)
    count = max(gh * gw, 1)
    for i in range(ph):
      for j in range(pw):
        acc = np.zeros(c)
        for iy in range(max(gh, 0)):
          y = y1 + i * bh + (iy + 0.5) * bh / gh
          for ix in range(max(gw, 0)):
            x = x1 + j * bw + (ix + 0.5) * bw / gw
            acc += bilinear_roi(f[bi], y, x)
        acc /= count
        out[k, i, j] = acc[np.arange(co) * ph * pw + i * pw + j] if ps else acc
  return out


def ps_roi_align(features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=-1):
  return roi_align(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, True, ps=True)


def roi_pool(features, boxes, box_indices, output_size, spatial_scale=1.0):
  """Returns (output, argmax) with argmax = h*W + w of the first maximum, -1 for empty bins."""
  f = np.asarray(features, np.float64)
  n, h, w, c = f.shape
  ph, pw = output_size
  out = np.zeros((len(boxes), ph, pw, c))
  arg = -np.ones((len(boxes), ph, pw, c), np.int64)

  def rnd(v):  # C round(): half away from zero
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

  for k, (box, bi) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(box_indices))):
    if not np.all(np.isfinite(box)) or not 0 <= bi < n:
      continue
    x1, y1, x2, y2 = [rnd(float(np.float32(v) * np.float32(spatial_scale))) for v in box]
    rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    bh, bw = rh / ph, rw / pw
    for i in range(ph):
      for j in range(pw):
        hs = min(max(int(math.floor(i * bh)) + y1, 0), h)
        he = min(max(int(math.ceil((i + 1) * bh)) + y1, 0), h)
        ws = min(max(int(math.floor(j * bw)) + x1, 0), w)
        we = min(max(int(math.ceil((j + 1) * bw)) + x1, 0), w)
        if he <= hs or we <= ws:
          continue
        for ch in range(c):
          best, bidx = -np.finfo(np.float32).max, -1
          for yy in range(hs, he):
            for xx in range(ws, we):
              if f[bi, yy, xx, ch] > best:
                best, bidx = f[bi, yy, xx, ch], yy * w + xx
          out[k, i, j, ch], arg[k, i, j, ch] = best, bidx
  return out, arg


def bilinear_dcn(img, y, x):
  """Deformable conv's bilinear sample with zero padding (each corner outside the image contributes 0)."""
  h, w = img.shape[:2]
  if y <= -1 or y >= h or x <= -1 or x >= w:
    return np.zeros(img.shape[2])
  y0, x0 = math.floor(y), math.floor(x)
  ly, lx = y - y0, x - x0
  val = np.zeros(img.shape[2])
  for yy, xx, wgt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx), (y0 + 1, x0, ly * (1 - lx)),
                      (y0 + 1, x0 + 1, ly * lx)):
    if 0 <= yy <= h - 1 and 0 <= xx <= w - 1:
      val = val + wgt * img[yy, xx]
  return val


def deform_conv2d(x, offset, weight, mask=None, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  groups=1, offset_groups=1):
  x = np.asarray(x, np.float64)
  offset = np.asarray(offset, np.float64)
  weight = np.asarray(weight, np.float64)
  b, h, w, cin = x.shape
  kh, kw, cin_g, cout = weight.shape
  ho, wo = offset.shape[1:3]
  og = offset_groups
  cpg = cin // og
  if mask is None:
    mask = np.ones((b, ho, wo, og * kh * kw))
  mask = np.asarray(mask, np.float64)
  cols = np.zeros((b, ho, wo, kh, kw, cin))
  for bb in range(b):
    for oy in range(ho):
      for ox in range(wo):
        for g in range(og):
          for i in range(kh):
            for j in range(kw):
              t = (g * kh + i) * kw + j
              dy, dx = offset[bb, oy, ox, 2 * t], offset[bb, oy, ox, 2 * t + 1]
              yy = oy * stride[0] - padding[0] + i * dilation[0] + dy
              xx = ox * stride[1] - padding[1] + j * dilation[1] + dx
              v = bilinear_dcn(x[bb, :, :, g * cpg:(g + 1) * cpg], yy, xx)
              cols[bb, oy, ox, i, j, g * cpg:(g + 1) * cpg] = mask[bb, oy, ox, t] * v
  out = np.zeros((b, ho, wo, cout))
  og_out = cout // groups
  for g in range(groups):
    out[..., g * og_out:(g + 1) * og_out] = np.einsum(
        "bhwijc,ijco->bhwo", cols[..., g * cin_g:(g + 1) * cin_g], weight[..., g * og_out:(g + 1) * og_out])
  if bias is not None:
    out = out + np.asarray(bias, np.float64)
  return out


def nms(boxes, scores, iou_threshold, classes=None):
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes)
  order = sorted(range(len(boxes)), key=lambda i: -scores[i])  # stable
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  suppressed = np.zeros(len(boxes), bool)
  keep = []
  for a, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    for j in order[a + 1:]:
      if classes[j] != classes[i]:
        continue
      ww = max(np.float32(0), min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
      hh = max(np.float32(0), min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
      inter = ww * hh
      if inter / (area[i] + area[j] - inter) > np.float32(iou_threshold):
        suppressed[j] = True
  return np.asarray(keep, np.int64)
