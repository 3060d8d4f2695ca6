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
    # evaluate
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
