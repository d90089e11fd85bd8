"""Linen layers shared by the model zoo (ops -> layers -> models)."""

from research.layers.batchnorm import FormulaBatchNorm, batch_moments, batch_norm_forward
from research.layers.common import (ConvBN, adaptive_avg_pool, adaptive_max_pool, batch_norm, channel_shuffle,
                                    conv, global_avg_pool, head, local_response_norm, max_pool_ceil)
from research.layers.fractal import FractalBlock, join
from research.layers.igc import IGCBlock
from research.layers.maxout import MaxoutDense, maxout
from research.layers.se import SqueezeExcite
from research.layers.spp import spatial_pyramid_pool
from research.layers.deform import DeformConv
from research.layers.deform_roi import DeformRoIAlign, MultiLevelDeformRoIAlign, multilevel_deform_roi_align
from research.layers.roi import MultiLevelRoIAlign, fpn_levels, multilevel_roi_align
