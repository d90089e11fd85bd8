"""Mesh and sharding helpers shared by the training loop and by data-parallel computations that are not
training (Task2Vec's Fisher estimation): the 1-D ``data`` mesh, global batches, and ``parallelize`` =
``jit(shard_map(fn))`` with replicated state and a batch split along ``data``.

Training itself is ``research.train.loop.train`` driven by a ``research.train.task.Task``.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from research.train.loop import host_value, num_params, params_sha256
from research.train.task import (DATA_AXIS, TrainState, batch_sharding, global_batch, make_mesh, replicated)

__all__ = ["DATA_AXIS", "TrainState", "batch_sharding", "global_batch", "host_value", "make_mesh", "num_params",
           "params_sha256", "parallelize", "replicated"]


def parallelize(fn: Callable, mesh: Mesh, *, donate_state: bool = True, state_out: bool = True):
  """``jit(shard_map(fn))`` for ``fn(state, batch)`` written for one device's shard: ``state`` replicated,
  ``batch`` split along ``data``; outputs replicated (``(state, out)`` or, with ``state_out=False``, ``out``)."""
  out_specs = (P(), P()) if state_out else P()
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=out_specs)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())
