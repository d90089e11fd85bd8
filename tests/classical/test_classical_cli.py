"""``python -m experiments.classical``: the smoke flagfile end to end (a subset of examples), resume, bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from research.methods.classical import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "classical_smoke.flags")


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.classical", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_smoke_flagfile_runs_writes_summary_and_resumes(tmp_path):
  algos = "dpp,divergences"
  proc = _run(f"--flagfile={SMOKE}", f"--algos={algos}", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["config"] == {"algos": algos.split(","), "seed": 0, "quick": True}
  assert sorted(summary["examples"]) == sorted(algos.split(","))  # summary.json has sorted keys
  assert proc.stdout.index("## dpp") < proc.stdout.index("## divergences")  # summary.md: in --algos order
  for algo, numbers in summary["examples"].items():
    assert numbers["figures"], algo
    for name in numbers["figures"]:
      assert (tmp_path / algo / name).stat().st_size > 1000, (algo, name)
    assert json.loads((tmp_path / algo / "result.json").read_text()) == numbers
  md = (tmp_path / "summary.md").read_text()
  assert "## dpp (seed 003 §16)" in md and "## divergences" in md and "results:" in proc.stdout
  # A second run reuses the finished examples (their stored numbers, wall time included) instead of re-running.
  stamp = {a: (tmp_path / a / "result.json").stat().st_mtime_ns for a in algos.split(",")}
  proc = _run(f"--flagfile={SMOKE}", f"--algos={algos}", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {a: (tmp_path / a / "result.json").stat().st_mtime_ns for a in algos.split(",")} == stamp
  assert json.loads((tmp_path / "summary.json").read_text())["examples"] == summary["examples"]


def test_bad_algos_flag_is_one_clear_error(tmp_path):
  proc = _run("--algos=gmm,nope", f"--workdir={tmp_path}", "--quick")
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert "--algos" in proc.stderr and "nope" in proc.stderr and "Traceback" not in proc.stderr, err[-5:]
  assert not os.path.exists(tmp_path / "summary.json")


def test_config_checks():
  with pytest.raises(ValueError, match="--algos is empty"):
    experiment.ClassicalConfig(algos=())
  with pytest.raises(ValueError, match="twice"):
    experiment.ClassicalConfig(algos=("gmm", "gmm"))
  with pytest.raises(ValueError, match="unknown example"):
    experiment.ClassicalConfig(algos=("svm",))


def test_every_example_module_has_run():
  import importlib
  import inspect
  for algo in experiment.EXAMPLES:
    module = importlib.import_module(f"research.methods.classical.{algo}")
    params = inspect.signature(module.run).parameters
    assert list(params)[:1] == ["workdir"] and {"seed", "quick"} <= set(params), algo


def test_research_classical_imports_only_jax_numpy_and_the_standard_library():
  """Architecture: ``research/classical`` is pure JAX (no models/train/data, no scipy/sklearn at run time)."""
  import ast
  import sys
  allowed = {"jax", "numpy", "research"} | set(sys.stdlib_module_names)
  pkg = os.path.join(ROOT, "research", "classical")
  for name in sorted(os.listdir(pkg)):
    if not name.endswith(".py"):
      continue
    tree = ast.parse(open(os.path.join(pkg, name)).read())
    for node in ast.walk(tree):
      modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
      for m in modules:
        assert m.split(".")[0] in allowed, (name, m)
        if m.startswith("research"):
          assert m == "research.classical" or m.startswith("research.classical."), (name, m)


def test_missing_example_data_package_names_the_install_command():
  from research.methods.classical import _common
  with pytest.raises(_common.MissingExampleData, match=r"the gmm example .* pip install -e '\.\[examples\]'"):
    _common.data_module("no_such_package_xyz.datasets", "gmm")
  assert issubclass(_common.MissingExampleData, ImportError)
