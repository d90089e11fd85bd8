r"""Large-minibatch SGD (Goyal et al. 2017; seed 003 §17.8): accuracy vs global batch size, with and without
the recipe, on simulated CPU devices.

  python -m experiments.large_minibatch --flagfile=experiments/configs/large_minibatch_smoke.flags
  python -m experiments.large_minibatch --flagfile=experiments/configs/large_minibatch.flags

For every global batch size B in ``--batch_sizes`` and the same number of epochs (so larger B = fewer
iterations), one run per ``--conditions`` entry of a post-activation ResNet over k = B / ``--per_device_batch``
simulated devices (the paper's k workers of n examples: per-worker BN over n examples at every B, the loss
normalised by the global batch; ``--num_devices`` must be at least the largest k):
  * ``no_recipe``: the small-batch LR ``--learning_rate`` unchanged, no warmup, BN γ = 1 everywhere;
  * ``linear_warmup``: Linear Scaling Rule (LR = ``--learning_rate`` · B / ``--base_batch_size``) and gradual
    warmup over ``--warmup_epochs`` from the small-batch LR (``warmup_init = base/B``), BN γ = 1;
  * ``recipe``: ``linear_warmup`` plus zero-init γ of each residual block's last BN.
All exclude BN γ/β and biases from weight decay.
Writes ``summary.json``, ``summary.md`` and ``accuracy_vs_batch.png``; the experiment itself is
``research.methods.large_minibatch``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.large_minibatch import LargeMinibatchConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``LargeMinibatchConfig``."""
  workdir: str = setting("/tmp/research/large_minibatch", "Output directory (runs resume).")
  num_devices: int = setting(16, "Simulated CPU devices (set before JAX starts); >= max batch / n.")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.large_minibatch``: one per ``LargeMinibatchConfig`` field (its name, default and
  help), and ``--workdir``, ``--num_devices``."""
  common.define_flags(LargeMinibatchConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> LargeMinibatchConfig:
  """The ``LargeMinibatchConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(LargeMinibatchConfig, flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run_flags = common.config_from_flags(ExperimentFlags)
  import jax
  jax.config.update("jax_num_cpu_devices", run_flags.num_devices)
  common.setup()
  from research.methods import large_minibatch
  with common.clean_errors():
    summary = large_minibatch.run(config_from_flags(), run_flags.workdir)
  common.print_markdown_summary(run_flags.workdir, summary, extra=f"devices {summary['num_devices']}  ")


if __name__ == "__main__":
  app.run(main)
