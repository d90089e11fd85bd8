r"""R-FCN (Dai et al. 2016; seed 003): position-sensitive score maps + position-sensitive RoI pooling (through
``research.ops.ps_roi_align``) with voting by averaging, against Faster R-CNN C4 on the same backbone and data.

  python -m experiments.rfcn --flagfile=experiments/configs/rfcn_smoke.flags
  python -m experiments.rfcn --flagfile=experiments/configs/rfcn.flags

The entry point is ``experiments.faster_rcnn``'s (``--models=rfcn,faster_rcnn_c4``, ``--seeds``); this module
only gives it R-FCN's name and flagfiles.
"""

from __future__ import annotations

from absl import app

from experiments.faster_rcnn import ExperimentFlags, config_from_flags, define_flags, main  # noqa: F401

if __name__ == "__main__":
  app.run(main)
