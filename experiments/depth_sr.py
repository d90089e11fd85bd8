r"""Colour-guided depth super-resolution (PAG-Net, Bansal et al. 2019) on the offline ``shapes_rgbd`` scenes.

  python -m experiments.depth_sr --flagfile=experiments/configs/depth_sr_smoke.flags
  python -m experiments.depth_sr --flagfile=experiments/configs/depth_sr.flags
  python -m experiments.depth_sr --scale=8 --model=pag_net --seeds=0,1 --num_steps=1000

The library is ``research.methods.depth_sr_experiment`` (driver), ``research.train.depth_sr`` (task, data
degradation, evaluation), ``research.models.segmentation.depth_sr`` (PAG-Net and its unguided twin) and
``research.data.rgbd`` (dataset); this script parses the flags and calls ``depth_sr_experiment.run``. Writes
``<workdir>/x<scale>_<model>_seed<s>/`` per run, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.depth_sr_experiment import DepthSRConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``DepthSRConfig``."""
  workdir: str = setting("/tmp/research/depth_sr", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.depth_sr``: one per ``DepthSRConfig`` field, ``--workdir`` and the aliases
  ``--scale`` (``--scales``) and ``--model`` (``--models``)."""
  common.define_flags(DepthSRConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  for alias, name in (("scale", "scales"), ("model", "models")):
    if alias not in flag_values:  # unless another experiment loaded in the same process defined it
      flags.DEFINE_alias(alias, name, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> DepthSRConfig:
  """The ``DepthSRConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(DepthSRConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import depth_sr_experiment
    return depth_sr_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
