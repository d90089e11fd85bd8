"""Graph models (family ``"graph"``); importing this package registers ``gcn``, ``chebnet``, ``graph_mlp`` and
``chebnet_pool``, and ``chebnet_grid``/``cnn_grid`` (images as signals on the pixel grid graph, with its CNN control)
(Kipf & Welling 2017; Defferrard et al. 2016). Also here: ``line.LINE`` (Tang et al. 2015) and
``glmnet.GLMNet`` (Jiang et al. 2019), built by their tasks (``research.train.line``, ``research.train.matching``)."""

from research.models.graph import chebnet_image as _chebnet_image  # noqa: F401  (chebnet_grid, cnn_grid)
from research.models.graph import glmnet, line
from research.models.graph.gcn import ChebNetPool, NodeClassifier
from research.models.graph.glmnet import GLMNet
from research.models.graph.line import LINE

__all__ = ["ChebNetPool", "GLMNet", "LINE", "NodeClassifier", "glmnet", "line"]
