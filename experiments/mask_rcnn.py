r"""Mask R-CNN (He et al. 2017; seed 002) on the offline ``shapes_scenes`` (or COCO via --dataset=coco_json).

  python -m experiments.mask_rcnn --flagfile=experiments/configs/mask_rcnn_smoke.flags
  python -m experiments.mask_rcnn --flagfile=experiments/configs/mask_rcnn.flags
  python -m experiments.mask_rcnn --flagfile=experiments/configs/mask_rcnn_ablation.flags   # Table 2c
  python -m experiments.mask_rcnn --flagfile=experiments/configs/mask_rcnn.flags --predict  # draw to PNG

``--poolers=align,pool`` runs the paper's RoIAlign vs RoIPool ablation (Table 2c) with every ``--seeds`` entry and
writes ``summary.md``; a single pooler and seed trains once in ``--workdir`` and writes ``results.json``,
``detections.json`` (COCO results format) and ``gt_coco.json``.
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
  poolers: tuple[str, ...] = setting((), "RoI feature extractors to compare (align, pool); empty: --pooler.")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  detection_common.define_flags(flag_values, ExperimentFlags)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> DetectionConfig:
  """The ``DetectionConfig`` of the parsed flags."""
  return common.config_from_flags(DetectionConfig, flag_values=flag_values)


def pooler_conditions(poolers: tuple[str, ...], default: str) -> dict[str, dict[str, str]]:
  """``--poolers`` (or ``--pooler`` when empty) -> ``{condition name: DetectionConfig overrides}``."""
  poolers = poolers or (default,)
  bad = [p for p in poolers if p not in ("align", "pool")]
  if bad:
    raise ValueError(f"--poolers={','.join(poolers)}: {bad} not in (align, pool)")
  return {("roi_align" if p == "align" else "roi_pool"): {"pooler": p} for p in poolers}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  with common.clean_errors():
    conditions = pooler_conditions(common.config_from_flags(ExperimentFlags).poolers, FLAGS.pooler)
    detection_common.run(FLAGS, ExperimentFlags, conditions)


if __name__ == "__main__":
  app.run(main)
