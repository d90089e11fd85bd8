"""Multi-process (multi-host) start-up and shutdown on JAX's own runtime (``jax.distributed``).

One program runs once per process (one per host, or one per GPU); every process calls ``initialize()``
before any other JAX call, after which ``jax.devices()`` lists the devices of *all* processes, the
training mesh spans them and collectives run across hosts (NCCL on GPU, ICI/DCN on TPU, gloo on CPU).

Where the process layout comes from, first match wins:

1. explicit arguments ``coordinator_address`` / ``num_processes`` / ``process_id`` (the
   ``--coordinator_address --num_processes --process_id`` flags of ``experiments.*``);
2. environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
   (``JOB_COMPLETION_INDEX`` of a Kubernetes indexed Job is accepted as the process id);
3. with ``auto_detect=True``: JAX's cluster detection (SLURM ``srun``, Cloud TPU VM / GKE TPU, Open MPI,
   Kubernetes with the ``kubernetes`` package) fills in whatever is still missing;
4. otherwise nothing is initialised and the run is single-process.

Failure behaviour (no hangs): a peer that never arrives makes ``initialize`` raise after
``initialization_timeout`` seconds; a peer that dies mid-run is noticed by the coordination service
after at most ``heartbeat_timeout`` seconds (sooner when a collective sees its socket close), and
every surviving process then terminates with a non-zero exit status and a message naming the cause.
``install_fail_fast()`` makes a Python exception in any process end that process at once (exit 1)
instead of waiting in JAX's graceful-shutdown barrier for peers that are themselves blocked in a
collective waiting for it. ``barrier()`` is a bounded-time rendezvous of all processes.

This module reads no flags; ``experiments/common.py`` maps flags onto ``initialize``'s arguments.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import threading
import traceback
from typing import Sequence

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_K8S_INDEX = "JOB_COMPLETION_INDEX"


@dataclasses.dataclass(frozen=True)
class Layout:
  """The resolved process layout (``source`` says where it came from)."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str  # "arguments", "environment", "cluster:<name>" or "none"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detected_cluster() -> str | None:
  """Name of the cluster environment JAX's auto-detection recognises here (``'slurm'``, ``'gcetpu'``,
  ``'gketpu'``, ``'ompi'``, ``'k8s'``...), or ``None``. Makes no JAX backend call."""
  from jax._src import clusters
  for env in clusters.ClusterEnv._cluster_types:  # the registry jax.distributed.initialize itself uses
    if getattr(env, "opt_in_only_method", False):
      continue
    try:
      present = env.is_env_present()
    except Exception as e:  # e.g. a metadata server that does not answer
      log.debug("cluster detection %s failed: %s", env.__name__, e)
      present = False
    if present:
      return getattr(env, "name", "") or env.__name__
  return None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, *, auto_detect: bool = True) -> Layout:
  """Where the process layout comes from (see the module docstring); validates what it can."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    source = "arguments"
  else:
    coordinator_address = os.environ.get(ENV_COORDINATOR) or None
    num_processes = _env_int(ENV_NUM_PROCESSES)
    process_id = _env_int(ENV_PROCESS_ID)
    if process_id is None and num_processes is not None:
      process_id = _env_int(ENV_K8S_INDEX)
    source = "environment" if any(v is not None for v in (coordinator_address, num_processes, process_id)) \
        else "none"
  if source == "none" and auto_detect:
    name = detected_cluster()
    if name is not None:
      return Layout(None, None, None, f"cluster:{name}")
  if source == "none":
    return Layout(None, None, None, "none")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
  if num_processes == 1 and coordinator_address is None:
    return Layout(None, 1, 0, "none")  # explicitly single-process
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  if not auto_detect:
    missing = [n for n, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                              ("process_id", process_id)) if v is None]
    if missing:
      raise ValueError(f"multi-process run needs {', '.join('--' + m for m in missing)} as well (got "
                       f"coordinator_address={coordinator_address!r}, num_processes={num_processes}, "
                       f"process_id={process_id}); or pass --distributed_auto_detect on SLURM/TPU/Kubernetes")
  if coordinator_address is not None and ":" not in coordinator_address:
    raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT")
  return Layout(coordinator_address, num_processes, process_id, source)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: int | Sequence[int] | None = None,
               auto_detect: bool = True, cluster_detection_method: str | None = None,
               initialization_timeout: int = 300, heartbeat_timeout: int = 60,
               shutdown_timeout: int = 60, fail_fast: bool = True) -> bool:
  """Initialises ``jax.distributed`` when the arguments, the environment or the cluster ask for it.

  Must run before any JAX computation or ``jax.devices()``. Returns ``True`` when a multi-process
  runtime was started, ``False`` for a single-process run (nothing is touched then). Calling it again
  after a successful initialisation is a no-op returning ``True``.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0's coordination service (all processes pass the same).
    num_processes: total number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    local_device_ids: restrict this process to these local accelerators (e.g. one GPU per process).
    auto_detect: fill in missing values from SLURM / Cloud TPU / Open MPI / Kubernetes via JAX's cluster
      detection; with ``False`` a partial layout is an error.
    cluster_detection_method: force one JAX detection method (``'slurm'``, ``'gcetpu'``, ``'mpi4py'``...).
    initialization_timeout: seconds to wait for every process to connect; a peer that never arrives
      makes this raise ``RuntimeError`` after that long.
    heartbeat_timeout: seconds without a heartbeat after which a peer counts as dead and every process
      is terminated with an error.
    shutdown_timeout: seconds the graceful exit waits for the other processes to exit too.
    fail_fast: install ``install_fail_fast()`` (recommended: an exception in one process then ends it at
      once, so its peers see the failure instead of waiting in a collective).
  """
  import jax

  if jax.distributed.is_initialized():
    return True
  layout = resolve(coordinator_address, num_processes, process_id, auto_detect=auto_detect)
  if layout.source == "none" and cluster_detection_method is None:
    return False
  log.info("initialising jax.distributed from %s: coordinator=%s num_processes=%s process_id=%s; waiting up to "
           "%ds for all processes to connect (heartbeat timeout %ds)", layout.source, layout.coordinator_address,
           layout.num_processes, layout.process_id, initialization_timeout, heartbeat_timeout)
  try:
    jax.distributed.initialize(
        coordinator_address=layout.coordinator_address, num_processes=layout.num_processes,
        process_id=layout.process_id, local_device_ids=local_device_ids,
        cluster_detection_method=cluster_detection_method if auto_detect else "deactivate",
        initialization_timeout=int(initialization_timeout), heartbeat_timeout_seconds=int(heartbeat_timeout),
        shutdown_timeout_seconds=int(shutdown_timeout))
  except Exception as e:
    first_line = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
    raise RuntimeError(
        f"jax.distributed.initialize failed ({type(e).__name__}: {first_line}) for coordinator="
        f"{layout.coordinator_address} num_processes={layout.num_processes} process_id={layout.process_id} "
        f"(layout from {layout.source}). Usual causes: a peer process never "
        f"started or cannot reach the coordinator within --distributed_timeout={initialization_timeout}s, "
        f"the coordinator port is taken or firewalled, or the processes disagree on --num_processes."
    ) from e
  if fail_fast:
    install_fail_fast()
  log.info("jax.distributed ready: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_multiprocess() -> bool:
  """True when ``jax.distributed`` is running with more than one process."""
  import jax
  return jax.distributed.is_initialized() and jax.process_count() > 1


def barrier(name: str, timeout: float = 300.0) -> None:
  """Blocks until every process reached ``barrier(name)``; raises ``RuntimeError`` after ``timeout`` seconds.

  Uses the coordination service (no device collective), so a missing peer yields an error, not a hang.
  A no-op in a single-process run. Each ``name`` may be used once per run.
  """
  if not is_multiprocess():
    return
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  try:
    client.wait_at_barrier(f"research:{name}", int(timeout * 1000))
  except Exception as e:
    raise RuntimeError(f"barrier {name!r}: not all processes arrived within {timeout:.0f}s "
                       f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''})") from e


_fail_fast_installed = False


def install_fail_fast() -> None:
  """Makes an uncaught exception (in the main thread or any thread) end this process at once with exit 1.

  JAX registers a graceful ``jax.distributed.shutdown`` at exit that waits up to the shutdown timeout
  for every peer; after an error the peers are typically blocked in a collective waiting for *this*
  process, so the graceful path would stall everybody. Printing the traceback and calling
  ``os._exit(1)`` closes this process's sockets so peers fail fast too.
  """
  global _fail_fast_installed
  if _fail_fast_installed:
    return
  _fail_fast_installed = True
  previous_hook = sys.excepthook

  def hook(exc_type, exc, tb):
    if issubclass(exc_type, SystemExit):
      previous_hook(exc_type, exc, tb)
      return
    abort(f"uncaught {exc_type.__name__}", "".join(traceback.format_exception(exc_type, exc, tb)),
          code=130 if issubclass(exc_type, KeyboardInterrupt) else 1)

  def thread_hook(args):
    if args.exc_type is SystemExit:
      return
    abort(f"uncaught {args.exc_type.__name__} in thread {getattr(args.thread, 'name', '?')}",
          "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

  sys.excepthook = hook
  threading.excepthook = thread_hook


def abort(reason: str, details: str = "", code: int = 1) -> None:
  """Prints ``details`` and a one-line ``reason`` naming this process, flushes, and exits with ``code``
  without the graceful multi-process shutdown (see ``install_fail_fast``)."""
  try:
    import jax
    who = f"process {jax.process_index()}/{jax.process_count()}" if jax.distributed.is_initialized() else "process"
  except Exception:
    who = "process"
  try:
    if details:
      sys.stderr.write(details if details.endswith("\n") else details + "\n")
    sys.stderr.write(f"FATAL [{who}]: {reason}; exiting with status {code} without waiting for peers\n")
    sys.stderr.flush()
    sys.stdout.flush()
  finally:
    os._exit(code)


def shutdown() -> None:
  """Graceful ``jax.distributed.shutdown()`` (waits for the peers); a no-op when not initialised."""
  import jax
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def finish(timeout: float = 300.0) -> None:
  """The final barrier of a successful run: waits for every process, then shuts the runtime down, so no
  process exits (and no launcher reports success) while a peer is still writing outputs."""
  if not is_multiprocess():
    return
  barrier("finish", timeout)
  shutdown()


def register_final_barrier(timeout: float = 300.0) -> None:
  """Runs ``finish(timeout)`` at interpreter exit (only reached on success when fail-fast is installed:
  failures leave through ``os._exit``). Errors in the barrier end the process with exit status 1."""
  def _at_exit():
    try:
      finish(timeout)
    except Exception as e:  # noqa: BLE001  a missing peer at the end is a failed run
      abort(f"final barrier failed: {e}")
  atexit.register(_at_exit)
