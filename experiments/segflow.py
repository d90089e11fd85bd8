r"""SegFlow (Cheng et al., ICCV 2017): joint video object segmentation and optical flow on ``shapes_video`` pairs.

  python -m experiments.segflow --flagfile=experiments/configs/segflow_smoke.flags
  python -m experiments.segflow --flagfile=experiments/configs/segflow.flags
  python -m experiments.segflow --methods=segflow,segflow_iterative --seeds=0,1 --num_steps=800

The library is ``research.methods.segflow_experiment`` (driver), ``research.train.segflow`` (task, pair batches,
losses, metrics), ``research.models.segmentation.segflow`` (network) and ``research.data.video`` (dataset); this
script parses the flags and calls ``segflow_experiment.run``. Writes ``<workdir>/<method>_seed<s>/`` per run,
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.segflow_experiment import SegFlowConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``SegFlowConfig``."""
  workdir: str = setting("/tmp/research/segflow", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.segflow``: one per ``SegFlowConfig`` field, ``--workdir`` and the alias
  ``--method``."""
  common.define_flags(SegFlowConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  flags.DEFINE_alias("method", "methods", flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> SegFlowConfig:
  """The ``SegFlowConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(SegFlowConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import segflow_experiment
    return segflow_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
