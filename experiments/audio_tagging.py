r"""Raw-waveform audio tagging with mix-training (1-D + 2-D ResNet with multi-level attention) vs mixup and none.

  python -m experiments.audio_tagging --flagfile=experiments/configs/audio_tagging_smoke.flags
  python -m experiments.audio_tagging --flagfile=experiments/configs/audio_tagging.flags
  python -m experiments.audio_tagging --dataset=MY_DATASET --data_dir=DIR --augments=none,mix_training

The library is ``research.methods.audio_tagging_experiment`` (driver), ``research.train.audio_tagging`` (task,
mixup, mix-training), ``research.train.audio_metrics`` (mAP, ROC-AUC), ``research.models.sequence.audio``
(``wave_resnet``) and ``research.data.audio`` (the offline ``audio_events`` corpus, TFDS audio reader); this script
parses the flags and calls ``audio_tagging_experiment.run``. Writes ``<workdir>/<augment>_seed<s>/`` per run,
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.audio_tagging_experiment import AudioTaggingConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``AudioTaggingConfig``."""
  workdir: str = setting("/tmp/research/audio_tagging", "Output directory (finished runs are kept and not trained "
                         "again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.audio_tagging``: one per ``AudioTaggingConfig`` field and ``--workdir``."""
  common.define_flags(AudioTaggingConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> AudioTaggingConfig:
  """The ``AudioTaggingConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(AudioTaggingConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import audio_tagging_experiment
    return audio_tagging_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
