"""Data: offline procedural TFDS builders (``shapes``) and tfds.data_source + grain pipelines.

Classification: ``get_spec``/``get_source``/``train_loader``/``eval_batches``. Any other feature dict
(detection, segmentation, pose, token ids, graphs): ``get_info``/``get_source``/``make_train_loader``/
``make_eval_batches`` with a transform built from ``research.data.transforms`` (geometric augmentations that move
boxes, masks and keypoints with the image) and ``pad_to``.
Graphs: ``research.data.graphs.load_node_graph`` (citation_sbm, karate, les_miserables, florentine, npz:PATH).
"""

from research.data import graphs, transforms
from research.data.graphs import NodeGraph, load_node_graph, load_npz, node_graph_names, save_npz, split_edges
from research.data.pipeline import (AUGMENTATIONS, PROCEDURAL, ClassifyTransform, DataInfo, DatasetSpec,
                                    GlobalBatchSliceSampler, default_data_dir, eval_batches, get_info, get_source,
                                    get_spec, hierarchy, image_stats, load_arrays, make_eval_batches,
                                    make_train_loader, normalize, random_crop_flip, train_loader)
from research.data.transforms import pad_instances, pad_to

__all__ = ["AUGMENTATIONS", "PROCEDURAL", "graphs", "NodeGraph", "load_node_graph", "load_npz", "node_graph_names",
           "save_npz", "split_edges", "ClassifyTransform", "DataInfo", "DatasetSpec", "GlobalBatchSliceSampler",
           "default_data_dir", "eval_batches", "get_info", "get_source", "get_spec", "hierarchy", "image_stats",
           "load_arrays", "make_eval_batches", "make_train_loader", "normalize", "pad_instances", "pad_to",
           "random_crop_flip", "train_loader", "transforms"]
