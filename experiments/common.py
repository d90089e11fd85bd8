"""Shared plumbing for experiment entry points: distributed init, clean error exits, summaries."""

from __future__ import annotations

import contextlib
import json
import logging as pylogging
import sys
import warnings

from absl import flags, logging

FLAGS = flags.FLAGS


def setup() -> None:
  """Quiet third-party logs; initialise jax.distributed when multi-process flags/env ask for it."""
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  logging.set_verbosity(logging.INFO)
  for name in ("absl", "orbax", "jax._src.xla_bridge", "tensorflow_datasets"):
    pylogging.getLogger(name).setLevel(pylogging.WARNING)
  try:
    from research import distributed
  except ImportError:
    return
  distributed.initialize_from_flags()


@contextlib.contextmanager
def clean_errors():
  """User errors (ValueError, FloatingPointError, RuntimeError from our checks) -> one message, exit 1."""
  try:
    yield
  except (ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def print_summary(results: dict, workdir: str) -> None:
  keys = [k for k in ("model", "dataset", "step", "eval_accuracy", "eval_loss", "final_train_loss", "num_params",
                      "params_sha256", "wall_seconds") if k in results]
  print(json.dumps({k: results[k] for k in keys}, indent=2))
  print(f"results: {workdir}/results.json")
