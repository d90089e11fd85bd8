"""Each issue-5 experiment's smoke flagfile end to end (subprocess, the session's `shapes` data_dir)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module, data_dir, workdir, devices=1, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             + os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  flagfile = os.path.join(ROOT, "experiments", "configs", f"{module}_smoke.flags")
  proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", f"--flagfile={flagfile}",
                         f"--data_dir={data_dir}", f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.load(open(os.path.join(workdir, "summary.json")))


def _logged(run_dir, key):
  """{step: value} of ``key`` in ``run_dir/metrics.jsonl``, parsed here (last row per step wins, as on resume)."""
  out = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if key in row:
        out[row["step"]] = row[key]
  return out


def _check_eval_counts(run_dir):
  """Every logged eval accuracy is (correct examples) / eval/count: an integer numerator."""
  acc, count = _logged(run_dir, "eval/accuracy"), _logged(run_dir, "eval/count")
  assert acc and set(acc) == set(count)
  for step in acc:
    assert count[step] > 0 and abs(acc[step] * count[step] - round(acc[step] * count[step])) < 1e-6, (step, acc)
  return acc, count


def test_wrn_blocks_smoke(shapes_data_dir, tmp_path):
  s = _run("wrn_blocks", shapes_data_dir, tmp_path)
  assert s["all_match"] and [r["params_M"] for r in s["params_column"]] == [1.4, 1.2, 1.3, 1.3, 1.5, 1.1]
  (row,) = s["trained"]
  assert row["block_type"] == "B(3,1,3)" and row["depth"] == 10
  # The row's accuracy is the run's logged evaluation after its 3 steps (eval_every = num_steps).
  run_dir = tmp_path / "wrn10_1_b313"
  acc, count = _check_eval_counts(run_dir)
  assert list(acc) == [3] and row["eval_accuracy"] == acc[3] and row["eval_error"] == pytest.approx(1 - acc[3])
  assert json.loads((run_dir / "results.json").read_text())["eval_count"] == count[3]
  assert os.path.exists(tmp_path / "summary.md")


def test_super_convergence_smoke(shapes_data_dir, tmp_path):
  """The summary against the runs' own logs, recomputed here: flagfile = range test 0.01 -> 1 in 12 steps, a step
  baseline of 12 iterations at 0.1 and a one-cycle run of 6, evaluated every 6 iterations."""
  s = _run("super_convergence", shapes_data_dir, tmp_path)
  rt = s["lr_range_test"]
  # Range test: LRs 0.01 * 100 ** (i / 11); smoothed = centred 9-step average (shrinking at the ends); the minimum
  # of the smoothed loss before the cut (blow-up) is the min-loss LR, suggested max LR = it / 3.
  rec = json.loads((tmp_path / "lr_range_test.json").read_text())
  lrs, losses = np.array(rec["lrs"]), np.array(rec["losses"])
  assert len(lrs) == len(losses) == rt["steps_recorded"] >= 3
  np.testing.assert_allclose(lrs, 0.01 * 100.0 ** (np.arange(len(lrs)) / 11), rtol=1e-9)
  smoothed = [float(np.mean(losses[max(0, i - 4):i + 5])) for i in range(len(losses))]
  np.testing.assert_allclose(rec["smoothed"], smoothed, rtol=1e-9)
  cut = len(lrs) if rt["cut_lr"] is None else int(np.argmin(np.abs(lrs - rt["cut_lr"])))
  assert rt["lr_min_loss"] == pytest.approx(lrs[int(np.argmin(smoothed[:cut]))], rel=1e-12)
  assert rt["suggested_max_lr"] == pytest.approx(rt["lr_min_loss"] / 3)
  assert [r["schedule"] for r in s["runs"]] == ["step", "onecycle"]
  assert [r["peak_lr"] for r in s["runs"]] == [0.1, pytest.approx(rt["suggested_max_lr"])]
  # Each run's curve is its logged evaluations; the target is the baseline's final one; iterations to target are
  # the first logged evaluation at or above it.
  curves = {}
  for r, steps in zip(s["runs"], ([6, 12], [6])):
    run_dir = tmp_path / r["name"]
    acc, _ = _check_eval_counts(run_dir)
    assert sorted(acc) == steps, acc
    curves[r["name"]] = acc
    assert [tuple(p) for p in r["curve"]] == sorted(acc.items())
    assert r["final_accuracy"] == acc[steps[-1]] == json.loads((run_dir / "results.json").read_text())[
        "eval_accuracy"]
    assert r["best_accuracy"] == max(acc.values())
  target = curves[s["runs"][0]["name"]][12]
  assert s["target_accuracy"] == target and s["target_rule"] == "baseline final accuracy"
  for r in s["runs"]:
    assert r["steps_to_target"] == next((t for t, a in sorted(curves[r["name"]].items()) if a >= target), None)
  # The learning rates the optimizer applied (logged train/learning_rate at step t = the LR of update t):
  # step schedule x0.1 at 50% and 75% of 12 -> 0.001 from update 10; one cycle (6 updates, peak at
  # floor(0.3 * 6) = 1, cosine down to peak / 2.5e5): update 6 uses peak * (1 + cos(0.8 pi)) / 2 (+ 1/2.5e5 of it).
  step_lr = _logged(tmp_path / s["runs"][0]["name"], "train/learning_rate")
  assert step_lr[10] == pytest.approx(1e-3, rel=1e-6) and step_lr[12] == pytest.approx(1e-3, rel=1e-6)
  peak = rt["suggested_max_lr"]
  one_lr = _logged(tmp_path / s["runs"][1]["name"], "train/learning_rate")
  assert one_lr[6] == pytest.approx(peak / 2.5e5 + (peak - peak / 2.5e5) * (1 + math.cos(0.8 * math.pi)) / 2,
                                    rel=1e-5)
  for f in ("lr_range_test.png", "curves.png", "summary.md", "lr_range_test.json"):
    assert (tmp_path / f).stat().st_size > 0


def test_large_minibatch_smoke(shapes_data_dir, tmp_path):
  s = _run("large_minibatch", shapes_data_dir, tmp_path, devices=4)  # the flagfile's --num_devices=4 agrees
  assert s["num_devices"] == 4 and s["per_device_batch"] == 32
  assert [(r["batch_size"], r["devices"]) for r in s["runs"]] == [(64, 2)]  # 2 of the 4 devices: 64 = 2 x 32
  run = s["runs"][0]
  # Linear scaling from --learning_rate=0.05 at --base_batch_size=16 to 64; warmup and zero-init gamma on.
  assert run["condition"] == "recipe" and run["peak_lr"] == pytest.approx(0.05 * 64 / 16)
  assert run["zero_init_residual"] and run["warmup_steps"] > 0


def test_classify_cli_recipe_flags_reach_the_config(tmp_path):
  """experiments.classify passes every recipe flag through: a bad one fails validation with one clean line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1 " + os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
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
