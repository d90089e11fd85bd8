"""Doctor2Vec (Biswal et al., "Doctor2Vec: Dynamic Doctor Representation Learning for Clinical Trial Recruitment",
AAAI 2020) against a static doctor vector and a linear model: ``run(Doctor2VecConfig, workdir) -> summary``.

Data: the offline ``patient_visits`` corpus (``research.data.doctors``; doctors with longitudinal patient visits,
trials, enrollment rates; test trials are new trials never seen in training) or a TFDS dataset with the same
features and splits prepared in ``data_dir``.

Methods (every deep run trains through ``research.train.loop.train`` on random (doctor, training trial) pairs):

* ``doctor2vec``: the memory network (``research.models.sequence.doctor2vec``, readout ``memory``): patients are
  memory slots, the trial embedding is the query, attention gives the trial-specific doctor vector (§3);
* ``mean_patients``: the same encoders, the doctor vector = the mean of its patient vectors (no attention, the same
  for every trial);
* ``ridge``: ridge regression on count features (``research.train.doctor2vec.count_features``), closed form,
  numpy; deterministic (the same for every seed).

Measured on all (doctor, test trial) pairs: MAE, RMSE, R^2; query by trial (§4): the doctors of each test trial
ranked by the predicted rate, precision@k and NDCG@k against the true enrollment ranking.

Claims (``claims`` in the summary, thresholds fixed in advance): ``doctor2vec_beats_<baseline>`` for
``mean_patients`` and ``ridge``: Doctor2Vec's mean test MAE is lower AND its mean R^2 higher than the baseline's.

Writes ``workdir/<method>_seed<s>/`` (loop outputs, ``results.json``), ``summary.json`` and ``summary.md``; a
finished run (same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from research import fileio
from research.configs import setting
from research.data import doctors as doctors_data
from research.methods import reporting
from research.models.sequence.doctor2vec import Doctor2Vec
from research.train import doctor2vec as d2v
from research.train import loop
from research.train import task as task_lib

METHODS = ("doctor2vec", "mean_patients", "ridge")
_READOUT = {"doctor2vec": "memory", "mean_patients": "mean"}
_POSITIVE = ("dim", "hidden", "steps", "batch_size", "learning_rate", "huber_delta", "top_k", "eval_batch_size")
_METRICS = ("mae", "rmse", "r2", "precision_at_k", "ndcg_at_k", "train_seconds")


@dataclasses.dataclass(frozen=True)
class Doctor2VecConfig:
  """One Doctor2Vec experiment (``python -m experiments.doctor2vec``); each field is one flag."""
  dataset: str = setting("patient_visits", "TFDS dataset: patient_visits[/small] (offline, built on first use) or "
                         "one with its features and splits (doctors, train, test) prepared in --data_dir.")
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  methods: tuple[str, ...] = setting(("doctor2vec", "mean_patients", "ridge"), "Methods: doctor2vec (memory "
                                     "network), mean_patients (doctor = mean of patient vectors), ridge (linear).",
                                     choices=METHODS)
  seeds: tuple[int, ...] = setting((0, 1), "Seeds; every deep method is trained once per seed.")
  dim: int = setting(32, "Code / patient / trial / memory embedding size.")
  hidden: int = setting(64, "Hidden units of the trial encoder and of the regression head.")
  steps: int = setting(10000, "Training steps of each deep run.")
  batch_size: int = setting(64, "Global batch of (doctor, trial) pairs.")
  learning_rate: float = setting(3e-3, "Adam learning rate, decayed to 0 over --steps (cosine).")
  loss: str = setting("mse", "Regression loss on the enrollment rate: mse or huber.", choices=d2v.LOSSES)
  huber_delta: float = setting(1.0, "Huber loss threshold (with --loss=huber).")
  ridge_l2: float = setting(1.0, "L2 penalty of the ridge baseline (> 0).")
  top_k: int = setting(10, "k of precision@k and NDCG@k when ranking the doctors of a test trial.")
  eval_batch_size: int = setting(1000, "Global eval batch.")
  checkpoint_every: int = setting(0, "Checkpoint every N steps (0 = never).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if self.ridge_l2 <= 0:
      raise ValueError(f"--ridge_l2 must be positive, got {self.ridge_l2}")
    if self.checkpoint_every < 0:
      raise ValueError(f"--checkpoint_every must be >= 0, got {self.checkpoint_every}")
    if not self.methods or len(set(self.methods)) != len(self.methods):
      raise ValueError(f"--methods must list distinct methods, got {list(self.methods)}")
    bad = [m for m in self.methods if m not in METHODS]
    if bad:
      raise ValueError(f"--methods: unknown {bad}; choose from {','.join(METHODS)}")
    if self.loss not in d2v.LOSSES:
      raise ValueError(f"--loss={self.loss!r}; choose one of {d2v.LOSSES}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")


def check_devices(cfg: Doctor2VecConfig) -> None:
  n = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


def vocab_sizes(data: dict, dataset: str) -> dict[str, int]:
  """Embedding table sizes: ``num_codes``, ``num_tokens``, ``num_countries``, ``max_patients``. ``num_codes`` is the
  corpus's ``V`` for ``patient_visits[/config]`` and the largest code id + 1 otherwise (the trial-token layout of
  ``research.data.doctors``: exclusion mentions are ``V + code``, words ``>= 2V``)."""
  doc, tr, te = data["doctors"], data["train"], data["test"]
  base, _, config = dataset.partition("/")
  v = (doctors_data.num_codes(doctors_data.CONFIGS[config or "default"]) if base == doctors_data.NAME
       else int(doc["codes"].max()) + 1)
  return {"num_codes": v,
          "num_tokens": int(max(tr["tokens"].max(), te["tokens"].max())) + 1,
          "num_countries": int(max(doc["country"].max(), tr["country"].max(), te["country"].max())) + 1,
          "max_patients": int(doc["codes"].shape[1])}


def _train_one(cfg: Doctor2VecConfig, method: str, seed: int, data: dict, sizes: dict, workdir: str,
               run_config: dict) -> dict[str, Any]:
  out = os.path.join(workdir, f"{method}_seed{seed}")
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  t0 = time.time()
  if method == "ridge":
    x_tr = d2v.count_features(data["doctors"], data["train"], sizes["num_codes"])
    w, b = d2v.ridge_fit(x_tr.reshape(-1, x_tr.shape[-1]), data["train"]["enrollment"].reshape(-1), cfg.ridge_l2)
    x_te = d2v.count_features(data["doctors"], data["test"], sizes["num_codes"])
    pred = x_te @ w + b  # [T, D]
    rate = data["test"]["enrollment"]
    trial = np.repeat(np.arange(rate.shape[0]), rate.shape[1])
    results = {**{f"eval_{k}": v for k, v in d2v.regression_metrics(pred.reshape(-1), rate.reshape(-1)).items()},
               **{f"eval_{k}": v for k, v in d2v.ranking_metrics(pred.reshape(-1), rate.reshape(-1), trial,
                                                                 cfg.top_k).items()},
               "train_seconds": time.time() - t0, "num_params": int(w.size + 1)}
  else:
    model = Doctor2Vec(num_codes=sizes["num_codes"], num_tokens=sizes["num_tokens"],
                       max_patients=sizes["max_patients"], num_countries=sizes["num_countries"], dim=cfg.dim,
                       hidden=cfg.hidden, readout=_READOUT[method])
    task = d2v.EnrollmentTask(model=model, learning_rate=cfg.learning_rate, num_steps=cfg.steps,
                              loss_name=cfg.loss, huber_delta=cfg.huber_delta, top_k=cfg.top_k)
    batches = d2v.train_batches(data["doctors"], data["train"], global_batch_size=cfg.batch_size, seed=seed)
    lcfg = loop.LoopConfig(num_steps=cfg.steps, seed=seed, eval_every=0, checkpoint_every=cfg.checkpoint_every,
                           keep_checkpoints=1, log_every=max(1, cfg.steps // 20), progress_bar=False,
                           description=f"{method}_seed{seed}")
    _, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                            eval_data=d2v.eval_batches(data["doctors"], data["test"],
                                                       global_batch_size=cfg.eval_batch_size),
                            run_config=run_config)
  results.update({m: results.get(f"eval_{m}") for m in _METRICS if m != "train_seconds"})
  results.update({"method": method, "seed": seed})
  if fileio.main_process():
    os.makedirs(out, exist_ok=True)
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


def run(cfg: Doctor2VecConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every method x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = doctors_data.load(cfg.dataset, cfg.data_dir)
  n_doc, n_train, n_test = len(data["doctors"]["country"]), len(data["train"]["phase"]), len(data["test"]["phase"])
  if n_doc * n_train < cfg.batch_size:
    raise ValueError(f"{n_doc} doctors x {n_train} training trials are fewer pairs than one batch "
                     f"(--batch_size={cfg.batch_size})")
  sizes = vocab_sizes(data, cfg.dataset)
  os.makedirs(workdir, exist_ok=True)
  base = dataclasses.asdict(cfg)
  runs: dict[str, list[dict]] = {}
  for method in cfg.methods:
    for seed in cfg.seeds:
      rc = {**base, "method": method, "seed": seed, **sizes}
      runs.setdefault(method, []).append(_train_one(cfg, method, seed, data, sizes, workdir, rc))
  table = {m: {k: reporting.mean_std([r.get(k) for r in rs]) for k in _METRICS} for m, rs in runs.items()}
  claims: dict[str, Any] = {}
  if "doctor2vec" in table:
    for b in (m for m in cfg.methods if m != "doctor2vec"):
      d, o = table["doctor2vec"], table[b]
      claims[f"doctor2vec_beats_{b}"] = bool(d["mae"][0] < o["mae"][0] and d["r2"][0] > o["r2"][0])
      claims[f"doctor2vec_mae_minus_{b}"] = round(d["mae"][0] - o["mae"][0], 4)
      claims[f"doctor2vec_r2_minus_{b}"] = round(d["r2"][0] - o["r2"][0], 4)
  test_rates = data["test"]["enrollment"].reshape(-1)
  summary = {"config": base, "dataset": cfg.dataset, "num_doctors": n_doc, "num_train_trials": n_train,
             "num_test_trials": n_test, **sizes,
             "predict_train_mean_mae": float(np.mean(np.abs(test_rates - data["train"]["enrollment"].mean()))),
             "table": {m: {k: list(v) for k, v in row.items()} for m, row in table.items()},
             "runs": {m: [{k: r.get(k) for k in _METRICS} for r in rs] for m, rs in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)

  def cell(v, fmt):
    return "-" if v[0] is None else f"{v[0]:{fmt}} ± {v[1]:{fmt}}"
  header = ("method", "MAE", "RMSE", "R^2", f"precision@{cfg.top_k}", f"NDCG@{cfg.top_k}", "train s")
  rows = [(m, cell(r["mae"], ".4f"), cell(r["rmse"], ".4f"), cell(r["r2"], ".4f"), cell(r["precision_at_k"], ".3f"),
           cell(r["ndcg_at_k"], ".3f"), cell(r["train_seconds"], ".1f")) for m, r in table.items()]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# Doctor2Vec on {cfg.dataset}, seeds {','.join(map(str, cfg.seeds))}",
      f"{n_doc} doctors, {n_train} train / {n_test} test (unseen) trials; all {n_doc * n_test} (doctor, test "
      f"trial) pairs evaluated. Deep runs: dim {cfg.dim}, hidden {cfg.hidden}, {cfg.steps} steps of batch "
      f"{cfg.batch_size}, Adam {cfg.learning_rate:g} (cosine decay), loss {cfg.loss}; ridge l2 {cfg.ridge_l2:g}. "
      f"Predicting the training mean: MAE {summary['predict_train_mean_mae']:.4f}. Query by trial: doctors of each "
      f"test trial ranked by predicted rate vs the true ranking. Mean ± std over seeds.",
      reporting.markdown_table(header, rows),
      "claims: " + (json.dumps(claims) if claims else "none checked (needs doctor2vec and a baseline)"))
  return summary
