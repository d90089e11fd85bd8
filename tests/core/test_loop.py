"""The generic loop (research/train/loop.py): resume with prefetch, config changes, hooks, init checkpoints,
agreed multi-process restore, float16 loss scaling and auxiliary heads of the classification task."""

import json
import os
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.data.memory import ArrayBatches
from research.train import checkpoint as ckpt_lib
from research.train import classify, loop, losses
from research.train import task as task_lib


class Regression(task_lib.Task):
  """y = x·w with a 2-layer MLP; adam(lr)."""

  def __init__(self, lr=1e-2):
    self.lr = lr
    self.model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])

  def init(self, rng, batch):
    return self.model.init(rng, jnp.zeros((1,) + batch["x"].shape[1:]))["params"], {}

  def optimizer(self):
    return optax.adam(self.lr)

  def loss(self, params, model_state, batch, rng, *, train):
    err = self.model.apply({"params": params}, batch["x"])[:, 0] - batch["y"]
    return jnp.mean(err ** 2), (model_state, {})

  def eval_step(self, state, batch):
    err = self.model.apply({"params": state.params}, batch["x"])[:, 0] - batch["y"]
    return {"se": jnp.sum(err ** 2 * batch["valid"]), "n": jnp.sum(batch["valid"])}, {"err": err}

  def eval_metrics(self, sums, gathered):
    return {"mse": float(sums["se"] / sums["n"]), "gathered": float(len(gathered["err"]))}


def _data(seed=0):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 3)).astype(np.float32)
  return ArrayBatches({"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}, global_batch_size=8, seed=seed)


def _eval_data():
  x = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
  return [{"x": x, "y": x.sum(1), "valid": np.ones(8, np.float32)}]


def _train(task, workdir, num_steps, mesh=None, **kw):
  cfg = loop.LoopConfig(num_steps=num_steps, checkpoint_every=kw.pop("checkpoint_every", 4), log_every=2,
                        eval_every=kw.pop("eval_every", 0), progress_bar=False, tensorboard=False,
                        prefetch=kw.pop("prefetch", 2), init_checkpoint=kw.pop("init_checkpoint", None))
  return loop.train(task, kw.pop("data", None) or _data(), config=cfg, mesh=mesh or task_lib.make_mesh(),
                    workdir=workdir, **kw)


def test_resume_with_prefetch_is_bit_identical(tmp_path):
  """The prefetch thread reads ahead, yet the checkpointed data position is that of the consumed batches."""
  _, ref = _train(Regression(), str(tmp_path / "ref"), 10)
  _, part = _train(Regression(), str(tmp_path / "run"), 6)
  assert part["step"] == 6 and part["params_sha256"] != ref["params_sha256"]
  _, res = _train(Regression(), str(tmp_path / "run"), 10)
  assert res["resumed_from_step"] == 6 and res["steps_run"] == 4
  assert res["params_sha256"] == ref["params_sha256"]
  _, sync = _train(Regression(), str(tmp_path / "sync"), 10, prefetch=0)
  assert sync["params_sha256"] == ref["params_sha256"]


def test_eval_sums_and_gathered_arrays_over_four_devices(tmp_path):
  assert jax.device_count() == 4
  state, res = _train(Regression(), None, 3, eval_data=_eval_data, checkpoint_every=0)
  x = _eval_data()[0]
  err = np.asarray(Regression().model.apply({"params": jax.device_get(state.params)}, x["x"]))[:, 0] - x["y"]
  np.testing.assert_allclose(res["eval_mse"], np.mean(err ** 2), rtol=1e-5)
  assert res["eval_gathered"] == 8.0  # per-example outputs of all 4 devices, in order
  assert not os.path.exists(tmp_path / "results.json")


def test_changed_config_on_resume_is_reported(tmp_path):
  _train(Regression(), str(tmp_path), 4, run_config={"lr": 0.01, "seed": 0})
  with pytest.warns(RuntimeWarning, match=r"changed settings lr: 0.01 -> 0.02"):
    _train(Regression(), str(tmp_path), 6, run_config={"lr": 0.02, "seed": 0})
  assert json.load(open(tmp_path / "config.before_step4.json"))["lr"] == 0.01
  assert json.load(open(tmp_path / "config.json"))["lr"] == 0.02
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)  # unchanged settings: silent
    _train(Regression(), str(tmp_path), 8, run_config={"lr": 0.02, "seed": 0})


def test_on_step_stops_the_run_and_no_workdir_writes_nothing(tmp_path):
  seen = []
  state, res = _train(Regression(), None, 50, checkpoint_every=0,
                      on_step=lambda s, m: seen.append(float(m["loss"])) or s == 7)
  assert int(state.step) == 7 and len(seen) == 7 and res["steps_run"] == 7
  _, res = _train(Regression(), str(tmp_path), 9, on_step=lambda s, m: s == 5)
  assert not os.path.exists(tmp_path / "results.json")  # a run stopped by its hook is not a finished run
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [4]


def test_init_checkpoint_starts_from_given_weights(tmp_path):
  final, _ = _train(Regression(), str(tmp_path / "a"), 5)
  state, res = _train(Regression(lr=0.0), str(tmp_path / "b"), 1,
                      init_checkpoint=str(tmp_path / "a" / "checkpoints"))
  chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(final.params))
  # Resuming from the run's own checkpoint wins over --init_checkpoint (big_vision's order).
  _, again = _train(Regression(lr=0.0), str(tmp_path / "b"), 1, init_checkpoint=str(tmp_path / "nonexistent"))
  assert again["resumed_from_step"] == 1


def test_processes_agree_on_the_restored_step(tmp_path, monkeypatch):
  """Process 1 cannot read the newest checkpoint: every process falls back to the previous one together."""
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  state = {"w": jnp.arange(3.0)}
  for s in (2, 4):
    ck.save(s, {"w": state["w"] + s})
  abstract = jax.eval_shape(lambda: state)
  calls = []  # this process restores fine; the (simulated) other process fails on the newest checkpoint
  monkeypatch.setattr(ckpt_lib, "_all_processes_ok", lambda ok: calls.append(ok) or len(calls) > 1)
  with pytest.warns(RuntimeWarning, match="another process could not read it"):
    restored, step = ck.restore_latest(abstract)
  ck.close()
  assert step == 2 and calls == [True, True]
  np.testing.assert_array_equal(restored["w"], np.arange(3.0) + 2)


class TinyAux(nn.Module):
  """Main + two auxiliary classifiers in training mode (GoogLeNet's interface)."""
  aux_logits: bool = True

  @nn.compact
  def __call__(self, x, *, train):
    h = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(4, name="head")(h)
    if self.aux_logits and train:
      return logits, nn.Dense(4, name="aux2")(h), nn.Dense(4, name="aux1")(h)
    return logits


def test_auxiliary_heads_are_trained_with_the_papers_weight():
  task = classify.ClassificationTask(model=TinyAux(), tx=optax.sgd(0.1), loss_fn=losses.cross_entropy,
                                     image_shape=(4, 4, 3), num_classes=4, aux_weight=0.3)
  params, ms = task.init(jax.random.PRNGKey(0), None)
  assert {"head", "aux1", "aux2"} <= set(params)  # auxiliary heads initialised although eval mode drops them
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(6, 4, 4, 3)).astype(np.float32), "label": np.arange(6) % 4}
  loss, _ = task.loss(params, ms, batch, jax.random.PRNGKey(1), train=True)
  main, a2, a1 = TinyAux().apply({"params": params}, batch["image"], train=True)
  ce = lambda z: np.mean(np.asarray(losses.cross_entropy(z, batch["label"])))  # noqa: E731
  np.testing.assert_allclose(loss, ce(main) + 0.3 * (ce(a1) + ce(a2)), rtol=1e-6)
  assert classify.AUX_WEIGHTS == {"GoogLeNet": 0.3, "InceptionV3": 0.4}


class Half(nn.Module):
  @nn.compact
  def __call__(self, x, *, train):
    return nn.Dense(4, dtype=jnp.float16, name="layers_0")(x).astype(jnp.float32)


def test_float16_dynamic_loss_scaling_skips_overflowing_steps():
  model = Half()
  task = classify.ClassificationTask(model=model, tx=optax.sgd(0.1), loss_fn=losses.cross_entropy,
                                     image_shape=(5,), num_classes=4, loss_scale=True)
  mesh = task_lib.make_mesh(jax.devices()[:1])
  _, state = task_lib.init_train_state(task, 0, None, mesh)
  step = task_lib.compiled_train_step(task, mesh)
  batch = task_lib.global_batch({"image": np.ones((4, 5), np.float32), "label": np.arange(4)}, mesh)
  ds = jax.device_get(state.model_state["dynamic_scale"])  # host copy: the step donates the state
  huge = state.replace(model_state={**state.model_state, "dynamic_scale": ds.replace(scale=jnp.float32(3e38))})
  before = jax.device_get(huge.params)
  after, m = step(huge, batch)
  assert float(m["grads_finite"]) == 0.0 and float(m["loss_scale"]) == pytest.approx(1.5e38)
  chex.assert_trees_all_equal(jax.device_get(after.params), before)  # the overflowing step was skipped
  after2, m2 = step(after.replace(model_state={**after.model_state, "dynamic_scale": ds}), batch)
  assert float(m2["grads_finite"]) == 1.0 and np.isfinite(float(m2["loss"]))
  assert not np.allclose(jax.device_get(after2.params)["layers_0"]["kernel"], before["layers_0"]["kernel"])


@pytest.mark.slow  # ~1 min (GoogLeNet) + ~2 min (Inception v3) of XLA compilation on 2 CPU cores
@pytest.mark.parametrize("name,res", [("googlenet", 96), ("inception_v3", 160)])
def test_googlenet_and_inception_v3_train_with_auxiliary_heads(name, res):
  """They return (logits, *aux) in training mode; before the Task port they could not train at all."""
  from research import models
  model = models.create(name, num_classes=5, aux_logits=True)
  task = classify.ClassificationTask(model=model, tx=optax.sgd(0.01), loss_fn=losses.cross_entropy,
                                     image_shape=(res, res, 3), num_classes=5,
                                     aux_weight=classify.AUX_WEIGHTS[type(model).__name__])
  mesh = task_lib.make_mesh(jax.devices()[:1])
  _, state = task_lib.init_train_state(task, 0, None, mesh)
  assert any(k.startswith(("aux", "Aux")) for k in state.params)
  batch = task_lib.global_batch({"image": np.random.default_rng(0).normal(size=(2, res, res, 3)).astype(np.float32),
                                 "label": np.array([0, 1])}, mesh)
  state, m = task_lib.compiled_train_step(task, mesh)(state, batch)
  assert np.isfinite(float(m["loss"])) and int(state.step) == 1


class MaskedMean(task_lib.Task):
  """Loss = (sum, count) over the real rows: the global masked mean on any number of devices (grad_of)."""

  def init(self, rng, batch):
    return {"w": jnp.zeros((3,))}, {}

  def optimizer(self):
    return optax.sgd(0.1)

  def loss(self, params, model_state, batch, rng, *, train):
    se = jnp.sum((batch["x"] @ params["w"] - batch["y"]) ** 2 * batch["m"])
    return (se, jnp.sum(batch["m"])), (model_state, {})


def test_sum_count_loss_is_the_global_masked_mean_on_any_device_count():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 3)).astype(np.float32)
  b = {"x": x, "y": x @ np.array([1.0, 2.0, 3.0], np.float32), "m": np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)}
  out = []
  for devices in (jax.devices()[:1], jax.devices()):  # 4 devices: 2 real rows on 3 shards, none on the last
    mesh = task_lib.make_mesh(devices)
    task = MaskedMean()
    _, state = task_lib.init_train_state(task, 0, None, mesh)
    state, m = task_lib.compiled_train_step(task, mesh)(state, task_lib.global_batch(b, mesh))
    out.append((float(m["loss"]), jax.device_get(state.params["w"])))
  expected_loss = np.sum(b["y"][:6] ** 2) / 6  # w = 0
  expected_w = 0.1 * 2 * (x[:6].T @ b["y"][:6]) / 6
  for loss, w in out:
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(w, expected_w, rtol=1e-5)


def test_unhashable_task_and_missing_update_rule_are_explained():
  import dataclasses

  @dataclasses.dataclass
  class Unhashable(MaskedMean):
    pass

  with pytest.raises(TypeError, match=r"eq=False"):
    task_lib.compiled_train_step(Unhashable(), task_lib.make_mesh())

  class TwoGroups(MaskedMean):
    def init(self, rng, batch):
      return {"a": {"w": jnp.zeros((3,))}, "b": {"w": jnp.zeros((3,))}}, {}

    def optimizer(self):
      return {"a": optax.sgd(0.1), "b": optax.sgd(0.1)}

    def loss(self, params, model_state, batch, rng, *, train):
      return jnp.sum(params["a"]["w"] + params["b"]["w"]), (model_state, {})

  grads = {"a": {"w": jnp.ones(3)}}
  params = {"a": {"w": jnp.zeros(3)}, "b": {"w": jnp.zeros(3)}}
  tx = TwoGroups().optimizer()
  new, _, _ = task_lib.apply_optimizer(tx, grads, task_lib.init_optimizer_state(tx, params), params)
  np.testing.assert_allclose(new["a"]["w"], -0.1) and np.testing.assert_allclose(new["b"]["w"], 0.0)
  with pytest.raises(ValueError, match="override Task.update"):
    jax.eval_shape(lambda: TwoGroups().update(task_lib.init_train_state(TwoGroups(), 0, None,
                                                                        task_lib.make_mesh())[1], {},
                                              jax.random.PRNGKey(0), axis_name=None))
