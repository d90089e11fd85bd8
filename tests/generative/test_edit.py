"""EDIT (issue 15, seed 000): the ``shapes_styles`` data, the generator / multi-domain discriminator, AdaIN, the
two-optimizer ``EDITTask`` and ``experiments.edit`` (smoke flagfile through the library, bad flags)."""

from __future__ import annotations

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests.generative.flag_checks import check_flag_error
from absl import flags

from research import models
from research.data import pipeline, styles
from research.train import edit as edit_lib
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  return d, {split: styles.load_arrays(split, d, "small") for split in styles.SPLITS}


# ------------------------------------------------------------------------------------------------ data


def test_small_config_builds_with_paired_domains_sharing_the_foreground(small):
  data_dir, data = small
  assert pipeline.PROCEDURAL["shapes_styles"] is styles.ShapesStyles
  assert data["train"]["images"].shape == (64, 3, 32, 32, 3) and data["test"]["images"].shape == (16, 3, 32, 32, 3)
  assert data["train"]["semantic"].shape == (64, 32, 32) and data["train"]["semantic"].dtype == np.uint8
  np.testing.assert_array_equal(data["test"]["layout_id"], np.arange(16))
  for split in styles.SPLITS:
    for imgs, sem in zip(data[split]["images"], data[split]["semantic"]):
      fg = sem > 0
      assert fg.any() and not fg.all()
      flat, sketch, texture = imgs
      # flat and texture: the object pixels are exactly the foreground; sketch: dark outlines inside it
      np.testing.assert_array_equal(styles.structure_mask(flat, "flat"), fg)
      np.testing.assert_array_equal(styles.structure_mask(texture, "texture"), fg)
      lines = styles.structure_mask(sketch, "sketch")
      assert lines.any() and not np.any(lines & ~fg)
      assert np.all(sketch[~fg] == 255)
      # every object of the class map has outline pixels
      for c in np.unique(sem[fg]):
        assert np.any(lines & (sem == c))
      assert not np.array_equal(flat, texture) and not np.array_equal(flat, sketch)
  # deterministic: the stored records are the renderer's output for (split seed, layout id), every time
  for i in (0, 5):
    r1, r2 = styles.render_layout(styles.SEEDS["test"], i), styles.render_layout(styles.SEEDS["test"], i)
    for k, d in enumerate(styles.DOMAINS):
      np.testing.assert_array_equal(r1[f"image_{d}"], r2[f"image_{d}"])
      np.testing.assert_array_equal(data["test"]["images"][i, k], r1[f"image_{d}"])
    np.testing.assert_array_equal(data["test"]["semantic"][i], r1["semantic"])
  # train and test layouts differ; the generic pipeline opens the config too
  assert not np.array_equal(data["train"]["semantic"][:16], data["test"]["semantic"])
  assert len(pipeline.get_source("shapes_styles/small", "test", data_dir)) == 16
  with pytest.raises(ValueError, match="domain='photo'"):
    styles.structure_mask(data["test"]["images"][0, 0], "photo")


# ------------------------------------------------------------------------------------------------ model


def _adain_numpy(x, scale, bias, eps=1e-5):
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(scale)[:, None, None] + np.asarray(bias)[:, None, None]


def test_adain_matches_numpy_and_sets_the_channel_statistics():
  from research.models.generative.edit import adain
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.5, (2, 8, 8, 5)).astype(np.float32)
  scale = rng.uniform(0.5, 2.0, (2, 5)).astype(np.float32)
  bias = rng.normal(0, 1, (2, 5)).astype(np.float32)
  y = np.asarray(adain(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias)))
  np.testing.assert_allclose(y, _adain_numpy(x, scale, bias), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(y.mean(axis=(1, 2)), bias, atol=1e-5)  # the style's bias is the channel mean
  np.testing.assert_allclose(y.std(axis=(1, 2)), scale, rtol=1e-5)  # and its scale the channel std


@pytest.mark.slow  # ~10 s idle; the smoke test builds both nets in CI
def test_generator_and_discriminator_shapes():
  g = models.create("edit_generator", width=4, res_blocks=1, style_dim=6, mlp_hidden=8)
  d = models.create("edit_discriminator", num_domains=3, width=4)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 3), minval=-1, maxval=1)
  e = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3), minval=-1, maxval=1)
  v = jax.jit(lambda r: g.init(r, x, e, train=True))(jax.random.PRNGKey(2))
  dv = jax.jit(lambda r: d.init(r, x, train=True))(jax.random.PRNGKey(3))

  @jax.jit
  def run(v, dv):
    style = g.apply(v, e, method="encode_style")
    return {"out": g.apply(v, x, e, train=False), "out_swapped": g.apply(v, x, e[::-1], train=False),
            "content": g.apply(v, x, method="encode_content"), "style": style,
            "adain": g.apply(v, style, method="adain_params"), "logits": d.apply(dv, x, train=True)}

  r = run(v, dv)
  chex.assert_shape(r["out"], (3, 32, 32, 3))
  assert float(jnp.max(jnp.abs(r["out"]))) <= 1.0
  chex.assert_shape(r["content"], (3, 8, 8, 16))
  chex.assert_shape(r["style"], (3, 6))
  assert [p[0].shape for p in r["adain"]] == [(3, 16), (3, 16), (3, 8), (3, 4)]  # 2 per res block, 2 upsamplings
  # the exemplar steers the output (AdaIN), one example at a time
  out, out2 = r["out"], r["out_swapped"]
  assert float(jnp.max(jnp.abs(out2[0] - out[0]))) > 0 and float(jnp.max(jnp.abs(out2[1] - out[1]))) == 0
  logits = r["logits"]
  chex.assert_shape(logits, (3, 8, 8, 3))
  np.testing.assert_array_equal(edit_lib.select_domain(logits, jnp.array([2, 0, 1])),
                                jnp.stack([logits[0, ..., 2], logits[1, ..., 0], logits[2, ..., 1]]))
  with pytest.raises(ValueError, match="multiple of 8"):
    jax.eval_shape(lambda: g.apply(v, x, e[:, :28, :28], train=False))


def test_style_loss_matches_statistics_not_positions():
  """Zero for the exemplar itself; the texture rendering shifted by one stripe period (4 px) keeps (nearly) its
  style, the flat rendering of the same layout does not."""
  kernels = edit_lib.random_feature_kernels(0, 8)
  r = styles.render_layout(styles.SEEDS["test"], 3)
  tex, flat = (edit_lib.to_unit(r[f"image_{d}"])[None] for d in ("texture", "flat"))
  loss = jax.jit(edit_lib.style_statistics_loss)
  assert float(loss(tex, tex, kernels)) == 0.0
  shifted, other = float(loss(np.roll(tex, 4, axis=2), tex, kernels)), float(loss(flat, tex, kernels))
  assert shifted < 0.1 * other, (shifted, other)


# ------------------------------------------------------------------------------------------------ task


def _task(**kw):
  g = models.create("edit_generator", width=4, res_blocks=1, style_dim=8, mlp_hidden=8)
  d = models.create("edit_discriminator", num_domains=3, width=4)
  return edit_lib.EDITTask(generator=g, discriminator=d, num_domains=3, image_shape=(32, 32, 3),
                           optimizers=edit_lib.edit_optimizers(1e-3), feature_width=4,
                           domain_names=styles.DOMAINS, **kw)


def test_unpaired_batches_never_pair_a_layout_across_domains(small):
  _, data = small
  b = next(edit_lib.unpaired_batches(data["train"]["images"], global_batch_size=64, seed=0))
  assert np.all(b["content_domain"] != b["exemplar_domain"])
  pool = data["train"]["images"][np.arange(64), np.arange(64) % 3]
  # every content/exemplar is the rendering of a layout in ITS domain (layout mod 3)
  for key, dom in (("content", "content_domain"), ("exemplar", "exemplar_domain")):
    rows = [int(np.flatnonzero(np.all(edit_lib.to_unit(pool) == x, axis=(1, 2, 3)))[0]) for x in b[key]]
    np.testing.assert_array_equal(np.asarray(rows) % 3, b[dom])
  layout, ex, tgt = edit_lib.paired_eval_rows(16, 3, source=0)
  assert len(layout) == 32 and np.all(layout != ex) and set(tgt) == {1, 2}


@pytest.mark.slow  # ~20 s idle; the smoke test runs the same step in CI
def test_one_step_updates_both_nets_and_compiles_once(small):
  """The smoke flagfile's task (R1 on): the same program as the smoke run's, so the persistent compilation cache
  serves one of the two compilations."""
  from research.methods import edit_experiment as ee
  _, data = small
  t = ee.make_task(_config("edit_smoke.flags"))
  traced = []
  orig = t.update

  def counting(*a, **k):
    traced.append(1)
    return orig(*a, **k)

  t.update = counting
  batches = edit_lib.unpaired_batches(data["train"]["images"], global_batch_size=8, seed=0)
  mesh = task_lib.make_mesh()  # 4 simulated devices: 2 rows each
  first = next(batches)
  _, state = task_lib.init_train_state(t, 0, task_lib.abstract_batch(first), mesh)
  init = jax.device_get(state.params)
  step = task_lib.compiled_train_step(t, mesh)
  state, m = step(state, task_lib.global_batch(first, mesh))
  state, m = step(state, task_lib.global_batch(next(batches), mesh))
  assert len(traced) == 1 and int(state.step) == 2
  final = jax.device_get(state.params)
  for group in ("generator", "discriminator"):
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), init[group], final[group])
    assert all(v > 0 for v in jax.tree.leaves(diff)), group  # every leaf of both groups moved
    adam = [s for s in jax.tree.leaves(state.opt_state[group], is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert [int(s.count) for s in adam] == [2]
  for k in ("discriminator_loss", "generator_loss", "g_adv", "recon_l1", "content_l1", "style_loss", "r1"):
    assert np.isfinite(float(m[k])), k


def test_task_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="--adv_loss='hinge'"):
    _task(adv_loss="hinge")
  with pytest.raises(ValueError, match="--recon_weight must be >= 0"):
    _task(recon_weight=-1.0)


# ------------------------------------------------------------------------------------------------ experiment


def _config(flagfile, **overrides):
  from experiments import edit as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={os.path.join(CONFIGS, flagfile)}"])
  return dataclasses.replace(exp.config_from_flags(fv), **overrides)


def test_smoke_flagfile_runs_through_the_library(small, tmp_path):
  """4 steps on shapes_styles/small: finite metrics for EDIT and the identity baseline at both evals, the sample
  grid, summary files; a second call reuses the finished run."""
  from research.methods import edit_experiment as ee
  data_dir, _ = small
  cfg = _config("edit_smoke.flags", data_dir=data_dir)
  work = str(tmp_path / "run")
  summary = ee.run(cfg, work)
  for row in summary["table"].values():
    for key in ("l1", "psnr", "structure_iou", "exemplar_domain_accuracy", "psnr_sketch", "l1_texture"):
      assert np.isfinite(row[key][0]), key
  ident = summary["table"]["identity (copy the input)"]
  assert ident["structure_iou_texture"][0] == 1.0  # flat and texture share the foreground exactly
  assert 0.0 <= summary["claims"]["classifier_test_accuracy"] <= 1.0
  assert {"psnr_beats_identity", "exemplar_domain_beats_identity", "majority_in_exemplar_domain"} <= set(
      summary["claims"])
  run_results = summary["runs"][0]
  assert run_results["step"] == 4
  assert os.path.exists(os.path.join(work, "seed0", "samples.png")) and os.path.exists(os.path.join(work, "summary.md"))
  again = ee.run(cfg, work)  # reused: same table
  assert again["table"] == summary["table"]


def test_sample_metrics_on_oracle_outputs(small):
  """Outputs = the ground truth with the EXEMPLAR's background level pasted in: structure IoU 1, every output in the
  exemplar's domain (a stub classifier that reads the true domain), background correlation 1 for texture; the
  identity baseline: IoU 1 for texture (flat and texture share the foreground), ~0 domain accuracy."""
  from research.methods import edit_experiment as ee
  _, data = small
  imgs = data["test"]["images"]
  batch = next(edit_lib.paired_eval_batches(imgs, source=0, global_batch_size=32)())
  target, exemplar, domain = batch["target"], batch["exemplar"], batch["exemplar_domain"]
  oracle = target.copy()
  for i in np.flatnonzero(domain == 2):
    bg_t = ~styles.structure_mask(target[i], "texture")
    bg_e = ~styles.structure_mask(exemplar[i], "texture")
    oracle[i][bg_t] = exemplar[i][bg_e].mean()
  truth = {id(a): d for a, d in ((oracle, domain), (batch["content"], np.zeros_like(domain)))}
  stub = lambda x: (None, np.eye(3)[truth[id(x)]])  # noqa: E731
  m = ee.edit_sample_metrics(stub, styles.DOMAINS)(oracle, batch["content"], target, exemplar, domain)
  assert m["structure_iou"] == 1.0 and m["exemplar_domain_accuracy"] == 1.0
  assert m["identity_exemplar_domain_accuracy"] == 0.0 and m["identity_structure_iou_texture"] == 1.0
  assert m["exemplar_background_corr_texture"] > 0.999
  assert abs(m["identity_exemplar_background_corr_texture"]) < 0.9
  assert "exemplar_background_corr_sketch" not in m  # the sketch background is always white


@pytest.mark.parametrize("args,message", [
    (["--data_config=big"], "--data_config"),
    (["--adv_loss=hinge"], "--adv_loss"),
    (["--num_steps=0"], "--num_steps must be positive"),
    (["--r1_weight=-1"], "--r1_weight must be >= 0"),
    (["--seeds=0,0"], "--seeds must list distinct seeds"),
    (["--adv_weight=0", "--style_weight=0"], "--adv_weight=0 and --style_weight=0"),
])
def test_bad_flags_are_one_clear_error(args, message):
  check_flag_error("edit", args, message)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
  from research.methods import edit_experiment as ee
  cfg = _config("edit_smoke.flags", data_dir=str(tmp_path), batch_size=6)
  with pytest.raises(ValueError, match="--batch_size=6 must be a multiple of the 4 devices"):
    ee.run(cfg, str(tmp_path / "run"))
