"""Convolution as im2col + GEMM (seed 003 §6.1; Chellapilla et al. 2006): patches [N*Ho*Wo, kh*kw*Cin] @ [kh*kw*Cin, Cout]."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from jax import lax


def _pads(padding, k, s, d, size):
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [(0, 0)] * 2
    if padding.upper() == "SAME":
      out = []
      for kk, ss, dd, n in zip(k, s, d, size):
        eff = (kk - 1) * dd + 1
        total = max((-(-n // ss) - 1) * ss + eff - n, 0)
        out.append((total // 2, total - total // 2))
      return out
    raise ValueError(f"padding must be 'SAME', 'VALID' or pairs, got {padding!r}")
  return [tuple(p) for p in padding]


def im2col(x: jnp.ndarray, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1), padding="VALID",
           dilation: Sequence[int] = (1, 1)) -> jnp.ndarray:
  """``[N, H, W, C]`` -> ``[N, Ho, Wo, kh*kw*C]``, patch features ordered (kernel row, kernel col, channel)."""
  kh, kw = kernel_size
  (ph, pw) = _pads(padding, kernel_size, strides, dilation, x.shape[1:3])
  x = jnp.pad(x, [(0, 0), ph, pw, (0, 0)])
  h, w = x.shape[1], x.shape[2]
  ho = (h - (kh - 1) * dilation[0] - 1) // strides[0] + 1
  wo = (w - (kw - 1) * dilation[1] - 1) // strides[1] + 1
  cols = []
  for i in range(kh):
    for j in range(kw):
      r0, c0 = i * dilation[0], j * dilation[1]
      cols.append(x[:, r0:r0 + (ho - 1) * strides[0] + 1:strides[0], c0:c0 + (wo - 1) * strides[1] + 1:strides[1], :])
  return jnp.stack(cols, axis=3).reshape(x.shape[0], ho, wo, kh * kw * x.shape[3])


def conv2d_im2col(x: jnp.ndarray, w: jnp.ndarray, strides: Sequence[int] = (1, 1), padding="VALID",
                  dilation: Sequence[int] = (1, 1), groups: int = 1,
                  precision=lax.Precision.HIGHEST) -> jnp.ndarray:
  """2-D convolution ``x [N,H,W,Cin]`` * ``w [kh,kw,Cin/groups,Cout]`` (HWIO) by im2col + one GEMM per group.

  Equals ``lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
  dimension_numbers=('NHWC','HWIO','NHWC'), feature_group_count=groups)``.
  """
  kh, kw, cin_g, cout = w.shape
  cin = x.shape[-1]
  if cin != cin_g * groups or cout % groups:
    raise ValueError(f"conv2d_im2col: input channels {cin} / output {cout} do not match groups={groups}, w={w.shape}")
  n = x.shape[0]
  outs = []
  for g in range(groups):
    xg = x[..., g * cin_g:(g + 1) * cin_g]
    cols = im2col(xg, (kh, kw), strides, padding, dilation)  # [N, Ho, Wo, kh*kw*cin_g]
    wg = w[..., g * (cout // groups):(g + 1) * (cout // groups)].reshape(kh * kw * cin_g, cout // groups)
    ho, wo = cols.shape[1], cols.shape[2]
    outs.append(jnp.matmul(cols.reshape(n * ho * wo, -1), wg, precision=precision).reshape(n, ho, wo, -1))
  return jnp.concatenate(outs, axis=-1) if groups > 1 else outs[0]
