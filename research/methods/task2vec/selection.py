"""Model-selection meta-task (Task2Vec §5) and the domain-embedding baseline.

* ``train_expert``: an expert = the probe's tail (stages >= start_stage, BatchNorm statistics adapted) + head,
  fine-tuned on a source task from the cached stage inputs (the frozen trunk is shared by all experts).
* ``transfer_error``: test error on a target task of a linear head fitted on the frozen expert's features.
* ``selection_table``: pick an expert per target by d_sym, by d_asym(source -> target) (α), compare with the
  generic probe, chance (mean over experts) and the oracle (expert with the lowest measured error); the score
  is the relative error increase over the oracle, ``(err - err_oracle) / err_oracle`` averaged over targets.
* ``domain_embedding``: mean probe features of a task's images (ignores labels), cosine distance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.methods.task2vec import distances as dist_lib
from research.methods.task2vec.fisher import Embedding, HeadConfig, fit_head, head_error
from research.data.memory import ArrayBatches
from research.train import loop, losses, optim, steps
from research.train.classify import ClassificationTask


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
  num_steps: int = 150
  batch_size: int = 64
  learning_rate: float = 0.05
  weight_decay: float = 5e-4


class ExpertTrainer:
  """Fine-tunes the probe tail + a ``num_classes_pad``-way head on cached stage inputs, on the training loop
  (one task object, so one compiled step for every expert)."""

  def __init__(self, probe_module, start_stage: int, num_classes_pad: int, cfg: ExpertConfig = ExpertConfig(),
               mesh=None):
    if cfg.batch_size % jax.device_count():
      raise ValueError(f"expert batch size {cfg.batch_size} is not divisible by the device count "
                       f"{jax.device_count()}")
    self.cfg = cfg
    self.mesh = steps.make_mesh() if mesh is None else mesh
    self.model = probe_module.clone(start_stage=start_stage, num_classes=num_classes_pad, features_only=False)
    self.feature_model = probe_module.clone(start_stage=start_stage, features_only=True)
    schedule = optim.make_schedule("cosine", cfg.learning_rate, cfg.num_steps)
    self.tx = optim.make_optimizer("nesterov", schedule, weight_decay=cfg.weight_decay)
    self._task = None
    self._num_classes = num_classes_pad
    self._features = jax.jit(lambda v, x: self.feature_model.apply(v, x, train=False)["pooled"])

  def train(self, seed: int, tail_variables: dict, inputs: np.ndarray, labels: np.ndarray,
            progress_bar=None) -> dict[str, Any]:
    """Returns the expert's ``{'params', 'batch_stats'}`` (tail + head)."""
    cfg = self.cfg
    if len(inputs) < cfg.batch_size:
      raise ValueError(f"expert source task has {len(inputs)} samples, fewer than one batch ({cfg.batch_size})")
    if self._task is None:
      self._task = ClassificationTask(model=self.model, tx=self.tx, loss_fn=losses.cross_entropy,
                                      image_shape=tuple(inputs.shape[1:]), num_classes=self._num_classes)
    x0 = jnp.zeros((1,) + inputs.shape[1:], jnp.float32)
    init = jax.jit(lambda k: self.model.init(k, x0, train=False))(jax.random.PRNGKey(seed))
    params = {**tail_variables["params"], "head": init["params"]["head"]}
    variables = (params, {"batch_stats": tail_variables.get("batch_stats", {})})
    data = ArrayBatches({"image": inputs, "label": labels}, global_batch_size=cfg.batch_size, seed=seed)

    def on_step(step, metrics):
      if progress_bar is not None:
        progress_bar.update(1)
      return False

    state, _ = loop.train(self._task, data, mesh=self.mesh, workdir=None, variables=variables, on_step=on_step,
                          config=loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, checkpoint_every=0,
                                                 log_every=cfg.num_steps, progress_bar=False))
    return {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}

  def features(self, variables: dict, inputs: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Pooled features ``[N, D]`` of the expert (BatchNorm in inference mode)."""
    v = {"params": {k: p for k, p in variables["params"].items() if k != "head"},
         "batch_stats": variables["batch_stats"]}
    out = []
    for s in range(0, len(inputs), batch_size):
      chunk = inputs[s:s + batch_size]
      pad = batch_size - len(chunk) if len(inputs) > batch_size else 0
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(self._features(v, chunk))[:batch_size - pad])
    return np.concatenate(out)


def transfer_error(key, train_feats, train_y, test_feats, test_y, num_classes_pad: int,
                   head: HeadConfig) -> float:
  """Test error of a linear head fitted on frozen features (the transfer score of a feature extractor)."""
  h = fit_head(key, train_feats, train_y, num_classes_pad, head)
  return head_error(h, test_feats, test_y, num_classes_pad)


def selection_table(errors: np.ndarray, generic: np.ndarray, source_emb: Sequence[Embedding],
                    target_emb: Sequence[Embedding], alphas: Sequence[float] = (0.15,)) -> dict[str, Any]:
  """``errors [E, T]`` (expert e on target t), ``generic [T]``; returns choices and relative error increases."""
  errors = np.asarray(errors, np.float64)
  oracle = errors.min(0)
  denom = np.maximum(oracle, 1e-3)  # a perfect oracle would make the ratio undefined

  def rel(err):
    return float(np.mean((err - oracle) / denom))

  d_sym = dist_lib.cdist(source_emb, target_emb, "cosine")
  t0 = [dist_lib.cosine(s, Embedding(s.scale, s.scale)) for s in source_emb]
  cols = np.arange(errors.shape[1])
  sym_choice = d_sym.argmin(0)
  out: dict[str, Any] = {
      "oracle_error": float(oracle.mean()),
      "relative_error_increase": {
          "task2vec_symmetric": rel(errors[sym_choice, cols]),
          "generic_probe": rel(np.asarray(generic, np.float64)),
          "chance": rel(errors.mean(0)),
          "oracle": 0.0,
      },
      "mean_error": {"task2vec_symmetric": float(errors[sym_choice, cols].mean()),
                     "generic_probe": float(np.mean(generic)), "chance": float(errors.mean()),
                     "oracle": float(oracle.mean())},
      "choices": {"symmetric": sym_choice.tolist(), "oracle": errors.argmin(0).tolist()},
  }
  sweep = {}
  for a in alphas:
    d_asym = d_sym - a * np.asarray(t0)[:, None]  # d_asym(source -> target)
    choice = d_asym.argmin(0)
    sweep[float(a)] = {"relative_error_increase": rel(errors[choice, cols]),
                       "mean_error": float(errors[choice, cols].mean()), "choices": choice.tolist()}
  out["alpha_sweep"] = sweep
  return out


def domain_embedding(pooled: np.ndarray) -> np.ndarray:
  """Domain embedding: mean probe features ``[D]`` of the task's images (labels ignored)."""
  return np.asarray(pooled, np.float64).mean(0)


def domain_distances(embs: Sequence[np.ndarray]) -> np.ndarray:
  m = np.stack(embs)
  m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-30)
  d = np.clip(1.0 - m @ m.T, 0.0, None)
  np.fill_diagonal(d, 0.0)
  return d


def top_k_taxonomic(d: np.ndarray, tax: np.ndarray, ks: Sequence[int]) -> list[float]:
  """Average taxonomic distance of each task's k nearest tasks under ``d`` (self excluded), averaged over tasks."""
  n = len(d)
  out = []
  for k in ks:
    vals = []
    for i in range(n):
      order = [j for j in np.argsort(d[i], kind="stable") if j != i][:k]
      vals.append(tax[i, order].mean())
    out.append(float(np.mean(vals)))
  return out



