"""Recipes (research/train/recipes.py + classify flags): Goyal et al.'s large-minibatch rules, BN freezing,
center loss, temperature, flag validation."""


import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models
from research.data import DatasetSpec
from research.layers.common import batch_norm, conv
from research.train import checkpoint as ckpt_lib
from research.train import classify, losses, optim, recipes, steps
from research.train import task as task_lib


class TinyBNNet(nn.Module):
  """conv-BN-ReLU-pool, classifier named ``head``: compiles in about a second."""
  num_classes: int = 5
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train):
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32)
    x = conv(8, 3, 2, **kw)(x)
    x = nn.relu(batch_norm(axis_name=self.bn_axis_name, **kw)(x, use_running_average=not train))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


SPEC = DatasetSpec(name="toy", num_classes=5, num_coarse_classes=None, image_shape=(32, 32, 3), num_train=64,
                   num_test=64, mean=(0.0,) * 3, std=(1.0,) * 3, default_augment="none", eval_split="test")


def _cfg(**kw):
  return classify.ClassifyConfig(**{"model": "wrn10_1", "num_steps": 10, "batch_size": 16, **kw})


# ------------------------------------------------------------------------------------- large-minibatch SGD


def test_linear_scaling_rule():
  assert recipes.linear_scaled_lr(0.1, 8192, 256) == pytest.approx(3.2)  # Goyal et al.: 0.1 * kn / 256
  assert recipes.scaled_lr("none", 0.1, 8192, 256) == 0.1
  assert classify.effective_learning_rate(_cfg(learning_rate=0.05, batch_size=128, lr_scaling="linear",
                                               base_batch_size=32)) == pytest.approx(0.2)
  assert classify.effective_learning_rate(_cfg(learning_rate=0.05, batch_size=128)) == 0.05


def test_gradual_warmup_from_small_batch_lr():
  # k = 4: ramp linearly from eta = 0.1 to k*eta = 0.4 over 10 steps, then the step schedule.
  s = optim.make_schedule("step", 0.4, 100, warmup_steps=10, warmup_init=0.25, step_boundaries=(0.5, 0.75))
  np.testing.assert_allclose([s(0), s(5), s(10), s(49), s(50), s(75)], [0.1, 0.25, 0.4, 0.4, 0.04, 0.004],
                             rtol=1e-6)


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_zero_init_residual_gamma_present_and_zero(block):
  """--zero_init_residual reaches the model; each residual branch's last BN has gamma = 0, every other gamma 1."""
  from research.models import resnet
  cfg = _cfg(model="resnet18" if block == "BasicBlock" else "resnet50", zero_init_residual=True)
  classify.validate(cfg)
  model = classify.make_model(cfg, SPEC)
  assert model.zero_init_last_bn and model.block_cls.__name__ == block
  assert not classify.make_model(_cfg(model="resnet18"), SPEC).zero_init_last_bn
  # One block of that type, with a projection shortcut, initialised as the model initialises its blocks.
  blk = getattr(resnet, block)(8, strides=2, zero_init_last_bn=True)
  params = jax.jit(lambda: blk.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)), train=False))()["params"]
  bns = sorted(k for k in params if k.startswith("BatchNorm"))
  assert len(bns) == (2 if block == "BasicBlock" else 3) and "downsample_bn" in params
  np.testing.assert_array_equal(params[bns[-1]]["scale"], 0.0)  # the residual branch's last BN
  for other in bns[:-1] + ["downsample_bn"]:
    np.testing.assert_array_equal(params[other]["scale"], 1.0)
  # With gamma = 0 the branch outputs exactly zero: the block is the (projected) shortcut, ReLU-ed.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 8)), jnp.float32)
  blk_id = getattr(resnet, block)(8 // (4 if block == "Bottleneck" else 1), zero_init_last_bn=True)
  v = blk_id.init(jax.random.PRNGKey(1), x, train=False)
  np.testing.assert_allclose(blk_id.apply(v, x, train=False), jax.nn.relu(x), atol=1e-6)


def test_zero_init_residual_needs_a_model_that_supports_it():
  with pytest.raises(ValueError, match="--zero_init_residual: model 'wrn10_1'.*pre-activation"):
    classify.validate(_cfg(zero_init_residual=True))


def test_no_weight_decay_on_bn_and_bias():
  model = models.create("resnet18", width=8, num_classes=5)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
  mask = optim.decay_mask(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes))
  for path, m in jax.tree_util.tree_leaves_with_path(mask):
    name = jax.tree_util.keystr(path)
    assert m == ("kernel" in name), name


# ------------------------------------------------------------------------------------- BN freezing


def _tiny_step(freeze_bn, center_loss=None, devices=None, num_classes=5, sync_bn=False):
  """(model, mesh, initial state, step fn) of a ClassificationTask; ``freeze_bn``: BN frozen from step 0."""
  model = TinyBNNet(num_classes=num_classes, bn_axis_name=steps.DATA_AXIS if sync_bn else None)
  task = classify.ClassificationTask(model=model, tx=optax.sgd(0.1), loss_fn=losses.cross_entropy,
                                     image_shape=(32, 32, 3), num_classes=num_classes, center_loss=center_loss,
                                     freeze_bn_from=0 if freeze_bn else None)
  mesh = steps.make_mesh(devices or jax.devices())
  batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32), "label": jax.ShapeDtypeStruct((16,), jnp.int32)}
  _, state = task_lib.init_train_state(task, 0, batch, mesh)
  return model, mesh, state, task_lib.compiled_train_step(task, mesh)


def _batch(n=16, seed=0, num_classes=5):
  rng = np.random.default_rng(seed)
  return {"image": (rng.normal(size=(n, 32, 32, 3)) + 1.5).astype(np.float32),
          "label": rng.integers(0, num_classes, n).astype(np.int32)}


def test_frozen_bn_keeps_running_statistics_and_normalises_with_them():
  model, mesh, state, step = _tiny_step(freeze_bn=False)
  state, _ = step(state, steps.global_batch(_batch(seed=1), mesh))  # non-trivial running statistics
  before = jax.device_get(state.batch_stats)
  _, _, _, frozen_step = _tiny_step(freeze_bn=True)
  params_before = jax.device_get(state.params)
  state2, _ = frozen_step(state, steps.global_batch(_batch(seed=2), mesh))
  after = jax.device_get(state2.batch_stats)
  chex.assert_trees_all_equal(before, after)  # bit-identical: statistics are not updated
  assert not np.allclose(jax.device_get(state2.params)["head"]["kernel"], params_before["head"]["kernel"])
  # Train-mode apply under frozen BN == inference-mode apply (running statistics), != batch statistics.
  v = {"params": params_before, "batch_stats": before}
  x = _batch(seed=3)["image"]
  with recipes.frozen_batch_norm():
    y_frozen, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
  y_eval = model.apply(v, x, train=False)
  y_train, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y_frozen, y_eval, rtol=1e-6, atol=1e-6)
  assert not np.allclose(y_train, y_eval, atol=1e-3)
  chex.assert_trees_all_equal(upd["batch_stats"], before)
  # And the unfrozen step does change them.
  state3, _ = step(state2, steps.global_batch(_batch(seed=2), mesh))
  assert not np.allclose(jax.device_get(state3.batch_stats)["BatchNorm_0"]["mean"], after["BatchNorm_0"]["mean"])


# ------------------------------------------------------------------------------------- center loss


def test_center_update_matches_numpy_eq4():
  rng = np.random.default_rng(0)
  c, d, b, alpha = 4, 3, 10, 0.5
  centers, x = rng.normal(size=(c, d)), rng.normal(size=(b, d))
  y = np.array([0, 0, 1, 1, 1, 2, 0, 1, 2, 2])  # class 3 absent: its centre must not move
  expected = centers.copy()
  for j in range(c):  # Wen et al. Eq. 4, literally
    sel = y == j
    delta = np.sum(centers[j] - x[sel], axis=0) / (1 + sel.sum())
    expected[j] = centers[j] - alpha * delta
  counts, sums = recipes.center_statistics(jnp.asarray(x, jnp.float32), jnp.asarray(y), c)
  got = recipes.update_centers_from_statistics(jnp.asarray(centers, jnp.float32), counts, sums, alpha)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[3], centers[3], rtol=1e-6)
  np.testing.assert_allclose(losses.update_centers(jnp.asarray(centers, jnp.float32), jnp.asarray(x, jnp.float32),
                                                   jnp.asarray(y), alpha), expected, rtol=1e-5, atol=1e-6)


def test_center_loss_step_four_devices_equals_one_device():
  cl = recipes.CenterLoss(lam=0.1, alpha=0.5)
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    model, mesh, state, step = _tiny_step(False, cl, devices, sync_bn=True)  # sync BN: same features
    state = state.replace(model_state={**state.model_state,
                                       "centers": jax.device_put(jnp.ones((5, 8)), steps.replicated(mesh))})
    for s in range(2):
      state, m = step(state, steps.global_batch(_batch(seed=s), mesh))
    out.append(jax.device_get((state.model_state["centers"], state.params, m["loss"])))
  chex.assert_trees_all_close(out[0], out[1], rtol=1e-4, atol=1e-6)
  assert not np.allclose(out[0][0], 1.0)  # centres moved


class MLP2D(nn.Module):
  """Wen et al.'s toy setting: a 2-D deep feature before the linear classifier ``head``."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, *, train):
    del train
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(self.num_classes, name="head")(nn.Dense(2, name="feature")(x))


def test_center_loss_reduces_intra_class_distance():
  """Wen et al. Fig. 3 in miniature: with lambda > 0 the deep features of each class are more compact
  relative to the distances between classes, and the centres track the class means."""
  rng = np.random.default_rng(0)
  k, n = 4, 256
  means = 2.0 * rng.normal(size=(k, 16)).astype(np.float32)
  y = np.repeat(np.arange(k), n // k).astype(np.int32)
  x = (means[y] + rng.normal(size=(n, 16))).astype(np.float32)

  def spread(lam):
    model = MLP2D(num_classes=k)
    task = classify.ClassificationTask(model=model, tx=optax.sgd(0.05, momentum=0.9), loss_fn=losses.cross_entropy,
                                       image_shape=(16,), num_classes=k,
                                       center_loss=recipes.CenterLoss(lam=lam, alpha=0.5))
    params = model.init(jax.random.PRNGKey(0), x[:1], train=False)["params"]
    state = task_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                model_state={"batch_stats": {}, "centers": recipes.init_centers(k, 2)},
                                opt_state=task.tx.init(params), rng=jax.random.PRNGKey(1))

    @jax.jit
    def step(state, batch):
      return task.update(state, batch, jax.random.fold_in(state.rng, state.step), axis_name=None)

    for _ in range(200):
      state, _ = step(state, {"image": x, "label": y})
    with recipes.capture_features() as f:
      model.apply({"params": state.params}, x, train=False)
    feats = np.asarray(f["features"])
    class_means = np.stack([feats[y == j].mean(0) for j in range(k)])
    intra = np.mean(np.sum((feats - class_means[y]) ** 2, -1))
    inter = np.mean(np.sum((class_means - class_means.mean(0)) ** 2, -1))
    return intra / inter, np.asarray(state.model_state["centers"]), class_means

  ratio0, _, _ = spread(0.0)
  ratio1, centers, class_means = spread(0.1)
  assert ratio1 < 0.5 * ratio0, (ratio0, ratio1)
  np.testing.assert_allclose(centers, class_means, atol=0.05 * np.abs(class_means).max())


def test_center_loss_state_is_checkpointed(tmp_path):
  cfg = _cfg(model="resnet18", model_kwargs={"width": 8}, loss="softmax_center")
  mesh = steps.make_mesh(jax.devices()[:1])
  _, abstract, state = classify.build(cfg, SPEC, mesh)
  assert state.model_state["centers"].shape == (5, 64) and abstract.model_state["centers"].shape == (5, 64)
  state = state.replace(model_state={**state.model_state, "centers": state.model_state["centers"] + 3.0})
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"))
  ck.save(1, state)
  ck.wait()
  restored, step = ck.restore_latest(abstract)
  ck.close()
  assert step == 1
  np.testing.assert_array_equal(jax.device_get(restored.model_state["centers"]), 3.0)


# ------------------------------------------------------------------------------------- losses and flags


def test_temperature_and_loss_selection():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)) * 3, jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 4, 0])
  fn = classify._loss_fn(_cfg(temperature=2.0))
  np.testing.assert_allclose(fn(logits, labels), losses.cross_entropy(logits / 2.0, labels), rtol=1e-6)
  np.testing.assert_allclose(classify._loss_fn(_cfg(loss="hinge"))(logits, labels),
                             losses.multiclass_hinge(logits, labels), rtol=1e-6)
  for name in ("logistic", "square", "softmax_center", "label_smoothing", "temperature_cross_entropy"):
    assert classify._loss_fn(_cfg(loss=name))(logits, labels).shape == (6,)


@pytest.mark.parametrize("kw,message", [
    (dict(lr_scaling="sqrt"), "--lr_scaling='sqrt'"),
    (dict(base_batch_size=0), "--base_batch_size must be positive"),
    (dict(warmup_init=2.0), "--warmup_init must be in [0, 1]"),
    (dict(freeze_bn_last_steps=10), "--freeze_bn_last_steps=10 must be in [0, --num_steps=10)"),
    (dict(temperature=0.0), "--temperature must be positive"),
    (dict(loss="hinge", temperature=2.0), "--temperature applies to the softmax losses"),
    (dict(loss="square", label_smoothing=0.1), "--label_smoothing applies to the softmax cross-entropy"),
    (dict(loss="bogus"), "--loss='bogus'"),
    (dict(center_loss_alpha=0.0), "--center_loss_alpha must be in (0, 1]"),
    (dict(num_classes_subset=1), "--num_classes_subset must be 0"),
])
def test_bad_recipe_flags_raise_naming_the_flag(kw, message):
  with pytest.raises(ValueError) as e:
    classify.validate(_cfg(**kw))
  assert message in str(e.value)


def test_class_subset_source():
  labels = np.array([3, 0, 7, 1, 0, 9, 2])
  src = recipes.ClassSubsetSource([{"label": int(l), "i": i} for i, l in enumerate(labels)], labels, 3)
  assert len(src) == 4 and [src[i]["i"] for i in range(4)] == [1, 3, 4, 6]
