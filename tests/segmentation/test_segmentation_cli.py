"""experiments.segmentation end to end as a user runs it: the smoke flagfile (FCN + dense CRF at eval, FCN + CRF-as-RNN
trained end to end, on shapes_scenes), reuse of finished runs, and one-line errors for bad flags."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "segmentation_smoke.flags")


def _run(*args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  return subprocess.run([sys.executable, "-m", "experiments.segmentation", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_smoke_flagfile(tmp_path):
  proc = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["table"]) == {"fcn_dense_crf", "fcn_dense_crf (+dense CRF)", "fcn_crf_rnn", "fcn_crf_rnn (unary)"}
  for row in summary["table"].values():
    assert all(np.isfinite(v[0]) for k, v in row.items() if k != "wall_seconds")
  results = json.loads((tmp_path / "fcn_crf_rnn_seed0" / "results.json").read_text())
  assert results["step"] == 3 and results["crf"] == "crf_rnn" and 0 <= results["eval_unary/miou"] <= 1
  assert "| fcn_dense_crf (+dense CRF) |" in proc.stdout
  again = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path}")  # finished runs are reused, not trained again
  assert again.returncode == 0 and json.loads((tmp_path / "summary.json").read_text())["table"] == summary["table"]


def test_cli_bad_flags_are_one_clear_error(tmp_path):
  proc = _run(f"--workdir={tmp_path}", "--model=unet", timeout=300)
  assert proc.returncode == 1 and "error: --model='unet'" in proc.stderr and "pspnet" in proc.stderr, proc.stderr[-2000:]
  proc = _run(f"--workdir={tmp_path}", "--conditions=fcn,nope", timeout=300)
  assert proc.returncode != 0 and "conditions" in proc.stderr, proc.stderr[-2000:]
  proc = _run(f"--workdir={tmp_path}", "--image_size=100", timeout=300)
  assert proc.returncode == 1 and "--image_size=100 must be a positive multiple of 32" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # one line, no traceback
