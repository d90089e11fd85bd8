"""Test configuration: 4 simulated CPU devices for data-parallel tests, CPU only, quiet logs."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags = (_flags + " --xla_force_host_platform_device_count=4").strip()
# Tests compile hundreds of small programs and run each a few times: LLVM's optimisation passes cost more than
# they save (-30% wall time measured). Subprocesses get it through RESEARCH_TEST_XLA_FLAGS, except the runs
# whose params_sha256 is pinned to a value measured with the default compiler (tests/core/test_classify_cli.py).
os.environ.setdefault("RESEARCH_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")
if "xla_backend_optimization_level" not in _flags:
  _flags = f"{_flags} {os.environ['RESEARCH_TEST_XLA_FLAGS']}".strip()
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
# One persistent XLA compilation cache for the session and the subprocesses it starts (experiment smoke runs,
# CLI and multi-process tests compile the same programs again and again); results are unchanged by it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="research_tests_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the offline `shapes` dataset, built once per test session (~10 s)."""
  from research import data
  d = str(tmp_path_factory.mktemp("tfds"))
  data.get_spec("shapes", d)  # builds it
  return d
