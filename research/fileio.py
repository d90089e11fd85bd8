"""Atomic file writes: a temporary file in the destination's directory, then ``os.replace`` (atomic on POSIX), so a
reader never sees a partial file and a run killed mid-write leaves the previous version (or nothing) in place."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes ``data`` (text as UTF-8, or bytes) to ``path`` via ``<path>.<pid>-<random>.tmp`` + ``os.replace``.

  The temporary file sits in the same directory (same filesystem, so the rename is atomic) and is removed if the
  write fails."""
  path = os.fspath(path)
  tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
  try:
    if isinstance(data, bytes):
      with open(tmp, "wb") as f:
        f.write(data)
    else:
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def json_default(x: Any) -> Any:
  """``json.dump`` fallback: numpy scalars -> Python scalars, numpy / jax arrays -> nested lists."""
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  import jax  # noqa: PLC0415  (jax is imported by every caller already; kept lazy for this module's importers)
  if isinstance(x, jax.Array):
    return np.asarray(x).tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
  """``payload`` as JSON (indent 2, sorted keys, numpy/jax values via ``json_default``, final newline), atomically."""
  write_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=json_default) + "\n")


def main_process() -> bool:
  """True on the process that writes summaries, plots and other shared files (JAX process 0; always True in a
  single-process run). Every writer of a shared file in ``research/`` checks it."""
  import jax
  return jax.process_index() == 0
