r"""PQ-NET (Wu et al., CVPR 2020): part auto-encoder + part Seq2Seq + latent WGAN-GP, trained end to end on the offline
``shapes3d_parts`` dataset (procedural chairs / tables / lamps with part labels), evaluated on its test split.

  python -m experiments.pqnet --flagfile=experiments/configs/pqnet_smoke.flags
  python -m experiments.pqnet --flagfile=experiments/configs/pqnet.flags
  python -m experiments.pqnet --data_config=default --ae_steps=3000 --seeds=0,1,2

The library is ``research.methods.pqnet_experiment`` (driver, metrics, renders), ``research.train.pqnet``
(``PartAETask``, ``Seq2SeqTask``, batches, sparse part assembly), ``research.train.generative.GANTask`` (the latent
GAN), ``research.models.generative.pqnet`` (nets) and ``research.data.parts3d`` (data); this script parses the flags
and calls ``run``. Writes ``<workdir>/seed<s>/`` per seed (loop workdirs ``part_ae/``, ``seq2seq/``,
``latent_gan/``; ``reconstructions.png``, ``samples.png``, ``interpolation.png``), ``summary.json``, ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.pqnet_experiment import PQNetConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``PQNetConfig``."""
  workdir: str = setting("/tmp/research/pqnet", "Output directory (finished seeds are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.pqnet``: one per ``PQNetConfig`` field and ``--workdir``."""
  common.define_flags(PQNetConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> PQNetConfig:
  """The ``PQNetConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(PQNetConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import pqnet_experiment
    return pqnet_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
