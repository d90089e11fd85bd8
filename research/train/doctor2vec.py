"""Doctor2Vec (Biswal et al., AAAI 2020) on the ONE loop: enrollment-rate regression of (doctor, trial) pairs, the
query-by-trial ranking metrics, and the non-deep baseline (ridge regression on count features, numpy).

Data (``research.data.doctors.load``): ``doctors`` (``codes`` [D, P, V, C], ``country`` [D]) and trials (``tokens``
[T, L], ``phase``, ``country`` [T], ``enrollment`` [T, D]). Pairs are index arrays; a batch gathers
``{'codes' [B, P, V, C], 'tokens' [B, L], 'phase', 'trial_country', 'doctor_country' [B], 'rate' float32 [B],
'doctor', 'trial' int32 [B]}`` (:func:`pair_batch`).

:class:`EnrollmentTask`: Adam (constant rate, or cosine decay to 0 over ``num_steps``), loss ``mse`` or
``huber`` on the rate; eval: ``mae``, ``rmse``, ``r2`` over all
(doctor, test trial) pairs and, ranking the doctors of each test trial by the predicted rate ("query by trial",
§4), ``precision_at_k`` (overlap of the predicted and true top-k doctors, / k) and ``ndcg_at_k`` (gains = true
rates) averaged over trials (:func:`ranking_metrics`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.memory import ArrayBatches, padded_eval_rows
from research.train import task as task_lib

LOSSES = ("mse", "huber")
_INPUTS = ("codes", "tokens", "phase", "trial_country", "doctor_country")


# ------------------------------------------------------------------------------------------------ data


def pair_batch(doctors: dict[str, np.ndarray], trials: dict[str, np.ndarray], doctor: np.ndarray,
               trial: np.ndarray) -> dict[str, np.ndarray]:
  """The model inputs and target of the pairs ``(doctor[j], trial[j])`` (module docstring)."""
  doctor, trial = np.asarray(doctor, np.int32), np.asarray(trial, np.int32)
  return {"codes": doctors["codes"][doctor], "tokens": trials["tokens"][trial],
          "phase": trials["phase"][trial].astype(np.int32), "trial_country": trials["country"][trial].astype(np.int32),
          "doctor_country": doctors["country"][doctor].astype(np.int32),
          "rate": trials["enrollment"][trial, doctor].astype(np.float32), "doctor": doctor, "trial": trial}


def all_pairs(num_doctors: int, num_trials: int) -> tuple[np.ndarray, np.ndarray]:
  """``(doctor, trial)`` int32 [D * T]: every pair, trial-major."""
  t, d = np.meshgrid(np.arange(num_trials), np.arange(num_doctors), indexing="ij")
  return d.reshape(-1).astype(np.int32), t.reshape(-1).astype(np.int32)


def train_batches(doctors: dict, trials: dict, *, global_batch_size: int, seed: int) -> ArrayBatches:
  """Seeded random (doctor, trial) pairs of the training trials (``ArrayBatches``: checkpointable)."""
  d, t = all_pairs(len(doctors["country"]), len(trials["phase"]))
  return ArrayBatches({"doctor": d, "trial": t}, global_batch_size=global_batch_size, seed=seed,
                      transform=lambda b, rng: pair_batch(doctors, trials, b["doctor"], b["trial"]))


def eval_batches(doctors: dict, trials: dict, *, global_batch_size: int):
  """A callable returning one pass over every (doctor, trial) pair, zero-padded global batches with ``valid``."""
  d, t = all_pairs(len(doctors["country"]), len(trials["phase"]))

  def one_pass():
    for rows, valid in padded_eval_rows(len(d), global_batch_size):
      batch = pair_batch(doctors, trials, d[rows], t[rows])
      batch["valid"] = valid
      yield batch

  return one_pass


# ------------------------------------------------------------------------------------------------ metrics


def regression_metrics(pred: np.ndarray, rate: np.ndarray) -> dict[str, float]:
  """``mae``, ``rmse`` and ``r2 = 1 - SSE / sum (y - mean y)^2`` (float64)."""
  pred, rate = np.asarray(pred, np.float64), np.asarray(rate, np.float64)
  err = pred - rate
  sst = float(np.sum((rate - rate.mean()) ** 2))
  return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
          "r2": 1.0 - float(np.sum(err ** 2)) / max(sst, 1e-12)}


def ranking_metrics(pred: np.ndarray, rate: np.ndarray, trial: np.ndarray, k: int) -> dict[str, float]:
  """Query by trial: for each trial, the doctors ranked by ``pred`` (ties by doctor order) against the true
  ``rate``; ``precision_at_k`` = |predicted top-k & true top-k| / k, ``ndcg_at_k`` = DCG@k / ideal DCG@k with
  gains = true rates and discounts ``1 / log2(rank + 1)``; means over the trials (``k`` capped at the number of
  doctors; a trial whose true rates are all 0 has NDCG 1 by convention)."""
  pred, rate, trial = np.asarray(pred, np.float64), np.asarray(rate, np.float64), np.asarray(trial)
  prec, ndcg = [], []
  for t in np.unique(trial):
    sel = trial == t
    p, y = pred[sel], rate[sel]
    kk = min(k, len(y))
    top_p = np.argsort(-p, kind="stable")[:kk]
    top_y = np.argsort(-y, kind="stable")[:kk]
    prec.append(len(set(top_p.tolist()) & set(top_y.tolist())) / kk)
    disc = 1.0 / np.log2(np.arange(kk) + 2.0)
    ideal = float(np.sum(y[top_y] * disc))
    ndcg.append(float(np.sum(y[top_p] * disc)) / ideal if ideal > 0 else 1.0)
  return {"precision_at_k": float(np.mean(prec)), "ndcg_at_k": float(np.mean(ndcg))}


# ------------------------------------------------------------------------------------------------ task


@dataclasses.dataclass(eq=False)
class EnrollmentTask(task_lib.Task):
  """A ``Doctor2Vec`` model (any readout) regressing the enrollment rate (module docstring)."""
  model: nn.Module
  learning_rate: float = 2e-3
  num_steps: int = 0  # > 0: cosine decay of the learning rate to 0 over num_steps; 0: constant
  loss_name: str = "mse"
  huber_delta: float = 1.0
  top_k: int = 10

  def __post_init__(self):
    if self.loss_name not in LOSSES:
      raise ValueError(f"--loss={self.loss_name!r}; choose one of {LOSSES}")
    if self.learning_rate <= 0:
      raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
    if self.huber_delta <= 0:
      raise ValueError(f"--huber_delta must be positive, got {self.huber_delta}")
    if self.top_k < 1:
      raise ValueError(f"--top_k must be >= 1, got {self.top_k}")

  def _apply(self, params, batch):
    return self.model.apply({"params": params}, batch["codes"], batch["tokens"], phase=batch["phase"],
                            trial_country=batch["trial_country"], doctor_country=batch["doctor_country"])

  def init(self, rng, batch):
    ex = {k: jnp.zeros((1,) + tuple(batch[k].shape[1:]), batch[k].dtype) for k in _INPUTS}
    variables = self.model.init(rng, ex["codes"], ex["tokens"], phase=ex["phase"],
                                trial_country=ex["trial_country"], doctor_country=ex["doctor_country"])
    return variables["params"], {}

  def schedule(self):
    if self.num_steps > 0:
      return optax.cosine_decay_schedule(self.learning_rate, self.num_steps)
    return optax.constant_schedule(self.learning_rate)

  def optimizer(self):
    return optax.adam(self.schedule())

  def extra_metrics(self, state):
    return {"learning_rate": self.schedule()(state.step)}

  def loss(self, params, model_state, batch, rng, *, train):
    err = self._apply(params, batch) - batch["rate"]
    if self.loss_name == "mse":
      loss = jnp.mean(err ** 2)
    else:
      loss = jnp.mean(optax.huber_loss(err, delta=self.huber_delta))
    return loss, (model_state, {"mae": jnp.mean(jnp.abs(err))})

  def eval_step(self, state, batch):
    pred = self._apply(state.params, batch)
    valid = batch["valid"].astype(jnp.float32)
    sums = {"abs_err": jnp.sum(jnp.abs(pred - batch["rate"]) * valid), "count": jnp.sum(valid)}
    return sums, {"pred": pred, "rate": batch["rate"], "trial": batch["trial"], "doctor": batch["doctor"],
                  "valid": valid}

  def eval_metrics(self, sums, gathered):
    keep = np.asarray(gathered["valid"]) > 0
    pred, rate, trial = (np.asarray(gathered[k])[keep] for k in ("pred", "rate", "trial"))
    return {**regression_metrics(pred, rate), **ranking_metrics(pred, rate, trial, self.top_k),
            "count": float(sums["count"])}

  def run_info(self) -> dict[str, Any]:
    return {"task": "enrollment_regression", "model_class": type(self.model).__name__,
            "readout": getattr(self.model, "readout", None), "loss": self.loss_name}

  def predict(self, params, doctors: dict, trials: dict, *, batch_size: int = 512) -> np.ndarray:
    """Predicted rates [T, D] of every (trial, doctor) pair (one jit-compiled forward per batch, single host)."""
    d, t = all_pairs(len(doctors["country"]), len(trials["phase"]))
    fwd = jax.jit(self._apply)
    out = np.zeros(len(d), np.float32)
    for rows, valid in padded_eval_rows(len(d), batch_size):
      b = pair_batch(doctors, trials, d[rows], t[rows])
      out[rows[valid > 0]] = np.asarray(fwd(params, b))[valid > 0]
    return out.reshape(len(trials["phase"]), len(doctors["country"]))


# ------------------------------------------------------------------------------------------------ ridge baseline


def count_features(doctors: dict, trials: dict, num_codes: int) -> np.ndarray:
  """Features [T, D, F] of the linear baseline (no learning of representations):

  ``f_all`` / ``f_recent`` [D, V]: the fraction of a doctor's patients (all / the most recent half) whose record
  contains code ``k``; ``inc`` / ``exc`` [T, V]: the trial's inclusion / exclusion code mentions (tokens ``< V`` /
  ``V..2V-1``). Features: ``f_all * inc``, ``f_all * exc``, ``f_recent * inc``, ``f_recent * exc`` (4V), the phase
  one-hot times ``sum_k f_all inc`` (3), the phase one-hot (3) and ``[country_d = country_t]`` (1).
  """
  codes = doctors["codes"]
  d, p = codes.shape[:2]
  has = np.zeros((d, p, num_codes), np.float64)
  flat = codes.reshape(d, p, -1)
  di, pi, ci = np.nonzero(flat)
  has[di, pi, flat[di, pi, ci]] = 1.0
  valid = (flat != 0).any(-1)
  n = valid.sum(1)
  i = np.arange(p)[None, :]
  recent = valid & (i >= (n[:, None] - np.ceil(n[:, None] / 2)))
  f_all = np.einsum("dpv,dp->dv", has, valid) / np.maximum(n, 1)[:, None]
  f_rec = np.einsum("dpv,dp->dv", has, recent) / np.maximum(recent.sum(1), 1)[:, None]
  tok = trials["tokens"]
  inc = np.zeros((len(tok), num_codes))
  exc = np.zeros((len(tok), num_codes))
  for j, row in enumerate(tok):
    inc[j, row[(row > 0) & (row < num_codes)]] = 1.0
    e = row[(row >= num_codes) & (row < 2 * num_codes)] - num_codes
    exc[j, e] = 1.0
  phase = np.eye(3)[np.asarray(trials["phase"])]  # [T, 3]
  blocks = [f_all[None] * inc[:, None], f_all[None] * exc[:, None], f_rec[None] * inc[:, None],
            f_rec[None] * exc[:, None]]
  match = blocks[0].sum(-1, keepdims=True)  # [T, D, 1]
  t_n = len(tok)
  blocks += [match * phase[:, None, :], np.broadcast_to(phase[:, None, :], (t_n, d, 3)),
             (np.asarray(trials["country"])[:, None] == np.asarray(doctors["country"])[None, :])[..., None]
             .astype(np.float64)]
  return np.concatenate(blocks, axis=-1)


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
  """``(w, b)`` minimising ``|x w + b - y|^2 + l2 |w|^2`` (centred normal equations, float64)."""
  if l2 < 0:
    raise ValueError(f"--ridge_l2 must be >= 0, got {l2}")
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mx, my = x.mean(0), y.mean()
  xc = x - mx
  w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ (y - my))
  return w, float(my - mx @ w)


__all__ = ["EnrollmentTask", "LOSSES", "all_pairs", "count_features", "eval_batches", "pair_batch",
           "ranking_metrics", "regression_metrics", "ridge_fit", "train_batches"]
