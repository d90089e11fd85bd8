"""Task2Vec embeddings: head fitting, the Fisher Information Matrix (FIM) estimators, filter-wise averaging.

Task2Vec §3 (Achille et al., ICCV 2019): the task embedding is the diagonal FIM of the probe network's filter
parameters, ``F = E_{x~task, y~p_w(y|x)} [grad_w log p_w(y|x)^2]``, averaged per filter (all axes of a conv kernel
but the output channel; BatchNorm γ per channel), after a task-specific linear head has been fitted on the frozen
probe features. The dimension is the number of probe filters after ``start_stage``: it does not depend on the
task's class count (heads are padded to ``num_classes_pad`` with masked logits).

Estimators (``FisherConfig.method``):
  * ``montecarlo`` + ``estimator='per_example'``: exact per-example diagonal via ``jax.vmap`` of per-example
    gradients, labels sampled from the model's predictive distribution (an unbiased estimate of F).
  * ``montecarlo`` + ``estimator='batch'``: the reference loop (aws-cv-task2vec), square of the gradient of the
    batch-mean loss; ``E[g_B^2] = F / B`` since ``E_y[grad log p] = 0`` (we report it as is, like the reference).
  * ``variational``: robust Fisher (§3 "Robust Fisher computation"): per-filter log-variance of a Gaussian
    posterior on the weights + a per-layer prior variance λ², weights frozen; loss = CE + β·KL with the local
    reparameterisation trick (noise on activations: ``var(conv(x, w+ε)) = σ²_o · boxsum(Σ_c x²)``).
    Embedding = ``exp(-logvar)``, scale = ``exp(-log λ²)``.

Per-example sampling keys are ``fold_in(fold_in(key, epoch), example_index)``, so an embedding does not depend on
the batch size or the number of devices. All loops are data-parallel over the ``data`` mesh (``psum`` of Fisher
sums) and traced once per (probe, start_stage, batch size, num_classes_pad).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from research.train import metrics as metrics_lib
from research.train import losses, steps

METHODS = ("montecarlo", "variational")
ESTIMATORS = ("per_example", "batch")
NEG = -1e9  # logit of a padded (absent) class


@dataclasses.dataclass
class Embedding:
  """``hessian [P]``: filter-wise FIM diagonal; ``scale [P]``: its prior scale (ones for Monte Carlo)."""
  hessian: np.ndarray
  scale: np.ndarray
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def trivial_embedding(e: Embedding) -> Embedding:
  """The trivial embedding t0 (§3.2, d_asym): the prior scale of the same probe (``hessian = scale``)."""
  return Embedding(hessian=np.asarray(e.scale), scale=np.asarray(e.scale), meta={"task": "trivial"})


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Reference defaults (aws-cv-task2vec ``_fit_classifier``): Adam 4e-4, L2 1e-4, 10 epochs, class-balanced."""
  learning_rate: float = 4e-4
  weight_decay: float = 1e-4
  epochs: int = 10
  batch_size: int = 64
  min_steps: int = 0  # at least this many steps (small tasks get few steps per epoch)


@dataclasses.dataclass(frozen=True)
class FisherConfig:
  method: str = "montecarlo"
  estimator: str = "per_example"  # montecarlo only
  epochs: int = 1  # passes over the task's data (one label sample per example per pass)
  batch_size: int = 64
  # variational
  beta: float = 1e-7
  learning_rate: float = 1e-2
  init_logvar: float = -8.0

  def validate(self):
    if self.method not in METHODS:
      raise ValueError(f"unknown Fisher method {self.method!r}; choose one of {METHODS}")
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"unknown Fisher estimator {self.estimator!r}; choose one of {ESTIMATORS}")
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError("Fisher epochs and batch size must be positive")
    if self.batch_size % jax.device_count():
      raise ValueError(f"Fisher batch size {self.batch_size} is not divisible by the device count "
                       f"{jax.device_count()}")


# ------------------------------------------------------------------------------------------- parameter layout


def is_filter_param(path: tuple[str, ...], leaf) -> bool:
  """Filters of the embedding: conv kernels (ndim 4, ``kernel``) and BatchNorm γ (``scale``); no dense layers."""
  return (path[-1] == "kernel" and np.ndim(leaf) == 4) or (path[-1] == "scale" and np.ndim(leaf) == 1)


def split_params(params) -> tuple[dict, dict]:
  """Flat ``{path: leaf}`` dicts: (filter parameters of the embedding, the rest)."""
  flat = flax.traverse_util.flatten_dict(params)
  emb = {k: v for k, v in flat.items() if is_filter_param(k, v)}
  rest = {k: v for k, v in flat.items() if k not in emb}
  if not emb:
    raise ValueError("the probe tail has no conv kernels or BatchNorm scales to embed")
  return emb, rest


def layer_names(emb: dict) -> list[str]:
  return ["/".join(k) for k in sorted(emb)]


def filterwise(flat: dict) -> np.ndarray:
  """``{path: array [..., C_out]}`` -> ``[sum C_out]``: mean over all axes but the last, in sorted path order."""
  return np.concatenate([np.asarray(flat[k]).reshape(-1, np.shape(flat[k])[-1]).mean(0) for k in sorted(flat)])


def filter_counts(emb: dict) -> list[int]:
  return [int(np.shape(emb[k])[-1]) for k in sorted(emb)]


# ----------------------------------------------------------------------------------------------- head fitting


def _pad_rows(n: int) -> int:
  """Bucketed row count (powers of two from 64) so a handful of shapes cover every task."""
  return max(64, 1 << int(np.ceil(np.log2(max(n, 1)))))


@functools.partial(jax.jit, static_argnames=("batch_size", "learning_rate", "weight_decay"))
def _fit_head(key, feats, labels, weights, class_mask, num_steps, *, batch_size, learning_rate, weight_decay):
  d, kp = feats.shape[1], class_mask.shape[0]
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))  # torch Adam + L2
  head = {"kernel": jnp.zeros((d, kp), jnp.float32), "bias": jnp.zeros((kp,), jnp.float32)}
  logw = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)

  def loss_fn(h, x, y):
    logits = x @ h["kernel"] + h["bias"] + jnp.where(class_mask > 0, 0.0, NEG)
    return jnp.mean(losses.cross_entropy(logits, y))

  def body(t, carry):
    h, opt = carry
    idx = jax.random.categorical(jax.random.fold_in(key, t), logw, shape=(batch_size,))  # class-balanced
    g = jax.grad(loss_fn)(h, feats[idx], labels[idx])
    upd, opt = tx.update(g, opt, h)
    return optax.apply_updates(h, upd), opt

  head, _ = lax.fori_loop(0, num_steps, body, (head, tx.init(head)))
  return head


def fit_head(key, feats: np.ndarray, labels: np.ndarray, num_classes_pad: int, cfg: HeadConfig = HeadConfig()
             ) -> dict[str, jax.Array]:
  """Linear softmax head ``{'kernel' [D,Kp], 'bias' [Kp]}`` on frozen features ``[N,D]``, labels ``[N]``.

  Class-balanced sampling with replacement (weight 1/count(class)); ``epochs * ceil(N/batch)`` Adam steps."""
  n = len(feats)
  num_classes = int(labels.max()) + 1
  if num_classes > num_classes_pad:
    raise ValueError(f"task has {num_classes} classes > num_classes_pad={num_classes_pad}")
  counts = np.bincount(labels, minlength=num_classes_pad)
  rows = _pad_rows(n)
  f = np.zeros((rows, feats.shape[1]), np.float32)
  f[:n] = feats
  y = np.zeros((rows,), np.int32)
  y[:n] = labels
  w = np.zeros((rows,), np.float32)
  w[:n] = 1.0 / counts[labels]
  num_steps = max(cfg.epochs * -(-n // cfg.batch_size), cfg.min_steps)
  return _fit_head(key, f, y, w, (counts > 0).astype(np.float32), np.int32(num_steps), batch_size=cfg.batch_size,
                   learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)


@jax.jit
def _predict(head, feats, class_mask):
  return jnp.argmax(feats @ head["kernel"] + head["bias"] + jnp.where(class_mask > 0, 0.0, NEG), -1)


def head_error(head, feats: np.ndarray, labels: np.ndarray, num_classes_pad: int) -> float:
  """Top-1 error of a fitted head on features ``[N,D]`` (the task's test error on the probe)."""
  rows = _pad_rows(len(feats))
  f = np.zeros((rows, feats.shape[1]), np.float32)
  f[:len(feats)] = feats
  mask = np.zeros((num_classes_pad,), np.float32)
  mask[:int(labels.max()) + 1] = 1
  pred = np.asarray(_predict(head, f, mask))[:len(feats)]
  return float(np.mean(pred != labels))


# ------------------------------------------------------------------------------------------- Fisher estimators


def _batches(n: int, batch_size: int, key_seed: int):
  """Index batches covering a permutation of range(n); the last one wraps around (mask 0 on the repeats)."""
  perm = np.random.default_rng(key_seed).permutation(n)
  nb = -(-n // batch_size)
  full = np.concatenate([perm, perm[:nb * batch_size - n]]) if nb * batch_size > n else perm
  for b in range(nb):
    idx = full[b * batch_size:(b + 1) * batch_size]
    mask = (np.arange(b * batch_size, (b + 1) * batch_size) < n).astype(np.float32)
    yield idx, mask


def _make_logits_fn(apply_tail: Callable):
  def logits_fn(emb, rest, batch_stats, head, class_mask, x):
    params = flax.traverse_util.unflatten_dict({**emb, **rest})
    pooled = apply_tail({"params": params, "batch_stats": batch_stats}, x)
    return pooled @ head["kernel"] + head["bias"] + jnp.where(class_mask > 0, 0.0, NEG)
  return logits_fn


def _varying(tree):
  """Marks replicated values as device-varying, so a gradient w.r.t. them stays local to the shard (under
  shard_map a gradient w.r.t. a replicated input is otherwise summed over ``data`` implicitly)."""
  return jax.tree.map(lambda a: lax.pcast(a, steps.DATA_AXIS, to="varying"), tree)


def _mc_step(state, batch, *, logits_fn, estimator, global_batch):
  """One batch of the Monte Carlo FIM on this device's shard; ``psum`` of the statistics over ``data``."""
  p = state["probe"]
  emb = _varying(p["emb"])
  keys = jax.vmap(lambda i: jax.random.fold_in(state["key"], i))(batch["index"])

  def ce(e, x, k):  # x [b,...]; labels sampled from the model's own predictive distribution
    logits = logits_fn(e, p["rest"], p["batch_stats"], p["head"], p["class_mask"], x)
    y = jax.vmap(jax.random.categorical)(k, lax.stop_gradient(logits))
    return losses.cross_entropy(logits, y)

  if estimator == "per_example":
    def one(x, k):
      return jax.grad(lambda e: ce(e, x[None], k[None])[0])(emb)
    g = jax.vmap(one)(batch["x"], keys)
    sq = jax.tree.map(lambda a: jnp.einsum("b...,b->...", a * a, batch["mask"]), g)
    sq = lax.psum(sq, steps.DATA_AXIS)
    count = lax.psum(jnp.sum(batch["mask"]), steps.DATA_AXIS)
  else:  # reference: square of the gradient of the mean loss over the global batch
    g = jax.grad(lambda e: jnp.sum(ce(e, batch["x"], keys)) / global_batch)(emb)
    g = lax.psum(g, steps.DATA_AXIS)
    sq = jax.tree.map(lambda a: a * a, g)
    count = jnp.float32(1.0)
  acc = jax.tree.map(jnp.add, state["acc"], sq)
  return {**state, "acc": acc, "count": state["count"] + count}, {}


def _box_sumsq(mod: nn.Conv, x):
  """``conv(x², 1)`` per output channel: Σ over the receptive field and the input channels of the group."""
  g = mod.feature_group_count
  b, h, w, c = x.shape
  x2 = jnp.sum((x * x).reshape(b, h, w, g, c // g), -1)
  ks = tuple(mod.kernel_size)
  strides = (mod.strides,) * 2 if isinstance(mod.strides, int) else tuple(mod.strides or (1, 1))
  dil = (mod.kernel_dilation,) * 2 if isinstance(mod.kernel_dilation, int) else tuple(mod.kernel_dilation or (1, 1))
  pad = mod.padding if isinstance(mod.padding, str) else [tuple(p) for p in mod.padding]
  s = lax.conv_general_dilated(x2, jnp.ones(ks + (1, g), x.dtype), strides, pad, rhs_dilation=dil,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g)
  return jnp.repeat(s, mod.features // g, axis=-1)


def _variational_logits(apply_tail, logvar, key, emb, rest, batch_stats, head, class_mask, x):
  """Logits with local-reparameterisation noise on every conv / BN output that has a log-variance."""
  order = {k[:-1]: i for i, k in enumerate(sorted(logvar))}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    path = tuple(mod.path)
    if context.method_name != "__call__" or path not in order:
      return next_fun(*args, **kwargs)
    x_in = args[0]
    y = next_fun(*args, **kwargs)
    k = jax.random.fold_in(key, order[path])
    if isinstance(mod, nn.Conv):
      var = jnp.exp(logvar[path + ("kernel",)]) * _box_sumsq(mod, x_in)
    else:  # BatchNorm in inference mode: y = γ x̂ + β, noise on γ
      mean = mod.get_variable("batch_stats", "mean")
      v = mod.get_variable("batch_stats", "var")
      xhat = (x_in - mean) * lax.rsqrt(v + mod.epsilon)
      var = jnp.exp(logvar[path + ("scale",)]) * xhat * xhat
    return y + jnp.sqrt(var + 1e-20) * jax.random.normal(k, y.shape, y.dtype)

  with nn.intercept_methods(interceptor):
    params = flax.traverse_util.unflatten_dict({**emb, **rest})
    pooled = apply_tail({"params": params, "batch_stats": batch_stats}, x)
  return pooled @ head["kernel"] + head["bias"] + jnp.where(class_mask > 0, 0.0, NEG)


def _kl(emb, logvar, loglambda2):
  """KL(N(w, σ²) || N(0, λ²)) summed over all weights; σ² shared by the entries of a filter."""
  total = 0.0
  for k, w in emb.items():
    m = w.size // w.shape[-1]
    s2, l2 = jnp.exp(logvar[k]), jnp.exp(loglambda2[k])
    total = total + 0.5 * (jnp.sum(m * (s2 / l2 - 1.0 - logvar[k] + loglambda2[k])) + jnp.sum(w * w) / l2)
  return total


def _var_step(state, batch, *, apply_tail, tx, beta, global_batch):
  """One Adam step on (log-variances, log prior variances): CE on the true labels + β·KL; weights frozen."""
  del global_batch
  p = state["probe"]
  key = jax.random.fold_in(jax.random.fold_in(state["key"], state["step"]), lax.axis_index(steps.DATA_AXIS))
  count = lax.psum(jnp.sum(batch["mask"]), steps.DATA_AXIS)

  def ce_fn(vp):  # this shard's share of the global-batch mean CE
    logits = _variational_logits(apply_tail, vp["logvar"], key, p["emb"], p["rest"], p["batch_stats"],
                                 p["head"], p["class_mask"], batch["x"])
    return jnp.sum(losses.cross_entropy(logits, batch["y"]) * batch["mask"]) / count

  ce, g_ce = jax.value_and_grad(ce_fn)(_varying(state["vp"]))
  g_ce, ce = lax.psum((g_ce, ce), steps.DATA_AXIS)
  kl, g_kl = jax.value_and_grad(lambda vp: _kl(p["emb"], vp["logvar"], vp["loglambda2"]))(state["vp"])
  g = jax.tree.map(lambda a, b: a + beta * b, g_ce, g_kl)
  upd, opt = tx.update(g, state["opt"], state["vp"])
  return {**state, "vp": optax.apply_updates(state["vp"], upd), "opt": opt, "step": state["step"] + 1}, {
      "loss": ce + beta * kl, "ce": ce}


class FisherEmbedder:
  """Embeds tasks with one probe: ``embed(key, inputs [N,h,w,c], labels [N], pooled [N,D]) -> Embedding``.

  ``apply_tail(tail_vars, x) -> pooled`` is the probe after ``start_stage`` (``probe.make_tail_apply``); the jitted
  steps are built once here and reused for every task (no retracing across tasks)."""

  def __init__(self, apply_tail: Callable, tail_variables: dict, *, num_classes_pad: int,
               fisher: FisherConfig = FisherConfig(), head: HeadConfig = HeadConfig(), mesh=None):
    fisher.validate()
    self.apply_tail, self.fisher, self.head_cfg = apply_tail, fisher, head
    self.num_classes_pad = num_classes_pad
    self.mesh = steps.make_mesh() if mesh is None else mesh
    self.emb, self.rest = split_params(tail_variables["params"])
    self.batch_stats = tail_variables.get("batch_stats", {})
    self.layers = layer_names(self.emb)
    self.counts = filter_counts(self.emb)
    self.dim = int(sum(self.counts))
    logits_fn = _make_logits_fn(apply_tail)
    self._mc = steps.parallelize(
        functools.partial(_mc_step, logits_fn=logits_fn, estimator=fisher.estimator,
                          global_batch=fisher.batch_size), self.mesh, donate_state=False)
    self._tx = optax.adam(fisher.learning_rate)
    self._var = steps.parallelize(
        functools.partial(_var_step, apply_tail=apply_tail, tx=self._tx, beta=fisher.beta,
                          global_batch=fisher.batch_size), self.mesh, donate_state=False)

  def _probe_state(self, head, num_classes):
    mask = np.zeros((self.num_classes_pad,), np.float32)
    mask[:num_classes] = 1
    return {"emb": self.emb, "rest": self.rest, "batch_stats": self.batch_stats, "head": head, "class_mask": mask}

  def embed(self, key, inputs: np.ndarray, labels: np.ndarray, pooled: np.ndarray, *,
            test: tuple[np.ndarray, np.ndarray] | None = None, head: dict | None = None,
            progress: bool = False, desc: str = "fisher") -> Embedding:
    """FIM embedding of a task: ``inputs [N,h,w,c]`` cached stage inputs, ``labels [N]`` in [0, K), ``pooled
    [N,D]`` the probe's features of the same images; ``test = (pooled [M,D], labels [M])`` adds the test error
    of the fitted head (probe + linear head) to ``meta``; ``head`` (``{'kernel' [D,Kp], 'bias' [Kp]}``) skips the
    head fit. The head used is kept in ``self.last_head``."""
    labels = np.asarray(labels).astype(np.int32)
    n, cfg = len(inputs), self.fisher
    num_classes = int(labels.max()) + 1
    if len(np.unique(labels)) < 2:
      raise ValueError("a task needs at least two classes")
    if n < cfg.batch_size:
      raise ValueError(f"task has {n} samples, fewer than one Fisher batch ({cfg.batch_size})")
    if num_classes > self.num_classes_pad:
      raise ValueError(f"task has {num_classes} classes > num_classes_pad={self.num_classes_pad}")
    head_key, fisher_key = jax.random.split(key)
    if head is None:
      head = fit_head(head_key, pooled, labels, self.num_classes_pad, self.head_cfg)
    self.last_head = head
    probe_state = self._probe_state(head, num_classes)
    extra_err = {"train_error": head_error(head, pooled, labels, self.num_classes_pad)}
    if test is not None:
      extra_err["test_error"] = head_error(head, test[0], test[1], self.num_classes_pad)
    seed = int(jax.random.randint(fisher_key, (), 0, 2 ** 31 - 1))
    nb = -(-n // cfg.batch_size)
    bar = metrics_lib.progress(cfg.epochs * nb, desc=desc, disable=None if progress else True)
    rep = steps.replicated(self.mesh)  # inputs placed as the step's outputs are: one trace for every call
    if cfg.method == "montecarlo":
      state = jax.device_put({"probe": probe_state, "acc": jax.tree.map(jnp.zeros_like, self.emb),
                              "count": jnp.float32(0), "key": fisher_key}, rep)
      for epoch in range(cfg.epochs):
        state["key"] = jax.device_put(jax.random.fold_in(fisher_key, epoch), rep)
        for idx, mask in _batches(n, cfg.batch_size, seed + epoch):
          batch = {"x": inputs[idx], "index": idx.astype(np.int32), "mask": mask}
          state, _ = self._mc(state, steps.global_batch(batch, self.mesh))
          bar.update(1)
      acc, count = jax.device_get((state["acc"], state["count"]))
      hessian = filterwise({k: v / count for k, v in acc.items()})
      scale = np.ones_like(hessian)
      extra = {"estimator": cfg.estimator}
    else:
      vp = {"logvar": {k: jnp.full((v.shape[-1],), cfg.init_logvar, jnp.float32) for k, v in self.emb.items()},
            "loglambda2": {k: jnp.log(jnp.mean(jnp.square(v)) + 1e-12) for k, v in self.emb.items()}}
      state = jax.device_put({"probe": probe_state, "vp": vp, "opt": self._tx.init(vp), "key": fisher_key,
                              "step": jnp.int32(0)}, rep)
      loss = None
      for epoch in range(cfg.epochs):
        for idx, mask in _batches(n, cfg.batch_size, seed + epoch):
          batch = {"x": inputs[idx], "y": labels[idx], "mask": mask}
          state, m = self._var(state, steps.global_batch(batch, self.mesh))
          bar.update(1)
          loss = m
      vp = jax.device_get(state["vp"])
      hessian = np.concatenate([np.exp(-vp["logvar"][k]) for k in sorted(vp["logvar"])])
      scale = np.concatenate([np.full(self.emb[k].shape[-1], np.exp(-vp["loglambda2"][k]))
                              for k in sorted(vp["logvar"])])
      extra = {"final_ce": float(loss["ce"]) if loss else None}
    bar.close()
    if not np.all(np.isfinite(hessian)):
      raise FloatingPointError("non-finite Fisher embedding; check the probe and the head fit")
    meta = {"method": cfg.method, "num_samples": int(n), "num_classes": num_classes, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, **extra, **extra_err}
    return Embedding(hessian=hessian.astype(np.float64), scale=scale.astype(np.float64), meta=meta)
