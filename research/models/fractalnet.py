"""FractalNet (Larsson, Maire & Shakhnarovich, ICLR 2017, §4): CIFAR, B = 5 blocks of C columns.

``fractalnet`` has C = 4 (40 layers, the seed's network); ``fractalnet20`` has C = 3, the 20-layer network of the
paper's Table 1. Channels 64, 128, 256, 512, 512; Conv-BN-ReLU; 2x2 max pool after each block; joins are element-wise
means; the block's convolution layout is the one the authors' generator (gustavla/fractalnet) wires: column c has
2**c convolutions, the first of each column reads the block input.
Training uses drop-path when ``drop_path=True``: per call, with probability ``global_prob`` (0.5) a single column is
kept for the whole network (global), otherwise each join drops inputs with probability 0.15 keeping at least one
(local). Requires the ``'droppath'`` rng in train mode. Per-block dropout defaults to the paper's (0, .1, .2, .3, .4).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.common import global_avg_pool, head, stride_key
from research.layers.fractal import FractalBlock
from research.models.registry import register

Dtype = Any


class FractalNet(nn.Module):
  """FractalNet for 32x32 inputs."""
  columns: int = 4
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  dropout_rates: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4)
  drop_path: bool = True
  local_drop: float = 0.15
  global_prob: float = 0.5
  num_classes: int = 10
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  features_only: bool = False
  maxout_pieces: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    local = global_col = None
    if train and self.drop_path:
      rng = self.make_rng("droppath")
      local = jax.random.uniform(rng) >= self.global_prob
      global_col = jax.random.randint(jax.random.fold_in(rng, 1), (), 0, self.columns)
    feats = {}
    x = x.astype(self.dtype)
    stride = 1
    for b, (w, p) in enumerate(zip(self.widths, self.dropout_rates)):
      x = FractalBlock(w, self.columns, self.local_drop, p, name=f"block{b + 1}", **kw)(
          x, train=train, local=local, global_col=global_col)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      stride *= 2
      if b == 0:
        feats["stem"] = x
      feats[f"stage{b + 1}"] = feats[stride_key(stride)] = x
    pooled = global_avg_pool(x)
    if self.features_only:
      feats["pooled"] = pooled
      return feats
    return head(self.num_classes, maxout_pieces=self.maxout_pieces, dtype=self.dtype,
                param_dtype=self.param_dtype)(pooled).astype(jnp.float32)


register("fractalnet")(lambda **kw: FractalNet(**{"columns": 4, **kw}))
register("fractalnet20")(lambda **kw: FractalNet(**{"columns": 3, **kw}))
