"""EDIT training on the ONE loop (issue 15, seed 000: "Exemplar-Domain aware Image-to-image Translation"): one
generator translates a content image into the domain and style of an exemplar; one multi-domain discriminator.

:class:`EDITTask` trains ``G(x, e)`` (``research.models.generative.edit.EDITGenerator``) and ``D(x)``
(``MultiDomainDiscriminator``, patch logits ``[B, h, w, num_domains]``) with two optimizers
(``{'generator': ..., 'discriminator': ...}``, ``Task.optimizer``). One loop step = one discriminator update, then
one generator update against the UPDATED discriminator, on the same batch, in one compiled program.

Training batches (:func:`unpaired_batches`), per row: a ``content`` image ``x`` of source domain ``s``, an
``exemplar`` ``e`` of a target domain ``t != s`` (uniform over the others), and ``content_domain`` /
``exemplar_domain``. Unpaired: the training layouts are partitioned between the domains (layout ``i`` is only ever
seen rendered in domain ``i mod D``), so no layout is seen in two domains and the exemplar is always another layout.
The paired renderings are used only by the evaluation.

Losses (``D_t(.)`` = output map ``t`` of the discriminator, patch-wise; ``c(.)`` the content code, ``z(.)`` the
style code):

* adversarial (``adv_loss``): ``lsgan`` (Mao et al. 2017, a = 0, b = c = 1, as MUNIT / CycleGAN):
  ``L_D = mean (D_t(e) - 1)^2 + mean D_t(G(x, e))^2``, ``L_G^adv = mean (D_t(G(x, e)) - 1)^2``; or ``nsgan``
  (Goodfellow et al. 2014's non-saturating loss): ``L_D = mean softplus(-D_t(e)) + mean softplus(D_t(G(x, e)))``,
  ``L_G^adv = mean softplus(-D_t(G(x, e)))``. Only the output of the target domain is trained (StarGAN / EDIT's
  multi-branch discriminator): reals of domain ``t`` are the exemplars, fakes are translations INTO ``t``.
* R1 (Mescheder et al. 2018), optional (``r1_weight`` gamma): ``gamma / 2 * E ||grad_e sum_patches D_t(e)||^2``
  on the real exemplars (a double backward; the discriminator has no normalisation, examples are independent).
* self-reconstruction (``recon_weight``): ``mean |G(x, x) - x|``: translating ``x`` with an exemplar of its OWN
  domain -- ``x`` itself, so the target is exact -- reconstructs ``x`` (MUNIT's within-domain reconstruction).
* content-code consistency (``content_weight``): ``mean |c(G(x, e)) - sg(c(x))|``: the translation has the same
  content code as its input (MUNIT's latent reconstruction; the stop-gradient keeps the encoder from shrinking
  both codes to zero to satisfy it).
* style (``style_weight``): the exemplar's feature statistics (Huang & Belongie 2017, Eq. 12): per channel, the
  spatial mean and std of :func:`random_features` of ``G(x, e)`` vs ``e``, squared differences averaged over
  channels, summed over the two layers. The features come from a FIXED, seeded, untrained 2-layer ReLU conv net
  (3x3, ``feature_width`` and ``2 feature_width`` channels, the second with stride 2, He-normal weights):
  shallow random-filter statistics are a usable texture descriptor (Ustyuzhaninov et al. 2017), need no
  pretrained VGG (nothing can be downloaded here), and unlike the discriminator's features they are not a moving
  target.

``L_G = adv_weight L_G^adv + recon_weight L_rec + content_weight L_content + style_weight L_style``.

Eval (:meth:`EDITTask.eval_step`, batches from :func:`paired_eval_batches`): the content image of layout ``i`` in
the source domain, an exemplar of layout ``i + 1`` in target domain ``t`` and the ground truth: layout ``i``
rendered in ``t``. Sums per target domain: L1 (pixels in [0, 1]) and PSNR (dB, peak 1, mean over images) of the
output vs the ground truth, and the same for the "copy the input" baseline (``identity_*``); gathered: outputs,
inputs, ground truths, exemplars and target domains, handed to ``sample_metrics(outputs, inputs, targets,
exemplars, domains) -> dict`` on the host (the domain classifier, structure IoU and background correlation of
``research.methods.edit_experiment``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.memory import ArrayBatches, padded_eval_rows
from research.train import task as task_lib

ADV_LOSSES = ("lsgan", "nsgan")
GROUPS = ("generator", "discriminator")
Metrics = dict[str, jnp.ndarray]


def edit_optimizers(learning_rate: float = 2e-4, beta1: float = 0.5, beta2: float = 0.999
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam for both nets (MUNIT's betas (0.5, 0.999))."""
  if learning_rate <= 0:
    raise ValueError(f"--learning_rate must be positive, got {learning_rate}")
  return {k: optax.adam(learning_rate, b1=beta1, b2=beta2) for k in GROUPS}


# ------------------------------------------------------------------------------------------------ fixed features


def random_feature_kernels(seed: int, width: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """The fixed He-normal 3x3 kernels of :func:`random_features`: [3, 3, channels, width], [3, 3, width, 2 width]."""
  rng = np.random.default_rng(seed)
  k1 = rng.standard_normal((3, 3, channels, width)) * np.sqrt(2.0 / (9 * channels))
  k2 = rng.standard_normal((3, 3, width, 2 * width)) * np.sqrt(2.0 / (9 * width))
  return k1.astype(np.float32), k2.astype(np.float32)


def random_features(x, kernels) -> list[jnp.ndarray]:
  """x [B, S, S, C] -> [relu(conv3x3(x)) [B, S, S, F], relu(conv3x3 / stride 2(.)) [B, S/2, S/2, 2F]]."""
  dn = ("NHWC", "HWIO", "NHWC")
  h1 = jax.nn.relu(jax.lax.conv_general_dilated(x, jnp.asarray(kernels[0]), (1, 1), "SAME", dimension_numbers=dn))
  h2 = jax.nn.relu(jax.lax.conv_general_dilated(h1, jnp.asarray(kernels[1]), (2, 2), "SAME", dimension_numbers=dn))
  return [h1, h2]


def mean_std(h, eps: float = 1e-5) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per example and channel spatial mean and std: [B, H, W, C] -> ([B, C], [B, C])."""
  return jnp.mean(h, axis=(1, 2)), jnp.sqrt(jnp.var(h, axis=(1, 2)) + eps)


def style_statistics_loss(x, exemplar, kernels) -> jnp.ndarray:
  """Huang & Belongie's style loss on the fixed random features: sum over layers of
  ``mean_c (mu(x) - mu(e))^2 + mean_c (sigma(x) - sigma(e))^2``, averaged over the batch: []."""
  total = 0.0
  for hx, he in zip(random_features(x, kernels), random_features(exemplar, kernels)):
    (mx, sx), (me, se) = mean_std(hx), mean_std(he)
    total = total + jnp.mean(jnp.square(mx - me)) + jnp.mean(jnp.square(sx - se))
  return total


def select_domain(logits, domain) -> jnp.ndarray:
  """logits [B, h, w, D], domain int [B] -> the domain's map [B, h, w]."""
  return jnp.take_along_axis(logits, domain.astype(jnp.int32)[:, None, None, None], axis=-1)[..., 0]


def image_errors(x, target) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per image L1 (pixels in [0, 1]) and PSNR in dB (peak 1) of images in [-1, 1]: ([B], [B])."""
  d = (x - target).reshape(x.shape[0], -1) / 2.0
  mse = jnp.mean(jnp.square(d), -1)
  return jnp.mean(jnp.abs(d), -1), 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


# ------------------------------------------------------------------------------------------------ the task


@dataclasses.dataclass(eq=False)
class EDITTask(task_lib.Task):
  """Two-player training of ``generator`` (EDITGenerator) and ``discriminator`` (MultiDomainDiscriminator)."""
  generator: nn.Module
  discriminator: nn.Module
  num_domains: int
  image_shape: tuple[int, int, int]
  optimizers: Mapping[str, optax.GradientTransformation]
  adv_loss: str = "lsgan"
  adv_weight: float = 1.0
  recon_weight: float = 10.0
  content_weight: float = 1.0
  style_weight: float = 1.0
  r1_weight: float = 0.0
  feature_seed: int = 0
  feature_width: int = 16
  domain_names: Sequence[str] = ()
  sample_metrics: Callable[..., dict[str, float]] | None = None  # (outputs, inputs, targets, exemplars, domains)

  def __post_init__(self):
    if self.adv_loss not in ADV_LOSSES:
      raise ValueError(f"--adv_loss={self.adv_loss!r}; choose one of {ADV_LOSSES}")
    if set(self.optimizers) != set(GROUPS):
      raise ValueError(f"optimizers must be {{'generator', 'discriminator'}}, got {sorted(self.optimizers)}")
    if self.num_domains < 2:
      raise ValueError(f"EDITTask: num_domains={self.num_domains} must be >= 2")
    for name in ("adv_weight", "recon_weight", "content_weight", "style_weight", "r1_weight"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.domain_names and len(self.domain_names) != self.num_domains:
      raise ValueError(f"EDITTask: {len(self.domain_names)} domain_names for num_domains={self.num_domains}")
    self.kernels = random_feature_kernels(self.feature_seed, self.feature_width, self.image_shape[-1])

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.domain_names) or tuple(str(d) for d in range(self.num_domains))

  # ---------------------------------------------------------------------------------------------- variables
  def init(self, rng, batch):
    g_rng, d_rng = jax.random.split(rng)
    x = jnp.zeros((2,) + tuple(self.image_shape), jnp.float32)
    g = self.generator.init(g_rng, x, x, train=True)["params"]
    d = self.discriminator.init(d_rng, x, train=True)["params"]
    return {"generator": g, "discriminator": d}, {}

  def optimizer(self):
    return dict(self.optimizers)

  # ---------------------------------------------------------------------------------------------- networks
  def _g(self, g_params, *args, method=None):
    return self.generator.apply({"params": g_params}, *args, method=method)

  def translate(self, g_params, x, exemplar):
    """G(x, exemplar): [B, S, S, C] in [-1, 1]."""
    return self.generator.apply({"params": g_params}, x, exemplar, train=False)

  def logits(self, d_params, x, domain):
    """The discriminator's patch logits of ``domain`` [B]: [B, h, w]."""
    return select_domain(self.discriminator.apply({"params": d_params}, x, train=True), domain)

  # ---------------------------------------------------------------------------------------------- losses
  def discriminator_loss(self, d_params, g_params, batch) -> tuple[jnp.ndarray, Metrics]:
    """This device's discriminator loss: real exemplars vs translations into the exemplar's domain."""
    e, t = batch["exemplar"], batch["exemplar_domain"]
    fake = jax.lax.stop_gradient(self.translate(g_params, batch["content"], e))
    d_real, d_fake = self.logits(d_params, e, t), self.logits(d_params, fake, t)
    if self.adv_loss == "lsgan":
      loss = jnp.mean(jnp.square(d_real - 1.0)) + jnp.mean(jnp.square(d_fake))
    else:
      loss = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
    metrics = {"d_adv": loss, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
    if self.r1_weight > 0:
      grads = jax.grad(lambda v: jnp.sum(self.logits(d_params, v, t)))(e)
      r1 = jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1))
      loss = loss + 0.5 * self.r1_weight * r1
      metrics["r1"] = r1
    return loss, metrics

  def generator_loss(self, g_params, d_params, batch) -> tuple[jnp.ndarray, Metrics]:
    """This device's generator loss (see the module docstring) and its parts."""
    x, e, t = batch["content"], batch["exemplar"], batch["exemplar_domain"]
    content = self._g(g_params, x, method="encode_content")
    fake = self._g(g_params, content, self._g(g_params, e, method="encode_style"), method="decode")
    recon = self._g(g_params, content, self._g(g_params, x, method="encode_style"), method="decode")
    d_fake = self.logits(d_params, fake, t)
    adv = jnp.mean(jnp.square(d_fake - 1.0)) if self.adv_loss == "lsgan" else jnp.mean(jax.nn.softplus(-d_fake))
    l_rec = jnp.mean(jnp.abs(recon - x))
    l_content = jnp.mean(jnp.abs(self._g(g_params, fake, method="encode_content") - jax.lax.stop_gradient(content)))
    l_style = style_statistics_loss(fake, e, self.kernels)
    loss = (self.adv_weight * adv + self.recon_weight * l_rec + self.content_weight * l_content
            + self.style_weight * l_style)
    return loss, {"g_adv": adv, "recon_l1": l_rec, "content_l1": l_content, "style_loss": l_style}

  # ---------------------------------------------------------------------------------------------- the step
  def loss(self, params, model_state, batch, rng, *, train):
    """The discriminator's loss (the loop's generic entry point; training uses ``update``)."""
    del rng, train
    loss, metrics = self.discriminator_loss(params["discriminator"], params["generator"], batch)
    return loss, (model_state, metrics)

  def update(self, state, batch, rng, *, axis_name):
    del rng  # deterministic given the batch
    tx = self.optimizer()
    g_params = state.params["generator"]

    def d_fn(p, ms, b, r, *, train):
      del r, train
      loss, metrics = self.discriminator_loss(p, g_params, b)
      return loss, (ms, metrics)

    (d_loss, (_, d_metrics)), d_grads = task_lib.grad_of(d_fn, state.params["discriminator"], state.model_state,
                                                         batch, None, axis_name)
    d_new, d_opt, d_updates = task_lib.apply_optimizer(tx["discriminator"], d_grads, state.opt_state["discriminator"],
                                                       state.params["discriminator"])

    def g_fn(p, ms, b, r, *, train):
      del r, train
      loss, metrics = self.generator_loss(p, d_new, b)
      return loss, (ms, metrics)

    (g_loss, (_, g_metrics)), g_grads = task_lib.grad_of(g_fn, g_params, state.model_state, batch, None, axis_name)
    g_new, g_opt, g_updates = task_lib.apply_optimizer(tx["generator"], g_grads, state.opt_state["generator"],
                                                       g_params)
    metrics = {"loss": d_loss, "discriminator_loss": d_loss, "generator_loss": g_loss,
               **task_lib.mean_over({**d_metrics, **g_metrics}, axis_name),
               **task_lib.norms(d_grads, d_new, d_updates, "discriminator_"),
               **task_lib.norms(g_grads, g_new, g_updates, "generator_")}
    return state.replace(step=state.step + 1, params={"generator": g_new, "discriminator": d_new},
                         opt_state={"generator": g_opt, "discriminator": d_opt}), metrics

  # ---------------------------------------------------------------------------------------------- eval
  def eval_step(self, state, batch):
    valid = batch["valid"].astype(jnp.float32)
    out = self.translate(state.params["generator"], batch["content"], batch["exemplar"])
    onehot = jax.nn.one_hot(batch["exemplar_domain"], self.num_domains) * valid[:, None]  # [b, D]
    l1, psnr = image_errors(out, batch["target"])
    id_l1, id_psnr = image_errors(batch["content"], batch["target"])
    sums = {"count": jnp.sum(onehot, 0), "l1": l1 @ onehot, "psnr": psnr @ onehot, "identity_l1": id_l1 @ onehot,
            "identity_psnr": id_psnr @ onehot}
    gathered = {"output": out, "content": batch["content"], "target": batch["target"], "exemplar": batch["exemplar"],
                "domain": batch["exemplar_domain"], "valid": batch["valid"]}
    return sums, gathered

  def eval_metrics(self, sums, gathered):
    count = np.asarray(sums["count"], np.float64)
    out: dict[str, float] = {}
    for key in ("l1", "psnr", "identity_l1", "identity_psnr"):
      v = np.asarray(sums[key], np.float64)
      out[key] = float(v.sum() / max(count.sum(), 1.0))
      for d, name in enumerate(self.names):
        if count[d] > 0:
          out[f"{key}_{name}"] = float(v[d] / count[d])
    if self.sample_metrics is not None and gathered is not None:
      keep = np.asarray(gathered["valid"]) > 0
      out.update(self.sample_metrics(*(np.asarray(gathered[k])[keep] for k in ("output", "content", "target",
                                                                                "exemplar", "domain"))))
    return out

  def run_info(self):
    return {"adv_loss": self.adv_loss, "discriminator_updates_per_step": 1, "generator_updates_per_step": 1}


# ------------------------------------------------------------------------------------------------ data


def to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 in [-1, 1]."""
  return images.astype(np.float32) / 127.5 - 1.0


def unpaired_batches(images: np.ndarray, *, global_batch_size: int, seed: int) -> ArrayBatches:
  """Training batches from paired renderings ``images`` uint8 [N, D, S, S, C] (layout, domain), used UNPAIRED:
  layout ``i`` only in domain ``i mod D``. Each row: ``content`` [S, S, C] in [-1, 1] of a random layout in its
  domain ``s`` (``content_domain``), ``exemplar`` a random layout of domain ``t`` (``exemplar_domain``), ``t``
  uniform over the other domains. Depends only on ``(seed, step)`` (``ArrayBatches``)."""
  n, d = images.shape[:2]
  if n < d:
    raise ValueError(f"unpaired_batches: {n} layouts cannot be split between {d} domains")
  domain = np.arange(n) % d
  pool = images[np.arange(n), domain]  # [N, S, S, C]
  by_domain = [np.flatnonzero(domain == k) for k in range(d)]

  def transform(batch, rng):
    s = batch["domain"]
    t = (s + rng.integers(1, d, size=len(s))) % d
    pick = rng.random(len(s))
    rows = np.array([by_domain[k][int(p * len(by_domain[k]))] for k, p in zip(t, pick)])
    return {"content": to_unit(batch["image"]), "content_domain": s.astype(np.int32),
            "exemplar": to_unit(pool[rows]), "exemplar_domain": t.astype(np.int32)}

  return ArrayBatches({"image": pool, "domain": domain}, global_batch_size=global_batch_size, seed=seed,
                      transform=transform)


def paired_eval_rows(num_layouts: int, num_domains: int, source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The eval pairs: ``(layout i [M], exemplar layout (i + 1) mod N [M], target domain [M])`` for every layout and
  every domain other than ``source`` (``M = N (D - 1)``, layout-major)."""
  targets = np.array([k for k in range(num_domains) if k != source])
  layout = np.repeat(np.arange(num_layouts), len(targets))
  return layout, (layout + 1) % num_layouts, np.tile(targets, num_layouts)


def paired_eval_batches(images: np.ndarray, *, source: int, global_batch_size: int):
  """``() -> iterator`` of eval batches over :func:`paired_eval_rows` of ``images`` uint8 [N, D, S, S, C]:
  ``content`` (layout i, ``source``), ``exemplar`` (layout i + 1, target), ``target`` (layout i, target, the
  ground truth), ``content_domain``, ``exemplar_domain``, ``valid``."""
  n, d = images.shape[:2]
  if n < 2:
    raise ValueError("paired_eval_batches: the exemplar must be another layout; need >= 2 test layouts")
  layout, ex, tgt = paired_eval_rows(n, d, source)

  def batches():
    for rows, valid in padded_eval_rows(len(layout), global_batch_size):
      i, j, t = layout[rows], ex[rows], tgt[rows]
      yield {"content": to_unit(images[i, source]), "exemplar": to_unit(images[j, t]),
             "target": to_unit(images[i, t]), "content_domain": np.full(len(rows), source, np.int32),
             "exemplar_domain": t.astype(np.int32), "valid": valid}
  return batches
