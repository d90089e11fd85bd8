"""SegFlow (Cheng et al. 2017): network shapes and the branch exchange, resampling / losses / metrics vs float64 numpy
loops, the joint and iterative schedules, the task on the one loop, flag errors and the smoke flagfile."""

from __future__ import annotations

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

from research.data import video
from research.data import video_render as render
from research.data.memory import ArrayBatches
from research.models import registry
from research.models.segmentation import segflow as model_lib
from research.train import loop
from research.train import segflow as sf
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "segflow_smoke.flags")


def _clips(n: int = 3, size: int = 16, frames: int = 5) -> dict[str, np.ndarray]:
  """``n`` rendered ``shapes_video`` clips (no TFDS): frames, instance, flow."""
  cfg = render.ClipConfig(image_size=size, num_frames=frames, max_distractors=2)
  clips = [video.render_split_clip("train", i, cfg) for i in range(n)]
  return {"frames": np.stack([c.frames for c in clips]), "instance": np.stack([c.instance for c in clips]),
          "flow": np.stack([c.flow for c in clips]).astype(np.float32)}


def _state(task, params) -> task_lib.TrainState:
  tx = task.optimizer()
  return task_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                             opt_state=task_lib.init_optimizer_state(tx, params), rng=jnp.zeros((2,), jnp.uint32))


# ------------------------------------------------------------------------------------------------- network


def test_output_shapes_and_registered_variants():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 6))
  expect = {"segflow": ({"seg_logits", "flow", "flow_pyramid"}, {"seg_", "flow_"}),
            "segflow_seg_only": ({"seg_logits"}, {"seg_"}), "segflow_flow_only": ({"flow", "flow_pyramid"}, {"flow_"})}
  assert set(expect) <= set(registry.names("dense"))
  for name, (keys, prefixes) in expect.items():
    net = registry.create(name, widths=(4, 6, 8))
    params = jax.eval_shape(net.init, jax.random.key(1), x)["params"]  # shapes only: no compilation
    out = jax.eval_shape(lambda p, x: net.apply({"params": p}, x, train=True), params, x)
    assert set(out) == keys, name
    assert {p for p in ("seg_", "flow_") if any(k.startswith(p) for k in params)} == prefixes, name
    if "seg_logits" in out:
      chex.assert_shape(out["seg_logits"], (2, 16, 16, 2))
    if "flow" in out:
      chex.assert_shape(list(out["flow_pyramid"]), [(2, 16, 16, 2), (2, 8, 8, 2), (2, 4, 4, 2)])
    groups = model_lib.split_params(params)
    assert model_lib.merge_params(groups) == dict(params)


@pytest.mark.parametrize("exchange", [True, False])
def test_exchange_connects_the_branches(exchange):
  """d(flow output)/d(segmentation parameters) and d(segmentation output)/d(flow parameters) are non-zero with the
  exchange and exactly zero without it; without it the segmentation branch never sees frame t + 1. (Random heads:
  with the default zero-initialised heads every cross-branch gradient is 0 at initialisation.)"""
  net = model_lib.SegFlowNet(widths=(4, 6, 8), exchange=exchange, zero_heads=False)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 6))
  groups = model_lib.split_params(jax.jit(net.init)(jax.random.key(1), x)["params"])
  r = jax.random.normal(jax.random.key(2), (2, 16, 16, 2))

  def output(seg_params, flow_params, key):
    out = net.apply({"params": model_lib.merge_params({"segmentation": seg_params, "flow": flow_params})}, x)
    return jnp.sum(out[key] * r)

  @jax.jit
  def probes(seg_params, flow_params):  # one compilation for every quantity checked
    g_seg = jax.grad(output, argnums=0)(seg_params, flow_params, "flow")
    g_flow = jax.grad(output, argnums=1)(seg_params, flow_params, "seg_logits")
    g_own = jax.grad(output, argnums=1)(seg_params, flow_params, "flow")
    params = {"params": model_lib.merge_params({"segmentation": seg_params, "flow": flow_params})}
    seg_a = net.apply(params, x)["seg_logits"]
    seg_b = net.apply(params, x.at[..., 3:].set(0.0))["seg_logits"]
    size = lambda g: sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree.leaves(g))  # noqa: E731
    return size(g_seg), size(g_flow), size(g_own), seg_a, seg_b

  cross_seg, cross_flow, own, seg_a, seg_b = probes(groups["segmentation"], groups["flow"])
  assert (float(cross_seg) > 0) == exchange and (float(cross_flow) > 0) == exchange, (cross_seg, cross_flow)
  assert float(own) > 0  # the own branch always has a gradient
  assert bool(jnp.any(jnp.abs(seg_a - seg_b) > 1e-6)) == exchange


def _np_upsample2x(x):
  """float64 loop: bilinear x2, half-pixel centres, edge clamp (align_corners=False)."""
  b, h, w, c = x.shape
  out = np.zeros((b, 2 * h, 2 * w, c))
  for i in range(2 * h):
    for j in range(2 * w):
      y, xx = (i + 0.5) / 2 - 0.5, (j + 0.5) / 2 - 0.5
      y0, x0 = int(np.floor(y)), int(np.floor(xx))
      fy, fx = y - y0, xx - x0
      for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
          out[:, i, j] += wy * wx * x[:, min(max(y0 + dy, 0), h - 1), min(max(x0 + dx, 0), w - 1)]
  return out


def test_upsample_and_pool_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 5, 2))
  with jax.enable_x64(True):
    got = np.asarray(model_lib.upsample2x(jnp.asarray(x)))
  np.testing.assert_allclose(got, _np_upsample2x(x), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(model_lib.upsample2x(jnp.asarray(x, jnp.float32))),
                             np.asarray(jax.image.resize(jnp.asarray(x, jnp.float32), (2, 6, 10, 2), "bilinear")),
                             atol=1e-5)
  f = rng.normal(size=(2, 8, 4, 2))
  pooled = np.asarray(model_lib.avg_pool_flow(jnp.asarray(f), 4))
  want = np.array([[[f[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(-1, 2).mean(0) for j in range(1)]
                    for i in range(2)] for b in range(2)])
  np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    model_lib.avg_pool_flow(jnp.zeros((1, 6, 8, 2)), 4)


# ------------------------------------------------------------------------------------ losses and metrics


def test_losses_match_float64_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 4, 2))
  mask = rng.integers(0, 2, (2, 4, 4))
  want_ce = np.mean([-(logits[b, i, j, mask[b, i, j]] - np.log(np.exp(logits[b, i, j]).sum()))
                     for b in range(2) for i in range(4) for j in range(4)])
  np.testing.assert_allclose(float(sf.segmentation_loss(jnp.asarray(logits), jnp.asarray(mask))), want_ce, rtol=1e-5)
  flow = rng.normal(size=(2, 8, 8, 2))
  pyramid = [rng.normal(size=(2, 8 // 2 ** l, 8 // 2 ** l, 2)) for l in range(3)]
  weights = (1.0, 0.0, 0.3)
  want = 0.0
  for l, w in enumerate(weights):
    k = 2 ** l
    errs = [np.linalg.norm(pyramid[l][b, i, j] - flow[b, k * i:k * i + k, k * j:k * j + k].reshape(-1, 2).mean(0))
            for b in range(2) for i in range(8 // k) for j in range(8 // k)]
    want += w * np.mean(errs)
  got = sf.multiscale_epe([jnp.asarray(p, jnp.float32) for p in pyramid], jnp.asarray(flow, jnp.float32), weights)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  with pytest.raises(ValueError, match="flow_level_weights"):
    sf.multiscale_epe(pyramid[:2], jnp.asarray(flow), weights)
  # the Charbonnier training form: sqrt(err^2 + eps^2) - eps per pixel; eps = 0 is the EPE
  err = np.linalg.norm(pyramid[0] - flow, axis=-1)
  np.testing.assert_allclose(float(sf.charbonnier_epe(jnp.asarray(pyramid[0], jnp.float32), jnp.asarray(flow), 0.3)),
                             np.mean(np.sqrt(err ** 2 + 0.09) - 0.3), rtol=1e-5)
  np.testing.assert_allclose(float(sf.charbonnier_epe(jnp.asarray(pyramid[0], jnp.float32), jnp.asarray(flow), 0.0)),
                             err.mean(), rtol=1e-5)


def test_eval_metrics_match_numpy_with_a_fixed_model():
  """A fake network with fixed outputs: fg IoU, mIoU, EPE (all / foreground pixels) and the zero-flow EPE against
  float64 numpy loops; padded rows (valid 0) count nowhere."""
  rng = np.random.default_rng(2)
  b, h = 4, 6
  pred_logits = rng.normal(size=(b, h, h, 2)).astype(np.float32)
  pred_flow = rng.normal(size=(b, h, h, 2)).astype(np.float32)
  batch = {"frames": np.zeros((b, 2, h, h, 3), np.uint8), "mask": rng.integers(0, 2, (b, h, h)).astype(np.int32),
           "flow": rng.normal(size=(b, h, h, 2)).astype(np.float32), "valid": np.array([1, 1, 1, 0], np.float32)}
  task = sf.SegFlowTask(model_kwargs={"widths": (4, 4)})
  task.apply = lambda params, frames: {"seg_logits": jnp.asarray(pred_logits), "flow": jnp.asarray(pred_flow)}
  sums, gathered = task.eval_step(types.SimpleNamespace(params=None), {k: jnp.asarray(v) for k, v in batch.items()})
  got = task.eval_metrics({k: np.asarray(v) for k, v in sums.items()}, gathered or None)
  keep = batch["valid"] > 0
  pred, lab = pred_logits.argmax(-1)[keep], batch["mask"][keep]
  ious = [np.sum((pred == c) & (lab == c)) / np.sum((pred == c) | (lab == c)) for c in (0, 1)]
  err = np.linalg.norm(pred_flow.astype(np.float64) - batch["flow"], axis=-1)[keep]
  fg = lab == 1
  np.testing.assert_allclose(got["fg_iou"], ious[1], rtol=1e-6)
  np.testing.assert_allclose(got["miou"], np.mean(ious), rtol=1e-6)
  np.testing.assert_allclose(got["pixel_accuracy"], np.mean(pred == lab), rtol=1e-6)
  np.testing.assert_allclose(got["epe"], err.mean(), rtol=1e-5)
  np.testing.assert_allclose(got["epe_fg"], err[fg].mean(), rtol=1e-5)
  np.testing.assert_allclose(got["zero_flow_epe"], np.linalg.norm(batch["flow"], axis=-1)[keep].mean(), rtol=1e-5)
  assert got["pairs"] == 3


def test_pairs_masks_and_eval_batches():
  clips = _clips(2, size=16, frames=4)
  idx = sf.pair_index(2, 4)
  np.testing.assert_array_equal(idx["clip"], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(idx["t"], [0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(sf.pair_index(2, 4, stride=2)["t"], [0, 2, 0, 2])
  batch = sf.PairSampler(clips, "actor")({"clip": np.array([1, 0]), "t": np.array([2, 0])}, np.random.default_rng())
  chex.assert_shape([batch["frames"], batch["mask"], batch["flow"]], [(2, 2, 16, 16, 3), (2, 16, 16), (2, 16, 16, 2)])
  np.testing.assert_array_equal(batch["frames"][0, 1], clips["frames"][1, 3])
  np.testing.assert_array_equal(batch["mask"][1], clips["instance"][0, 0] == 1)
  np.testing.assert_array_equal(batch["flow"][0], clips["flow"][1, 2])
  objects = sf.gather_pairs(clips, np.array([0]), np.array([1]), "objects")["mask"][0]
  np.testing.assert_array_equal(objects, clips["instance"][0, 1] != 0)
  batches = list(sf.eval_batches(clips, global_batch_size=4)())
  assert [bb["valid"].tolist() for bb in batches] == [[1, 1, 1, 1], [1, 1, 0, 0]]
  np.testing.assert_array_equal(batches[1]["frames"][1, 0], clips["frames"][1, 2])


# ------------------------------------------------------------------------------------------ task, schedules


@pytest.mark.slow  # ~8 s idle; the CLI smoke test trains the joint model in CI
def test_joint_loss_is_finite_and_decreases_on_one_batch():
  clips = _clips(2)
  batch = sf.gather_pairs(clips, np.array([0, 0, 1, 1]), np.array([0, 2, 1, 3]), "actor")
  task = sf.SegFlowTask(model_kwargs={"widths": (8, 8)}, learning_rate=3e-3)
  state = _state(task, task.init(jax.random.key(0), batch)[0])
  step = jax.jit(lambda s, b: task.update(s, b, jax.random.key(0), axis_name=None))
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    assert all(np.isfinite(float(v)) for v in metrics.values())
  assert int(state.step) == 25
  assert losses[-1] < 0.7 * losses[0], losses


def test_iterative_schedule_freezes_the_other_branch():
  clips = _clips(2)
  batch = sf.gather_pairs(clips, np.array([0, 1]), np.array([0, 1]), "actor")
  task = sf.SegFlowTask(model_kwargs={"widths": (4, 4)}, schedule="iterative", iterative_period=2)
  state = _state(task, task.init(jax.random.key(0), batch)[0])
  step = jax.jit(lambda s, b: task.update(s, b, jax.random.key(0), axis_name=None))
  for t in range(5):
    new, metrics = step(state, batch)
    trained = "segmentation" if (t // 2) % 2 == 0 else "flow"
    frozen = "flow" if trained == "segmentation" else "segmentation"
    assert float(metrics["phase"]) == (t // 2) % 2
    chex.assert_trees_all_equal(new.params[frozen], state.params[frozen])
    chex.assert_trees_all_equal(new.opt_state[frozen], state.opt_state[frozen])
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params[trained]),
                                                      jax.tree.leaves(state.params[trained])))
    state = new


@pytest.mark.slow  # ~13 s idle; the CLI smoke test trains through the loop in CI
def test_task_trains_through_the_loop(tmp_path):
  """Iterative SegFlow on rendered clips through ``loop.train`` (4 devices in the test session), eval included."""
  clips = _clips(3)
  index = sf.pair_index(3, 5)
  n = 2 * jax.device_count()
  data = ArrayBatches(index, global_batch_size=n, seed=0, transform=sf.PairSampler(clips, "actor"))
  evals = sf.eval_batches(clips, global_batch_size=n, pair_stride=2)
  task = sf.SegFlowTask(model_kwargs={"widths": (4, 4)}, schedule="iterative", iterative_period=1, num_steps=3)
  _, results = loop.train(task, data, config=loop.LoopConfig(num_steps=3, checkpoint_every=3, progress_bar=False,
                                                             tensorboard=False),
                          mesh=task_lib.make_mesh(), workdir=str(tmp_path), eval_data=evals)
  assert results["step"] == 3 and results["schedule"] == "iterative" and results["exchange"] is True
  for k in ("eval_fg_iou", "eval_miou", "eval_epe", "eval_epe_fg", "eval_zero_flow_epe"):
    assert np.isfinite(results[k]), k
  assert results["eval_pairs"] == 3 * 2


# ------------------------------------------------------------------------------------------------ errors


def test_bad_values_raise_clear_errors():
  with pytest.raises(ValueError, match="--schedule='alternate'"):
    sf.SegFlowTask(schedule="alternate")
  with pytest.raises(ValueError, match="iterative alternates the two branches"):
    sf.SegFlowTask(model_name="segflow_seg_only", schedule="iterative")
  with pytest.raises(ValueError, match="flow_level_weights has 3 entries for 2 levels"):
    sf.SegFlowTask(model_kwargs={"widths": (4, 4)}, flow_level_weights=(1.0, 0.5, 0.25))
  with pytest.raises(ValueError, match="is not a SegFlow network"):
    sf.SegFlowTask(model_name="resnet18")
  with pytest.raises(ValueError, match="foreground"):
    sf.PairSampler(_clips(1, frames=2), "shadows")
  with pytest.raises(ValueError, match=r"\[B, 2, H, W, 3\]"):
    sf.normalize_pair(jnp.zeros((2, 16, 16, 3), jnp.uint8))
  net = model_lib.SegFlowNet(widths=(4, 4, 4))
  with pytest.raises(ValueError, match="divisible by 2"):
    net.init(jax.random.key(0), jnp.zeros((1, 10, 12, 6)))
  with pytest.raises(ValueError, match=r"x \[B, H, W, 6\]"):
    net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="flow_kernel=4"):
    model_lib.SegFlowNet(flow_kernel=4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 6)))
  with pytest.raises(ValueError, match="branches"):
    model_lib.SegFlowNet(branches=("depth",)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 6)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods=("segnet",)), "--methods"),
    (dict(methods=()), "nothing to run"),
    (dict(seeds=(0, 0)), "distinct seeds"),
    (dict(num_steps=0), "--num_steps must be positive"),
    (dict(widths=(8, 8), flow_level_weights=(1.0, 1.0, 1.0)), "at most one weight per level"),
    (dict(dataset_config="small", widths=(4,) * 7), "divisible by 2\\^6"),
    (dict(flow_level_weights=(0.0,)), "one positive entry"),
    (dict(flow_epsilon=-0.1), "--flow_epsilon must be >= 0"),
])
def test_config_bad_values(kwargs, message):
  from research.methods.segflow_experiment import SegFlowConfig
  with pytest.raises(ValueError, match=message):
    SegFlowConfig(**kwargs)


# ------------------------------------------------------------------------------------------------- the CLI


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  return subprocess.run([sys.executable, "-m", "experiments.segflow", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_cli_bad_flag_is_one_clear_error(tmp_path):
  proc = _run(f"--workdir={tmp_path}", "--data_dir=/nonexistent", "--methods=segnet", timeout=120)
  assert proc.returncode != 0 and "methods" in proc.stderr and "seg_only" in proc.stderr, proc.stderr[-2000:]


def test_cli_smoke_flagfile(tmp_path):
  """The smoke flagfile end to end (three 3-step runs on shapes_video/small), then a re-run reuses the runs."""
  data_dir = str(tmp_path / "tfds")
  work = tmp_path / "work"
  proc = _run(f"--flagfile={SMOKE}", f"--workdir={work}", f"--data_dir={data_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((work / "summary.json").read_text())
  assert set(summary["table"]) == {"seg_only", "flow_only", "segflow"}
  for row in summary["table"].values():
    assert all(np.isfinite(v[0]) for v in row.values())
  assert set(summary["table"]["seg_only"]) == {"fg_iou", "miou", "pixel_accuracy", "wall_seconds"}
  assert set(summary["table"]["flow_only"]) == {"epe", "epe_fg", "wall_seconds"}
  for key in ("segflow_improves_both_tasks", "segflow_fg_iou_gt_seg_only", "segflow_epe_lt_flow_only"):
    assert key in summary["claims"], key
  results = json.loads((work / "segflow_seed0" / "results.json").read_text())
  assert results["step"] == 3 and results["schedule"] == "joint" and results["exchange"] is True
  assert "| method |" in proc.stdout
  again = _run(f"--flagfile={SMOKE}", f"--workdir={work}", f"--data_dir={data_dir}")
  assert again.returncode == 0 and json.loads((work / "summary.json").read_text())["table"] == summary["table"]
