"""Graph matching on the one training loop: ``GraphMatchingTask`` (GLMNet, Jiang et al. 2019 §4; seed 001 Q6).

Loss per pair, on the doubly-stochastic ``S`` (``log S`` from the model) and the ground truth ``perm``:

* ``permutation_cross_entropy`` (PCA-GM's permutation loss, GLMNet §4): binary cross-entropy between ``S`` and the
  0/1 ground-truth matrix ``X`` (``X[i, perm[i]] = 1``) over the entries of valid pairs that touch an inlier (row
  ``i`` an inlier of graph 1 or column ``j`` an inlier of graph 2; the outlier-outlier block is unsupervised),
  summed and divided by the pair's number of inliers.
* ``constraint_loss``, the constraint-regularised term for one-to-one matching (GLMNet §4; written from its
  description): a discrete matching never has two entries in one row or one column, ``x_ij x_ik = 0`` (j != k) and
  ``x_ij x_kj = 0`` (i != k); the relaxed ``S`` is penalised by their sum,
  ``sum_i [(sum_j S_ij)^2 - sum_j S_ij^2] + sum_j [(sum_i S_ij)^2 - sum_i S_ij^2]``, divided by ``n1 + n2`` (valid
  nodes). It is 0 exactly for (partial) permutation matrices and ``1 - 1/n`` for the uniform ``n x n`` matrix.

Training loss = mean over pairs of ``CE + constraint_weight * constraint`` (0 = the ablation without it).
Evaluation: ``matching_accuracy`` = fraction of graph-1 inliers matched to their true partner by the Hungarian
algorithm on ``-S`` over the valid block (``research.classical.assignment.masked_linear_sum_assignment``), pooled
over the eval set; ``sinkhorn_accuracy`` = the same with the row-wise argmax of ``S``; ``ce``, ``constraint``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.classical.assignment import masked_linear_sum_assignment
from research.train.task import Task


def _check(log_s: jax.Array, mask1: jax.Array, mask2: jax.Array) -> None:
  if log_s.ndim != 3 or mask1.shape != log_s.shape[:2] or mask2.shape != (log_s.shape[0], log_s.shape[2]):
    raise ValueError(f"log_s must be [B, n1, n2] with mask1 [B, n1] and mask2 [B, n2]; got {log_s.shape}, "
                     f"{mask1.shape}, {mask2.shape}. Fix: add the batch axis / pass both graphs' node masks")


def ground_truth_matrix(perm: jax.Array, n2: int) -> jax.Array:
  """perm: [B, n1] int (index in graph 2, -1 = none) -> X [B, n1, n2] float32 0/1."""
  return (perm[..., :, None] == jnp.arange(n2)).astype(jnp.float32) * (perm[..., :, None] >= 0)


def permutation_cross_entropy(log_s: jax.Array, perm: jax.Array, mask1: jax.Array, mask2: jax.Array) -> jax.Array:
  """Per-pair permutation loss (module docstring). log_s: [B, n1, n2]; perm: [B, n1]; masks [B, n1], [B, n2]
  -> [B] (sum of entry BCEs / number of inliers; 0 for a pair without inliers)."""
  _check(log_s, mask1, mask2)
  x = ground_truth_matrix(perm, log_s.shape[-1])
  inl1 = (perm >= 0) & (mask1 > 0)
  inl2 = x.sum(-2) > 0
  sup = (mask1[..., :, None] > 0) & (mask2[..., None, :] > 0) & (inl1[..., :, None] | inl2[..., None, :])
  log_s = jnp.minimum(log_s, 0.0)
  log_1ms = jnp.log1p(-jnp.minimum(jnp.exp(log_s), 1.0 - 1e-6))
  bce = -(x * jnp.maximum(log_s, -100.0) + (1.0 - x) * log_1ms)
  return jnp.sum(jnp.where(sup, bce, 0.0), (-2, -1)) / jnp.maximum(inl1.sum(-1), 1)


def constraint_loss(s: jax.Array, mask1: jax.Array, mask2: jax.Array) -> jax.Array:
  """One-to-one constraint term (module docstring). s: [B, n1, n2] (probabilities) -> [B]."""
  _check(s, mask1, mask2)
  s = jnp.where((mask1[..., :, None] > 0) & (mask2[..., None, :] > 0), s, 0.0)
  rows = jnp.sum(s.sum(-1) ** 2 - (s ** 2).sum(-1), -1)
  cols = jnp.sum(s.sum(-2) ** 2 - (s ** 2).sum(-2), -1)
  return (rows + cols) / jnp.maximum((mask1 > 0).sum(-1) + (mask2 > 0).sum(-1), 1)


def hungarian_matching(s: jax.Array, mask1: jax.Array, mask2: jax.Array) -> jax.Array:
  """Maximum-total-``S`` one-to-one matching on the valid block. s: [B, n1, n2] -> col_for_row [B, n1] int32
  (-1 for padding / unmatched rows). Jittable."""
  _check(s, mask1, mask2)
  return jax.vmap(lambda c, r, k: masked_linear_sum_assignment(c, r, k)[0])(-s, mask1 > 0, mask2 > 0)


@dataclasses.dataclass(eq=False)
class GraphMatchingTask(Task):
  """GLMNet (or any module mapping the keypoint batch to log S [B, n1, n2]) trained with the permutation loss +
  ``constraint_weight`` x the one-to-one constraint term, Adam with optional gradient clipping."""
  model: nn.Module
  learning_rate: float = 1e-3
  constraint_weight: float = 1.0
  grad_clip: float = 1.0  # global-norm clipping (0 = none)

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
    if self.constraint_weight < 0:
      raise ValueError(f"--constraint_weight must be >= 0 (0 = ablation without the term), got "
                       f"{self.constraint_weight}")
    if self.grad_clip < 0:
      raise ValueError(f"--grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}")

  def init(self, rng, batch):
    dummy = {k: jnp.zeros((1,) + tuple(v.shape[1:]), v.dtype) for k, v in batch.items() if k != "valid"}
    return self.model.init(rng, dummy, train=False)["params"], {}

  def optimizer(self):
    tx = optax.adam(self.learning_rate)
    return optax.chain(optax.clip_by_global_norm(self.grad_clip), tx) if self.grad_clip else tx

  def _terms(self, params, batch):
    log_s = self.model.apply({"params": params}, batch, train=False)
    m1, m2 = batch["mask1"], batch["mask2"]
    ce = permutation_cross_entropy(log_s, batch["perm"], m1, m2)
    con = constraint_loss(jnp.exp(log_s), m1, m2)
    return log_s, ce, con

  def loss(self, params, model_state, batch, rng, *, train):
    log_s, ce, con = self._terms(params, batch)
    correct, n = _argmax_hits(log_s, batch["perm"], batch["mask1"])
    loss = jnp.mean(ce + self.constraint_weight * con)
    return loss, (model_state, {"ce": jnp.mean(ce), "constraint": jnp.mean(con),
                                "sinkhorn_accuracy": correct.sum() / jnp.maximum(n.sum(), 1)})

  def eval_step(self, state, batch):
    log_s, ce, con = self._terms(state.params, batch)
    valid = batch.get("valid", jnp.ones(log_s.shape[:1], jnp.float32))
    arg_hits, n = _argmax_hits(log_s, batch["perm"], batch["mask1"])
    col = hungarian_matching(jnp.exp(log_s), batch["mask1"], batch["mask2"])  # [B, n1], inside the eval step
    inl = (batch["perm"] >= 0) & (batch["mask1"] > 0)
    hung_hits = jnp.sum((col == batch["perm"]) & inl, axis=-1).astype(jnp.float32)
    sums = {"argmax_correct": jnp.sum(arg_hits * valid), "hungarian_correct": jnp.sum(hung_hits * valid),
            "inliers": jnp.sum(n * valid), "ce": jnp.sum(ce * valid), "constraint": jnp.sum(con * valid),
            "pairs": jnp.sum(valid)}
    return sums, {}

  def eval_metrics(self, sums, gathered):
    n, pairs = max(float(sums["inliers"]), 1.0), max(float(sums["pairs"]), 1.0)
    return {"sinkhorn_accuracy": float(sums["argmax_correct"]) / n,
            "matching_accuracy": float(sums["hungarian_correct"]) / n,
            "ce": float(sums["ce"]) / pairs, "constraint": float(sums["constraint"]) / pairs}

  def run_info(self) -> dict[str, Any]:
    return {"constraint_weight": self.constraint_weight, "model": type(self.model).__name__}


def _argmax_hits(log_s: jax.Array, perm: jax.Array, mask1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(inliers of graph 1 whose row argmax is the true partner, inliers) per pair: [B], [B] float32."""
  inl = (perm >= 0) & (mask1 > 0)
  hits = (jnp.argmax(log_s, -1) == perm) & inl
  return hits.sum(-1).astype(jnp.float32), inl.sum(-1).astype(jnp.float32)

