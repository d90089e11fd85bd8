"""EDIT (issue 15, seed 000: "Exemplar-Domain aware Image-to-image Translation"): ``run(EDITConfig, workdir)`` ->
summary.

One generator (``research.models.generative.edit``) translates between the three domains of ``shapes_styles``
(``research.data.styles``: ``flat``, ``sketch``, ``texture``; the same layouts rendered in every style) guided by an
exemplar image; one multi-domain discriminator; trained unpaired (``research.train.edit``: layout ``i`` is only
seen in domain ``i mod 3``).

Evaluation on the test split, with the PAIRED renderings (never used in training): the ``source_domain`` image of
layout ``i`` is translated into every other domain ``t`` with an exemplar of layout ``i + 1`` in ``t``, and

* content preserved: L1 (pixels in [0, 1]) and PSNR (dB) between the output and the ground truth, layout ``i``
  rendered in ``t``; and the structure IoU: :func:`research.data.styles.structure_mask` of the output vs of the
  ground truth (the foreground ``semantic > 0`` for ``flat`` / ``texture``, the object outlines for ``sketch``),
  per image (an empty union counts 1), averaged;
* style follows the exemplar: a domain classifier (the ``FeatureCNN`` of ``generative_experiment.feature_network``,
  trained here on the three domains' real training images with +-1 px shifts; its test accuracy on the real test
  renderings is reported) is applied to the outputs: ``exemplar_domain_accuracy`` = the fraction classified as the
  exemplar's domain; and for ``flat`` / ``texture`` targets, whose background grey levels are drawn per layout,
  ``exemplar_background_corr``: the correlation over images between the output's background level and the
  exemplar's (:func:`edit_sample_metrics`);
* the "copy the input" baseline (output = input) for every number (``identity_*``).

The claims in ``summary.json`` are computed from the runs (mean over seeds), never assumed:
``psnr_beats_identity`` / ``l1_beats_identity`` (content: the translation is closer to the target-domain ground
truth than the input is), ``structure_iou_beats_identity`` (the output's structure matches the ground truth's
better than the input's does: a hard bar, since a ``flat`` input has exactly the foreground of its ``texture``
rendering, identity IoU 1), ``exemplar_domain_beats_identity`` (style), ``majority_in_exemplar_domain`` (> 50% of
the outputs classified as the exemplar's domain), ``background_follows_exemplar`` (per ``flat`` / ``texture``
target: the output's background grey level correlates > 0.5 with the exemplar's -- the within-domain style of THIS
exemplar, which the domain classifier cannot see), ``classifier_reliable`` (test accuracy >= 0.95: otherwise the
style numbers mean little).

Each run writes ``workdir/seed<s>/`` (loop outputs, eval curves in ``metrics.jsonl``, ``samples.png``: rows input,
exemplar, output, ground truth) and is reused when finished with the same settings; the classifier lives in
``workdir/domain_classifier_<config>/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from research import fileio
from research.configs import setting
from research.data import styles
from research.methods import generative_experiment as ge
from research.methods import reporting
from research.models import registry
from research.models.generative import edit as edit_models  # noqa: F401  (registers the models)
from research.train import edit as edit_lib
from research.train import loop
from research.train import metrics as metrics_lib
from research.train import task as task_lib

TABLE_KEYS = ("l1", "psnr", "structure_iou", "exemplar_domain_accuracy")


@dataclasses.dataclass(frozen=True)
class EDITConfig:
  """One EDIT experiment (``python -m experiments.edit``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  data_config: str = setting("32", "shapes_styles config: 32 (3000 train / 300 test layouts) or small (64 / 16).",
                             choices=tuple(styles.CONFIGS))
  source_domain: str = setting("flat", "Domain of the evaluation inputs (translated into every other domain).",
                               choices=styles.DOMAINS)
  seeds: tuple[int, ...] = setting((0,), "Seeds (one run each).")
  num_steps: int = setting(1500, "Training steps (each: one discriminator + one generator update).")
  batch_size: int = setting(16, "Global batch (content/exemplar pairs per step).")
  learning_rate: float = setting(2e-4, "Adam learning rate of both nets.")
  beta1: float = setting(0.5, "Adam beta1.")
  adv_loss: str = setting("lsgan", "Adversarial loss: lsgan (least squares) or nsgan (non-saturating).",
                          choices=edit_lib.ADV_LOSSES)
  adv_weight: float = setting(1.0, "Weight of the generator's adversarial loss.")
  recon_weight: float = setting(10.0, "Weight of the self-reconstruction L1 |G(x, x) - x|.")
  content_weight: float = setting(1.0, "Weight of the content-code consistency |c(G(x, e)) - c(x)|.")
  style_weight: float = setting(1.0, "Weight of the style loss (mean/std of fixed random conv features).")
  r1_weight: float = setting(0.0, "R1 penalty gamma on the real exemplars (0: off).")
  width: int = setting(16, "Generator base width (content code: 4 * width channels at 1/4 resolution).")
  res_blocks: int = setting(2, "Residual blocks in the content encoder and in the decoder.")
  style_dim: int = setting(32, "Style code size.")
  mlp_hidden: int = setting(64, "Hidden units of the style -> AdaIN parameter MLP.")
  disc_width: int = setting(16, "Discriminator base width.")
  feature_width: int = setting(16, "Channels of the fixed random feature net of the style loss.")
  eval_every: int = setting(500, "Evaluate every N steps (and at the end).")
  eval_batch_size: int = setting(100, "Global eval batch (a multiple of the device count).")
  classifier_steps: int = setting(150, "Training steps of the domain classifier.")
  classifier_width: int = setting(16, "Width of the domain classifier (FeatureCNN).")
  checkpoint_every: int = setting(1000, "Checkpoint every N steps (and at the end).")

  def __post_init__(self):
    for name in ("num_steps", "batch_size", "learning_rate", "width", "style_dim", "mlp_hidden", "disc_width",
                 "feature_width", "eval_batch_size", "classifier_steps", "classifier_width", "checkpoint_every"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("adv_weight", "recon_weight", "content_weight", "style_weight", "r1_weight", "eval_every",
                 "res_blocks"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.data_config not in styles.CONFIGS:
      raise ValueError(f"--data_config={self.data_config!r}; choose one of {tuple(styles.CONFIGS)}")
    if self.source_domain not in styles.DOMAINS:
      raise ValueError(f"--source_domain={self.source_domain!r}; choose one of {styles.DOMAINS}")
    if self.adv_loss not in edit_lib.ADV_LOSSES:
      raise ValueError(f"--adv_loss={self.adv_loss!r}; choose one of {edit_lib.ADV_LOSSES}")
    if not 0 <= self.beta1 < 1:
      raise ValueError(f"--beta1={self.beta1} must be in [0, 1)")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if self.adv_weight == 0 and self.style_weight == 0:
      raise ValueError("--adv_weight=0 and --style_weight=0: nothing pushes the output into the exemplar's domain; "
                       "set one of them > 0")


# ============================================================================================== metrics


def structure_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per image IoU of bool masks [N, S, S] (an empty union counts 1): [N]."""
  inter = np.sum(a & b, axis=(1, 2))
  union = np.sum(a | b, axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def background_level(images: np.ndarray, background: np.ndarray) -> np.ndarray:
  """Mean intensity over the pixels of ``background`` (bool [N, S, S]) of images [N, S, S, C]: [N] (NaN if none)."""
  w = background[..., None].astype(np.float64)
  return np.sum(images * w, axis=(1, 2, 3)) / np.maximum(np.sum(w, axis=(1, 2, 3)) * images.shape[-1], 1e-9)


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 3 or np.std(a[ok]) < 1e-6 or np.std(b[ok]) < 1e-6:
    return None
  return float(np.corrcoef(a[ok], b[ok])[0, 1])


def edit_sample_metrics(classifier: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], domains: tuple[str, ...]
                        ) -> Callable[..., dict[str, float]]:
  """``metrics(outputs, inputs, targets, exemplars [N, S, S, C] in [-1, 1], target domains int [N]) -> dict``:

  * ``exemplar_domain_accuracy``: the fraction the domain ``classifier`` (``fn(x) -> (features, probs)``) assigns to
    the exemplar's domain;
  * ``structure_iou``: ``styles.structure_mask`` of the output vs of the ground truth, per image;
  * ``exemplar_background_corr_<domain>`` (``flat`` / ``texture`` targets, whose background grey level is drawn per
    layout): the Pearson correlation over images between the output's mean background level (on the ground
    truth's background) and the exemplar's (on its own background): > 0 when the output takes the exemplar's
    within-domain style, not just its domain;

  for the outputs and the identity baseline (``identity_*``), overall and per target domain (``*_<domain>``)."""
  def metrics(outputs, inputs, targets, exemplars, target_domains):
    out: dict[str, float] = {}
    if not len(outputs):
      return out
    hit = {"": np.argmax(classifier(outputs)[1], -1) == target_domains,
           "identity_": np.argmax(classifier(inputs)[1], -1) == target_domains}
    iou = {"": np.zeros(len(outputs)), "identity_": np.zeros(len(outputs))}
    for d, name in enumerate(domains):
      rows = target_domains == d
      if not rows.any():
        continue
      truth = styles.structure_mask(targets[rows], name)
      for prefix, x in (("", outputs), ("identity_", inputs)):
        iou[prefix][rows] = structure_iou(styles.structure_mask(x[rows], name), truth)
        out[f"{prefix}exemplar_domain_accuracy_{name}"] = float(np.mean(hit[prefix][rows]))
        out[f"{prefix}structure_iou_{name}"] = float(np.mean(iou[prefix][rows]))
        if name != "sketch":  # the sketch background is always white
          ex = background_level(exemplars[rows], ~styles.structure_mask(exemplars[rows], name))
          corr = _corr(background_level(x[rows], ~truth), ex)
          if corr is not None:
            out[f"{prefix}exemplar_background_corr_{name}"] = corr
    for prefix in ("", "identity_"):
      out[f"{prefix}exemplar_domain_accuracy"] = float(np.mean(hit[prefix]))
      out[f"{prefix}structure_iou"] = float(np.mean(iou[prefix]))
    return out
  return metrics


# ============================================================================================== runs


def load_data(cfg: EDITConfig) -> dict[str, dict[str, np.ndarray]]:
  """``{'train'|'test': {'images': uint8 [N, 3, S, S, 3] (styles.DOMAINS order), 'semantic', 'layout_id'}}``."""
  return {split: styles.load_arrays(split, cfg.data_dir, cfg.data_config) for split in styles.SPLITS}


def domain_classifier(cfg: EDITConfig, data, workdir: str):
  """The FeatureCNN domain classifier trained (or reloaded) on every real training rendering; ``(fn, info)``."""
  def flat(split):
    imgs = data[split]["images"]  # [N, D, S, S, C]
    n, d = imgs.shape[:2]
    return {"image": imgs.reshape((n * d,) + imgs.shape[2:]).astype(np.float32) / 255.0,
            "label": np.tile(np.arange(d, dtype=np.int32), n)}
  return ge.feature_network({"train": flat("train"), "test": flat("test")}, num_classes=len(styles.DOMAINS),
                            steps=cfg.classifier_steps, width=cfg.classifier_width, seed=0,
                            workdir=os.path.join(workdir, f"domain_classifier_{cfg.data_config}"))


def make_task(cfg: EDITConfig, sample_metrics=None) -> edit_lib.EDITTask:
  g = registry.create("edit_generator", channels=3, width=cfg.width, res_blocks=cfg.res_blocks,
                      style_dim=cfg.style_dim, mlp_hidden=cfg.mlp_hidden)
  d = registry.create("edit_discriminator", num_domains=len(styles.DOMAINS), width=cfg.disc_width)
  size = styles.CONFIGS[cfg.data_config].image_size
  return edit_lib.EDITTask(
      generator=g, discriminator=d, num_domains=len(styles.DOMAINS), image_shape=(size, size, 3),
      optimizers=edit_lib.edit_optimizers(cfg.learning_rate, cfg.beta1), adv_loss=cfg.adv_loss,
      adv_weight=cfg.adv_weight, recon_weight=cfg.recon_weight, content_weight=cfg.content_weight,
      style_weight=cfg.style_weight, r1_weight=cfg.r1_weight, feature_width=cfg.feature_width,
      domain_names=styles.DOMAINS, sample_metrics=sample_metrics)


def save_rows(path: str, rows: list[np.ndarray], scale: int = 4) -> None:
  """One PNG row per ``[n, S, S, C]`` array in [-1, 1] (1 px white gaps), upscaled ``scale`` x (process 0)."""
  if not fileio.main_process():
    return
  from PIL import Image
  n, s = rows[0].shape[0], rows[0].shape[1]
  grid = np.ones((len(rows) * (s + 1) + 1, n * (s + 1) + 1, rows[0].shape[-1]), np.float32)
  for r, images in enumerate(rows):
    for c in range(n):
      grid[1 + r * (s + 1):1 + r * (s + 1) + s, 1 + c * (s + 1):1 + c * (s + 1) + s] = (images[c] + 1) / 2
  img = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def sample_grid(path: str, task: edit_lib.EDITTask, params, test_images: np.ndarray, source: int, n: int = 10):
  """PNG of the first ``n`` eval pairs (target domains alternate); rows: input, exemplar, output, ground truth."""
  batch = next(edit_lib.paired_eval_batches(test_images, source=source, global_batch_size=n)())
  out = np.asarray(jax.jit(task.translate)(params["generator"], batch["content"], batch["exemplar"]))
  keep = batch["valid"] > 0
  save_rows(path, [batch["content"][keep], batch["exemplar"][keep], out[keep], batch["target"][keep]])


def train_run(cfg: EDITConfig, data, seed: int, workdir: str, sample_metrics) -> dict[str, Any]:
  name = f"seed{seed}"
  out = os.path.join(workdir, name)
  run_config = {**dataclasses.asdict(cfg), "run": name, "seed": seed}
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  task = make_task(cfg, sample_metrics)
  source = styles.DOMAINS.index(cfg.source_domain)
  batches = edit_lib.unpaired_batches(data["train"]["images"], global_batch_size=cfg.batch_size, seed=seed)
  evals = edit_lib.paired_eval_batches(data["test"]["images"], source=source, global_batch_size=cfg.eval_batch_size)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=cfg.eval_every,
                         checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1, log_every=50, progress_bar=False,
                         description=name)
  state, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out, eval_data=evals,
                              run_config=run_config)
  results["curve"] = [r for r in metrics_lib.read_metrics(out) if any(k.startswith("eval/") for k in r)]
  sample_grid(os.path.join(out, "samples.png"), task, jax.device_get(state.params), data["test"]["images"], source)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


def run(cfg: EDITConfig, workdir: str) -> dict[str, Any]:
  """Trains one EDIT model per seed; returns (and writes) the summary with the claims."""
  t0 = time.time()
  n_dev = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n_dev:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n_dev} devices")
  os.makedirs(workdir, exist_ok=True)
  data = load_data(cfg)
  classifier, classifier_info = domain_classifier(cfg, data, workdir)
  sample_metrics = edit_sample_metrics(classifier, styles.DOMAINS)
  runs = [train_run(cfg, data, seed, workdir, sample_metrics) for seed in cfg.seeds]

  targets = [d for d in styles.DOMAINS if d != cfg.source_domain]
  table: dict[str, dict[str, tuple]] = {}
  for label, prefix in (("EDIT", ""), ("identity (copy the input)", "identity_")):
    row = {}
    for key in TABLE_KEYS:
      row[key] = reporting.mean_std([r.get(f"eval_{prefix}{key}") for r in runs])
      for t in targets:
        row[f"{key}_{t}"] = reporting.mean_std([r.get(f"eval_{prefix}{key}_{t}") for r in runs])
    for t in targets:
      row[f"exemplar_background_corr_{t}"] = reporting.mean_std([r.get(f"eval_{prefix}exemplar_background_corr_{t}")
                                                        for r in runs])
    table[label] = row
  model, ident = table["EDIT"], table["identity (copy the input)"]
  m = lambda row, k: row[k][0]  # noqa: E731
  claims = {
      "psnr_beats_identity": bool(m(model, "psnr") > m(ident, "psnr")),
      "l1_beats_identity": bool(m(model, "l1") < m(ident, "l1")),
      "exemplar_domain_beats_identity": bool(m(model, "exemplar_domain_accuracy") >
                                             m(ident, "exemplar_domain_accuracy")),
      "majority_in_exemplar_domain": bool(m(model, "exemplar_domain_accuracy") > 0.5),
      "structure_iou_beats_identity": bool(m(model, "structure_iou") > m(ident, "structure_iou")),
      "background_follows_exemplar": {t: bool(m(model, f"exemplar_background_corr_{t}") > 0.5) for t in targets
                                      if m(model, f"exemplar_background_corr_{t}") is not None},
      "classifier_test_accuracy": float(classifier_info["test_accuracy"]),
      "classifier_reliable": bool(classifier_info["test_accuracy"] >= 0.95),
      "per_target_domain": {t: {"psnr_beats_identity": bool(m(model, f"psnr_{t}") > m(ident, f"psnr_{t}")),
                                "structure_iou_beats_identity": bool(m(model, f"structure_iou_{t}") >
                                                                     m(ident, f"structure_iou_{t}")),
                                "exemplar_domain_accuracy": m(model, f"exemplar_domain_accuracy_{t}"),
                                "exemplar_background_corr": m(model, f"exemplar_background_corr_{t}")}
                            for t in targets},
  }
  summary = {"config": dataclasses.asdict(cfg), "domain_classifier": classifier_info,
             "table": {k: {c: list(v) for c, v in row.items()} for k, row in table.items()},
             "runs": [{k: r.get(k) for k in r if k.startswith("eval_") or k in ("wall_seconds", "step")}
                      for r in runs],
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  fmt = lambda v: "-" if v[0] is None else f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
  cols = list(TABLE_KEYS) + [f"{k}_{t}" for t in targets for k in (*TABLE_KEYS, "exemplar_background_corr")
                             if any(row[f"{k}_{t}"][0] is not None for row in table.values())]
  rows = [(label, *[fmt(row[c]) for c in cols]) for label, row in table.items()]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# EDIT on shapes_styles/{cfg.data_config}: {cfg.source_domain} -> {', '.join(targets)}, {cfg.num_steps} "
      f"steps, seeds {','.join(map(str, cfg.seeds))}",
      f"Mean ± std over seeds. L1 (pixels in [0, 1]) / PSNR (dB) vs the ground-truth rendering of the same layout in "
      f"the target domain; structure IoU of styles.structure_mask (foreground / outlines) vs the ground truth's; "
      f"exemplar-domain accuracy = fraction of outputs the domain classifier (test accuracy "
      f"{classifier_info['test_accuracy']:.3f} on real renderings) assigns to the exemplar's domain; exemplar "
      f"background corr = correlation over images between the output's and the exemplar's background grey level "
      f"(the within-domain style of the exemplar; ~0 for the identity baseline).",
      reporting.markdown_table(("model", *cols), rows),
      "claims: " + json.dumps(claims))
  return summary
