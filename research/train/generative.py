"""Generative-model tasks on the ONE loop: GAN / WGAN / WGAN-GP / BEGAN (two optimizers) and the VAE.

:class:`GANTask` trains a generator ``G(z[, y])`` and a critic ``D(x[, y])`` (registered ``generative`` models) with
one of the losses of seed 003 §16 (``loss_type``):

* ``gan``: Goodfellow et al. 2014's minimax game, D maximises ``log D(x) + log(1 - D(G(z)))`` and G minimises
  ``log(1 - D(G(z)))`` (saturating); ``nsgan``: the same D, G maximises ``log D(G(z))`` (the non-saturating
  heuristic of the same paper). ``D = sigmoid(critic)``; written with softplus for stability.
* ``wgan``: Arjovsky et al. 2017 Algorithm 1: the critic maximises ``E f(x) - E f(G(z))`` (the Wasserstein-1
  estimate), its weights clipped to ``[-clip, clip]`` after every update; G minimises ``-E f(G(z))``; RMSProp.
* ``wgan_gp``: Gulrajani et al. 2017 Algorithm 1: no clipping, ``+ gp_weight * E (||grad f(x_hat)||_2 - 1)^2`` on
  random interpolates ``x_hat = eps x + (1 - eps) G(z)`` (a double backward); Adam with beta1 = 0.
* ``began``: Berthelot et al. 2017 §3.4: the critic is an auto-encoder with loss ``L(v) = mean |v - AE(v)|``;
  ``L_D = L(x) - k_t L(G(z_D))``, ``L_G = L(G(z_G))``, ``k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))),
  0, 1)`` and the convergence measure ``M_global = L(x) + |gamma L(x) - L(G(z_G))|``; both nets are updated from
  the same parameters (the paper's simultaneous update), ``k_t`` lives in ``model_state``.

One loop step is one GENERATOR iteration, as the papers count them: the step's batch holds ``n_critic`` sub-batches
(``{'x': [n_critic * b, ...], 'label': [n_critic * b]}`` per device), the critic takes ``n_critic`` updates on them
(unrolled in the program), then the generator one update on fresh noise -- both in one compiled program. Each group has its own
optimizer (``{'generator': ..., 'critic': ...}``, ``Task.optimizer``). The noise of a step is
``fold_in(step key, i)``; conditional models (``num_classes > 0``) generate for the real sub-batch's labels.
The generator's BatchNorm statistics (DCGAN) are updated in the generator update only (batch statistics are used
for the critic's fakes too, as in DCGAN's training mode) and averaged over devices.

Eval (:meth:`GANTask.eval_step`): ``{'x': held-out real data, 'index': [b], 'label': [b], 'valid': [b]}``; the
generator (running BatchNorm statistics) maps a fixed noise ``z_i = normal(fold_in(PRNGKey(eval_seed), i))`` per
example index ``i`` to a sample, so every eval of a run and every run see the same noise. Sums: the critic's mean
score on the real and the generated rows (WGAN: the Wasserstein estimate ``critic_gap`` = E f(x) - E f(G(z)) on
held-out data; GAN: the discriminator loss), BEGAN's ``L(x)``, ``L(G(z))``, ``M_global``; gathered: the samples and
their requested labels, handed to ``sample_metrics(samples, labels) -> dict`` (FID, Inception-Score analogue,
mode coverage ... ``research.methods.generative_experiment``) on the host.

:class:`VAETask` maximises the ELBO (Kingma & Welling 2014, Eq. 10: Gaussian ``q(z|x)``, standard normal prior,
analytic KL) of binary images (``likelihood="bernoulli"``; the inputs are binarised afresh at every step with
the step key -- dynamic binarisation) or real-valued ones (``"gaussian"``), and evaluates in NATS per example the
negative ELBO and the importance-weighted bound ``-L_K`` (Burda et al. 2016, Eq. 8, ``K = iwae_samples``) on
fixed (pre-binarised) test images: ``-L_K`` is an upper bound of ``-log p(x)`` that tightens as ``K`` grows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.train import task as task_lib

LOSSES = ("gan", "nsgan", "wgan", "wgan_gp", "began")
Metrics = dict[str, jnp.ndarray]


def paper_optimizers(loss_type: str, *, learning_rate: float | None = None, generator_lr: float | None = None,
                     critic_lr: float | None = None, beta1: float | None = None, beta2: float | None = None
                     ) -> dict[str, optax.GradientTransformation]:
  """Each paper's optimizer (overridable): DCGAN Adam(2e-4, 0.5, 0.999); WGAN RMSProp(5e-5); WGAN-GP
  Adam(1e-4, 0, 0.9); BEGAN Adam(1e-4, 0.5, 0.999) (Berthelot et al. §4.1 gives lr 1e-4, the betas of their code
  are Adam's defaults with beta1 = 0.5)."""
  if loss_type not in LOSSES:
    raise ValueError(f"--loss={loss_type!r}; choose one of {LOSSES}")
  defaults = {"gan": (2e-4, 0.5, 0.999), "nsgan": (2e-4, 0.5, 0.999), "wgan": (5e-5, None, None),
              "wgan_gp": (1e-4, 0.0, 0.9), "began": (1e-4, 0.5, 0.999)}[loss_type]
  lr = learning_rate if learning_rate is not None else defaults[0]
  lrs = {"generator": generator_lr if generator_lr is not None else lr,
         "critic": critic_lr if critic_lr is not None else lr}
  if loss_type == "wgan":
    return {k: optax.rmsprop(v, decay=0.99 if beta2 is None else beta2) for k, v in lrs.items()}
  b1 = defaults[1] if beta1 is None else beta1
  b2 = defaults[2] if beta2 is None else beta2
  return {k: optax.adam(v, b1=b1, b2=b2) for k, v in lrs.items()}


def gradient_penalty(critic_fn: Callable[[jnp.ndarray], jnp.ndarray], real, fake, eps) -> tuple[jnp.ndarray, jnp.ndarray]:
  """WGAN-GP's ``E (||grad_x f(x_hat)||_2 - 1)^2`` with ``x_hat = eps x + (1 - eps) fake`` (``eps`` [B] in [0, 1]).

  ``critic_fn(x [B, ...]) -> [B]`` must treat examples independently (no BatchNorm), so the gradient of the sum is
  the per-example gradient. Returns ``(penalty [], mean gradient norm [])``."""
  e = eps.reshape((-1,) + (1,) * (real.ndim - 1))
  x_hat = e * real + (1.0 - e) * fake
  grads = jax.grad(lambda v: jnp.sum(critic_fn(v)))(x_hat)
  norm = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1) + 1e-12)
  return jnp.mean(jnp.square(norm - 1.0)), jnp.mean(norm)


def began_recon_loss(x, recon) -> jnp.ndarray:
  """BEGAN's ``L(v) = |v - D(v)|^eta`` with eta = 1, as a mean over pixels: [B, ...] -> [B]."""
  return jnp.mean(jnp.abs(x - recon).reshape(x.shape[0], -1), -1)


@dataclasses.dataclass(eq=False)
class GANTask(task_lib.Task):
  """Two-player training of ``generator`` and ``critic`` (linen modules, see the module docstring)."""
  generator: nn.Module
  critic: nn.Module
  loss_type: str
  z_dim: int
  data_shape: tuple[int, ...]  # one example, e.g. (16, 16, 1) or (2,)
  optimizers: Mapping[str, optax.GradientTransformation]
  n_critic: int = 1
  clip: float = 0.01
  gp_weight: float = 10.0
  gamma: float = 0.5
  lambda_k: float = 0.001
  num_classes: int = 0
  eval_seed: int = 1234
  sample_metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None

  def __post_init__(self):
    if self.loss_type not in LOSSES:
      raise ValueError(f"--loss={self.loss_type!r}; choose one of {LOSSES}")
    if self.n_critic < 1:
      raise ValueError(f"--n_critic must be >= 1, got {self.n_critic}")
    if self.loss_type == "began" and self.n_critic != 1:
      raise ValueError(f"--loss=began updates both nets together: --n_critic must be 1, got {self.n_critic}")
    if self.loss_type == "began" and self.num_classes:
      raise ValueError("--loss=began is unconditional: drop --conditional")
    if set(self.optimizers) != {"generator", "critic"}:
      raise ValueError(f"optimizers must be {{'generator', 'critic'}}, got {sorted(self.optimizers)}")

  # ---------------------------------------------------------------------------------------------- variables
  def _labels(self, n: int):
    return jnp.zeros((n,), jnp.int32) if self.num_classes else None

  def init(self, rng, batch):
    g_rng, d_rng = jax.random.split(rng)
    z = jnp.zeros((2, self.z_dim), jnp.float32)
    g_vars = self.generator.init(g_rng, z, self._labels(2), train=True)
    x = jnp.zeros((2,) + tuple(self.data_shape), jnp.float32)
    critic = self.critic.init(d_rng, x, self._labels(2), train=True)["params"]
    if self.loss_type == "wgan":
      critic = self._clip(critic)
    model_state = {"generator_batch_stats": g_vars.get("batch_stats", {})}
    if self.loss_type == "began":
      model_state["k"] = jnp.zeros((), jnp.float32)
    return {"generator": g_vars["params"], "critic": critic}, model_state

  def optimizer(self):
    return dict(self.optimizers)

  def _clip(self, critic_params):
    return jax.tree.map(lambda p: jnp.clip(p, -self.clip, self.clip), critic_params)

  # ---------------------------------------------------------------------------------------------- networks
  def generate(self, g_params, batch_stats, z, y, *, train: bool):
    """Samples [B, ...] and the updated BatchNorm statistics (``train=True``: batch statistics)."""
    variables = {"params": g_params, **({"batch_stats": batch_stats} if jax.tree.leaves(batch_stats) else {})}
    if train and jax.tree.leaves(batch_stats):
      out, updates = self.generator.apply(variables, z, y, train=True, mutable=["batch_stats"])
      return out, updates["batch_stats"]
    return self.generator.apply(variables, z, y, train=train), batch_stats

  def score(self, d_params, x, y):
    """Critic output: scores [B] (GAN logits / WGAN values), or BEGAN's reconstructions [B, ...]."""
    return self.critic.apply({"params": d_params}, x, y, train=True)

  def _noise(self, rng, n):
    return jax.random.normal(rng, (n, self.z_dim), jnp.float32)

  # ---------------------------------------------------------------------------------------------- losses
  def critic_loss(self, d_params, g_params, model_state, x, y, rng) -> tuple[jnp.ndarray, Metrics]:
    """This device's critic loss on one sub-batch (``x`` [b, ...]) and its metrics."""
    z_rng, e_rng = jax.random.split(rng)
    fake, _ = self.generate(g_params, model_state["generator_batch_stats"], self._noise(z_rng, x.shape[0]), y,
                            train=True)
    fake = jax.lax.stop_gradient(fake)
    if self.loss_type == "began":
      l_real = jnp.mean(began_recon_loss(x, self.score(d_params, x, y)))
      l_fake = jnp.mean(began_recon_loss(fake, self.score(d_params, fake, y)))
      return l_real - model_state["k"] * l_fake, {"l_real": l_real, "l_fake_d": l_fake}
    d_real, d_fake = self.score(d_params, x, y), self.score(d_params, fake, y)
    metrics = {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
    if self.loss_type in ("gan", "nsgan"):  # -[log sigmoid(d_real) + log(1 - sigmoid(d_fake))]
      loss = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
      return loss, metrics
    loss = jnp.mean(d_fake) - jnp.mean(d_real)  # -(Wasserstein estimate)
    metrics["critic_gap"] = -loss
    if self.loss_type == "wgan_gp":
      eps = jax.random.uniform(e_rng, (x.shape[0],), jnp.float32)
      gp, gnorm = gradient_penalty(lambda v: self.score(d_params, v, y), x, fake, eps)
      loss = loss + self.gp_weight * gp
      metrics.update(gradient_penalty=gp, critic_grad_norm=gnorm)
    return loss, metrics

  def generator_loss(self, g_params, d_params, model_state, y, rng, n) -> tuple[jnp.ndarray, tuple[Any, Metrics]]:
    """This device's generator loss on ``n`` fresh samples, with the new BatchNorm statistics."""
    fake, stats = self.generate(g_params, model_state["generator_batch_stats"], self._noise(rng, n), y, train=True)
    if self.loss_type == "began":
      l_fake = jnp.mean(began_recon_loss(fake, self.score(d_params, fake, y)))
      return l_fake, (stats, {"l_fake_g": l_fake})
    d_fake = self.score(d_params, fake, y)
    if self.loss_type == "gan":  # minimise log(1 - sigmoid(d)) = -softplus(d) (saturating)
      loss = -jnp.mean(jax.nn.softplus(d_fake))
    elif self.loss_type == "nsgan":  # maximise log sigmoid(d)
      loss = jnp.mean(jax.nn.softplus(-d_fake))
    else:
      loss = -jnp.mean(d_fake)
    return loss, (stats, {"d_fake_g": jnp.mean(d_fake)})

  # ---------------------------------------------------------------------------------------------- the step
  def loss(self, params, model_state, batch, rng, *, train):
    """The critic's loss on the whole batch (the loop's generic entry point; training uses ``update``)."""
    del train
    loss, metrics = self.critic_loss(params["critic"], params["generator"], model_state, batch["x"],
                                     batch.get("label") if self.num_classes else None, rng)
    return loss, (model_state, metrics)

  def _split(self, v):
    """[n_critic * b, ...] -> [n_critic, b, ...] (this device's rows)."""
    n = v.shape[0]
    if n % self.n_critic:
      raise ValueError(f"GANTask: the per-device batch of {n} rows is not divisible by n_critic={self.n_critic}; "
                       f"the global batch must be batch_size * n_critic * devices")
    return v.reshape((self.n_critic, n // self.n_critic) + v.shape[1:])

  def update(self, state, batch, rng, *, axis_name):
    d_rng, g_rng = jax.random.split(rng)
    xs = self._split(batch["x"])
    ys = self._split(batch["label"]) if self.num_classes else None
    tx = self.optimizer()
    g_params, model_state = state.params["generator"], state.model_state

    def critic_step(carry, inputs):
      d_params, opt_state = carry
      i, x, y = inputs
      y = y if self.num_classes else None

      def f(p, ms, b, r, *, train):
        del train, b
        loss, metrics = self.critic_loss(p, g_params, ms, x, y, r)
        return loss, (ms, metrics)

      (loss, (_, metrics)), grads = task_lib.grad_of(f, d_params, model_state, None,
                                                     jax.random.fold_in(d_rng, i), axis_name)
      new, opt_state, updates = task_lib.apply_optimizer(tx["critic"], grads, opt_state, d_params)
      if self.loss_type == "wgan":
        new = self._clip(new)
      metrics = {"critic_loss": loss, **task_lib.mean_over(metrics, axis_name),
                 "critic_l2_grads": optax.global_norm(grads), "critic_l2_updates": optax.global_norm(updates)}
      return (new, opt_state), metrics

    idx = jnp.arange(self.n_critic)
    # A Python loop (unrolled in the program), not lax.scan: XLA:CPU runs some convolutions 40x slower inside a while
    # loop (BEGAN's critic gradient: 28 ms straight vs 1.2 s in a scan body, measured); n_critic is small.
    carry = (state.params["critic"], state.opt_state["critic"])
    for i in range(self.n_critic):
      carry, d_metrics = critic_step(carry, (idx[i], xs[i], ys[i] if ys is not None else idx[i]))
    d_params, d_opt = carry  # d_metrics: those of the last critic update of this step

    critic_for_g = state.params["critic"] if self.loss_type == "began" else d_params  # BEGAN: simultaneous
    y_g = ys[-1] if ys is not None else None

    def g(p, ms, b, r, *, train):
      del train, b
      loss, (stats, metrics) = self.generator_loss(p, critic_for_g, ms, y_g, r, xs.shape[1])
      return loss, (stats, metrics)

    (g_loss, (stats, g_metrics)), g_grads = task_lib.grad_of(g, g_params, model_state, None, g_rng, axis_name)
    g_new, g_opt, g_updates = task_lib.apply_optimizer(tx["generator"], g_grads, state.opt_state["generator"],
                                                       g_params)
    g_metrics = task_lib.mean_over(g_metrics, axis_name)
    stats = self.sync_model_state(None, stats, axis_name)
    new_state = {**model_state, "generator_batch_stats": stats}
    metrics = {"loss": d_metrics["critic_loss"], "generator_loss": g_loss, **d_metrics, **g_metrics,
               "generator_l2_grads": optax.global_norm(g_grads), "generator_l2_updates": optax.global_norm(g_updates),
               "critic_l2_params": optax.global_norm(d_params), "generator_l2_params": optax.global_norm(g_new)}
    if self.loss_type == "began":
      l_real, l_fake_g = d_metrics["l_real"], g_metrics["l_fake_g"]
      balance = self.gamma * l_real - l_fake_g
      new_state["k"] = jnp.clip(model_state["k"] + self.lambda_k * balance, 0.0, 1.0)
      metrics.update(k=model_state["k"], m_global=l_real + jnp.abs(balance))
    params = {"generator": g_new, "critic": d_params}
    opt_state = {"generator": g_opt, "critic": d_opt}
    return state.replace(step=state.step + 1, params=params, model_state=new_state, opt_state=opt_state), metrics

  # ---------------------------------------------------------------------------------------------- eval
  def eval_noise(self, index):
    """The fixed noise [b, z_dim] of eval example indices ``index`` [b]."""
    key = jax.random.PRNGKey(self.eval_seed)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (self.z_dim,)))(index)

  def sample(self, params, model_state, index, y=None):
    """Samples [b, ...] of the (eval-mode) generator for example indices ``index`` [b]."""
    out, _ = self.generate(params["generator"], model_state["generator_batch_stats"], self.eval_noise(index), y,
                           train=False)
    return out

  def eval_step(self, state, batch):
    valid = batch["valid"].astype(jnp.float32)
    y = batch["label"] if self.num_classes else None
    fake = self.sample(state.params, state.model_state, batch["index"], y)
    d = state.params["critic"]
    sums = {"count": jnp.sum(valid)}
    if self.loss_type == "began":
      l_real = began_recon_loss(batch["x"], self.score(d, batch["x"], y))
      l_fake = began_recon_loss(fake, self.score(d, fake, y))
      sums.update(l_real=jnp.sum(valid * l_real), l_fake=jnp.sum(valid * l_fake))
    else:
      d_real, d_fake = self.score(d, batch["x"], y), self.score(d, fake, y)
      sums.update(d_real=jnp.sum(valid * d_real), d_fake=jnp.sum(valid * d_fake),
                  bce=jnp.sum(valid * (jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake))))
    gathered = {"samples": fake, "label": batch["label"] if "label" in batch else batch["index"] * 0,
                "valid": batch["valid"]}
    return sums, gathered

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    out: dict[str, float] = {}
    if self.loss_type == "began":
      l_real, l_fake = float(sums["l_real"]) / n, float(sums["l_fake"]) / n
      out.update(l_real=l_real, l_fake=l_fake, m_global=l_real + abs(self.gamma * l_real - l_fake))
    else:
      d_real, d_fake = float(sums["d_real"]) / n, float(sums["d_fake"]) / n
      out.update(d_real=d_real, d_fake=d_fake, critic_gap=d_real - d_fake, discriminator_loss=float(sums["bce"]) / n)
    if self.sample_metrics is not None and gathered is not None:
      keep = np.asarray(gathered["valid"]) > 0
      out.update(self.sample_metrics(np.asarray(gathered["samples"])[keep], np.asarray(gathered["label"])[keep]))
    return out

  def run_info(self):
    return {"loss_type": self.loss_type, "n_critic": self.n_critic, "generator_iterations_per_step": 1}


# ================================================================================================== VAE


def gaussian_kl(mu, logvar) -> jnp.ndarray:
  """KL(N(mu, diag exp(logvar)) || N(0, I)) per example: [B, L] -> [B] (Kingma & Welling, Appendix B)."""
  return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar, -1)


def log_normal(x, mu, logvar) -> jnp.ndarray:
  """log N(x; mu, diag exp(logvar)) summed over the last axis."""
  return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + jnp.square(x - mu) * jnp.exp(-logvar), -1)


def bernoulli_log_likelihood(x, logits) -> jnp.ndarray:
  """log p(x | logits) of binary x, summed over the last axis."""
  return -jnp.sum(jax.nn.softplus(-logits) * x + jax.nn.softplus(logits) * (1.0 - x), -1)


@dataclasses.dataclass(eq=False)
class VAETask(task_lib.Task):
  """The VAE (``research.models.generative.vae.VAE``) on ``{'x': [B, ...] in [0, 1]}``; see the module docstring.

  Metrics are in nats per example: ``loss`` = -ELBO (training, one sample of z), ``recon`` = E_q[-log p(x|z)],
  ``kl``; eval: ``neg_elbo``, ``nll_iwae`` (= -L_K with ``K = iwae_samples``), ``kl``, ``active_units`` (latent
  dimensions whose posterior mean varies across the test set: Cov_x(E_q[z]) > 0.01, Burda et al. §5.2)."""
  model: nn.Module
  learning_rate: float = 1e-3
  iwae_samples: int = 1000
  eval_seed: int = 0
  binarize: bool = True

  def init(self, rng, batch):
    x = jnp.zeros((1,) + tuple(batch["x"].shape[1:]), jnp.float32)
    return self.model.init(rng, x, rng, train=True)["params"], {}

  def optimizer(self):
    return optax.adam(self.learning_rate)

  def _log_px(self, params, x_flat, out):
    if self.model.likelihood == "bernoulli":
      return bernoulli_log_likelihood(x_flat, out)
    logvar = self.model.apply({"params": params}, method=self.model.decoder_logvar)
    return log_normal(x_flat, out, logvar)

  def loss(self, params, model_state, batch, rng, *, train):
    del train
    b_rng, z_rng = jax.random.split(rng)
    x = batch["x"].reshape(batch["x"].shape[0], -1)
    if self.binarize and self.model.likelihood == "bernoulli":
      x = jax.random.bernoulli(b_rng, x).astype(jnp.float32)  # dynamic binarisation
    out, mu, logvar = self.model.apply({"params": params}, x, z_rng, train=True)
    recon = -self._log_px(params, x, out)
    kl = gaussian_kl(mu, logvar)
    return jnp.mean(recon + kl), (model_state, {"recon": jnp.mean(recon), "kl": jnp.mean(kl)})

  def log_weights(self, params, x, eps):
    """``log p(x, z_k) - log q(z_k | x)`` [K, B] for posterior samples ``z_k = mu + sigma * eps[k]`` (x [B, D],
    eps [K, B, L] standard normal)."""
    mu, logvar = self.model.apply({"params": params}, x, method=self.model.encode)
    z = mu + jnp.exp(0.5 * logvar) * eps
    out = self.model.apply({"params": params}, z, method=self.model.decode)  # [k, B, D]
    log_px = self._log_px(params, x[None], out)
    log_pz = log_normal(z, 0.0, jnp.zeros_like(z))
    log_qz = log_normal(z, mu, logvar)
    return log_px + log_pz - log_qz

  def eval_step(self, state, batch):
    valid = batch["valid"].astype(jnp.float32)
    x = batch["x"].reshape(batch["x"].shape[0], -1)
    key = jax.random.PRNGKey(self.eval_seed)  # per-example noise: the same bound on any number of devices
    eps = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (self.iwae_samples + 1,
                                                                            self.model.latent)))(batch["index"])
    eps = jnp.swapaxes(eps, 0, 1)  # [K + 1, B, L]: eps[0] for the ELBO, eps[1:] for the IWAE bound
    mu, logvar = self.model.apply({"params": state.params}, x, method=self.model.encode)
    out = self.model.apply({"params": state.params}, mu + jnp.exp(0.5 * logvar) * eps[0], method=self.model.decode)
    neg_elbo = -self._log_px(state.params, x, out) + gaussian_kl(mu, logvar)
    log_w = self.log_weights(state.params, x, eps[1:])
    iwae = jax.nn.logsumexp(log_w, axis=0) - math.log(self.iwae_samples)
    sums = {"count": jnp.sum(valid), "neg_elbo": jnp.sum(valid * neg_elbo), "nll_iwae": -jnp.sum(valid * iwae),
            "kl": jnp.sum(valid * gaussian_kl(mu, logvar))}
    return sums, {"mu": mu, "valid": batch["valid"]}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    out = {k: float(sums[k]) / n for k in ("neg_elbo", "nll_iwae", "kl")}
    if gathered is not None:
      mu = np.asarray(gathered["mu"])[np.asarray(gathered["valid"]) > 0]
      out["active_units"] = float(np.sum(np.var(mu, axis=0) > 0.01)) if len(mu) > 1 else 0.0
    return out
