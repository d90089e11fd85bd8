"""The one training loop: ``train(task, train_data, ...)`` for every family (a ``research.train.task.Task``).

What it does, once for everyone: a data-parallel mesh over the chosen devices of all processes; the task's
step under ``jax.jit`` + ``shard_map`` with the state donated; host-to-device prefetch; orbax checkpoints of
(state, data-iterator state) every ``checkpoint_every`` steps and resume from ``workdir`` (every process
restores the same step; a corrupt checkpoint falls back to the previous one); a stop with a clear message on
non-finite training metrics, keeping the last good checkpoint; periodic eval; JSONL + TensorBoard metrics and a
progress bar on process 0; ``results.json`` (step, eval metrics, ``num_params``, ``params_sha256``,
``wall_seconds`` ...). Multi-process runs need nothing extra beyond ``jax.distributed`` being initialised.

Data contract. ``train_data`` is an iterator of THIS process's rows of each global batch (a dict of numpy
arrays, leading axis = examples, static shapes); if it has ``get_state()``/``set_state()`` (a grain
``DataLoader`` iterator, or any object returning/accepting JSON bytes) its position is checkpointed and
restored. ``eval_data`` is a callable returning one fresh pass of local eval batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from research import fileio
from research.train import checkpoint as ckpt_lib
from research.train import metrics as metrics_lib
from research.train.task import (Task, TrainState, abstract_batch, compiled_eval_step, compiled_train_step,
                                 global_batch, init_train_state)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """What the loop needs to know; the task owns everything else."""
  num_steps: int
  seed: int = 0
  eval_every: int = 500  # and at the end; 0 = only at the end
  checkpoint_every: int = 500  # and at the end; 0 = never (no workdir state)
  keep_checkpoints: int = 3
  log_every: int = 10
  progress_bar: bool = True
  description: str = ""
  init_checkpoint: str | None = None  # params + model state when workdir has no checkpoint (big_vision order)
  halt_on_nonfinite: bool = True  # False: the caller's on_step decides (LR range test)
  prefetch: int = 2  # host->device double buffer depth (0: synchronous)
  tensorboard: bool = True

  def __post_init__(self):
    for k in ("num_steps", "log_every", "keep_checkpoints"):
      if getattr(self, k) <= 0:
        raise ValueError(f"--{k} must be positive, got {getattr(self, k)}")
    for k in ("eval_every", "checkpoint_every", "prefetch"):
      if getattr(self, k) < 0:
        raise ValueError(f"--{k} must be >= 0, got {getattr(self, k)}")


def params_sha256(params) -> str:
  """sha256 of all parameter leaves' bytes in tree order."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(host_value(leaf)).tobytes())
  return h.hexdigest()


def host_value(x) -> np.ndarray:
  """A replicated (possibly multi-process) array's value on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def num_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


# --------------------------------------------------------------------------------------------- input


class _ConsumedState:
  """What the checkpoint saves for the data: the iterator state right after the last batch the model took."""

  def __init__(self, state: bytes | dict | None):
    self.state = state

  def get_state(self):
    return self.state


class Prefetcher:
  """Host-to-device double buffer: a thread reads local batches, records the iterator state after each, and
  puts the global device arrays in a queue of ``depth``; ``consumed_state`` is that of the batch last taken,
  so checkpoints stay exact although the thread has read ahead. ``depth=0``: synchronous."""

  def __init__(self, iterator: Iterator, mesh, depth: int = 2):
    self._it, self._mesh, self._depth = iterator, mesh, depth
    self._has_state = hasattr(iterator, "get_state")
    self.consumed_state = _ConsumedState(None)
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = None
    if depth:
      self._thread = threading.Thread(target=self._fill, daemon=True, name="prefetch")
      self._thread.start()

  def _read(self):
    batch = next(self._it)
    state = self._it.get_state() if self._has_state else None
    return global_batch(batch, self._mesh), state

  def _fill(self):
    try:
      while not self._stop.is_set():
        item = self._read()
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there
      self._queue.put(e)

  def __next__(self):
    item = self._read() if self._thread is None else self._queue.get()
    if isinstance(item, BaseException):
      raise item
    batch, state = item
    self.consumed_state = _ConsumedState(state)
    return batch

  def close(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)


# --------------------------------------------------------------------------------------------- the loop


def _gather(x) -> np.ndarray:
  """A global array split along ``data`` -> the whole array on this host (all processes' rows)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def evaluate(task: Task, state: TrainState, eval_data: Iterable[Mapping[str, np.ndarray]], mesh) -> dict[str, float]:
  """One eval pass: per-batch sums psum-ed over devices and processes, gathered arrays concatenated."""
  fn = compiled_eval_step(task, mesh)
  sums, gathered = None, []
  for batch in eval_data:
    s, g = fn(state, global_batch(batch, mesh))
    s = jax.tree.map(lambda x: host_value(x).astype(np.float64), s)
    sums = s if sums is None else jax.tree.map(np.add, sums, s)
    if g:
      gathered.append(jax.tree.map(_gather, g))
  if sums is None:
    raise ValueError("the eval split yielded no batches")
  cat = {k: np.concatenate([g[k] for g in gathered]) for k in gathered[0]} if gathered else None
  return task.eval_metrics(sums, cat)


def _report_config_change(workdir: str, config: Mapping[str, Any], start_step: int) -> None:
  """A resumed run whose settings differ from the stored ones: warn with the differences, keep the old file."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(json.dumps(config, default=fileio.json_default))
  diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
  if not diff:
    return
  kept = os.path.join(workdir, f"config.before_step{start_step}.json")
  os.replace(path, kept)
  msg = (f"resuming {workdir} at step {start_step} with changed settings " +
         ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items())) +
         f"; the previous config is kept in {kept}")
  log.warning(msg)
  warnings.warn(msg, RuntimeWarning, stacklevel=3)


def train(task: Task, train_data: Iterator[Mapping[str, np.ndarray]], *, config: LoopConfig, mesh,
          workdir: str | None, eval_data: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
          run_config: Mapping[str, Any] | None = None, variables: tuple[Any, Any] | None = None,
          on_step: Callable[[int, Mapping[str, jax.Array]], bool] | None = None,
          results_extra: Mapping[str, Any] | None = None) -> tuple[TrainState, dict[str, Any]]:
  """Trains ``task`` for ``config.num_steps`` steps, resuming from ``workdir/checkpoints``.

  ``variables`` = ``(params, model_state)`` starts from given weights instead of ``task.init``.
  ``on_step(step, metrics)`` runs after every step, before that step's logging, eval and checkpoint (metrics
  are device arrays); returning True stops the run at once (that step is not checkpointed). ``workdir=None``: nothing is written (no checkpoints, logs or results).
  ``run_config`` is written to ``workdir/config.json`` (a change on resume is reported). Returns the final
  state and the results dict (also written to ``workdir/results.json`` by process 0).
  """
  t_start = time.time()
  is_main = jax.process_index() == 0
  if workdir is not None and is_main:
    os.makedirs(workdir, exist_ok=True)
  first = next(train_data)  # shapes for init; handed back to the stream below
  abstract, state = init_train_state(task, config.seed, abstract_batch(first), mesh, variables)
  train_data = _Chain(first, train_data)

  checkpointer = None
  start_step = 0
  if workdir is not None and config.checkpoint_every:
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    restored = checkpointer.restore_latest(abstract, train_data.restorable())
    if restored is not None:
      state, start_step = restored
      log.info("resumed from step %d in %s", start_step, workdir)
    elif config.init_checkpoint:
      loaded = ckpt_lib.load_params(config.init_checkpoint, {"params": abstract.params,
                                                             "model_state": abstract.model_state})
      state = state.replace(params=loaded["params"], model_state=loaded["model_state"])
      log.info("initialised params from %s", config.init_checkpoint)
  if workdir is not None and is_main and run_config is not None:
    if start_step:
      _report_config_change(workdir, run_config, start_step)
    ckpt_lib.write_json_atomic(os.path.join(workdir, "config.json"), dict(run_config))

  step_fn = compiled_train_step(task, mesh)
  batches = Prefetcher(train_data, mesh, config.prefetch)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step, tensorboard=config.tensorboard) if workdir else None
  bar = metrics_lib.progress(config.num_steps, start_step, desc=config.description,
                             disable=None if config.progress_bar else True)
  last_train: dict[str, float] = {}
  eval_metrics: dict[str, float] | None = None
  t_loop, steps_run, t_wait = time.time(), 0, 0.0
  last_checked = start_step  # metrics are checked for non-finite values at log and checkpoint steps
  stopped_by_hook = False
  try:
    for step in range(start_step, config.num_steps):
      t0 = time.perf_counter()
      batch = next(batches)
      t_wait += time.perf_counter() - t0
      state, m = step_fn(state, batch)
      s, steps_run = step + 1, steps_run + 1
      bar.update(1)
      if on_step is not None and on_step(s, m):
        stopped_by_hook = True
        break
      is_ckpt = checkpointer is not None and (s % config.checkpoint_every == 0 or s == config.num_steps)
      if s % config.log_every == 0 or is_ckpt or s == config.num_steps:
        last_train = metrics_lib.to_floats(m)
        if config.halt_on_nonfinite and not all(math.isfinite(v) for v in last_train.values()):
          bad = sorted(k for k, v in last_train.items() if not math.isfinite(v))
          kept = f"The last good checkpoint is kept in {checkpointer.directory}." if checkpointer else ""
          since = f" (first non-finite after step {last_checked}, the previous check)" if s - last_checked > 1 else ""
          raise FloatingPointError(
              f"non-finite training metrics {bad} at step {s}{since}: {last_train}. Stopped before "
              f"checkpointing; lower the learning rate, add warmup or gradient clipping. {kept}")
        last_checked = s
        last_train["steps_per_second"] = steps_run / max(time.time() - t_loop, 1e-9)
        last_train["input_wait_fraction"] = t_wait / max(time.time() - t_loop, 1e-9)
        if writer:
          writer.write(s, last_train, "train/")
        if "loss" in last_train:
          bar.set_postfix(loss=f"{last_train['loss']:.3f}")
      if eval_data is not None and ((config.eval_every and s % config.eval_every == 0) or s == config.num_steps):
        eval_metrics = evaluate(task, state, eval_data(), mesh)
        if writer:
          writer.write(s, eval_metrics, "eval/")
        if is_main and config.progress_bar:
          bar.write(f"step {s}: " + ", ".join(f"eval {k} {v:.4f}" for k, v in eval_metrics.items()))
      if is_ckpt:
        checkpointer.save(s, state, batches.consumed_state if train_data.has_state else None)
  finally:
    batches.close()
    bar.close()
    if checkpointer is not None:
      checkpointer.close()
    if writer:
      writer.close()

  if eval_data is not None and eval_metrics is None and not stopped_by_hook:  # resumed a finished run
    eval_metrics = evaluate(task, state, eval_data(), mesh)
  final_loss = last_train.get("loss")
  if final_loss is None and workdir:
    final_loss = _last_logged(workdir, "train/loss")
  wall = time.time() - t_start
  results = {
      "step": int(host_value(state.step)),
      **{f"eval_{k}": v for k, v in (eval_metrics or {}).items()},
      "final_train_loss": final_loss,
      "num_params": num_params(state.params), "params_sha256": params_sha256(state.params),
      "wall_seconds": wall, "resumed_from_step": start_step, "steps_run": steps_run,
      "train_seconds": time.time() - t_loop, "input_wait_seconds": t_wait,
      "num_devices": int(mesh.devices.size), "num_processes": jax.process_count(),
      "platform": jax.devices()[0].platform, **task.run_info(), **(results_extra or {}),
  }
  if workdir is not None and is_main and not stopped_by_hook:
    ckpt_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return state, results


def _last_logged(workdir: str, key: str) -> float | None:
  value = None
  for row in metrics_lib.read_metrics(workdir):
    value = row.get(key, value)
  return value


class _Chain:
  """``first`` then the rest of ``it``; forwards the iterator state of ``it`` (``first`` was taken before a
  restore, so a restored iterator drops it)."""

  def __init__(self, first, it):
    self._first, self._it = first, it
    self.has_state = hasattr(it, "get_state") and hasattr(it, "set_state")

  def restorable(self):
    return _Restorable(self) if self.has_state else None

  def __iter__(self):
    return self

  def __next__(self):
    if self._first is not None:
      first, self._first = self._first, None
      return first
    return next(self._it)

  def get_state(self):
    if self._first is not None:
      raise RuntimeError("iterator state requested before the first batch was consumed")
    return self._it.get_state()


class _Restorable:
  """The object the checkpoint restores into: sets the underlying iterator's state and drops the batch that
  was read ahead for the shapes."""

  def __init__(self, chain: _Chain):
    self._chain = chain

  def set_state(self, state):
    self._chain._it.set_state(state)
    self._chain._first = None

  def start_prefetch(self):
    if hasattr(self._chain._it, "start_prefetch"):
      self._chain._it.start_prefetch()
