"""Fractal block with join = element-wise mean and drop-path (Larsson et al., "FractalNet", ICLR 2017, §2-3)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.common import ConvBN


def join(inputs: list[jnp.ndarray], keep: jnp.ndarray | None = None) -> jnp.ndarray:
  """Element-wise mean of ``inputs``; with a 0/1 ``keep`` vector, the mean of the kept ones (0 if none)."""
  x = jnp.stack(inputs, axis=0)
  if keep is None:
    return jnp.mean(x, axis=0)
  keep = keep.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.sum(x * keep, axis=0) / jnp.maximum(jnp.sum(keep), 1).astype(x.dtype)


class FractalBlock(nn.Module):
  """f_C expanded iteratively: column c (0 = shallowest) has 2**c Conv-BN-ReLU layers; after every layer of the
  deepest column, the columns ending there are joined (mean) and continue from the join. 2**C - 1 convs.

  Drop-path is on in training when ``local`` (bool scalar) and ``global_col`` (int scalar) are given, both drawn
  once per network call: ``local`` True -> each join input is dropped with probability ``local_drop`` (at least
  one kept, from the ``'droppath'`` rng); False -> only column ``global_col`` survives each join.
  """
  features: int
  columns: int = 4
  local_drop: float = 0.15
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool, local: jnp.ndarray | None = None, global_col: jnp.ndarray | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    C = self.columns
    depth = 2 ** (C - 1)
    outs = [x] * C
    count = [0] * C
    for t in range(1, depth + 1):
      ending = [c for c in range(C) if t % 2 ** (C - 1 - c) == 0]
      for c in ending:
        count[c] += 1
        y = ConvBN(self.features, 3, name=f"col{c}_conv{count[c]}", **kw)(outs[c], train=train)
        if self.dropout_rate > 0:
          y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        outs[c] = y
      if len(ending) == 1:
        continue
      keep = None
      if train and local is not None:
        rng = self.make_rng("droppath")
        k_local = jax.random.bernoulli(rng, 1.0 - self.local_drop, (len(ending),))
        forced = jax.nn.one_hot(jax.random.randint(jax.random.fold_in(rng, 1), (), 0, len(ending)), len(ending))
        k_local = jnp.where(jnp.any(k_local), k_local, forced > 0)
        k_global = jnp.asarray(ending) == global_col
        keep = jnp.where(local, k_local, k_global)
      j = join([outs[c] for c in ending], keep)
      for c in ending:
        outs[c] = j
    return outs[-1]
