"""Contract tests over every registered model (init, train/eval apply, shapes, batch_stats, bf16, no retrace).

Two tiers keep the default run fast on CPU:
  * ``test_contract_shapes`` (every model, default run): abstract evaluation with ``jax.eval_shape`` of init,
    train apply (``mutable=['batch_stats']``), eval apply and bf16 apply — output shape/dtype, which collections
    exist and are updated, at each model's smallest convenient resolution. Nothing is compiled.
  * ``test_contract_execute`` (compiled, real numbers): the cheap models by default (``FAST``), every other model
    under ``-m slow``. It checks finite outputs, batch_stats changed in train mode and unchanged (immutable) in
    eval mode, bf16 apply finite, and that a jitted step is traced once across two calls.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models.published import default_num_classes

# Smallest resolution each family accepts quickly; ImageNet nets are fully convolutional up to global pooling.
SMALL_RES = {"inception_v3": 75, "xception": 71, "googlenet": 32, "sppnet": 48, "alexnet": 64, "zfnet": 64}
# Compiled in the default run: one plain-BN ResNet, one depthwise and one grouped/shuffled net (every model
# compiles under -m slow).
FAST = ["mobilenet_v1_050", "resnet18"]  # shufflenet_v1_g3 (11 s) runs under -m slow with the others
# Abstract-shape contract of these is under -m slow only: each is a deeper/wider variant of a family whose base
# model runs the same code in the default run (e.g. preact_resnet1001 = preact_resnet164's code at 6x the depth,
# 20 s of tracing); their parameter counts are still checked in the default run (test_param_counts).
SLOW_SHAPES = {"preact_resnet1001", "densenet161", "densenet169", "densenet201", "resnet101", "resnet152",
               "resnext101_32x8d", "vgg13", "vgg16", "vgg19", "vgg13_bn", "vgg19_bn", "shufflenet_v1_g2",
               "shufflenet_v1_g4", "shufflenet_v1_g8", "wrn40_10", "wrn28_10", "wrn22_8", "igc_l32m26",
               # 10-12 s of tracing each; parameter counts and GMACs still checked by default (test_param_counts)
               "densenet121", "inception_v3", "preact_resnet164"}
NUM_CLASSES = 7


def _res(name):
  if name.startswith(("wrn", "preact_", "fractalnet", "igc_")):
    return 32
  return SMALL_RES.get(name, 32)


def _rngs(seed=0):
  return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1), "droppath": jax.random.key(seed + 2)}


ALL = models.names()


def test_registry_has_every_issue_model():
  wanted = ["alexnet", "zfnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn", "vgg19_bn", "googlenet",
            "inception_v3", "resnet18", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
            "densenet121", "densenet169", "densenet201", "densenet161", "xception", "mobilenet_v1",
            "mobilenet_v1_050", "squeezenet1_0", "squeezenet1_1", "se_resnet50", "se_resnext50_32x4d", "fractalnet",
            "drn_a_50", "drn_c_26", "drn_c_42", "sppnet", "preact_resnet18", "preact_resnet164", "preact_resnet1001"]
  wanted += [f"shufflenet_v1_g{g}" for g in (1, 2, 3, 4, 8)]
  assert set(wanted) <= set(ALL), sorted(set(wanted) - set(ALL))
  for name in ("wrn40_2", "igc_l4m8", "wrn22_4"):
    models.create(name)  # pattern families
  with pytest.raises(ValueError, match="unknown model"):
    models.create("resnet51")


@functools.lru_cache(maxsize=None)
def abstract_variables(name):
  """``jax.eval_shape`` of init with the default number of classes (shared with test_param_counts.py)."""
  res = _res(name)
  model = models.create(name, num_classes=default_num_classes(name))
  return jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), jax.ShapeDtypeStruct((2, res, res, 3),
                                                                                           jnp.float32))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SHAPES else n for n in ALL])
def test_contract_shapes(name):
  res = _res(name)
  NUM_CLASSES = default_num_classes(name)
  model = models.create(name, num_classes=NUM_CLASSES)
  x = jax.ShapeDtypeStruct((2, res, res, 3), jnp.float32)
  v = abstract_variables(name)
  assert set(v) <= {"params", "batch_stats"}
  out, upd = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs=_rngs(), mutable=["batch_stats"]), v, x)
  assert out.shape == (2, NUM_CLASSES) and out.dtype == jnp.float32
  if "batch_stats" in v:
    assert jax.tree.structure(upd["batch_stats"]) == jax.tree.structure(v["batch_stats"])
  else:
    assert not upd.get("batch_stats")
  ev = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x)
  assert ev.shape == (2, NUM_CLASSES) and ev.dtype == jnp.float32
  m16 = models.create(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
  o16 = jax.eval_shape(lambda v, x: m16.apply(v, x.astype(jnp.bfloat16), train=False), v, x)
  assert o16.shape == (2, NUM_CLASSES) and o16.dtype == jnp.float32


def _execute(name):
  chex.clear_trace_counter()
  res = _res(name)
  model = models.create(name, num_classes=NUM_CLASSES)
  x = jax.random.normal(jax.random.key(3), (2, res, res, 3), jnp.float32)
  v = jax.jit(lambda x: model.init(_rngs(), x, train=False))(x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(v, x, rng):
    rngs = {"dropout": rng, "droppath": jax.random.fold_in(rng, 1)}
    return model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])

  out, upd = train_step(v, x, jax.random.key(5))
  out2, _ = train_step(v, x + 1.0, jax.random.key(6))  # second call: same shapes, must not retrace
  assert out.shape == (2, NUM_CLASSES) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(out2)).all()
  if "batch_stats" in v:
    before, after = jax.tree.leaves(v["batch_stats"]), jax.tree.leaves(upd["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "train mode must update batch_stats"
  ev = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)  # immutable: raises if BN tried to update
  assert ev.shape == (2, NUM_CLASSES) and np.isfinite(np.asarray(ev)).all()
  m16 = models.create(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
  o16 = jax.jit(lambda v, x: m16.apply(v, x, train=False))(v, x.astype(jnp.bfloat16))
  assert o16.dtype == jnp.float32 and np.isfinite(np.asarray(o16)).all()


@pytest.mark.parametrize("name", FAST)
def test_contract_execute(name):
  _execute(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAST])
def test_contract_execute_slow(name):
  _execute(name)
