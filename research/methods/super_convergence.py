"""Super-convergence (Smith & Topin 2017; seed 003 §1.1): ``run(SuperConvergenceConfig, workdir) -> summary``.

1. LR range test (``research.train.lr_finder``): exponential LR ramp, loss vs LR plot ``lr_range_test.png``,
   suggested maximum LR by the documented rule (cached in ``lr_range_test.json`` and reused on re-run).
2. Baseline: piecewise-constant "step" schedule (LR ×0.1 at 50% and 75% of ``step_steps``) at ``step_lr``; optional
   control runs of the same schedule at ``step_extra_lrs`` (0 = the one-cycle peak LR: is it the LR or the cycle?).
3. One cycle (peak = the suggested max LR unless ``onecycle_max_lr``) for each budget in ``onecycle_steps``.
Each run needs the iterations of its first evaluation at or above the target accuracy (``target_accuracy`` or,
when 0, the baseline's final eval accuracy). Every run is a classification run in ``workdir/<name>``
(resumable); writes ``summary.json``, ``summary.md`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping

from research.configs import setting
from research.methods import reporting
from research.train import classify, lr_finder

_POSITIVE = ("batch_size", "range_min_lr", "range_steps", "range_divisor", "step_lr", "step_steps", "eval_every")


@dataclasses.dataclass(frozen=True)
class SuperConvergenceConfig:
  """Model and data are shared by every run: ``model`` on the first ``num_classes_subset`` classes of ``shapes``,
  Nesterov SGD with ``momentum`` and ``weight_decay`` at global batch ``batch_size``. Each field is one flag of
  ``experiments.super_convergence`` (``research.configs.setting``)."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  model: str = setting("resnet18", "Registered model name.")
  model_kwargs: Mapping[str, Any] = setting({"width": 16}, "JSON dict of model arguments.")
  num_classes_subset: int = setting(20, "Classes of `shapes` used (label < N; 0 = all 100).")
  batch_size: int = setting(128, "Global batch size.")
  weight_decay: float = setting(1e-4, "Weight decay (Smith & Topin: large LRs regularise; they use 1e-4).")
  momentum: float = setting(0.9, "Nesterov momentum.")
  range_min_lr: float = setting(1e-3, "LR range test start (first LR of the exponential ramp).")
  range_max_lr: float = setting(10.0, "LR range test end (last LR of the ramp).")
  range_steps: int = setting(100, "LR range test steps.")
  range_divisor: float = setting(3.0, "suggested max LR = LR at the smoothed-loss minimum / this.")
  step_lr: float = setting(0.1, "Baseline step schedule LR.")
  step_steps: int = setting(800, "Baseline step schedule iterations.")
  step_extra_lrs: tuple[float, ...] = setting((), "Control step-schedule runs at these LRs (0 = the one-cycle "
                                              "peak LR).")
  onecycle_steps: tuple[int, ...] = setting((200, 400), "One-cycle budgets (iterations), one run each.")
  onecycle_max_lr: float = setting(0.0, "One-cycle peak LR; 0 = the range test's suggestion.")
  target_accuracy: float = setting(0.0, "Target eval accuracy in [0, 1]; 0 = the baseline's final accuracy.")
  eval_every: int = setting(50, "Evaluate every N steps (the resolution of \"iterations to target\").")
  seed: int = setting(0, "Seed.")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if self.range_max_lr <= self.range_min_lr:
      raise ValueError(f"--range_max_lr={self.range_max_lr:g} must exceed --range_min_lr={self.range_min_lr:g}")
    if not self.onecycle_steps or min(self.onecycle_steps) <= 0:
      raise ValueError(f"--onecycle_steps must be one or more positive iteration counts, got {self.onecycle_steps}")
    if any(lr < 0 for lr in self.step_extra_lrs):
      raise ValueError(f"--step_extra_lrs must be >= 0 (0 = the one-cycle peak LR), got {list(self.step_extra_lrs)}")
    if self.onecycle_max_lr < 0:
      raise ValueError(f"--onecycle_max_lr must be >= 0 (0 = the range test's suggestion), got {self.onecycle_max_lr}")
    if not 0 <= self.target_accuracy <= 1:
      raise ValueError(f"--target_accuracy must be in [0, 1] (0 = the baseline's final accuracy), "
                       f"got {self.target_accuracy}")
    if self.num_classes_subset < 0:
      raise ValueError(f"--num_classes_subset must be >= 0 (0 = all classes), got {self.num_classes_subset}")
    if not isinstance(self.model_kwargs, Mapping):
      raise ValueError(f"--model_kwargs must be a JSON object, got {self.model_kwargs!r}")


def _classify_config(cfg: SuperConvergenceConfig, **kw) -> classify.ClassifyConfig:
  """A `shapes` classification run of ``cfg``'s model and optimizer; ``kw``: the schedule fields."""
  return classify.ClassifyConfig(model=cfg.model, model_kwargs=dict(cfg.model_kwargs), dataset="shapes",
                                 data_dir=cfg.data_dir, batch_size=cfg.batch_size, eval_batch_size=0,
                                 weight_decay=cfg.weight_decay, momentum=cfg.momentum, optimizer="nesterov",
                                 num_classes_subset=cfg.num_classes_subset, seed=cfg.seed, log_every=10,
                                 progress_bar=False, **kw)


def _range_test(cfg: SuperConvergenceConfig, workdir: str) -> dict[str, Any]:
  """Summary of the LR range test (Smith & Topin §3), run once and then read from ``lr_range_test.json``."""
  path = os.path.join(workdir, "lr_range_test.json")
  if os.path.exists(path):
    with open(path) as f:
      return {k: v for k, v in json.load(f).items() if k not in ("lrs", "losses", "smoothed")}
  res = lr_finder.classify_range_test(_classify_config(cfg, num_steps=cfg.range_steps), min_lr=cfg.range_min_lr,
                                      max_lr=cfg.range_max_lr, num_steps=cfg.range_steps, divisor=cfg.range_divisor)
  lr_finder.plot(res, os.path.join(workdir, "lr_range_test.png"),
                 title=f"LR range test: {cfg.model} on shapes ({cfg.num_classes_subset or 100} classes)")
  lr_finder.write_json(res, path)
  return res.summary()


def run(cfg: SuperConvergenceConfig, workdir: str) -> dict[str, Any]:
  """Range test, step baseline and one-cycle runs (Smith & Topin 2017, §4: iterations to the baseline's accuracy).

  Returns the summary (also ``workdir/summary.json``): ``lr_range_test``, ``onecycle_max_lr``, ``target_accuracy``,
  ``runs`` (per run: schedule, peak LR, iterations, final/best accuracy, ``steps_to_target``, eval ``curve``).
  """
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  rt_summary = _range_test(cfg, workdir)
  max_lr = cfg.onecycle_max_lr or rt_summary["suggested_max_lr"]

  n = cfg.step_steps
  runs = {}
  for lr in (cfg.step_lr,) + tuple(lr or max_lr for lr in cfg.step_extra_lrs):  # the first defines the target
    runs.setdefault(f"step_lr{lr:.3g}_{n}", _classify_config(cfg, num_steps=n, learning_rate=lr, schedule="step",
                                                             eval_every=cfg.eval_every, checkpoint_every=n))
  for s in cfg.onecycle_steps:
    runs[f"onecycle_lr{max_lr:.3g}_{s}"] = _classify_config(cfg, num_steps=s, learning_rate=max_lr,
                                                            schedule="onecycle", eval_every=cfg.eval_every,
                                                            checkpoint_every=s)
  rows = []
  for name, ccfg in runs.items():
    wd = os.path.join(workdir, name)
    res = classify.finished_results(wd, ccfg.num_steps) or classify.train_and_evaluate(ccfg, wd)
    curve = classify.eval_curve(wd)
    rows.append({"name": name, "schedule": ccfg.schedule, "peak_lr": ccfg.learning_rate,
                 "num_steps": ccfg.num_steps, "final_accuracy": res["eval_accuracy"],
                 "best_accuracy": max(a for _, a in curve), "train_seconds": res["train_seconds"], "curve": curve})
  target = cfg.target_accuracy or rows[0]["final_accuracy"]
  for r in rows:
    r["steps_to_target"] = classify.steps_to_accuracy(r["curve"], target)
  summary = {"lr_range_test": rt_summary, "onecycle_max_lr": max_lr, "target_accuracy": target,
             "target_rule": "--target_accuracy" if cfg.target_accuracy else "baseline final accuracy",
             "runs": rows, "wall_seconds": time.time() - t0, "model": cfg.model,
             "model_kwargs": json.dumps(dict(cfg.model_kwargs)), "num_classes": cfg.num_classes_subset or 100,
             "batch_size": cfg.batch_size}
  reporting.write_summary(workdir, summary)
  _write_markdown(summary, os.path.join(workdir, "summary.md"))
  reporting.line_plot(os.path.join(workdir, "curves.png"), {r["name"]: tuple(zip(*r["curve"])) for r in rows},
                      xlabel="iteration", ylabel="eval accuracy", markersize=3, legend_fontsize=8,
                      hline=(target, f"target {target:.3f}"))
  return summary


def _write_markdown(summary: dict[str, Any], path: str) -> None:
  rt = summary["lr_range_test"]
  head = (f"LR range test: min-loss LR {rt['lr_min_loss']:.3g}, suggested max LR {rt['suggested_max_lr']:.3g} "
          f"(rule: {rt['rule']}, divisor {rt['divisor']:g}); target accuracy {summary['target_accuracy']:.4f} "
          f"({summary['target_rule']})")
  table = reporting.markdown_table(
      ["run", "schedule", "peak LR", "iterations", "final acc", "best acc", "iterations to target", "train s"],
      [[r["name"], r["schedule"], f"{r['peak_lr']:.3g}", r["num_steps"], f"{r['final_accuracy']:.4f}",
        f"{r['best_accuracy']:.4f}", r["steps_to_target"] or "not reached", f"{r['train_seconds']:.0f}"]
       for r in summary["runs"]])
  reporting.write_markdown(path, head, table)
