r"""The variational auto-encoder (Kingma & Welling 2014; seed 003 §4) on scikit-learn's real handwritten digits:
ELBO and the importance-weighted bound (Burda et al. 2016) in nats, a 2-D latent-space plot, samples.

  python -m experiments.vae --flagfile=experiments/configs/vae_smoke.flags
  python -m experiments.vae --flagfile=experiments/configs/vae.flags
  python -m experiments.vae --latents=2,8,16 --num_steps=10000

The library is ``research.methods.generative_experiment.run_vae`` (driver), ``research.train.generative.VAETask``
and ``research.models.generative.vae``; writes ``<workdir>/latent<L>_seed<s>/`` per run (``latent_space.png`` for
L = 2, ``samples.png``), ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.generative_experiment import VAEConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``VAEConfig``."""
  workdir: str = setting("/tmp/research/vae", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.vae``: one per ``VAEConfig`` field and ``--workdir``."""
  common.define_flags(VAEConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> VAEConfig:
  return common.config_from_flags(VAEConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import generative_experiment
    return generative_experiment.run_vae(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
