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

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.wrn_blocks import WRNBlocksConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``WRNBlocksConfig``."""
  workdir: str = setting("/tmp/research/wrn_blocks", "Output directory (runs resume).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.wrn_blocks``: one per ``WRNBlocksConfig`` field (its name, default and
  help), and ``--workdir``."""
  common.define_flags(WRNBlocksConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> WRNBlocksConfig:
  """The ``WRNBlocksConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(WRNBlocksConfig, flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods import wrn_blocks
  workdir = common.config_from_flags(ExperimentFlags).workdir
  with common.clean_errors():
    summary = wrn_blocks.run(config_from_flags(), workdir)
  common.print_markdown_summary(workdir, summary)


if __name__ == "__main__":
  app.run(main)
