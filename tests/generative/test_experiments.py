"""``experiments.gan`` / ``experiments.vae``: the smoke flagfiles run through the library, finished runs are reused,
bad flags are one clear error (issue 15, item 4)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from tests.generative.flag_checks import check_flag_error
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def _config(module, flagfile, **overrides):
  fv = flags.FlagValues()
  module.define_flags(fv)
  fv(["prog", f"--flagfile={os.path.join(CONFIGS, flagfile)}"])
  return dataclasses.replace(module.config_from_flags(fv), **overrides)


def test_gan_smoke_flagfile_runs_through_the_library(tmp_path):
  """WGAN-GP and BEGAN on digits 8x8 for 4 generator iterations: finite metrics at every eval, sample grids,
  the critic-weight histogram of WGAN-GP, summary files; a second call reuses the finished runs."""
  from experiments import gan as exp
  from research.methods import generative_experiment as ge
  cfg = _config(exp, "gan_smoke.flags", data_dir=str(tmp_path / "tfds"))
  work = str(tmp_path / "run")
  summary = ge.run_gan(cfg, work)
  assert set(summary["table"]) == {"wgan_gp", "began_gamma0.5"}
  for row in summary["table"].values():
    assert np.isfinite(row["fid"][0]) and row["inception_score"][0] >= 1.0 - 1e-6
  assert 0.0 <= summary["feature_network"]["test_accuracy"] <= 1.0
  for run in ("wgan_gp_seed0", "began_gamma0.5_seed0"):
    assert os.path.exists(os.path.join(work, run, "samples.png"))
    curve = json.loads(open(os.path.join(work, run, "results.json")).read())["curve"]
    assert [r["step"] for r in curve] == [2, 4]
  assert os.path.exists(os.path.join(work, "wgan_gp_seed0", "critic_weights.png"))
  assert "wgan_gp_tracking_spearman" in summary["claims"]
  assert os.path.exists(os.path.join(work, "summary.md")) and os.path.exists(os.path.join(work, "curves.png"))
  again = ge.run_gan(cfg, work)  # reused: same table
  assert again["table"] == summary["table"]


def test_gan_on_the_mixture_reports_mode_coverage(tmp_path):
  from research.methods import generative_experiment as ge
  cfg = ge.GANConfig(dataset="ring8", losses=("nsgan",), num_steps=4, batch_size=16, eval_every=2,
                     num_eval_samples=64, mlp_hidden=16, mlp_depth=2, checkpoint_every=4)
  summary = ge.run_gan(cfg, str(tmp_path))
  row = summary["table"]["nsgan"]
  assert 0 <= row["modes_covered"][0] <= 8 and 0 <= row["high_quality_rate"][0] <= 1
  assert os.path.exists(tmp_path / "nsgan_seed0" / "samples.png")


def test_vae_smoke_flagfile_runs_through_the_library(tmp_path):
  from experiments import vae as exp
  from research.methods import generative_experiment as ge
  cfg = _config(exp, "vae_smoke.flags", data_dir=str(tmp_path / "tfds"))
  summary = ge.run_vae(cfg, str(tmp_path / "run"))
  assert set(summary["table"]) == {"2", "4"}
  for row in summary["table"].values():
    # the K-sample bound is at most the ELBO's value up to Monte-Carlo noise (20 steps: near 64 coin flips)
    assert row["iwae_k10"][0] <= row["iwae_k1"][0] + 1e-3
    assert row["nll_iwae"][0] <= row["neg_elbo"][0] + 0.05 and np.isfinite(row["nll_iwae"][0])
  assert os.path.exists(tmp_path / "run" / "latent2_seed0" / "latent_space.png")
  assert os.path.exists(tmp_path / "run" / "latent4_seed0" / "samples.png")


@pytest.mark.parametrize("args,message", [
    (["--losses=gan,lsgan"], "--losses"),
    (["--losses=began", "--conditional"], "--conditional: BEGAN is unconditional"),
    (["--dataset=ring8", "--losses=began"], "--dataset=ring8: BEGAN"),
    (["--image_size=12"], "--image_size=12 must be a power of two"),
    (["--gammas=0,0.5"], "--gammas must be in (0, 1]"),
    (["--num_steps=0"], "--num_steps must be positive"),
])
def test_gan_bad_flags_are_one_clear_error(args, message):
  check_flag_error("gan", args, message)


def test_vae_bad_flags_are_one_clear_error():
  from experiments import vae as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", "--latents=2,2"])
  with pytest.raises(ValueError, match="--latents must list distinct positive sizes"):
    exp.config_from_flags(fv)
