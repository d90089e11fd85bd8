"""Core backbones: published parameter counts, output shapes/dtypes, multi-scale features, start_stage."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models


def _num_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name,classes,shape,expected", [
    ("resnet50", 1000, (1, 224, 224, 3), 25_557_032),   # torchvision / He et al. 2016
    ("resnet18", 1000, (1, 224, 224, 3), 11_689_512),
    ("resnet101", 1000, (1, 224, 224, 3), 44_549_160),
    ("wrn28_10", 10, (1, 32, 32, 3), 36_479_194),       # Zagoruyko & Komodakis 2016: 36.5M
    ("preact_resnet164", 10, (1, 32, 32, 3), 1_703_258),  # He et al. 2016 (ECCV): 1.7M
])
def test_published_parameter_counts(name, classes, shape, expected):
  assert _num_params(models.create(name, num_classes=classes), shape) == expected


def test_registry_lists_and_rejects():
  names = models.names()
  for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet18", "preact_resnet164",
            "wrn28_10", "wrn16_4"):
    assert n in names
  assert isinstance(models.create("wrn22_2", num_classes=10), models.create("wrn16_4").__class__)
  with pytest.raises(ValueError, match="unknown model 'resnet5'.*resnet50"):
    models.create("resnet5")
  with pytest.raises(ValueError, match="WRN depth"):
    models.create("wrn15_4")


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_train_and_eval_apply(dtype):
  model = models.create("wrn10_1", num_classes=7, dtype=dtype, dropout_rate=0.1)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))  # param_dtype
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(2)})
  chex.assert_shape(logits, (4, 7))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed)), "train mode must update every BatchNorm's running statistics"
  eval_logits = model.apply(variables, x, train=False)
  chex.assert_shape(eval_logits, (4, 7))


def test_imagenet_features_are_c2_to_c5():
  model = models.create("resnet18", num_classes=10, features_only=True)
  x = jnp.zeros((1, 64, 64, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  feats = model.apply(variables, x, train=False)
  assert {k: v.shape for k, v in feats.items() if k.startswith("C")} == {
      "C2": (1, 16, 16, 64), "C3": (1, 8, 8, 128), "C4": (1, 4, 4, 256), "C5": (1, 2, 2, 512)}
  chex.assert_shape(feats["pooled"], (1, 512))


@pytest.mark.parametrize("name,shape", [("wrn10_1", (2, 32, 32, 3)), ("resnet18", (2, 64, 64, 3))])
def test_start_stage_reuses_cached_features(name, shape):
  """Task2Vec's skip_layers: stage{k-1} features fed to start_stage=k give the same logits."""
  model = models.create(name, num_classes=5)
  x = jax.random.normal(jax.random.key(0), shape)
  variables = model.init(jax.random.key(1), x, train=False)
  full = model.apply(variables, x, train=False)
  feats = model.clone(features_only=True).apply(variables, x, train=False)
  tail = model.clone(start_stage=2).apply(variables, feats["stage1"], train=False)
  np.testing.assert_allclose(tail, full, rtol=1e-5, atol=1e-5)
