r"""Semi-supervised node classification (Kipf & Welling 2017; Defferrard et al. 2016): GCN vs ChebNet vs MLP.

  python -m experiments.gcn --flagfile=experiments/configs/gcn_smoke.flags
  python -m experiments.gcn --flagfile=experiments/configs/gcn.flags
  python -m experiments.gcn --models=chebnet --K=3 --dataset=npz:/path/my_graph.npz

Trains each model of ``--models`` (ChebNet once per ``--K``) for every seed of ``--seeds`` through the one training
loop (``research.methods.gcn_experiment``); writes ``<workdir>/<model>/seed<k>/results.json`` (``test_accuracy``),
``summary.json`` and ``summary.md``. Finished runs are reused; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.gcn_experiment import GCNConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``GCNConfig``."""
  workdir: str = setting("/tmp/research/gcn", "Output directory (finished runs are kept).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  common.define_flags(GCNConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  if "model" not in flag_values:  # --model=gcn reads as well (unless another experiment's --model is loaded)
    flags.DEFINE_alias("model", "models", flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> GCNConfig:
  """The ``GCNConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(GCNConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import gcn_experiment
    return gcn_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
