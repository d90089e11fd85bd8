"""Dense-prediction family (issue 13).

Family ``"segmentation"`` (``research.models.names("segmentation")``): ``fcn``, ``pspnet``, ``deeplabv3``, ``gcn_seg``
(``heads``); ``crf.SegmenterWithCRF`` puts CRF-as-RNN on any of them. Family ``"dense"``: ``segflow`` (+
``segflow_seg_only``, ``segflow_flow_only``), ``oslsm`` (one-shot segmentation), ``pag_net`` / ``depth_sr_unguided``
(guided depth super-resolution).
"""

from research.models.segmentation import heads  # noqa: F401  (registers the segmentation models)
from research.models.segmentation import depth_sr  # noqa: F401,E402
from research.models.segmentation import segflow  # noqa: F401,E402
from research.models.segmentation import one_shot  # noqa: F401,E402
