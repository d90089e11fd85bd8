r"""EDIT: exemplar-guided multi-domain image-to-image translation (issue 15, seed 000: "Exemplar-Domain aware
Image-to-image Translation") on ``shapes_styles`` (one layout rendered flat / sketch / texture).

  python -m experiments.edit --flagfile=experiments/configs/edit_smoke.flags
  python -m experiments.edit --flagfile=experiments/configs/edit.flags
  python -m experiments.edit --data_config=32 --num_steps=3000 --adv_loss=nsgan --seeds=0,1

The library is ``research.methods.edit_experiment`` (driver, domain classifier, metrics), ``research.train.edit``
(the two-optimizer ``EDITTask``, unpaired batches, paired evaluation), ``research.models.generative.edit`` (nets)
and ``research.data.styles`` (data); this script parses the flags and calls ``run``.
Writes ``<workdir>/seed<s>/`` per run (``samples.png``: input, exemplar, output, ground truth), ``summary.json``,
``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.edit_experiment import EDITConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``EDITConfig``."""
  workdir: str = setting("/tmp/research/edit", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.edit``: one per ``EDITConfig`` field and ``--workdir``."""
  common.define_flags(EDITConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> EDITConfig:
  """The ``EDITConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(EDITConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import edit_experiment
    return edit_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
