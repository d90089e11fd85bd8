r"""Classical algorithms of seed 003 (EM/GMM, HMM, RPCA, manifold learning, DCT/JPEG, KL/JS/Wasserstein, MDP and
TD learning, DPP) and Cnak (seed 000): each section's worked example on real or textbook data.

  python -m experiments.classical --flagfile=experiments/configs/classical_smoke.flags
  python -m experiments.classical --flagfile=experiments/configs/classical.flags
  python -m experiments.classical --algos=hmm,mdp          (--algo=hmm is the same flag)

The algorithms are pure JAX functions in ``research.classical``; the examples (data, figures, numbers) are
``research.methods.classical.<algo>``; this script parses the flags and runs them (see
``research.methods.classical.experiment``). Writes ``<workdir>/<algo>/*.png``, ``<workdir>/<algo>/result.json``,
``summary.json`` and ``summary.md``; a finished example is not run again (delete its directory to redo it).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.classical.experiment import ClassicalConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``ClassicalConfig``."""
  workdir: str = setting("/tmp/research/classical", "Output directory (finished examples are kept).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.classical``: one per ``ClassicalConfig`` field, and ``--workdir``."""
  common.define_flags(ClassicalConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  flags.DEFINE_alias("algo", "algos", flag_values=flag_values)  # --algo=hmm reads as well as --algos=hmm


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> ClassicalConfig:
  """The ``ClassicalConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(ClassicalConfig, flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods.classical import experiment
  from research.methods.classical._common import MissingExampleData
  with common.clean_errors():
    config = config_from_flags()
    workdir = common.config_from_flags(ExperimentFlags).workdir
    try:
      summary = experiment.run(config, workdir)
    except MissingExampleData as e:
      raise ValueError(str(e)) from e  # one "error:" line, exit 1
  common.print_markdown_summary(workdir, summary)


if __name__ == "__main__":
  app.run(main)
