"""TCC (Dwibedi et al. 2019): ops vs float64 numpy loops, metrics vs scipy, model, tasks on the loop, CLI smoke."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from research.models.sequence.tcc import TCCNet
from research.ops import tcc as ops
from research.train import tcc as tcc_train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "tcc_smoke.flags")


# ------------------------------------------------------------------------------------------ numpy references


def _np_sim(a, b, temperature):
  d = a.shape[-1]
  return np.array([[-np.sum((x - y) ** 2) / d / temperature for y in b] for x in a])


def _np_softmax(z, mask):
  z = np.where(mask > 0, z, -np.inf)
  e = np.exp(z - z.max())
  return e / e.sum()


def _np_pair_loss(u, v, um, vm, variant, temperature, steps, lam):
  """Loops over frames: soft NN (Eq. 1), then the cycle-back loss of ``variant``; 0 on padded frames."""
  out = np.zeros(len(u))
  for i in range(len(u)):
    if not um[i]:
      continue
    alpha = _np_softmax(_np_sim(u[i:i + 1], v, temperature)[0], vm)
    vt = (alpha[:, None] * v).sum(0)
    logits = _np_sim(vt[None], u, temperature)[0]
    beta = _np_softmax(logits, um)
    if variant == "classification":
      out[i] = -np.log(beta[i])
    else:
      mu = np.sum(beta * steps)
      var = np.sum(beta * (steps - mu) ** 2)
      out[i] = (steps[i] - mu) ** 2 / var + lam * np.log(np.sqrt(var)) if variant == "regression" else \
          (steps[i] - mu) ** 2
  return out


def _np_tcc(emb, mask, variant, temperature, steps, lam):
  total, count = 0.0, 0.0
  for a in range(len(emb)):
    for b in range(len(emb)):
      if a == b or mask[b].sum() == 0:
        continue
      per = _np_pair_loss(emb[a], emb[b], mask[a], mask[b], variant, temperature, steps[a], lam)
      total += per[mask[a] > 0].sum()
      count += mask[a].sum()
  return total / count


def _random_batch(seed=0, b=3, t=7, d=5):
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(b, t, d))
  mask = np.ones((b, t))
  mask[1, 5:] = 0  # padded frames in one sequence
  mask[2, 6:] = 0
  steps = np.sort(rng.choice(20, size=(b, t), replace=True), axis=1).astype(np.float64) + np.arange(t)
  return emb, mask, steps


# ----------------------------------------------------------------------------------------------------- ops


def test_soft_nearest_neighbor_matches_numpy_and_ignores_padding():
  emb, mask, _ = _random_batch()
  u, v, vm = emb[0], emb[1], mask[1]
  with jax.enable_x64(True):
    vt, alpha = ops.soft_nearest_neighbor(jnp.asarray(u), jnp.asarray(v), temperature=0.3, v_mask=jnp.asarray(vm))
    chex.assert_shape([vt, alpha], [u.shape, (len(u), len(v))])
    for i in range(len(u)):
      a = _np_softmax(_np_sim(u[i:i + 1], v, 0.3)[0], vm)
      np.testing.assert_allclose(np.asarray(alpha[i]), a, rtol=1e-10, atol=1e-12)
      np.testing.assert_allclose(np.asarray(vt[i]), (a[:, None] * v).sum(0), rtol=1e-10)
    assert np.all(np.asarray(alpha)[:, vm == 0] < 1e-200)
    # a padded frame's value cannot leak in: change it, nothing moves
    v2 = v.copy()
    v2[vm == 0] = 1e3
    vt2, _ = ops.soft_nearest_neighbor(jnp.asarray(u), jnp.asarray(v2), temperature=0.3, v_mask=jnp.asarray(vm))
    chex.assert_trees_all_close(vt, vt2, rtol=1e-12)


@pytest.mark.parametrize("variant", ops.VARIANTS)
def test_losses_match_float64_numpy_loops(variant):
  emb, mask, steps = _random_batch(1)
  lam = 0.5  # large, so the log-sigma term matters in the comparison
  with jax.enable_x64(True):
    got = ops.tcc_loss(jnp.asarray(emb), jnp.asarray(mask), variant=variant, temperature=0.7,
                       steps=jnp.asarray(steps), lam=lam)
    total, count = ops.tcc_loss(jnp.asarray(emb), jnp.asarray(mask), variant=variant, temperature=0.7,
                                steps=jnp.asarray(steps), lam=lam, reduce=False)
    per = ops.pair_loss(jnp.asarray(emb[1]), jnp.asarray(emb[2]), variant=variant, temperature=0.7,
                        u_mask=jnp.asarray(mask[1]), v_mask=jnp.asarray(mask[2]), u_steps=jnp.asarray(steps[1]),
                        lam=lam)
  want = _np_tcc(emb, mask, variant, 0.7, steps, lam)
  np.testing.assert_allclose(float(got), want, rtol=1e-9)
  np.testing.assert_allclose(float(total / count), want, rtol=1e-9)
  assert float(count) == sum(mask[a].sum() * (len(emb) - 1) for a in range(len(emb)))
  np.testing.assert_allclose(np.asarray(per), _np_pair_loss(emb[1], emb[2], mask[1], mask[2], variant, 0.7,
                                                            steps[1], lam), rtol=1e-9, atol=1e-12)


def test_identical_sequences_are_cycle_consistent_and_cheaper_than_shuffled():
  rng = np.random.default_rng(3)
  t = 12
  base = np.cumsum(rng.normal(size=(t, 8)), axis=0)  # a trajectory: distinct, ordered frames
  same = jnp.asarray(np.stack([base, base + 1e-3 * rng.normal(size=base.shape)]), jnp.float32)
  # a shuffled resampling (frames drawn with replacement, in random order): some frames have no partner, so cycles
  # cannot all come back (a mere permutation of V would: cycle consistency ignores V's order)
  shuffled = jnp.asarray(np.stack([base, base[rng.integers(0, t, t)]]), jnp.float32)
  ok, n = ops.cycle_consistency(same[0], same[1])
  assert int(ok) == int(n) == t
  np.testing.assert_allclose(float(ops.alignment_kendall_tau(same[0], same[1])), 1.0)
  for variant in ops.VARIANTS:
    kw = dict(variant=variant, temperature=0.1)
    assert float(ops.tcc_loss(same, **kw)) < float(ops.tcc_loss(shuffled, **kw)), variant
  assert float(ops.alignment_kendall_tau(shuffled[0], shuffled[1])) < 0.9


@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_matches_scipy(ties):
  rng = np.random.default_rng(4)
  for _ in range(5):
    n = 15
    x = rng.integers(0, 5, n) if ties else rng.normal(size=n)
    y = rng.integers(0, 4, n) if ties else x + rng.normal(size=n)
    want = scipy.stats.kendalltau(x, y).statistic
    np.testing.assert_allclose(float(ops.kendall_tau(jnp.asarray(x), jnp.asarray(y))), want, rtol=1e-5, atol=1e-6)
  mask = np.ones(n)
  mask[10:] = 0
  np.testing.assert_allclose(float(ops.kendall_tau(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))),
                             scipy.stats.kendalltau(x[:10], y[:10]).statistic, rtol=1e-5, atol=1e-6)


def test_alignment_metrics_match_numpy_nearest_neighbours():
  rng = np.random.default_rng(5)
  emb = rng.normal(size=(4, 9, 3)).astype(np.float32)
  got = tcc_train.alignment_metrics(emb)
  taus, ok, n = [], 0, 0
  for a in range(4):
    for b in range(4):
      if a == b:
        continue
      d_ab = ((emb[a][:, None] - emb[b][None]) ** 2).sum(-1)
      nn = d_ab.argmin(1)
      taus.append(scipy.stats.kendalltau(np.arange(9), nn).statistic)
      back = ((emb[b][nn][:, None] - emb[a][None]) ** 2).sum(-1).argmin(1)
      ok += (back == np.arange(9)).sum()
      n += 9
  np.testing.assert_allclose(got["kendall_tau"], np.nanmean(taus), rtol=1e-5)
  np.testing.assert_allclose(got["cycle_accuracy"], ok / n, rtol=1e-6)


@functools.partial(jax.jit, static_argnames="variant")
@chex.assert_max_traces(n=len(ops.VARIANTS))  # once per variant, never again for new values
def _scaled_loss(e, mask, steps, *, variant):
  return ops.tcc_loss(e * 3.0, mask, variant=variant, temperature=0.1, steps=steps)


def test_gradients_finite_and_loss_jits_once():
  chex.clear_trace_counter()
  emb, mask, steps = _random_batch(2)
  emb = jnp.asarray(emb, jnp.float32)
  emb = emb.at[0].set(emb[1])  # identical sequences: the regression variance can get tiny
  mask, steps = jnp.asarray(mask, jnp.float32), jnp.asarray(steps, jnp.float32)
  grad = jax.grad(_scaled_loss)
  for variant in ops.VARIANTS:
    g = grad(emb, mask, steps, variant=variant)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0, variant
  for variant in ops.VARIANTS:
    grad(emb + 1.0, mask, steps, variant=variant)  # new values, no retrace


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match=r"B >= 2"):
    ops.tcc_loss(jnp.zeros((1, 4, 3)))
  with pytest.raises(ValueError, match="variant"):
    ops.tcc_loss(jnp.zeros((2, 4, 3)), variant="triplet")
  with pytest.raises(ValueError, match=r"mask must be \[B, T\]"):
    ops.tcc_loss(jnp.zeros((2, 4, 3)), jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    ops.soft_nearest_neighbor(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="num_sampled_frames"):
    tcc_train.FrameSampler(8, 9)


# ------------------------------------------------------------------------------------------- model, tasks


def test_model_shapes_context_and_steps():
  net = TCCNet(encoder_widths=(4, 8), conv3d_widths=(8,), fc_widths=(8,), embedding_dim=6, num_context=3,
               context_stride=2)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16, 16, 3))
  params = net.init(jax.random.key(1), x)
  out = net.apply(params, x, train=True)
  chex.assert_shape(out, (2, 5, 6))
  idx = net.apply(params, jnp.array([[0, 3, 4]]), method=TCCNet.context_indices)
  np.testing.assert_array_equal(np.asarray(idx), [[[0, 0, 0], [0, 1, 3], [0, 2, 4]]])
  steps = jnp.array([[4, 1], [0, 2]])
  sub = net.apply(params, x, steps=steps)
  chex.assert_trees_all_close(sub, jnp.take_along_axis(out, steps[..., None], axis=1), atol=1e-5)
  # a frame outside every context cannot change the embedding of step 1 (context frames {0, 1} with stride 2 ->
  # frames 0 (clipped) and 1)
  x2 = x.at[:, 4].set(0.0)
  chex.assert_trees_all_close(net.apply(params, x2)[:, 1], out[:, 1], atol=1e-5)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    net.apply(params, x[0])


def test_logistic_and_ridge_helpers():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 4)) * 3
  y = rng.integers(0, 3, 300)
  x = centres[y] + rng.normal(size=(300, 4))
  params = tcc_train.fit_logistic(jnp.asarray(x[:200], jnp.float32), jnp.asarray(y[:200]), 3)
  acc = np.mean(np.asarray(tcc_train.predict_logistic(params, jnp.asarray(x[200:], jnp.float32))) == y[200:])
  assert acc > 0.85
  w = rng.normal(size=4)
  t = x @ w + 0.1 * rng.normal(size=300)
  r2 = tcc_train.ridge_r2(x[:200], t[:200], x[200:], t[200:], l2=0.0)
  fitted = np.linalg.lstsq(np.c_[x[:200], np.ones(200)], t[:200], rcond=None)[0]
  pred = np.c_[x[200:], np.ones(100)] @ fitted
  np.testing.assert_allclose(r2, 1 - np.sum((t[200:] - pred) ** 2) / np.sum((t[200:] - t[200:].mean()) ** 2),
                             rtol=1e-6)


def test_embedding_metrics_oracle_and_random():
  rng = np.random.default_rng(1)
  v, t = 8, 12
  phase = np.sort(rng.uniform(0, 1, (v, t)), axis=1)
  labels = np.minimum((phase * 3).astype(int), 2)
  role = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  oracle = np.stack([phase, phase ** 2], -1).astype(np.float32) + 1e-3 * rng.normal(size=(v, t, 2))
  good = tcc_train.embedding_metrics(oracle.astype(np.float32), phase, labels, role, num_classes=3,
                                     fewshot_videos=(1, 2), fewshot_repeats=2)
  assert good["kendall_tau"] > 0.9 and good["phase_r2"] > 0.95 and good["fewshot2_accuracy"] > 0.85
  bad = tcc_train.embedding_metrics(rng.normal(size=(v, t, 2)).astype(np.float32), phase, labels, role,
                                    num_classes=3, fewshot_videos=(1,))
  assert bad["kendall_tau"] < 0.5 and bad["phase_r2"] < 0.3


# ------------------------------------------------------------------------------------------------- the CLI


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  return subprocess.run([sys.executable, "-m", "experiments.tcc", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def video_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tcc_tfds"))


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path, video_data_dir):
  """The smoke flagfile end to end (~1 min: three short runs on the loop), then a re-run reuses the finished runs."""
  proc = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={video_data_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["table"]) == {"regression", "classification", "supervised"}
  for row in summary["table"].values():
    assert all(np.isfinite(v[0]) for v in row.values())
  assert "head_accuracy" in summary["table"]["supervised"]
  assert "regression_ge_classification" in summary["claims"]
  results = json.loads((tmp_path / "regression_seed0" / "results.json").read_text())
  assert results["step"] == 3 and results["variant"] == "regression"
  assert "| method |" in proc.stdout
  again = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={video_data_dir}")
  assert again.returncode == 0 and json.loads((tmp_path / "summary.json").read_text())["table"] == summary["table"]


def test_cli_bad_flag_is_one_clear_error(tmp_path):
  proc = _run(f"--workdir={tmp_path}", "--data_dir=/nonexistent", "--variant=triplet", timeout=120)
  assert proc.returncode != 0 and "variant" in proc.stderr and "classification" in proc.stderr, proc.stderr[-2000:]
  proc = _run(f"--workdir={tmp_path}", "--data_dir=/nonexistent", "--num_steps=0", timeout=120)
  assert proc.returncode == 1 and "error: --num_steps must be positive" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("kwargs, message", [
    (dict(variants=("triplet",)), "variant"),
    (dict(baseline="oracle"), "--baseline"),
    (dict(num_steps=0), "--num_steps must be positive"),
    (dict(labeled_videos=3, fewshot_videos=(1, 4)), "--labeled_videos=3 must be one of --fewshot_videos"),
    (dict(variants=(), baseline="none"), "nothing to run"),
    (dict(seeds=(0, 0)), "distinct seeds"),
    (dict(fewshot_videos=(30,), labeled_videos=30), "exceeds the eval pool"),
])
def test_config_bad_values(kwargs, message):
  from research.methods.tcc_experiment import TCCConfig
  with pytest.raises(ValueError, match=message):
    TCCConfig(**kwargs)


def test_batch_must_give_two_sequences_per_device():
  from research.methods import tcc_experiment
  n = jax.device_count()
  with pytest.raises(ValueError, match=f"use --batch_size={2 * n}"):
    tcc_experiment.check_devices(tcc_experiment.TCCConfig(batch_size=n))


def test_frame_sampler_and_eval_batches():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (3, 10, 4, 4, 3), dtype=np.uint8)
  labels = np.tile(np.arange(10) // 4, (3, 1))
  out = tcc_train.FrameSampler(10, 6)({"frames": frames, "phase_label": labels}, np.random.default_rng(1))
  chex.assert_shape([out["steps"], out["mask"], out["labels"]], [(3, 6)] * 3)
  assert all(len(set(row)) == 6 and (np.diff(row) > 0).all() for row in out["steps"])  # distinct, sorted
  np.testing.assert_array_equal(out["labels"], out["steps"] // 4)
  train = {"frames": frames[:2], "phase": np.zeros((2, 10)), "phase_label": labels[:2]}
  val = {"frames": frames[2:], "phase": np.ones((1, 10)), "phase_label": labels[2:]}
  batches = list(tcc_train.eval_batches(train, val, global_batch_size=2)())
  assert [b["valid"].tolist() for b in batches] == [[1, 1], [1, 0]]
  assert [b["role"].tolist() for b in batches] == [[0, 0], [1, 0]]
  np.testing.assert_array_equal(batches[1]["frames"][0], frames[2])


def test_preprocess_subtracts_the_static_background():
  rng = np.random.default_rng(0)
  clip = np.repeat(rng.integers(0, 255, (1, 1, 6, 6, 3), dtype=np.uint8), 5, axis=1)
  clip[0, 2, 1, 1] = 0  # one pixel changes in one frame
  x = np.asarray(tcc_train.preprocess(jnp.asarray(clip), True))
  assert np.abs(x[0, [0, 1, 3, 4]]).max() == 0 and np.abs(x[0, 2, 1, 1]).max() > 0
  np.testing.assert_allclose(np.asarray(tcc_train.preprocess(jnp.asarray(clip), False)),
                             (clip / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-6)


def test_smoke_settings_train_tcc_and_the_baseline_through_the_loop(tmp_path, video_data_dir):
  """The default suite's TCC smoke (in-process, the smoke sizes on 4 devices, one variant): both tasks train on the
  one loop, every metric is finite, results.json and summary.json are written (the full CLI run is -m slow)."""
  from research.methods import tcc_experiment
  cfg = tcc_experiment.TCCConfig(
      data_dir=video_data_dir, dataset_config="small", action="pour", variants=("regression",),
      baseline="supervised", seeds=(0,), num_steps=2, batch_size=8, num_sampled_frames=8, encoder_widths=(8, 16),
      conv3d_widths=(8,), embedding_dim=8, num_eval_train=4, fewshot_videos=(1,), fewshot_repeats=1,
      labeled_videos=1, eval_batch_size=4)
  summary = tcc_experiment.run(cfg, str(tmp_path))
  assert set(summary["table"]) == {"regression", "supervised"}
  for row in summary["table"].values():
    assert all(np.isfinite(v[0]) for v in row.values())
  assert json.loads((tmp_path / "regression_seed0" / "results.json").read_text())["step"] == 2
