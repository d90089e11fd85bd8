"""Large-minibatch SGD (Goyal et al. 2017; seed 003 §17.8): ``run(LargeMinibatchConfig, workdir) -> summary``.

For every global batch size B in ``batch_sizes`` and the same number of epochs (so larger B = fewer iterations),
one run per condition of a post-activation ResNet data-parallel over k = B / ``per_device_batch`` devices, as the
paper's k workers of n examples each (§2.3): BN statistics per worker over n examples whatever B is, the loss
normalised by the global batch kn:
  * ``no_recipe``: the small-batch LR ``learning_rate`` unchanged, no warmup, BN γ = 1 everywhere;
  * ``linear_warmup``: Linear Scaling Rule (LR = ``learning_rate`` · B / ``base_batch_size``, §2.1) and gradual
    warmup over ``warmup_epochs`` from the small-batch LR (``warmup_init = base/B``, §2.2), BN γ = 1;
  * ``recipe``: ``linear_warmup`` plus zero-init γ of each residual block's last BN (§5.1).
All exclude BN γ/β and biases from weight decay. Every run is a classification run in ``workdir/<condition>_b<B>``
(resumable); writes ``summary.json``, ``summary.md`` and ``accuracy_vs_batch.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping

import jax

from research.configs import setting
from research.methods import reporting
from research.train import classify

CONDITIONS = ("no_recipe", "linear_warmup", "recipe")


@dataclasses.dataclass(frozen=True)
class LargeMinibatchConfig:
  """``model`` on the first ``num_classes_subset`` classes of ``shapes``: Nesterov SGD, step schedule (×0.1 at
  50% / 75%), ``epochs`` epochs at every global batch size. Each field is one flag of ``experiments.large_minibatch``
  (``research.configs.setting``)."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  model: str = setting("resnet18", "Post-activation ResNet (has zero_init_last_bn).")
  model_kwargs: Mapping[str, Any] = setting({"width": 16}, "JSON dict of model arguments.")
  num_classes_subset: int = setting(10, "Classes of `shapes` used (label < N; 0 = all 100).")
  batch_sizes: tuple[int, ...] = setting((32, 128, 512), "Global batch sizes kn (each a multiple of "
                                         "--per_device_batch).")
  per_device_batch: int = setting(32, "n, examples per worker/device (the BN batch); k = B / n devices; "
                                  "0 = every device at every B.")
  base_batch_size: int = setting(32, "Batch size at which --learning_rate is tuned (k = B / this).")
  learning_rate: float = setting(0.05, "LR for --base_batch_size.")
  epochs: float = setting(10.0, "Training epochs for every batch size.")
  warmup_epochs: float = setting(2.0, "Gradual warmup length (linear_warmup and recipe runs).")
  weight_decay: float = setting(5e-4, "Weight decay (not on BN/bias).")
  conditions: tuple[str, ...] = setting(CONDITIONS, f"Which runs per batch size, a subset of {','.join(CONDITIONS)}.")
  seed: int = setting(0, "Seed.")

  def __post_init__(self):
    if not self.conditions:
      raise ValueError(f"--conditions is empty; choose one or more of {CONDITIONS}")
    for c in self.conditions:
      if c not in CONDITIONS:
        raise ValueError(f"--conditions: unknown {c!r}; choose from {CONDITIONS}")
    if not self.batch_sizes or min(self.batch_sizes) <= 0:
      raise ValueError(f"--batch_sizes must be one or more positive global batch sizes, got {self.batch_sizes}")
    if self.per_device_batch < 0:
      raise ValueError(f"--per_device_batch must be >= 0 (0 = every device), got {self.per_device_batch}")
    if self.per_device_batch and any(b % self.per_device_batch for b in self.batch_sizes):
      raise ValueError(f"--batch_sizes {list(self.batch_sizes)} must be multiples of --per_device_batch="
                       f"{self.per_device_batch} (k = B / n workers)")
    for name in ("base_batch_size", "learning_rate", "epochs"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("warmup_epochs", "weight_decay", "num_classes_subset"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not isinstance(self.model_kwargs, Mapping):
      raise ValueError(f"--model_kwargs must be a JSON object, got {self.model_kwargs!r}")


def run_config(cfg: LargeMinibatchConfig, base: classify.ClassifyConfig, condition: str, batch_size: int,
               num_train: int) -> classify.ClassifyConfig:
  """The classification run of ``condition`` at global batch ``batch_size`` (``num_train`` examples per epoch)."""
  num_steps = max(1, round(cfg.epochs * num_train / batch_size))
  warmup = round(cfg.warmup_epochs * num_train / batch_size)
  if condition in ("linear_warmup", "recipe"):
    run_cfg = dataclasses.replace(base, batch_size=batch_size, num_steps=num_steps, lr_scaling="linear",
                                  warmup_steps=min(warmup, num_steps - 1),
                                  warmup_init=min(1.0, cfg.base_batch_size / batch_size),
                                  zero_init_residual=condition == "recipe")
  else:
    run_cfg = dataclasses.replace(base, batch_size=batch_size, num_steps=num_steps)
  return dataclasses.replace(run_cfg, eval_every=num_steps, checkpoint_every=num_steps,
                             num_devices=batch_size // cfg.per_device_batch if cfg.per_device_batch else 0)


def run(cfg: LargeMinibatchConfig, workdir: str) -> dict[str, Any]:
  """Accuracy vs global batch per condition (Goyal et al. 2017, §5.2 / Fig. 5 at toy scale).

  Returns the summary (also ``workdir/summary.json``): ``runs`` (per condition and batch size: iterations, peak
  LR, warmup iterations, zero-init γ, eval accuracy, final train loss, train seconds), ``num_devices``, ...
  """
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  base = classify.ClassifyConfig(model=cfg.model, model_kwargs=dict(cfg.model_kwargs), dataset="shapes",
                                 data_dir=cfg.data_dir, num_classes_subset=cfg.num_classes_subset,
                                 learning_rate=cfg.learning_rate, base_batch_size=cfg.base_batch_size,
                                 weight_decay=cfg.weight_decay, optimizer="nesterov", schedule="step",
                                 seed=cfg.seed, progress_bar=False, log_every=10)
  need = max(cfg.batch_sizes) // cfg.per_device_batch if cfg.per_device_batch else 1
  if need > jax.device_count():
    raise ValueError(f"--batch_sizes={max(cfg.batch_sizes)} with --per_device_batch={cfg.per_device_batch} needs "
                     f"{need} devices, {jax.device_count()} exist; raise --num_devices to {need}")
  spec, train_source, _ = classify.prepare_data(base)
  rows = []
  for b in cfg.batch_sizes:
    for cond in cfg.conditions:
      run_cfg = run_config(cfg, base, cond, b, len(train_source))
      wd = os.path.join(workdir, f"{cond}_b{b}")
      res = classify.finished_results(wd, run_cfg.num_steps) or classify.train_and_evaluate(run_cfg, wd)
      rows.append({"condition": cond, "batch_size": b, "devices": run_cfg.num_devices or jax.device_count(),
                   "num_steps": run_cfg.num_steps,
                   "peak_lr": classify.effective_learning_rate(run_cfg), "warmup_steps": run_cfg.warmup_steps,
                   "zero_init_residual": run_cfg.zero_init_residual, "eval_accuracy": res["eval_accuracy"],
                   "final_train_loss": res["final_train_loss"], "train_seconds": res["train_seconds"]})
  summary = {"runs": rows, "num_devices": jax.device_count(), "epochs": cfg.epochs,
             "num_train": len(train_source), "num_classes": spec.num_classes, "model": cfg.model,
             "model_kwargs": json.dumps(dict(cfg.model_kwargs)), "base_batch_size": cfg.base_batch_size,
             "per_device_batch": cfg.per_device_batch, "base_learning_rate": cfg.learning_rate, "wall_seconds": time.time() - t0}
  reporting.write_summary(workdir, summary)
  table = reporting.markdown_table(
      ["global batch", "devices", "condition", "iterations", "peak LR", "warmup it", "zero-init γ", "eval acc",
       "train s"],
      [[r["batch_size"], r["devices"], r["condition"], r["num_steps"], f"{r['peak_lr']:.3g}", r["warmup_steps"],
        r["zero_init_residual"], f"{r['eval_accuracy']:.4f}", f"{r['train_seconds']:.0f}"] for r in rows])
  reporting.write_markdown(os.path.join(workdir, "summary.md"), table)
  series = {c: tuple(zip(*[(r["batch_size"], r["eval_accuracy"]) for r in rows if r["condition"] == c]))
            for c in CONDITIONS if c in cfg.conditions}
  reporting.line_plot(os.path.join(workdir, "accuracy_vs_batch.png"), series, xlabel="global batch size",
                      ylabel="eval accuracy", figsize=(5, 3.5), log2_x=True)
  return summary
