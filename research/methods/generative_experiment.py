"""GAN / WGAN / WGAN-GP / BEGAN / conditional GAN (seed 003 §16) and the VAE (§4): ``run_gan(GANConfig, workdir)`` and
``run_vae(VAEConfig, workdir)`` -> summary.

Data (:func:`load_images`): ``digits`` (scikit-learn's 1,797 real handwritten digits, ``research.data.digits``, at
8/16/32 px), the 2-D mixtures ``ring8`` / ``grid25`` (``research.data.mixtures``) or any prepared TFDS image
classification dataset (``mnist``, ``cifar10``: resized to ``image_size``). GAN images are scaled to [-1, 1].

Sample quality (:func:`feature_network`, :func:`image_sample_metrics`): a :class:`FeatureCNN` classifier is
trained here on the training split (its test accuracy is reported); its pooled features give the Fréchet distance
(``fid``, Heusel et al. 2017, against the training split's features; ``fid_test`` is the test split's own distance:
the real-data floor at that sample size) and its softmax the Inception-Score analogue (``inception_score``,
Salimans et al. 2016), the mean top-class confidence (``confidence``: quality), the number of classes holding >= 2%
of the samples and the entropy of the predicted-class histogram (``class_entropy``: diversity), and for
conditional runs the classifier's accuracy on the requested classes. Mixtures: mode coverage and the high-quality
rate (``research.data.mixtures.mode_stats``).

The claims in ``summary.json`` (every one computed from the runs, never assumed):

* ``tracking``: per run, the Spearman correlation over the eval points of training between the critic's held-out
  divergence estimate (:func:`divergence_estimate`) and the FID: WGAN's Wasserstein estimate should fall with the
  FID (Arjovsky et al. 2017 §4.2, Fig. 3-4: "the first loss that correlates with sample quality"), the GAN
  discriminator's JS estimate should not.
* ``clipping_vs_gp``: WGAN (clipping) vs WGAN-GP at the same critic depth: FID, and the critic weights -- clipping
  piles the weights up at +-c (Gulrajani et al. §3, Fig. 1b), the penalty does not (``weights_at_extremes``: the
  fraction of critic weights within 1% of +-max|w|).
* ``began_gamma``: BEGAN's gamma trades diversity (class entropy) against quality (confidence) (§3.3, Fig. 2).
* mixtures: modes covered / high-quality rate per loss; conditional: per-class accuracy.

Each run writes ``workdir/<run>/`` (loop outputs with eval curves in ``metrics.jsonl``, ``samples.png``, critic
weight histogram ``critic_weights.png``) and is reused when finished with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import fileio
from research.configs import setting
from research.data import memory
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.methods.classical import manifold as classical_manifold
from research.models import registry
from research.models.generative import gan as gan_models  # noqa: F401  (registers the models)
from research.models.generative import vae as vae_models
from research.train import classify as classify_lib
from research.train import generative as gen
from research.train import generative_metrics as gm
from research.train import losses as losses_lib
from research.train import loop
from research.train import metrics as metrics_lib
from research.train import task as task_lib

MIXTURES = ("ring8", "grid25")


# ============================================================================================== data


def load_images(dataset: str, image_size: int, data_dir: str | None) -> dict[str, dict[str, np.ndarray]]:
  """``{'train'|'test': {'image': float32 [N, S, S, C] in [0, 1], 'label': int32 [N]}}``."""
  if dataset == "digits":
    from research.data import digits
    if image_size not in (8, 16, 32):
      raise ValueError(f"--image_size={image_size}: the digits dataset has configs 8, 16 and 32")
    out = {}
    for split in ("train", "test"):
      a = digits.load_arrays(split, data_dir, config=str(image_size))
      out[split] = {"image": a["image"].astype(np.float32) / 255.0, "label": a["label"].astype(np.int32)}
    return out
  from research import data as data_lib
  info = data_lib.get_info(dataset, data_dir)
  eval_split = info.eval_split or "train"
  out = {}
  for split, name in (("train", "train"), ("test", eval_split)):
    a = data_lib.load_arrays(dataset, name, data_dir, keys=("image", "label"))
    img = a["image"].astype(np.float32) / 255.0
    if img.shape[1:3] != (image_size, image_size):
      img = np.asarray(jax.image.resize(img, (img.shape[0], image_size, image_size, img.shape[-1]), "linear"))
    out[split] = {"image": np.clip(img, 0, 1), "label": a["label"].astype(np.int32)}
  return out


# ============================================================================================== feature network


def feature_network(images: dict[str, dict[str, np.ndarray]], *, num_classes: int, steps: int, width: int,
                    seed: int, workdir: str | None) -> tuple[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                                                             dict[str, Any]]:
  """Trains (or reloads from ``workdir``) the FeatureCNN on ``images['train']`` (inputs in [-1, 1]); returns
  ``fn(x [N, S, S, C] in [-1, 1]) -> (features [N, F], probs [N, K])`` and its results (test accuracy)."""
  model = registry.create("feature_cnn", num_classes=num_classes, width=width)
  shape = images["train"]["image"].shape[1:]
  task = classify_lib.ClassificationTask(model=model, tx=optax.adam(optax.cosine_decay_schedule(1e-3, steps)),
                                         loss_fn=losses_lib.cross_entropy, image_shape=shape, num_classes=num_classes)

  def augment(batch, rng):  # +-1 px shifts: the classifier should not be fooled by exact pixel positions
    x = batch["image"]
    dy, dx = rng.integers(-1, 2, 2)
    x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
    return {"image": x * 2 - 1, "label": batch["label"]}

  batches = ArrayBatches(images["train"], global_batch_size=64, seed=seed, transform=augment)
  test = images["test"]

  def evals():
    for rows, valid in memory.padded_eval_rows(len(test["label"]), 100):
      yield {"image": test["image"][rows] * 2 - 1, "label": test["label"][rows], "valid": valid}

  cfg = loop.LoopConfig(num_steps=steps, seed=seed, eval_every=0, checkpoint_every=steps if workdir else 0,
                        keep_checkpoints=1, log_every=100, progress_bar=False, description="feature network")
  state, results = loop.train(task, batches, config=cfg, mesh=task_lib.make_mesh(), workdir=workdir, eval_data=evals,
                              run_config={"feature_network": "feature_cnn", "steps": steps, "width": width,
                                          "seed": seed, "shape": list(shape)})
  variables = {"params": jax.device_get(state.params),
               "batch_stats": jax.device_get(state.model_state["batch_stats"])}

  @jax.jit
  def apply(x):
    feats = model.apply(variables, x, train=False, features=True)
    logits = model.apply(variables, x, train=False)
    return feats, jax.nn.softmax(logits)

  def fn(x):
    outs = [apply(jnp.asarray(x[i:i + 500])) for i in range(0, len(x), 500)]
    return (np.concatenate([np.asarray(o[0]) for o in outs]).astype(np.float64),
            np.concatenate([np.asarray(o[1]) for o in outs]).astype(np.float64))

  return fn, {"test_accuracy": results["eval_accuracy"], "steps": steps}


def image_sample_metrics(features_fn, reference: tuple[np.ndarray, np.ndarray], num_classes: int,
                         conditional: bool) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
  """``metrics(samples [N, S, S, C] in [-1, 1], requested labels [N]) -> dict`` (see the module docstring);
  ``reference`` = the real training features' ``(mu, sigma)``."""
  def metrics(samples, labels):
    feats, probs = features_fn(samples)
    if not np.all(np.isfinite(feats)):
      return {"fid": float("inf"), "inception_score": 0.0, "confidence": 0.0, "class_entropy": 0.0,
              "classes_covered": 0.0}
    mu, sigma = gm.gaussian_stats(feats)
    hist = np.bincount(np.argmax(probs, -1), minlength=num_classes) / len(probs)
    out = {"fid": float(gm.frechet_distance(mu, sigma, *reference)),
           "inception_score": float(gm.inception_score(probs, splits=1)[0]),
           "confidence": float(np.mean(np.max(probs, -1))),
           "class_entropy": float(-np.sum(hist[hist > 0] * np.log(hist[hist > 0]))),
           "classes_covered": float(np.sum(hist >= 0.02))}
    if conditional:
      out["class_accuracy"] = float(gm.class_accuracy(probs, labels)["accuracy"])
    return out
  return metrics


def mixture_sample_metrics(name: str) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
  from research.data import mixtures

  def metrics(samples, labels):
    del labels
    s = mixtures.mode_stats(name, samples)
    return {"modes_covered": float(s["modes_covered"]), "high_quality_rate": float(s["high_quality_rate"]),
            "mode_kl": float(s["kl_to_uniform"])}
  return metrics


# ============================================================================================== GAN config


_PAPER_N_CRITIC = {"gan": 1, "nsgan": 1, "wgan": 5, "wgan_gp": 5, "began": 1}


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """One GAN experiment (``python -m experiments.gan``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  dataset: str = setting("digits", "digits (scikit-learn's real digits), ring8 / grid25 (2-D Gaussian mixtures), or "
                         "a prepared TFDS image dataset (mnist, cifar10).")
  image_size: int = setting(16, "Image size (a power of two: 8, 16, 32); digits has 8/16/32.")
  losses: tuple[str, ...] = setting(("wgan_gp",), "Losses to train (--loss is the same flag).", choices=gen.LOSSES)
  conditional: bool = setting(False, "Class-conditional G (one-hot concatenated to z) and projection critic.")
  gammas: tuple[float, ...] = setting((0.5,), "BEGAN diversity ratios gamma (one run per value).")
  seeds: tuple[int, ...] = setting((0,), "Seeds; every loss is trained once per seed.")
  num_steps: int = setting(2000, "Generator iterations (each with --n_critic critic updates).")
  batch_size: int = setting(64, "Global batch of real examples per critic update.")
  n_critic: int = setting(0, "Critic updates per generator update (0 = the paper's: 5 for wgan/wgan_gp, else 1).")
  clip: float = setting(0.01, "WGAN weight clipping c.")
  gp_weight: float = setting(10.0, "WGAN-GP penalty weight lambda.")
  lambda_k: float = setting(0.001, "BEGAN proportional gain of k_t.")
  learning_rate: float = setting(0.0, "Both nets' learning rate (0 = the paper's: DCGAN 2e-4, WGAN 5e-5, WGAN-GP / "
                                 "BEGAN 1e-4).")
  beta1: float = setting(-1.0, "Adam beta1 (-1 = the paper's: 0.5, WGAN-GP 0).")
  z_dim: int = setting(0, "Noise dimension (0 = 64 for images, 2 for mixtures; BEGAN uses it as its code size).")
  width: int = setting(32, "Base width of the DCGAN / BEGAN nets.")
  generator_norm: str = setting("batch", "DCGAN generator normalisation.", choices=gan_models.NORMS_G)
  critic_norm: str = setting("none", "Critic normalisation (none or layer; never batch: WGAN-GP's penalty is "
                             "per example).", choices=gan_models.NORMS_D)
  critic_extra_layers: int = setting(0, "Extra 3x3 conv layers per scale in the critic (deeper critics).")
  mlp_hidden: int = setting(128, "Hidden units of the mixture MLPs.")
  mlp_depth: int = setting(3, "Hidden layers of the mixture MLPs.")
  eval_every: int = setting(250, "Evaluate (FID, critic gap ...) every N generator iterations.")
  num_eval_samples: int = setting(1000, "Generated samples per evaluation.")
  feature_steps: int = setting(1500, "Training steps of the feature CNN (images only).")
  feature_width: int = setting(32, "Width of the feature CNN.")
  checkpoint_every: int = setting(1000, "Checkpoint every N generator iterations (and at the end).")

  def __post_init__(self):
    for name in ("num_steps", "batch_size", "width", "mlp_hidden", "mlp_depth", "num_eval_samples", "feature_steps",
                 "feature_width", "checkpoint_every"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("n_critic", "clip", "gp_weight", "lambda_k", "learning_rate", "z_dim", "critic_extra_layers",
                 "eval_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.losses or len(set(self.losses)) != len(self.losses):
      raise ValueError(f"--losses must list distinct losses from {gen.LOSSES}, got {list(self.losses)}")
    bad = [x for x in self.losses if x not in gen.LOSSES]
    if bad:
      raise ValueError(f"--losses {bad}: choose from {','.join(gen.LOSSES)}")
    if self.conditional and "began" in self.losses:
      raise ValueError("--conditional: BEGAN is unconditional here; drop began from --losses")
    if self.dataset in MIXTURES and "began" in self.losses:
      raise ValueError(f"--dataset={self.dataset}: BEGAN's auto-encoder critic is for images; drop began")
    if self.dataset in MIXTURES and self.conditional:
      raise ValueError(f"--dataset={self.dataset} has no classes: drop --conditional")
    if self.dataset not in MIXTURES and (self.image_size < 8 or self.image_size & (self.image_size - 1)):
      raise ValueError(f"--image_size={self.image_size} must be a power of two >= 8")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if not self.gammas or any(not 0 < g <= 1 for g in self.gammas):
      raise ValueError(f"--gammas must be in (0, 1], got {list(self.gammas)}")
    if not 0 <= self.beta1 < 1 and self.beta1 != -1:
      raise ValueError(f"--beta1={self.beta1} must be in [0, 1) or -1 (the paper's)")

  @property
  def is_mixture(self) -> bool:
    return self.dataset in MIXTURES

  def critic_steps(self, loss: str) -> int:
    return self.n_critic or _PAPER_N_CRITIC[loss]

  def noise_dim(self) -> int:
    return self.z_dim or (2 if self.is_mixture else 64)


def run_name(loss: str, seed: int, *, conditional: bool = False, gamma: float | None = None) -> str:
  g = f"_gamma{gamma:g}" if gamma is not None else ""
  return f"{loss}{'_cond' if conditional else ''}{g}_seed{seed}"


def make_gan_task(cfg: GANConfig, loss: str, gamma: float, num_classes: int, channels: int,
                  sample_metrics=None) -> gen.GANTask:
  nc = num_classes if cfg.conditional else 0
  if cfg.is_mixture:
    g = registry.create("mlp_generator", hidden=cfg.mlp_hidden, depth=cfg.mlp_depth)
    d = registry.create("mlp_critic", hidden=cfg.mlp_hidden, depth=cfg.mlp_depth, norm=cfg.critic_norm)
    shape = (2,)
  elif loss == "began":
    g = registry.create("began_generator", image_size=cfg.image_size, channels=channels, width=cfg.width)
    d = registry.create("began_autoencoder", image_size=cfg.image_size, channels=channels, width=cfg.width,
                        hidden=cfg.noise_dim())
    shape = (cfg.image_size, cfg.image_size, channels)
  else:
    g = registry.create("dcgan_generator", image_size=cfg.image_size, channels=channels, width=cfg.width,
                        norm=cfg.generator_norm, num_classes=nc)
    d = registry.create("dcgan_critic", image_size=cfg.image_size, width=cfg.width, norm=cfg.critic_norm,
                        extra_layers=cfg.critic_extra_layers, num_classes=nc)
    shape = (cfg.image_size, cfg.image_size, channels)
  opts = gen.paper_optimizers(loss, learning_rate=cfg.learning_rate or None,
                              beta1=None if cfg.beta1 < 0 else cfg.beta1)
  return gen.GANTask(generator=g, critic=d, loss_type=loss, z_dim=cfg.noise_dim(), data_shape=shape, optimizers=opts,
                     n_critic=cfg.critic_steps(loss), clip=cfg.clip, gp_weight=cfg.gp_weight, gamma=gamma,
                     lambda_k=cfg.lambda_k, num_classes=nc, sample_metrics=sample_metrics)


def _spearman(a, b) -> float | None:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 3:
    return None
  return classical_manifold.spearman(a[ok], b[ok])  # rank correlation of the finite pairs


def save_grid(path: str, images: np.ndarray, ncol: int = 10) -> None:
  """images [N, S, S, C] in [-1, 1] -> one PNG grid (process 0)."""
  if not fileio.main_process():
    return
  from PIL import Image
  n, s = images.shape[0], images.shape[1]
  nrow = -(-n // ncol)
  grid = np.ones((nrow * (s + 1) + 1, ncol * (s + 1) + 1, images.shape[-1]), np.float32)
  for i in range(n):
    r, c = divmod(i, ncol)
    grid[1 + r * (s + 1):1 + r * (s + 1) + s, 1 + c * (s + 1):1 + c * (s + 1) + s] = (images[i] + 1) / 2
  img = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  img = img[..., 0] if img.shape[-1] == 1 else img
  scale = max(1, 512 // (ncol * (s + 1)))
  Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def _critic_weight_stats(params, clip: float, path: str | None) -> dict[str, float]:
  """Weights (not biases) of the critic: std, the fraction within 1% of +-clip, and the fraction within 1% of the
  critic's own extremes +-max|w| (Gulrajani et al. Fig. 1b: clipping piles the weights up at the two extremes, the
  penalty does not -- comparable for both); a histogram PNG."""
  leaves = [np.asarray(v).ravel() for k, v in jax.tree_util.tree_leaves_with_path(params)
            if "kernel" in jax.tree_util.keystr(k)]
  w = np.concatenate(leaves) if leaves else np.zeros(1)
  a = np.abs(w)
  out = {"weight_std": float(np.std(w)), "weights_at_clip": float(np.mean(a >= 0.99 * clip)),
         "weights_at_extremes": float(np.mean(a >= 0.99 * a.max())), "weight_max_abs": float(a.max())}
  if path and fileio.main_process():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(w, bins=100)
    ax.set_xlabel("critic weight")
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
  return out


def _eval_batches(cfg: GANConfig, real: dict[str, np.ndarray], num_classes: int):
  """Eval rows: index i, the held-out real example i mod N (critic scores), requested label i mod K."""
  n = cfg.num_eval_samples
  n_real = len(real["x"])

  def batches():
    for rows, valid in memory.padded_eval_rows(n, min(n, 500)):
      out = {"x": real["x"][rows % n_real], "index": rows.astype(np.int32), "valid": valid}
      out["label"] = (rows % num_classes).astype(np.int32) if cfg.conditional else real["label"][rows % n_real]
      yield out
  return batches


def train_gan(cfg: GANConfig, data, loss: str, seed: int, gamma: float | None, workdir: str, num_classes: int,
              sample_metrics) -> dict[str, Any]:
  name = run_name(loss, seed, conditional=cfg.conditional, gamma=gamma)
  out = os.path.join(workdir, name)
  run_config = {**dataclasses.asdict(cfg), "run": name, "loss": loss, "seed": seed, "gamma": gamma}
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  channels = 0 if cfg.is_mixture else data["train"]["x"].shape[-1]
  task = make_gan_task(cfg, loss, gamma if gamma is not None else 0.5, num_classes, channels, sample_metrics)
  nc = task.n_critic
  train_arrays = {"x": data["train"]["x"], "label": data["train"]["label"]}
  batches = ArrayBatches(train_arrays, global_batch_size=cfg.batch_size * nc, seed=seed)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1, log_every=50, progress_bar=False,
                         description=name)
  t0 = time.time()
  state, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                              eval_data=_eval_batches(cfg, data["test"], num_classes), run_config=run_config)
  results["curve"] = [r for r in metrics_lib.read_metrics(out) if any(k.startswith("eval/") for k in r)]
  params = jax.device_get(state.params)
  if loss in ("wgan", "wgan_gp"):  # the clipping-vs-penalty comparison (weights at +-c mean nothing otherwise)
    results.update(_critic_weight_stats(params["critic"], cfg.clip, os.path.join(out, "critic_weights.png")))
  results["train_seconds_total"] = time.time() - t0
  if not cfg.is_mixture:
    index = jnp.arange(100, dtype=jnp.int32)
    y = (index // 10).astype(jnp.int32) if cfg.conditional else None  # one row per class
    samples = np.asarray(jax.jit(task.sample)(params, jax.device_get(state.model_state), index, y))
    save_grid(os.path.join(out, "samples.png"), samples)
  else:
    samples = np.asarray(jax.jit(task.sample)(params, jax.device_get(state.model_state),
                                              jnp.arange(2000, dtype=jnp.int32)))
    _scatter(os.path.join(out, "samples.png"), samples, data["train"]["x"][:2000])
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


def _scatter(path, samples, real):
  if not fileio.main_process():
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.scatter(real[:, 0], real[:, 1], s=2, c="tab:blue", alpha=0.3, label="data")
  ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:red", alpha=0.5, label="samples")
  ax.legend(loc="upper right", fontsize="small")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def load_gan_data(cfg: GANConfig, seed: int = 0) -> tuple[dict, int]:
  """``({'train'|'test': {'x', 'label'}}, num_classes)``; images in [-1, 1]."""
  if cfg.is_mixture:
    from research.data import mixtures
    tr = mixtures.sample(cfg.dataset, 20000, seed=10_000 + seed)
    te = mixtures.sample(cfg.dataset, 2000, seed=20_000)
    zeros = lambda n: np.zeros(n, np.int32)  # noqa: E731
    return {"train": {"x": tr, "label": zeros(len(tr))}, "test": {"x": te, "label": zeros(len(te))}}, 1
  images = load_images(cfg.dataset, cfg.image_size, cfg.data_dir)
  num_classes = int(max(images["train"]["label"].max(), images["test"]["label"].max())) + 1
  data = {s: {"x": v["image"] * 2 - 1, "label": v["label"]} for s, v in images.items()}
  return data, num_classes


def divergence_estimate(loss: str, row: dict) -> float | None:
  """The critic's held-out estimate of the distance between data and model at one eval point (``row`` holds
  ``eval/...`` keys): WGAN / WGAN-GP: the Wasserstein estimate E f(x) - E f(G(z)); GAN / NSGAN:
  log 4 - BCE = 2 JSD - (the optimal-discriminator identity, Goodfellow et al. 2014 Thm. 1); BEGAN: M_global."""
  if loss in ("wgan", "wgan_gp"):
    return row.get("eval/critic_gap")
  if loss in ("gan", "nsgan"):
    bce = row.get("eval/discriminator_loss")
    return None if bce is None else float(np.log(4.0) - bce)
  return row.get("eval/m_global")


def tracking(loss: str, curve: list[dict], mixture: bool) -> float | None:
  """Spearman correlation over the eval points of training between the divergence estimate and the sample
  quality: FID (images; > 0 = the estimate falls as the FID falls: it tracks quality) or minus the high-quality
  rate (mixtures)."""
  quality = [(-r["eval/high_quality_rate"] if mixture else r["eval/fid"]) if (
      "eval/high_quality_rate" if mixture else "eval/fid") in r else None for r in curve]
  return _spearman([divergence_estimate(loss, r) for r in curve], quality)


_TABLE_KEYS = {"image": ("fid", "inception_score", "confidence", "class_entropy", "classes_covered", "class_accuracy"),
               "mixture": ("modes_covered", "high_quality_rate", "mode_kl")}


def run_gan(cfg: GANConfig, workdir: str) -> dict[str, Any]:
  """Trains every loss (x gamma for BEGAN) x seed; returns (and writes) the summary with the claims."""
  t0 = time.time()
  n_dev = jax.device_count()
  if cfg.batch_size % n_dev:
    raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the {n_dev} devices")
  os.makedirs(workdir, exist_ok=True)
  data, num_classes = load_gan_data(cfg)
  feature_info: dict[str, Any] = {}
  if cfg.is_mixture:
    sample_metrics = mixture_sample_metrics(cfg.dataset)
  else:
    images = {s: {"image": (v["x"] + 1) / 2, "label": v["label"]} for s, v in data.items()}
    fn, feature_info = feature_network(images, num_classes=num_classes, steps=cfg.feature_steps,
                                       width=cfg.feature_width, seed=0,
                                       workdir=os.path.join(workdir, f"feature_cnn_{cfg.dataset}{cfg.image_size}"))
    train_feats, _ = fn(data["train"]["x"])
    test_feats, _ = fn(data["test"]["x"])
    reference = gm.gaussian_stats(train_feats)
    feature_info["fid_test"] = float(gm.frechet_distance(*gm.gaussian_stats(test_feats), *reference))
    sample_metrics = image_sample_metrics(fn, reference, num_classes, cfg.conditional)
    order = np.argsort(data["test"]["label"], kind="stable")  # real test digits, one row per class when possible
    save_grid(os.path.join(workdir, "real.png"), data["test"]["x"][order][::max(1, len(order) // 100)][:100])
  runs: dict[str, list[dict]] = {}
  for loss in cfg.losses:
    for gamma in (cfg.gammas if loss == "began" else (None,)):
      key = run_name(loss, 0, conditional=cfg.conditional, gamma=gamma).rsplit("_seed", 1)[0]
      for seed in cfg.seeds:
        result = train_gan(cfg, data, loss, seed, gamma, workdir, num_classes, sample_metrics)
        result["tracking_spearman"] = tracking(loss, result.get("curve") or [], cfg.is_mixture)
        runs.setdefault(key, []).append(result)

  keys = _TABLE_KEYS["mixture" if cfg.is_mixture else "image"]
  table = {}
  for key, results in runs.items():
    row = {k: reporting.mean_std([r.get(f"eval_{k}") for r in results]) for k in keys if f"eval_{k}" in results[0]}
    row["tracking_spearman"] = reporting.mean_std([r.get("tracking_spearman") for r in results])
    row["weights_at_extremes"] = reporting.mean_std([r.get("weights_at_extremes") for r in results])
    row["critic_gap"] = reporting.mean_std([r.get("eval_critic_gap") for r in results])
    row["wall_seconds"] = reporting.mean_std([r.get("wall_seconds") for r in results])
    table[key] = row
  claims = _gan_claims(cfg, table)
  summary = {"config": dataclasses.asdict(cfg), "feature_network": feature_info,
             "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()},
             "runs": {k: [{m: r.get(m) for m in ("tracking_spearman", "weights_at_clip", "weights_at_extremes",
                                                 "weight_max_abs", "wall_seconds",
                                                 *[f"eval_{x}" for x in keys])} for r in rs]
                      for k, rs in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  _plot_curves(workdir, runs, "eval/high_quality_rate" if cfg.is_mixture else "eval/fid")
  fmt = lambda v: "-" if v[0] is None else f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
  cols = [k for k in keys if any(k in row for row in table.values())]
  header = ("run", *cols, "tracking ρ", "critic weights within 1% of ±max abs", "wall s")
  rows = [(k, *[fmt(row[c]) if c in row else "-" for c in cols], fmt(row["tracking_spearman"]),
           fmt(row["weights_at_extremes"]), f"{row['wall_seconds'][0]:.0f}") for k, row in table.items()]
  floor = (f" Feature CNN test accuracy {feature_info['test_accuracy']:.3f}; FID of the real test split "
           f"{feature_info['fid_test']:.2f} (the floor at this sample size)." if feature_info else "")
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# GANs on {cfg.dataset}{'' if cfg.is_mixture else f' ({cfg.image_size}x{cfg.image_size})'}, "
      f"{cfg.num_steps} generator iterations, seeds {','.join(map(str, cfg.seeds))}",
      f"Mean ± std over seeds; {cfg.num_eval_samples} samples per evaluation.{floor} tracking ρ = Spearman over the "
      f"eval points of training between the critic's held-out divergence estimate (WGAN: E f(x) - E f(G(z)); GAN: "
      f"log 4 - BCE; BEGAN: M_global) and the {'low-quality rate' if cfg.is_mixture else 'FID'} (> 0: the estimate "
      f"falls as samples improve).",
      reporting.markdown_table(header, rows),
      "claims: " + json.dumps(claims))
  return summary


def _gan_claims(cfg: GANConfig, table) -> dict[str, Any]:
  claims: dict[str, Any] = {}
  get = lambda k, m: table.get(k, {}).get(m, (None,))[0]  # noqa: E731
  suffix = "_cond" if cfg.conditional else ""
  for loss in ("wgan", "wgan_gp", "gan", "nsgan"):
    if f"{loss}{suffix}" in table:
      claims[f"{loss}_tracking_spearman"] = get(f"{loss}{suffix}", "tracking_spearman")
  wt = [claims.get(f"{x}_tracking_spearman") for x in ("wgan", "wgan_gp")]
  gt = [claims.get(f"{x}_tracking_spearman") for x in ("gan", "nsgan")]
  if any(v is not None for v in wt) and any(v is not None for v in gt):
    claims["wasserstein_tracks_quality_better_than_gan_loss"] = bool(
        max(v for v in wt if v is not None) > max(v for v in gt if v is not None))
  if f"wgan{suffix}" in table and f"wgan_gp{suffix}" in table:
    metric = "high_quality_rate" if cfg.is_mixture else "fid"
    a, b = get(f"wgan{suffix}", metric), get(f"wgan_gp{suffix}", metric)
    if a is not None and b is not None:
      claims["gp_beats_clipping"] = bool(b > a) if cfg.is_mixture else bool(b < a)
    claims["clipping_weights_at_extremes"] = get(f"wgan{suffix}", "weights_at_extremes")
    claims["gp_weights_at_extremes"] = get(f"wgan_gp{suffix}", "weights_at_extremes")
    if claims["clipping_weights_at_extremes"] is not None and claims["gp_weights_at_extremes"] is not None:
      claims["clipping_piles_weights_at_extremes"] = bool(claims["clipping_weights_at_extremes"] >
                                                          5 * claims["gp_weights_at_extremes"])
  began = sorted((float(k.split("gamma")[1]), k) for k in table if k.startswith("began_gamma"))
  if len(began) >= 2:
    ent = [get(k, "class_entropy") for _, k in began]
    conf = [get(k, "confidence") for _, k in began]
    claims["began_gamma"] = {"gammas": [g for g, _ in began], "class_entropy": ent, "confidence": conf,
                             "diversity_rises_with_gamma": bool(ent[-1] > ent[0]),
                             "quality_falls_with_gamma": bool(conf[-1] < conf[0])}
  if cfg.conditional:
    claims["class_accuracy"] = {k: get(k, "class_accuracy") for k in table}
  return claims


def _plot_curves(workdir, runs, key):
  series = {}
  for name, results in runs.items():
    c = results[0].get("curve") or []
    pts = [(r["step"], r[key]) for r in c if r.get(key) is not None and np.isfinite(r[key])]
    if pts:
      series[name] = ([p[0] for p in pts], [p[1] for p in pts])
  if series:
    reporting.line_plot(os.path.join(workdir, "curves.png"), series, xlabel="generator iteration",
                        ylabel=key.split("/")[-1])


# ============================================================================================== VAE


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """One VAE experiment (``python -m experiments.vae``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  dataset: str = setting("digits", "digits (scikit-learn's real digits) or a prepared TFDS image dataset (mnist).")
  image_size: int = setting(8, "Image size (digits: 8, 16 or 32).")
  latents: tuple[int, ...] = setting((2, 8), "Latent sizes (one run each; a 2-D latent gets a latent-space plot).")
  seeds: tuple[int, ...] = setting((0,), "Seeds.")
  num_steps: int = setting(5000, "Training steps.")
  batch_size: int = setting(100, "Global batch.")
  learning_rate: float = setting(1e-3, "Adam learning rate.")
  hidden: int = setting(256, "Hidden units per layer (Kingma & Welling use 500 on MNIST).")
  depth: int = setting(1, "Hidden layers in the encoder and in the decoder.")
  activation: str = setting("tanh", "Hidden activation.", choices=tuple(vae_models.ACTIVATIONS))
  iwae_samples: int = setting(1000, "K of the importance-weighted bound at evaluation.")
  iwae_sweep: tuple[int, ...] = setting((1, 10, 100, 1000), "K values of the bound-vs-K table of the final models.")
  eval_every: int = setting(1000, "Evaluate every N steps (and at the end).")
  binarize_seed: int = setting(0, "Seed of the fixed binarisation of the test images.")

  def __post_init__(self):
    for name in ("image_size", "num_steps", "batch_size", "learning_rate", "hidden", "depth", "iwae_samples"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if self.eval_every < 0:
      raise ValueError(f"--eval_every must be >= 0, got {self.eval_every}")
    if not self.latents or any(z <= 0 for z in self.latents) or len(set(self.latents)) != len(self.latents):
      raise ValueError(f"--latents must list distinct positive sizes, got {list(self.latents)}")
    if not self.iwae_sweep or any(k <= 0 for k in self.iwae_sweep):
      raise ValueError(f"--iwae_sweep must list positive K values, got {list(self.iwae_sweep)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")


def _vae_eval_rows(x: np.ndarray, labels: np.ndarray, batch: int):
  def batches():
    for rows, valid in memory.padded_eval_rows(len(x), batch):
      yield {"x": x[rows], "label": labels[rows], "index": rows.astype(np.int32), "valid": valid}
  return batches


def run_vae(cfg: VAEConfig, workdir: str) -> dict[str, Any]:
  """Trains the VAE for every latent size x seed; ELBO and IWAE bounds in nats on the binarised test images."""
  t0 = time.time()
  if cfg.batch_size % jax.device_count():
    raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the {jax.device_count()} devices")
  os.makedirs(workdir, exist_ok=True)
  images = load_images(cfg.dataset, cfg.image_size, cfg.data_dir)
  train = images["train"]["image"]
  test = images["test"]["image"]
  test_bin = (np.random.default_rng(cfg.binarize_seed).random(test.shape) < test).astype(np.float32)
  dim = int(np.prod(train.shape[1:]))
  runs: dict[int, list[dict]] = {}
  sweeps: dict[int, list[dict]] = {}
  for latent in cfg.latents:
    for seed in cfg.seeds:
      name = f"latent{latent}_seed{seed}"
      out = os.path.join(workdir, name)
      run_config = {**dataclasses.asdict(cfg), "run": name, "latent": latent, "seed": seed}
      done = reporting.stored_results(out, run_config)
      if done is None:
        model = registry.create("vae_mlp", data_dim=dim, latent=latent, hidden=cfg.hidden, depth=cfg.depth,
                                activation=cfg.activation)
        task = gen.VAETask(model=model, learning_rate=cfg.learning_rate, iwae_samples=cfg.iwae_samples)
        batches = ArrayBatches({"x": train}, global_batch_size=cfg.batch_size, seed=seed)
        lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                               checkpoint_every=cfg.num_steps, keep_checkpoints=1, log_every=100, progress_bar=False,
                               description=name)
        evals = _vae_eval_rows(test_bin, images["test"]["label"], 100)
        state, done = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                                 eval_data=evals, run_config=run_config)
        params = jax.device_get(state.params)
        done["iwae_sweep"] = _iwae_sweep(task, params, test_bin, cfg.iwae_sweep)
        if latent == 2:
          _latent_plot(os.path.join(out, "latent_space.png"), task, params, test_bin, images["test"]["label"])
        _vae_samples(os.path.join(out, "samples.png"), task, params, latent, train.shape[1:], seed)
        if fileio.main_process():
          fileio.write_json_atomic(os.path.join(out, "results.json"), done)
          fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
      runs.setdefault(latent, []).append(done)
      sweeps.setdefault(latent, []).append(done["iwae_sweep"])
  table = {}
  for latent, results in runs.items():
    row = {k: reporting.mean_std([r[f"eval_{k}"] for r in results]) for k in ("neg_elbo", "nll_iwae", "kl", "active_units")}
    row["wall_seconds"] = reporting.mean_std([r["wall_seconds"] for r in results])
    for k in cfg.iwae_sweep:
      row[f"iwae_k{k}"] = reporting.mean_std([s[str(k)] for s in sweeps[latent]])
    table[latent] = row
  claims = {
      "iwae_tighter_than_elbo": {str(z): bool(row["nll_iwae"][0] < row["neg_elbo"][0]) for z, row in table.items()},
      "bound_monotone_in_k": {str(z): bool(all(np.diff([row[f"iwae_k{k}"][0] for k in sorted(cfg.iwae_sweep)]) <= 1e-3))
                              for z, row in table.items()},
  }
  summary = {"config": dataclasses.asdict(cfg), "data_dim": dim, "num_train": int(len(train)),
             "num_test": int(len(test)),
             "table": {str(z): {m: list(v) for m, v in row.items()} for z, row in table.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  fmt = lambda v: f"{v[0]:.2f} ± {v[1]:.2f}"  # noqa: E731
  header = ("latent", "-ELBO (nats)", f"-L_{cfg.iwae_samples} (NLL bound)", "KL", "active units",
            *[f"-L_{k}" for k in cfg.iwae_sweep], "wall s")
  rows = [(z, fmt(r["neg_elbo"]), fmt(r["nll_iwae"]), fmt(r["kl"]), fmt(r["active_units"]),
           *[fmt(r[f"iwae_k{k}"]) for k in cfg.iwae_sweep], f"{r['wall_seconds'][0]:.0f}") for z, r in table.items()]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# VAE on {cfg.dataset} ({cfg.image_size}x{cfg.image_size}, {dim} binary pixels), {cfg.num_steps} steps, "
      f"seeds {','.join(map(str, cfg.seeds))}",
      f"{len(train)} train / {len(test)} test images; training on dynamically binarised images, evaluation on one "
      f"fixed binarisation of the test split; nats per image, mean ± std over seeds.",
      reporting.markdown_table(header, rows), "claims: " + json.dumps(claims))
  return summary


def _iwae_sweep(task: gen.VAETask, params, x: np.ndarray, ks) -> dict[str, float]:
  """-L_K (nats per image) of the test images for every K (fixed noise per K)."""
  flat = jnp.asarray(x.reshape(len(x), -1))
  out = {}
  for k in ks:
    total = 0.0
    for i in range(0, len(flat), 100):
      xb = flat[i:i + 100]
      eps = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(k), i), (k, xb.shape[0], task.model.latent))
      log_w = jax.jit(task.log_weights)(params, xb, eps)
      total += float(jnp.sum(jax.nn.logsumexp(log_w, 0) - np.log(k)))
    out[str(k)] = -total / len(flat)
  return out


def _latent_plot(path, task, params, x, labels):
  if not fileio.main_process():
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  mu, _ = task.model.apply({"params": params}, jnp.asarray(x.reshape(len(x), -1)), method=task.model.encode)
  mu = np.asarray(mu)
  fig, ax = plt.subplots(figsize=(5, 4))
  sc = ax.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", s=6)
  fig.colorbar(sc, ax=ax, label="digit")
  ax.set_xlabel("z1 (posterior mean)")
  ax.set_ylabel("z2")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _vae_samples(path, task, params, latent, shape, seed):
  z = jax.random.normal(jax.random.PRNGKey(1000 + seed), (100, latent))
  logits = task.model.apply({"params": params}, z, method=task.model.decode)
  probs = np.asarray(jax.nn.sigmoid(logits)).reshape((100,) + tuple(shape))
  save_grid(path, probs * 2 - 1)
