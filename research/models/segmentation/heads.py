"""Semantic segmentation networks on dilated ``features_only`` backbones: FCN, PSPNet, DeepLabV3, GCN.

Registered in ``research.models`` under family ``"segmentation"``:

* ``fcn``: dilated-FCN baseline (the "ResNet50-Baseline" of Zhao et al. 2017, Table 4): backbone at output
  stride 8/16/32, 3x3 conv-BN-ReLU, 1x1 classifier.
* ``pspnet``: Zhao et al., CVPR 2017, §3.2-3.3: pyramid pooling module (bins 1/2/3/6, adaptive average pooling,
  1x1 conv to C/4 + BN + ReLU, bilinear upsampling, concatenation with the features), 3x3 conv-BN-ReLU, 1x1
  classifier; auxiliary FCN head on the stage-3 features (§3.3, loss weight 0.4: the caller weights it).
* ``deeplabv3``: Chen et al. 2017, §3.3: ASPP = 1x1 conv + three 3x3 atrous convs (rates 6/12/18 at output
  stride 16, doubled at 8) + image-level pooling branch, each conv-BN-ReLU, concatenated, 1x1 conv-BN-ReLU, 1x1
  classifier; multi-grid (1, 2, 4) on the last backbone stage (§3.2).
* ``gcn_seg`` (the name ``gcn`` is the graph family's Kipf & Welling GCN): Peng et al., CVPR 2017, §3.2-3.3,
  Fig. 2: on each stride-4/8/16/32 stage a Global Convolutional Network module ((k x 1 then 1 x k) + (1 x k then
  k x 1), no BN/ReLU) and a Boundary Refinement block (x + conv3x3(relu(conv3x3(x)))) producing score maps;
  top-down: upsample (transposed conv with a bilinear init, or bilinear) + add + BR; two more upsample + BR steps to
  full resolution. Natural output stride: 32.

Every model: ``__call__(x [B, H, W, 3], *, train) -> {"logits": float32 [B, H, W, num_classes]}`` (plus
``"aux_logits"`` when ``aux_head``), upsampled to the input size with bilinear interpolation (half-pixel centres,
PyTorch ``align_corners=False``; ``jax.image.resize`` with ``antialias=False``). BatchNorm statistics live in
``batch_stats``; the backbone's variables sit under ``backbone`` with the classification model's tree.

Backbones: every ResNet-family model (``resnet18/34/50/101/152``, ResNeXt, SE-ResNet, ``drn_a_50``) gets its output
stride through ``stage_dilations`` (8: (1, 1, 2, 4); 16: (1, 1, 1, 2); 32: none), and DRN-C (``drn_c_26``,
``drn_c_42``), whose output stride is fixed at 8. ``backbone_kwargs`` (e.g. ``{"width": 8}``) go to the backbone.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.common import ConvBN, conv
from research.models import registry
from research.models.drn_igc import DRNC
from research.models.resnet import ResNet

Dtype = Any

SEGMENTERS: tuple[str, ...] = ("fcn", "pspnet", "deeplabv3", "gcn_seg")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
_RESNET_DILATIONS = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}
_RESERVED_BACKBONE_KWARGS = ("features_only", "stage_dilations", "multi_grid", "name", "parent", "start_stage")
_classifier_init = nn.initializers.normal(0.01)  # mmseg / PSPNet decode heads: N(0, 0.01) for the final 1x1 conv


# ------------------------------------------------------------------------------------------------ pure helpers

def resize_bilinear(x: jnp.ndarray, hw: Sequence[int]) -> jnp.ndarray:
  """Bilinear resize of ``[B, h, w, C]`` to ``[B, H, W, C]``: half-pixel centres (PyTorch ``align_corners=False``),
  no antialiasing, so downsampling also samples the 2x2 neighbours only."""
  h, w = int(hw[0]), int(hw[1])
  if x.shape[1:3] == (h, w):
    return x
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=False)


def adaptive_avg_matrix(size: int, bins: int) -> np.ndarray:
  """``[bins, size]`` averaging matrix of PyTorch ``AdaptiveAvgPool`` (Zhao et al. 2017, §3.2 pyramid bins):
  row i averages ``[floor(i*size/bins), ceil((i+1)*size/bins))`` (bins overlap when size % bins != 0)."""
  m = np.zeros((bins, size), np.float32)
  for i in range(bins):
    lo, hi = (i * size) // bins, -(-((i + 1) * size) // bins)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def pyramid_pool(x: jnp.ndarray, bins: int) -> jnp.ndarray:
  """Adaptive average pooling ``[B, H, W, C] -> [B, bins, bins, C]`` as two static averaging matrices (the bins
  are rectangles, so the 2-D average is separable)."""
  mh = jnp.asarray(adaptive_avg_matrix(x.shape[1], bins), x.dtype)
  mw = jnp.asarray(adaptive_avg_matrix(x.shape[2], bins), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw)


def aspp_rates(atrous_rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
  """ASPP rates for ``output_stride`` from the rates defined at output stride 16 (Chen et al. 2017, §3.3: "the rates
  are doubled when output_stride = 8"); halved (at least 1) at 32."""
  return tuple(max(1, int(r) * 16 // output_stride) for r in atrous_rates)


def gcn_kernel_size(kernel_size: int, height: int, width: int, adapt: bool = True) -> int:
  """GCN kernel size for a ``height x width`` map: ``kernel_size`` (Peng et al. 2017 use 15 on 16x16 res-5 maps,
  Table 1), or with ``adapt`` at most the largest odd number <= min(height, width) (15 on a 16x16 map)."""
  if not adapt:
    return kernel_size
  s = max(1, min(height, width))
  return max(1, min(kernel_size, s if s % 2 else s - 1))


def _check_output_stride(output_stride) -> None:
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f"output_stride={output_stride!r} is not supported; choose one of {OUTPUT_STRIDES} (8: last two "
                     f"stages dilated 2/4, 16: last stage dilated 2, 32: no dilation)")


def backbone_setup(backbone: str, output_stride: int, backbone_kwargs: Mapping[str, Any] | Sequence | None = None,
                   multi_grid: Sequence[int] | None = None, default_multi_grid: Sequence[int] = (1,)
                   ) -> tuple[dict[str, Any], tuple[str, ...], str]:
  """Backbone kwargs giving ``output_stride`` and the feature keys to read.

  ``multi_grid`` (ResNet backbones only; None: ``default_multi_grid`` on ResNets, nothing on DRN-C) sets the
  last-stage dilation multipliers. Returns ``(kwargs, levels, aux_key)``: ``levels`` are the feature-dict keys of
  the strides-4/8/16/32 stages (low to high; the last is the head's input), ``aux_key`` the stage-3 (conv4)
  features for the auxiliary head.
  Raises ``ValueError`` naming the argument for an unsupported stride, backbone or kwarg.
  """
  _check_output_stride(output_stride)
  user = dict(backbone_kwargs or ())
  bad = sorted(k for k in user if k in _RESERVED_BACKBONE_KWARGS)
  if bad:
    raise ValueError(f"backbone_kwargs must not set {bad}: the segmenter sets them (output_stride -> stage_dilations, "
                     f"multi_grid is a segmenter field)")
  try:
    probe = registry.create(backbone, features_only=True, parent=None, **user)
  except TypeError as e:
    raise ValueError(f"backbone={backbone!r} does not accept backbone_kwargs={user!r}: {e}") from e
  if isinstance(probe, ResNet):
    if len(probe.stage_sizes) != 4:
      raise ValueError(f"backbone={backbone!r} has {len(probe.stage_sizes)} stages; segmentation needs the four "
                       f"ImageNet ResNet stages (strides 4/8/16/32)")
    kwargs = dict(user, stage_dilations=_RESNET_DILATIONS[output_stride])
    mg = tuple(int(r) for r in (default_multi_grid if multi_grid is None else multi_grid))
    if mg != (1,):
      kwargs["multi_grid"] = mg
    return kwargs, ("stage1", "stage2", "stage3", "stage4"), "stage3"
  if isinstance(probe, DRNC):
    if output_stride != 8:
      raise ValueError(f"backbone={backbone!r} (DRN-C) has a fixed output stride of 8; got output_stride="
                       f"{output_stride}: use output_stride=8 or a ResNet backbone (e.g. 'resnet50', 'drn_a_50')")
    if multi_grid is not None and tuple(multi_grid) != (1,):
      raise ValueError(f"multi_grid={tuple(multi_grid)} needs a ResNet backbone; DRN-C ({backbone!r}) fixes its "
                       f"dilations: use multi_grid=(1,)")
    # DRN levels 3/4 have strides 4/8; level 5 is the dilated conv4 (= ResNet stage 3), level 8 the last output.
    return user, ("stage3", "stage4", "stage5", "stage8"), "stage5"
  raise ValueError(f"backbone={backbone!r} ({type(probe).__name__}) has no dilation control for segmentation; use a "
                   f"ResNet-family backbone ('resnet18', 'resnet34', 'resnet50', 'drn_a_50', ...) or 'drn_c_26'")


def _bilinear_upsample_init(key, shape, dtype=jnp.float32):
  """``[k, k, C, C]`` transposed-conv kernel doing per-channel bilinear upsampling (Long et al. 2015, §3.3)."""
  del key
  k, _, cin, cout = shape
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 == 1 else factor - 0.5
  f = 1.0 - np.abs(np.arange(k) - center) / factor
  kernel = np.zeros(shape, np.float32)
  for c in range(min(cin, cout)):
    kernel[:, :, c, c] = np.outer(f, f)
  return jnp.asarray(kernel, dtype)


# ------------------------------------------------------------------------------------------------ layers

class FCNHead(nn.Module):
  """3x3 conv-BN-ReLU, dropout, 1x1 classifier (dilated-FCN / PSPNet auxiliary head, Zhao et al. 2017, §3.3).
  ``[B, h, w, D] -> float [B, h, w, num_classes]`` at the input's resolution."""
  num_classes: int
  channels: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ConvBN(self.channels, 3, bn_axis_name=self.bn_axis_name, name="conv", **kw)(x, train=train)
    x = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0.0)(x)
    return conv(self.num_classes, 1, use_bias=True, kernel_init=_classifier_init, name="classifier", **kw)(x)


class PyramidPooling(nn.Module):
  """Pyramid pooling module (Zhao et al. 2017, §3.2, Fig. 3c): for each bin count b, adaptive average pooling to
  b x b, 1x1 conv to ``reduction`` channels + BN + ReLU, bilinear upsampling to h x w; concatenated with the input.
  ``[B, h, w, D] -> [B, h, w, D + len(bins) * reduction]``."""
  reduction: int
  bins: Sequence[int] = (1, 2, 3, 6)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    outs = [x]
    for b in self.bins:
      y = ConvBN(self.reduction, 1, name=f"bin{b}", **kw)(pyramid_pool(x, int(b)), train=train)
      outs.append(resize_bilinear(y, x.shape[1:3]))
    return jnp.concatenate(outs, axis=-1)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling with image-level features (Chen et al. 2017, §3.3, Fig. 5): a 1x1 conv, one 3x3
  conv per rate, global average pooling -> 1x1 conv (bilinearly upsampled = broadcast), each with BN + ReLU;
  concatenation, 1x1 conv + BN + ReLU. ``[B, h, w, D] -> [B, h, w, channels]``."""
  channels: int = 256
  rates: Sequence[int] = (6, 12, 18)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    outs = [ConvBN(self.channels, 1, name="branch0", **kw)(x, train=train)]
    for i, r in enumerate(self.rates):
      outs.append(ConvBN(self.channels, 3, dilation=int(r), name=f"branch{i + 1}", **kw)(x, train=train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = ConvBN(self.channels, 1, name="image_pool", **kw)(pooled, train=train)
    outs.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
    return ConvBN(self.channels, 1, name="project", **kw)(jnp.concatenate(outs, axis=-1), train=train)


class GCNBlock(nn.Module):
  """Global Convolutional Network module (Peng et al. 2017, §3.2, Fig. 2B): (k x 1 then 1 x k) + (1 x k then k x 1)
  convs, zero 'same' padding, biases, no BN or ReLU. ``[B, h, w, D] -> [B, h, w, features]``."""
  features: int
  kernel_size: int = 15
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    if k < 1 or k % 2 == 0:
      raise ValueError(f"kernel_size={k} must be a positive odd integer (the paper uses 15)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True)
    left = conv(self.features, (k, 1), name="left_kx1", **kw)(x)
    left = conv(self.features, (1, k), name="left_1xk", **kw)(left)
    right = conv(self.features, (1, k), name="right_1xk", **kw)(x)
    right = conv(self.features, (k, 1), name="right_kx1", **kw)(right)
    return left + right


class BoundaryRefinement(nn.Module):
  """Boundary Refinement block (Peng et al. 2017, §3.3, Fig. 2C): residual ``x + conv3x3(relu(conv3x3(x)))``.
  ``[B, h, w, C] -> [B, h, w, C]``."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True)
    y = conv(x.shape[-1], 3, name="conv1", **kw)(x)
    y = conv(x.shape[-1], 3, name="conv2", **kw)(nn.relu(y))
    return x + y


class Upsample(nn.Module):
  """Upsampling to ``hw``: ``"deconv"`` = 4x4 stride-2 transposed conv with a bilinear init (Peng et al. 2017, Fig. 2A
  "Deconv"; at init it equals bilinear upsampling except on the one-pixel border, where zero padding weighs the
  edge pixel 3/4), resized bilinearly when the input size is not an exact half of ``hw``; ``"bilinear"`` = resize
  only. Identity when the sizes already agree (dilated backbones). ``[B, h, w, C] -> [B, H, W, C]``."""
  mode: str = "deconv"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hw: Sequence[int]):
    hw = (int(hw[0]), int(hw[1]))
    if x.shape[1:3] == hw:
      return x
    if self.mode == "deconv":
      # lax.conv_transpose padding (k - 1 - p) = 2 on each side = PyTorch ConvTranspose2d(4, stride=2, padding=1).
      x = nn.ConvTranspose(x.shape[-1], (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                           kernel_init=_bilinear_upsample_init, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="deconv")(x)
    return resize_bilinear(x, hw)


# ------------------------------------------------------------------------------------------------ segmenters

def _as_kwargs(backbone_kwargs) -> dict[str, Any]:
  return dict(backbone_kwargs or ())


def _build_backbone(m: nn.Module, x: jnp.ndarray, multi_grid=None, default_multi_grid=(1,), *, train: bool):
  """Runs ``m.backbone`` (features_only, dilated to ``m.output_stride``) under the name ``backbone``."""
  if x.ndim != 4:
    raise ValueError(f"x must be [B, H, W, C] images, got shape {x.shape}")
  kwargs, levels, aux_key = backbone_setup(m.backbone, m.output_stride, _as_kwargs(m.backbone_kwargs), multi_grid,
                                           default_multi_grid)
  kwargs = {**dict(dtype=m.dtype, param_dtype=m.param_dtype, bn_axis_name=m.bn_axis_name), **kwargs}
  net = registry.create(m.backbone, features_only=True, name="backbone", **kwargs)
  return net(x, train=train), levels, aux_key


def _head_channels(channels: int, in_features: int, divisor: int) -> int:
  return channels if channels > 0 else max(1, in_features // divisor)


def _outputs(m: nn.Module, logits, feats, aux_key, hw, *, train: bool) -> dict[str, jnp.ndarray]:
  out = {"logits": resize_bilinear(logits, hw).astype(jnp.float32)}
  if m.aux_head:
    f = feats[aux_key]
    aux = FCNHead(m.num_classes, _head_channels(m.aux_channels, f.shape[-1], 4), m.dropout_rate, dtype=m.dtype,
                  param_dtype=m.param_dtype, bn_axis_name=m.bn_axis_name, name="aux_head")(f, train=train)
    out["aux_logits"] = resize_bilinear(aux, hw).astype(jnp.float32)
  return out


class FCN(nn.Module):
  """Dilated FCN baseline (Zhao et al. 2017, Table 4 "ResNet50-Baseline"): backbone -> FCNHead -> bilinear upsample.
  ``channels=0``: a quarter of the backbone's output channels (512 for ResNet-50)."""
  num_classes: int
  backbone: str = "resnet18"
  output_stride: int = 8
  backbone_kwargs: Any = None
  channels: int = 0
  dropout_rate: float = 0.0  # PSPNet's heads use 0.1 (needs a "dropout" rng in train mode)
  aux_head: bool = False
  aux_channels: int = 0  # 0: a quarter of the stage-3 channels (256 for ResNet-50)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    feats, levels, aux_key = _build_backbone(self, x, train=train)
    f = feats[levels[-1]]
    logits = FCNHead(self.num_classes, _head_channels(self.channels, f.shape[-1], 4), self.dropout_rate,
                     dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name,
                     name="head")(f, train=train)
    return _outputs(self, logits, feats, aux_key, x.shape[1:3], train=train)


class PSPNet(nn.Module):
  """PSPNet (Zhao et al. 2017, §3.2-3.3): pyramid pooling (reduction D/len(bins)) + 3x3 conv-BN-ReLU (``channels``;
  0: D/4 = 512 for ResNet-50) + dropout + 1x1 classifier; auxiliary FCN head on the stage-3 features."""
  num_classes: int
  backbone: str = "resnet18"
  output_stride: int = 8
  backbone_kwargs: Any = None
  bins: Sequence[int] = (1, 2, 3, 6)
  channels: int = 0
  dropout_rate: float = 0.0  # the paper's 0.1 needs a "dropout" rng in train mode
  aux_head: bool = True
  aux_channels: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    feats, levels, aux_key = _build_backbone(self, x, train=train)
    f = feats[levels[-1]]
    d = f.shape[-1]
    y = PyramidPooling(max(1, d // len(self.bins)), tuple(self.bins), dtype=self.dtype, param_dtype=self.param_dtype,
                       bn_axis_name=self.bn_axis_name, name="ppm")(f, train=train)
    logits = FCNHead(self.num_classes, _head_channels(self.channels, d, 4), self.dropout_rate, dtype=self.dtype,
                     param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name, name="head")(y, train=train)
    return _outputs(self, logits, feats, aux_key, x.shape[1:3], train=train)


class DeepLabV3(nn.Module):
  """DeepLabV3 (Chen et al. 2017, §3.3): backbone with multi-grid on its last stage -> ASPP (rates ``atrous_rates``
  at output stride 16, scaled by 16/output_stride) -> 1x1 classifier. ``channels=0``: D/8 (256 for ResNet-50).
  ``multi_grid=None``: (1, 2, 4) on ResNet backbones, (1,) on DRN-C."""
  num_classes: int
  backbone: str = "resnet18"
  output_stride: int = 8
  backbone_kwargs: Any = None
  atrous_rates: Sequence[int] = (6, 12, 18)
  multi_grid: Sequence[int] | None = None
  channels: int = 0
  dropout_rate: float = 0.0
  aux_head: bool = False
  aux_channels: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    feats, levels, aux_key = _build_backbone(self, x, self.multi_grid, (1, 2, 4), train=train)
    f = feats[levels[-1]]
    c = _head_channels(self.channels, f.shape[-1], 8)
    y = ASPP(c, aspp_rates(self.atrous_rates, self.output_stride), dtype=self.dtype, param_dtype=self.param_dtype,
             bn_axis_name=self.bn_axis_name, name="aspp")(f, train=train)
    y = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0.0)(y)
    logits = conv(self.num_classes, 1, use_bias=True, kernel_init=_classifier_init, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="classifier")(y)
    return _outputs(self, logits, feats, aux_key, x.shape[1:3], train=train)


class GCN(nn.Module):
  """Large Kernel Matters (Peng et al. 2017, Fig. 2A): GCN + BR on the stride-4/8/16/32 stages producing
  ``channels`` score maps (0: ``num_classes``, as in the paper; otherwise a final 1x1 classifier), top-down
  upsample + add + BR, then two upsample + BR steps to the input size.

  ``large_kernel=False`` replaces each GCN by a 3x3 conv with the same output (Table 1/2 baseline);
  ``boundary_refinement=False`` drops every BR (Table 3). ``adapt_kernel_size`` caps k per level at the largest odd
  number <= the map's side (``gcn_kernel_size``); the paper's k = 15 on 512x512 inputs is unchanged by it.
  """
  num_classes: int
  backbone: str = "resnet18"
  output_stride: int = 32
  backbone_kwargs: Any = None
  kernel_size: int = 15
  adapt_kernel_size: bool = True
  large_kernel: bool = True
  boundary_refinement: bool = True
  upsample: str = "deconv"  # "deconv" | "bilinear"
  channels: int = 0
  dropout_rate: float = 0.0  # aux head only
  aux_head: bool = False
  aux_channels: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.upsample not in ("deconv", "bilinear"):
      raise ValueError(f"upsample={self.upsample!r}; choose 'deconv' (transposed conv, the paper) or 'bilinear'")
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"kernel_size={self.kernel_size} must be a positive odd integer (the paper uses 15)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feats, levels, aux_key = _build_backbone(self, x, train=train)
    c = self.channels if self.channels > 0 else self.num_classes
    br = (lambda name: BoundaryRefinement(name=name, **kw)) if self.boundary_refinement else (lambda name: lambda t: t)
    scores = []
    for i, key in enumerate(levels):
      f = feats[key]
      if self.large_kernel:
        k = gcn_kernel_size(self.kernel_size, f.shape[1], f.shape[2], self.adapt_kernel_size)
        s = GCNBlock(c, k, name=f"gcn{i + 2}", **kw)(f)
      else:
        s = conv(c, 3, use_bias=True, name=f"gcn{i + 2}", **kw)(f)
      scores.append(br(f"br{i + 2}")(s))
    y = scores[-1]
    for i in range(len(scores) - 2, -1, -1):
      y = Upsample(self.upsample, name=f"up{i + 2}", **kw)(y, scores[i].shape[1:3])
      y = br(f"br_fuse{i + 2}")(y + scores[i])
    h, w = x.shape[1:3]
    y = br("br_half")(Upsample(self.upsample, name="up_half", **kw)(y, ((h + 1) // 2, (w + 1) // 2)))
    y = br("br_full")(Upsample(self.upsample, name="up_full", **kw)(y, (h, w)))
    if c != self.num_classes:
      y = conv(self.num_classes, 1, use_bias=True, kernel_init=_classifier_init, name="classifier", **kw)(y)
    return _outputs(self, y, feats, aux_key, (h, w), train=train)


# ------------------------------------------------------------------------------------------------ registry

def _factory(cls, default_output_stride: int):
  def factory(*, num_classes: int, backbone: str = "resnet18", output_stride: int = default_output_stride,
              backbone_kwargs: Mapping[str, Any] | None = None, **kw) -> nn.Module:
    bkw = tuple(sorted(_as_kwargs(backbone_kwargs).items()))
    backbone_setup(backbone, output_stride, bkw, kw.get("multi_grid"))  # fail at create() time, not at init
    return cls(num_classes=num_classes, backbone=backbone, output_stride=output_stride, backbone_kwargs=bkw, **kw)
  factory.__doc__ = cls.__doc__
  return factory


registry.register("fcn", family="segmentation")(_factory(FCN, 8))
registry.register("pspnet", family="segmentation")(_factory(PSPNet, 8))
registry.register("deeplabv3", family="segmentation")(_factory(DeepLabV3, 8))
# "gcn" is the graph family's Kipf & Welling GCN (research.models.graph); Peng et al.'s network is "gcn_seg".
registry.register("gcn_seg", family="segmentation")(_factory(GCN, 32))
