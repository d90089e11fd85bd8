"""Trainer: per-device step == single-device step on the global batch, no retracing, optimizer rules."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax.linen as nn

from research.layers.common import batch_norm, conv
from research.train import classify, losses, optim, steps
from research.train import task as task_lib


class TinyNet(nn.Module):
  """conv-BN-ReLU-dropout-pool-dense: compiles in about a second."""
  num_classes: int = 10
  bn_axis_name: str | None = None
  dropout_rate: float = 0.0  # dropout masks depend on the device index, so equality tests keep it off

  @nn.compact
  def __call__(self, x, *, train):
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32)
    x = conv(8, 3, 2, **kw)(x)
    x = nn.relu(batch_norm(axis_name=self.bn_axis_name, **kw)(x, use_running_average=not train))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def _setup(devices, sync_bn=True, model=None, tx=None):
  """(mesh, initial state, compiled step) of a ClassificationTask of TinyNet on ``devices``."""
  model = model or TinyNet(bn_axis_name=steps.DATA_AXIS if sync_bn else None)
  schedule = optim.make_schedule("cosine", 0.1, 10, warmup_steps=2)
  tx = tx or optim.make_optimizer("nesterov", schedule, weight_decay=5e-4)
  task = classify.ClassificationTask(model=model, tx=tx, loss_fn=losses.cross_entropy, image_shape=(32, 32, 3),
                                     num_classes=10, schedule=schedule)
  mesh = steps.make_mesh(devices)
  batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32), "label": jax.ShapeDtypeStruct((16,), jnp.int32)}
  _, state = task_lib.init_train_state(task, 0, batch, mesh)
  return mesh, state, task_lib.compiled_train_step(task, mesh)


def _batches(n, size=16):
  rng = np.random.default_rng(0)
  return [{"image": rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 10, size).astype(np.int32)} for _ in range(n)]


def test_one_device_equals_four_devices_same_global_batch():
  assert jax.device_count() == 4, "tests/conftest.py simulates 4 CPU devices"
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh, state, step = _setup(devices)
    for b in _batches(3):
      state, metrics = step(state, steps.global_batch(b, mesh))
    results.append((jax.device_get(state.params), jax.device_get(state.batch_stats), jax.device_get(metrics)))
  (p1, s1, m1), (p4, s4, m4) = results
  # Same math, different reduction order (per-device partial sums + all-reduce): equal to float32 rounding.
  chex.assert_trees_all_close(p1, p4, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(s1, s4, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(m1["loss"], m4["loss"], rtol=1e-5)


def test_per_replica_batchnorm_differs_from_sync_bn():
  """Without bn_axis_name, BN statistics are per device (Goyal et al.); the test above can fail."""
  outs = []
  for sync in (True, False):
    mesh, state, step = _setup(jax.devices(), sync_bn=sync)
    state, m = step(state, steps.global_batch(_batches(1)[0], mesh))
    outs.append(float(m["loss"]))
  assert abs(outs[0] - outs[1]) > 1e-6


def test_no_retrace_across_steps():
  """The loop's step compiles once: the task's update is traced a single time over several steps."""
  traces = []

  class CountingTask(classify.ClassificationTask):
    def update(self, state, batch, rng, *, axis_name):
      traces.append(1)
      return super().update(state, batch, rng, axis_name=axis_name)

  model = TinyNet(dropout_rate=0.1)
  task = CountingTask(model=model, tx=optax.sgd(0.1), loss_fn=losses.cross_entropy, image_shape=(32, 32, 3),
                      num_classes=10)
  mesh = steps.make_mesh()
  batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32), "label": jax.ShapeDtypeStruct((16,), jnp.int32)}
  _, state = task_lib.init_train_state(task, 0, batch, mesh)
  step = task_lib.compiled_train_step(task, mesh)
  for b in _batches(3):
    state, _ = step(state, steps.global_batch(b, mesh))
  assert int(steps.host_value(state.step)) == 3
  assert len(traces) == 1
  assert task_lib.compiled_train_step(task, mesh) is step  # one compiled step per (task, mesh)


def test_weight_decay_skips_batchnorm_and_bias():
  model = TinyNet()
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  mask = optim.decay_mask(params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert all(v for k, v in flat.items() if k.endswith("kernel"))
  assert not any(v for k, v in flat.items() if k.endswith(("bias", "scale")))
  # With zero gradients, only kernels shrink under SGD + weight decay.
  tx = optim.make_optimizer("sgd", optax.constant_schedule(1.0), weight_decay=0.1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for k, u in {"/".join(str(getattr(p, "key", p)) for p in path): u
               for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}.items():
    assert bool(jnp.any(u != 0)) == k.endswith("kernel"), k
  all_decayed = optim.make_optimizer("sgd", optax.constant_schedule(1.0), weight_decay=0.1, decay_bn_and_bias=True)
  updates, _ = all_decayed.update(zeros, all_decayed.init(params), params)
  assert bool(jnp.any(updates["BatchNorm_0"]["scale"] != 0))


@pytest.mark.parametrize("name", [s for s in optim.SCHEDULES if s != "onecycle"])  # onecycle: the closed form below
def test_schedules(name):
  s = optim.make_schedule(name, 0.4, 100, warmup_steps=10)
  values = np.array([float(s(i)) for i in range(101)])
  assert np.all(np.isfinite(values)) and values.max() <= 0.4 + 1e-6
  assert values[0] == 0.0 and abs(values[10] - 0.4) < 1e-6  # linear warmup from 0 to the peak
  if name == "step":
    assert abs(values[60] - 0.04) < 1e-6 and abs(values[80] - 0.004) < 1e-7
  if name == "cosine":
    assert values[100] < 1e-6
  if name == "poly":  # lr (1 - t/T)^0.9 after the warmup (T = 90 decay steps)
    np.testing.assert_allclose(values[10:], 0.4 * (1 - np.arange(91) / 90) ** 0.9, rtol=1e-5, atol=1e-7)


def _onecycle_closed_form(t, num_steps, peak, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
  """The one-cycle variant ``optim.make_schedule("onecycle")`` implements (fastai's ``fit_one_cycle`` / optax's
  ``cosine_onecycle_schedule``; Smith & Topin 2017 ramp linearly, this ramps with half cosines), in float64:
  up phase t in [0, u], u = floor(pct_start * T): lr = a + (peak - a) * (1 - cos(pi t / u)) / 2 from a = peak / div;
  down phase t in [u, T]: lr = z + (peak - z) * (1 + cos(pi (t - u) / (T - u))) / 2 to z = a / final_div; z after T."""
  a = peak / div_factor
  z = a / final_div_factor
  u = math.floor(pct_start * num_steps)
  if t <= u:
    return a + (peak - a) * (1 - math.cos(math.pi * t / u)) / 2
  if t <= num_steps:
    return z + (peak - z) * (1 + math.cos(math.pi * (t - u) / (num_steps - u))) / 2
  return z


def test_onecycle_matches_the_closed_form():
  s = optim.make_schedule("onecycle", 0.4, 100)  # defaults: pct_start 0.3, div 25, final div 1e4
  # Hand values: start 0.4/25, half-way up (t = 15) the mean of start and peak, peak at t = 30, half-way down
  # (t = 65) the mean of peak and 0.4/25/1e4 = 1.6e-6, which it ends at (t = 100) and keeps.
  np.testing.assert_allclose(jax.jit(jax.vmap(s))(np.array([0, 15, 30, 65, 100, 150])),
                             [0.016, 0.208, 0.4, 0.2000008, 1.6e-6, 1.6e-6], rtol=1e-5)
  for num_steps, pct, peak in [(100, 0.3, 0.4), (37, 0.25, 1.5), (10, 0.25, 0.1)]:  # u = 30, 9, 2 (floor)
    s = optim.make_schedule("onecycle", peak, num_steps, onecycle_pct_start=pct)
    ts = np.arange(num_steps + 5)
    want = [_onecycle_closed_form(int(t), num_steps, peak, pct) for t in ts]
    np.testing.assert_allclose(jax.jit(jax.vmap(s))(ts), want, rtol=1e-5, atol=1e-7 * peak)  # float32: eps x peak


def test_bad_optimizer_and_schedule_names():
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.make_optimizer("lamb", optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule("exponential", 0.1, 10)
