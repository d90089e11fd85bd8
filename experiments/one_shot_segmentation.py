r"""One-shot semantic segmentation (OSLSM, Shaban et al., BMVC 2017) on the offline ``shapes_scenes``.

  python -m experiments.one_shot_segmentation --flagfile=experiments/configs/one_shot_segmentation_smoke.flags
  python -m experiments.one_shot_segmentation --flagfile=experiments/configs/one_shot_segmentation.flags
  python -m experiments.one_shot_segmentation --flagfile=experiments/configs/one_shot_segmentation.flags \
      --folds=0,1,2,3 --seeds=0,1

The library is ``research.methods.one_shot_experiment`` (driver), ``research.train.one_shot`` (episodes, tasks,
baselines, metric) and ``research.models.segmentation.one_shot`` (the two-branch network); this script parses the
flags and calls ``one_shot_experiment.run``. Writes ``<workdir>/fold<f>_<method>_seed<s>/`` per run,
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.one_shot_experiment import OneShotConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``OneShotConfig``."""
  workdir: str = setting("/tmp/research/one_shot_segmentation",
                         "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.one_shot_segmentation``: one per ``OneShotConfig`` field, ``--workdir`` and the
  alias ``--fold`` (of ``--folds``)."""
  common.define_flags(OneShotConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  flags.DEFINE_alias("fold", "folds", flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> OneShotConfig:
  """The ``OneShotConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(OneShotConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import one_shot_experiment
    return one_shot_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
