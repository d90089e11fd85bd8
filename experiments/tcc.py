r"""Temporal Cycle Consistency (Dwibedi et al. 2019) on the offline ``shapes_video`` clips.

  python -m experiments.tcc --flagfile=experiments/configs/tcc_smoke.flags
  python -m experiments.tcc --flagfile=experiments/configs/tcc.flags
  python -m experiments.tcc --variant=classification --baseline=none --seeds=0,1 --num_steps=500

The library is ``research.methods.tcc_experiment`` (driver), ``research.train.tcc`` (tasks, evaluation),
``research.ops.tcc`` (losses, alignment metrics), ``research.models.sequence.tcc`` (network) and
``research.data.video`` (dataset); this script parses the flags and calls ``tcc_experiment.run``. Writes
``<workdir>/<variant>_seed<s>/`` per run, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.tcc_experiment import TCCConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``TCCConfig``."""
  workdir: str = setting("/tmp/research/tcc", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.tcc``: one per ``TCCConfig`` field, ``--workdir`` and the alias ``--variant``."""
  common.define_flags(TCCConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  flags.DEFINE_alias("variant", "variants", flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> TCCConfig:
  """The ``TCCConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(TCCConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import tcc_experiment
    return tcc_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
