"""Two small non-classification ``Task`` s that exercise the generic loop (issue 10, item 5).

* ``WGANTask``: a WGAN (Arjovsky et al. 2017, Algorithm 1) on a 2-D mixture of 8 Gaussians on a ring. Two
  parameter groups ``{'generator', 'critic'}`` (small MLPs, no BatchNorm) with one optimizer each, and an
  overridden ``update`` that alternates ``n_critic`` critic steps with one generator step inside ONE compiled
  step (``jax.lax.cond`` on ``state.step``), clips the critic's weights to ``[-clip, clip]`` after every critic
  update and keeps an EMA of the generator weights in ``model_state``.
* ``MaskedAutoencoderTask``: reconstruction of zero-padded variable-length sequences ``{'x': [B, T, D],
  'mask': [B, T]}``; the loss is the mean over REAL tokens only, normalised by the GLOBAL token count, so it
  is the same number on 1 or 4 devices although the shards hold different numbers of real tokens.

Both can be poisoned with ``nan_at_step=m``: the update that produces step ``m`` (1-based, as the loop counts)
and every later one multiply the loss by NaN (so gradients and params turn NaN as well) -- the NaN-halt test.
Both count how often ``update`` is traced (``trace_count``) -- the no-retrace test.

``make(name, ...)`` returns ``(task, train_data, eval_data)`` for the tests and ``generic_task_script.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.memory import ArrayBatches
from research.train import task as task_lib


def _poison(step, nan_at_step: int | None):
  """The loss factor: NaN for the update that produces 1-based step >= ``nan_at_step`` (``step`` is the 0-based
  ``state.step``), else 1. A factor, not a summand, so the gradients (and then the params) become NaN too."""
  if nan_at_step is None:
    return jnp.float32(1.0)
  return jnp.where(step + 1 >= nan_at_step, jnp.float32(jnp.nan), jnp.float32(1.0))


class MLP(nn.Module):
  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for f in self.features[:-1]:
      x = nn.relu(nn.Dense(f)(x))
    return nn.Dense(self.features[-1])(x)


# ============================================================================================== WGAN

NUM_MODES = 8
RING_RADIUS = 2.0
MODE_STD = 0.1


def mixture_modes() -> np.ndarray:
  """The 8 mode centres ``[8, 2]`` on a ring of radius 2."""
  angles = 2 * np.pi * np.arange(NUM_MODES) / NUM_MODES
  return (RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)


def mixture_sample(n: int, seed: int = 0) -> np.ndarray:
  """``n`` points ``[n, 2]`` of the equal-weight mixture of N(mode, MODE_STD² I)."""
  rng = np.random.default_rng(seed)
  modes = mixture_modes()[rng.integers(0, NUM_MODES, n)]
  return (modes + MODE_STD * rng.standard_normal((n, 2))).astype(np.float32)


@dataclasses.dataclass(eq=False)  # hashed by identity: the loop caches one compiled step per (task, mesh)
class WGANTask(task_lib.Task):
  """WGAN with weight clipping on ``{'real': [B, 2]}`` (+ optional ``'z': [B, z_dim]``) batches.

  Step ``t`` (0-based ``state.step``) is a generator step iff ``t % (n_critic + 1) == n_critic``, else a critic
  step: ``n_critic`` critic updates per generator update, both branches in one compiled program
  (``jax.lax.cond``), so the step compiles once. Each branch updates ONLY its own parameter group and
  optimizer state; the other group's params and opt state pass through unchanged.

  * critic step: minimise ``E[f(G(z))] - E[f(x)]`` (the negative Wasserstein estimate) over the critic, then
    clip every critic weight to ``[-clip, clip]`` (the critic is also clipped at init, so the constraint holds
    from step 0);
  * generator step: minimise ``-E[f(G(z))]`` over the generator, then
    ``model_state['ema_generator'] <- ema_decay * ema + (1 - ema_decay) * generator`` (EMA of the generator
    weights, updated after generator steps only; initialised to the initial generator).

  Noise: ``batch['z']`` when the batch has it (the tests put it there from ``ArrayBatches``' seeded transform, so
  the noise of example ``i`` does not depend on which device holds it: 1 device == 4 devices exactly), else
  ``normal(rng)`` with the loop's per-step, per-device key (different noise on different device counts).

  Metrics (both branches return the same keys; the loop's NaN halt checks all of them, so none is a NaN
  placeholder): ``loss`` = ``critic_loss`` (= -Wasserstein estimate, on every step), ``generator_loss``,
  ``wasserstein``, ``generator_step`` (1.0 on generator steps), ``l2_grads``/``l2_updates`` of the group that
  stepped, ``critic_l2_params``, ``generator_l2_params``.

  Eval: samples ``G(z_i)`` with ``z_i = normal(fold_in(PRNGKey(eval_seed), i))`` for the example indices ``i``
  of ``{'index': [b]}`` eval batches (a fixed key, independent of the device count), for the raw and the EMA
  generator; sums of the squared distance to the nearest mode, of samples within 3 ``MODE_STD`` of a mode and
  per-mode hit counts; ``eval_metrics`` turns them into ``mean_sq_dist``, ``frac_near_mode`` and
  ``modes_covered`` (modes holding >= 1% of the samples), ``ema_``-prefixed for the EMA generator.
  """
  z_dim: int = 2
  hidden: int = 64
  n_critic: int = 5
  clip: float = 0.05
  critic_lr: float = 1e-3
  generator_lr: float = 5e-3
  ema_decay: float = 0.9
  eval_seed: int = 1234
  nan_at_step: int | None = None
  trace_count: int = 0  # Python counter: incremented each time ``update`` is traced

  @property
  def generator(self):
    return MLP((self.hidden, self.hidden, 2))

  @property
  def critic(self):
    return MLP((self.hidden, self.hidden, 1))

  def _clip(self, critic_params):
    return jax.tree.map(lambda p: jnp.clip(p, -self.clip, self.clip), critic_params)

  def init(self, rng, batch):
    g_rng, c_rng = jax.random.split(rng)
    gen = self.generator.init(g_rng, jnp.zeros((1, self.z_dim)))["params"]
    critic = self._clip(self.critic.init(c_rng, jnp.zeros((1, 2)))["params"])
    ema = jax.tree.map(jnp.copy, gen)
    return {"generator": gen, "critic": critic}, {"ema_generator": ema}

  def optimizer(self):
    # Arjovsky et al. use RMSProp (momentum-free) for the critic; Adam with beta1=0.5 for the generator.
    return {"generator": optax.adam(self.generator_lr, b1=0.5), "critic": optax.rmsprop(self.critic_lr)}

  def _noise(self, batch, rng):
    if "z" in batch:
      return batch["z"]
    return jax.random.normal(rng, (batch["real"].shape[0], self.z_dim), jnp.float32)

  def _losses(self, params, batch, z, poison):
    fake = self.generator.apply({"params": params["generator"]}, z)
    d_real = jnp.mean(self.critic.apply({"params": params["critic"]}, batch["real"]))
    d_fake = jnp.mean(self.critic.apply({"params": params["critic"]}, fake))
    return (d_fake - d_real) * poison, -d_fake * poison  # (critic loss, generator loss), per device

  def loss(self, params, model_state, batch, rng, *, train, group: str = "critic", poison=1.0):
    """The loss of ``group`` (critic: -Wasserstein estimate; generator: -E f(G(z))); the other one as a metric."""
    del train
    critic_loss, generator_loss = self._losses(params, batch, self._noise(batch, rng), poison)
    if group == "critic":
      return critic_loss, (model_state, {"generator_loss": generator_loss})
    return generator_loss, (model_state, {"critic_loss": critic_loss})

  def _group_step(self, state, batch, rng, axis_name, group):
    poison = _poison(state.step, self.nan_at_step)
    other = "generator" if group == "critic" else "critic"

    def group_loss(p, model_state, batch, rng, *, train):  # differentiates w.r.t. ``group`` only
      return self.loss({group: p, other: state.params[other]}, model_state, batch, rng, train=train, group=group,
                       poison=poison)

    (loss, (model_state, metrics)), grads = task_lib.grad_of(group_loss, state.params[group], state.model_state,
                                                             batch, rng, axis_name)
    metrics = task_lib.mean_over(metrics, axis_name)
    new, opt_state, updates = task_lib.apply_optimizer(self.optimizer()[group], grads, state.opt_state[group],
                                                       state.params[group])
    if group == "critic":
      new = self._clip(new)
      critic_loss, generator_loss = loss, metrics["generator_loss"]
    else:
      model_state = {**model_state, "ema_generator": jax.tree.map(
          lambda e, p: self.ema_decay * e + (1 - self.ema_decay) * p, model_state["ema_generator"], new)}
      critic_loss, generator_loss = metrics["critic_loss"], loss
    params = {**state.params, group: new}
    metrics = {"loss": critic_loss, "critic_loss": critic_loss, "generator_loss": generator_loss,
               "wasserstein": -critic_loss, "generator_step": jnp.float32(group == "generator"),
               "l2_grads": optax.global_norm(grads), "l2_updates": optax.global_norm(updates),
               "critic_l2_params": optax.global_norm(params["critic"]),
               "generator_l2_params": optax.global_norm(params["generator"])}
    state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                          opt_state={**state.opt_state, group: opt_state})
    return state, metrics

  def is_generator_step(self, step):
    return step % (self.n_critic + 1) == self.n_critic

  def update(self, state, batch, rng, *, axis_name):
    self.trace_count += 1
    return jax.lax.cond(self.is_generator_step(state.step),
                        lambda: self._group_step(state, batch, rng, axis_name, "generator"),
                        lambda: self._group_step(state, batch, rng, axis_name, "critic"))

  def samples(self, generator_params, index):
    """Generated points ``[b, 2]`` for example indices ``[b]`` (noise from a fixed key per index)."""
    key = jax.random.PRNGKey(self.eval_seed)
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (self.z_dim,)))(index)
    return self.generator.apply({"params": generator_params}, z)

  def eval_step(self, state, batch):
    modes = jnp.asarray(mixture_modes())
    sums = {"count": jnp.float32(batch["index"].shape[0])}
    for prefix, gen in (("", state.params["generator"]), ("ema_", state.model_state["ema_generator"])):
      x = self.samples(gen, batch["index"])
      d2 = jnp.sum((x[:, None, :] - modes[None]) ** 2, -1)  # [b, 8]
      nearest, min_d2 = jnp.argmin(d2, -1), jnp.min(d2, -1)
      near = min_d2 < (3 * MODE_STD) ** 2
      sums[f"{prefix}sq_dist_sum"] = jnp.sum(min_d2)
      sums[f"{prefix}near_count"] = jnp.sum(near.astype(jnp.float32))
      sums[f"{prefix}mode_hits"] = jnp.sum(jax.nn.one_hot(nearest, NUM_MODES) * near[:, None], 0)
    return sums, {}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    out = {"count": float(sums["count"])}
    for prefix in ("", "ema_"):
      out[f"{prefix}mean_sq_dist"] = float(sums[f"{prefix}sq_dist_sum"]) / n
      out[f"{prefix}frac_near_mode"] = float(sums[f"{prefix}near_count"]) / n
      out[f"{prefix}modes_covered"] = float(np.sum(np.asarray(sums[f"{prefix}mode_hits"]) >= 0.01 * n))
    return out

  def run_info(self):
    return {"task": "wgan_8gaussians", "n_critic": self.n_critic, "clip": self.clip}


def gan_data(*, batch_size: int = 256, seed: int = 0, noise_in_batch: bool = True, z_dim: int = 2,
             num_real: int = 4096):
  """``ArrayBatches`` over a fixed mixture sample; ``noise_in_batch`` adds ``'z'`` drawn from the batch's seeded
  numpy generator (a function of (seed, step) only)."""
  def add_noise(batch, rng):
    return {**batch, "z": rng.standard_normal((len(batch["real"]), z_dim)).astype(np.float32)}
  return ArrayBatches({"real": mixture_sample(num_real, seed=12345)}, global_batch_size=batch_size, seed=seed,
                      transform=add_noise if noise_in_batch else None)


def gan_eval_data(num: int = 512, batch_size: int = 256):
  def batches():
    for start in range(0, num, batch_size):
      yield {"index": np.arange(start, start + batch_size, dtype=np.int32)}
  return batches


# ============================================================================================== masked autoencoder


class SequenceAutoencoder(nn.Module):
  """Per-token encoder (Dense + position embedding) -> masked mean pooling -> a code -> each token decoded
  from the code and its position embedding. Padded tokens are zeroed BEFORE any arithmetic (``jnp.where``),
  so their values (even NaN/inf) reach neither the output at real tokens nor any gradient."""
  max_len: int
  dim: int
  hidden: int = 32
  code: int = 16

  @nn.compact
  def __call__(self, x, mask):
    t = x.shape[1]
    real = mask.astype(bool)[..., None]  # [B, T, 1]
    x = jnp.where(real, x, 0.0)
    pos_in = self.param("pos_in", nn.initializers.normal(0.1), (self.max_len, self.hidden))
    h = nn.relu(nn.Dense(self.hidden)(x) + pos_in[None, :t])
    h = nn.Dense(self.code)(h)
    count = jnp.maximum(jnp.sum(real, 1), 1).astype(h.dtype)  # [B, 1]
    code = jnp.sum(jnp.where(real, h, 0.0), 1) / count  # masked mean pooling [B, code]
    pos_out = self.param("pos_out", nn.initializers.normal(0.1), (self.max_len, self.hidden))
    y = nn.relu(nn.Dense(self.hidden)(code)[:, None, :] + pos_out[None, :t])
    return nn.Dense(self.dim)(y)


@dataclasses.dataclass(eq=False)
class MaskedAutoencoderTask(task_lib.Task):
  """Reconstruct ``{'x': [B, T, D] f32 zero-padded, 'mask': [B, T]}`` batches (1 = real token).

  Loss = mean over real tokens of the squared L2 reconstruction error (summed over ``D``); padded tokens
  contribute nothing (values nor gradients). ``global_normalizer=True`` (default) divides each device's error
  sum by the MEAN token count per device (``pmean``) instead of its own count, so after ``grad_of``'s
  ``pmean`` the loss and gradient are exactly those of the global batch's masked mean; with ``False`` it uses
  the base ``Task.update`` (mean of per-device masked means), which depends on how rows fall on devices.
  Eval sums: ``sq_err_sum`` and ``token_count``; ``eval_metrics``: ``mse`` per real token.
  """
  max_len: int = 8
  dim: int = 4
  learning_rate: float = 1e-2
  global_normalizer: bool = True
  nan_at_step: int | None = None
  trace_count: int = 0

  @property
  def model(self):
    return SequenceAutoencoder(max_len=self.max_len, dim=self.dim)

  def init(self, rng, batch):
    b = {k: jnp.zeros((1,) + v.shape[1:], v.dtype) for k, v in batch.items()}
    return self.model.init(rng, b["x"], b["mask"])["params"], {}

  def optimizer(self):
    return optax.adam(self.learning_rate)

  def token_errors(self, params, batch):
    """``[B, T]`` squared L2 errors, zero at padded tokens."""
    real = batch["mask"].astype(bool)
    target = jnp.where(real[..., None], batch["x"], 0.0)
    pred = self.model.apply({"params": params}, batch["x"], batch["mask"])
    return jnp.where(real, jnp.sum((pred - target) ** 2, -1), 0.0)

  def loss(self, params, model_state, batch, rng, *, train, normalizer=None, poison=1.0):
    del rng, train
    err = self.token_errors(params, batch)
    count = jnp.sum(batch["mask"].astype(jnp.float32))
    normalizer = count if normalizer is None else normalizer
    loss = jnp.sum(err) / jnp.maximum(normalizer, 1.0) * poison
    return loss, (model_state, {"real_tokens": count})

  def update(self, state, batch, rng, *, axis_name):
    self.trace_count += 1
    poison = _poison(state.step, self.nan_at_step)
    if not self.global_normalizer:
      return super().update(state, batch, rng, axis_name=axis_name)
    count = jnp.sum(batch["mask"].astype(jnp.float32))
    normalizer = count if axis_name is None else jax.lax.pmean(count, axis_name)
    loss_fn = functools.partial(self.loss, normalizer=normalizer, poison=poison)
    (loss, (model_state, metrics)), grads = task_lib.grad_of(loss_fn, state.params, state.model_state, batch, rng,
                                                             axis_name)
    params, opt_state, updates = task_lib.apply_optimizer(self.optimizer(), grads, state.opt_state, state.params)
    metrics = {"loss": loss, **task_lib.mean_over(metrics, axis_name), **task_lib.norms(grads, params, updates)}
    return state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state), metrics

  def eval_step(self, state, batch):
    err = self.token_errors(state.params, batch)
    return {"sq_err_sum": jnp.sum(err), "token_count": jnp.sum(batch["mask"].astype(jnp.float32))}, {}

  def eval_metrics(self, sums, gathered):
    n = float(sums["token_count"])
    return {"mse": float(sums["sq_err_sum"]) / max(n, 1.0), "token_count": n}

  def run_info(self):
    return {"task": "masked_autoencoder"}


def sequence_data(n: int, *, max_len: int = 8, dim: int = 4, seed: int = 0, pad_value: float = 0.0):
  """``{'x': [n, T, D], 'mask': [n, T]}``: token ``t`` of row ``b`` is ``tanh(u_b W + P_t)`` (a 3-d latent
  ``u_b`` per row), lengths uniform in ``[1, T]``, padded with ``pad_value``."""
  rng = np.random.default_rng(seed)
  w = np.random.default_rng(99).standard_normal((3, dim))  # the same generative map for every split
  p = np.random.default_rng(98).standard_normal((max_len, dim))
  u = rng.standard_normal((n, 3))
  x = np.tanh(u[:, None, :] @ w + p[None]).astype(np.float32)  # [n, T, D]
  lengths = rng.integers(1, max_len + 1, n)
  mask = (np.arange(max_len)[None] < lengths[:, None]).astype(np.float32)
  x = np.where(mask[..., None] > 0, x, np.float32(pad_value)).astype(np.float32)
  return {"x": x, "mask": mask}


def autoencoder_data(*, batch_size: int = 32, seed: int = 0, n: int = 512):
  return ArrayBatches(sequence_data(n, seed=1), global_batch_size=batch_size, seed=seed)


def autoencoder_eval_data(n: int = 64, batch_size: int = 32):
  data = sequence_data(n, seed=2)

  def batches():
    for s in range(0, n, batch_size):
      yield {k: v[s:s + batch_size] for k, v in data.items()}
  return batches


# ============================================================================================== registry


def make(name: str, *, seed: int = 0, nan_at_step: int | None = None, noise_in_batch: bool = True, **task_kwargs):
  """``(task, train_data, eval_data)`` of ``'gan'`` or ``'autoencoder'`` (``noise_in_batch``: the GAN's ``'z'``
  comes with the batch, else from the loop's per-device key)."""
  if name == "gan":
    task = WGANTask(nan_at_step=nan_at_step, **task_kwargs)
    return task, gan_data(seed=seed, z_dim=task.z_dim, noise_in_batch=noise_in_batch), gan_eval_data()
  if name == "autoencoder":
    task = MaskedAutoencoderTask(nan_at_step=nan_at_step, **task_kwargs)
    return task, autoencoder_data(seed=seed), autoencoder_eval_data()
  raise ValueError(f"unknown task {name!r}; choose gan or autoencoder")
