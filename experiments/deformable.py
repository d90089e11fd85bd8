r"""Deformable ConvNets (Dai et al. 2017; Zhu et al. 2019, v2; seed 003): the same Faster/Mask R-CNN with plain vs
deformable 3x3 convolutions in the backbone's last stages, on ``shapes_scenes``.

  python -m experiments.deformable --flagfile=experiments/configs/deformable_smoke.flags
  python -m experiments.deformable --flagfile=experiments/configs/deformable.flags

``--variants=none,v1,v2`` (``+pool`` adds deformable RoI pooling to the box head: ``v2+pool``) trains each with every ``--seeds`` entry and writes ``summary.md``. The deformable
convolution is ``research.ops.deform_conv2d`` (C++ XLA custom call on CPU, pure-JAX reference elsewhere);
offsets start at zero, so every variant starts from the plain network's function.
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
  variants: tuple[str, ...] = setting((), "Variants to compare: none, v1, v2 (backbone convolutions), each optionally "
                                      "+pool (deformable RoI pooling), e.g. none,v2,v2+pool; empty: --deformable.")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  detection_common.define_flags(flag_values, ExperimentFlags)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> DetectionConfig:
  """The ``DetectionConfig`` of the parsed flags."""
  return common.config_from_flags(DetectionConfig, flag_values=flag_values)


def variant_conditions(variants: tuple[str, ...], default: str) -> dict[str, dict[str, str]]:
  """``none|v1|v2`` (backbone convolutions), each optionally with ``+pool`` (deformable RoI pooling in the box
  head, Dai et al. 2017 §2.2) -> {condition name: DetectionConfig overrides}."""
  variants = variants or (default,)
  conditions = {}
  for v in variants:
    conv, plus, pool = v.partition("+")
    if conv not in ("none", "v1", "v2") or (plus and pool != "pool"):
      raise ValueError(f"--variants={','.join(variants)}: {v!r} is not one of none, v1, v2 (each optionally "
                       f"with +pool, e.g. v2+pool)")
    name = ("plain" if conv == "none" else f"dcn_{conv}") + ("_deform_roi_pool" if plus else "")
    conditions[name] = {"deformable": conv, **({"pooler": "deform"} if plus else {})}
  return conditions


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  with common.clean_errors():
    conditions = variant_conditions(common.config_from_flags(ExperimentFlags).variants, FLAGS.deformable)
    detection_common.run(FLAGS, ExperimentFlags, conditions)


if __name__ == "__main__":
  app.run(main)
