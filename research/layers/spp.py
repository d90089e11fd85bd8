"""Spatial pyramid pooling (He et al., "Spatial Pyramid Pooling in Deep Convolutional Networks", ECCV 2014, §2.3)."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from research.layers.common import adaptive_avg_pool, adaptive_max_pool


def spatial_pyramid_pool(x: jnp.ndarray, levels: Sequence[int] = (1, 2, 4), mode: str = "max") -> jnp.ndarray:
  """``[B, H, W, C]`` -> ``[B, C * sum(n*n for n in levels)]`` for any H, W >= 1.

  Level n pools an n x n grid of bins. Bins follow adaptive pooling ([floor(i*H/n), ceil((i+1)*H/n))), which
  equals the paper's window ceil(H/n) / stride floor(H/n) whenever that yields n bins and stays defined
  otherwise. Output order: level, then bin row, bin column, then channel.
  """
  if mode not in ("max", "avg"):
    raise ValueError(f"spatial_pyramid_pool mode must be 'max' or 'avg', got {mode!r}")
  pool = adaptive_max_pool if mode == "max" else adaptive_avg_pool
  return jnp.concatenate([pool(x, n).reshape(x.shape[0], -1) for n in levels], axis=-1)
