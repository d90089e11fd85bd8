"""Vision ops as XLA custom calls with pure-JAX references: RoIAlign family, deformable conv, NMS.

Every op takes ``impl="auto" | "reference" | "ffi"``; see ``research/ops/README.md``.
"""

from research.ops._ffi import ffi_available
from research.ops.deform import deform_conv2d
from research.ops.deform_roi import deform_roi_align
from research.ops.nms import batched_nms, batched_nms_padded, nms, nms_padded
from research.ops.roi import ps_roi_align, roi_align, roi_pool

from research.ops.im2col import conv2d_im2col, im2col

__all__ = [
    "batched_nms",
    "batched_nms_padded",
    "conv2d_im2col",
    "deform_conv2d",
    "deform_roi_align",
    "ffi_available",
    "im2col",
    "nms",
    "nms_padded",
    "ps_roi_align",
    "roi_align",
    "roi_pool",
]
