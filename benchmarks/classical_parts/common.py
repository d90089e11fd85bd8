"""Timing helpers shared by the ``benchmarks/classical_parts`` modules."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax


def median_ms(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of ``fn()`` in milliseconds after ``warmup`` calls; JAX outputs are blocked on."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - t0) * 1e3)
  times.sort()
  return times[len(times) // 2]


def row(op: str, size: str, peer: str, jax_ms: float, peer_ms: float, **extra: Any) -> dict:
  """One table row; ``ratio`` = peer_ms / jax_ms (> 1: JAX faster)."""
  return {"op": op, "size": size, "peer": peer, "jax_ms": round(jax_ms, 3), "peer_ms": round(peer_ms, 3),
          "ratio": round(peer_ms / jax_ms, 3), **extra}
