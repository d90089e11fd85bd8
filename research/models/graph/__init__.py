"""Graph models (family ``"graph"``); importing this package registers ``gcn``, ``chebnet``, ``graph_mlp`` and
``chebnet_pool`` (Kipf & Welling 2017; Defferrard et al. 2016)."""

from research.models.graph.gcn import ChebNetPool, NodeClassifier

__all__ = ["ChebNetPool", "NodeClassifier"]
