"""Data: offline procedural TFDS builders (``shapes``) and tfds.data_source + grain pipelines."""

from research.data.pipeline import (AUGMENTATIONS, PROCEDURAL, DatasetSpec, default_data_dir, eval_batches,
                                    get_source, get_spec, hierarchy, load_arrays, normalize, random_crop_flip,
                                    train_loader)

__all__ = ["AUGMENTATIONS", "PROCEDURAL", "DatasetSpec", "default_data_dir", "eval_batches", "get_source",
           "get_spec", "hierarchy", "load_arrays", "normalize", "random_crop_flip", "train_loader"]
