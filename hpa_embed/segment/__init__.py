"""Cell and nucleus segmentation of HPA fields of view.

A segmenter turns a field ``image`` (float32 ``[C, H, W]``, channels red, green, blue[, yellow])
into two int32 ``[H, W]`` label masks: ``cell_mask`` and ``nucleus_mask``, 0 = background.
The convention is HPA Cell Segmentation's: every nucleus carries the id of the cell that holds
it, every cell has exactly one nucleus and every nucleus one cell, ids are 1..n.

Two segmenters are provided:

- :class:`ClassicalSegmenter` (default): thresholds and watersheds with scikit-image/SciPy at a
  reduced working resolution, refined back to full resolution. No weights; under a second of
  CPU time for a 2048² field.
- :class:`HPACellSegmenter`: an adapter over HPA Cell Segmentation (DPN-UNet models, package
  ``hpacellseg``), with weight files the user names.

:func:`segment_directory` runs a segmenter over every field in a directory, in parallel and
resumably, writing ``<ID>_cellmask.png`` and ``<ID>_nucleimask.png``.

Metrics of a segmentation against true masks: :func:`mask_iou`, :func:`match_objects`,
:func:`object_f1` (:class:`ObjectScores`) and :func:`match_cells`.
"""

from __future__ import annotations

from ..config import SegmentConfig
from .base import (
    REFERENCE_PIXEL_SIZE,
    Segmenter,
    check_masks,
    estimate_pixel_size,
    prior_pixel_size,
    relabel_masks,
)
from .classical import ClassicalSegmenter, split_touching
from .directory import SegmentationReport, mask_paths, segment_directory
from .hpacellseg import HPACellSegmenter, hpacellseg_inputs, masks_from_hpacellseg
from .metrics import MATCH_IOU, ObjectScores, mask_iou, match_cells, match_objects, object_f1

__all__ = [
    "Segmenter",
    "ClassicalSegmenter",
    "HPACellSegmenter",
    "REFERENCE_PIXEL_SIZE",
    "prior_pixel_size",
    "estimate_pixel_size",
    "check_masks",
    "split_touching",
    "relabel_masks",
    "hpacellseg_inputs",
    "masks_from_hpacellseg",
    "SegmentationReport",
    "segment_directory",
    "mask_paths",
    "mask_iou",
    "match_objects",
    "ObjectScores",
    "object_f1",
    "MATCH_IOU",
    "match_cells",
    "create_segmenter",
]


def create_segmenter(config: SegmentConfig) -> Segmenter:
    """The segmenter a :class:`~hpa_embed.config.SegmentConfig` describes."""
    if config.segmenter == "hpacellseg":
        return HPACellSegmenter(config.nuclei_model, config.cell_model, device=config.device,
                                pixel_size=config.pixel_size)
    return ClassicalSegmenter(pixel_size=config.pixel_size)
