"""Segmentation family: FCN, PSPNet, DeepLabV3 and GCN heads on dilated ``features_only`` backbones.

Registered in ``research.models`` under family ``"segmentation"`` (``research.models.names("segmentation")``):
``fcn``, ``pspnet``, ``deeplabv3``, ``gcn_seg`` (``research.models.segmentation.heads``).
"""

from research.models.segmentation import heads  # noqa: F401  (registers the segmentation models)
