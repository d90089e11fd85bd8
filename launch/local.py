r"""Run one command as N cooperating JAX processes on this machine (multi-host, simulated on localhost).

  python -m launch.local --num_processes=2 --devices_per_process=2 -- \
      python -m experiments.classify --flagfile=experiments/configs/classify_smoke.flags

Each process gets ``JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>``, ``JAX_NUM_PROCESSES=N`` and
``JAX_PROCESS_ID=i`` (read by ``research.distributed.initialize``, i.e. by every ``experiments.*`` entry
point), and with ``--platform=cpu`` (default) ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>``; CPU collectives use gloo.
With ``--platform=gpu`` process ``i`` sees GPUs ``[i*d, (i+1)*d)`` through ``CUDA_VISIBLE_DEVICES``.

Output of every process is streamed line by line with a ``[i]`` prefix. When any process exits non-zero
(or is killed), the others are sent SIGTERM, then SIGKILL after ``--grace`` seconds, and the launcher exits
with that process's status (128+signal for a signal). Ctrl-C / SIGTERM to the launcher is forwarded the
same way. ``--timeout`` bounds the whole run (exit 124). Exit 0 only when every process exited 0.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

_PREFIX_LOCK = threading.Lock()


def free_port() -> int:
  """A TCP port that is free on localhost now (bound to port 0, then released)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict[str, str], *, index: int, num_processes: int, coordinator: str, platform: str,
                devices_per_process: int) -> dict[str, str]:
  """Environment of process ``index``: the layout for ``research.distributed`` plus device selection."""
  env = dict(base)
  env.update({"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(num_processes),
              "JAX_PROCESS_ID": str(index), "PYTHONUNBUFFERED": "1"})
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = f"{xla_flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
  elif platform == "gpu":
    first = index * devices_per_process
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + d) for d in range(devices_per_process))
  return env


def _stream(index: int, pipe, out) -> None:
  """Copies ``pipe`` to ``out`` line by line with a ``[index]`` prefix (``\\r`` progress updates too)."""
  prefix = f"[{index}] ".encode()
  buf = b""
  while True:
    chunk = pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536)
    if not chunk:
      break
    buf += chunk
    parts = re.split(rb"(\r\n|\n|\r)", buf)
    buf = parts.pop()  # the unterminated tail
    lines = [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]
    if lines:
      with _PREFIX_LOCK:
        for line in lines:
          out.write(prefix + line.rstrip(b"\r\n") + b"\n")
        out.flush()
  if buf:
    with _PREFIX_LOCK:
      out.write(prefix + buf + b"\n")
      out.flush()
  pipe.close()


def _exit_status(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


class Launcher:
  """Starts, watches and tears down the N processes (see the module docstring)."""

  def __init__(self, command: list[str], *, num_processes: int, devices_per_process: int, platform: str,
               port: int | None, grace: float, timeout: float | None, out=None):
    self.command = command
    self.num_processes = num_processes
    self.devices_per_process = devices_per_process
    self.platform = platform
    self.coordinator = f"127.0.0.1:{port or free_port()}"
    self.grace = grace
    self.timeout = timeout
    self.out = out or sys.stdout.buffer
    self.procs: list[subprocess.Popen] = []
    self.threads: list[threading.Thread] = []
    self._stop_signal: int | None = None

  def log(self, msg: str) -> None:
    with _PREFIX_LOCK:
      self.out.write(f"[launch.local] {msg}\n".encode())
      self.out.flush()

  def start(self) -> None:
    for i in range(self.num_processes):
      env = process_env(os.environ, index=i, num_processes=self.num_processes, coordinator=self.coordinator,
                        platform=self.platform, devices_per_process=self.devices_per_process)
      # Own session/process group: the whole tree of process i can be signalled at once.
      proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
      self.procs.append(proc)
      t = threading.Thread(target=_stream, args=(i, proc.stdout, self.out), daemon=True)
      t.start()
      self.threads.append(t)
      self.log(f"started process {i}/{self.num_processes} pid {proc.pid}")
    self.log(f"coordinator {self.coordinator}; command: {' '.join(self.command)}")

  def _signal_all(self, sig: int) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
          pass

  def terminate(self) -> None:
    """SIGTERM to every live process group, then SIGKILL after ``grace`` seconds; reaps everything."""
    self._signal_all(signal.SIGTERM)
    deadline = time.monotonic() + self.grace
    while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
      time.sleep(0.05)
    self._signal_all(signal.SIGKILL)
    for proc in self.procs:
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:  # unkillable (D state): give up waiting, still report failure
        self.log(f"process pid {proc.pid} did not exit after SIGKILL")
    for proc in self.procs:  # children of the process that escaped its group are not ours to chase
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass

  def _on_signal(self, signum, _frame) -> None:
    self._stop_signal = signum

  def run(self) -> int:
    """Runs to completion; returns the launcher's exit status."""
    old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
      self.start()
      t0 = time.monotonic()
      status = 0
      while True:
        if self._stop_signal is not None:
          self.log(f"received signal {self._stop_signal}; stopping all processes")
          status = 128 + self._stop_signal
          break
        codes = [p.poll() for p in self.procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
          i, c = failed[0]
          status = _exit_status(c)
          how = f"was killed by signal {-c}" if c < 0 else f"exited with status {c}"
          self.log(f"process {i} {how}; terminating the other processes")
          break
        if all(c == 0 for c in codes):
          self.log(f"all {self.num_processes} processes finished successfully "
                   f"in {time.monotonic() - t0:.1f}s")
          break
        if self.timeout is not None and time.monotonic() - t0 > self.timeout:
          self.log(f"timeout after {self.timeout:.0f}s; terminating all processes")
          status = 124
          break
        time.sleep(0.1)
    finally:
      self.terminate()
      for t in self.threads:
        t.join(timeout=5)
      for s, h in old.items():
        signal.signal(s, h)
    if status:
      summary = ", ".join(f"{i}: {_exit_status(p.returncode) if p.returncode is not None else '?'}"
                          for i, p in enumerate(self.procs))
      self.log(f"FAILED (exit status per process: {summary})")
    return status


def parse_args(argv: list[str]) -> argparse.Namespace:
  if "--" in argv:
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
  else:
    own, command = argv, []
  parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start (default 2)")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="CPU: simulated devices per process; GPU: GPUs per process (default 1)")
  parser.add_argument("--platform", choices=("cpu", "gpu", "inherit"), default="cpu",
                      help="cpu (default, gloo collectives), gpu (CUDA_VISIBLE_DEVICES blocks) or inherit "
                           "(leave device selection to the environment)")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping processes (default 10)")
  parser.add_argument("--timeout", type=float, default=None, help="kill everything after this many seconds")
  args = parser.parse_args(own)
  if not command:
    parser.error("give the command after '--', e.g. -- python -m experiments.classify --flagfile=...")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  args.command = command
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  launcher = Launcher(args.command, num_processes=args.num_processes,
                      devices_per_process=args.devices_per_process, platform=args.platform, port=args.port,
                      grace=args.grace, timeout=args.timeout)
  return launcher.run()


if __name__ == "__main__":
  sys.exit(main())
