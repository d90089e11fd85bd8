r"""Super-convergence (Smith & Topin 2017; seed 003 §1.1): LR range test, then one-cycle vs a step schedule.

  python -m experiments.super_convergence --flagfile=experiments/configs/super_convergence_smoke.flags
  python -m experiments.super_convergence --flagfile=experiments/configs/super_convergence.flags

1. LR range test (``research.train.lr_finder``): exponential LR ramp, loss vs LR plot ``lr_range_test.png``,
   suggested maximum LR by the documented rule.
2. Baseline: piecewise-constant "step" schedule (LR ×0.1 at 50% and 75% of ``--step_steps``) at
   ``--step_lr``, the standard ResNet recipe.
3. One cycle (``--schedule=onecycle``, peak = the suggested max LR unless ``--onecycle_max_lr``) for each
   budget in ``--onecycle_steps``.
The target accuracy is ``--target_accuracy`` or, when 0, the baseline's final eval accuracy; the experiment
reports the iterations each run needed to reach it (first evaluation at or above it), ``summary.json``,
``summary.md`` and ``curves.png``. Every run is an ``experiments.classify`` run in ``workdir/<name>`` (resumable).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/super_convergence", "Output directory (runs resume).")
flags.DEFINE_string("model", "resnet18", "Registered model name.")
flags.DEFINE_string("model_kwargs", '{"width": 16}', "JSON dict of model arguments.")
flags.DEFINE_integer("num_classes_subset", 20, "Classes of `shapes` used (label < N; 0 = all 100).")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay (Smith & Topin: large LRs regularise; they use 1e-4).")
flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.")
flags.DEFINE_float("range_min_lr", 1e-3, "LR range test start.")
flags.DEFINE_float("range_max_lr", 10.0, "LR range test end.")
flags.DEFINE_integer("range_steps", 100, "LR range test steps.")
flags.DEFINE_float("range_divisor", 3.0, "suggested max LR = LR at the smoothed-loss minimum / this.")
flags.DEFINE_float("step_lr", 0.1, "Baseline step schedule LR.")
flags.DEFINE_integer("step_steps", 800, "Baseline step schedule iterations.")
flags.DEFINE_list("onecycle_steps", ["200", "400"], "One-cycle budgets (iterations).")
flags.DEFINE_float("onecycle_max_lr", 0.0, "One-cycle peak LR; 0 = the range test's suggestion.")
flags.DEFINE_float("target_accuracy", 0.0, "Target eval accuracy; 0 = the baseline's final accuracy.")
flags.DEFINE_integer("eval_every", 50, "Evaluate every N steps.")
flags.DEFINE_integer("seed", 0, "Seed.")


def base_config(**kw):
  from research.train.classify import ClassifyConfig
  model_kwargs = json.loads(FLAGS.model_kwargs)
  return ClassifyConfig(model=FLAGS.model, model_kwargs=model_kwargs, dataset="shapes", data_dir=FLAGS.data_dir,
                        batch_size=FLAGS.batch_size, eval_batch_size=0, weight_decay=FLAGS.weight_decay,
                        momentum=FLAGS.momentum, optimizer="nesterov", num_classes_subset=FLAGS.num_classes_subset,
                        seed=FLAGS.seed, log_every=10, progress_bar=False, **kw)


def run(workdir: str) -> dict:
  from research.train import classify, lr_finder
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  range_path = os.path.join(workdir, "lr_range_test.json")
  if os.path.exists(range_path):
    with open(range_path) as f:
      rt = json.load(f)
    rt_summary = {k: v for k, v in rt.items() if k not in ("lrs", "losses", "smoothed")}
  else:
    res = lr_finder.classify_range_test(base_config(num_steps=FLAGS.range_steps), min_lr=FLAGS.range_min_lr,
                                        max_lr=FLAGS.range_max_lr, num_steps=FLAGS.range_steps,
                                        divisor=FLAGS.range_divisor)
    lr_finder.plot(res, os.path.join(workdir, "lr_range_test.png"),
                   title=f"LR range test: {FLAGS.model} on shapes ({FLAGS.num_classes_subset or 100} classes)")
    lr_finder.write_json(res, range_path)
    rt_summary = res.summary()
  max_lr = FLAGS.onecycle_max_lr or rt_summary["suggested_max_lr"]

  runs = {}
  n = FLAGS.step_steps
  cfg = base_config(num_steps=n, learning_rate=FLAGS.step_lr, schedule="step", eval_every=FLAGS.eval_every,
                    checkpoint_every=n)
  runs[f"step_lr{FLAGS.step_lr:g}_{n}"] = cfg
  for s in FLAGS.onecycle_steps:
    s = int(s)
    runs[f"onecycle_lr{max_lr:.3g}_{s}"] = base_config(num_steps=s, learning_rate=max_lr, schedule="onecycle",
                                                       eval_every=FLAGS.eval_every, checkpoint_every=s)
  rows = []
  for name, cfg in runs.items():
    wd = os.path.join(workdir, name)
    res = classify.finished_results(wd, cfg.num_steps) or classify.train_and_evaluate(cfg, wd)
    rows.append({"name": name, "schedule": cfg.schedule, "peak_lr": cfg.learning_rate, "num_steps": cfg.num_steps,
                 "final_accuracy": res["eval_accuracy"], "best_accuracy": max(a for _, a in classify.eval_curve(wd)),
                 "train_seconds": res["train_seconds"], "curve": classify.eval_curve(wd)})
  target = FLAGS.target_accuracy or rows[0]["final_accuracy"]
  for r in rows:
    r["steps_to_target"] = classify.steps_to_accuracy(r["curve"], target)
  summary = {"lr_range_test": rt_summary, "onecycle_max_lr": max_lr, "target_accuracy": target,
             "target_rule": "--target_accuracy" if FLAGS.target_accuracy else "baseline final accuracy",
             "runs": rows, "wall_seconds": time.time() - t0, "model": FLAGS.model,
             "model_kwargs": FLAGS.model_kwargs, "num_classes": FLAGS.num_classes_subset or 100,
             "batch_size": FLAGS.batch_size}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _write_markdown(summary, os.path.join(workdir, "summary.md"))
  _plot_curves(rows, target, os.path.join(workdir, "curves.png"))
  return summary


def _write_markdown(summary: dict, path: str) -> None:
  rt = summary["lr_range_test"]
  lines = [f"LR range test: min-loss LR {rt['lr_min_loss']:.3g}, suggested max LR {rt['suggested_max_lr']:.3g} "
           f"(rule: {rt['rule']}, divisor {rt['divisor']:g}); target accuracy {summary['target_accuracy']:.4f} "
           f"({summary['target_rule']})", "",
           "| run | schedule | peak LR | iterations | final acc | best acc | iterations to target | train s |",
           "|---|---|---|---|---|---|---|---|"]
  for r in summary["runs"]:
    lines.append(f"| {r['name']} | {r['schedule']} | {r['peak_lr']:.3g} | {r['num_steps']} | "
                 f"{r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} | {r['steps_to_target'] or 'not reached'} | "
                 f"{r['train_seconds']:.0f} |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _plot_curves(rows, target, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    s, a = zip(*r["curve"])
    ax.plot(s, a, marker="o", ms=3, label=r["name"])
  ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.3f}")
  ax.set_xlabel("iteration")
  ax.set_ylabel("eval accuracy")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  with common.clean_errors():
    summary = run(FLAGS.workdir)
  print(open(os.path.join(FLAGS.workdir, "summary.md")).read())
  print(f"results: {FLAGS.workdir}/summary.json  wall {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
  app.run(main)
