"""Deformation-constrained pooling, "def-pooling" (Ouyang et al., "DeepID-Net", CVPR 2015 §3.3 / TPAMI 2016)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.ops._util import pair

Dtype = Any
NUM_DEFORMATION_FEATURES = 4


def deformation_features(kernel_size: int | tuple[int, int]) -> np.ndarray:
  """``float64 [kh*kw, 4]``: the deformation features ``d^n`` of every window tap, taps in row-major order.

  Tap ``(i, j)`` (row ``i`` in ``[0, kh)``, column ``j`` in ``[0, kw)``) is displaced ``dy = i - (kh-1)/2``,
  ``dx = j - (kw-1)/2`` from the window centre (the anchor; half-integers for an even size) and has features
  ``[dx**2, dy**2, dx, dy]`` — the DPM quadratic deformation cost the paper recovers with N = 4. The linear terms
  are signed (as in DPM), so learned linear weights move the cheapest position off the centre.
  """
  kh, kw = pair(kernel_size, "kernel_size")
  dy, dx = np.meshgrid(np.arange(kh) - (kh - 1) / 2, np.arange(kw) - (kw - 1) / 2, indexing="ij")
  dy, dx = dy.reshape(-1), dx.reshape(-1)
  return np.stack([dx * dx, dy * dy, dx, dy], axis=-1)


def _same_padding(size: int, k: int, s: int) -> tuple[int, int, int]:
  """TF/flax ``"SAME"``: output ceil(size/s), total padding split low = total // 2 (extra on the high side)."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return out, total // 2, total - total // 2


def def_pool(x: jnp.ndarray, penalty: jnp.ndarray, *, kernel_size: int | tuple[int, int],
             stride: int | tuple[int, int] | None = None, padding: str = "VALID") -> tuple[jnp.ndarray, jnp.ndarray]:
  """Def-pooling of part-detection maps: ``x [B, H, W, C]``, ``penalty [C, 4]`` -> ``(out [B, Ho, Wo, C],
  disp [B, Ho, Wo, C, 2] int32)``.

  For output block ``(u, v)`` (row, column) and channel ``c``, with window origin ``(u*sy - pad_top, v*sx -
  pad_left)``:

    ``out[b, u, v, c] = max_{i, j} x[b, u*sy - pad_top + i, v*sx - pad_left + j, c] - sum_n penalty[c, n] d^n(i, j)``

  over the ``kh x kw`` window taps ``(i, j)``, where ``d(i, j) = [dx**2, dy**2, dx, dy]`` with ``dy = i - (kh-1)/2``
  and ``dx = j - (kw-1)/2`` measured from the window centre (see ``deformation_features``). The penalty weights are
  used as given (unconstrained, as in the paper; ``DefPooling`` can keep the quadratic ones non-negative). Zero
  penalty is max pooling; a large positive quadratic penalty selects the centre tap (odd sizes).

  ``stride`` defaults to ``kernel_size`` (the paper's non-overlapping blocks). ``padding``: ``"VALID"`` (Ho =
  (H - kh) // sy + 1) or ``"SAME"`` (Ho = ceil(H / sy), padded taps never win: they hold -inf; every window keeps at
  least one real tap). The windows are materialised as ``[B, Ho, Wo, C, kh*kw]`` and reduced with ``jnp.max``, so
  the function is jittable and differentiable in ``x`` and ``penalty`` (the gradient flows to the selected tap;
  exact ties share it equally, as ``jnp.max``'s does).

  ``disp[..., 0:2]`` is the selected tap's ``(row, col)`` minus ``(kh // 2, kw // 2)``: exactly ``(dy, dx)`` for odd
  sizes, ``(dy - 1/2, dx - 1/2)`` for even ones. Ties pick the first tap in row-major order.
  """
  if x.ndim != 4:
    raise ValueError(f"def_pool expects x [B, H, W, C], got shape {x.shape}")
  c = x.shape[-1]
  if penalty.shape != (c, NUM_DEFORMATION_FEATURES):
    raise ValueError(f"def_pool: penalty must be [C, 4] = [{c}, 4], got {penalty.shape}")
  kh, kw = pair(kernel_size, "kernel_size")
  sy, sx = pair(kernel_size if stride is None else stride, "stride")
  if min(kh, kw, sy, sx) < 1:
    raise ValueError(f"def_pool: kernel_size {(kh, kw)} and stride {(sy, sx)} must be positive")
  _, h, w, _ = x.shape
  mode = padding.upper() if isinstance(padding, str) else padding
  if mode == "VALID":
    ho, wo, pads = (h - kh) // sy + 1, (w - kw) // sx + 1, ((0, 0), (0, 0))
    if h < kh or w < kw:
      raise ValueError(f"def_pool: input {h}x{w} is smaller than the {kh}x{kw} window with VALID padding")
  elif mode == "SAME":
    ho, pt, pb = _same_padding(h, kh, sy)
    wo, pl, pr = _same_padding(w, kw, sx)
    pads = ((pt, pb), (pl, pr))
  else:
    raise ValueError(f"def_pool padding must be 'VALID' or 'SAME', got {padding!r}")

  dtype = jnp.result_type(x.dtype, penalty.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"def_pool needs floating inputs, got {x.dtype} and {penalty.dtype}")
  xp = jnp.pad(x.astype(dtype), ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  taps = [xp[:, i:i + (ho - 1) * sy + 1:sy, j:j + (wo - 1) * sx + 1:sx, :] for i in range(kh) for j in range(kw)]
  windows = jnp.stack(taps, axis=-1)  # [B, Ho, Wo, C, kh*kw]
  cost = penalty.astype(dtype) @ jnp.asarray(deformation_features((kh, kw)).T, dtype)  # [C, kh*kw]
  scores = windows - cost
  out = jnp.max(scores, axis=-1)
  tap = jnp.argmax(scores, axis=-1).astype(jnp.int32)
  disp = jnp.stack([tap // kw - kh // 2, tap % kw - kw // 2], axis=-1)
  return out, jax.lax.stop_gradient(disp)


def _inverse_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for small and large y


class DefPooling(nn.Module):
  """Def-pooling layer (DeepID-Net): ``[B, H, W, C] -> [B, Ho, Wo, C]`` with a learned deformation penalty per
  channel (see ``def_pool`` for the formula, features and centre convention).

  Parameter ``penalty [C, 4]`` holds the raw weights for the features ``[dx**2, dy**2, dx, dy]``. With
  ``nonneg_quadratic=True`` (default) the quadratic weights used are ``softplus(raw[:, :2])``, so the cost stays a
  bowl that grows away from its minimum; the linear weights are always used as is. With ``nonneg_quadratic=False``
  all four are unconstrained, as in the paper. Initialisation: linear weights 0 and quadratic weights
  ``quadratic_init`` (0.01 -> a cost of 0.01 one pixel from the centre): the layer starts as max pooling with a
  slight preference for the centre.
  """
  kernel_size: int | tuple[int, int] = 3
  strides: int | tuple[int, int] | None = None  # default: kernel_size (non-overlapping blocks, as in the paper)
  padding: str = "VALID"
  nonneg_quadratic: bool = True
  quadratic_init: float = 0.01
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def penalty_weights(self, raw: jnp.ndarray) -> jnp.ndarray:
    """Raw ``penalty`` parameter -> the weights ``def_pool`` uses."""
    if not self.nonneg_quadratic:
      return raw
    return jnp.concatenate([jax.nn.softplus(raw[:, :2]), raw[:, 2:]], axis=-1)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    q0 = _inverse_softplus(self.quadratic_init) if self.nonneg_quadratic else self.quadratic_init
    if self.nonneg_quadratic and self.quadratic_init <= 0:
      raise ValueError(f"DefPooling: quadratic_init must be > 0 with nonneg_quadratic, got {self.quadratic_init}")

    def init(key, shape, dtype):
      del key
      return jnp.tile(jnp.asarray([q0, q0, 0.0, 0.0], dtype), (shape[0], 1))

    raw = self.param("penalty", init, (c, NUM_DEFORMATION_FEATURES), self.param_dtype)
    dtype = self.dtype or x.dtype
    out, _ = def_pool(x.astype(dtype), self.penalty_weights(raw).astype(dtype), kernel_size=self.kernel_size,
                      stride=self.strides, padding=self.padding)
    return out
