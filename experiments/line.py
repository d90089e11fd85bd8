r"""LINE network embedding (Tang et al., WWW 2015): first vs second vs 1st+2nd order (seed 003).

  python -m experiments.line --flagfile=experiments/configs/line_smoke.flags
  python -m experiments.line --flagfile=experiments/configs/line.flags
  python -m experiments.line --dataset=karate --orders=first,second,both --dim=16 --num_steps=300 --seeds=0,1

Trains LINE of each order with edge sampling (alias table) + negative sampling through the one training loop,
then scores node classification (softmax logistic regression on a ``--train_fraction`` of the labelled nodes,
micro/macro-F1 on the rest) and link prediction (ROC-AUC of held-out edges). The library is
``research.methods.line_experiment.run_line``; this script parses the flags. Writes
``<workdir>/seed<s>/<order>/results.json``, ``summary.json`` and ``summary.md``; runs resume.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.line_experiment import LineConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``LineConfig``."""
  workdir: str = setting("/tmp/research/line", "Output directory (runs resume; finished runs are reused).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.line``: one per ``LineConfig`` field, and ``--workdir``."""
  common.define_flags(LineConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> LineConfig:
  """The ``LineConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(LineConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import line_experiment
    return line_experiment.run_line(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
