"""Shared plumbing for experiment entry points: distributed init, clean error exits, summaries.

Multi-process flags (every ``experiments.*`` entry point gets them; see ``launch/README.md``):
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` start ``jax.distributed`` explicitly;
without them the layout comes from ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``
or, with ``--distributed_auto_detect`` (default on), from SLURM / Cloud TPU / Kubernetes via JAX's cluster
detection; otherwise the run is single-process.
"""

from __future__ import annotations

import contextlib
import json
import logging as pylogging
import os
import sys
import warnings

from absl import flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's jax.distributed coordinator (same on every process).")
flags.DEFINE_integer("num_processes", None, "Total number of JAX processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")
flags.DEFINE_bool("distributed_auto_detect", True,
                  "Fill in a missing multi-process layout from SLURM / Cloud TPU / Open MPI / Kubernetes "
                  "(JAX's cluster detection).")
flags.DEFINE_string("cluster_detection_method", None,
                    "Force one JAX cluster detection method ('slurm', 'gcetpu', 'gketpu', 'ompi', 'mpi4py', 'k8s').")
flags.DEFINE_list("local_device_ids", None, "Restrict this process to these local accelerator ids (e.g. 0).")
flags.DEFINE_integer("distributed_timeout", 300,
                     "Seconds to wait for all processes to connect at start-up and at the final barrier.")
flags.DEFINE_integer("heartbeat_timeout", 60,
                     "Seconds without a heartbeat after which a peer counts as dead and every process exits "
                     "with an error.")


def setup() -> None:
  """Quiet third-party logs; initialise jax.distributed when multi-process flags/env ask for it.

  In a multi-process run it also installs fail-fast error handling (an exception in one process ends it
  at once with exit status 1 so its peers notice) and a final barrier at successful exit.
  """
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  logging.set_verbosity(logging.INFO)
  for name in ("absl", "orbax", "jax._src.xla_bridge", "tensorflow_datasets"):
    pylogging.getLogger(name).setLevel(pylogging.WARNING)
  from research import distributed
  started = distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      local_device_ids=[int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None,
      auto_detect=FLAGS.distributed_auto_detect, cluster_detection_method=FLAGS.cluster_detection_method,
      initialization_timeout=FLAGS.distributed_timeout, heartbeat_timeout=FLAGS.heartbeat_timeout)
  if started:
    import jax
    distributed.register_final_barrier(FLAGS.distributed_timeout)
    if jax.process_index() != 0:  # logs on process 0 only; warnings and errors from every process
      logging.set_verbosity(logging.WARNING)


def _is_multiprocess() -> bool:
  if "research.distributed" not in sys.modules:
    return False
  from research import distributed
  return distributed.is_multiprocess()


@contextlib.contextmanager
def clean_errors():
  """User errors (ValueError, FloatingPointError, RuntimeError from our checks) -> one message, exit 1.

  In a multi-process run the process exits at once (no graceful shutdown waiting for peers that are
  blocked in a collective on it), so the whole job fails fast.
  """
  try:
    yield
  except (ValueError, FloatingPointError) as e:
    if _is_multiprocess():
      from research import distributed
      distributed.abort(f"error: {e}")
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def print_summary(results: dict, workdir: str) -> None:
  """Prints the headline results (process 0 only in a multi-process run)."""
  if _is_multiprocess():
    import jax
    if jax.process_index() != 0:
      return
  keys = [k for k in ("model", "dataset", "step", "eval_accuracy", "eval_loss", "final_train_loss", "num_params",
                      "params_sha256", "wall_seconds") if k in results]
  print(json.dumps({k: results[k] for k in keys}, indent=2))
  print(f"results: {workdir}/results.json")


def print_markdown_summary(workdir: str, summary: dict, extra: str = "") -> None:
  """Prints ``workdir/summary.md`` and a results line with the wall time (process 0 only in multi-process runs)."""
  if _is_multiprocess():
    import jax
    if jax.process_index() != 0:
      return
  with open(os.path.join(workdir, "summary.md")) as f:
    print(f.read())
  print(f"results: {workdir}/summary.json  {extra}wall {summary['wall_seconds']:.0f} s")


def json_dict_flag(name: str) -> dict:
  """The JSON object in string flag ``--name`` (e.g. ``--model_kwargs``); a clear ValueError otherwise."""
  text = getattr(FLAGS, name)
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"--{name} is not valid JSON ({e}): {text!r}") from None
  if not isinstance(value, dict):
    raise ValueError(f"--{name} must be a JSON object, got {text!r}")
  return value


def int_list_flag(name: str) -> tuple[int, ...]:
  """The integers of list flag ``--name`` (e.g. ``--batch_sizes=32,128``); a clear ValueError otherwise."""
  try:
    return tuple(int(v) for v in getattr(FLAGS, name))
  except ValueError:
    raise ValueError(f"--{name} must be integers, got {getattr(FLAGS, name)}") from None


def float_list_flag(name: str) -> tuple[float, ...]:
  """The numbers of list flag ``--name`` (e.g. ``--step_extra_lrs=0.1,0``); a clear ValueError otherwise."""
  try:
    return tuple(float(v) for v in getattr(FLAGS, name))
  except ValueError:
    raise ValueError(f"--{name} must be numbers, got {getattr(FLAGS, name)}") from None
