r"""Doctor2Vec (Biswal et al., "Doctor2Vec: Dynamic Doctor Representation Learning for Clinical Trial Recruitment",
AAAI 2020) vs a mean-of-patients doctor vector and a ridge regression, on unseen clinical trials.

  python -m experiments.doctor2vec --flagfile=experiments/configs/doctor2vec_smoke.flags
  python -m experiments.doctor2vec --flagfile=experiments/configs/doctor2vec.flags

The library is ``research.methods.doctor2vec_experiment`` (driver), ``research.train.doctor2vec`` (task, pair
batches, metrics, ridge baseline), ``research.models.sequence.doctor2vec`` (model) and ``research.data.doctors``
(the offline ``patient_visits`` corpus); this script parses the flags and calls ``doctor2vec_experiment.run``.
Writes ``<workdir>/<method>_seed<s>/`` per run, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.doctor2vec_experiment import Doctor2VecConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``Doctor2VecConfig``."""
  workdir: str = setting("/tmp/research/doctor2vec", "Output directory (finished runs are kept and not trained "
                         "again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.doctor2vec``: one per ``Doctor2VecConfig`` field and ``--workdir``."""
  common.define_flags(Doctor2VecConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> Doctor2VecConfig:
  """The ``Doctor2VecConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(Doctor2VecConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import doctor2vec_experiment
    return doctor2vec_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
