"""Doctor2Vec (Biswal et al., AAAI 2020): the patient_visits corpus (determinism, the enrollment formula recomputed
by brute force), the memory read (attention over valid patients, padding invariance, numpy reference), model
shapes, the metrics and ridge baseline against oracles, the smoke flagfile and bad flags."""

from __future__ import annotations

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.data import doctors as D
from research.methods import doctor2vec_experiment as dx
from research.models.sequence.doctor2vec import Doctor2Vec, memory_read
from research.train import doctor2vec as d2v
from tests.generative.flag_checks import check_flag_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "doctor2vec_smoke.flags")
SMALL = D.CONFIGS["small"]


# ------------------------------------------------------------------------------------------------- data


def test_generation_is_seeded_and_deterministic():
  a, b = D.generate(SMALL), D.generate(SMALL)
  chex.assert_trees_all_equal(a, b)
  other = D.generate(dataclasses.replace(SMALL, seed=7))
  assert not np.array_equal(a["doctors"]["codes"], other["doctors"]["codes"])
  doc = a["doctors"]
  for d in range(SMALL.num_doctors):  # valid patients are a prefix; padded patients have no codes
    n = doc["num_patients"][d]
    assert (doc["condition"][d, :n] >= 0).all() and (doc["condition"][d, n:] == -1).all()
    assert (doc["codes"][d, n:] == 0).all() and (doc["codes"][d, :n].reshape(n, -1) != 0).any(1).all()
  with pytest.raises(ValueError, match="recency"):
    D.generate(dataclasses.replace(SMALL, recency=0.0))


def test_enrollment_follows_the_documented_formula():
  """Step 5 of the module docstring recomputed with python sets and loops (independent of the vectorised code)."""
  c = dataclasses.replace(SMALL, noise_std=0.3)
  g = D.generate(c)
  doc, tr = g["doctors"], g["trials"]
  lay = D.code_layout(c)
  v = D.num_codes(c)
  expected = np.zeros((len(tr["phase"]), c.num_doctors))
  for t in range(len(tr["phase"])):
    toks = [int(x) for x in tr["tokens"][t] if x]
    b, x = toks[0], toks[3] - v  # inclusion biomarker first, exclusion mention 4th
    assert b == tr["biomarker"][t] and x == tr["excluded_med"][t]
    assert b in lay["biomarkers"][tr["condition"][t]] and x in lay["prior_meds"][tr["condition"][t]]
    for d in range(c.num_doctors):
      n = int(doc["num_patients"][d])
      num = den = 0.0
      for i in range(n):
        w = c.recency ** (n - 1 - i)
        codes = set(doc["codes"][d, i].reshape(-1).tolist())
        eligible = doc["condition"][d, i] == tr["condition"][t] and b in codes and x not in codes
        num += w * eligible
        den += w
      expected[t, d] = (c.rate_scale * D.PHASE_FACTOR[tr["phase"][t]] * num / den
                        + c.country_bonus * (doc["country"][d] == tr["country"][t]))
  np.testing.assert_allclose(tr["expected"], expected, rtol=1e-5, atol=1e-5)
  y = tr["enrollment"]
  assert (y >= 0).all()
  pos = y > 0
  np.testing.assert_allclose(y[~pos], 0.0)
  assert (expected[~pos] < 1.0).all()  # clipped rates come from small expected values
  resid = (y - expected)[expected > 1.5]  # far from the clip at 0: plain Gaussian noise
  assert abs(resid.mean()) < 0.15 and 0.2 < resid.std() < 0.4
  assert np.mean(expected > c.country_bonus + 0.01) > 0.05  # some doctors do have eligible patients


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("doctor_tfds"))


def test_builder_and_loader_match_generate(tfds_dir):
  data = D.load("patient_visits/small", tfds_dir)
  g = D.generate(SMALL)
  np.testing.assert_array_equal(data["doctors"]["codes"], g["doctors"]["codes"])
  np.testing.assert_array_equal(data["doctors"]["condition"], g["doctors"]["condition"])
  n = SMALL.num_train_trials
  np.testing.assert_array_equal(data["train"]["tokens"], g["trials"]["tokens"][:n])
  np.testing.assert_array_equal(data["test"]["enrollment"], g["trials"]["enrollment"][n:])
  assert data["test"]["enrollment"].shape == (SMALL.num_test_trials, SMALL.num_doctors)


# ------------------------------------------------------------------------------------------------- model


def test_memory_read_matches_numpy_and_masks_padding():
  rng = np.random.default_rng(0)
  keys, values, q = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 4))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  o, alpha, lse = memory_read(*(jnp.asarray(a, jnp.float32) for a in (keys, values)), jnp.asarray(mask),
                              jnp.asarray(q, jnp.float32))
  for b in range(2):
    s = keys[b, mask[b]] @ q[b] / 2.0
    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    np.testing.assert_allclose(np.asarray(alpha)[b, mask[b]], a, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(o)[b], a @ values[b, mask[b]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(lse[b]), np.log(np.exp(s).sum()), rtol=1e-5)
  assert np.all(np.asarray(alpha)[~mask] == 0.0) and np.allclose(np.asarray(alpha)[:2].sum(-1), 1.0)
  assert np.all(np.asarray(o)[2] == 0.0) and float(lse[2]) == 0.0  # an empty memory reads zeros


def _inputs(rng, b=3, p=6, v=4, c=5, num_codes=40):
  codes = rng.integers(1, num_codes, (b, p, v, c)).astype(np.int32)
  codes[:, :, :, 3:] = 0  # padded code slots
  codes[:, :, 3:] = 0  # padded visits
  codes[0, 4:] = 0  # doctor 0 has 4 patients, doctor 1 has 2
  codes[1, 2:] = 0
  tokens = rng.integers(1, 30, (b, 7)).astype(np.int32)
  tokens[:, 5:] = 0
  ints = lambda hi: jnp.asarray(rng.integers(0, hi, b), jnp.int32)  # noqa: E731
  return jnp.asarray(codes), jnp.asarray(tokens), dict(phase=ints(3), trial_country=ints(4), doctor_country=ints(4))


@pytest.mark.parametrize("name", ["doctor2vec", "doctor2vec_mean"])
def test_model_shapes_attention_and_padding_invariance(name):
  rng = np.random.default_rng(1)
  codes, tokens, kw = _inputs(rng)
  m = models.create(name, num_codes=40, num_tokens=30, max_patients=8, num_countries=4, dim=8, hidden=12)
  params = jax.jit(lambda k: m.init(k, codes, tokens, **kw))(jax.random.key(0))
  apply = jax.jit(lambda p, c, t, kw: m.apply(p, c, t, **kw, return_details=True))
  y, det = apply(params, codes, tokens, kw)
  assert {"doctor2vec", "doctor2vec_mean"} <= set(models.names("sequence"))
  with pytest.raises(ValueError, match="readout"):
    Doctor2Vec(num_codes=4, num_tokens=4, max_patients=2, readout="max").init(jax.random.key(0), codes, tokens, **kw)
  chex.assert_shape(y, (3,))
  chex.assert_shape(det["alpha"], (3, 6))
  chex.assert_shape(det["doctor"], (3, 8))
  assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
  valid = np.asarray(jnp.any(codes != 0, axis=(2, 3)))
  alpha = np.asarray(det["alpha"])
  np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)  # over the VALID patients
  assert np.all(alpha[~valid] == 0.0)
  if name != "doctor2vec":
    return  # the mean readout shares the encoders; one padding check (below, with the memory) is enough
  # more padded patient slots, visits and code slots change nothing
  bigger = jnp.pad(codes, ((0, 0), (0, 2), (0, 1), (0, 2)))
  y2, det2 = apply(params, bigger, jnp.pad(tokens, ((0, 0), (0, 3))), kw)
  np.testing.assert_allclose(np.asarray(y2), np.asarray(y), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(det2["alpha"])[:, :6], alpha, rtol=1e-5, atol=1e-7)
  alt = jnp.asarray(np.roll(np.asarray(tokens), 1, axis=0))  # the memory read depends on the trial (query)
  _, det3 = apply(params, codes, alt, kw)
  assert not np.allclose(np.asarray(det3["alpha"]), alpha)


# ------------------------------------------------------------------------------------------------- metrics


def test_ranking_metrics_match_sklearn_and_brute_force():
  from sklearn.metrics import ndcg_score
  rng = np.random.default_rng(2)
  t, d, k = 4, 15, 5
  rate = rng.gamma(1.0, 1.0, (t, d))
  pred = rate + rng.normal(0, 0.7, (t, d))
  trial = np.repeat(np.arange(t), d)
  got = d2v.ranking_metrics(pred.reshape(-1), rate.reshape(-1), trial, k)
  assert abs(got["ndcg_at_k"] - ndcg_score(rate, pred, k=k)) < 1e-9
  prec = np.mean([len(set(np.argsort(-pred[i])[:k]) & set(np.argsort(-rate[i])[:k])) / k for i in range(t)])
  assert abs(got["precision_at_k"] - prec) < 1e-12
  perfect = d2v.ranking_metrics(rate.reshape(-1), rate.reshape(-1), trial, k)
  assert perfect == {"precision_at_k": 1.0, "ndcg_at_k": 1.0}
  r = d2v.regression_metrics(pred.reshape(-1), rate.reshape(-1))
  from sklearn.metrics import mean_absolute_error, r2_score
  assert abs(r["mae"] - mean_absolute_error(rate.reshape(-1), pred.reshape(-1))) < 1e-9
  assert abs(r["r2"] - r2_score(rate.reshape(-1), pred.reshape(-1))) < 1e-9


def test_ridge_matches_sklearn_and_count_features():
  from sklearn.linear_model import Ridge
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(60, 7)), rng.normal(size=60)
  w, b = d2v.ridge_fit(x, y, 2.5)
  ref = Ridge(alpha=2.5).fit(x, y)
  np.testing.assert_allclose(w, ref.coef_, rtol=1e-8, atol=1e-10)
  assert abs(b - ref.intercept_) < 1e-8
  g = D.generate(SMALL)
  v = D.num_codes(SMALL)
  f = d2v.count_features(g["doctors"], g["trials"], v)
  assert f.shape == (SMALL.num_train_trials + SMALL.num_test_trials, SMALL.num_doctors, 4 * v + 7)
  d, t = 3, 2  # f_all * inc at the trial's biomarker = the fraction of the doctor's patients with that code
  n = g["doctors"]["num_patients"][d]
  bio = g["trials"]["biomarker"][t]
  frac = np.mean([bio in g["doctors"]["codes"][d, i] for i in range(n)])
  assert abs(f[t, d, bio] - frac) < 1e-12
  assert f[t, d, -1] == float(g["doctors"]["country"][d] == g["trials"]["country"][t])


# ------------------------------------------------------------------------------------------------- experiment


def test_smoke_flagfile_in_process(tmp_path, tfds_dir):
  """The smoke flagfile's settings (parsed by absl from the file) through the driver: every method and claim."""
  from absl import flags
  from experiments import doctor2vec as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}", f"--data_dir={tfds_dir}"])
  cfg = exp.config_from_flags(fv)
  assert cfg.methods == ("doctor2vec", "mean_patients", "ridge") and cfg.dataset == "patient_visits/small"
  summary = dx.run(cfg, str(tmp_path))
  assert set(summary["table"]) == {"doctor2vec", "mean_patients", "ridge"}
  for row in summary["table"].values():
    for k in ("mae", "rmse", "r2", "precision_at_k", "ndcg_at_k"):
      assert np.isfinite(row[k][0]), (k, row)
  assert {"doctor2vec_beats_mean_patients", "doctor2vec_beats_ridge"} <= set(summary["claims"])
  res = json.loads((tmp_path / "doctor2vec_seed0" / "results.json").read_text())
  assert res["readout"] == "memory" and res["model_class"] == "Doctor2Vec"
  assert "| doctor2vec |" in (tmp_path / "summary.md").read_text()
  again = dx.run(cfg, str(tmp_path))  # finished runs are reused
  assert again["table"] == summary["table"]


@pytest.mark.parametrize("args, message", [
    (["--methods=doctor2vec,lstm"], "--methods"),
    (["--steps=0"], "--steps must be positive"),
    (["--loss=l1"], "--loss"),
    (["--ridge_l2=0"], "--ridge_l2 must be positive"),
    (["--seeds=1,1"], "distinct seeds"),
    (["--top_k=0"], "--top_k must be positive"),
])
def test_bad_flags_give_one_clear_error(args, message):
  check_flag_error("doctor2vec", args, message)


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path, tfds_dir):
  """The smoke flagfile end to end through the CLI (~40 s); prints the summary table."""
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  proc = subprocess.run([sys.executable, "-m", "experiments.doctor2vec", f"--flagfile={SMOKE}",
                         f"--workdir={tmp_path}", f"--data_dir={tfds_dir}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["table"]) == {"doctor2vec", "mean_patients", "ridge"} and "| method |" in proc.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.doctor2vec", "--steps=0", f"--workdir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "error: --steps must be positive" in bad.stderr, bad.stderr[-2000:]
