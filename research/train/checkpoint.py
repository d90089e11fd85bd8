"""orbax checkpoints of (TrainState, data-iterator state) with resume and corrupt-checkpoint fallback.

Resume order (as big_vision): the newest checkpoint in ``workdir`` that restores cleanly, else an
initialisation checkpoint (``load_params``), else scratch. A checkpoint that fails to restore (truncated
or corrupted files) is reported with a warning and the previous one is used. orbax writes atomically
(temporary directory + rename), so a run killed while saving leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from research.fileio import write_json_atomic  # noqa: F401  (re-exported: research.train.write_json_atomic)

log = logging.getLogger(__name__)


class Checkpointer:
  """``CheckpointManager`` saving ``state`` (StandardSave) and ``data`` (grain iterator state)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                             create=True))

  def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = DataSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any, data_iterator=None) -> tuple[Any, int] | None:
    """Restores the newest checkpoint that EVERY process can read into ``abstract_state``'s structure/shardings
    (and the data iterator in place). Returns ``(state, step)`` or ``None`` when there is none.

    Processes agree on the step: process 0's list of steps is broadcast, each process tries the newest, and
    the step is taken only if all succeeded (else everyone falls back to the previous one), so a checkpoint
    that one process cannot read never leaves the processes at different steps."""
    steps = _agreed_steps(self.all_steps())
    for step in reversed(steps):
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = DataRestore(data_iterator)
      error = None
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # corrupt / truncated / incompatible: fall back to the previous one
        error = e
      if _all_processes_ok(error is None):
        return restored["state"], step
      why = (f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}" if error is not None
             else "another process could not read it")
      msg = f"checkpoint at step {step} in {self.directory} could not be restored ({why}); trying the previous one"
      log.warning(msg)
      _warn(msg)
    if steps:
      raise RuntimeError(f"none of the checkpoints {steps} in {self.directory} could be restored; move the "
                         f"directory away to start from scratch")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's iterator handler (same files: one ``process_{i}-of-{n}.json`` per process), whose restore
  also accepts a state written by a different number of processes.

  ``research.data.train_loader`` reads, in process ``p`` of ``n``, rows ``[p*G/n, (p+1)*G/n)`` of one
  process-count-independent stream of global batches (``GlobalBatchSliceSampler``), so a state is
  "local records consumed" = ``global records consumed / n``: a state saved by ``m`` processes is rescaled
  by ``m/n`` (only in-process loading, ``worker_count=0``, can be converted).
  """

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    count = jax.process_count()
    own = directory / f"process_{jax.process_index()}-of-{count}.json"
    if own.exists():
      saved_count, state = count, json.loads(own.read_text())
    else:
      saved = sorted((int(m.group(1)), f) for f in directory.iterdir()
                     if (m := re.fullmatch(r"process_0-of-(\d+)\.json", f.name)))
      if not saved:
        raise ValueError(f"no data-iterator state in {directory} (expected process_*-of-*.json)")
      saved_count, state = saved[0][0], json.loads(saved[0][1].read_text())
    sampler = str(state.get("sampler", ""))
    if saved_count != count:
      last_seen = state.get("last_seen_indices", {})
      if (state.get("worker_count") != 0 or list(last_seen) != ["0"]
          or not sampler.startswith("GlobalBatchSliceSampler")):
        raise ValueError(f"the data-iterator state in {directory} was written by {saved_count} processes with "
                         f"sampler {sampler!r} and worker_count={state.get('worker_count')}; only "
                         f"GlobalBatchSliceSampler states with --data_workers=0 can be restored into {count} "
                         f"processes")
      consumed = (int(last_seen["0"]) + 1) * saved_count  # records of the global stream
      if consumed % count:
        raise ValueError(f"cannot split {consumed} consumed records of {directory} over {count} processes")
      state["last_seen_indices"] = {"0": consumed // count - 1}
      log.info("data iterator: rescaled the state of %d processes in %s to %d processes", saved_count,
               directory, count)
    if isinstance(item, grain.DatasetIterator):
      item.set_state(state)
    else:
      item.set_state(json.dumps(state, indent=4).encode())
    if hasattr(item, "start_prefetch"):
      item.start_prefetch()
    return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  """Save a grain iterator (``DataIteratorHandler``)."""
  item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  """Restore a grain iterator in place, across process counts (``DataIteratorHandler``)."""
  item: Any


def _agreed_steps(steps: list[int]) -> list[int]:
  """Process 0's checkpoint steps on every process (they may list the directory at different moments)."""
  if jax.process_count() == 1:
    return steps
  import numpy as np
  from jax.experimental import multihost_utils
  padded = np.full((64,), -1, np.int64)
  padded[:min(len(steps), 64)] = steps[-64:]
  agreed = multihost_utils.broadcast_one_to_all(padded)
  return [int(s) for s in np.asarray(agreed) if s >= 0]


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _warn(msg: str) -> None:
  import warnings
  warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _local_target(ckptr, state_dir: str):
  """Restore target placing every array on this process's first device: a checkpoint written on another device
  count (e.g. a 2-device training run loaded for single-device prediction) restores without a topology error."""
  meta = ckptr.metadata(state_dir)
  tree = getattr(meta, "item_metadata", meta)
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)
                      if hasattr(m, "shape") and hasattr(m, "dtype") else m, tree)


def load_params(path: str, abstract: Any | None = None, *, step: int | None = None) -> dict[str, Any]:
  """Loads ``{'params', 'model_state'}`` from a checkpoint directory written by the training loop (the
  directory holding step subdirectories, or one step directory); ``batch_stats`` is also given (the
  ``model_state['batch_stats']`` entry, or the top-level one of checkpoints from before the generic loop).
  With ``abstract`` (a dict with some of those keys), the leaves are placed as its ``ShapeDtypeStruct`` s.
  Raises ``ValueError`` if missing."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(f"checkpoint path {path!r} does not exist")
  step_dir = path
  if not os.path.isdir(os.path.join(path, "state")):
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
    if not steps:
      raise ValueError(f"no checkpoint steps found in {path!r}")
    step_dir = os.path.join(path, str(step if step is not None else steps[-1]))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(step_dir, "state"), _local_target(ckptr, os.path.join(step_dir, "state")))
  if not isinstance(restored, dict) or "params" not in restored:
    raise ValueError(f"{step_dir!r} does not hold a TrainState checkpoint (keys: {list(restored)[:5]})")
  model_state = restored.get("model_state")
  if model_state is None:  # layout before the generic loop: {'params', 'batch_stats', ...}
    model_state = {"batch_stats": restored["batch_stats"]} if restored.get("batch_stats") else {}
  batch_stats = model_state.get("batch_stats", {}) if isinstance(model_state, dict) else {}
  out = {"params": restored["params"], "model_state": model_state, "batch_stats": batch_stats}
  if abstract is not None:
    for key, target in abstract.items():
      try:
        out[key] = jax.tree.map(lambda a, x: jax.device_put(x.astype(a.dtype), a.sharding)
                                if getattr(a, "sharding", None) is not None else x.astype(a.dtype), target, out[key])
      except (ValueError, TypeError) as e:
        raise ValueError(f"checkpoint {step_dir!r}: its {key} do not match the model's ({e})") from None
  return out
