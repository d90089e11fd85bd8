r"""Voice-face cross-modal matching and retrieval (seed 001 Q3): voice-anchored triplet loss vs contrastive loss.

  python -m experiments.voice_face --flagfile=experiments/configs/voice_face_smoke.flags
  python -m experiments.voice_face --flagfile=experiments/configs/voice_face.flags
  python -m experiments.voice_face --dataset=my_voice_face --data_dir=DIR   # features face, voice, identity

The library is ``research.methods.voice_face_experiment`` (driver), ``research.train.voice_face`` (task, identity
sampler, 1:2 matching and mAP), ``research.models.sequence.voice_face`` (face and voice CNN encoders) and
``research.data.voice_face`` (the offline ``voice_face`` corpus); this script parses the flags and calls
``voice_face_experiment.run``. Writes ``<workdir>/<loss>_seed<s>/`` per run, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.voice_face_experiment import VoiceFaceConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``VoiceFaceConfig``."""
  workdir: str = setting("/tmp/research/voice_face", "Output directory (finished runs are kept and not trained "
                         "again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.voice_face``: one per ``VoiceFaceConfig`` field and ``--workdir``."""
  common.define_flags(VoiceFaceConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> VoiceFaceConfig:
  """The ``VoiceFaceConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(VoiceFaceConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import voice_face_experiment
    return voice_face_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
