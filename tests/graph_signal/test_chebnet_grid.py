"""ChebNet on the pixel grid graph behind the image-classification API (Defferrard et al. 2016, §2.3 and §5.1):
shapes, the coarsened graph against the grid (independent edge check), the flatten / permute / masked-pool path
against a numpy loop, shift equivariance of the grid filter, a short training run and the smoke flagfile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.data.memory import ArrayBatches
from research.layers.graph import fixed_graph
from research.models import registry
from research.models.graph import chebnet_image as ci
from research.ops import coarsening
from research.ops import graph as gops
from research.train import classify, losses
from research.train import loop as loop_lib
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "classify_chebnet_shapes_smoke.flags")
SMALL = dict(features=(4, 8), K=3, pool=(4, 4), fc=(16,))


def _rngs(seed):
  return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}


def test_registered_in_graph_family_not_classification():
  assert {"chebnet_grid", "cnn_grid"} <= set(registry.names("graph"))
  assert "chebnet_grid" not in registry.names()  # the classification listing (model zoo table) is unchanged
  assert isinstance(registry.create("chebnet_grid"), ci.ChebNetGrid)  # classify.validate() calls create(name)


def test_shapes_params_and_dtypes(size=(8, 12)):
  """Non-square images (the default 32x32 runs in the smoke test); 2 channels as node features."""
  chex.clear_trace_counter()
  model = registry.create("chebnet_grid", num_classes=7, image_size=size, dtype=jnp.float32, bn_axis_name="data",
                          **SMALL)
  h, w = (size, size) if isinstance(size, int) else size
  x = jax.random.normal(jax.random.key(0), (3, h, w, 2))
  variables = model.init(_rngs(0), x, train=False)
  _, perm = model.coarsened()
  n_top = len(perm) // 16
  p = variables["params"]["chebnet"]
  chex.assert_shape(p["conv0"]["kernel"], (3, 2, 4))
  chex.assert_shape(p["conv1"]["kernel"], (3, 4, 8))
  chex.assert_shape(p["fc0"]["kernel"], (n_top * 8, 16))
  chex.assert_shape(p["logits"]["kernel"], (16, 7))
  assert set(variables) == {"params"}  # no BatchNorm: bn_axis_name is ignored

  @jax.jit
  @chex.assert_max_traces(n=1)
  def ev(v, x):
    return model.apply(v, x, train=False)

  out = ev(variables, x)
  ev(variables, x + 1.0)  # same shapes: no retrace
  chex.assert_shape(out, (3, 7))
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
  tr = jax.jit(lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}))
  t1, t2 = tr(variables, x, jax.random.key(1)), tr(variables, x, jax.random.key(2))
  assert not np.allclose(t1, t2)  # dropout in the FC head only in train mode
  bf = registry.create("chebnet_grid", num_classes=7, image_size=size, dtype=jnp.bfloat16, **SMALL)
  out_bf = jax.jit(lambda v, x: bf.apply(v, x, train=False))(variables, x)
  assert out_bf.dtype == jnp.float32
  np.testing.assert_allclose(out_bf, out, rtol=0.1, atol=0.1)


def test_bad_input_raises_one_value_error():
  model = registry.create("chebnet_grid", num_classes=3, **SMALL)
  with pytest.raises(ValueError, match=r"image_size = \(32, 32\).*\(2, 28, 28, 1\)"):
    model.init(_rngs(0), jnp.zeros((2, 28, 28, 1)), train=False)
  with pytest.raises(ValueError, match="pool"):
    registry.create("chebnet_grid", pool=(3, 4))
  with pytest.raises(ValueError, match="image_size"):
    registry.create("chebnet_grid", image_size=(0, 4))


def test_coarsened_grid_edges_are_the_pixel_graph_and_fake_nodes_are_isolated():
  graphs, perm = ci.coarsened_grid(12, 10, 3)
  assert len(perm) % 8 == 0 and len(graphs) == 4
  real = perm[perm >= 0]
  np.testing.assert_array_equal(np.sort(real), np.arange(120))  # every pixel exactly once
  s, r, w = graphs[0]
  assert np.all(perm[s] >= 0) and np.all(perm[r] >= 0)  # no edge touches a fake node
  # independent reference: the 8-neighbour grid with exp(-d^2/2) weights, by a loop over pixel pairs
  ref = {}
  for y in range(12):
    for x in range(10):
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          yy, xx = y + dy, x + dx
          if (dy or dx) and 0 <= yy < 12 and 0 <= xx < 10:
            ref[(y * 10 + x, yy * 10 + xx)] = np.exp(-(dy * dy + dx * dx) / 2)
  got = {(int(perm[a]), int(perm[b])): float(c) for a, b, c in zip(s, r, w)}
  assert got.keys() == ref.keys()
  np.testing.assert_allclose([got[k] for k in ref], [ref[k] for k in ref], rtol=1e-12)
  # level sizes halve; the total edge weight is preserved by W' = P^T W P (intra-cluster weight -> self loop)
  for lvl, (s_l, r_l, w_l) in enumerate(graphs):
    assert max(s_l.max(), r_l.max()) < len(perm) >> lvl
    np.testing.assert_allclose(w_l.sum(), sum(ref.values()), rtol=1e-12)
  assert ci.coarsened_grid(12, 10, 3) is ci.coarsened_grid(12, 10, 3)  # cached
  assert not perm.flags.writeable


def test_flatten_permute_and_masked_pool_match_a_numpy_loop():
  """K=1, one feature, kernel -1, bias 10: conv0 = relu(10 - pixel) per node (fake nodes would give 10), pooled by
  4 over tree groups of real pixels only; an identity head exposes the pooled values as logits."""
  h, w = 8, 6
  model = ci.ChebNetGrid(num_classes=1, image_size=(h, w), features=(1,), K=1, pool=(4,), fc=(), dropout=0.0)
  _, perm = model.coarsened()
  g = len(perm) // 4
  model = model.clone(num_classes=g)
  img = np.random.default_rng(0).uniform(0, 20, (2, h, w, 1)).astype(np.float32)
  variables = model.init(_rngs(0), img, train=False)
  p = variables["params"]["chebnet"]
  p = {"conv0": {"kernel": -jnp.ones_like(p["conv0"]["kernel"]), "bias": 10 * jnp.ones_like(p["conv0"]["bias"])},
       "logits": {"kernel": jnp.eye(g), "bias": jnp.zeros(g)}}
  out = np.asarray(model.apply({"params": {"chebnet": p}}, img, train=False))
  ref = np.zeros((2, g))
  assert (perm == -1).any(), "test needs fake nodes"
  for b in range(2):
    for k in range(g):
      vals = [max(10.0 - img[b, q // w, q % w, 0], 0.0) for q in perm[4 * k:4 * k + 4] if q >= 0]
      ref[b, k] = max(vals) if vals else 0.0
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_grid_filter_is_shift_equivariant_in_the_interior():
  """The tree-ordered level-0 graph is still the regular grid: T_k(L~) of a one-pixel impulse, moved one pixel,
  is the moved response (every interior pixel has the same degree), up to K-1 = 3 hops from the impulse."""
  graphs, perm = ci.coarsened_grid(16, 16, 2)
  gr = fixed_graph(len(perm), *graphs[0])
  imgs = np.zeros((2, 256, 1), np.float32)
  imgs[0, 7 * 16 + 7] = imgs[1, 7 * 16 + 8] = 1.0
  tx = np.asarray(gops.chebyshev_basis(gr, coarsening.permute_signal(imgs, perm), 4))  # [K, 2, N0, 1]
  back = np.zeros((4, 2, 256))
  back[:, :, perm[perm >= 0]] = tx[:, :, perm >= 0, 0]
  back = back.reshape(4, 2, 16, 16)
  np.testing.assert_allclose(back[:, 1, 2:13, 3:14], back[:, 0, 2:13, 2:13], atol=1e-6)
  assert np.abs(back[3, 0]).sum() > 1.0  # a nontrivial response


def test_cnn_grid_matched_architecture():
  model = registry.create("cnn_grid", num_classes=100, bn_axis_name=None)
  v = jax.eval_shape(lambda x: model.init(_rngs(0), x, train=False), jax.ShapeDtypeStruct((2, 32, 32, 3),
                                                                                          jnp.float32))
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v))
  assert n == (25 * 3 * 32 + 32) + (25 * 32 * 64 + 64) + (8 * 8 * 64 * 512 + 512) + (512 * 100 + 100)
  out = model.apply(model.init(_rngs(0), jnp.zeros((2, 32, 32, 3)), train=False), jnp.ones((2, 32, 32, 3)),
                    train=False)
  chex.assert_shape(out, (2, 100))


def test_short_training_through_the_classification_task_lowers_the_loss():
  """Horizontal vs vertical bars on 16x16 images: 25 Adam steps of the one training loop."""
  rng = np.random.default_rng(0)
  n = 128
  labels = rng.integers(0, 2, n).astype(np.int32)
  x = 0.1 * rng.standard_normal((n, 16, 16, 1)).astype(np.float32)
  pos = rng.integers(2, 14, n)
  for i in range(n):
    if labels[i]:
      x[i, :, pos[i], 0] += 1.0
    else:
      x[i, pos[i], :, 0] += 1.0
  model = registry.create("chebnet_grid", num_classes=2, image_size=16, dropout=0.0, **SMALL)
  task = classify.ClassificationTask(model=model, tx=optax.adam(1e-2), loss_fn=losses.cross_entropy,
                                     image_shape=(16, 16, 1), num_classes=2)
  data = ArrayBatches({"image": x, "label": labels}, global_batch_size=32, seed=0)
  batch = {"image": x, "label": labels, "valid": np.ones(n, np.float32)}

  eval_step = jax.jit(task.eval_step)

  def mean_loss(state):
    sums, _ = eval_step(state, batch)
    return float(sums["loss_sum"]) / n

  mesh = task_lib.make_mesh()
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), next(iter(data)))
  data = ArrayBatches({"image": x, "label": labels}, global_batch_size=32, seed=0)
  _, state0 = task_lib.init_train_state(task, 0, abstract, mesh)  # the loop's init (seed 0)
  state, _ = loop_lib.train(task, data, config=loop_lib.LoopConfig(num_steps=25, progress_bar=False, prefetch=0),
                            mesh=mesh, workdir=None)
  before, after = mean_loss(state0), mean_loss(state)
  assert np.isfinite(after) and after < 0.5 * before, (before, after)


@pytest.mark.slow  # the same pipeline as tests/core/test_classify_cli.py; the flagfile itself is parsed by test_config_flags
def test_smoke_flagfile_end_to_end(shapes_data_dir, tmp_path):
  """``python -m experiments.classify --flagfile=classify_chebnet_shapes_smoke.flags`` (the model is found by name)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 "
             + os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""), JAX_PLATFORMS="cpu")
  args = [f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={shapes_data_dir}", "--noprogress_bar"]
  proc = subprocess.run([sys.executable, "-m", "experiments.classify", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert results["step"] == 6 and results["model"] == "chebnet_grid" and results["eval_count"] == 5000
  _, perm = ci.coarsened_grid(32, 32, 4)
  n_top = len(perm) // 16
  expected = (5 * 3 * 8 + 8) + (5 * 8 * 16 + 16) + (n_top * 16 * 32 + 32) + (32 * 100 + 100)
  assert results["num_params"] == expected
  assert np.isfinite(results["eval_loss"]) and 0 <= results["eval_accuracy"] <= 1
