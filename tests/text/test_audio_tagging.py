"""Raw-waveform audio tagging with mix-training: the audio_events corpus (seeded, multi-label, every event audible
in its band), wave_resnet shapes, mAP / ROC-AUC vs scikit-learn, mixup and mix-training batches (exact), the
experiment (smoke flagfile, bad flags)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from research import models
from research.data import audio as audio_data
from research.methods import audio_tagging_experiment as ax
from research.models.sequence.audio import WaveResNet
from research.train import audio_metrics
from research.train import audio_tagging as at
from tests.generative.flag_checks import check_flag_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "audio_tagging_smoke.flags")
SMALL = audio_data.CONFIGS["small"]


# ------------------------------------------------------------------------------------------------- data


def test_audio_events_is_seeded_multilabel_and_overlapping():
  a = audio_data.generate(SMALL, "test")
  b = audio_data.generate(SMALL, "test")
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  other = audio_data.generate(dataclasses.replace(SMALL, seed=7), "test")
  assert not np.array_equal(a["audio"], other["audio"])
  assert not np.array_equal(a["audio"], audio_data.generate(SMALL, "train")["audio"][:len(a["audio"])])
  n, T = a["audio"].shape
  assert a["audio"].dtype == np.int16 and T == int(SMALL.clip_seconds * audio_data.SAMPLE_RATE)
  for i in range(n):  # multi-hot labels == the set of the event records' classes
    ev = a["event_labels"][i][a["event_labels"][i] >= 0]
    assert sorted(np.nonzero(a["labels"][i])[0].tolist()) == sorted(ev.tolist())
  counts = a["labels"].sum(1)
  assert counts.min() >= 1 and counts.max() <= SMALL.max_events and (counts >= 2).mean() > 0.4
  overlaps = 0
  for i in range(n):
    on, du = a["event_onsets"][i], a["event_durations"][i]
    k = int(counts[i])
    overlaps += any(on[p] < on[q] + du[q] and on[q] < on[p] + du[p] for p in range(k) for q in range(p + 1, k))
  assert overlaps >= n // 4  # overlapping events are common
  with pytest.raises(ValueError, match="max_events"):
    audio_data.generate(dataclasses.replace(SMALL, max_events=0), "test")


def _band_power(x: np.ndarray, lo: float, hi: float) -> float:
  """Mean power of ``x`` in [lo, hi] Hz (one-sided periodogram; the bins sum to the mean power)."""
  spec = np.abs(np.fft.rfft(x)) ** 2 / len(x) ** 2
  spec[1:] *= 2
  f = np.fft.rfftfreq(len(x), 1.0 / audio_data.SAMPLE_RATE)
  return float(spec[(f >= lo) & (f <= hi)].sum())


def test_every_labelled_event_is_audible_in_its_band():
  """Inside its onset window, the clip's power in the event's band is >= 3x the white background's share of that
  band; a background-only stretch is not (so the measurement can fail)."""
  a = audio_data.generate(SMALL, "test")
  sr, checked, quiet = audio_data.SAMPLE_RATE, 0, 0
  for i in range(len(a["audio"])):
    x = a["audio"][i].astype(np.float64) / 32767
    sigma2 = float(a["noise_rms"][i]) ** 2
    busy = np.zeros(len(x), bool)
    for j in np.nonzero(a["event_labels"][i] >= 0)[0]:
      s = int(round(a["event_onsets"][i, j] * sr))
      m = int(round(a["event_durations"][i, j] * sr))
      busy[s:s + m] = True
      lo, hi = a["event_bands"][i, j]
      background = sigma2 * (hi - lo) / (sr / 2)
      ratio = _band_power(x[s:s + m], lo, hi) / background
      assert ratio >= 3.0, (i, audio_data.CLASS_NAMES[a["event_labels"][i, j]], ratio)
      checked += 1
    gaps = np.nonzero(~busy)[0]
    if len(gaps) >= 400 and np.all(np.diff(gaps[:400]) == 1):  # 25 ms with no event: background only
      assert _band_power(x[gaps[:400]], 0, sr / 2) / sigma2 < 2.0
      quiet += 1
  assert checked >= 90 and quiet >= 1


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("audio_tfds"))


def test_audio_events_builder_and_reader(tfds_dir):
  audio, labels, names = audio_data.load_audio_split("audio_events/small", "test", tfds_dir)
  ref = audio_data.generate(SMALL, "test")
  np.testing.assert_array_equal(audio, ref["audio"].astype(np.float32) / 32768)  # index order
  np.testing.assert_array_equal(labels, ref["labels"].astype(np.float32))
  assert names == list(audio_data.CLASS_NAMES) and audio.dtype == np.float32
  from research.data import pipeline
  assert pipeline.PROCEDURAL["audio_events"] is audio_data.AudioEvents


# ------------------------------------------------------------------------------------------------- model


def test_wave_resnet_shapes_batch_stats_and_registry():
  m = models.create("wave_resnet", num_classes=5, stem_features=4, front_features=8, channels=(4, 8, 8),
                    stage_strides=(1, 2, 2), levels=2)
  assert "wave_resnet" in models.names("sequence")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4000)).astype(np.float32) * 0.1)
  variables = jax.jit(lambda k: m.init(k, x, train=False))(jax.random.key(0))
  assert set(variables) == {"params", "batch_stats"}
  assert {"attention2", "attention3"} <= set(variables["params"]) and "attention1" not in variables["params"]
  out, upd = jax.jit(lambda v: m.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
  chex.assert_shape(out, (3, 5))
  assert out.dtype == jnp.float32 and bool(jnp.all((out >= 0) & (out <= 1)))
  assert set(upd) == {"batch_stats"}
  with pytest.raises(ValueError, match="levels=4"):
    WaveResNet(num_classes=2, channels=(4, 8), stage_strides=(2, 2), levels=4).init(jax.random.key(0), x,
                                                                                    train=False)


# ------------------------------------------------------------------------------------------------- metrics


def test_map_and_auc_match_sklearn():
  rng = np.random.default_rng(3)
  y = (rng.random((60, 6)) < 0.3).astype(np.int32)
  y[:, 5] = 0  # a class with no positives: AP and AUC undefined, left out of the means
  y[0, 4] = 1
  s = np.round(rng.random((60, 6)) + 0.5 * y, 1)  # rounded: many tied scores
  m = audio_metrics.tagging_metrics(y, s)
  ap_ref = [average_precision_score(y[:, c], s[:, c]) for c in range(5)]
  auc_ref = [roc_auc_score(y[:, c], s[:, c]) for c in range(5)]
  np.testing.assert_allclose(m["ap"][:5], ap_ref, rtol=1e-12)
  np.testing.assert_allclose(m["auc_per_class"][:5], auc_ref, rtol=1e-12)
  assert np.isnan(m["ap"][5]) and m["classes_ap"] == 5 and m["classes_auc"] == 5
  np.testing.assert_allclose([m["mAP"], m["auc"]], [np.mean(ap_ref), np.mean(auc_ref)], rtol=1e-12)
  assert audio_metrics.roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]) == 1.0


# ------------------------------------------------------------------------------------------------- augmentation


def _tiny_batch():
  rng = np.random.default_rng(0)
  audio = jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32))
  labels = jnp.asarray(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32))
  return {"audio": audio, "labels": labels}


def test_mix_training_is_the_union_of_labels_and_switches_off_after_mix_until():
  task = at.AudioTaggingTask(model=WaveResNet(num_classes=3), num_steps=10, augment="mix_training", mix_until=0.7,
                             mix_gain_db=6.0)
  assert task.mix_steps == 7
  batch = _tiny_batch()
  x, y = np.asarray(batch["audio"]), np.asarray(batch["labels"])
  key = jax.random.key(5)
  ref = at.mix_training(batch["audio"], batch["labels"], key, active=jnp.asarray(True), gain_db=6.0)
  j, g = np.asarray(ref["partner"]), np.asarray(ref["gains"])
  assert sorted(j.tolist()) == [0, 1, 2, 3] and np.all(j != np.arange(4))  # a derangement: a real second clip
  assert np.all((g <= 1.0) & (g >= 10 ** (-6 / 20) - 1e-6))
  for step in (0, 6):  # on: sum of the two clips with their gains, labels = union
    out = task.train_batch(batch, key, jnp.asarray(step))
    np.testing.assert_allclose(np.asarray(out["audio"]), g[:, :1] * x + g[:, 1:] * x[j], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(out["labels"]), np.maximum(y, y[j]))
  for step in (7, 9):  # off for the last 30% of the steps: the raw batch
    out = task.train_batch(batch, key, jnp.asarray(step))
    np.testing.assert_array_equal(np.asarray(out["audio"]), x)
    np.testing.assert_array_equal(np.asarray(out["labels"]), y)
  other = task.train_batch(batch, jax.random.fold_in(key, 1), jnp.asarray(0))  # another step's key: other mix
  assert not np.allclose(np.asarray(other["audio"]), g[:, :1] * x + g[:, 1:] * x[j])
  none = at.AudioTaggingTask(model=WaveResNet(num_classes=3), num_steps=10, augment="none")
  np.testing.assert_array_equal(np.asarray(none.train_batch(batch, key, jnp.asarray(0))["audio"]), x)


def test_mixup_is_a_convex_combination_of_clips_and_labels():
  batch = _tiny_batch()
  x, y = np.asarray(batch["audio"]), np.asarray(batch["labels"])
  out = at.mixup(batch["audio"], batch["labels"], jax.random.key(2), alpha=0.4)
  lam, j = np.asarray(out["lam"])[:, None], np.asarray(out["partner"])
  assert np.all((lam >= 0) & (lam <= 1))
  np.testing.assert_allclose(np.asarray(out["audio"]), lam * x + (1 - lam) * x[j], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["labels"]), lam * y + (1 - lam) * y[j], rtol=1e-5, atol=1e-6)


def test_task_rejects_bad_settings():
  m = WaveResNet(num_classes=3)
  for kw, msg in (({"augment": "specaugment"}, "--augment"), ({"mix_until": 1.5}, "--mix_until"),
                  ({"mixup_alpha": 0.0}, "--mixup_alpha"), ({"mix_gain_db": -1.0}, "--mix_gain_db")):
    with pytest.raises(ValueError, match=msg):
      at.AudioTaggingTask(model=m, num_steps=5, **kw)


# ------------------------------------------------------------------------------------------------- experiment


@pytest.mark.slow
def test_experiment_trains_mix_training_in_process(tmp_path, tfds_dir):
  """One tiny mix-training run through the loop (~20-50 s: compilation): finite mAP / AUC, the summary, results
  reused on a re-run."""
  cfg = ax.AudioTaggingConfig(dataset="audio_events/small", data_dir=tfds_dir, augments=("mix_training",),
                              steps=3, batch_size=8, mix_until=0.5, stem_features=4, front_features=8,
                              channels=(4, 8), eval_batch_size=48)
  summary = ax.run(cfg, str(tmp_path))
  row = summary["table"]["mix_training"]
  assert 0 < row["test_mAP"][0] <= 1 and 0 <= row["test_auc"][0] <= 1
  res = json.loads((tmp_path / "mix_training_seed0" / "results.json").read_text())
  assert res["augment"] == "mix_training" and res["mix_steps"] == 2 and res["eval_count"] == 48
  assert "| mix_training |" in (tmp_path / "summary.md").read_text()
  assert ax.run(cfg, str(tmp_path))["table"] == summary["table"]  # finished runs are reused


def test_smoke_flagfile_in_process(tmp_path, tfds_dir):
  """The smoke flagfile's settings (parsed by absl from the file) through the driver: all three augmentations."""
  from absl import flags
  from experiments import audio_tagging as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}", f"--data_dir={tfds_dir}"])
  cfg = exp.config_from_flags(fv)
  assert cfg.augments == ("none", "mixup", "mix_training")
  summary = ax.run(cfg, str(tmp_path))
  assert set(summary["table"]) == {"none", "mixup", "mix_training"}
  for row in summary["table"].values():
    assert np.isfinite(row["test_mAP"][0]) and np.isfinite(row["test_auc"][0])
  assert {"mix_training_beats_none", "mix_training_beats_mixup"} <= set(summary["claims"])


def _run_cli(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  return subprocess.run([sys.executable, "-m", "experiments.audio_tagging", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path, tfds_dir):
  """The smoke flagfile end to end through the CLI (36 s at load 6, ~2 min at load 9: three compilations)."""
  proc = _run_cli(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={tfds_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["table"]) == {"none", "mixup", "mix_training"}
  assert "| augment |" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--augments=none,specaugment"], "--augments"),
    (["--augments=none,none"], "--augments must list distinct"),
    (["--mix_until=1.5"], "--mix_until must be a fraction"),
    (["--steps=0"], "--steps must be positive"),
    (["--mixup_alpha=0"], "--mixup_alpha must be positive"),
    (["--levels=3"], "--levels=3 must be in 1..2"),
    (["--seeds=1,1"], "distinct seeds"),
])
def test_bad_flags_give_one_clear_error(args, message):
  check_flag_error("audio_tagging", args, message)


def test_cli_bad_flag_is_one_error_line(tmp_path):
  proc = _run_cli(f"--workdir={tmp_path}", "--mix_until=2", timeout=120)
  assert proc.returncode == 1 and "error: --mix_until must be a fraction" in proc.stderr, proc.stderr[-2000:]
