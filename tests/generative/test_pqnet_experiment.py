"""PQ-NET end to end (``research.train.pqnet``, ``research.methods.pqnet_experiment``, ``experiments.pqnet``): both
stages train through the ONE loop with falling losses, the sparse part assembly equals ``pqnet.assemble`` and
reproduces the ground-truth voxels from the true parts, the generation metrics score a set against itself as perfect,
the smoke flagfile runs through the library and a rerun reuses it, bad flags are one clear error."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from research.data import parts3d
from research.models.generative import pqnet
from research.train import loop
from research.train import pqnet as pt
from research.train import task as task_lib
from research.train.generative_metrics import voxel_iou

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
R = parts3d.CONFIGS["small"].resolution


@pytest.fixture(scope="module")
def data_dir(parts3d_small):
  return parts3d_small


@pytest.fixture(scope="module")
def train(data_dir):
  return parts3d.load_arrays("train", data_dir, "small")


def _config(flagfile, *args, **overrides):
  from experiments import pqnet as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={os.path.join(CONFIGS, flagfile)}", *args])
  cfg = exp.config_from_flags(fv)
  return dataclasses.replace(cfg, **overrides) if overrides else cfg


def _losses_through_loop(task, batches, steps):
  """Trains ``task`` for ``steps`` loop steps (no workdir); the training loss of every step."""
  losses = []

  def record(step, metrics):
    losses.append(float(metrics["loss"]))
    return False

  cfg = loop.LoopConfig(num_steps=steps, eval_every=0, checkpoint_every=0, progress_bar=False, tensorboard=False)
  loop.train(task, batches, config=cfg, mesh=task_lib.make_mesh(), workdir=None, on_step=record)
  return np.asarray(losses)


def test_both_stages_train_through_the_loop(train):
  n = train["num_parts"][:6]
  grids = pt.part_grids(train["parts"][:6], train["part_boxes"][:6], n, 8)
  samples = pt.part_samples(grids, n, points_per_part=64, seed=0)
  ae = pt.PartAETask(model=pqnet.PartAutoencoder(code_dim=8, enc_width=4, width=4, dec_layers=3),
                     learning_rate=3e-3)
  losses = _losses_through_loop(ae, pt.part_batches(samples, global_batch_size=16, num_points=32, seed=0), 30)
  assert np.all(np.isfinite(losses))
  assert losses[-5:].mean() < 0.7 * losses[:5].mean(), losses

  codes = pt.encode_parts(ae, *ae.init(jax.random.key(0), {"voxels": jnp.zeros((2, 8, 8, 8))}), grids, n)
  assert codes.shape == (6, parts3d.MAX_PARTS, 8) and not codes[0, int(n[0]):].any()  # padding rows zero
  s2s = pt.Seq2SeqTask(model=pqnet.PartSeq2Seq(code_dim=8, hidden=8, num_layers=1, latent_dim=8, head_hidden=8),
                       learning_rate=1e-2, stop_weight=1.0)
  batches = pt.shape_batches(codes, train["part_boxes"][:6], n, global_batch_size=8, seed=0)
  losses = _losses_through_loop(s2s, batches, 30)
  assert np.all(np.isfinite(losses))
  assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses


def test_sparse_assembly_matches_assemble_and_ground_truth(train):
  s = 6
  boxes, n = train["part_boxes"][:s], train["num_parts"][:s]
  fine = pt.part_grids(train["parts"][:s], boxes, n, 4 * R)  # each part in its own frame, finely resampled
  ids = np.stack(np.meshgrid(np.arange(s), np.arange(parts3d.MAX_PARTS), indexing="ij"), -1).astype(np.float32)

  def perfect(codes, local):  # a perfect part decoder: codes hold (shape, part)
    return np.stack([parts3d.occupancy_at(fine[int(c[0]), int(c[1])], x) for c, x in zip(codes, local)])

  occ = pt.assemble_batch(perfect, ids, boxes, n, R, chunk=64, rows_per_call=8)
  gt = train["voxels"][:s] > 0
  np.testing.assert_array_equal(occ > 0.5, gt)  # the true parts in their boxes ARE the shape
  np.testing.assert_array_equal(np.asarray(voxel_iou(jnp.asarray(occ > 0.5), jnp.asarray(gt))), 1.0)

  model = pqnet.PartAutoencoder(code_dim=4, enc_width=4, width=4, dec_layers=2, norm="none")
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1)), jnp.zeros((1, 2, 3)), train=False)
  dec = jax.jit(lambda c, x: jax.nn.sigmoid(model.apply(v, c, x, method="decode")))
  codes = np.random.default_rng(0).uniform(size=(s, parts3d.MAX_PARTS, 4)).astype(np.float32)
  sparse = pt.assemble_batch(dec, codes, boxes, n, R, chunk=128, rows_per_call=16)
  for i in range(3):
    dense = pqnet.assemble(lambda u: dec(jnp.asarray(codes[i]), u), boxes[i], R, num_parts=int(n[i]))
    np.testing.assert_allclose(sparse[i], np.asarray(dense), atol=1e-6)
  bad = boxes.copy()
  bad[0, 0] = np.nan  # a non-finite (generated) box queries nothing
  assert pt.assembly_rows(bad[:1], n[:1], R, 64)[0][:, 1].min() == 1


def test_generation_metrics_of_a_set_against_itself(train):
  from research.methods import pqnet_experiment as pe
  cfg = pe.PQNetConfig(cloud_points=32)
  vox = train["voxels"][:6] > 0
  ref, _ = pe.point_clouds(vox, 32, seed=1)
  m = pe.generation_metrics(vox, train["num_parts"][:6], ref, cfg, seed=1)
  assert m["mmd_cd"] == pytest.approx(0.0, abs=1e-9) and m["cov_cd"] == 1.0 and m["valid"] == 1.0
  assert m["plausible_part_count"] == 1.0
  empty = np.zeros_like(vox)
  m = pe.generation_metrics(empty, None, ref, cfg, seed=1)
  assert m["mmd_cd"] is None and m["cov_cd"] == 0.0 and m["valid"] == 0.0


def test_smoke_flagfile_runs_through_the_library_and_reruns_reuse(data_dir, tmp_path):
  from research.methods import pqnet_experiment as pe
  cfg = _config("pqnet_smoke.flags", data_dir=data_dir)
  work = str(tmp_path / "run")
  summary = pe.run(cfg, work)
  run = os.path.join(work, "seed0")
  for name in ("results.json", "run.json", "reconstructions.png", "samples.png", "interpolation.png",
               "part_ae/results.json", "seq2seq/results.json", "latent_gan/results.json"):
    assert os.path.exists(os.path.join(run, name)), name
  assert os.path.exists(os.path.join(work, "summary.md")) and os.path.exists(os.path.join(work, "summary.json"))
  res = summary["runs"][0]
  for key in ("recon_iou", "recon_part_count_accuracy", "part_ae_only_iou", "part_ae_only_chamfer",
              "part_ae_eval_part_iou", "seq2seq_eval_free_box_mse", "seq2seq_eval_part_count_accuracy",
              "latent_gan_eval_critic_gap", "gen_train_shapes_mmd_cd", "gen_latent_gan_valid", "interp_valid"):
    assert math.isfinite(res[key]), key
  for name in pe.GENERATORS:  # Chamfer metrics exist unless every shape is empty
    if res[f"gen_{name}_valid"] > 0:
      assert math.isfinite(res[f"gen_{name}_mmd_cd"]) and 0 <= res[f"gen_{name}_cov_cd"] <= 1
  assert res["recon_chamfer"] is None or math.isfinite(res["recon_chamfer"])
  assert 0 < summary["baseline"]["mean_shape_iou"] < 1
  assert summary["reconstruction"]["part AE only (true boxes and count)"]["iou"][0] > \
      summary["baseline"]["mean_shape_iou"]  # 20 steps already beat the mean shape
  stamp = os.path.getmtime(os.path.join(run, "results.json"))
  again = pe.run(cfg, work)  # reused: nothing retrained
  assert os.path.getmtime(os.path.join(run, "results.json")) == stamp
  assert again["reconstruction"] == json.loads(json.dumps(summary["reconstruction"]))


@pytest.mark.parametrize("args,message", [
    (["--num_points=2048"], "--num_points=2048 exceeds --points_per_part=128"),
    (["--part_resolution=12"], "--part_resolution=12 must be a power of two"),
    (["--interp_pair=1,1"], "--interp_pair must be two different"),
    (["--seeds=0,0"], "--seeds must list distinct seeds"),
    (["--ae_steps=0"], "--ae_steps must be positive"),
])
def test_bad_flags_are_one_clear_error(args, message):
  with pytest.raises(ValueError, match=message):
    _config("pqnet_smoke.flags", *args)


def test_out_of_range_eval_settings_name_the_flag(data_dir):
  from research.methods import pqnet_experiment as pe
  with pytest.raises(ValueError, match="--num_eval_shapes=99 exceeds the 30 test shapes"):
    pe.load_data(_config("pqnet_smoke.flags", data_dir=data_dir, num_eval_shapes=99))
  with pytest.raises(ValueError, match=r"--interp_pair=\[0, 20\] must index the 12"):
    pe.load_data(_config("pqnet_smoke.flags", data_dir=data_dir, interp_pair=(0, 20)))
