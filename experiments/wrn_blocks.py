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
Writes ``summary.json`` and ``summary.md``; the experiment, the table and its params column are
``research.methods.wrn_blocks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from absl import app, flags

from experiments import common

if TYPE_CHECKING:
  from research.methods import wrn_blocks

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


def config_from_flags() -> wrn_blocks.WRNBlocksConfig:
  from research.methods import wrn_blocks
  return wrn_blocks.WRNBlocksConfig(
      data_dir=FLAGS.data_dir, block_types=tuple(FLAGS.block_types), train_k=FLAGS.train_k,
      depth_offset=FLAGS.depth_offset, num_classes_subset=FLAGS.num_classes_subset, num_steps=FLAGS.num_steps,
      batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, warmup_steps=FLAGS.warmup_steps,
      weight_decay=FLAGS.weight_decay, seed=FLAGS.seed, params_only=FLAGS.params_only)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods import wrn_blocks
  with common.clean_errors():
    summary = wrn_blocks.run(config_from_flags(), FLAGS.workdir)
  common.print_markdown_summary(FLAGS.workdir, summary)


if __name__ == "__main__":
  app.run(main)
