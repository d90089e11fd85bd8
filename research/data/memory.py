"""In-memory training batches with a checkpointable position (for data that is already a numpy array).

``ArrayBatches(arrays, global_batch_size=B, seed=s)`` yields, at step ``t``, the rows
``idx = np.random.default_rng([s, t]).integers(0, N, B)`` of every array (sampling with replacement), passed
through ``transform(batch, rng)`` with the same generator -- so the batch at a step depends only on
``(seed, step)``, for any number of processes, and a resumed run sees the same batches. Each process keeps its
rows ``[p*B/P, (p+1)*B/P)`` of the global batch. ``get_state``/``set_state`` (JSON bytes) make it a data
iterator the training loop checkpoints.
"""

from __future__ import annotations

import json
from typing import Callable, Mapping

import jax
import numpy as np

Transform = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]


class ArrayBatches:
  """Infinite iterator of this process's rows of seeded random global batches of ``arrays``."""

  def __init__(self, arrays: Mapping[str, np.ndarray], *, global_batch_size: int, seed: int,
               transform: Transform | None = None, start_step: int = 0):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays must have the same number of rows, got {sizes}")
    self._n = next(iter(sizes.values()))
    if self._n == 0:
      raise ValueError("ArrayBatches needs at least one row")
    if global_batch_size % jax.process_count():
      raise ValueError(f"global batch {global_batch_size} is not divisible by {jax.process_count()} processes")
    self._arrays = dict(arrays)
    self._batch, self._seed, self._transform = global_batch_size, seed, transform
    self._local = global_batch_size // jax.process_count()
    self._step = start_step

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._step])
    idx = rng.integers(0, self._n, self._batch)
    batch = {k: v[idx] for k, v in self._arrays.items()}
    if self._transform is not None:
      batch = self._transform(batch, rng)
    self._step += 1
    p = jax.process_index()
    return {k: v[p * self._local:(p + 1) * self._local] for k, v in batch.items()}

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "seed": self._seed, "global_batch_size": self._batch}).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    if s.get("seed") != self._seed or s.get("global_batch_size") != self._batch:
      raise ValueError(f"data state {s} was saved with another seed or batch size than this run's "
                       f"(seed={self._seed}, global_batch_size={self._batch})")
    self._step = int(s["step"])


def padded_eval_rows(n: int, global_batch_size: int):
  """One pass over ``n`` items in global batches of ``global_batch_size``, the last one padded: an iterator of this
  process's ``(rows int [b], valid float32 [b])`` per batch (``b = global_batch_size / process_count``; padding rows
  repeat item 0 with ``valid = 0``, so eval sums weighted by ``valid`` count every item once on any number of
  processes). A bad batch size raises ``ValueError`` here, before any iteration."""
  if global_batch_size <= 0 or global_batch_size % jax.process_count():
    raise ValueError(f"eval batch {global_batch_size} must be positive and divisible by {jax.process_count()} "
                     f"processes")
  local = global_batch_size // jax.process_count()
  mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def rows_of(start):
    rows = np.arange(start, start + global_batch_size)
    valid = rows < n
    return np.where(valid, rows, 0)[mine], valid[mine].astype(np.float32)
  return map(rows_of, range(0, n, global_batch_size))
