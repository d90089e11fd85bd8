"""SegFlow (Cheng et al., ICCV 2017): one network, a segmentation branch and an optical-flow branch that exchange
feature maps while upsampling.

Paper §3 (Figure 2): the segmentation branch is a fully-convolutional network on frame ``t`` (ResNet-101 there),
the flow branch is FlowNetS on the channel-concatenated pair ``(t, t + 1)``; in the up-sampling stage the two are
bridged at several scales: feature maps are propagated BI-DIRECTIONALLY by concatenation. Here (narrow, from
scratch, for CPU budgets):

* both branches have the same level structure: encoder level ``l`` (``l = 0 .. L - 1``, ``L = len(widths)``) has
  stride ``2**l`` and ``widths[l]`` channels (level 0: one conv, 3x3 in the segmentation branch and
  ``flow_kernel`` x ``flow_kernel`` (7, FlowNetS's first kernel) in the flow branch; level ``l > 0``: a stride-2
  3x3 conv and a 3x3 conv; leaky ReLU 0.1 as FlowNet; optional GroupNorm (``groups > 0``), never BatchNorm, so
  there are no batch statistics);
* decoder level ``l`` (from ``L - 2`` down to 0), per branch: ``u = lrelu(deconv4x4/2(d[l + 1]))`` then
  ``d[l] = lrelu(conv3x3(concat(u, skip e[l], ...)))``. The flow branch also concatenates the x2-upsampled flow
  of level ``l + 1`` and predicts a flow at every level (FlowNetS refinement); the segmentation branch predicts
  ``num_classes`` logits at level 0;
* exchange (``exchange=True``): at every decoder level each branch ALSO concatenates the other branch's ``u`` (the
  upsampled features of the same scale), so the segmentation loss reaches the flow parameters and vice versa. With
  ``exchange=False`` the module is two independent networks (the gradient of one branch's output w.r.t. the other
  branch's parameters is exactly zero, which the tests check).

``branches`` selects ``("segmentation", "flow")`` (SegFlow), ``("segmentation",)`` or ``("flow",)`` (the
single-task baselines of the same architecture). Parameter names start with ``seg_`` or ``flow_``
(:func:`split_params` groups them by branch: the paper's iterative training freezes one branch while training the
other).

Initialisation (not in the paper, which starts from ResNet / FlowNetS weights): hidden convs are He-initialised and
the prediction heads start at zero (``zero_heads``). Measured on ``shapes_video/tcc32`` (flow branch alone, batch 16,
Adam 2e-3): with random LeCun-normal heads the first ~50 steps shrink the random initial flow (norm ~0.8) to ~0
and the branch then sits at "no motion" (cosine between predicted and true flow on moving pixels < 0.1 for 400+
steps, with or without GroupNorm, at learning rates 1e-3 to 1e-2); with zero heads it starts to predict the
direction within ~200 steps.

Flows are in pixels of the full-resolution input at every level (FlowNet's coarse predictions are targets pooled
from the full-resolution flow, in the same units). Registered (family ``"dense"``): ``segflow``,
``segflow_seg_only``, ``segflow_flow_only``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.common import kaiming_normal_fan_in
from research.models.registry import register

Dtype = Any
BRANCHES = ("segmentation", "flow")
_PREFIX = {"segmentation": "seg_", "flow": "flow_"}
# He init of a 4x4 stride-2 transposed conv: each output sums 2x2 of the 16 taps, so fan-in is 16 C / 4
_DECONV_INIT = nn.initializers.variance_scaling(8.0, "fan_in", "normal")


def _lrelu(x: jnp.ndarray) -> jnp.ndarray:
  return nn.leaky_relu(x, 0.1)


def _upsample_axis(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """x2 linear interpolation along ``axis`` with half-pixel centres and edge clamping (``align_corners=False``):
  output ``2k`` = ``0.75 x[k] + 0.25 x[k - 1]``, ``2k + 1`` = ``0.75 x[k] + 0.25 x[k + 1]`` (slices, no gather)."""
  n = x.shape[axis]
  first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
  last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
  prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
  nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
  even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
  out = jnp.stack([even, odd], axis=axis + 1)
  return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample2x(x: jnp.ndarray) -> jnp.ndarray:
  """Bilinear x2 upsampling [B, H, W, C] -> [B, 2H, 2W, C] (half-pixel centres, edges clamped; what
  ``jax.image.resize(..., 'bilinear')`` gives for an exact x2 enlargement)."""
  return _upsample_axis(_upsample_axis(x, 1), 2)


def avg_pool_flow(flow: jnp.ndarray, factor: int) -> jnp.ndarray:
  """[B, H, W, 2] -> [B, H / factor, W / factor, 2]: mean over ``factor x factor`` blocks (FlowNet's coarse
  targets; values stay in full-resolution pixels)."""
  if factor == 1:
    return flow
  b, h, w, c = flow.shape
  if h % factor or w % factor:
    raise ValueError(f"avg_pool_flow: {h}x{w} is not divisible by {factor}")
  return flow.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def split_params(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """``{'segmentation': {...}, 'flow': {...}}``: the top-level parameter collections of :class:`SegFlowNet` by
  branch (only branches that have parameters appear)."""
  out: dict[str, dict[str, Any]] = {}
  for name, value in params.items():
    branch = next((b for b, p in _PREFIX.items() if name.startswith(p)), None)
    if branch is None:
      raise ValueError(f"split_params: parameter {name!r} belongs to no branch (names start with 'seg_' or 'flow_')")
    out.setdefault(branch, {})[name] = value
  return out


def merge_params(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """Inverse of :func:`split_params`."""
  out: dict[str, Any] = {}
  for group in groups.values():
    out.update(group)
  return out


class SegFlowNet(nn.Module):
  """SegFlow (§3, Figure 2): x [B, H, W, 6] = frames ``t`` and ``t + 1`` (normalised, channel-concatenated) ->
  dict with (present branches only)

  * ``seg_logits`` [B, H, W, num_classes] (segmentation of frame ``t``; the segmentation branch sees channels 0-2),
  * ``flow`` [B, H, W, 2]: forward flow ``t -> t + 1`` in pixels (u = x, v = y),
  * ``flow_pyramid``: tuple of [B, H / 2^l, W / 2^l, 2], ``l = 0 .. L - 1`` (finest first; ``flow`` is entry 0).

  ``H`` and ``W`` must be divisible by ``2 ** (len(widths) - 1)``.
  """
  widths: Sequence[int] = (16, 24, 32, 48)
  branches: Sequence[str] = BRANCHES
  exchange: bool = True
  num_classes: int = 2
  flow_kernel: int = 7  # the flow branch's first conv (FlowNetS: 7x7); the segmentation branch's is 3x3
  zero_heads: bool = True  # prediction heads (flow, logits) start at exactly 0 (see the module docstring)
  groups: int = 0  # > 0: GroupNorm (min(groups, width) groups) after every hidden conv; 0: none (FlowNet)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _conv(self, features: int, name: str, *, kernel: int = 3, strides: int = 1, head: bool = False) -> nn.Conv:
    # He init keeps the deep signal alive; prediction heads start at 0 (``zero_heads``) or LeCun-normal
    init = (nn.initializers.zeros if self.zero_heads else nn.linear.default_kernel_init) if head else \
        kaiming_normal_fan_in
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding="SAME", dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=init, name=name)

  def _deconv(self, features: int, name: str) -> nn.ConvTranspose:
    return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", dtype=self.dtype,
                            param_dtype=self.param_dtype, kernel_init=_DECONV_INIT, name=name)

  def _act(self, x: jnp.ndarray, name: str) -> jnp.ndarray:
    """Leaky ReLU 0.1 (FlowNet), after GroupNorm when ``groups > 0``."""
    if self.groups:
      x = nn.GroupNorm(num_groups=min(self.groups, x.shape[-1]), dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"{name}_gn")(x)
    return _lrelu(x)

  def _encoder(self, x: jnp.ndarray, prefix: str, first_kernel: int = 3) -> list[jnp.ndarray]:
    feats = []
    for level, width in enumerate(self.widths):
      if level == 0:
        x = self._act(self._conv(width, f"{prefix}enc0", kernel=first_kernel)(x), f"{prefix}enc0")
      else:
        x = self._act(self._conv(width, f"{prefix}enc{level}a", strides=2)(x), f"{prefix}enc{level}a")
        x = self._act(self._conv(width, f"{prefix}enc{level}b")(x), f"{prefix}enc{level}b")
      feats.append(x)
    return feats

  def check(self, x_shape: tuple[int, ...]) -> None:
    """ValueError for a bad configuration or input shape."""
    branches = tuple(self.branches)
    if not branches or any(b not in BRANCHES for b in branches) or len(set(branches)) != len(branches):
      raise ValueError(f"SegFlowNet: branches={branches}; choose a non-empty subset of {BRANCHES}")
    if not self.widths or min(self.widths) <= 0:
      raise ValueError(f"SegFlowNet: widths={tuple(self.widths)} must be positive channel counts (one per level)")
    if self.flow_kernel < 1 or self.flow_kernel % 2 == 0:
      raise ValueError(f"SegFlowNet: flow_kernel={self.flow_kernel} must be a positive odd kernel size")
    if self.num_classes < 2:
      raise ValueError(f"SegFlowNet: num_classes={self.num_classes} must be >= 2 (background + foreground)")
    if len(x_shape) != 4 or x_shape[-1] != 6:
      raise ValueError(f"SegFlowNet expects x [B, H, W, 6] (frames t and t + 1 concatenated), got {x_shape}")
    f = 2 ** (len(self.widths) - 1)
    if x_shape[1] % f or x_shape[2] % f:
      raise ValueError(f"SegFlowNet: H x W = {x_shape[1]}x{x_shape[2]} must be divisible by 2^(len(widths) - 1) = "
                       f"{f}; use fewer widths or another image size")

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> dict[str, Any]:
    del train  # no dropout or batch statistics: train and eval apply are the same function
    self.check(tuple(x.shape))
    x = x.astype(self.dtype)
    has_seg, has_flow = "segmentation" in self.branches, "flow" in self.branches
    levels = len(self.widths)
    d: dict[str, jnp.ndarray] = {}
    enc: dict[str, list[jnp.ndarray]] = {}
    if has_seg:
      enc["segmentation"] = self._encoder(x[..., :3], "seg_")
      d["segmentation"] = enc["segmentation"][-1]
    if has_flow:
      enc["flow"] = self._encoder(x, "flow_", self.flow_kernel)
      d["flow"] = enc["flow"][-1]
      flows = [self._conv(2, f"flow_pred{levels - 1}", head=True)(d["flow"]).astype(jnp.float32)]
    for level in range(levels - 2, -1, -1):
      width = self.widths[level]
      up = {b: self._act(self._deconv(width, f"{_PREFIX[b]}up{level}")(d[b]), f"{_PREFIX[b]}up{level}") for b in d}
      new = {}
      for b in d:
        parts = [up[b], enc[b][level]]
        if b == "flow":
          parts.append(upsample2x(flows[-1]).astype(self.dtype))
        if self.exchange:
          parts.extend(up[o] for o in up if o != b)  # the bi-directional bridge: the other branch's features
        name = f"{_PREFIX[b]}dec{level}"
        new[b] = self._act(self._conv(width, name)(jnp.concatenate(parts, axis=-1)), name)
      d = new
      if has_flow:
        flows.append(self._conv(2, f"flow_pred{level}", head=True)(d["flow"]).astype(jnp.float32))
    out: dict[str, Any] = {}
    if has_seg:
      out["seg_logits"] = self._conv(self.num_classes, "seg_head", head=True)(d["segmentation"]).astype(jnp.float32)
    if has_flow:
      pyramid = tuple(reversed(flows))
      out["flow"], out["flow_pyramid"] = pyramid[0], pyramid
    return out


@register("segflow", family="dense")
def segflow(**kw) -> SegFlowNet:
  """Both branches with the bi-directional feature exchange (SegFlow)."""
  return SegFlowNet(**{"branches": BRANCHES, "exchange": True, **kw})


@register("segflow_seg_only", family="dense")
def segflow_seg_only(**kw) -> SegFlowNet:
  """The segmentation branch alone (single-task baseline)."""
  return SegFlowNet(**{"branches": ("segmentation",), "exchange": False, **kw})


@register("segflow_flow_only", family="dense")
def segflow_flow_only(**kw) -> SegFlowNet:
  """The FlowNetS-like flow branch alone (single-task baseline)."""
  return SegFlowNet(**{"branches": ("flow",), "exchange": False, **kw})
