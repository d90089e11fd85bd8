"""No hangs: a dead or missing peer ends every process with a non-zero status within a bounded time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from multihost_helpers import REPO, child_env

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_script.py")


class Output:
  """Collects a process's merged stdout/stderr in a thread; ``wait_for`` polls it with a deadline."""

  def __init__(self, proc: subprocess.Popen):
    self.proc, self.text, self._lock = proc, "", threading.Lock()
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()

  def _read(self):
    for line in iter(self.proc.stdout.readline, b""):
      with self._lock:
        self.text += line.decode(errors="replace")

  def wait_for(self, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      with self._lock:
        m = re.search(pattern, self.text)
      if m:
        return m
      if self.proc.poll() is not None:
        self._thread.join(timeout=5)
        m = re.search(pattern, self.text)
        if m:
          return m
        raise AssertionError(f"process exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                             f"{self.text[-4000:]}")
      time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not printed within {timeout}s:\n{self.text[-4000:]}")

  def finish(self, timeout: float) -> int:
    """Exit status, killing the process group if it is still running after ``timeout`` seconds."""
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait(timeout=30)
      raise AssertionError(f"still running after {timeout}s:\n{self.text[-4000:]}") from None
    finally:
      self._thread.join(timeout=5)


def start(cmd: list[str], env: dict[str, str]) -> Output:
  return Output(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True))


@pytest.mark.slow  # default run: test_surviving_process_exits_by_itself_when_its_peer_dies covers a peer's death
def test_launcher_exits_nonzero_when_a_process_is_killed_mid_run(shapes_dir, tmp_path):
  """SIGKILL one of two classify processes after training started: launch.local stops the other and exits
  non-zero within 60 s (here it also names the dead process)."""
  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=2", "--grace=5",
         "--timeout=240", "--", sys.executable, "-m", "experiments.classify",
         "--flagfile=experiments/configs/classify_smoke.flags", "--num_steps=500", "--log_every=1",
         "--checkpoint_every=500", "--eval_every=500", "--progress_bar=false", f"--workdir={workdir}",
         f"--data_dir={shapes_dir}"]
  launcher = start(cmd, child_env())
  try:
    pids = {int(i): int(p) for i, p in re.findall(r"started process (\d)/2 pid (\d+)",
                                                  launcher.wait_for(r"started process 1/2 pid \d+", 60).string)}
    deadline = time.monotonic() + 180  # mid-run: process 0 has logged a finished training step
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
      assert time.monotonic() < deadline and launcher.proc.poll() is None, launcher.text[-4000:]
      time.sleep(0.2)
    os.kill(pids[1], signal.SIGKILL)
    t_kill = time.monotonic()
    status = launcher.finish(timeout=60)
    elapsed = time.monotonic() - t_kill
  finally:
    if launcher.proc.poll() is None:
      os.killpg(launcher.proc.pid, signal.SIGKILL)
  assert status != 0, launcher.text[-3000:]
  assert elapsed < 60, elapsed
  assert "process 1 was killed by signal 9; terminating the other processes" in launcher.text, launcher.text[-3000:]
  for pid in pids.values():  # nothing left behind
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_surviving_process_exits_by_itself_when_its_peer_dies(tmp_path):
  """Without a launcher to clean up (SLURM, TPU VM, Kubernetes): the coordination service notices the dead
  peer by its missing heartbeats and terminates the survivor with a clear message."""
  from launch.local import free_port
  address = f"127.0.0.1:{free_port()}"
  procs = [start([sys.executable, PEER, "30", "5"],
                 child_env(2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  try:
    for p in procs:
      p.wait_for("running process", 90)
    os.kill(procs[1].proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    status = procs[0].finish(timeout=60)
    elapsed = time.monotonic() - t_kill
  finally:
    for p in procs:
      if p.proc.poll() is None:
        os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait(timeout=30)
  assert status != 0
  assert elapsed < 60, elapsed
  assert re.search(r"another task died|unhealthy|stopped sending heartbeats", procs[0].text), procs[0].text[-3000:]


def test_peer_that_never_arrives_fails_start_up(tmp_path):
  """Process 0 of 2 alone: initialisation gives up after --distributed_timeout seconds, exit non-zero."""
  from launch.local import free_port
  env = child_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID="0")
  t0 = time.monotonic()
  proc = start([sys.executable, PEER, "5", "5"], env)
  status = proc.finish(timeout=90)
  assert status != 0
  assert time.monotonic() - t0 < 90
  assert "running process" not in proc.text
  assert re.search(r"DEADLINE_EXCEEDED|RegisterTask|timed out|failed", proc.text), proc.text[-3000:]


def test_cluster_environments_are_detected():
  """The layouts the cluster launchers provide, simulated on localhost: a SLURM step (no JAX_* variables;
  JAX's own SLURM detection reads SLURM_*, as under ``launch/slurm.sbatch``) and a Kubernetes Indexed Job
  (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and the completion index, as in ``launch/k8s/job.yaml``)."""
  from launch.local import free_port
  slurm_port, k8s_port = free_port(), free_port()
  procs = []
  for i in range(2):
    procs.append(start([sys.executable, PEER, "60", "20", "5"], child_env(
        2, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(i),
        SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(slurm_port))))
    procs.append(start([sys.executable, PEER, "60", "20", "5"], child_env(
        2, JAX_COORDINATOR_ADDRESS=f"localhost:{k8s_port}", JAX_NUM_PROCESSES="2", JOB_COMPLETION_INDEX=str(i))))
  try:
    statuses = [p.finish(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.proc.poll() is None:
        os.killpg(p.proc.pid, signal.SIGKILL)
  for p, status in zip(procs, statuses):
    assert status == 0, p.text[-3000:]
    assert re.search(r"done process [01] of 2 with 4 devices", p.text), p.text[-3000:]
