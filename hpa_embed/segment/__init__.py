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
"""

from __future__ import annotations

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
]
