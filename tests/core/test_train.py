"""Trainer: per-device step == single-device step on the global batch, no retracing, optimizer rules."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax.linen as nn

from research.layers.common import batch_norm, conv
from research.train import optim, steps


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


def _setup(devices, sync_bn=True):
  model = TinyNet(bn_axis_name=steps.DATA_AXIS if sync_bn else None)
  schedule = optim.make_schedule("cosine", 0.1, 10, warmup_steps=2)
  tx = optim.make_optimizer("nesterov", schedule, weight_decay=5e-4)
  mesh = steps.make_mesh(devices)
  _, state = steps.init_state(model, tx, 0, (1, 32, 32, 3), mesh)
  step = steps.parallelize(functools.partial(steps.train_step, model=model, tx=tx, loss_fn=steps.cross_entropy,
                                             schedule=schedule), mesh)
  return mesh, state, step


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
  model = TinyNet(dropout_rate=0.1)
  tx = optax.sgd(0.1)
  mesh = steps.make_mesh()
  _, state = steps.init_state(model, tx, 0, (1, 32, 32, 3), mesh)

  @chex.assert_max_traces(n=1)
  def traced_step(state, batch):
    return steps.train_step(state, batch, model=model, tx=tx, loss_fn=steps.cross_entropy)

  step = steps.parallelize(traced_step, mesh)
  for b in _batches(3):
    state, _ = step(state, steps.global_batch(b, mesh))
  assert int(steps.host_value(state.step)) == 3


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


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_schedules(name):
  s = optim.make_schedule(name, 0.4, 100, warmup_steps=0 if name == "onecycle" else 10)
  values = np.array([float(s(i)) for i in range(101)])
  assert np.all(np.isfinite(values)) and values.max() <= 0.4 + 1e-6
  if name != "onecycle":
    assert values[0] == 0.0 and abs(values[10] - 0.4) < 1e-6  # linear warmup from 0 to the peak
  if name == "step":
    assert abs(values[60] - 0.04) < 1e-6 and abs(values[80] - 0.004) < 1e-7
  if name == "cosine":
    assert values[100] < 1e-6


def test_bad_optimizer_and_schedule_names():
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.make_optimizer("lamb", optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule("poly", 0.1, 10)
