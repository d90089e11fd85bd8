"""Voice-face matching (seed 001 Q3): the voice_face corpus (seeded, disjoint identities, shared attributes), the
identity sampler, the cross-modal triplet loss vs numpy, 1:2 matching and mAP (vs brute force / scikit-learn), the
model, the experiment (smoke flagfile, bad flags)."""

from __future__ import annotations

import itertools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from research import models
from research.data import voice_face as vf_data
from research.methods import voice_face_experiment as vx
from research.train import voice_face as vf
from tests.generative.flag_checks import check_flag_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "voice_face_smoke.flags")
SMALL = vf_data.CONFIGS["small"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("voice_face_tfds"))


# ------------------------------------------------------------------------------------------------- data


def test_generation_is_seeded_and_identities_are_disjoint():
  a, b = vf_data.generate_identity(SMALL, "test", 3), vf_data.generate_identity(SMALL, "test", 3)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  other = vf_data.generate_identity(SMALL, "test", 4)
  assert not np.array_equal(a["face"], other["face"])
  chex.assert_shape(a["face"], (4, 32, 32, 3))
  chex.assert_shape(a["voice"], (4, 32, 32))
  assert a["face"].dtype == np.uint8 and a["voice"].dtype == np.float32 and np.isfinite(a["voice"]).all()
  # different utterances / images of one identity differ (nuisance), the identity id does not
  assert not np.array_equal(a["voice"][0], a["voice"][1]) and not np.array_equal(a["face"][0], a["face"][1])
  tr = vf_data.generate(SMALL, "train")["identity"]
  te = vf_data.generate(SMALL, "test")["identity"]
  assert set(tr.tolist()).isdisjoint(te.tolist()) and len(set(tr.tolist())) == 40 and len(set(te.tolist())) == 20


def test_shared_attributes_drive_both_modalities():
  """Gender lowers f0 and formants (voice) and widens the head (face); private attributes do not cross over."""
  rng = np.random.default_rng(0)
  attrs = [vf_data.identity_attributes(rng) for _ in range(200)]
  f0 = np.array([vf_data.voice_parameters(a)["f0"] for a in attrs])
  g = np.array([a["gender"] for a in attrs])
  assert f0[g == 1].max() < f0[g == 0].min() + 40 and f0[g == 1].mean() < 0.7 * f0[g == 0].mean()
  a = dict(attrs[0], gender=0, stubble=0.0)
  b = dict(a, skin=1 - a["skin"], hair_hue=(a["hair_hue"] + 0.5) % 1)  # face-private change: same voice
  assert vf_data.voice_parameters(a) == vf_data.voice_parameters(b)
  w = vf_data.synthesize_voice(a, np.random.default_rng(1), 8000, 0.5)
  assert w.shape == (4000,) and np.abs(w).max() <= 1.0
  # the log-mel of a pure tone peaks in the mel band that contains it
  tone = np.sin(2 * np.pi * 1000 * np.arange(4000) / 8000)
  fb = vf_data.mel_filterbank(8000, 256, 32)
  peak = int(np.argmax(vf_data.log_mel(tone, 8000, 4, 32).mean(0)))
  assert fb[int(round(1000 / 8000 * 256)), peak] > 0


def test_builder_matches_generate(tfds_dir):
  from research.data import pipeline
  assert pipeline.PROCEDURAL["voice_face"] is vf_data.VoiceFace
  data = vx.load_split("voice_face/small", "test", tfds_dir)
  ref = vf_data.generate(SMALL, "test")
  np.testing.assert_array_equal(data["identity"], ref["identity"])
  np.testing.assert_array_equal(data["face"], ref["face"])
  np.testing.assert_allclose(data["voice"], ref["voice"])


# ------------------------------------------------------------------------------------------------- sampler, loss


def test_identity_sampler_returns_p_by_k_of_the_right_identities():
  n, f, v = 10, 5, 3
  faces = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None, None], (n, f, 2, 2, 3)).copy()
  faces[:, :, 0, 0, 0] = np.arange(f)  # the example index
  voices = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, v, 2, 2)).copy()
  ids = np.arange(100, 100 + n)
  it = vf.IdentityBatches(faces, voices, ids, identities_per_batch=4, examples_per_identity=3, seed=7)
  batch = next(it)
  chex.assert_shape(batch["face"], (12, 2, 2, 3))
  chex.assert_shape(batch["voice"], (12, 2, 2))
  ident = batch["identity"]
  assert len(set(ident.tolist())) == 4 and all(np.sum(ident == i) == 3 for i in set(ident.tolist()))
  assert (ident.reshape(4, 3) == ident.reshape(4, 3)[:, :1]).all()  # identity-major rows
  np.testing.assert_array_equal(batch["face"][:, 1, 1, 0] + 100, ident)  # each face is of its identity
  np.testing.assert_array_equal(batch["voice"][:, 0, 0] + 100, ident)
  for row in batch["face"][:, 0, 0, 0].reshape(4, 3):  # K <= F: distinct examples
    assert len(set(row.tolist())) == 3
  state = it.get_state()
  second = next(it)
  it2 = vf.IdentityBatches(faces, voices, ids, identities_per_batch=4, examples_per_identity=3, seed=7)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["face"], second["face"])
  with pytest.raises(ValueError, match="--identities_per_batch"):
    vf.IdentityBatches(faces, voices, ids, identities_per_batch=11, examples_per_identity=3, seed=0)


def test_cross_modal_triplet_matches_numpy():
  rng = np.random.default_rng(0)
  a, o = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  ids = np.array([0, 0, 1, 1, 2, 2])
  d = np.linalg.norm(a[:, None] - o[None], axis=-1)
  same = ids[:, None] == ids[None]
  hard = np.maximum(np.where(same, d, -np.inf).max(1) - np.where(same, np.inf, d).min(1) + 0.3, 0).mean()
  loss_fn = jax.jit(vf.cross_modal_triplet, static_argnames=("margin", "mining"))
  loss, _ = loss_fn(jnp.asarray(a), jnp.asarray(ids), jnp.asarray(o), jnp.asarray(ids), margin=0.3,
                    mining="batch_hard")
  np.testing.assert_allclose(float(loss), hard, rtol=1e-5)
  hinges = [max(d[i, p] - d[i, n] + 0.3, 0) for i, p, n in itertools.product(range(6), repeat=3)
            if same[i, p] and not same[i, n]]
  loss, _ = loss_fn(jnp.asarray(a), jnp.asarray(ids), jnp.asarray(o), jnp.asarray(ids), margin=0.3,
                    mining="batch_all")
  np.testing.assert_allclose(float(loss), np.sum(hinges) / np.sum(np.array(hinges) > 0), rtol=1e-5)


# ------------------------------------------------------------------------------------------------- metrics


def test_matching_accuracy_perfect_random_and_brute_force():
  n, s, d = 30, 4, 16
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(n, 1, d))
  trip = vf.sample_triplets(n, 10_000, seed=3)
  assert trip.shape == (10_000, 2) and (trip[:, 0] != trip[:, 1]).all()
  np.testing.assert_array_equal(trip, vf.sample_triplets(n, 10_000, seed=3))  # fixed, seeded
  perfect = np.repeat(centres, s, axis=1)
  assert vf.matching_accuracy(perfect, perfect, trip) == 1.0
  r1, r2 = rng.normal(size=(n, s, d)), rng.normal(size=(n, s, d))
  assert abs(vf.matching_accuracy(r1, r2, trip) - 0.5) < 0.03
  # brute force: every (query example, true example, other example) of every triplet with average=1 equals the
  # expectation of the sampled estimate; a noisy link between modalities gives the same value up to sampling
  noisy_q, noisy_g = centres + 0.8 * rng.normal(size=(n, s, d)), centres + 0.8 * rng.normal(size=(n, s, d))
  small = trip[:300]
  ref = []
  for q, o in small:
    for i, j, k in itertools.product(range(s), repeat=3):
      qe = noisy_q[q, i] / np.linalg.norm(noisy_q[q, i])
      pe, ne = (noisy_g[q, j] / np.linalg.norm(noisy_g[q, j]), noisy_g[o, k] / np.linalg.norm(noisy_g[o, k]))
      ref.append(np.linalg.norm(qe - pe) < np.linalg.norm(qe - ne))
  est = np.mean([vf.matching_accuracy(noisy_q, noisy_g, np.repeat(small, 20, axis=0), seed=t) for t in range(5)])
  assert abs(est - np.mean(ref)) < 0.02
  # averaging noisy examples helps
  assert vf.matching_accuracy(noisy_q, noisy_g, trip, average=4) > vf.matching_accuracy(noisy_q, noisy_g, trip) + 0.02
  with pytest.raises(ValueError, match="average=5"):
    vf.matching_accuracy(noisy_q, noisy_g, trip, average=5)


def test_retrieval_map_against_sklearn():
  rng = np.random.default_rng(1)
  q, g = rng.normal(size=(12, 5)), rng.normal(size=(20, 5))
  q_id, g_id = rng.integers(0, 4, 12), np.repeat(np.arange(4), 5)
  d = np.linalg.norm(q[:, None] - g[None], axis=-1)
  ref = np.mean([average_precision_score(g_id == q_id[i], -d[i]) for i in range(12)])
  np.testing.assert_allclose(vf.retrieval_map(q, q_id, g, g_id), ref, rtol=1e-10)
  perfect = np.repeat(np.eye(4), 5, axis=0)
  assert vf.retrieval_map(perfect, g_id, perfect + 1e-9 * rng.normal(size=perfect.shape), g_id) == 1.0


# ------------------------------------------------------------------------------------------------- model, experiment


def test_model_is_registered_and_unit_norm():
  m = models.create("voice_face_cnn", widths=(4, 8), embed_dim=6)
  assert "voice_face_cnn" in models.names("sequence")
  face, voice = jnp.zeros((3, 16, 16, 3), jnp.uint8) + 100, jax.random.normal(jax.random.key(0), (5, 8, 8))
  params = jax.jit(lambda k, x: m.init(k, x, train=False))(jax.random.key(1), (face, voice))
  e_f, e_v = jax.jit(lambda p, x: m.apply(p, x, train=False))(params, (face, voice))
  chex.assert_shape(e_f, (3, 6))
  chex.assert_shape(e_v, (5, 6))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(e_v), axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(e_f), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--losses=triplet,arcface"], "--losses"),
    (["--mining=semi"], "--mining"),
    (["--steps=0"], "--steps must be positive"),
    (["--identities_per_batch=1"], "--identities_per_batch must be >= 2"),
    (["--seeds=1,1"], "distinct seeds"),
    (["--margin=-1"], "--margin must be positive"),
    (["--face_anchor_weight=-0.5"], "--face_anchor_weight must be >= 0"),
])
def test_bad_flags_give_one_clear_error(args, message):
  check_flag_error("voice_face", args, message)


def test_a_prepared_tfds_dataset_via_mock_data(tmp_path):
  """Any TFDS dataset with the voice_face features reads through the same code; tfds mock_data serves the same
  random records in train and test, which the disjoint-identity check rejects."""
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
    d = vx.load_split("voice_face/small", "train", str(tmp_path))
    chex.assert_shape(d["face"], (12, 4, 32, 32, 3))
    chex.assert_shape(d["voice"], (12, 4, 32, 32))
    assert (np.diff(d["identity"]) >= 0).all()  # sorted by identity
    with pytest.raises(ValueError, match="occur in both train and test"):
      vx.load_data(vx.VoiceFaceConfig(dataset="voice_face/small", data_dir=str(tmp_path)))


def test_average_larger_than_examples_is_an_error(tfds_dir):
  with pytest.raises(ValueError, match="--average=5 exceeds the 4"):
    vx.load_data(vx.VoiceFaceConfig(dataset="voice_face/small", data_dir=tfds_dir, average=5))


def test_smoke_flagfile_in_process(tmp_path, tfds_dir):
  """The smoke flagfile's settings (parsed by absl from the file) through the driver: every run, metric, claim."""
  from absl import flags
  from experiments import voice_face as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}", f"--data_dir={tfds_dir}"])
  cfg = exp.config_from_flags(fv)
  assert cfg.losses == ("triplet", "contrastive") and cfg.num_triplets == 2000
  summary = vx.run(cfg, str(tmp_path))
  assert set(summary["table"]) == {"triplet", "contrastive"} and summary["num_test_identities"] == 20
  for row in summary["table"].values():
    for k in vx.metric_names(cfg.average):
      assert 0.0 <= row[k][0] <= 1.0
  assert {"matching_above_chance", "averaging_improves_matching",
          "triplet_minus_contrastive_match_v2f"} <= set(summary["claims"])
  assert (tmp_path / "summary.md").read_text().count("| triplet") == 1
  again = vx.run(cfg, str(tmp_path))  # finished runs are reused
  assert again["table"] == summary["table"]


@pytest.mark.slow
def test_cli_smoke_flagfile_and_bad_flag(tmp_path, tfds_dir):
  """The smoke flagfile end to end through the CLI; a bad flag is one error line naming it."""
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  cmd = [sys.executable, "-m", "experiments.voice_face", f"--flagfile={SMOKE}", f"--workdir={tmp_path}",
         f"--data_dir={tfds_dir}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "summary.json").exists() and "| triplet" in proc.stdout
  bad = subprocess.run(cmd + ["--identities_per_batch=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 1 and "error: --identities_per_batch must be >= 2" in bad.stderr, bad.stderr[-2000:]
