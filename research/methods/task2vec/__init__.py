"""Task2Vec (Achille et al., ICCV 2019): task embeddings from the Fisher Information of a probe network.

Library: ``probe`` (probe network, cached trunk, training/loading), ``fisher`` (head fitting, Monte Carlo and
variational FIM, filter-wise ``Embedding``), ``distances`` (d_sym, d_asym, ...), ``tasks`` (task suites and
taxonomy), ``selection`` (experts, model selection, domain baseline), ``experiment`` (the end-to-end run).
"""

from research.methods.task2vec.distances import asymmetric, cdist, cosine, pdist
from research.methods.task2vec.fisher import (Embedding, FisherConfig, FisherEmbedder, HeadConfig, fit_head,
                                              trivial_embedding)
from research.methods.task2vec.probe import Probe, cache_inputs, make_probe, make_tail_apply

__all__ = ["Embedding", "FisherConfig", "FisherEmbedder", "HeadConfig", "Probe", "asymmetric", "cache_inputs",
           "cdist", "cosine", "fit_head", "make_probe", "make_tail_apply", "pdist", "trivial_embedding"]
