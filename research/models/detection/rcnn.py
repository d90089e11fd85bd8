"""Two-stage detectors: Faster R-CNN (Ren et al. 2015) with a C4 or FPN (Lin et al. 2017) head and Mask R-CNN
(He et al. 2017), on any registered backbone with ``features_only``.

One linen module, ``RCNN``, with static shapes throughout (``jit`` once, any batch):

* ``model.apply(v, images, train=True, targets=..., rng=..., mutable=["batch_stats"])`` -> ``(losses, state)``:
  RPN objectness + box losses on a balanced anchor sample, RoI classification + class-specific box losses on a
  balanced proposal sample (ground truth added to the proposals), and for Mask R-CNN the per-class binary mask
  loss on the positive RoIs, taken on the ground-truth class only (He et al. 2017, §3).
* ``model.apply(v, images, train=False)`` -> detections ``{boxes [B,D,4], scores [B,D], labels [B,D] (0-based),
  valid [B,D], masks [B,D,28,28] (probabilities of the predicted class, Mask R-CNN only)}`` after per-class NMS.

Targets: ``boxes [B,G,4]`` (x1,y1,x2,y2 pixels), ``labels [B,G]`` 0-based, ``instance_mask [B,G]`` (1 = real
object, 0 = padding; images without objects are fine) and, for masks, ``masks [B,G,H,W]`` (0/1).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.deform_roi import DeformRoIAlign, MultiLevelDeformRoIAlign
from research.layers.roi import multilevel_roi_align
from research.models import registry
from research.models.detection import anchors as anchors_lib
from research.models.detection.heads import FPN, BoxPredictor, MaskHead, PSScoreMaps, RPNHead, TwoFCHead
from research.models.detection.matching import match, sample_balanced
from research.ops import boxes as box_ops
from research.ops import ps_roi_align, roi_align, roi_pool
from research.ops.nms import batched_nms_padded

Dtype = Any
ARCHITECTURES = ("fpn", "c4", "rfcn")


def smooth_l1(x: jnp.ndarray, beta: float) -> jnp.ndarray:
  """Huber-style smooth L1 (Girshick 2015, eq. 3) with transition point ``beta`` (elementwise)."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def _bce(logits, targets):
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _safe_mean(total, count):
  return total / jnp.maximum(count, 1.0)


class RCNN(nn.Module):
  """Faster / Mask R-CNN. Hyper-parameters follow torchvision's ``fasterrcnn_resnet50_fpn``/``maskrcnn_*``
  except where small CPU-sized images call for smaller values (anchor sizes, RoI batch, head widths)."""
  num_classes: int  # foreground classes (0-based labels); the heads add a background class internally
  backbone: str = "resnet18"
  backbone_kwargs: tuple[tuple[str, Any], ...] = ()
  image_size: tuple[int, int] = (128, 128)
  architecture: str = "fpn"  # "fpn" | "c4" | "rfcn"
  with_mask: bool = False
  # "align" (RoIAlign) | "pool" (RoIPool): Mask R-CNN Table 2c | "deform": deformable RoI pooling for the box head
  # (Dai et al. 2017 §2.2; RoIAlign sampling, offset fc zero-initialised; the mask head keeps RoIAlign)
  pooler: str = "align"
  fpn_channels: int = 256
  anchor_sizes: tuple[tuple[float, ...], ...] = ((8,), (16,), (32,), (64,), (128,))  # per FPN level P2..P6
  c4_anchor_sizes: tuple[float, ...] = (8, 16, 32, 64, 128)
  aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
  rpn_fg_iou: float = 0.7
  rpn_bg_iou: float = 0.3
  rpn_batch: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_pre_nms_train: int = 1000  # per level
  rpn_post_nms_train: int = 1000
  rpn_pre_nms_test: int = 500
  rpn_post_nms_test: int = 300
  rpn_nms: float = 0.7
  min_box_size: float = 1e-3
  roi_batch: int = 128
  roi_positive_fraction: float = 0.25
  roi_fg_iou: float = 0.5
  box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
  representation: int = 1024
  rfcn_k: int = 3  # R-FCN's k x k position-sensitive bins
  mask_channels: int = 256
  mask_convs: int = 4
  # Positive RoIs the mask head trains on per image (a random subset of the sampled positives; 0 = all
  # roi_batch*fraction slots). The head runs on this many slots whether or not they hold positives.
  mask_rois_per_image: int = 16
  canonical_size: float = 64.0  # FPN eq. 1 with k0 = 4 at this box size (224 for 800-pixel COCO images)
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  max_detections: int = 100
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # ------------------------------------------------------------------------------------------------ geometry
  def _anchor_setup(self):
    if self.architecture == "fpn":
      return anchors_lib.multilevel_anchors(self.image_size, (4, 8, 16, 32, 64), self.anchor_sizes,
                                            self.aspect_ratios)
    return anchors_lib.multilevel_anchors(self.image_size, (16,), (self.c4_anchor_sizes,), self.aspect_ratios)

  def _num_cell_anchors(self):
    sizes = self.anchor_sizes[0] if self.architecture == "fpn" else self.c4_anchor_sizes
    return len(sizes) * len(self.aspect_ratios)

  def _check(self, images):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"architecture={self.architecture!r}; choose one of {ARCHITECTURES}")
    if self.pooler not in ("align", "pool", "deform"):
      raise ValueError(f"pooler={self.pooler!r}; choose 'align' (RoIAlign), 'pool' (RoIPool) or 'deform' "
                       f"(deformable RoI pooling)")
    if self.pooler == "deform" and self.architecture == "rfcn":
      raise ValueError("pooler='deform' is for the fpn/c4 box heads; R-FCN pools position-sensitive score maps "
                       "(deformable PS-RoI pooling is not implemented): use pooler='align'")
    if images.ndim != 4 or tuple(images.shape[1:3]) != tuple(self.image_size):
      raise ValueError(f"images must be [B, {self.image_size[0]}, {self.image_size[1]}, C] (the model's "
                       f"image_size), got {images.shape}")
    if self.architecture == "fpn" and len(self.anchor_sizes) != 5:
      raise ValueError(f"anchor_sizes needs one tuple per FPN level P2..P6 (5), got {self.anchor_sizes}")

  # ------------------------------------------------------------------------------------------------ modules
  def _backbone(self, **extra):
    from research import models  # the zoo registers itself on import
    kwargs = dict(self.backbone_kwargs)
    if self.architecture == "rfcn" and "start_stage" not in extra:
      # R-FCN §3: conv5 keeps stride 16 (stride 1, dilation 2), so the score maps are 16x finer than the image.
      kwargs["stage_dilations"] = (1, 1, 1, 2)
    return models.create(self.backbone, features_only=True, dtype=self.dtype, param_dtype=self.param_dtype,
                         **kwargs, **extra)

  def _pool(self, levels, strides, boxes, box_indices, size):
    """RoIAlign / RoIPool of ``boxes`` (the mask head's pooling also when ``pooler='deform'``)."""
    pooler = "align" if self.pooler == "deform" else self.pooler
    if self.architecture == "c4":
      if pooler == "pool":
        return roi_pool(levels[0], boxes, box_indices, size, spatial_scale=1.0 / strides[0])
      return roi_align(levels[0], boxes, box_indices, size, spatial_scale=1.0 / strides[0], sampling_ratio=2,
                       aligned=True)
    return multilevel_roi_align(levels, strides, boxes, box_indices, size, sampling_ratio=2, aligned=True,
                                canonical_size=self.canonical_size, canonical_level=4, pooler=pooler)

  def _box_pool_fn(self, levels, strides, size):
    """``(rois, idx) -> [K, size, size, C]`` for the box head: ``_pool``, or deformable RoI pooling (one offset
    branch, created here once) when ``pooler='deform'``."""
    if self.pooler != "deform":
      return lambda rois, idx: self._pool(levels, strides, rois, idx, size)
    if self.architecture == "c4":
      pool = DeformRoIAlign(size, sampling_ratio=2, param_dtype=self.param_dtype, name="deform_roi_pool")
      return lambda rois, idx: pool(levels[0], rois, idx, spatial_scale=1.0 / strides[0])
    pool = MultiLevelDeformRoIAlign(size, strides=tuple(int(s) for s in strides), sampling_ratio=2,
                                    canonical_size=self.canonical_size, canonical_level=4,
                                    param_dtype=self.param_dtype, name="deform_roi_pool")
    return lambda rois, idx: pool(levels, rois, idx)

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool, targets: dict | None = None,
               rng: jax.Array | None = None):
    self._check(images)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    anchors, _, counts = self._anchor_setup()
    feats = self._backbone(name="backbone")(images, train=train)
    if self.architecture == "fpn":
      pyramid = FPN(self.fpn_channels, name="fpn", **kw)(feats)
      rpn_levels, roi_levels, roi_strides = pyramid, pyramid[:4], (4, 8, 16, 32)
    elif self.architecture == "rfcn":
      if "C4" not in feats:
        raise ValueError(f"R-FCN needs a stride-16 'C4' map (dilated conv5); backbone {self.backbone!r} gives "
                         f"{sorted(k for k in feats if k.startswith('C'))}")
      rpn_levels, roi_levels, roi_strides = [feats["C4"]], [feats["C4"]], (16,)
    else:
      if "C4" not in feats:
        raise ValueError(f"the C4 head needs a stride-16 'C4' feature map; backbone {self.backbone!r} gives "
                         f"{sorted(k for k in feats if k.startswith('C'))}")
      rpn_levels, roi_levels, roi_strides = [feats["C4"]], [feats["C4"]], (16,)
    for lvl, n in zip(rpn_levels, counts):
      if lvl.shape[1] * lvl.shape[2] * self._num_cell_anchors() != n:
        raise ValueError(f"feature map {lvl.shape} does not match the anchor grid of a {self.image_size} image; "
                         f"use an image size divisible by 32")
    logits, deltas = RPNHead(self._num_cell_anchors(), name="rpn", **kw)(rpn_levels)
    box_head = self._box_head_fn(roi_levels, roi_strides, kw)
    mask_head = MaskHead(self.num_classes, self.mask_channels, self.mask_convs, name="mask_head", **kw) \
        if self.with_mask else None
    b = images.shape[0]
    anchors = jnp.asarray(anchors)
    if not train:
      proposals, pvalid = jax.vmap(lambda l, d: self._proposals(l, d, anchors, counts, self.rpn_pre_nms_test,
                                                                self.rpn_post_nms_test))(logits, deltas)
      return self._detect(box_head, mask_head, roi_levels, roi_strides, proposals, pvalid, b)
    if targets is None or rng is None:
      raise ValueError("RCNN(train=True) needs targets={'boxes', 'labels', 'instance_mask'[, 'masks']} and rng")
    return self._losses(targets, rng, anchors, counts, logits, deltas, box_head, mask_head, roi_levels,
                        roi_strides, images)

  def _box_head_fn(self, levels, strides, kw):
    if self.architecture == "rfcn":
      cls_maps, box_maps = PSScoreMaps(self.num_classes, self.rfcn_k, name="rfcn_head", **kw)(levels[0])
      k, c1 = self.rfcn_k, self.num_classes + 1

      def rfcn(rois, idx):  # position-sensitive RoI pooling, then voting by averaging the k x k bins (§2)
        scale = 1.0 / strides[0]
        logits = ps_roi_align(cls_maps, rois, idx, k, spatial_scale=scale, sampling_ratio=2).mean(axis=(1, 2))
        deltas = ps_roi_align(box_maps, rois, idx, k, spatial_scale=scale, sampling_ratio=2).mean(axis=(1, 2))
        return logits, jnp.broadcast_to(deltas[:, None, :], (deltas.shape[0], c1, 4))  # class-agnostic boxes

      return rfcn
    if self.architecture == "fpn":
      head = TwoFCHead(self.num_classes, self.representation, name="box_head", **kw)
      box_pool = self._box_pool_fn(levels, strides, 7)
      return lambda rois, idx: head(box_pool(rois, idx))
    res5 = self._backbone(name="res5_head", start_stage=4)
    predictor = BoxPredictor(self.num_classes, name="box_predictor", **kw)
    # The C4 head: RoI features 14x14 from C4 -> ResNet stage 5 (stride 2 -> 7x7) -> global average pool.
    # BatchNorm in res5 runs in inference mode on RoIs (statistics over sampled RoIs are not image statistics).
    box_pool = self._box_pool_fn(levels, strides, 14)
    return lambda rois, idx: predictor(res5(box_pool(rois, idx), train=False)["pooled"])

  # ------------------------------------------------------------------------------------------------ RPN
  def _proposals(self, logits, deltas, anchors, counts, pre_nms, post_nms):
    """One image: top ``pre_nms`` per level, decode, clip, NMS per level -> ``(boxes [post,4], valid [post])``."""
    logits = jax.lax.stop_gradient(logits)
    deltas = jax.lax.stop_gradient(deltas)
    idx, lvl, start = [], [], 0
    for l, n in enumerate(counts):
      k = min(pre_nms, n)
      _, top = jax.lax.top_k(logits[start:start + n], k)
      idx.append(top + start)
      lvl.append(jnp.full((k,), l, jnp.int32))
      start += n
    idx, lvl = jnp.concatenate(idx), jnp.concatenate(lvl)
    scores = logits[idx]
    boxes = box_ops.clip_boxes(box_ops.decode_boxes(deltas[idx], anchors[idx]), *self.image_size)
    wh = boxes[:, 2:] - boxes[:, :2]
    ok = jnp.all(wh >= self.min_box_size, axis=1) & jnp.isfinite(scores)
    scores = jnp.where(ok, scores, -jnp.inf)
    post = min(post_nms, idx.shape[0])
    keep, _ = batched_nms_padded(boxes, scores, lvl, self.rpn_nms, post)
    valid = (keep >= 0) & ok[jnp.maximum(keep, 0)]
    boxes = jnp.where(valid[:, None], boxes[jnp.maximum(keep, 0)], 0.0)
    if post < post_nms:  # fewer candidates than slots: pad
      boxes = jnp.pad(boxes, ((0, post_nms - post), (0, 0)))
      valid = jnp.pad(valid, (0, post_nms - post))
    return boxes, valid

  def _rpn_targets(self, anchors, gt_boxes, gt_valid, rng):
    iou = box_ops.box_iou(gt_boxes, anchors)
    m = match(iou, gt_valid, self.rpn_fg_iou, self.rpn_bg_iou, allow_low_quality_matches=True)
    labels = jnp.where(m >= 0, 1, jnp.where(m == -1, 0, -1))
    idx, is_pos, valid = sample_balanced(labels, self.rpn_batch, self.rpn_positive_fraction, rng)
    matched = gt_boxes[jnp.maximum(m[idx], 0)]
    target = box_ops.encode_boxes(matched, anchors[idx])
    return idx, is_pos, valid, jnp.where((is_pos & valid)[:, None], target, 0.0)

  # ------------------------------------------------------------------------------------------------ RoI sampling
  def _roi_targets(self, proposals, pvalid, gt_boxes, gt_labels, gt_valid, rng):
    rois = jnp.concatenate([proposals, gt_boxes])  # Girshick et al.: ground truth joins the proposals
    valid_all = jnp.concatenate([pvalid, gt_valid])
    iou = box_ops.box_iou(gt_boxes, rois)
    m = match(iou, gt_valid, self.roi_fg_iou, self.roi_fg_iou)
    labels = jnp.where(~valid_all, -1, jnp.where(m >= 0, 1, 0))
    idx, is_pos, valid = sample_balanced(labels, self.roi_batch, self.roi_positive_fraction, rng)
    gt_idx = jnp.maximum(m[idx], 0)
    fg = is_pos & valid
    cls = jnp.where(fg, gt_labels[gt_idx] + 1, 0)
    deltas = box_ops.encode_boxes(gt_boxes[gt_idx], rois[idx], self.box_weights)
    return rois[idx], valid, fg, cls, jnp.where(fg[:, None], deltas, 0.0), gt_idx

  # ------------------------------------------------------------------------------------------------ losses
  def _losses(self, targets, rng, anchors, counts, logits, deltas, box_head, mask_head, levels, strides, images):
    gt_boxes = targets["boxes"].astype(jnp.float32)
    gt_labels = targets["labels"].astype(jnp.int32)
    gt_valid = targets["instance_mask"] > 0
    b, g = gt_labels.shape
    rpn_rng, roi_rng = jax.random.split(rng)
    # RPN (Ren et al. 2015, eq. 1): objectness BCE + smooth-L1 (beta 1/9) on positives, both / #sampled.
    idx, is_pos, valid, t = jax.vmap(self._rpn_targets, (None, 0, 0, 0))(
        anchors, gt_boxes, gt_valid, jax.random.split(rpn_rng, b))
    s_logits = jnp.take_along_axis(logits, idx, 1)
    s_deltas = jnp.take_along_axis(deltas, idx[..., None], 1)
    n_rpn = jnp.sum(valid)
    rpn_cls = _safe_mean(jnp.sum(jnp.where(valid, _bce(s_logits, is_pos.astype(jnp.float32)), 0.0)), n_rpn)
    rpn_box = _safe_mean(jnp.sum(jnp.where((is_pos & valid)[..., None], smooth_l1(s_deltas - t, 1 / 9), 0.0)), n_rpn)
    # RoI head (Girshick 2015, eq. 1).
    proposals, pvalid = jax.vmap(lambda l, d: self._proposals(l, d, anchors, counts, self.rpn_pre_nms_train,
                                                              self.rpn_post_nms_train))(logits, deltas)
    rois, rvalid, fg, cls, t_deltas, gt_idx = jax.vmap(self._roi_targets)(
        proposals, pvalid, gt_boxes, gt_labels, gt_valid, jax.random.split(roi_rng, b))
    s = rois.shape[1]
    image_idx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), s)
    cls_logits, box_deltas = box_head(rois.reshape(-1, 4), image_idx)
    cls_flat, valid_flat, fg_flat = cls.reshape(-1), rvalid.reshape(-1), fg.reshape(-1)
    n_roi = jnp.sum(valid_flat)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(cls_logits), cls_flat[:, None], 1)[:, 0]
    roi_cls = _safe_mean(jnp.sum(jnp.where(valid_flat, ce, 0.0)), n_roi)
    pred = jnp.take_along_axis(box_deltas, cls_flat[:, None, None], 1)[:, 0]
    roi_box = _safe_mean(jnp.sum(jnp.where(fg_flat[:, None], smooth_l1(pred - t_deltas.reshape(-1, 4), 1 / 9), 0.0)),
                         n_roi)
    accuracy = _safe_mean(jnp.sum(jnp.where(valid_flat, jnp.argmax(cls_logits, -1) == cls_flat, False)), n_roi)
    losses = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "roi_cls": roi_cls, "roi_box": roi_box,
              "roi_accuracy": accuracy, "rpn_positives": jnp.sum(is_pos & valid) / b,
              "roi_positives": jnp.sum(fg) / b}
    if mask_head is not None:
      if "masks" not in targets:
        raise ValueError("Mask R-CNN needs instance masks: targets['masks'] [B, G, H, W] (this dataset has none; "
                         "train a Faster R-CNN instead)")
      pm = int(self.roi_batch * self.roi_positive_fraction)  # positives are a prefix of the sample
      if self.mask_rois_per_image:
        pm = min(pm, self.mask_rois_per_image)  # a random subset of the positives (the sample is shuffled)
      m_rois, m_fg = rois[:, :pm].reshape(-1, 4), fg[:, :pm].reshape(-1)
      m_idx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), pm)
      mask_logits = mask_head(self._pool(levels, strides, m_rois, m_idx, 14))  # [B*pm, 28, 28, C]
      label = cls[:, :pm].reshape(-1) - 1
      mask_logits = jnp.take_along_axis(mask_logits, jnp.maximum(label, 0)[:, None, None, None], -1)[..., 0]
      gt_masks = targets["masks"].astype(jnp.float32).reshape(b * g, *images.shape[1:3], 1)
      target = roi_align(gt_masks, m_rois, m_idx * g + gt_idx[:, :pm].reshape(-1), mask_logits.shape[1:3],
                         sampling_ratio=2, aligned=True)[..., 0]
      target = jax.lax.stop_gradient((target >= 0.5).astype(jnp.float32))
      per_roi = jnp.mean(_bce(mask_logits, target), axis=(1, 2))
      losses["mask"] = _safe_mean(jnp.sum(jnp.where(m_fg, per_roi, 0.0)), jnp.sum(m_fg))
    losses["total"] = losses["rpn_cls"] + losses["rpn_box"] + losses["roi_cls"] + losses["roi_box"] + \
        losses.get("mask", 0.0)
    return losses

  # ------------------------------------------------------------------------------------------------ inference
  def _detect(self, box_head, mask_head, levels, strides, proposals, pvalid, b):
    p = proposals.shape[1]
    image_idx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), p)
    cls_logits, box_deltas = box_head(proposals.reshape(-1, 4), image_idx)
    probs = jax.nn.softmax(cls_logits).reshape(b, p, -1)[..., 1:]
    rois = jnp.broadcast_to(proposals[:, :, None, :], (b, p, self.num_classes, 4))
    boxes = box_ops.decode_boxes(box_deltas.reshape(b, p, -1, 4)[:, :, 1:], rois, self.box_weights)
    boxes = box_ops.clip_boxes(boxes, *self.image_size)
    wh = boxes[..., 2:] - boxes[..., :2]
    ok = pvalid[:, :, None] & (probs > self.score_threshold) & jnp.all(wh >= self.min_box_size, -1)
    scores = jnp.where(ok, probs, -jnp.inf)
    classes = jnp.broadcast_to(jnp.arange(self.num_classes, dtype=jnp.int32), (b, p, self.num_classes))

    def per_image(bx, sc, cl):
      bx, sc, cl = bx.reshape(-1, 4), sc.reshape(-1), cl.reshape(-1)
      k = min(bx.shape[0], 10 * self.max_detections)
      sc_top, top = jax.lax.top_k(sc, k)
      keep, _ = batched_nms_padded(bx[top], sc_top, cl[top], self.nms_threshold, self.max_detections)
      sel = top[jnp.maximum(keep, 0)]
      valid = (keep >= 0) & jnp.isfinite(sc[sel])
      return (jnp.where(valid[:, None], bx[sel], 0.0), jnp.where(valid, sc[sel], 0.0),
              jnp.where(valid, cl[sel], 0), valid)

    det_boxes, det_scores, det_labels, det_valid = jax.vmap(per_image)(boxes, scores, classes)
    out = {"boxes": det_boxes, "scores": det_scores, "labels": det_labels, "valid": det_valid}
    if mask_head is not None:
      d = self.max_detections
      idx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), d)
      logits = mask_head(self._pool(levels, strides, det_boxes.reshape(-1, 4), idx, 14))
      logits = jnp.take_along_axis(logits, det_labels.reshape(-1)[:, None, None, None], -1)[..., 0]
      out["masks"] = jax.nn.sigmoid(logits).reshape(b, d, *logits.shape[1:])
    return out


def paste_masks(masks: jnp.ndarray, boxes: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """Pastes ``masks [D, M, M]`` (probabilities in box coordinates) into the image -> ``[D, H, W]`` (He et al.
  2017, §3.1 "Inference": the m x m mask is resized to the box and binarised at 0.5 by the caller).

  Bilinear resampling at pixel centres in the continuous frame: pixel ``(i, j)`` reads mask coordinate
  ``((j + 0.5 - x1) / w * M - 0.5, ...)``; outside the box the mask is 0. Separable, so it is two matmuls per
  detection (the same on host or device).
  """
  d, mh, mw = masks.shape

  def weights(lo, hi, n_out, n_in):
    size = jnp.maximum(hi - lo, 1e-6)
    u = ((jnp.arange(n_out, dtype=jnp.float32) + 0.5)[None, :] - lo[:, None]) / size[:, None] * n_in - 0.5
    inside = (u >= -0.5) & (u <= n_in - 0.5)
    u = jnp.clip(u, 0.0, n_in - 1.0)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(u[..., None] - jnp.arange(n_in, dtype=jnp.float32)))
    return jnp.where(inside[..., None], w, 0.0)  # [D, n_out, n_in]

  wy = weights(boxes[:, 1], boxes[:, 3], height, mh)
  wx = weights(boxes[:, 0], boxes[:, 2], width, mw)
  return jnp.einsum("dhm,dmn,dwn->dhw", wy, masks.astype(jnp.float32), wx)


# ------------------------------------------------------------------------------------------------ registry

def _factory(**defaults):
  def factory(*, num_classes: int, backbone: str = "resnet18", **kw):
    return RCNN(num_classes=num_classes, backbone=backbone, **{**defaults, **kw})
  return factory


registry.register("faster_rcnn_fpn", family="detection")(_factory(architecture="fpn"))
registry.register("faster_rcnn_c4", family="detection")(_factory(architecture="c4"))
registry.register("mask_rcnn_fpn", family="detection")(_factory(architecture="fpn", with_mask=True))
registry.register("rfcn", family="detection")(_factory(architecture="rfcn"))

DETECTORS: Sequence[str] = ("faster_rcnn_fpn", "faster_rcnn_c4", "mask_rcnn_fpn", "rfcn")
