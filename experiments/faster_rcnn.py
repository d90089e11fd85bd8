r"""Faster R-CNN (Ren et al. 2015) with a C4 head or an FPN (Lin et al. 2017; seeds 002/003) on ``shapes_scenes``.

  python -m experiments.faster_rcnn --flagfile=experiments/configs/faster_rcnn_smoke.flags
  python -m experiments.faster_rcnn --flagfile=experiments/configs/faster_rcnn.flags   # C4 vs FPN, 2 seeds

``--models=faster_rcnn_c4,faster_rcnn_fpn`` trains each detector with every ``--seeds`` entry on the same backbone
and data and writes ``summary.md`` (FPN's claim: better on small objects, APs).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common, detection_common
from research.configs import setting
from research.train.detection import DetectionConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags(detection_common.DetectionFlags):
  """Settings of this entry point that are not part of ``DetectionConfig``."""
  models: tuple[str, ...] = setting((), "Detectors to compare (faster_rcnn_c4, faster_rcnn_fpn); empty: --model.")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  detection_common.define_flags(flag_values, ExperimentFlags)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> DetectionConfig:
  """The ``DetectionConfig`` of the parsed flags."""
  return common.config_from_flags(DetectionConfig, flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  with common.clean_errors():
    names = common.config_from_flags(ExperimentFlags).models or (FLAGS.model,)
    detection_common.run(FLAGS, ExperimentFlags, {n.replace("faster_rcnn_", ""): {"model": n} for n in names})


if __name__ == "__main__":
  app.run(main)
