r"""Wide ResNet block types at equal parameter budget (Zagoruyko & Komodakis, BMVC 2016, Table 1; seed 001).

  python -m experiments.wrn_blocks --flagfile=experiments/configs/wrn_blocks_smoke.flags
  python -m experiments.wrn_blocks --flagfile=experiments/configs/wrn_blocks.flags

1. The params column: WRN-d-2 with 10 classes (CIFAR-10 head) for each (block type, depth) of the table,
   counted from ``research.models.cifar_resnet.wide_resnet`` (abstract init, no FLOPs) and compared with the
   published value rounded to 0.1M. The run fails (exit 1) if any row differs.
2. Reduced budget: each block type at the table's depth with widening ``--train_k`` (default 1: about
   1/4 of the parameters, the budgets stay equal across block types) trained on ``--num_classes_subset``
   classes of the offline ``shapes`` dataset for ``--num_steps`` iterations; eval accuracy, training time
   and throughput per block type (the paper's "time, s" column is per epoch on a GPU; ours is the whole
   reduced run on CPU).
Writes ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/wrn_blocks", "Output directory (runs resume).")
flags.DEFINE_list("block_types", ["1-3-1", "3-1", "1-3", "3-1-1", "3-3", "3-1-3"],
                  "Block types of the table to train, kernel sizes joined by '-'.")
flags.DEFINE_integer("train_k", 1, "Widening factor of the trained nets (the table's is 2).")
flags.DEFINE_integer("depth_offset", 0, "Subtract 6*N from every table depth for the trained nets (N blocks "
                     "fewer per stage; 0 = the table's depths).")
flags.DEFINE_integer("num_classes_subset", 10, "Classes of `shapes` used (label < N; 0 = all 100).")
flags.DEFINE_integer("num_steps", 100, "Training iterations per block type.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Peak LR (cosine schedule, Nesterov, as the WRN paper's SGD).")
flags.DEFINE_integer("warmup_steps", 10, "Linear warmup steps.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (the paper's 5e-4).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_bool("params_only", False, "Only reproduce the params column.")

# Zagoruyko & Komodakis 2016, Table 1 (WRN-d-2, CIFAR-10): block type, depth, # params (M), time (s), error (%).
TABLE = [((1, 3, 1), 40, 1.4, 85.8, 6.06), ((3, 1), 40, 1.2, 67.5, 5.78), ((1, 3), 40, 1.3, 72.2, 6.42),
         ((3, 1, 1), 40, 1.3, 82.2, 5.86), ((3, 3), 28, 1.5, 67.5, 5.73), ((3, 1, 3), 22, 1.1, 59.9, 5.78)]


def block_name(block_type) -> str:
  return "B(" + ",".join(str(k) for k in block_type) + ")"


def count_params(block_type, depth: int, k: int, num_classes: int) -> int:
  """Parameters of WRN-depth-k with blocks B(block_type), from an abstract init (no FLOPs)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from research.models.cifar_resnet import wide_resnet
  model = wide_resnet(depth, k, block_type=block_type, num_classes=num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


def params_column() -> list[dict]:
  rows = []
  for bt, depth, published, t, err in TABLE:
    n = count_params(bt, depth, 2, 10)
    rows.append({"block_type": block_name(bt), "depth": depth, "params": n, "params_M": round(n / 1e6, 1),
                 "published_M": published, "match": round(n / 1e6, 1) == published,
                 "paper_time_s": t, "paper_cifar10_error": err})
  return rows


def run(workdir: str) -> dict:
  from research.train import classify
  from research.train.classify import ClassifyConfig
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  table = params_column()
  summary = {"params_column": table, "all_match": all(r["match"] for r in table), "trained": []}
  if not FLAGS.params_only:
    wanted = {tuple(int(k) for k in b.split("-")) for b in FLAGS.block_types}
    unknown = wanted - {bt for bt, *_ in TABLE}
    if unknown:
      raise ValueError(f"--block_types: {sorted(unknown)} are not in the table {[bt for bt, *_ in TABLE]}")
    for bt, depth, _, _, err in TABLE:
      if bt not in wanted:
        continue
      d = depth - 6 * FLAGS.depth_offset
      if d <= 4:
        raise ValueError(f"--depth_offset={FLAGS.depth_offset} leaves depth {d} for {block_name(bt)}")
      name = f"wrn{d}_{FLAGS.train_k}_b{''.join(map(str, bt))}"
      cfg = ClassifyConfig(model=f"wrn{d}_{FLAGS.train_k}", model_kwargs={"block_type": list(bt)}, dataset="shapes",
                           data_dir=FLAGS.data_dir, num_classes_subset=FLAGS.num_classes_subset,
                           num_steps=FLAGS.num_steps, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                           schedule="cosine", warmup_steps=FLAGS.warmup_steps, weight_decay=FLAGS.weight_decay,
                           optimizer="nesterov", eval_every=FLAGS.num_steps, checkpoint_every=FLAGS.num_steps,
                           seed=FLAGS.seed, progress_bar=False, log_every=10)
      wd = os.path.join(workdir, name)
      res = classify.finished_results(wd, cfg.num_steps) or classify.train_and_evaluate(cfg, wd)
      summary["trained"].append({
          "block_type": block_name(bt), "depth": d, "k": FLAGS.train_k, "params": res["num_params"],
          "eval_accuracy": res["eval_accuracy"], "eval_error": 1 - res["eval_accuracy"],
          "train_seconds": res["train_seconds"], "images_per_second": res["steps_run"] * FLAGS.batch_size /
          max(res["train_seconds"], 1e-9) if res["steps_run"] else None,
          "paper_cifar10_error": err / 100})
  summary.update(wall_seconds=time.time() - t0, num_classes=FLAGS.num_classes_subset or 100,
                 num_steps=FLAGS.num_steps, batch_size=FLAGS.batch_size)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  lines = ["| block type | depth | params (ours, k=2, 10 classes) | params (paper) | match |", "|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['block_type']} | {r['depth']} | {r['params']:,} ({r['params_M']}M) | {r['published_M']}M | "
                 f"{'yes' if r['match'] else 'NO'} |")
  if summary["trained"]:
    lines += ["", f"| block type | depth | k | params | eval acc | train s | img/s | paper CIFAR-10 err |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["trained"]:
      ips = f"{r['images_per_second']:.0f}" if r["images_per_second"] else "-"
      lines.append(f"| {r['block_type']} | {r['depth']} | {r['k']} | {r['params']:,} | {r['eval_accuracy']:.4f} | "
                   f"{r['train_seconds']:.0f} | {ips} | {r['paper_cifar10_error']:.2%} |")
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  if not summary["all_match"]:
    bad = [f"{r['block_type']}@{r['depth']}: {r['params_M']}M vs {r['published_M']}M" for r in table if not r["match"]]
    raise ValueError(f"params column not reproduced: {bad}")
  return summary


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
