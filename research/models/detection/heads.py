"""Detection heads as linen modules: FPN, RPN head, RoI box heads (2fc / ResNet res5), FCN mask head.

Channels-last; every module takes ``dtype``/``param_dtype`` and returns float32 predictions.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
_normal = nn.initializers.normal


class FPN(nn.Module):
  """Feature Pyramid Network (Lin et al. 2017, §3): 1x1 laterals, nearest 2x top-down path, 3x3 outputs.

  ``features`` ``{'C2': [B,H/4,W/4,*], ..., 'C5'}`` -> list of ``P2..P5`` (+ ``P6`` = stride-2 subsampling of
  ``P5`` when ``extra_level``, used by the RPN only, §4.1), all with ``channels`` channels.
  """
  channels: int = 256
  in_keys: Sequence[str] = ("C2", "C3", "C4", "C5")
  extra_level: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features) -> list[jnp.ndarray]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    missing = [k for k in self.in_keys if k not in features]
    if missing:
      raise ValueError(f"FPN needs backbone features {tuple(self.in_keys)}; the backbone gives "
                       f"{sorted(k for k in features if k.startswith('C'))} (missing {missing})")
    laterals = [nn.Conv(self.channels, (1, 1), name=f"lateral_{k}", **kw)(features[k]) for k in self.in_keys]
    outs = [laterals[-1]]
    for lat in reversed(laterals[:-1]):
      top = outs[0]
      b, h, w, c = lat.shape
      up = jnp.repeat(jnp.repeat(top, 2, axis=1), 2, axis=2)[:, :h, :w]
      if up.shape != lat.shape:
        raise ValueError(f"FPN: level shapes {top.shape} -> {lat.shape} are not a factor-2 pyramid; use an image "
                         f"size divisible by 32")
      outs.insert(0, lat + up)
    outs = [nn.Conv(self.channels, (3, 3), padding=1, name=f"output_{k.replace('C', 'P')}", **kw)(o)
            for k, o in zip(self.in_keys, outs)]
    if self.extra_level:
      outs.append(outs[-1][:, ::2, ::2])  # max-pool with kernel 1, stride 2
    return outs


class RPNHead(nn.Module):
  """Region Proposal Network head (Ren et al. 2015, §3.1): shared 3x3 conv + ReLU, then per anchor one
  objectness logit and 4 box deltas. Applied with the same weights to every pyramid level.

  ``levels``: list of ``[B, h_l, w_l, C]`` -> ``(logits [B, N], deltas [B, N, 4])``, ``N = sum h_l w_l A``,
  ordered level, row, column, anchor (the order of ``anchors.multilevel_anchors``).
  """
  num_anchors: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, levels: Sequence[jnp.ndarray]):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_normal(0.01))
    c = levels[0].shape[-1]
    conv = nn.Conv(c, (3, 3), padding=1, name="conv", **kw)
    cls = nn.Conv(self.num_anchors, (1, 1), name="objectness", **kw)
    box = nn.Conv(4 * self.num_anchors, (1, 1), name="deltas", **kw)
    logits, deltas = [], []
    for x in levels:
      t = nn.relu(conv(x))
      b = x.shape[0]
      logits.append(cls(t).reshape(b, -1))
      deltas.append(box(t).reshape(b, -1, 4))
    return (jnp.concatenate(logits, 1).astype(jnp.float32), jnp.concatenate(deltas, 1).astype(jnp.float32))


class TwoFCHead(nn.Module):
  """FPN's RoI box head (Lin et al. 2017, §4.2): flatten, two ReLU fc layers, then class logits ``[R, C+1]`` and
  class-specific box deltas ``[R, C+1, 4]`` (Girshick 2015, §2.2)."""
  num_classes: int  # foreground classes; index 0 is background
  representation: int = 1024
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jnp.ndarray):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = pooled.reshape(pooled.shape[0], -1)
    x = nn.relu(nn.Dense(self.representation, name="fc6", **kw)(x))
    x = nn.relu(nn.Dense(self.representation, name="fc7", **kw)(x))
    return BoxPredictor(self.num_classes, **kw)(x)


class BoxPredictor(nn.Module):
  """Linear classifier ``[R, D] -> [R, C+1]`` and class-specific regressor ``-> [R, C+1, 4]``."""
  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    logits = nn.Dense(self.num_classes + 1, kernel_init=_normal(0.01), name="cls_score", **kw)(x)
    deltas = nn.Dense(4 * (self.num_classes + 1), kernel_init=_normal(0.001), name="bbox_pred", **kw)(x)
    return logits.astype(jnp.float32), deltas.reshape(x.shape[0], -1, 4).astype(jnp.float32)


class MaskHead(nn.Module):
  """Mask R-CNN's FCN mask head (He et al. 2017, Fig. 4 right): ``num_convs`` 3x3 ReLU convs on the 14x14 RoI
  features, a 2x2 stride-2 deconvolution to 28x28, and one 1x1 conv giving a mask logit per class
  ``[R, 28, 28, C]`` (per-class sigmoid, no competition among classes)."""
  num_classes: int
  channels: int = 256
  num_convs: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jnp.ndarray) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = pooled
    for i in range(self.num_convs):
      x = nn.relu(nn.Conv(self.channels, (3, 3), padding=1, name=f"mask_fcn{i + 1}", **kw)(x))
    x = nn.relu(upsample_deconv2x2(x, self.channels, name="deconv", **kw))
    return nn.Dense(self.num_classes, name="mask_logits", **kw)(x).astype(jnp.float32)  # the 1x1 conv


def upsample_deconv2x2(x: jnp.ndarray, features: int, *, name: str, dtype: Dtype, param_dtype: Dtype) -> jnp.ndarray:
  """A 2x2 stride-2 transposed convolution ``[R, h, w, C] -> [R, 2h, 2w, features]``, written as one dense layer
  to ``4 * features`` channels and a depth-to-space: the kernel windows do not overlap, so this is the same
  function (kernel ``[C, 2, 2, features]``) -- and on CPU ~10x faster to differentiate than XLA's transposed conv."""
  r, h, w, _ = x.shape
  y = nn.Dense(4 * features, dtype=dtype, param_dtype=param_dtype, name=name)(x)
  y = y.reshape(r, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(r, 2 * h, 2 * w, features)


class PSScoreMaps(nn.Module):
  """R-FCN's head (Dai et al. 2016, §2): a 1x1 dimension-reducing conv + ReLU, then ``k²(C+1)`` position-sensitive
  class score maps and ``k²·4`` class-agnostic box maps over the whole image; per RoI, position-sensitive RoI
  pooling (``ps_roi_align``) and voting by averaging the ``k x k`` bins give ``[R, C+1]`` logits and ``[R, 4]``
  deltas. Returns the two maps; ``research.models.detection.rcnn`` pools them."""
  num_classes: int
  k: int = 3
  channels: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(nn.Conv(self.channels, (1, 1), name="reduce", **kw)(x))
    cls = nn.Conv(self.k * self.k * (self.num_classes + 1), (1, 1), kernel_init=_normal(0.01), name="cls_maps",
                  **kw)(x)
    box = nn.Conv(self.k * self.k * 4, (1, 1), kernel_init=_normal(0.001), name="box_maps", **kw)(x)
    return cls.astype(jnp.float32), box.astype(jnp.float32)
