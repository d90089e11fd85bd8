r"""GLMNet, Graph Learning-Matching Network (Jiang et al. 2019; seed 001 Q6): ablations on synthetic keypoint pairs.

  python -m experiments.glmnet --flagfile=experiments/configs/glmnet_smoke.flags
  python -m experiments.glmnet --flagfile=experiments/configs/glmnet.flags
  python -m experiments.glmnet --graphs=learned,knn --convs=sharpen --constraint_weights=1 --seeds=0

Trains one GLMNet per variant and seed (one factor at a time from the base: learned graph, Laplacian sharpening,
constraint loss on; ``--grid=full`` for every combination) on the one training loop and reports the Hungarian
matching accuracy on a fixed eval set. Writes ``<workdir>/<variant>_s<seed>/results.json``, ``summary.json`` and
``summary.md``; finished runs are reused. The experiment is ``research.methods.glmnet_experiment.run_glmnet``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.glmnet_experiment import GLMNetConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``GLMNetConfig``."""
  workdir: str = setting("/tmp/research/glmnet", "Output directory (finished runs are reused).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.glmnet``: one per ``GLMNetConfig`` field, and ``--workdir``."""
  common.define_flags(GLMNetConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> GLMNetConfig:
  """The ``GLMNetConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(GLMNetConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import glmnet_experiment
    return glmnet_experiment.run_glmnet(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
