"""Per-layer parameter and compute table of a model, from shapes only (``jax.eval_shape``; nothing materialised).

Compute is analytic multiply-accumulates (MACs) of every ``nn.Conv`` (out_elems * kh*kw*Cin/groups) and
``nn.Dense`` (out_elems * in_features) call; BN, pooling and element-wise ops are not counted. Reported as
"GMACs", the quantity most papers and torchvision call FLOPs.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass
class LayerRow:
  path: str
  kind: str
  out_shape: tuple
  params: int
  macs: int


def profile(model: nn.Module, resolution: int, batch: int = 1) -> tuple[list[LayerRow], int, int]:
  """Returns (rows for conv/dense layers, total params of the model, total MACs per example)."""
  rows: list[LayerRow] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (nn.Conv, nn.Dense)) and not mod.is_initializing():
      x = args[0]
      n_params = sum(math.prod(v.shape) for v in jax.tree.leaves(mod.variables.get("params", {})))
      per_out = n_params - (mod.features if mod.use_bias else 0)  # weights per output feature * features
      macs = (math.prod(out.shape[:-1]) * per_out) // batch
      rows.append(LayerRow("/".join(mod.path), type(mod).__name__, tuple(out.shape[1:]), n_params, macs))
      del x
    return out

  x = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  total_params = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))
  return rows, total_params, sum(r.macs for r in rows)


def count_params(model: nn.Module, resolution: int) -> int:
  """Number of trainable parameters (the ``params`` collection) via ``jax.eval_shape``."""
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  v = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                                          train=False), x)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(v["params"]))
