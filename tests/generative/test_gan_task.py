"""GAN / WGAN / WGAN-GP / BEGAN nets and the two-optimizer ``GANTask``; the VAE task (issue 15, items 2 and 4)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.data.memory import ArrayBatches
from research.train import generative as gen
from research.train import loop
from research.train import task as task_lib

jax.config.update("jax_default_matmul_precision", "highest")


# ------------------------------------------------------------------------------------------------ nets


@pytest.mark.parametrize("size", [8, pytest.param(32, marks=pytest.mark.slow)])
def test_dcgan_shapes_and_conditioning(size):
  g = models.create("dcgan_generator", image_size=size, channels=3, width=8, num_classes=10)
  z, y = jnp.ones((3, 16)), jnp.array([0, 4, 9])
  gv = g.init(jax.random.PRNGKey(0), z, y, train=True)
  x = g.apply(gv, z, y, train=False)
  chex.assert_shape(x, (3, size, size, 3))
  assert float(jnp.max(jnp.abs(x))) <= 1.0
  # the class changes the sample (one-hot concatenated to z)
  x2 = g.apply(gv, z, jnp.array([1, 4, 9]), train=False)
  assert float(jnp.max(jnp.abs(x2[0] - x[0]))) > 0 and float(jnp.max(jnp.abs(x2[1:] - x[1:]))) == 0
  for cond in ("projection", "concat"):
    d = models.create("dcgan_critic", image_size=size, width=8, extra_layers=1, norm="layer", num_classes=10,
                      conditioning=cond)
    dv = d.init(jax.random.PRNGKey(1), x, y, train=True)
    s = d.apply(dv, x, y, train=True)
    chex.assert_shape(s, (3,))
    assert float(jnp.max(jnp.abs(d.apply(dv, x, jnp.array([1, 4, 9]), train=True)[1:] - s[1:]))) == 0


def test_projection_discriminator_is_linear_plus_inner_product():
  """Miyato & Koyama's projection: f(x, y) = w.h(x) + b + <V[y], h(x)>, so f(x, y) - f(x, y') = <V[y] - V[y'], h(x)>
  with h(x) = d f(x, y) / d V[y] (the features the score layer sees)."""
  d = models.create("dcgan_critic", image_size=8, width=4, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  v = d.init(jax.random.PRNGKey(1), x, jnp.array([0, 0]), train=True)
  emb = v["params"]["class_embedding"]["kernel"]  # [K, F]

  def score_with(kernel, y):
    p = {**v["params"], "class_embedding": {"kernel": kernel}}
    return d.apply({"params": p}, x, y, train=True)

  y0 = jnp.array([0, 0])
  h = jnp.stack([jax.grad(lambda k, i=i: score_with(k, y0)[i])(emb)[0] for i in range(2)])  # [2, F]
  diff = score_with(emb, jnp.array([2, 2])) - score_with(emb, y0)
  np.testing.assert_allclose(diff, h @ (emb[2] - emb[0]), rtol=1e-5, atol=1e-5)
  # the gradient w.r.t. the other rows is zero: the class enters only through its own row
  g = jax.grad(lambda k: score_with(k, y0)[0])(emb)
  assert float(jnp.max(jnp.abs(g[1:]))) == 0.0


def test_began_and_mlp_shapes():
  a = models.create("began_autoencoder", image_size=8, channels=1, width=8, hidden=12)
  x = jnp.zeros((2, 8, 8, 1))
  chex.assert_shape(a.apply(a.init(jax.random.PRNGKey(0), x, train=True), x, train=True), (2, 8, 8, 1))
  g = models.create("began_generator", image_size=8, channels=1, width=8)
  z = jnp.ones((2, 12))
  out = g.apply(g.init(jax.random.PRNGKey(0), z, train=True), z, train=True)
  chex.assert_shape(out, (2, 8, 8, 1))
  with pytest.raises(ValueError, match="unconditional"):
    g.init(jax.random.PRNGKey(0), z, jnp.zeros(2, jnp.int32), train=True)
  m = models.create("mlp_critic", hidden=8, depth=2, norm="layer")
  p = jnp.ones((5, 2))
  chex.assert_shape(m.apply(m.init(jax.random.PRNGKey(0), p, train=True), p, train=True), (5,))
  with pytest.raises(ValueError, match="power of two"):
    models.create("dcgan_generator", image_size=12).init(jax.random.PRNGKey(0), z, train=True)


# ------------------------------------------------------------------------------------------------ losses


def test_gradient_penalty_matches_per_example_gradients():
  """The penalty's gradient of the SUM is the per-example gradient (independent examples); for a linear critic
  f(x) = <w, x> every gradient is w, so the penalty is (||w|| - 1)^2 exactly."""
  w = jnp.array([3.0, 4.0])
  real, fake = jax.random.normal(jax.random.PRNGKey(0), (6, 2)), jax.random.normal(jax.random.PRNGKey(1), (6, 2))
  eps = jnp.linspace(0, 1, 6)
  gp, norm = gen.gradient_penalty(lambda v: v @ w, real, fake, eps)
  np.testing.assert_allclose(gp, (5.0 - 1.0) ** 2, rtol=1e-6)
  np.testing.assert_allclose(norm, 5.0, rtol=1e-6)
  # a nonlinear critic vs an explicit per-example vmap of grad
  f = lambda v: jnp.sum(jnp.sin(v) * jnp.array([1.0, 2.0]), -1) + jnp.sum(v ** 2, -1)  # noqa: E731
  gp, _ = gen.gradient_penalty(f, real, fake, eps)
  x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
  g = jax.vmap(jax.grad(lambda v: f(v[None])[0]))(x_hat)
  np.testing.assert_allclose(gp, np.mean((np.linalg.norm(g, axis=-1) - 1) ** 2), rtol=1e-5)


def test_gradient_penalty_gradient_by_finite_differences():
  """The double backward: d gp / d w of f(x) = tanh(<w, x>) against central differences (float64)."""
  with jax.enable_x64(True):
    real = jax.random.normal(jax.random.PRNGKey(0), (4, 3), jnp.float64)
    fake = jax.random.normal(jax.random.PRNGKey(1), (4, 3), jnp.float64)
    eps = jnp.array([0.1, 0.5, 0.7, 0.9], jnp.float64)

    def gp_of(w):
      return gen.gradient_penalty(lambda v: jnp.tanh(v @ w), real, fake, eps)[0]

    w = jnp.array([0.3, -1.2, 0.8], jnp.float64)
    grad = jax.grad(gp_of)(w)
    h = 1e-6
    fd = np.array([(gp_of(w.at[i].add(h)) - gp_of(w.at[i].add(-h))) / (2 * h) for i in range(3)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def _toy_task(loss, n_critic=1, **kw):
  g = models.create("mlp_generator", hidden=16, depth=2)
  d = models.create("mlp_critic", hidden=16, depth=2)
  return gen.GANTask(generator=g, critic=d, loss_type=loss, z_dim=2, data_shape=(2,),
                     optimizers=gen.paper_optimizers(loss, learning_rate=1e-3), n_critic=n_critic, **kw)


def test_critic_losses_are_the_papers_formulas():
  """GAN: -[log sigmoid(D(x)) + log(1 - sigmoid(D(G(z))))]; WGAN: E D(G(z)) - E D(x); generator losses:
  saturating log(1 - sigmoid), non-saturating -log sigmoid, WGAN -E D(G(z))."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
  for loss in ("gan", "nsgan", "wgan"):
    t = _toy_task(loss)
    params, state = t.init(jax.random.PRNGKey(1), {"x": x})
    rng = jax.random.PRNGKey(2)
    val, metrics = t.critic_loss(params["critic"], params["generator"], state, x, None, rng)
    fake, _ = t.generate(params["generator"], state["generator_batch_stats"], t._noise(jax.random.split(rng)[0], 8),
                         None, train=True)
    dr, df = t.score(params["critic"], x, None), t.score(params["critic"], fake, None)
    if loss == "wgan":
      np.testing.assert_allclose(val, jnp.mean(df) - jnp.mean(dr), rtol=1e-6)
    else:
      sig = jax.nn.sigmoid
      np.testing.assert_allclose(val, -jnp.mean(jnp.log(sig(dr))) - jnp.mean(jnp.log(1 - sig(df))), rtol=1e-5)
    g_val, _ = t.generator_loss(params["generator"], params["critic"], state, None, rng, 8)
    fake, _ = t.generate(params["generator"], state["generator_batch_stats"], t._noise(rng, 8), None, train=True)
    df = t.score(params["critic"], fake, None)
    expect = {"gan": jnp.mean(jnp.log(1 - jax.nn.sigmoid(df))), "nsgan": -jnp.mean(jnp.log(jax.nn.sigmoid(df))),
              "wgan": -jnp.mean(df)}[loss]
    np.testing.assert_allclose(g_val, expect, rtol=1e-5)


def _train(task, data, steps, *, batch=8, seed=0, devices=None):
  batches = ArrayBatches(data, global_batch_size=batch * task.n_critic, seed=seed)
  mesh = task_lib.make_mesh(devices)
  return loop.train(task, batches, config=loop.LoopConfig(num_steps=steps, seed=seed, eval_every=0,
                                                          checkpoint_every=0, progress_bar=False),
                    mesh=mesh, workdir=None)


def test_wgan_step_clips_and_counts_critic_updates():
  """One loop step = n_critic critic updates (RMSProp) + one generator update; weights stay in [-c, c]."""
  t = _toy_task("wgan", n_critic=3, clip=0.02)
  data = {"x": np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32),
          "label": np.zeros(64, np.int32)}
  state, _ = _train(t, data, 2, devices=jax.devices()[:1])
  leaves = jax.tree.leaves(state.params["critic"])
  assert max(float(jnp.max(jnp.abs(v))) for v in leaves) <= 0.02 + 1e-7
  assert int(state.step) == 2


def test_critic_takes_n_critic_adam_updates_per_step():
  """With Adam (WGAN-GP) the critic's optimizer count advances by n_critic per loop step, the generator's by 1."""
  t = _toy_task("wgan_gp", n_critic=3)
  data = {"x": np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32),
          "label": np.zeros(64, np.int32)}
  state, _ = _train(t, data, 2, devices=jax.devices()[:1])
  counts = {k: int(jax.tree.leaves([s for s in v if hasattr(s, "count")])[0]) for k, v in state.opt_state.items()}
  assert counts == {"critic": 6, "generator": 2}


def test_began_k_update_follows_the_equilibrium_rule():
  """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1) with the losses logged at that step."""
  g = models.create("began_generator", image_size=8, channels=1, width=4)
  d = models.create("began_autoencoder", image_size=8, channels=1, width=4, hidden=4)
  t = gen.GANTask(generator=g, critic=d, loss_type="began", z_dim=4, data_shape=(8, 8, 1),
                  optimizers=gen.paper_optimizers("began"), gamma=0.5, lambda_k=0.1)
  x = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 1)).astype(np.float32)
  batch = {"x": jnp.asarray(x[:8]), "label": jnp.zeros(8, jnp.int32)}
  params, ms = t.init(jax.random.PRNGKey(0), batch)
  ms = {**ms, "k": jnp.float32(0.3)}
  tx = t.optimizer()
  state = task_lib.TrainState(step=jnp.int32(0), params=params, model_state=ms,
                              opt_state=task_lib.init_optimizer_state(tx, params), rng=jax.random.PRNGKey(1))
  new, m = jax.jit(lambda s, b, r: t.update(s, b, r, axis_name=None))(state, batch, jax.random.PRNGKey(2))
  expect = np.clip(0.3 + 0.1 * (0.5 * float(m["l_real"]) - float(m["l_fake_g"])), 0, 1)
  np.testing.assert_allclose(float(new.model_state["k"]), expect, rtol=1e-6)
  np.testing.assert_allclose(float(m["m_global"]), float(m["l_real"]) + abs(0.5 * float(m["l_real"]) -
                                                                            float(m["l_fake_g"])), rtol=1e-6)


def test_update_compiles_once_and_runs_on_four_devices():
  t = _toy_task("wgan_gp", n_critic=2)
  data = {"x": np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32),
          "label": np.zeros(64, np.int32)}
  traced = []
  orig = t.update

  def counting(*a, **k):
    traced.append(1)
    return orig(*a, **k)

  t.update = counting
  state, _ = _train(t, data, 4, batch=8)  # 4 devices, 2 sub-batches of 8 per step
  assert len(traced) == 1 and int(state.step) == 4
  with pytest.raises(ValueError, match="n_critic"):
    _train(_toy_task("wgan_gp", n_critic=2), data, 1, batch=2)  # 4 rows: 1 per device, not 2 sub-batches


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="--loss='lsgan'"):
    _toy_task("lsgan")
  with pytest.raises(ValueError, match="--n_critic must be 1"):
    _toy_task("began", n_critic=5)
  with pytest.raises(ValueError, match="--loss="):
    gen.paper_optimizers("hinge")


def test_nsgan_covers_the_ring_of_eight():
  """500 generator iterations of the non-saturating GAN on the 8-mode ring (radius 2, std 0.02): >= 6 of the 8
  modes are hit and a tenth of the samples lie within 0.3 of a mode, from none at initialisation (a learning
  check; measured 8 modes / 15% on seeds 0 and 1)."""
  rng = np.random.default_rng(0)
  ang = 2 * np.pi * np.arange(8) / 8
  modes = 2 * np.stack([np.cos(ang), np.sin(ang)], -1)
  pts = (modes[rng.integers(0, 8, 5000)] + 0.02 * rng.standard_normal((5000, 2))).astype(np.float32)
  g = models.create("mlp_generator", hidden=64, depth=3)
  d = models.create("mlp_critic", hidden=64, depth=3)
  t = gen.GANTask(generator=g, critic=d, loss_type="nsgan", z_dim=2, data_shape=(2,),
                  optimizers=gen.paper_optimizers("nsgan", learning_rate=1e-3))
  state, _ = _train(t, {"x": pts, "label": np.zeros(5000, np.int32)}, 500, batch=64, devices=jax.devices()[:1])
  s = np.asarray(t.sample(state.params, state.model_state, jnp.arange(1000)))
  dist = np.linalg.norm(s[:, None] - modes[None], axis=-1)
  near = dist.min(1) < 0.3
  assert near.mean() > 0.1, near.mean()
  assert len(set(dist.argmin(1)[near])) >= 6


# ------------------------------------------------------------------------------------------------ VAE


def test_gaussian_kl_and_bernoulli_likelihood_closed_forms():
  mu, logvar = jnp.array([[0.5, -1.0]]), jnp.array([[0.2, -0.3]])
  var = np.exp(np.asarray(logvar))
  expect = 0.5 * np.sum(var + np.asarray(mu) ** 2 - 1 - np.asarray(logvar))
  np.testing.assert_allclose(gen.gaussian_kl(mu, logvar), [expect], rtol=1e-6)
  x, logits = jnp.array([[1.0, 0.0, 1.0]]), jnp.array([[0.3, -2.0, 4.0]])
  p = jax.nn.sigmoid(logits)
  np.testing.assert_allclose(gen.bernoulli_log_likelihood(x, logits),
                             np.sum(np.log(np.where(np.asarray(x) > 0, p, 1 - p)), -1), rtol=1e-5)
  np.testing.assert_allclose(gen.log_normal(jnp.array([[0.0]]), 0.0, jnp.zeros((1, 1))), [-0.5 * math.log(2 * math.pi)],
                             rtol=1e-6)


def test_vae_trains_and_the_iwae_bound_is_tighter():
  """A small VAE on random binary 'digits' (2 prototypes + noise): -ELBO falls, -L_K <= -ELBO, K=1 == ELBO's noise."""
  rng = np.random.default_rng(0)
  protos = (rng.random((2, 16)) < 0.5).astype(np.float32)
  x = np.clip(protos[rng.integers(0, 2, 400)] + (rng.random((400, 16)) < 0.05), 0, 1).astype(np.float32)
  x = x.reshape(400, 4, 4, 1)
  model = models.create("vae_mlp", data_dim=16, latent=2, hidden=32)
  t = gen.VAETask(model=model, learning_rate=3e-3, iwae_samples=50)
  evals = lambda: iter([{"x": x[:100], "index": np.arange(100, dtype=np.int32),  # noqa: E731
                         "valid": np.ones(100, np.float32)}])
  batches = ArrayBatches({"x": x}, global_batch_size=40, seed=0)
  _, first = loop.train(t, batches, config=loop.LoopConfig(num_steps=1, eval_every=0, checkpoint_every=0,
                                                           progress_bar=False),
                        mesh=task_lib.make_mesh(jax.devices()[:1]), workdir=None, eval_data=evals)
  t2 = gen.VAETask(model=model, learning_rate=3e-3, iwae_samples=50)
  batches = ArrayBatches({"x": x}, global_batch_size=40, seed=0)
  state, res = loop.train(t2, batches, config=loop.LoopConfig(num_steps=150, eval_every=0, checkpoint_every=0,
                                                              progress_bar=False),
                          mesh=task_lib.make_mesh(jax.devices()[:1]), workdir=None, eval_data=evals)
  assert res["eval_neg_elbo"] < first["eval_neg_elbo"] - 2.0
  assert res["eval_nll_iwae"] <= res["eval_neg_elbo"] + 1e-4
  assert 16 * math.log(2) > res["eval_nll_iwae"]  # better than coin flips
  # K = 1: log_weights of one sample is the single-sample ELBO estimate (same noise)
  xf = jnp.asarray(x[:5].reshape(5, -1))
  eps = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 2))
  lw = t2.log_weights(state.params, xf, eps)
  mu, logvar = model.apply({"params": state.params}, xf, method=model.encode)
  out = model.apply({"params": state.params}, mu + jnp.exp(0.5 * logvar) * eps[0], method=model.decode)
  elbo_terms = gen.bernoulli_log_likelihood(xf, out) + gen.log_normal(mu + jnp.exp(0.5 * logvar) * eps[0], 0.0,
                                                                      jnp.zeros_like(mu)) - gen.log_normal(
      mu + jnp.exp(0.5 * logvar) * eps[0], mu, logvar)
  np.testing.assert_allclose(lw[0], elbo_terms, rtol=1e-5)


@pytest.mark.parametrize("shape,features", [((2, 4, 4, 3), 5), ((1, 5, 7, 2), 4)])
def test_conv_transpose2x_equals_flax_conv_transpose(shape, features):
  """The sub-pixel form equals nn.ConvTranspose(k=4, s=2, SAME) with the same kernel and bias: values and the
  gradients w.r.t. the input and the parameters (float64)."""
  import flax.linen as nn
  from research.layers.upsample import ConvTranspose2x
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float64)
    ref = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", dtype=jnp.float64,
                           param_dtype=jnp.float64)
    ours = ConvTranspose2x(features, dtype=jnp.float64, param_dtype=jnp.float64)
    v = ref.init(jax.random.PRNGKey(1), x)
    v = {"params": {**v["params"], "bias": jax.random.normal(jax.random.PRNGKey(2), (features,), jnp.float64)}}
    chex.assert_trees_all_equal_shapes(v, ours.init(jax.random.PRNGKey(1), x))
    y = ours.apply(v, x)
    chex.assert_shape(y, (shape[0], 2 * shape[1], 2 * shape[2], features))
    np.testing.assert_allclose(y, ref.apply(v, x), rtol=1e-12, atol=1e-12)
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
    g_ref, g_ours = jax.grad(loss(ref), (0, 1))(v, x), jax.grad(loss(ours), (0, 1))(v, x)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
