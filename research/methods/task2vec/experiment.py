"""The Task2Vec experiment end to end: ``run(Task2VecConfig, workdir) -> summary`` (used by experiments.task2vec).

Stages (each timed, with a progress bar): data -> probe (trained on the source task, or loaded; reused from
``workdir/probe`` on re-run) -> cache the trunk's stage inputs once per pooled image -> embed every task (head fit
+ FIM) -> distances, Spearman vs the taxonomy, domain baseline -> experts + transfer errors (model selection) ->
files. Outputs are written to temporary names and renamed at the end, so a failed run leaves no partial results.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from typing import Any

import jax
import numpy as np
from scipy import stats

from research import data as data_lib
from research import fileio
from research.configs import setting
from research.methods.task2vec import distances as dist_lib
from research.methods.task2vec import probe as probe_lib
from research.methods.task2vec import selection as sel
from research.methods.task2vec import tasks as tasks_lib
from research.methods.task2vec.fisher import ESTIMATORS, METHODS, FisherConfig, FisherEmbedder, HeadConfig
from research.train import metrics as metrics_lib

DISTANCE_NAMES = ("cosine", "normalized_cosine", "correlation", "kl", "jsd")


@dataclasses.dataclass(frozen=True)
class Task2VecConfig:
  """All settings of a Task2Vec run; each field with a flag is one flag of ``experiments.task2vec``
  (``research.configs.setting``); the suite's flags are ``tasks.SuiteConfig``'s."""
  dataset: str = setting("shapes", "Dataset with 'label' and 'coarse_label': shapes (offline) or cifar100.")
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  # probe network
  probe: str = setting("cifar_resnet18_w16", "Probe network: cifar_resnet{18,34}_w{width} or a registry name.")
  probe_checkpoint: str | None = setting(None, "Load the probe from this orbax checkpoint instead of training it.")
  probe_label: str = setting("coarse", "Source task of the probe (train split labels).", choices=("coarse", "fine"))
  probe_steps: int = setting(250, "Probe training steps on the source task.")
  probe_batch_size: int = setting(64, "Probe training batch size.")
  probe_learning_rate: float = setting(0.1, "Probe peak learning rate (Nesterov SGD, cosine).")
  start_stage: int = setting(4, "FIM on stages >= start_stage; earlier stages are cached once (skip_layers).")
  # image pool
  train_per_class: int = setting(40, "Pooled train images per fine class.")
  test_per_class: int = setting(20, "Pooled test images per fine class.")
  max_samples: int = setting(400, "Max samples per task for the FIM (class-balanced subsample).")
  # FIM
  method: str = setting("montecarlo", "FIM estimator.", choices=METHODS)
  estimator: str = setting("per_example", "Monte Carlo: exact per-example diagonal (vmap) or the reference's "
                           "squared batch gradient.", choices=ESTIMATORS)
  fisher_epochs: int = setting(1, "Passes over a task's data for the FIM.")
  fisher_batch_size: int = setting(32, "FIM batch size (divisible by the device count).")
  beta: float = setting(1e-7, "Variational FIM: weight of the KL term.")
  variational_learning_rate: float = setting(1e-2, "Variational FIM: Adam learning rate of the log-variances.")
  # head fitting (reference: Adam 4e-4, L2 1e-4, 10 epochs, class-balanced)
  head_learning_rate: float = setting(4e-4, "Head fit: Adam learning rate (reference 4e-4).")
  head_weight_decay: float = setting(1e-4, "Head fit: L2 (reference 1e-4).")
  head_epochs: int = setting(10, "Head fit: epochs (reference 10).")
  head_min_steps: int = setting(0, "Head fit: at least this many Adam steps (small tasks).")
  # suite and model selection
  suite: tasks_lib.SuiteConfig = setting(tasks_lib.SuiteConfig(), "The task suite (its own flags).", flag=False)
  expert_steps: int = setting(60, "Fine-tuning steps per expert (probe tail + head).")
  expert_batch_size: int = setting(64, "Expert fine-tuning batch size.")
  expert_learning_rate: float = setting(0.05, "Expert fine-tuning peak learning rate.")
  transfer_head_steps: int = setting(300, "Min Adam steps of the linear head fitted on each expert.")
  transfer_head_learning_rate: float = setting(1e-2, "Adam learning rate of the linear head fitted on each expert.",
                                               flag=False)
  alpha: float = setting(0.15, "α of d_asym(source -> target) = d_sym - α d_sym(source, trivial).")
  distances: tuple[str, ...] = setting(DISTANCE_NAMES, "Distance matrices written to distances.csv.")
  seed: int = setting(0, "Seed for the pool, task suite, probe and Fisher sampling.")
  plots: bool = setting(True, "Write PNG figures.")


def validate(cfg: Task2VecConfig) -> None:
  """Everything checkable before touching the disk (ValueError naming the flag)."""
  for d in cfg.distances:
    if d not in dist_lib.DISTANCES:
      raise ValueError(f"unknown distance {d!r} in --distances; choose from {sorted(dist_lib.DISTANCES)}")
  FisherConfig(method=cfg.method, estimator=cfg.estimator, epochs=cfg.fisher_epochs,
               batch_size=cfg.fisher_batch_size).validate()
  if cfg.probe_label not in ("coarse", "fine"):
    raise ValueError(f"--probe_label must be 'coarse' or 'fine', got {cfg.probe_label!r}")
  module = probe_lib.make_probe(cfg.probe, 2)  # unknown probe -> ValueError
  n = probe_lib.num_stages(module)
  if not 1 <= cfg.start_stage <= n:
    raise ValueError(f"--start_stage={cfg.start_stage} must be in [1, {n}] for --probe={cfg.probe}")
  for name in ("probe_steps", "train_per_class", "test_per_class", "max_samples", "expert_steps",
               "fisher_batch_size", "head_epochs"):
    if getattr(cfg, name) <= 0:
      raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
  for name in ("probe_batch_size", "expert_batch_size", "fisher_batch_size"):
    if getattr(cfg, name) % jax.device_count():
      raise ValueError(f"--{name}={getattr(cfg, name)} is not divisible by the device count ({jax.device_count()})")
  if cfg.probe_checkpoint and not os.path.isdir(cfg.probe_checkpoint):
    raise ValueError(f"--probe_checkpoint={cfg.probe_checkpoint!r} does not exist")


def _spearman(x, y) -> dict[str, float]:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return {"rho": float("nan"), "p_value": float("nan"), "n": int(len(x))}
  r = stats.spearmanr(x, y)
  return {"rho": float(r.statistic), "p_value": float(r.pvalue), "n": int(len(x))}


def _balanced_cap(idx: np.ndarray, y: np.ndarray, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  if len(idx) <= cap:
    return idx, y
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(idx))
  # round-robin over classes of a random order keeps the subsample class-balanced
  rank = np.zeros(len(idx), np.int64)
  for c in np.unique(y):
    m = order[y[order] == c]
    rank[m] = np.arange(len(m))
  keep = np.lexsort((order, rank))[:cap]
  keep.sort()
  return idx[keep], y[keep]


def prepare_data(cfg: Task2VecConfig) -> dict[str, Any]:
  """Dataset arrays, taxonomy, task suite, image pool and every task's indices (all checks before training)."""
  spec = data_lib.get_spec(cfg.dataset, cfg.data_dir)
  if spec.num_coarse_classes is None:
    raise ValueError(f"--dataset={cfg.dataset!r} has no 'coarse_label'; Task2Vec's task suites and taxonomy need "
                     f"fine ('label') and coarse ('coarse_label') labels (e.g. shapes, cifar100)")
  train = data_lib.load_arrays(cfg.dataset, "train", cfg.data_dir)
  test = data_lib.load_arrays(cfg.dataset, spec.eval_split, cfg.data_dir)
  tax = tasks_lib.taxonomy_from_labels(train["label"], train["coarse_label"], data_lib.hierarchy(cfg.dataset))
  suite = tasks_lib.build_suite(tax, cfg.suite)
  all_specs = {s.name: s for group in suite.values() for s in group}
  classes = sorted({f for s in all_specs.values() for f in s.fine_classes})
  tr_rows, te_rows, tr_pos, te_pos = tasks_lib.make_pool(train["label"], test["label"], classes,
                                                         cfg.train_per_class, cfg.test_per_class, cfg.seed)
  n_train_pool = len(tr_rows)
  te_pos = {f: p + n_train_pool for f, p in te_pos.items()}
  mats = {name: tasks_lib.materialize(s, tax, tr_pos, te_pos) for name, s in all_specs.items()}
  num_classes_pad = int(-(-max(int(m[1].max()) + 1 for m in mats.values()) // 4) * 4)
  for name, (tr_i, tr_y, _, _) in mats.items():
    if len(np.unique(tr_y)) < 2:
      raise ValueError(f"task {name!r} has a single class")
    if min(len(tr_i), cfg.max_samples) < cfg.fisher_batch_size:
      raise ValueError(f"task {name!r} has {len(tr_i)} samples, fewer than one Fisher batch "
                       f"(--fisher_batch_size={cfg.fisher_batch_size}); raise --train_per_class or lower the batch")
  return dict(spec=spec, train=train, test=test, tax=tax, suite=suite, all_specs=all_specs, tr_rows=tr_rows,
              te_rows=te_rows, n_train_pool=n_train_pool, mats=mats, num_classes_pad=num_classes_pad)


def run(cfg: Task2VecConfig, workdir: str) -> dict[str, Any]:
  """Runs the experiment; returns the summary (also written to ``workdir/summary.json``)."""
  t_all = time.time()
  timings: dict[str, float] = {}
  validate(cfg)

  # ---- data
  t = time.time()
  d = prepare_data(cfg)
  spec, train, test, tax, suite, all_specs = d["spec"], d["train"], d["test"], d["tax"], d["suite"], d["all_specs"]
  tr_rows, te_rows, n_train_pool, mats = d["tr_rows"], d["te_rows"], d["n_train_pool"], d["mats"]
  num_classes_pad = d["num_classes_pad"]
  timings["data"] = time.time() - t

  # ---- probe
  t = time.time()
  probe_dir = os.path.join(workdir, "probe")
  probe_info: dict[str, Any] = {"name": cfg.probe, "start_stage": cfg.start_stage}
  if cfg.probe_checkpoint:
    module, variables = probe_lib.load_probe(cfg.probe, cfg.probe_checkpoint)
    probe_info["checkpoint"] = os.path.abspath(cfg.probe_checkpoint)
  else:
    source_labels = train["coarse_label"] if cfg.probe_label == "coarse" else train["label"]
    n_src = int(source_labels.max()) + 1
    pcfg = probe_lib.ProbeTrainConfig(probe=cfg.probe, label=cfg.probe_label, num_steps=cfg.probe_steps,
                                      batch_size=cfg.probe_batch_size, learning_rate=cfg.probe_learning_rate,
                                      seed=cfg.seed, augment="crop" if spec.default_augment == "crop" else
                                      spec.default_augment)
    module, variables, info = probe_lib.train_probe(pcfg, train["image"], source_labels, n_src, spec.mean,
                                                    spec.std, probe_dir)
    probe_info.update(info, source_task=f"{cfg.dataset} train, {cfg.probe_label} labels ({n_src} classes)")
  probe = probe_lib.Probe(module, variables, cfg.start_stage, cfg.probe)
  timings["probe"] = time.time() - t

  # ---- cache trunk outputs once per pooled image
  t = time.time()
  images = np.concatenate([train["image"][tr_rows], test["image"][te_rows]])
  inputs, pooled = probe_lib.cache_inputs(probe, images, spec.mean, spec.std)
  if not cfg.probe_checkpoint and "head" in variables["params"]:
    src = (test["coarse_label"] if cfg.probe_label == "coarse" else test["label"])[te_rows]
    logits = pooled[n_train_pool:] @ np.asarray(variables["params"]["head"]["kernel"]) + np.asarray(
        variables["params"]["head"]["bias"])
    probe_info["source_test_accuracy_on_pool"] = float(np.mean(logits.argmax(-1) == src))
  timings["cache_features"] = time.time() - t

  # ---- embed every task
  t = time.time()
  fisher_cfg = FisherConfig(method=cfg.method, estimator=cfg.estimator, epochs=cfg.fisher_epochs,
                            batch_size=cfg.fisher_batch_size, beta=cfg.beta,
                            learning_rate=cfg.variational_learning_rate)
  head_cfg = HeadConfig(learning_rate=cfg.head_learning_rate, weight_decay=cfg.head_weight_decay,
                        epochs=cfg.head_epochs, min_steps=cfg.head_min_steps)
  embedder = FisherEmbedder(probe_lib.make_tail_apply(module, cfg.start_stage), probe.tail_variables(),
                            num_classes_pad=num_classes_pad, fisher=fisher_cfg, head=head_cfg)
  embed_names = [s.name for s in suite["tasks"]] + [s.name for s in suite["targets"]]
  key = jax.random.PRNGKey(cfg.seed)
  embeddings: dict[str, Any] = {}
  label = cfg.method + (f"/{cfg.estimator}" if cfg.method == "montecarlo" else "")
  bar = metrics_lib.progress(len(embed_names), desc=f"embed tasks ({label})")
  for i, name in enumerate(embed_names):
    tr_i, tr_y, te_i, te_y = mats[name]
    tr_i, tr_y = _balanced_cap(tr_i, tr_y, cfg.max_samples, cfg.seed + i)
    e = embedder.embed(jax.random.fold_in(key, i), inputs[tr_i], tr_y, pooled[tr_i],
                       test=(pooled[te_i], te_y))
    e.meta["task"] = name
    embeddings[name] = e
    bar.update(1)
    bar.set_postfix(task=name, err=f"{e.meta['test_error']:.2f}")
  bar.close()
  timings["embed"] = time.time() - t
  timings["embed_per_task"] = timings["embed"] / len(embed_names)

  # ---- distances, taxonomy, domain baseline
  t = time.time()
  names = [s.name for s in suite["tasks"]]
  embs = [embeddings[n] for n in names]
  matrices = {d: dist_lib.pdist(embs, d) for d in cfg.distances}
  if "cosine" not in matrices:
    matrices["cosine"] = dist_lib.pdist(embs, "cosine")
  domain = [sel.domain_embedding(pooled[mats[n][0]]) for n in names]
  d_dom = sel.domain_distances(domain)
  tax_m = np.array([[tax.task_distance(all_specs[a], all_specs[b]) for b in names] for a in names])
  tax_idx = [i for i, n in enumerate(names) if all_specs[n].in_taxonomy]
  iu = [(i, j) for a, i in enumerate(tax_idx) for j in tax_idx[a + 1:]]
  pick = lambda m: [m[i, j] for i, j in iu]  # noqa: E731
  spearman_tax = {d: _spearman(pick(m), pick(tax_m)) for d, m in matrices.items()}
  spearman_dom = _spearman(pick(d_dom), pick(tax_m))
  norms = np.array([np.linalg.norm(e.hessian) for e in embs])
  errs = np.array([e.meta["test_error"] for e in embs])
  norm_vs_err = _spearman(norms, errs)
  # fine vs coarse labelling of the same images: Task2Vec separates them, the domain embedding cannot
  relabel = {}
  for n in names:
    if all_specs[n].kind == "super_coarse":
      f = n.replace("/coarse", "/fine")
      relabel[n.split("/")[1]] = {"task2vec_d_sym": float(dist_lib.cosine(embeddings[n], embeddings[f])),
                                  "domain_distance": float(d_dom[names.index(n), names.index(f)])}
  ks = list(range(1, max(2, len(tax_idx))))
  sub = np.ix_(tax_idx, tax_idx)
  rng = np.random.default_rng(cfg.seed)
  rand_d = rng.random((len(tax_idx), len(tax_idx)))
  topk = {"k": ks, "task2vec": sel.top_k_taxonomic(matrices["cosine"][sub], tax_m[sub], ks),
          "domain": sel.top_k_taxonomic(d_dom[sub], tax_m[sub], ks),
          "random": sel.top_k_taxonomic(rand_d + rand_d.T, tax_m[sub], ks),
          "oracle": sel.top_k_taxonomic(tax_m[sub], tax_m[sub], ks)}
  timings["distances"] = time.time() - t

  # ---- model selection: experts fine-tuned per source task, linear transfer to few-shot targets
  t = time.time()
  experts, targets = suite["experts"], suite["targets"]
  trainer = sel.ExpertTrainer(module, cfg.start_stage, num_classes_pad,
                              sel.ExpertConfig(num_steps=cfg.expert_steps, batch_size=cfg.expert_batch_size,
                                               learning_rate=cfg.expert_learning_rate))
  transfer_head = HeadConfig(learning_rate=cfg.transfer_head_learning_rate, weight_decay=cfg.head_weight_decay,
                             epochs=cfg.head_epochs, min_steps=cfg.transfer_head_steps)
  errors = np.zeros((len(experts), len(targets)))
  bar = metrics_lib.progress(len(experts) * cfg.expert_steps, desc=f"train {len(experts)} experts + transfer")
  tkey = jax.random.fold_in(key, 10_000)
  need = np.unique(np.concatenate([np.concatenate([mats[tg.name][0], mats[tg.name][2]]) for tg in targets]))
  row = np.full(len(inputs), -1)
  row[need] = np.arange(len(need))
  for e_i, ex in enumerate(experts):
    tr_i, tr_y, _, _ = mats[ex.name]
    ev = trainer.train(cfg.seed + 1000 + e_i, probe.tail_variables(), inputs[tr_i], tr_y, progress_bar=bar)
    feats = trainer.features(ev, inputs[need])  # only the targets' images
    for t_i, tg in enumerate(targets):
      a, ay, b, by = mats[tg.name]
      errors[e_i, t_i] = sel.transfer_error(jax.random.fold_in(tkey, t_i), feats[row[a]], ay, feats[row[b]], by,
                                            num_classes_pad, transfer_head)
  bar.close()
  generic = np.array([sel.transfer_error(jax.random.fold_in(tkey, t_i), pooled[mats[tg.name][0]],
                                         mats[tg.name][1], pooled[mats[tg.name][2]], mats[tg.name][3],
                                         num_classes_pad, transfer_head) for t_i, tg in enumerate(targets)])
  alphas = sorted({0.0, 0.05, 0.1, cfg.alpha, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0})
  table = sel.selection_table(errors, generic, [embeddings[e.name] for e in experts],
                              [embeddings[tg.name] for tg in targets], alphas)
  table["relative_error_increase"][f"task2vec_asymmetric_alpha{cfg.alpha:g}"] = \
      table["alpha_sweep"][float(cfg.alpha)]["relative_error_increase"]
  table["mean_error"][f"task2vec_asymmetric_alpha{cfg.alpha:g}"] = table["alpha_sweep"][float(cfg.alpha)]["mean_error"]
  table["experts"] = [e.name for e in experts]
  table["targets"] = [tg.name for tg in targets]
  table["errors"] = errors.round(4).tolist()
  table["generic_errors"] = generic.round(4).tolist()
  timings["model_selection"] = time.time() - t

  # ---- outputs
  t = time.time()
  summary = {
      "dataset": cfg.dataset, "num_tasks": len(names), "num_taxonomy_tasks": len(tax_idx),
      "embedding_dim": embedder.dim, "fisher": {"method": cfg.method,
                                                "estimator": cfg.estimator if cfg.method == "montecarlo" else None,
                                                "epochs": cfg.fisher_epochs, "batch_size": cfg.fisher_batch_size,
                                                "max_samples": cfg.max_samples},
      "probe": probe_info,
      "spearman_taxonomy": spearman_tax["cosine"],
      "spearman_taxonomy_by_distance": spearman_tax,
      "spearman_taxonomy_domain": spearman_dom,
      "norm_vs_error_spearman": norm_vs_err,
      "fine_vs_coarse_relabel": relabel,
      "top_k_taxonomic_distance": topk,
      "model_selection": table,
      "task_test_error": {n: round(float(e.meta["test_error"]), 4) for n, e in zip(names, embs)},
      "task_embedding_norm": {n: float(v) for n, v in zip(names, norms)},
      "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
      "num_devices": jax.device_count(),
  }
  os.makedirs(workdir, exist_ok=True)
  tmp = {}
  tmp["embeddings.npz"] = _npz_bytes(embeddings, embed_names, embedder.layers, embedder.counts)
  tmp["distances.csv"] = _csv(names, {**matrices, "domain_cosine": d_dom, "taxonomic": tax_m}).encode()
  if cfg.plots:
    from research.methods.task2vec import plots
    bar = metrics_lib.progress(4, desc="figures")
    for fname, png in plots.all_figures(names, matrices["cosine"], d_dom, topk, norms, errs, table,
                                        [all_specs[n].kind for n in names]):
      tmp[fname] = png
      bar.update(1)
    bar.close()
  timings["outputs"] = time.time() - t
  timings["total"] = time.time() - t_all
  summary["timings_seconds"] = {k: round(v, 2) for k, v in timings.items()}
  if fileio.main_process():  # every process computed the same summary; one writes it
    for fname, payload in tmp.items():
      fileio.write_atomic(os.path.join(workdir, fname), payload)
    fileio.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  return summary


def _npz_bytes(embeddings: dict, names: list[str], layers: list[str], counts: list[int]) -> bytes:
  """task_names [T], hessian/scale [T, P], meta [T] (JSON), layers [L] + filters_per_layer [L] (P = Σ filters)."""
  buf = io.BytesIO()
  np.savez(buf, task_names=np.array(names), layers=np.array(layers), filters_per_layer=np.array(counts),
           hessian=np.stack([embeddings[n].hessian for n in names]),
           scale=np.stack([embeddings[n].scale for n in names]),
           meta=np.array([json.dumps(embeddings[n].meta, default=str) for n in names]))
  return buf.getvalue()


def _csv(names: list[str], matrices: dict[str, np.ndarray]) -> str:
  out = io.StringIO()
  w = csv.writer(out)
  for d, m in matrices.items():
    w.writerow([f"distance={d}"] + names)
    for n, row in zip(names, m):
      w.writerow([n] + [f"{v:.6g}" for v in row])
    w.writerow([])
  return out.getvalue()
