"""Helpers for the multi-process tests: child environments and bounded subprocess runs.

Every test here starts real JAX processes (``jax.distributed`` over localhost, gloo collectives on CPU);
each subprocess sets its own ``XLA_FLAGS`` device count, independent of the 4 devices of the pytest process.
"""

from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """The pytest environment minus any distributed layout, with ``devices`` simulated CPU devices."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
              "TFDS_DISABLE_GCS": "1"})
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  # The default compiler in every child (not the test session's fast-compile flag): the tolerances here compare
  # process layouts and were measured with it.
  fast = os.environ.get("RESEARCH_TEST_XLA_FLAGS", "")
  if fast:
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in fast.split())
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env


def run(cmd: list[str], *, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
  """Runs ``cmd`` in the repository root, output captured, killed after ``timeout`` seconds."""
  try:
    return subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
    pytest.fail(f"{' '.join(cmd)} did not finish within {timeout}s; output tail:\n{out[-4000:]}")


def run_concurrently(jobs: list[tuple[list[str], dict[str, str]]], *, timeout: float
                     ) -> list[subprocess.CompletedProcess]:
  """Runs independent ``(cmd, env)`` jobs side by side (they overlap start-up and compilation), each
  with output captured to a temporary file; everything still running after ``timeout`` s is killed."""
  import tempfile
  import time
  procs = []
  for cmd, env in jobs:
    log = tempfile.TemporaryFile()
    procs.append((cmd, log, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)))
  deadline = time.monotonic() + timeout
  done = []
  try:
    for cmd, log, proc in procs:
      try:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout}s")
      log.seek(0)
      done.append(subprocess.CompletedProcess(cmd, proc.returncode, log.read().decode(errors="replace")))
  finally:
    for _, log, proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
      log.close()
  return done


def check(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 0, f"exit status {proc.returncode}; output tail:\n{proc.stdout[-6000:]}"
  return proc.stdout
