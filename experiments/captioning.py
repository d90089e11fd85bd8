r"""Image captioning with two-stream attention and the sentence auto-encoder (Goel et al. 2019) on the offline
``shapes_captions`` images.

  python -m experiments.captioning --flagfile=experiments/configs/captioning_smoke.flags
  python -m experiments.captioning --flagfile=experiments/configs/captioning.flags
  python -m experiments.captioning --rows=soft,two_stream --seeds=0 --num_steps=1000

The library is ``research.methods.captioning_experiment`` (driver), ``research.train.captioning`` (tasks, caption
data), ``research.train.caption_metrics`` (BLEU-4, CIDEr-D), ``research.models.sequence.captioning`` (encoder,
attention decoders, sentence auto-encoder, greedy / beam search) and ``research.data.captions`` (dataset); this
script parses the flags and calls ``captioning_experiment.run``. Writes ``<workdir>/<row>_seed<s>/`` per run,
``sae_seed<s>/``, ``summary.json``, ``summary.md`` and ``captioning_examples.png``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.captioning_experiment import CaptioningConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``CaptioningConfig``."""
  workdir: str = setting("/tmp/research/captioning", "Output directory (finished runs are kept and not trained "
                         "again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.captioning``: one per ``CaptioningConfig`` field and ``--workdir``."""
  common.define_flags(CaptioningConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> CaptioningConfig:
  """The ``CaptioningConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(CaptioningConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import captioning_experiment
    return captioning_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
