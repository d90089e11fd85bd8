r"""Semantic segmentation (seed 003: PSPNet, DeepLabV3/ASPP, large-kernel GCN + BR, dense CRF, CRF-as-RNN) on the
offline ``shapes_scenes`` semantic maps, or a prepared TFDS segmentation dataset.

  python -m experiments.segmentation --flagfile=experiments/configs/segmentation_smoke.flags
  python -m experiments.segmentation --flagfile=experiments/configs/segmentation.flags       # FCN vs PSP vs ASPP
  python -m experiments.segmentation --flagfile=experiments/configs/segmentation_gcn.flags   # large kernels, BR
  python -m experiments.segmentation --flagfile=experiments/configs/segmentation_crf.flags   # dense CRF, CRF-as-RNN
  python -m experiments.segmentation --model=deeplabv3 --output_stride=16 --crf=dense --workdir=/tmp/seg

``--conditions=fcn,pspnet,...`` (names of ``research.train.segmentation.CONDITIONS``) trains each with every
``--seeds`` entry in ``<workdir>/<condition>_seed<k>/``; without it the flags describe one run per seed. Either way
``summary.json`` / ``summary.md`` hold mIoU, pixel, boundary (trimap) and per-object-size accuracy, mean ± std.
The library is ``research.train.segmentation``; this script parses the flags and calls ``sweep``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.train.segmentation import CONDITIONS, SegmentationConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``SegmentationConfig``."""
  workdir: str = setting("/tmp/research/segmentation", "Output directory (finished runs are kept and reused).")
  conditions: tuple[str, ...] = setting((), "Ablation conditions to train (research.train.segmentation.CONDITIONS); "
                                        "empty: the single run the flags describe.", choices=tuple(CONDITIONS))
  seeds: tuple[int, ...] = setting((0,), "Seeds; every condition is trained once per seed.")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.segmentation``: one per ``SegmentationConfig`` field and ``ExperimentFlags``."""
  common.define_flags(SegmentationConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> SegmentationConfig:
  """The ``SegmentationConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(SegmentationConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.train import segmentation
    extra = common.config_from_flags(ExperimentFlags)
    segmentation.validate(config)
    conditions = segmentation.conditions_from_names(extra.conditions, config)
    return segmentation.sweep(config, workdir, conditions, tuple(extra.seeds))
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
