r"""Super-convergence (Smith & Topin 2017; seed 003 §1.1): LR range test, then one-cycle vs a step schedule.

  python -m experiments.super_convergence --flagfile=experiments/configs/super_convergence_smoke.flags
  python -m experiments.super_convergence --flagfile=experiments/configs/super_convergence.flags

1. LR range test (``research.train.lr_finder``): exponential LR ramp, loss vs LR plot ``lr_range_test.png``,
   suggested maximum LR by the documented rule.
2. Baseline: piecewise-constant "step" schedule (LR ×0.1 at 50% and 75% of ``--step_steps``) at
   ``--step_lr``, the standard ResNet recipe.
3. One cycle (``--schedule=onecycle``, peak = the suggested max LR unless ``--onecycle_max_lr``) for each
   budget in ``--onecycle_steps``.
The target accuracy is ``--target_accuracy`` or, when 0, the baseline's final eval accuracy; the experiment
reports the iterations each run needed to reach it (first evaluation at or above it), ``summary.json``,
``summary.md`` and ``curves.png``. Every run is a classification run in ``workdir/<name>`` (resumable); the
experiment itself is ``research.methods.super_convergence``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.super_convergence import SuperConvergenceConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``SuperConvergenceConfig``."""
  workdir: str = setting("/tmp/research/super_convergence", "Output directory (runs resume).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.super_convergence``: one per ``SuperConvergenceConfig`` field (its name, default and
  help), and ``--workdir``."""
  common.define_flags(SuperConvergenceConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> SuperConvergenceConfig:
  """The ``SuperConvergenceConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(SuperConvergenceConfig, flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods import super_convergence
  workdir = common.config_from_flags(ExperimentFlags).workdir
  with common.clean_errors():
    summary = super_convergence.run(config_from_flags(), workdir)
  common.print_markdown_summary(workdir, summary)


if __name__ == "__main__":
  app.run(main)
