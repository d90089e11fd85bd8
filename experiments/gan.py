r"""GAN, WGAN, WGAN-GP, BEGAN and conditional GANs (seed 003 §16) on real handwritten digits and 2-D mixtures.

  python -m experiments.gan --flagfile=experiments/configs/gan_smoke.flags
  python -m experiments.gan --flagfile=experiments/configs/gan.flags            # tracking + clipping vs GP
  python -m experiments.gan --flagfile=experiments/configs/gan_began.flags      # BEGAN's gamma
  python -m experiments.gan --flagfile=experiments/configs/gan_mixture.flags    # mode coverage on ring8
  python -m experiments.gan --flagfile=experiments/configs/gan_conditional.flags
  python -m experiments.gan --loss=wgan_gp --dataset=digits --image_size=16 --num_steps=2000

The library is ``research.methods.generative_experiment`` (driver, feature network, sample metrics),
``research.train.generative`` (the two-optimizer ``GANTask``), ``research.models.generative`` (nets) and
``research.data.digits`` / ``research.data.mixtures`` (data); this script parses the flags and calls ``run_gan``.
Writes ``<workdir>/<loss>[_cond][_gamma<g>]_seed<s>/`` per run, ``summary.json``, ``summary.md``, ``curves.png``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.generative_experiment import GANConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``GANConfig``."""
  workdir: str = setting("/tmp/research/gan", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.gan``: one per ``GANConfig`` field, ``--workdir`` and ``--loss`` (= ``--losses``)."""
  common.define_flags(GANConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  if "loss" not in flag_values:
    flags.DEFINE_alias("loss", "losses", flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> GANConfig:
  """The ``GANConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(GANConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import generative_experiment
    return generative_experiment.run_gan(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
