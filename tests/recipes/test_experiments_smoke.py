"""Each issue-5 experiment's smoke flagfile end to end (subprocess, the session's `shapes` data_dir)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module, data_dir, workdir, devices=1, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  flagfile = os.path.join(ROOT, "experiments", "configs", f"{module}_smoke.flags")
  proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", f"--flagfile={flagfile}",
                         f"--data_dir={data_dir}", f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.load(open(os.path.join(workdir, "summary.json")))


def test_wrn_blocks_smoke(shapes_data_dir, tmp_path):
  s = _run("wrn_blocks", shapes_data_dir, tmp_path)
  assert s["all_match"] and [r["params_M"] for r in s["params_column"]] == [1.4, 1.2, 1.3, 1.3, 1.5, 1.1]
  (row,) = s["trained"]
  assert row["block_type"] == "B(3,1,3)" and row["depth"] == 10 and 0 <= row["eval_accuracy"] <= 1
  assert os.path.exists(tmp_path / "summary.md")


def test_super_convergence_smoke(shapes_data_dir, tmp_path):
  s = _run("super_convergence", shapes_data_dir, tmp_path)
  rt = s["lr_range_test"]
  assert rt["steps_recorded"] >= 3 and rt["suggested_max_lr"] == pytest.approx(rt["lr_min_loss"] / 3)
  assert [r["schedule"] for r in s["runs"]] == ["step", "onecycle"]
  assert s["runs"][1]["peak_lr"] == pytest.approx(rt["suggested_max_lr"])
  assert s["runs"][0]["steps_to_target"] is not None  # the baseline reaches its own final accuracy
  for f in ("lr_range_test.png", "curves.png", "summary.md", "lr_range_test.json"):
    assert (tmp_path / f).stat().st_size > 0


def test_large_minibatch_smoke(shapes_data_dir, tmp_path):
  s = _run("large_minibatch", shapes_data_dir, tmp_path, devices=4)  # the flagfile's --num_devices=4 agrees
  assert s["num_devices"] == 4 and s["per_device_batch"] == 32
  assert [(r["batch_size"], r["devices"]) for r in s["runs"]] == [(64, 2), (64, 2)]  # 2 of the 4 devices: 64 = 2 x 32
  runs = {r["condition"]: r for r in s["runs"]}
  assert runs["no_recipe"]["peak_lr"] == pytest.approx(0.05) and not runs["no_recipe"]["zero_init_residual"]
  assert runs["recipe"]["peak_lr"] == pytest.approx(0.2) and runs["recipe"]["zero_init_residual"]
  assert runs["recipe"]["warmup_steps"] > 0 and runs["recipe"]["num_steps"] == runs["no_recipe"]["num_steps"]


def test_classify_cli_recipe_flags_reach_the_config(tmp_path):
  """experiments.classify passes every recipe flag through: a bad one fails validation with one clean line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  smoke = os.path.join(ROOT, "experiments", "configs", "classify_smoke.flags")
  proc = subprocess.run([sys.executable, "-m", "experiments.classify", f"--flagfile={smoke}",
                         f"--workdir={tmp_path / 'w'}", f"--data_dir={tmp_path / 'd'}", "--zero_init_residual",
                         "--lr_scaling=linear", "--base_batch_size=64", "--freeze_bn_last_steps=3",
                         "--temperature=2", "--loss=softmax_center", "--step_boundaries=0.3,0.6"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert "error: --zero_init_residual: model 'wrn10_1'" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  # Flag -> ClassifyConfig, in a fresh interpreter (absl flags are process-global).
  code = ("import dataclasses, json, sys; from absl import flags; from experiments import classify as cli; "
          "flags.FLAGS(sys.argv); print(json.dumps(dataclasses.asdict(cli.config_from_flags())))")
  proc = subprocess.run([sys.executable, "-c", code, "--lr_scaling=linear", "--base_batch_size=64",
                         "--freeze_bn_last_steps=3", "--temperature=2", "--loss=softmax_center",
                         "--center_loss_weight=0.01", "--step_boundaries=0.3,0.6", "--num_classes_subset=10",
                         "--zero_init_residual", "--warmup_init=0.25", "--onecycle_pct_start=0.4",
                         "--center_loss_alpha=0.3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cfg = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (cfg["lr_scaling"], cfg["base_batch_size"], cfg["freeze_bn_last_steps"], cfg["temperature"], cfg["loss"]) == (
      "linear", 64, 3, 2.0, "softmax_center")
  assert cfg["step_boundaries"] == [0.3, 0.6] and cfg["num_classes_subset"] == 10 and cfg["zero_init_residual"]
  assert (cfg["warmup_init"], cfg["onecycle_pct_start"], cfg["center_loss_alpha"], cfg["center_loss_weight"]) == (
      0.25, 0.4, 0.3, 0.01)
