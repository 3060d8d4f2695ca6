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
    "HpaEmbedError": "io",
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
    "mask_iou": "segment",
    "match_objects": "segment",
    "object_f1": "segment",
    "ObjectScores": "segment",
    "match_cells": "segment",
    # crops and the cell store
    "CellStore": "store",
    "extract_crops": "crops",
    "build_store": "crops",
    "assign_splits": "crops",
    "merge_stores": "crops",
    # where the per-field stages run
    "select_shard": "executors",
    "LostBatchesError": "executors",
    # config
    "ConfigError": "config",
    "RunConfig": "config",
    "InputConfig": "config",
    "SegmentConfig": "config",
    "CropConfig": "config",
    "SplitConfig": "config",
    "ModelConfig": "config",
    "LossConfig": "config",
    "DataConfig": "config",
    "TrainConfig": "config",
    "IndexConfig": "config",
    "ClassifyConfig": "config",
    "EvaluateConfig": "config",
    "read_config_file": "config",
    "write_config_file": "config",
    "config_template": "config",
    # the whole run
    "run_pipeline": "pipeline",
    "load_named_config": "pipeline",
    "stage_status": "pipeline",
    "MapConfig": "config",
    # model, losses, training, embeddings
    "CellEmbeddingModel": "models",
    "create_model": "models",
    "preprocess": "models",
    "save_checkpoint": "models",
    "load_checkpoint": "models",
    "CombinedLoss": "losses",
    "MultiLabelTripletMiner": "losses",
    "CellDataset": "data",
    "cell_targets": "data",
    "make_batch_sampler": "data",
    "fit": "train",
    "lr_find": "train",
    "Embeddings": "embed",
    "embed_store": "embed",
    "read_embeddings": "embed",
    # index, classify, retrieval
    "CellIndex": "index",
    "merge_shards": "index_shards",
    "index_embeddings": "index",
    "KNNClassifier": "classify",
    "head_probabilities": "classify",
    "aggregate_images": "classify",
    "fuse_scores": "classify",
    "predict_cells": "classify",
    "retrieval_metrics": "retrieval",
    # interchange
    "export_anndata": "exchange",
    "import_embeddings": "exchange",
    # evaluate and submit
    "competition_map": "evaluate",
    "cell_level_ap": "evaluate",
    "evaluate_cells": "evaluate",
    "evaluate_submission": "evaluate",
    "evaluate_predictions": "evaluate",
    "encode_binary_mask": "rle",
    "decode_binary_mask": "rle",
    "RleError": "rle",
    "build_submission": "submission",
    "write_submission": "submission",
    "read_submission": "submission",
    # analysis
    "LabelStatistics": "analysis",
    "label_statistics": "analysis",
    # visualise
    "composite_rgb": "visualise",
    "save_channel_views": "visualise",
    "plot_label_statistics": "visualise",
    "plot_confusion_matrices": "visualise",
    "plot_lr_find": "visualise",
    "plot_evaluation": "visualise",
    "draw_cell_maps": "visualise",
    "write_cell_map": "visualise",
    "cell_map_from_store": "visualise",
    "plot_training_curves": "visualise",
    "plot_class_ap": "visualise",
    "plot_cell_gallery": "visualise",
    "plot_top_cells": "visualise",
    "plot_neighbours": "visualise",
    "overlay_masks": "visualise",
    "UMAPProjector": "visualise",
    "plot_map": "visualise",
    "plot_class_panels": "visualise",
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
