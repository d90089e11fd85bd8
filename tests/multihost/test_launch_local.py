"""launch.local without JAX: environment per process, prefixed output, failure propagation, cleanup."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from multihost_helpers import REPO, child_env, run

from launch import local


def test_process_env_sets_layout_and_replaces_device_count():
  base = {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4", "PATH": "/bin"}
  env = local.process_env(base, index=1, num_processes=3, coordinator="127.0.0.1:1234", platform="cpu",
                          devices_per_process=2)
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == ("3", "1", "cpu")
  assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"
  gpu = local.process_env(base, index=1, num_processes=2, coordinator="h:1", platform="gpu", devices_per_process=2)
  assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and "JAX_PLATFORMS" not in gpu


def test_parse_args_requires_a_command():
  with pytest.raises(SystemExit):
    local.parse_args(["--num_processes=2"])
  args = local.parse_args(["--num_processes=3", "--", "python", "-c", "pass", "--num_processes=9"])
  assert args.num_processes == 3 and args.command == ["python", "-c", "pass", "--num_processes=9"]


SCRIPT = ("import os, sys, time\n"
          "i = int(os.environ['JAX_PROCESS_ID'])\n"
          "print(f'hello from {i} of {os.environ[\"JAX_NUM_PROCESSES\"]} at {os.environ[\"JAX_COORDINATOR_ADDRESS\"]}',"
          " flush=True)\n"
          "if i == int(sys.argv[1]): sys.exit(int(sys.argv[2]))\n"
          "time.sleep(float(sys.argv[3]))\n")


def test_all_succeed_with_prefixed_output():
  proc = run([sys.executable, "-m", "launch.local", "--num_processes=3", "--", sys.executable, "-c", SCRIPT,
              "-1", "0", "0"], env=child_env(), timeout=60)
  assert proc.returncode == 0, proc.stdout
  for i in range(3):
    assert re.search(rf"^\[{i}\] hello from {i} of 3 at 127\.0\.0\.1:\d+$", proc.stdout, re.M), proc.stdout
  assert "all 3 processes finished successfully" in proc.stdout


def test_one_failure_stops_the_others_and_sets_the_status():
  t0 = time.monotonic()
  proc = run([sys.executable, "-m", "launch.local", "--num_processes=2", "--grace=2", "--", sys.executable, "-c",
              SCRIPT, "1", "7", "120"], env=child_env(), timeout=60)
  assert proc.returncode == 7, proc.stdout
  assert time.monotonic() - t0 < 30
  assert "process 1 exited with status 7; terminating the other processes" in proc.stdout
  assert "FAILED (exit status per process: 0: 143, 1: 7)" in proc.stdout, proc.stdout


def test_sigterm_to_the_launcher_cleans_up_children():
  launcher = subprocess.Popen([sys.executable, "-m", "launch.local", "--num_processes=2", "--grace=2", "--",
                               sys.executable, "-c", SCRIPT, "-1", "0", "120"], cwd=REPO, env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    out, deadline = "", time.monotonic() + 30
    # both children greeted AND the launcher reported both pids (its "started" lines and the children's output
    # come through one pipe in either order)
    while ((out.count("hello from") < 2 or len(re.findall(r"pid (\d+)", out)) < 2)
           and time.monotonic() < deadline):
      out += launcher.stdout.readline()
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(pids) == 2, out
    launcher.send_signal(signal.SIGTERM)
    out += launcher.communicate(timeout=30)[0]
  finally:
    if launcher.poll() is None:
      launcher.kill()
      launcher.wait(timeout=30)
  assert launcher.returncode == 128 + signal.SIGTERM, out
  assert "received signal 15; stopping all processes" in out
  for pid in pids:
    assert not os.path.exists(f"/proc/{pid}"), f"child {pid} survived the launcher"


def test_timeout_kills_everything():
  proc = run([sys.executable, "-m", "launch.local", "--num_processes=2", "--grace=1", "--timeout=2", "--",
              sys.executable, "-c", SCRIPT, "-1", "0", "120"], env=child_env(), timeout=60)
  assert proc.returncode == 124, proc.stdout
  assert "timeout after 2s" in proc.stdout
