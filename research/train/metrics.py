"""Metric writers (JSONL + TensorBoard event files) and a progress bar, on process 0 only."""

from __future__ import annotations

import json
import math
import os
from typing import Iterator, Mapping

import jax
import numpy as np

from research import fileio


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` lines to ``metrics.jsonl`` and TensorBoard scalars to ``tb/``.

  ``resume_step`` drops JSONL lines logged after the checkpoint a resumed run restarts from, so a killed
  and resumed run leaves the same log as an uninterrupted one.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      kept = []
      with open(self.path) as f:
        for line in f:
          try:
            if json.loads(line).get("step", 0) <= resume_step:
              kept.append(line)
          except json.JSONDecodeError:  # a line cut by a kill
            pass
      fileio.write_atomic(self.path, "".join(kept))
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
    if not self.active:
      return
    values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}, allow_nan=True) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str) -> Iterator[dict]:
  """The rows of ``workdir/metrics.jsonl`` in file order (none if it does not exist; a line cut by a kill is
  skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path) as f:
    for line in f:
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        continue


def progress(total: int, initial: int = 0, desc: str = "", disable: bool | None = None):
  """tqdm bar shown on process 0 only."""
  from tqdm.auto import tqdm
  if disable is None:
    disable = jax.process_index() != 0
  return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, leave=True)


def to_floats(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}
