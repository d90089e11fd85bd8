r"""Recurrent cells (Elman, LSTM, peephole LSTM, GRU, SRU) on a long-range memory task, and their speed.

  python -m experiments.rnn_cells --flagfile=experiments/configs/rnn_cells_smoke.flags
  python -m experiments.rnn_cells --flagfile=experiments/configs/rnn_cells.flags
  python -m experiments.rnn_cells --cells=lstm,elman --delays=50,200 --seeds=0,1 --num_steps=1000

The library is ``research.methods.rnn_cells_experiment`` (driver), ``research.train.sequence_memory`` (the
copy/recall data and task), ``research.models.sequence.recall_rnn`` (network) and ``research.layers.recurrent``
(cells, layers); this script parses the flags and calls ``rnn_cells_experiment.run``. Writes
``<workdir>/<cell>_T<delay>_seed<s>/`` per run, ``summary.json``, ``summary.md`` and ``accuracy_vs_delay.png``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.rnn_cells_experiment import RNNCellsConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``RNNCellsConfig``."""
  workdir: str = setting("/tmp/research/rnn_cells", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.rnn_cells``: one per ``RNNCellsConfig`` field and ``--workdir``."""
  common.define_flags(RNNCellsConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> RNNCellsConfig:
  """The ``RNNCellsConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(RNNCellsConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import rnn_cells_experiment
    return rnn_cells_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
