"""Small shared helpers for research.ops: dtype policy, pair arguments, memory-bounded chunked maps."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# dtypes the C++ kernels take natively (always accumulating in float32)
FFI_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))
HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(dtype) -> np.dtype:
  """float32 for float32/bf16/f16 (f32 accumulation), float64 stays float64."""
  return np.dtype(jnp.promote_types(dtype, jnp.float32))


def pair(v, name: str) -> tuple[int, int]:
  if isinstance(v, (int, np.integer)):
    return int(v), int(v)
  v = tuple(int(e) for e in v)
  if len(v) != 2:
    raise ValueError(f"{name} must be an int or a pair, got {v}")
  return v


def chunked_map(fn: Callable, xs: Sequence[jnp.ndarray], n: int, chunk: int):
  """``fn`` over the leading axis of ``xs`` in chunks of ``chunk`` rows (``lax.map``) to bound memory.

  ``fn`` maps arrays with a leading axis of length <= chunk to an array with the same leading axis.
  """
  if n <= chunk:
    return fn(*xs)
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  padded = [jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) for x in xs]
  stacked = [x.reshape((n_chunks, chunk) + x.shape[1:]) for x in padded]
  out = jax.lax.map(lambda a: fn(*a), stacked)
  return out.reshape((n_chunks * chunk,) + out.shape[2:])[:n]


def exact_div(a, b):
  """IEEE ``a / b``. XLA rewrites division by a constant or broadcast scalar into multiplication by its
  reciprocal (1 ulp off); sample positions on the validity boundary must round exactly as torchvision's."""
  a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b, dtype=jnp.result_type(a)))
  return a / jax.lax.optimization_barrier(b)


def match_vma(grads: Sequence, primals: Sequence) -> tuple:
  """Casts each gradient to the varying-manual-axes type of its primal input (``None`` passes through).

  Inside ``shard_map`` a ``custom_vjp`` backward rule must return cotangents of exactly the primals' types,
  including the set of mesh axes they vary over; XLA FFI calls and fresh ``jnp.zeros`` carry none, so the
  C++ backward kernels' outputs are cast here (a no-op outside ``shard_map``).
  """
  out = []
  for g, p in zip(grads, primals):
    if g is not None and p is not None:
      missing = tuple(sorted(_varying(p) - _varying(g)))
      if missing:
        g = jax.lax.pcast(g, missing, to="varying")
    out.append(g)
  return tuple(out)


def _varying(x) -> set:
  """The mesh axes ``x`` varies over inside ``shard_map`` (empty outside)."""
  t = jax.typeof(x)
  mat = getattr(t, "manual_axis_type", None)
  if mat is not None:
    return set(mat.varying)
  return set(getattr(t, "vma", ()))  # older JAX spelling
