"""research.distributed.resolve: where the process layout comes from (no JAX runtime is started)."""

from __future__ import annotations

import pytest

from research import distributed

LAYOUT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JOB_COMPLETION_INDEX",
               "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
               "KUBERNETES_SERVICE_HOST", "OMPI_MCA_orte_hnp_uri")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
  for k in LAYOUT_VARS:
    monkeypatch.delenv(k, raising=False)


def test_single_process_by_default():
  assert distributed.resolve().source == "none"
  assert distributed.resolve(num_processes=1).source == "none"


def test_arguments_win_over_environment(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "envhost:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "8")
  layout = distributed.resolve("h:2", 2, 1)
  assert layout == distributed.Layout("h:2", 2, 1, "arguments")


def test_environment_and_kubernetes_completion_index(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "job-0.svc:12355")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
  assert distributed.resolve() == distributed.Layout("job-0.svc:12355", 4, 3, "environment")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")  # an explicit id wins over the completion index
  assert distributed.resolve().process_id == 2


def test_slurm_is_left_to_jax_detection(monkeypatch):
  for k, v in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "2",
               "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}.items():
    monkeypatch.setenv(k, v)
  assert distributed.detected_cluster() == "slurm"
  assert distributed.resolve().source == "cluster:slurm"
  assert distributed.resolve(auto_detect=False).source == "none"


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "--process_id=2"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes must be >= 1"),
    (dict(coordinator_address="nohostport", num_processes=2, process_id=0), "HOST:PORT"),
])
def test_invalid_layouts_name_the_flag(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.resolve(**kwargs)


def test_partial_layout_without_auto_detect_is_an_error():
  with pytest.raises(ValueError, match="--coordinator_address"):
    distributed.resolve(num_processes=2, process_id=0, auto_detect=False)


def test_barrier_and_finish_are_no_ops_single_process():
  distributed.barrier("unused", timeout=1)
  distributed.finish(timeout=1)
