"""hpa_embed: single-cell embeddings of Human Protein Atlas microscopy images.

Importing the package is cheap: it touches neither disk nor network, and the heavy stages
(torch, FAISS, UMAP) load only when one of their names is first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    # labels
    "ClassScheme": "labels",
    "HPA2021": "labels",
    "HPA2018": "labels",
    "CHANNELS": "labels",
    "RGB_CHANNELS": "labels",
    "get_scheme": "labels",
    # io
    "DataError": "io",
    "read_image": "io",
    "read_field": "io",
    "list_field_ids": "io",
    "read_mask": "io",
    "write_mask": "io",
    "LabelTable": "io",
    "read_labels": "io",
    "write_labels": "io",
    # synthetic
    "SyntheticConfig": "synthetic",
    "SyntheticField": "synthetic",
    "PRESETS": "synthetic",
    "get_preset": "synthetic",
    "generate_field": "synthetic",
    "generate_dataset": "synthetic",
    "read_truth": "synthetic",
    "touching_fraction": "synthetic",
    # segment
    "Segmenter": "segment",
    "ClassicalSegmenter": "segment",
    "HPACellSegmenter": "segment",
    "SegmentationReport": "segment",
    "segment_directory": "segment",
    "check_masks": "segment",
    # crops and the cell store
    "CellStore": "store",
    "CropConfig": "crops",
    "extract_crops": "crops",
    "build_store": "crops",
    "assign_splits": "crops",
    "select_cells": "crops",
    # config
    "ModelConfig": "config",
    "LossConfig": "config",
    "DataConfig": "config",
    "TrainConfig": "config",
    "IndexConfig": "config",
    "read_config_file": "config",
    "write_config_file": "config",
    # model, losses, training, embeddings
    "CellEmbeddingModel": "models",
    "create_model": "models",
    "preprocess": "models",
    "save_checkpoint": "models",
    "load_checkpoint": "models",
    "CombinedLoss": "losses",
    "MultiLabelTripletMiner": "losses",
    "CellDataset": "data",
    "fit": "train",
    "lr_find": "train",
    "Embeddings": "embed",
    "embed": "embed",
    "read_embeddings": "embed",
    # index, classify, retrieval
    "CellIndex": "index",
    "merge_shards": "index",
    "index_embeddings": "index",
    "KNNClassifier": "classify",
    "head_probabilities": "classify",
    "aggregate_images": "classify",
    "fuse_scores": "classify",
    "predict_cells": "classify",
    "retrieval_metrics": "retrieval",
    # evaluate and submit
    "competition_map": "evaluate",
    "cell_level_ap": "evaluate",
    "evaluate_cells": "evaluate",
    "evaluate_submission": "evaluate",
    "plot_confusion_matrices": "evaluate",
    "encode_binary_mask": "submission",
    "decode_binary_mask": "submission",
    "build_submission": "submission",
    "write_submission": "submission",
    "read_submission": "submission",
    "mask_iou": "evaluate",
    "match_objects": "evaluate",
    "object_f1": "evaluate",
    "ObjectScores": "evaluate",
    # analysis
    "LabelStatistics": "analysis",
    "label_statistics": "analysis",
    # visualise
    "composite_rgb": "visualise",
    "save_channel_views": "visualise",
    "plot_label_statistics": "visualise",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hpa_embed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
