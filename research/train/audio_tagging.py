"""Multi-label audio tagging on the ONE loop, with the mix-training strategy of the raw-waveform Audio Set system
(§2.3: "the network is trained with mixed data, which extends training distribution and then transferred to the
target domain using raw data") and mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

Batches: ``{'audio': float32 [B, T] (waveform in [-1, 1)), 'labels': float32 [B, C] (multi-hot)}``; eval batches add
``valid`` [B].

Augmentation (:data:`AUGMENTS`), applied to this device's shard inside the compiled step, from the step's key
(``fold_in(fold_in(state.rng, step), device)`` of the loop, then ``fold_in(., 1)``), so it is seeded per step:

* ``none``: the clips as they are.
* ``mixup``: every clip ``i`` is paired with a partner ``j = pi(i)`` (:func:`partners`: the next clip in a random
  cyclic order, never itself when B > 1) and ``x = lam x_i + (1 - lam) x_j``, ``y = lam y_i + (1 - lam) y_j`` with
  ``lam ~ Beta(alpha, alpha)`` per pair: a convex combination of clips AND labels.
* ``mix_training``: ``x = g_i x_i + g_j x_j`` (a sum of two clips, gains ``g = 10^(-U(0, gain_db) / 20)``) labelled
  with the UNION of the two label sets, ``y = max(y_i, y_j)`` (both sounds are present in the mixture). Mixing is on
  for the first ``round(mix_until * num_steps)`` steps and OFF afterwards: the last part of training sees the raw
  clips (the transfer back to the target distribution).

:class:`AudioTaggingTask`: sigmoid binary cross-entropy of the model's probabilities (mean over classes and clips),
Adam with a cosine-decayed learning rate; eval: ``mAP`` and ``auc`` (``research.train.audio_metrics``, over the
whole split gathered on the host) and the mean ``loss``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.train import audio_metrics
from research.train import task as task_lib

AUGMENTS = ("none", "mixup", "mix_training")
_EPS = 1e-7


def partners(rng: jax.Array, batch: int) -> jax.Array:
  """``pi`` [B]: clip ``i``'s partner is the clip after it in a random cyclic order (a derangement for B > 1)."""
  order = jax.random.permutation(rng, batch)
  place = jnp.argsort(order)
  return order[(place + 1) % batch]


def mixup(audio: jax.Array, labels: jax.Array, rng: jax.Array, *, alpha: float) -> dict[str, jax.Array]:
  """Zhang et al.'s mixup of ``audio`` [B, T] and ``labels`` [B, C]: ``{'audio', 'labels', 'partner', 'lam'}``."""
  k_pair, k_lam = jax.random.split(rng)
  j = partners(k_pair, audio.shape[0])
  lam = jax.random.beta(k_lam, alpha, alpha, (audio.shape[0],)).astype(jnp.float32)
  mixed = lam[:, None] * audio + (1 - lam[:, None]) * audio[j]
  y = lam[:, None] * labels + (1 - lam[:, None]) * labels[j]
  return {"audio": mixed.astype(audio.dtype), "labels": y.astype(labels.dtype), "partner": j, "lam": lam}


def mix_training(audio: jax.Array, labels: jax.Array, rng: jax.Array, *, active: jax.Array,
                 gain_db: float) -> dict[str, jax.Array]:
  """Mix-training (module docstring): ``x_i g_i + x_j g_j`` labelled ``max(y_i, y_j)`` where ``active`` (a bool
  scalar), else the batch unchanged. Returns ``{'audio' [B, T], 'labels' [B, C], 'partner' [B], 'gains' [B, 2]}``."""
  k_pair, k_gain = jax.random.split(rng)
  j = partners(k_pair, audio.shape[0])
  gains = 10.0 ** (-jax.random.uniform(k_gain, (audio.shape[0], 2), jnp.float32, 0.0, gain_db) / 20.0)
  mixed = gains[:, :1] * audio + gains[:, 1:] * audio[j]
  union = jnp.maximum(labels, labels[j])
  return {"audio": jnp.where(active, mixed.astype(audio.dtype), audio),
          "labels": jnp.where(active, union, labels), "partner": j, "gains": gains}


def binary_cross_entropy(probs: jax.Array, targets: jax.Array) -> jax.Array:
  """``-(y log p + (1 - y) log(1 - p))`` elementwise, ``p`` clipped to [1e-7, 1 - 1e-7]; float32."""
  p = jnp.clip(probs.astype(jnp.float32), _EPS, 1 - _EPS)
  y = targets.astype(jnp.float32)
  return -(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))


@dataclasses.dataclass(eq=False)
class AudioTaggingTask(task_lib.Task):
  """Any model ``model(audio [B, T], *, train) -> probabilities [B, C]`` (e.g. ``wave_resnet``)."""
  model: nn.Module
  num_steps: int
  augment: str = "none"
  mix_until: float = 0.8
  mix_gain_db: float = 6.0
  mixup_alpha: float = 1.0
  learning_rate: float = 1e-3
  final_lr_fraction: float = 0.05

  def __post_init__(self):
    if self.augment not in AUGMENTS:
      raise ValueError(f"--augment={self.augment!r}; choose from {AUGMENTS}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    if not 0.0 <= self.mix_until <= 1.0:
      raise ValueError(f"--mix_until must be a fraction of the steps in [0, 1], got {self.mix_until}")
    if self.mix_gain_db < 0:
      raise ValueError(f"--mix_gain_db must be >= 0 (gains 10^(-U(0, gain_db)/20)), got {self.mix_gain_db}")
    if self.mixup_alpha <= 0:
      raise ValueError(f"--mixup_alpha must be positive (lambda ~ Beta(alpha, alpha)), got {self.mixup_alpha}")
    if self.learning_rate <= 0:
      raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")

  @property
  def mix_steps(self) -> int:
    """Mix-training is on for steps ``[0, mix_steps)``."""
    return int(round(self.mix_until * self.num_steps))

  def schedule(self):
    return optax.cosine_decay_schedule(self.learning_rate, self.num_steps, alpha=self.final_lr_fraction)

  def optimizer(self):
    return optax.adam(self.schedule())

  def init(self, rng, batch):
    x = jnp.zeros((1,) + tuple(batch["audio"].shape[1:]), jnp.float32)
    variables = self.model.init({"params": rng}, x, train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def train_batch(self, batch, rng, step) -> dict[str, jax.Array]:
    """The batch the gradient step sees at ``step`` (module docstring): augmented per :attr:`augment`."""
    audio, labels = batch["audio"], batch["labels"].astype(jnp.float32)
    if self.augment == "mixup":
      out = mixup(audio, labels, rng, alpha=self.mixup_alpha)
    elif self.augment == "mix_training":
      out = mix_training(audio, labels, rng, active=step < self.mix_steps, gain_db=self.mix_gain_db)
    else:
      out = {"audio": audio, "labels": labels}
    return {"audio": out["audio"], "labels": out["labels"]}

  def _variables(self, params, model_state):
    bn = model_state.get("batch_stats", {})
    return {"params": params, **({"batch_stats": bn} if jax.tree.leaves(bn) else {})}

  def loss(self, params, model_state, batch, rng, *, train):
    del rng, train  # the training loss (eval_step computes the eval statistics)
    probs, updates = self.model.apply(self._variables(params, model_state), batch["audio"], train=True,
                                      mutable=["batch_stats"])
    loss = jnp.mean(binary_cross_entropy(probs, batch["labels"]))
    new_state = {**model_state, "batch_stats": updates.get("batch_stats", model_state.get("batch_stats", {}))}
    return loss, (new_state, {"bce": loss})

  def update(self, state, batch, rng, *, axis_name):
    mixed = self.train_batch(batch, jax.random.fold_in(rng, 1), state.step)
    return super().update(state, mixed, rng, axis_name=axis_name)

  def extra_metrics(self, state):
    mixing = jnp.asarray(self.augment == "mix_training", jnp.float32) * (state.step < self.mix_steps)
    return {"learning_rate": self.schedule()(state.step), "mixing": mixing.astype(jnp.float32)}

  def eval_step(self, state, batch):
    probs = self.model.apply(self._variables(state.params, state.model_state), batch["audio"], train=False)
    valid = batch["valid"].astype(jnp.float32)
    bce = jnp.mean(binary_cross_entropy(probs, batch["labels"]), axis=-1)
    return ({"bce": jnp.sum(bce * valid), "count": jnp.sum(valid)},
            {"probs": probs.astype(jnp.float32), "labels": batch["labels"].astype(jnp.float32)})

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    out = {"loss": float(sums["bce"]) / n, "count": float(sums["count"])}
    if gathered is not None and "probs" in gathered:
      keep = np.asarray(gathered["valid"]) > 0 if "valid" in gathered else slice(None)
      m = audio_metrics.tagging_metrics(np.asarray(gathered["labels"])[keep] > 0.5,
                                        np.asarray(gathered["probs"])[keep])
      out.update({"mAP": m["mAP"], "auc": m["auc"]})
    return out

  def run_info(self) -> dict[str, Any]:
    return {"task": "audio_tagging", "model_class": type(self.model).__name__, "augment": self.augment,
            "mix_steps": self.mix_steps if self.augment == "mix_training" else 0}


def eval_batches(arrays: dict[str, np.ndarray], *, global_batch_size: int):
  """A callable returning one pass over ``arrays`` (``audio``, ``labels``) in this process's rows of zero-padded
  global batches with ``valid`` [b] (``research.data.memory.padded_eval_rows``)."""
  from research.data.memory import padded_eval_rows
  n = len(arrays["labels"])

  def one_pass():
    for rows, valid in padded_eval_rows(n, global_batch_size):
      yield {"audio": arrays["audio"][rows], "labels": arrays["labels"][rows], "valid": valid}

  return one_pass


__all__ = ["AUGMENTS", "AudioTaggingTask", "binary_cross_entropy", "eval_batches", "mix_training", "mixup",
           "partners"]
