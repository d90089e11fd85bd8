"""Detection family: anchors, matching/sampling, heads (FPN, RPN, box, mask) and the R-CNN detectors.

Registered in ``research.models`` under family ``"detection"`` (``research.models.names("detection")``):
``faster_rcnn_fpn``, ``faster_rcnn_c4``, ``mask_rcnn_fpn``. Box arithmetic lives in ``research.ops.boxes``.
"""

from research.models.detection.anchors import cell_anchors, grid_anchors, multilevel_anchors
from research.models.detection.matching import match, sample_balanced
from research.models.detection.rcnn import DETECTORS, RCNN, paste_masks, smooth_l1

__all__ = ["DETECTORS", "RCNN", "cell_anchors", "grid_anchors", "match", "multilevel_anchors", "paste_masks",
           "sample_balanced", "smooth_l1"]
