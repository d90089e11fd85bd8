r"""Large-minibatch SGD (Goyal et al. 2017; seed 003 §17.8): accuracy vs global batch size, with and without
the recipe, on simulated CPU devices.

  python -m experiments.large_minibatch --flagfile=experiments/configs/large_minibatch_smoke.flags
  python -m experiments.large_minibatch --flagfile=experiments/configs/large_minibatch.flags

For every global batch size B in ``--batch_sizes`` and the same number of epochs (so larger B = fewer
iterations), two runs of a post-activation ResNet over ``--num_devices`` simulated devices (per-device BN, the
loss normalised by the global batch):
  * ``no_recipe``: the small-batch LR ``--learning_rate`` unchanged, no warmup, BN γ = 1 everywhere;
  * ``linear_warmup``: Linear Scaling Rule (LR = ``--learning_rate`` · B / ``--base_batch_size``) and gradual
    warmup over ``--warmup_epochs`` from the small-batch LR (``warmup_init = base/B``), BN γ = 1;
  * ``recipe``: ``linear_warmup`` plus zero-init γ of each residual block's last BN.
All exclude BN γ/β and biases from weight decay.
Writes ``summary.json``, ``summary.md`` and ``accuracy_vs_batch.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/large_minibatch", "Output directory (runs resume).")
flags.DEFINE_integer("num_devices", 4, "Simulated CPU devices (set before JAX starts).")
flags.DEFINE_string("model", "resnet18", "Post-activation ResNet (has zero_init_last_bn).")
flags.DEFINE_string("model_kwargs", '{"width": 16}', "JSON dict of model arguments.")
flags.DEFINE_integer("num_classes_subset", 10, "Classes of `shapes` used (label < N; 0 = all 100).")
flags.DEFINE_list("batch_sizes", ["32", "128", "512"], "Global batch sizes.")
flags.DEFINE_integer("base_batch_size", 32, "Batch size at which --learning_rate is tuned (k = B / this).")
flags.DEFINE_float("learning_rate", 0.05, "LR for --base_batch_size.")
flags.DEFINE_float("epochs", 10.0, "Training epochs for every batch size.")
flags.DEFINE_float("warmup_epochs", 2.0, "Gradual warmup length (recipe runs).")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (not on BN/bias).")
flags.DEFINE_list("conditions", ["no_recipe", "linear_warmup", "recipe"], "Which runs per batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")

CONDITIONS = ("no_recipe", "linear_warmup", "recipe")


def run(workdir: str) -> dict:
  import jax
  from research.train import classify
  from research.train.classify import ClassifyConfig
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  for c in FLAGS.conditions:
    if c not in CONDITIONS:
      raise ValueError(f"--conditions: unknown {c!r}; choose from {CONDITIONS}")
  base = ClassifyConfig(model=FLAGS.model, model_kwargs=json.loads(FLAGS.model_kwargs), dataset="shapes",
                        data_dir=FLAGS.data_dir, num_classes_subset=FLAGS.num_classes_subset,
                        learning_rate=FLAGS.learning_rate, base_batch_size=FLAGS.base_batch_size,
                        weight_decay=FLAGS.weight_decay, optimizer="nesterov", schedule="step",
                        seed=FLAGS.seed, progress_bar=False, log_every=10)
  spec, train_source, _ = classify.prepare_data(base)
  rows = []
  for b in (int(x) for x in FLAGS.batch_sizes):
    num_steps = max(1, round(FLAGS.epochs * len(train_source) / b))
    warmup = round(FLAGS.warmup_epochs * len(train_source) / b)
    for cond in FLAGS.conditions:
      if cond in ("linear_warmup", "recipe"):
        cfg = dataclasses.replace(base, batch_size=b, num_steps=num_steps, lr_scaling="linear",
                                  warmup_steps=min(warmup, num_steps - 1),
                                  warmup_init=min(1.0, FLAGS.base_batch_size / b),
                                  zero_init_residual=cond == "recipe")
      else:
        cfg = dataclasses.replace(base, batch_size=b, num_steps=num_steps)
      cfg = dataclasses.replace(cfg, eval_every=num_steps, checkpoint_every=num_steps)
      wd = os.path.join(workdir, f"{cond}_b{b}")
      res = classify.finished_results(wd, num_steps) or classify.train_and_evaluate(cfg, wd)
      rows.append({"condition": cond, "batch_size": b, "num_steps": num_steps,
                   "peak_lr": classify.effective_learning_rate(cfg), "warmup_steps": cfg.warmup_steps,
                   "zero_init_residual": cfg.zero_init_residual, "eval_accuracy": res["eval_accuracy"],
                   "final_train_loss": res["final_train_loss"], "train_seconds": res["train_seconds"]})
  summary = {"runs": rows, "num_devices": jax.device_count(), "epochs": FLAGS.epochs,
             "num_train": len(train_source), "num_classes": spec.num_classes, "model": FLAGS.model,
             "model_kwargs": FLAGS.model_kwargs, "base_batch_size": FLAGS.base_batch_size,
             "base_learning_rate": FLAGS.learning_rate, "wall_seconds": time.time() - t0}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  lines = ["| global batch | condition | iterations | peak LR | warmup it | zero-init γ | eval acc | train s |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['batch_size']} | {r['condition']} | {r['num_steps']} | {r['peak_lr']:.3g} | "
                 f"{r['warmup_steps']} | {r['zero_init_residual']} | {r['eval_accuracy']:.4f} | "
                 f"{r['train_seconds']:.0f} |")
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _plot(rows, os.path.join(workdir, "accuracy_vs_batch.png"))
  return summary


def _plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for cond in CONDITIONS:
    pts = [(r["batch_size"], r["eval_accuracy"]) for r in rows if r["condition"] == cond]
    if pts:
      x, y = zip(*pts)
      ax.plot(x, y, marker="o", label=cond)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("global batch size")
  ax.set_ylabel("eval accuracy")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  jax.config.update("jax_num_cpu_devices", FLAGS.num_devices)
  common.setup()
  with common.clean_errors():
    summary = run(FLAGS.workdir)
  print(open(os.path.join(FLAGS.workdir, "summary.md")).read())
  print(f"results: {FLAGS.workdir}/summary.json  devices {summary['num_devices']}  "
        f"wall {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
  app.run(main)
