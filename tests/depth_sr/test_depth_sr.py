"""PAG-Net depth super-resolution: model shapes / attention / gradients, the Task on the loop, RMSE vs numpy,
data transforms, flags and the smoke flagfile."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from research.data import rgbd
from research.data import rgbd_render as render
from research.data.memory import ArrayBatches
from research.models import registry
from research.models.segmentation import depth_sr as models
from research.train import depth_sr as dsr
from research.train import loop
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "depth_sr_smoke.flags")
DEFAULT_FLAGS = os.path.join(ROOT, "experiments", "configs", "depth_sr.flags")
TINY = dict(features=8, growth=4, block_layers=1)


def _key(seed):
  """An ``rbg`` key: XLA:CPU compiles threefry-based parameter initialisation of these networks slowly (the task
  does the same, ``DepthSRTask.init``)."""
  return jax.random.key(seed, impl="rbg")


def _inputs(scale, b=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  lr = jnp.asarray(rng.normal(size=(b, size // scale, size // scale, 1)), jnp.float32)
  image = jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32)
  return lr, image


# --------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("name", ["pag_net", "depth_sr_unguided"])
def test_output_shapes_and_stages(name, scale):
  """Shapes by abstract evaluation (no compilation): output, bicubic, one attention map per x2 stage."""
  net = registry.create(name, scale=scale, **TINY)
  lr, image = _inputs(scale)
  (out, aux), variables = jax.eval_shape(functools.partial(net.init_with_output, train=True), _key(0), lr, image)
  chex.assert_shape([out, aux["bicubic"]], [(2, 32, 32, 1)] * 2)
  stages = int(np.log2(scale))
  if name == "pag_net":
    chex.assert_shape(list(aux["attention"]), [(2,) + (32 // scale * 2 ** (i + 1),) * 2 + (1,)
                                               for i in range(stages)])
    assert sum(1 for k in variables["params"] if k.startswith("guide_")) == stages + 1
    assert sum(1 for k in variables["params"] if k.endswith("_attention")) == stages
  else:
    assert aux["attention"] == () and not any(k.startswith("guide_") for k in variables["params"])
    without = jax.eval_shape(functools.partial(net.init_with_output, train=True), _key(0), lr, None)
    chex.assert_trees_all_equal_shapes(without, ((out, aux), variables))  # the image is not needed
  assert name in registry.names(models.FAMILY)


@pytest.fixture(scope="module")
def pag8():
  """PAG-Net x8 (tiny), its parameters and ONE compiled ``(loss, (out, aux)), grads`` of an L1 loss w.r.t.
  (params, image), shared by the tests below."""
  net = registry.create("pag_net", scale=8, **TINY)
  lr, image = _inputs(8, seed=3)
  target = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 1)), jnp.float32)
  params = jax.jit(functools.partial(net.init, train=False))(_key(0), lr, image)["params"]

  def loss(p, img):
    out, aux = net.apply({"params": p}, lr, img, train=True)
    return jnp.mean(jnp.abs(out - target)), (out, aux)

  return net, params, lr, image, jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def test_attention_lies_in_unit_interval_and_the_residual_is_added_to_bicubic(pag8):
  _, params, lr, image, fn = pag8
  (_, (out, aux)), _ = fn(params, image)
  assert len(aux["attention"]) == 3
  for a in aux["attention"]:
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and float(a.max() - a.min()) > 0
  assert np.isfinite(np.asarray(out)).all()
  zero_head = dict(params, head_out=jax.tree.map(jnp.zeros_like, params["head_out"]))
  (_, (out, aux)), _ = fn(zero_head, image)  # the same compiled function
  chex.assert_trees_all_close(out, jax.image.resize(lr, (2, 32, 32, 1), "cubic"), atol=1e-6)
  chex.assert_trees_all_close(out, aux["bicubic"])


def test_pixel_shuffle_matches_a_numpy_loop():
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4 * 6))
  y = np.asarray(models.pixel_shuffle(jnp.asarray(x), 2))
  want = np.zeros((2, 6, 10, 6))
  for i in range(3):
    for j in range(5):
      for a in range(2):
        for b in range(2):
          want[:, 2 * i + a, 2 * j + b] = x[:, i, j, (2 * a + b) * 6:(2 * a + b + 1) * 6]
  np.testing.assert_allclose(y, want, rtol=1e-6)


def test_gradients_reach_the_depth_branch_the_guidance_branch_and_the_attention(pag8):
  _, params, _, image, fn = pag8
  _, (grads, image_grad) = fn(params, image)
  norms = {k: float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(v))))
           for k, v in grads.items()}
  groups = {"depth": [k for k in norms if k.startswith("depth_in") or "_block" in k or k.endswith("_up")],
            "guidance": [k for k in norms if k.startswith("guide_")],
            "attention": [k for k in norms if k.endswith("_attention")],
            "fusion": [k for k in norms if k.endswith("_fuse")]}
  for group, keys in groups.items():
    assert keys, group
    for k in keys:
      assert np.isfinite(norms[k]) and norms[k] > 0, (group, k, norms[k])
  assert float(jnp.abs(image_grad).sum()) > 0  # the output depends on the colour image


def test_bad_model_settings():
  with pytest.raises(ValueError, match="scale=3"):
    registry.create("pag_net", scale=3)
  with pytest.raises(ValueError, match="features"):
    registry.create("depth_sr_unguided", scale=4, features=0)
  net = registry.create("pag_net", scale=4, **TINY)
  lr, _ = _inputs(4)
  with pytest.raises(ValueError, match="image must be"):
    jax.eval_shape(functools.partial(net.init, train=False), _key(0), lr, jnp.zeros((2, 16, 16, 3)))


# --------------------------------------------------------------------------------------------------- data


def _arrays(n=6, size=32, seed=0):
  cfg = render.SceneConfig(image_size=size, max_objects=4)
  items = [render.render_scene(render.scene_rng(seed, i), cfg) for i in range(n)]
  return {"image": np.stack([s.image for s in items]), "depth": np.stack([s.depth for s in items])[..., None]}


def test_degrade_transform_crops_on_the_scale_grid_and_eval_batches_pad():
  arrays = _arrays(4)
  t = dsr.DegradeTransform(8, crop=16, flip=True, noise_std=0.0)
  out = t({k: v.copy() for k, v in arrays.items()}, np.random.default_rng(0))
  chex.assert_shape([out["image"], out["depth"], out["depth_lr"]], [(4, 16, 16, 3), (4, 16, 16, 1), (4, 2, 2, 1)])
  np.testing.assert_allclose(out["depth_lr"], rgbd.degrade(out["depth"], 8), rtol=1e-6)
  for b in range(4):  # every crop (maybe flipped) is a window of its scene at offsets that are multiples of 8
    found = [(y, x) for y in range(0, 17, 8) for x in range(0, 17, 8)
             if any(np.array_equal(arrays["depth"][b, y:y + 16, x:x + 16][:, ::f], out["depth"][b]) and
                    np.array_equal(arrays["image"][b, y:y + 16, x:x + 16][:, ::f], out["image"][b]) for f in (1, -1))]
    assert found, b
  batches = list(dsr.eval_batches(arrays, scale=4, global_batch_size=3, noise_std=0.01, seed=5)())
  assert [b["valid"].tolist() for b in batches] == [[1, 1, 1], [1, 0, 0]]
  again = list(dsr.eval_batches(arrays, scale=4, global_batch_size=3, noise_std=0.01, seed=5)())
  np.testing.assert_array_equal(batches[1]["depth_lr"], again[1]["depth_lr"])  # the same inputs every pass
  assert np.all(batches[1]["depth"][1:] == 0)
  with pytest.raises(ValueError, match="--crop=12"):
    dsr.DegradeTransform(8, crop=12)
  with pytest.raises(ValueError, match="does not divide the image size 24x24"):
    dsr.eval_batches({"image": np.zeros((1, 24, 24, 3), np.uint8), "depth": np.zeros((1, 24, 24, 1))}, scale=16,
                     global_batch_size=1)


# ------------------------------------------------------------------------------------------- task and loop


def _np_bicubic_up(lr, scale):
  m = rgbd.cubic_resize_matrix(lr.shape[1], lr.shape[1] * scale)
  return np.einsum("ih,bhwc,jw->bijc", m, lr.astype(np.float64), m)


def _np_dilate(mask, r):
  out = np.zeros_like(mask)
  h, w = mask.shape
  for i, j in zip(*np.nonzero(mask)):
    out[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1] = True
  return out


def test_eval_rmse_and_regions_match_float64_numpy():
  """With the residual head zeroed the network IS bicubic upsampling: both RMSEs equal a float64 numpy RMSE over
  the real rows, in every region (edge band and texture pixels recomputed with numpy loops)."""
  arrays = _arrays(5, seed=1)
  task = dsr.DepthSRTask(model="pag_net", scale=4, model_kwargs=TINY, band=1)
  batch = next(iter(dsr.eval_batches(arrays, scale=4, global_batch_size=8, noise_std=0.02, seed=0)()))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  params, _ = jax.jit(lambda k: task.init(k, abstract))(jax.random.key(0))
  params = dict(params, head_out=jax.tree.map(jnp.zeros_like, params["head_out"]))
  step = jax.jit(lambda p, b: task.eval_step(types.SimpleNamespace(params=p), b))
  sums, _ = step(params, {k: jnp.asarray(v) for k, v in batch.items()})
  metrics = task.eval_metrics(jax.tree.map(np.asarray, sums), None)
  real = batch["valid"] > 0
  target = batch["depth"][real].astype(np.float64)
  up = _np_bicubic_up(batch["depth_lr"][real], 4)
  se = (up - target) ** 2
  edge = np.stack([_np_dilate(render.depth_edges(t[..., 0], task.edge_threshold), 1) for t in target])
  img = batch["image"][real].astype(np.float64)
  colour = np.zeros(edge.shape, bool)
  for b in range(len(img)):
    for i in range(img.shape[1]):
      for j in range(img.shape[2]):
        for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
          if 0 <= i + di < img.shape[1] and 0 <= j + dj < img.shape[2]:
            colour[b, i, j] |= np.abs(img[b, i, j] - img[b, i + di, j + dj]).max() > task.colour_threshold
  texture = colour & ~edge
  for prefix, mask in (("", np.ones(edge.shape, bool)), ("edge_", edge), ("texture_", texture)):
    want = np.sqrt(se[..., 0][mask].mean())
    np.testing.assert_allclose(metrics[f"{prefix}bicubic_rmse"], want, rtol=1e-4)
    np.testing.assert_allclose(metrics[f"{prefix}rmse"], want, rtol=1e-4)
    assert metrics[f"{prefix}pixels"] == mask.sum()
  assert metrics["images"] == 5 and abs(metrics["gain"]) < 1e-4 and texture.sum() > 0 and edge.sum() > 0
  assert 0 <= metrics["texture_attention"] <= 1


@pytest.mark.slow
def test_task_trains_through_the_loop():
  """PAG-Net x8 on the loop with noisy inputs (-m slow: the default suite's smoke test below trains both models at x4
  and x8 through the experiment, i.e. through the same loop, and checks the losses are finite)."""
  model = "pag_net"
  arrays = _arrays(8, seed=2)
  task = dsr.DepthSRTask(model=model, scale=8, model_kwargs=TINY, learning_rate=1e-3, num_steps=4)
  data = ArrayBatches(arrays, global_batch_size=8, seed=0, transform=dsr.DegradeTransform(8, crop=16, noise_std=0.01))
  evals = dsr.eval_batches(arrays, scale=8, global_batch_size=4)
  cfg = loop.LoopConfig(num_steps=4, log_every=1, eval_every=0, checkpoint_every=0, progress_bar=False)
  state, results = loop.train(task, data, config=cfg, mesh=task_lib.make_mesh(), workdir=None, eval_data=evals)
  assert int(state.step) == 4 and np.isfinite(results["final_train_loss"])
  for k in ("eval_rmse", "eval_bicubic_rmse", "eval_edge_rmse", "eval_texture_rmse"):
    assert np.isfinite(results[k]) and results[k] > 0, k
  assert results["model"] == model and results["scale"] == 8


def test_task_rejects_bad_batches_and_settings():
  with pytest.raises(ValueError, match="2, 4, 8 or 16"):
    dsr.DepthSRTask(scale=6)
  with pytest.raises(ValueError, match="--loss"):
    dsr.DepthSRTask(loss_type="huber")
  task = dsr.DepthSRTask(scale=16, model_kwargs=TINY)
  bad = {"image": jax.ShapeDtypeStruct((2, 24, 24, 3), jnp.uint8), "depth": jax.ShapeDtypeStruct((2, 24, 24, 1),
                                                                                                 jnp.float32),
         "depth_lr": jax.ShapeDtypeStruct((2, 1, 1, 1), jnp.float32)}
  with pytest.raises(ValueError, match="does not divide the image size 24x24"):
    task.init(jax.random.key(0), bad)


# ---------------------------------------------------------------------------------------- experiment flags


@pytest.mark.parametrize("kwargs, message", [
    (dict(scales=(3,)), "scale 3 is not 2, 4, 8 or 16"),
    (dict(scales=(32,)), "scale 32 is not 2, 4, 8 or 16"),
    (dict(scales=(4, 4)), "distinct scales"),
    (dict(crop=20, scales=(8,)), "--crop=20 must be a multiple of every scale"),
    (dict(models=("pag_net", "pag_net")), "twice"),
    (dict(models=("srcnn",)), "choose from"),
    (dict(num_steps=0), "--num_steps must be positive"),
    (dict(loss="huber"), "--loss"),
    (dict(dataset_config="huge"), "--dataset_config"),
    (dict(noise_std=-1.0), "--noise_std must be >= 0"),
])
def test_config_bad_values(kwargs, message):
  from research.methods.depth_sr_experiment import DepthSRConfig
  with pytest.raises(ValueError, match=message):
    DepthSRConfig(**kwargs)


@pytest.mark.parametrize("flagfile", [SMOKE, DEFAULT_FLAGS], ids=os.path.basename)
def test_flagfiles_parse(flagfile):
  from experiments import depth_sr as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={flagfile}"])
  cfg = exp.config_from_flags(fv)
  header = [line for line in open(flagfile) if line.startswith("#")]
  assert any("Command:" in line for line in header) and any("wall" in line.lower() for line in header)
  given = [line.strip()[2:].partition("=")[0] for line in open(flagfile) if line.startswith("--")]
  fields = {f.name for f in dataclasses.fields(cfg)} | {"workdir"}
  assert given and set(given) <= fields


def test_bad_scale_flag_is_a_clear_error():
  from experiments import depth_sr as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", "--scale=3"])
  with pytest.raises(ValueError, match="--scales=3: scale 3 is not 2, 4, 8 or 16"):
    exp.config_from_flags(fv)
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", "--scales=4,16", "--dataset_config=small", "--crop=24"])
  with pytest.raises(ValueError, match="--crop=24 must be a multiple of every scale"):
    exp.config_from_flags(fv)


@pytest.mark.slow
def test_cli_bad_scale_is_one_clear_error(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  proc = subprocess.run([sys.executable, "-m", "experiments.depth_sr", f"--workdir={tmp_path}",
                         "--data_dir=/nonexistent", "--scale=3"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1 and "error: --scales=3: scale 3 is not 2, 4, 8 or 16" in proc.stderr, \
      proc.stderr[-2000:]


def test_smoke_flagfile_runs_through_the_library(tmp_path):
  """The smoke flagfile, parsed with the experiment's flags and run in-process (x4 and x8, guided and
  unguided, a few steps each on shapes_rgbd/small): every metric is finite, the summary is written, and a second
  call reuses the finished runs."""
  from experiments import depth_sr as exp
  from research.methods import depth_sr_experiment
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}"])
  cfg = dataclasses.replace(exp.config_from_flags(fv), data_dir=str(tmp_path / "tfds"))
  summary = depth_sr_experiment.run(cfg, str(tmp_path / "run"))
  assert set(summary["table"]) == {f"x{s}" for s in cfg.scales}
  for rows in summary["table"].values():
    assert set(rows) == {"bicubic", "pag_net", "depth_sr_unguided"}
    for row in rows.values():
      assert all(np.isfinite(v[0]) for v in row.values())
  assert {f"x{s}_guided_lt_unguided_lt_bicubic" for s in cfg.scales} <= set(summary["claims"])
  stored = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert stored["table"] == json.loads(json.dumps(summary["table"]))
  for scale in cfg.scales:
    for model in cfg.models:  # every run trained through research.train.loop.train with a finite loss
      results = json.loads((tmp_path / "run" / f"x{scale}_{model}_seed0" / "results.json").read_text())
      assert results["step"] == cfg.num_steps and np.isfinite(results["final_train_loss"])
      assert results["model"] == model and results["scale"] == scale
  assert "| scale |" in (tmp_path / "run" / "summary.md").read_text()
  again = depth_sr_experiment.run(cfg, str(tmp_path / "run"))
  assert again["table"] == summary["table"]
