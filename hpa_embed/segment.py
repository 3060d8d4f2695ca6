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

import importlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage as ndi

from .io import DataError, list_field_ids, read_field, write_mask

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

logger = logging.getLogger(__name__)

#: Pixel size (µm) of a 2048² Kaggle 2021 / HPA Cell Atlas field (63x objective, confocal).
REFERENCE_PIXEL_SIZE: float = 0.08
#: Side (px) of that field: a field of another side is assumed, before measuring, to span the
#: same ~164 µm (the 2018 set's 512² fields are the 2048² ones downsampled by 4: 0.32 µm/px).
REFERENCE_FIELD_SIDE: int = 2048

_BLUE, _RED, _YELLOW = 2, 0, 3


@runtime_checkable
class Segmenter(Protocol):
    """Anything that segments one field into cells and nuclei.

    Implementations must be picklable (they are sent to worker processes by
    :func:`segment_directory`).
    """

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment one field.

        Parameters
        ----------
        image : float32 ``[C, H, W]``
            Channels (red, green, blue, yellow) or (red, green, blue), values in [0, 1].

        Returns
        -------
        cell_mask, nucleus_mask : int32 ``[H, W]``
            0 = background; nucleus id == id of the cell holding it; ids 1..n.
        """
        ...


# --------------------------------------------------------------------------- mask conventions


def check_masks(cell_mask: np.ndarray, nucleus_mask: np.ndarray, name: str = "masks") -> int:
    """Check the cell/nucleus convention; return the number of cells.

    Checks: same 2-D shape, integer ids >= 0, every nucleus pixel lies in the cell of the same id,
    and the set of cell ids equals the set of nucleus ids (one nucleus per cell and vice versa).

    Raises
    ------
    ValueError
        Naming ``name`` and the first rule broken.
    """
    cell_mask = np.asarray(cell_mask)
    nucleus_mask = np.asarray(nucleus_mask)
    if cell_mask.ndim != 2 or cell_mask.shape != nucleus_mask.shape:
        raise ValueError(
            f"{name}: cell mask {cell_mask.shape} and nucleus mask {nucleus_mask.shape} must be "
            "2-D and of the same shape"
        )
    for label, mask in (("cell", cell_mask), ("nucleus", nucleus_mask)):
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"{name}: {label} mask must hold integer ids, got {mask.dtype}")
        if mask.size and mask.min() < 0:
            raise ValueError(f"{name}: {label} mask has negative ids")
    in_nucleus = nucleus_mask > 0
    mismatch = in_nucleus & (cell_mask != nucleus_mask)
    if mismatch.any():
        ids = np.unique(nucleus_mask[mismatch])
        raise ValueError(
            f"{name}: {mismatch.sum()} nucleus pixels lie outside the cell of the same id "
            f"(nucleus ids {ids[:10].tolist()})"
        )
    cell_ids = np.unique(cell_mask[cell_mask > 0])
    nucleus_ids = np.unique(nucleus_mask[in_nucleus])
    without_nucleus = np.setdiff1d(cell_ids, nucleus_ids)
    if without_nucleus.size:
        raise ValueError(
            f"{name}: {without_nucleus.size} cells have no nucleus (ids "
            f"{without_nucleus[:10].tolist()})"
        )
    return int(cell_ids.size)


def relabel_masks(cell_mask: np.ndarray, nucleus_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bring two label masks to the convention; return int32 ``(cell_mask, nucleus_mask)``.

    Nucleus pixels take the id of the cell they lie in (pixels outside every cell are dropped),
    cells without a nucleus are dropped, and the surviving ids are renumbered 1..n in order.
    """
    cell_mask = np.asarray(cell_mask)
    nucleus_mask = np.asarray(nucleus_mask)
    if cell_mask.shape != nucleus_mask.shape:
        raise ValueError(f"cell mask {cell_mask.shape} and nucleus mask {nucleus_mask.shape} differ")
    nucleus_cells = np.where(nucleus_mask > 0, cell_mask, 0)
    keep = np.unique(nucleus_cells)
    keep = keep[keep > 0]
    # a lookup table renumbers in one pass over the image, whatever the ids were
    table = np.zeros(int(cell_mask.max(initial=0)) + 1, dtype=np.int32)
    table[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return table[cell_mask], table[nucleus_cells]


# --------------------------------------------------------------------------- scale


def prior_pixel_size(side: int) -> float:
    """Pixel size (µm) assumed for a field ``side`` px wide before anything is measured.

    The field is taken to span the 2048² reference field (2048 x 0.08 µm ~ 164 µm): 512 px ->
    0.32 µm, 3072 px -> 0.053 µm. :func:`estimate_pixel_size` corrects this from the nuclei.
    """
    return REFERENCE_PIXEL_SIZE * REFERENCE_FIELD_SIDE / float(side)


def estimate_pixel_size(
    image: np.ndarray,
    nucleus_diameter: float = 12.0,
    max_correction: float = 3.0,
) -> float:
    """Pixel size (µm) of a field from the size of its nuclei.

    Thresholds the blue channel at a coarse resolution, takes the median equivalent diameter of
    the nuclei that do not touch the border, and returns ``nucleus_diameter / median``. The
    result is kept within ``max_correction`` times :func:`prior_pixel_size` either way (HPA
    fields do not differ by more); with no measurable nucleus the prior is returned.

    Parameters
    ----------
    image : float32 ``[C, H, W]``
        Channel 2 is the nucleus (blue) channel.
    nucleus_diameter : float
        Typical nucleus diameter in µm (12 µm: HPA cell lines at 0.08 µm/px measure 11-14 µm).
    """
    _check_image(image)
    side = max(image.shape[1:])
    prior = prior_pixel_size(side)
    # coarse enough for speed (~256 px), fine enough to resolve small nuclei (>= 8 px across)
    factor = max(1, int(min(side / 256, nucleus_diameter / prior / 8)))
    blue = _block_mean(image[_BLUE], factor)
    smoothed = ndi.gaussian_filter(blue, 1.0)
    threshold = _foreground_threshold(smoothed, blue)
    foreground = ndi.binary_fill_holes(smoothed > threshold)
    labels, count = ndi.label(foreground)
    if count == 0:
        return prior
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inner = np.setdiff1d(np.arange(1, count + 1), border)
    areas = areas[inner - 1] if inner.size else areas
    # specks of a few coarse pixels are noise or debris, not nuclei
    areas = areas[areas >= 4]
    if areas.size == 0:
        return prior
    diameter_px = np.sqrt(4 * np.median(areas) / np.pi) * factor
    measured = nucleus_diameter / diameter_px
    return float(np.clip(measured, prior / max_correction, prior * max_correction))


# --------------------------------------------------------------------------- array helpers


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[0] not in (3, 4):
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"expected a field float [C, H, W] with C = 3 (red, green, blue) or 4 (red, green, "
            f"blue, yellow), got shape {shape}"
        )
    if min(image.shape[1:]) < 8:
        raise ValueError(f"field of shape {image.shape} is too small to segment")


def _block_mean(plane: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks, float32 ``[ceil(H/f), ceil(W/f)]`` (edge-padded)."""
    plane = np.asarray(plane, dtype=np.float32)
    if factor == 1:
        return plane.copy()
    height, width = plane.shape
    rows, cols = -(-height // factor), -(-width // factor)
    pad_rows, pad_cols = rows * factor - height, cols * factor - width
    if pad_rows or pad_cols:
        plane = np.pad(plane, ((0, pad_rows), (0, pad_cols)), mode="edge")
    return plane.reshape(rows, factor, cols, factor).mean(axis=(1, 3), dtype=np.float32)


def _interpolation_weights(
    size: int, low_size: int, factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size`` pixels: the two nearest block centres and the weight of the upper."""
    position = np.clip((np.arange(size) + 0.5) / factor - 0.5, 0, low_size - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, low_size - 1)
    return lower, upper, (position - lower).astype(np.float32)


def _bilinear_at(
    low: np.ndarray, ys: np.ndarray, xs: np.ndarray, factor: int, shape: tuple[int, int]
) -> np.ndarray:
    """Bilinear upsampling of a block-mean image, evaluated at full-resolution pixels only."""
    r0, r1, wy = (a[ys] for a in _interpolation_weights(shape[0], low.shape[0], factor))
    c0, c1, wx = (a[xs] for a in _interpolation_weights(shape[1], low.shape[1], factor))
    top = low[r0, c0] + (low[r0, c1] - low[r0, c0]) * wx
    bottom = low[r1, c0] + (low[r1, c1] - low[r1, c0]) * wx
    return top + (bottom - top) * wy


def _upsample_nearest(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    if factor == 1:
        return labels[: shape[0], : shape[1]]
    rows = np.arange(shape[0]) // factor
    cols = np.arange(shape[1]) // factor
    return labels[rows][:, cols]


def _noise_sigma(plane: np.ndarray, smoothed: np.ndarray | None = None) -> float:
    """Robust pixel-noise estimate: scaled MAD of the residual from a 3x3 mean.

    With ``smoothed`` given, only its darkest quarter counts: the background's noise is what a
    threshold must clear, and inside cells the residual also holds real texture (fibres,
    granules) that would inflate the estimate in a crowded field.
    """
    residual = plane - ndi.uniform_filter(plane, 3)
    if smoothed is not None:
        residual = residual[smoothed <= np.percentile(smoothed, 25)]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def _foreground_threshold(
    smoothed: np.ndarray, raw: np.ndarray, factor: float = 1.0, min_snr: float = 6.0
) -> float:
    """``factor`` x Otsu's threshold, but never within ``min_snr`` noise sigmas of background.

    The floor keeps a field without signal (noise or a constant) from being split in two by
    Otsu's method: its foreground comes out empty.
    """
    from skimage.filters import threshold_otsu

    background = float(np.percentile(smoothed, 2))
    floor = background + max(min_snr * _noise_sigma(raw, smoothed), 1e-4)
    if float(smoothed.max()) <= floor:
        return floor
    return max(factor * float(threshold_otsu(smoothed)), floor)


def _remove_small_labels(labels: np.ndarray, min_area: float) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def _refine_labels(
    labels: np.ndarray,
    margin: np.ndarray,
    factor: int,
    shape: tuple[int, int],
) -> np.ndarray:
    """Full-resolution labels from working-resolution ``labels`` and a signed ``margin`` map.

    ``margin`` is > 0 inside objects and < 0 outside at working resolution; the zero level of
    its bilinear upsampling is the object/background boundary. Labels are grown by one working
    pixel first so that this boundary, not the block grid, decides the extent. Where two
    objects touch, each full-resolution pixel takes, among the objects of its four nearest
    blocks, the one whose blurred indicator interpolates highest, which turns the blocks'
    staircase into a smooth line.
    """
    from skimage.segmentation import expand_labels

    if factor == 1:
        return labels
    grown = expand_labels(labels, 1)
    full = _upsample_nearest(grown, factor, shape)
    # working pixels next to a pixel of another object (background excluded), plus a rim
    touching = np.zeros(grown.shape, dtype=bool)
    for axis in (0, 1):
        a, b = np.moveaxis(grown, axis, 0)[:-1], np.moveaxis(grown, axis, 0)[1:]
        change = (a != b) & (a > 0) & (b > 0)
        np.moveaxis(touching, axis, 0)[:-1] |= change
        np.moveaxis(touching, axis, 0)[1:] |= change
    if touching.any():
        band = _upsample_nearest(ndi.binary_dilation(touching, iterations=2), factor, shape)
        ys, xs = np.nonzero(band)
        # soft indicator of the locally winning object (blurred one-hot), for sub-block borders
        winner, strength = _blurred_argmax(grown, 1.0)
        r0, r1, wy = (a[ys] for a in _interpolation_weights(shape[0], grown.shape[0], factor))
        c0, c1, wx = (a[xs] for a in _interpolation_weights(shape[1], grown.shape[1], factor))
        corner_rows = np.stack([r0, r0, r1, r1])  # [4, N]
        corner_cols = np.stack([c0, c1, c0, c1])
        weight = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])
        candidate = winner[corner_rows, corner_cols]  # [4, N]
        vote = weight * strength[corner_rows, corner_cols]
        # score of corner k's object: the bilinear vote of the corners it wins
        score = ((candidate[:, None, :] == candidate[None, :, :]) * vote[None]).sum(axis=1)
        score[candidate == 0] = -1
        best = np.take_along_axis(candidate, score.argmax(axis=0)[None], axis=0)[0]
        full[ys, xs] = np.where(best > 0, best, full[ys, xs])
    # the sign of the margin, interpolated only in blocks next to a change of sign
    positive = margin > 0
    inside = _upsample_nearest(positive, factor, shape)
    edge = ndi.binary_dilation(positive) & ~ndi.binary_erosion(positive, border_value=1)
    ys, xs = np.nonzero(_upsample_nearest(edge, factor, shape))
    inside[ys, xs] = _bilinear_at(margin, ys, xs, factor, shape) > 0
    return np.where(inside, full, 0).astype(np.int32)


def _blurred_argmax(labels: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The object whose Gaussian-blurred indicator is largest at each pixel, and that value.

    Each object is blurred only within its bounding box grown by 3 sigma, so the cost follows the
    objects' area, not their number times the image.

    Returns
    -------
    best : int32 ``[H, W]`` (0 where no object reaches), value : float32 ``[H, W]``
    """
    best = np.zeros(labels.shape, dtype=np.int32)
    value = np.zeros(labels.shape, dtype=np.float32)
    margin = int(np.ceil(3 * sigma)) + 1
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin))
                    for b, n in zip(box, labels.shape))
        blurred = ndi.gaussian_filter((labels[box] == index).astype(np.float32), sigma,
                                      truncate=3.0)
        wins = blurred > value[box]
        value[box] = np.where(wins, blurred, value[box])
        best[box] = np.where(wins, index, best[box])
    return best, value


def _smooth_labels(labels: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth the borders between touching objects: each foreground pixel takes the label whose
    Gaussian-blurred indicator is largest there (the background keeps its place)."""
    if sigma <= 0 or labels.max() < 2:
        return labels
    best, _ = _blurred_argmax(labels, sigma)
    return np.where(labels > 0, best, 0).astype(labels.dtype)


def _border_saddles(regions: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent region pairs and the saddle of ``values`` between them.

    The saddle is the highest point of the pass: the maximum over their common border of the
    lower of the two facing pixels. Returns int64 ``[P, 2]`` pairs (a < b) and float ``[P]``.
    """
    n_ids = int(regions.max()) + 1
    keys, saddles = [], []
    for a, b, va, vb in (
        (regions[:, :-1], regions[:, 1:], values[:, :-1], values[:, 1:]),
        (regions[:-1], regions[1:], values[:-1], values[1:]),
    ):
        border = (a != b) & (a > 0) & (b > 0)
        low = np.minimum(a[border], b[border]).astype(np.int64)
        high = np.maximum(a[border], b[border]).astype(np.int64)
        keys.append(low * n_ids + high)
        saddles.append(np.minimum(va[border], vb[border]))
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    saddle = np.full(len(unique), -np.inf)
    np.maximum.at(saddle, inverse, np.concatenate(saddles).astype(np.float64))
    return np.stack([unique // n_ids, unique % n_ids], axis=1), saddle


def _merge_unseeded(
    regions: np.ndarray, n_seeded: int, values: np.ndarray, valley_ratio: float
) -> np.ndarray:
    """Merge regions without a nucleus (ids > ``n_seeded``) into a neighbour they are not
    separated from by a valley; those left without a nucleus are given ids > ``n_seeded``.

    A valley separates two regions when the saddle of ``values`` between them is below
    ``valley_ratio`` times the peak of the unseeded side: cytoplasm of the same cell is merged
    back, another cell's (whose nucleus is unseen) stays apart. Two seeded regions never merge.
    """
    n_regions = int(regions.max())
    pairs, saddle = _border_saddles(regions, values)
    peak = np.asarray(ndi.maximum(values, regions, np.arange(n_regions + 1)), dtype=np.float64)
    seeded = np.arange(n_regions + 1) <= n_seeded

    def keep_apart(ra: int, rb: int, pass_height: float) -> bool:
        if seeded[ra] and seeded[rb]:
            return True
        unseeded_peak = min(peak[r] for r in (ra, rb) if not seeded[r])
        return pass_height < valley_ratio * unseeded_peak

    # a seeded root stays the root, so merged regions take its id
    roots = _merge_by_saddles(pairs, saddle, peak, keep_apart, prefer=seeded)
    return roots[regions].astype(np.int32)


def _merge_by_saddles(pairs, saddle, peak, keep_apart, prefer=None) -> np.ndarray:
    """Merge adjacent regions, highest saddle first, unless ``keep_apart(ra, rb, saddle)``.

    Union-find over region ids ``0..n`` (``peak`` float ``[n + 1]`` is updated in place to the
    merged regions' maximum); where ``prefer`` (bool ``[n + 1]``) marks one side, that side's
    root survives. Returns the root of every region id, int ``[n + 1]``.
    """
    parent = np.arange(len(peak))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for index in np.argsort(-saddle):
        ra, rb = root(int(pairs[index, 0])), root(int(pairs[index, 1]))
        if ra == rb or keep_apart(ra, rb, saddle[index]):
            continue
        if prefer is not None and prefer[rb] and not prefer[ra]:
            ra, rb = rb, ra
        parent[rb] = ra
        peak[ra] = max(peak[ra], peak[rb])
    return np.array([root(i) for i in range(len(peak))])


def split_touching(
    foreground: np.ndarray, saddle_ratio: float = 0.7, min_depth: float = 2.0
) -> np.ndarray:
    """Label a binary mask, splitting touching round objects at their waist.

    The distance transform is over-segmented by a watershed from all its maxima, then adjacent
    regions are merged, highest saddle first, unless the saddle (the largest distance value on
    their common border, i.e. half the waist) is below ``saddle_ratio`` times the smaller of the
    two peaks *and* at least ``min_depth`` pixels below it. Two discs touching with a waist
    narrower than ~70% of the smaller disc split; an ellipse, a bean or a ragged outline does not.

    Parameters
    ----------
    foreground : bool ``[H, W]``
    saddle_ratio : float
        Waist / width ratio below which two parts are separate objects.
    min_depth : float
        Minimum depth (px) of a waist, so that digitisation noise never splits an object.

    Returns
    -------
    int32 ``[H, W]``, objects 1..n, 0 = background.
    """
    from skimage.segmentation import watershed

    foreground = np.asarray(foreground, dtype=bool)
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(foreground).astype(np.float32)
    # maxima of the distance transform (plateaus included), one marker per connected maximum
    peaks = (distance == ndi.maximum_filter(distance, size=3)) & foreground
    markers, n_markers = ndi.label(peaks, structure=np.ones((3, 3)))
    regions = watershed(-distance, markers, mask=foreground)
    if n_markers < 2:
        return regions.astype(np.int32)
    peak = np.asarray(ndi.maximum(distance, regions, np.arange(n_markers + 1)), dtype=np.float64)

    pairs, saddle = _border_saddles(regions, distance)

    def keep_apart(ra: int, rb: int, pass_height: float) -> bool:
        lower_peak = min(peak[ra], peak[rb])
        return pass_height < saddle_ratio * lower_peak and lower_peak - pass_height >= min_depth

    roots = _merge_by_saddles(pairs, saddle, peak, keep_apart)
    _, relabel = np.unique(roots, return_inverse=True)  # root 0 (background) stays 0
    return relabel.astype(np.int32)[regions]


# --------------------------------------------------------------------------- classical


@dataclass(frozen=True)
class ClassicalSegmenter:
    """Nuclei by threshold + distance-transform watershed, cells by watershed from the nuclei.

    All lengths are in µm and converted with the field's pixel size, so one setting serves
    512² (2018), 1728², 2048² and 3072² fields alike. The work is done on block means at about
    ``working_pixel_size`` (a nucleus ~25 px across), then the labels are brought back to full
    resolution with boundaries refined on the upsampled smoothed signal.

    Steps (at working resolution):

    1. Nuclei: blue smoothed (``nucleus_smoothing``), Otsu threshold x ``nucleus_threshold``
       (floored above background noise), holes filled, objects under ``min_nucleus_area``
       removed, touching nuclei split at a waist of the distance transform
       (:func:`split_touching`: two touching round nuclei split, a long or bent one does not).
    2. Cell foreground: red + yellow (red alone for a 3-channel field) smoothed
       (``cell_smoothing``), Otsu x ``cell_threshold``, united with the nuclei.
    3. Cells: compact watershed of the negated reference, lightly smoothed
       (``watershed_smoothing``) so the dim line between touching cells survives, seeded by
       the nuclei.
       Cytoplasm further than ``orphan_distance`` from every nucleus is seeded too (at its
       local maxima); such a region is merged into a neighbouring cell when no valley separates
       them (saddle >= ``valley_ratio`` x its peak: the far end of the same cell) and dropped
       otherwise (a cell whose nucleus is cut by the border or unstained). No cell is returned
       without a nucleus. Borders between cells are smoothed over ``boundary_smoothing``.

    Parameters
    ----------
    pixel_size : float or None
        µm per pixel. None: measured per field by :func:`estimate_pixel_size`.
    nucleus_diameter : float
        Typical nucleus diameter (µm), used only to measure the pixel size.
    working_pixel_size : float
        Pixel size (µm) of the reduced resolution the watersheds run at.
    nucleus_smoothing, cell_smoothing : float
        Gaussian sigma (µm) before thresholding.
    watershed_smoothing : float
        Gaussian sigma (µm) of the reference that the cell watershed floods: finer than
        ``cell_smoothing``, so the dim line between two touching cells is not blurred away.
    nucleus_threshold, cell_threshold : float
        Multiplier of Otsu's threshold (below 1 keeps dimmer objects).
    split_ratio : float
        Touching nuclei are split where the waist is narrower than this fraction of the
        smaller one's width (see :func:`split_touching`).
    split_depth : float
        ... and at least this much (µm) narrower, so outline noise never splits a nucleus.
    min_nucleus_area, min_cell_area : float
        Smaller objects (µm²) are removed (a cell with its nucleus).
    orphan_distance : float
        Distance (µm) from every nucleus beyond which cytoplasm gets seeds of its own (see step
        3). ``inf`` disables this: all connected cytoplasm then goes to the nucleated cells.
    valley_ratio : float
        A seeded stretch of cytoplasm joins a cell unless the saddle between them is below this
        fraction of its peak.
    compactness : float
        Compact-watershed regularisation (0: plain watershed).
    boundary_smoothing : float
        Gaussian sigma (µm) of the majority vote that smooths borders between cells.
    """

    pixel_size: float | None = None
    nucleus_diameter: float = 12.0
    working_pixel_size: float = 0.5
    nucleus_smoothing: float = 0.5
    nucleus_threshold: float = 0.6
    split_ratio: float = 0.7
    split_depth: float = 1.0
    min_nucleus_area: float = 15.0
    cell_smoothing: float = 1.0
    cell_threshold: float = 0.7
    watershed_smoothing: float = 0.5
    min_cell_area: float = 30.0
    orphan_distance: float = 10.0
    valley_ratio: float = 0.7
    compactness: float = 0.05
    boundary_smoothing: float = 1.0

    def resolve_pixel_size(self, image: np.ndarray) -> float:
        """The pixel size (µm) used for ``image``: the fixed one, or measured."""
        if self.pixel_size is not None:
            if not self.pixel_size > 0:
                raise ValueError(f"pixel_size must be > 0, got {self.pixel_size}")
            return float(self.pixel_size)
        return estimate_pixel_size(image, self.nucleus_diameter)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment one field; see :meth:`Segmenter.segment`."""
        _check_image(image)
        shape = image.shape[1:]
        pixel_size = self.resolve_pixel_size(image)
        factor = max(1, int(round(self.working_pixel_size / pixel_size)))
        work_pixel = pixel_size * factor
        area_px = 1.0 / work_pixel**2  # working pixels per µm²

        # nuclei
        blue = _block_mean(image[_BLUE], factor)
        blue_smooth = ndi.gaussian_filter(blue, self.nucleus_smoothing / work_pixel)
        blue_threshold = _foreground_threshold(blue_smooth, blue, self.nucleus_threshold)
        nuclei = self._nuclei(blue_smooth > blue_threshold, work_pixel, area_px)
        if not nuclei.any():
            empty = np.zeros(shape, dtype=np.int32)
            return empty, empty.copy()

        # cells
        reference = _block_mean(image[_RED], factor)
        if image.shape[0] > _YELLOW:
            reference += _block_mean(image[_YELLOW], factor)
        ref_smooth = ndi.gaussian_filter(reference, self.cell_smoothing / work_pixel)
        ref_threshold = _foreground_threshold(ref_smooth, reference, self.cell_threshold)
        landscape = ndi.gaussian_filter(reference, self.watershed_smoothing / work_pixel)
        # cells, plus the regions of unseen cells (ids > n_nuclei), refined together so that
        # the border between a cell and a dropped neighbour is as smooth as between two cells
        regions = self._cells(nuclei, ref_smooth, ref_threshold, landscape, work_pixel)
        n_nuclei = int(nuclei.max())
        small = np.bincount(regions.ravel()) < self.min_cell_area * area_px
        small[0] = False
        small[n_nuclei + 1:] = False
        regions[small[regions]] = 0
        cells = np.where(regions <= n_nuclei, regions, 0)

        # back to full resolution; the nucleus is painted into its cell so it always lies inside
        nuclei = np.where(cells > 0, nuclei, 0)
        nucleus_margin = np.where(nuclei > 0, np.maximum(blue_smooth - blue_threshold, 1e-6),
                                  np.minimum(blue_smooth - blue_threshold, -1e-6))
        cell_margin = np.where(regions > 0, np.maximum(ref_smooth - ref_threshold, 1e-6),
                               np.minimum(ref_smooth - ref_threshold, -1e-6))
        nucleus_mask = _refine_labels(nuclei, nucleus_margin, factor, shape)
        cell_mask = _refine_labels(regions, cell_margin, factor, shape)
        cell_mask[cell_mask > n_nuclei] = 0
        cell_mask = np.where(nucleus_mask > 0, nucleus_mask, cell_mask)
        return relabel_masks(cell_mask, nucleus_mask)

    def _nuclei(self, foreground: np.ndarray, work_pixel: float, area_px: float) -> np.ndarray:
        foreground = ndi.binary_fill_holes(foreground)
        labels, _ = ndi.label(foreground)
        labels = _remove_small_labels(labels, self.min_nucleus_area * area_px)
        if not labels.any():
            return labels.astype(np.int32)
        nuclei = split_touching(labels > 0, self.split_ratio, self.split_depth / work_pixel)
        nuclei = _remove_small_labels(nuclei, self.min_nucleus_area * area_px)
        return nuclei.astype(np.int32)

    def _cells(
        self,
        nuclei: np.ndarray,
        ref_smooth: np.ndarray,
        ref_threshold: float,
        landscape: np.ndarray,
        work_pixel: float,
    ) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        foreground = (ref_smooth > ref_threshold) | (nuclei > 0)
        # pinholes in the cytoplasm (smaller than a nucleus) belong to the cell around them
        holes, _ = ndi.label(ndi.binary_fill_holes(foreground) & ~foreground)
        holes = np.bincount(holes.ravel())[holes] < self.min_nucleus_area / work_pixel**2
        foreground |= holes
        n_nuclei = int(nuclei.max())
        markers = nuclei.copy()
        n_kept_apart = n_nuclei
        if np.isfinite(self.orphan_distance):
            # each stretch of cytoplasm far from every nucleus gets competing seeds at its
            # brightest points (a watershed seed must sit in a basin, not on a slope)
            to_nucleus = ndi.distance_transform_edt(nuclei == 0) * work_pixel
            far, n_far = ndi.label(foreground & (to_nucleus > self.orphan_distance))
            if n_far:
                # one seed per local maximum (a nucleus radius apart), at least one per stretch
                seeds = [np.asarray(ndi.maximum_position(ref_smooth, far, np.arange(1, n_far + 1)))
                         .reshape(-1, 2)]
                spacing = max(1, int(self.nucleus_diameter / 2 / work_pixel))
                seeds.append(peak_local_max(ref_smooth, min_distance=spacing, labels=far,
                                            exclude_border=False))
                rows, cols = np.concatenate(seeds).astype(np.int64).T
                markers[rows, cols] = n_kept_apart + np.arange(1, len(rows) + 1)
        regions = watershed(-landscape / max(ref_threshold, 1e-6), markers, mask=foreground,
                            compactness=self.compactness)
        if regions.max() > n_kept_apart:
            regions = _merge_unseeded(regions, n_kept_apart, ref_smooth, self.valley_ratio)
        regions = _smooth_labels(regions, self.boundary_smoothing / work_pixel)
        # a nucleus always lies in its own cell
        return np.where(nuclei > 0, nuclei, regions).astype(np.int32)


# --------------------------------------------------------------------------- HPA Cell Segmentation

HPACELLSEG_INSTALL = "pip install git+https://github.com/CellProfiling/HPA-Cell-Segmentation.git"
#: Pixel size (µm) the DPN-UNet models see: 2048² fields at 0.08 µm scaled by 0.25.
HPACELLSEG_MODEL_PIXEL_SIZE: float = 0.32


def _to_uint8(plane: np.ndarray) -> np.ndarray:
    return (np.clip(plane, 0, 1) * 255 + 0.5).astype(np.uint8)


def hpacellseg_inputs(
    image: np.ndarray, multi_channel_model: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The per-field channel arrays ``hpacellseg`` expects, from one of our fields.

    Parameters
    ----------
    image : float32 ``[C, H, W]``
        (red, green, blue[, yellow]) in [0, 1].
    multi_channel_model : bool
        True for the 3-channel cell model (microtubules, ER, nuclei): needs the yellow channel.
        False for the 2-channel model, which takes no ER image (``None``).

    Returns
    -------
    microtubules, er, nuclei : uint8 ``[H, W]`` (er None for the 2-channel model)
        8-bit, as the package reads its PNGs (its models were trained on 8-bit HPA images).
    """
    _check_image(image)
    if multi_channel_model and image.shape[0] <= _YELLOW:
        raise ValueError(
            "the 3-channel HPA cell model needs the yellow (ER) channel; this field has "
            f"{image.shape[0]} channels (use multi_channel_model=False with a 2-channel model)"
        )
    er = _to_uint8(image[_YELLOW]) if multi_channel_model else None
    return _to_uint8(image[_RED]), er, _to_uint8(image[_BLUE])


def _check_prediction(prediction: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    prediction = np.asarray(prediction)
    if prediction.shape != (*shape, 3) or prediction.dtype != np.uint8:
        raise ValueError(
            f"hpacellseg {what} prediction should be uint8 [{shape[0]}, {shape[1]}, 3], got "
            f"{prediction.dtype} {list(prediction.shape)}"
        )
    return prediction


def masks_from_hpacellseg(
    nuclei_label: np.ndarray, cell_label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Our masks from the output of ``hpacellseg.utils.label_cell``.

    ``label_cell`` returns ``(nuclei_label, cell_label)``, uint8/uint16 (ids can be sparse and a
    cell can end up without a nucleus after its size filters). Returns int32
    ``(cell_mask, nucleus_mask)`` with ids 1..n, nucleus ids equal to cell ids, no cell without a
    nucleus (see :func:`relabel_masks`).
    """
    nuclei_label = np.asarray(nuclei_label)
    cell_label = np.asarray(cell_label)
    if nuclei_label.ndim != 2 or nuclei_label.shape != cell_label.shape:
        raise ValueError(
            f"label_cell output: nuclei {nuclei_label.shape} and cells {cell_label.shape} must be "
            "2-D masks of the same shape"
        )
    return relabel_masks(cell_label.astype(np.int64), nuclei_label.astype(np.int64))


@dataclass
class HPACellSegmenter:
    """Adapter over HPA Cell Segmentation (``hpacellseg``, DPN-UNet nucleus and cell models).

    The package is not on PyPI: install it with
    ``pip install git+https://github.com/CellProfiling/HPA-Cell-Segmentation.git`` and download
    its weight files yourself (see ``docs/segmentation.md``). Nothing is ever downloaded here:
    missing files are an error, unlike the package's own default.

    The weight files are whole pickled torch modules (the package's format); they are loaded with
    ``torch.load(weights_only=False)``, which runs code stored in the file, so name only files
    you obtained from the HPA.

    Parameters
    ----------
    nuclei_model, cell_model : path
        Weight files of the nucleus model (``NUCLEI_MODEL_URL`` in ``hpacellseg/constants.py``)
        and of the cell model (``MULTI_CHANNEL_CELL_MODEL_URL``, or ``TWO_CHANNEL_CELL_MODEL_URL``
        with ``multi_channel_model=False``).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; required, and a CUDA device that is not there is
        an error (the package would silently fall back to the CPU).
    scale_factor : float or None
        Resize factor before the models. None: ``pixel_size / 0.32`` so the models see the
        scale they were trained at (0.25 for a 2048² field at 0.08 µm/px).
    pixel_size : float or None
        µm per pixel when ``scale_factor`` is None; None: :func:`estimate_pixel_size`.
    multi_channel_model : bool
        True: cell model on (microtubules, ER, nuclei); False: (microtubules, nuclei).
    padding : bool
        Passed on: pad to a multiple of 32 before the models.
    package : module or None
        The ``hpacellseg`` package (None: imported on first use). Injectable for tests.
    """

    nuclei_model: str | os.PathLike
    cell_model: str | os.PathLike
    device: str
    scale_factor: float | None = None
    pixel_size: float | None = None
    multi_channel_model: bool = True
    padding: bool = False
    package: ModuleType | None = field(default=None, repr=False)
    _segmentator: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not (
            self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")
        ):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for what, path in (("nucleus", self.nuclei_model), ("cell", self.cell_model)):
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"HPA Cell Segmentation {what} model weights not found: {path} (download "
                    "them as described in docs/segmentation.md; nothing is downloaded for you)"
                )

    # the built models stay in the process that built them; a worker builds its own
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_segmentator"] = None
        if isinstance(state["package"], ModuleType):
            state["package"] = state["package"].__name__
        return state

    def _package(self) -> ModuleType:
        package = self.package
        if isinstance(package, str):
            package = importlib.import_module(package)
        if package is None:
            try:
                package = importlib.import_module("hpacellseg")
            except ImportError as error:
                raise ImportError(
                    f"HPACellSegmenter needs the hpacellseg package: {HPACELLSEG_INSTALL} "
                    f"({error})"
                ) from error
        for module in ("cellsegmentator", "utils"):
            if not hasattr(package, module):
                importlib.import_module(f"{package.__name__}.{module}")
        return package

    def _build(self) -> object:
        if self._segmentator is not None:
            return self._segmentator
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} requested but CUDA is not available")
        package = self._package()
        models = [
            torch.load(path, map_location=torch.device(self.device), weights_only=False)
            for path in (self.nuclei_model, self.cell_model)
        ]
        self._segmentator = package.cellsegmentator.CellSegmentator(
            nuclei_model=models[0],
            cell_model=models[1],
            scale_factor=1.0,  # set per field in segment()
            device=self.device,
            padding=self.padding,
            multi_channel_model=self.multi_channel_model,
        )
        return self._segmentator

    def resolve_scale_factor(self, image: np.ndarray) -> float:
        """The resize factor the models get for ``image``."""
        if self.scale_factor is not None:
            return float(self.scale_factor)
        pixel_size = self.pixel_size if self.pixel_size is not None else estimate_pixel_size(image)
        return float(pixel_size / HPACELLSEG_MODEL_PIXEL_SIZE)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment one field; see :meth:`Segmenter.segment`."""
        microtubules, er, nuclei = hpacellseg_inputs(image, self.multi_channel_model)
        segmentator = self._build()
        segmentator.scale_factor = self.resolve_scale_factor(image)
        package = self._package()
        shape = image.shape[1:]
        try:
            nuclei_pred = segmentator.pred_nuclei([nuclei])[0]
            cell_pred = segmentator.pred_cells(
                [[microtubules], None if er is None else [er], [nuclei]]
            )[0]
            nuclei_pred = _check_prediction(nuclei_pred, shape, "nucleus")
            cell_pred = _check_prediction(cell_pred, shape, "cell")
            nuclei_label, cell_label = package.utils.label_cell(nuclei_pred, cell_pred)
        except (AttributeError, TypeError) as error:
            # the package pins old NumPy/scikit-image APIs (np.bool, multichannel=)
            raise RuntimeError(
                f"hpacellseg failed ({type(error).__name__}: {error}); it needs numpy<1.24 and "
                "scikit-image<0.19, see docs/segmentation.md"
            ) from error
        return masks_from_hpacellseg(nuclei_label, cell_label)


# --------------------------------------------------------------------------- directories


@dataclass
class SegmentationReport:
    """What :func:`segment_directory` did.

    Attributes
    ----------
    done : list of str
        Field IDs segmented in this run.
    skipped : list of str
        Field IDs whose two mask files already existed.
    failed : dict of str to str
        Field ID -> reason, for fields that could not be read or segmented.
    n_cells : dict of str to int
        Cells found per field segmented in this run.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_cells: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{len(self.done)} fields segmented ({sum(self.n_cells.values())} cells), "
            f"{len(self.skipped)} already done, {len(self.failed)} failed"
        )


def mask_paths(out_dir: str | os.PathLike, image_id: str, mask_format: str = "png") -> tuple[Path, Path]:
    """``(<out>/<ID>_cellmask.<fmt>, <out>/<ID>_nucleimask.<fmt>)``, fmt ``png`` or ``npz``."""
    if mask_format not in ("png", "npz"):
        raise ValueError(f"mask_format must be 'png' or 'npz', got {mask_format!r}")
    out_dir = Path(out_dir)
    return (out_dir / f"{image_id}_cellmask.{mask_format}",
            out_dir / f"{image_id}_nucleimask.{mask_format}")


def _segment_one(
    images_dir: str, out_dir: str, image_id: str, segmenter: Segmenter, mask_format: str
) -> tuple[str, int | None, str | None]:
    """Worker: segment one field and write its masks -> (id, n_cells, error or None)."""
    try:
        image = read_field(images_dir, image_id)
        cell_mask, nucleus_mask = segmenter.segment(image)
        n_cells = check_masks(cell_mask, nucleus_mask, name=image_id)
        cell_path, nucleus_path = mask_paths(out_dir, image_id, mask_format)
        # nucleus mask first: the cell mask's presence then marks a finished field
        write_mask(nucleus_path, nucleus_mask)
        write_mask(cell_path, cell_mask)
        return image_id, n_cells, None
    except (DataError, ValueError, OSError, RuntimeError) as error:
        return image_id, None, f"{type(error).__name__}: {error}"


def segment_directory(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    segmenter: Segmenter | None = None,
    workers: int | None = None,
    mask_format: str = "png",
    progress: bool = True,
    image_ids: Sequence[str] | None = None,
) -> SegmentationReport:
    """Segment every field in a directory; write ``<ID>_cellmask`` and ``<ID>_nucleimask``.

    Fields whose two mask files exist are skipped (a run can be resumed). A field that cannot be
    read or segmented is logged and reported, and the others are still done.

    Parameters
    ----------
    images_dir : path
        Fields as ``<ID>_{red,green,blue,yellow}.<ext>`` (see :func:`hpa_embed.io.read_field`).
    out_dir : path
        Where the masks go (created if needed).
    segmenter : Segmenter or None
        None: :class:`ClassicalSegmenter` with its defaults. Must be picklable for ``workers > 1``.
    workers : int or None
        Worker processes; None: one per CPU (at most the number of fields). 1: in this process.
    mask_format : {"png", "npz"}
        16-bit PNG (at most 65535 cells) or compressed ``.npz`` (key ``mask``).
    progress : bool
        Show a tqdm progress bar.
    image_ids : sequence of str or None
        Only these fields (default: every field in ``images_dir``).

    Returns
    -------
    SegmentationReport
    """
    from tqdm.auto import tqdm

    segmenter = segmenter if segmenter is not None else ClassicalSegmenter()
    ids = list(image_ids) if image_ids is not None else list_field_ids(images_dir)
    report = SegmentationReport()
    todo = []
    for image_id in ids:
        if all(path.is_file() for path in mask_paths(out_dir, image_id, mask_format)):
            report.skipped.append(image_id)
        else:
            todo.append(image_id)
    logger.info("segmenting %d fields (%d already done) from %s", len(todo), len(report.skipped),
                images_dir)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(todo)))
    args = (str(images_dir), str(out_dir))
    bar = tqdm(total=len(todo), desc="segment", unit="field", disable=not progress)
    try:
        if workers == 1:
            results = (_segment_one(*args, image_id, segmenter, mask_format) for image_id in todo)
            for result in results:
                _record(report, *result)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_segment_one, *args, image_id, segmenter, mask_format)
                           for image_id in todo]
                for future in as_completed(futures):
                    _record(report, *future.result())
                    bar.update()
    finally:
        bar.close()
    logger.info("%s", report)
    return report


def _record(report: SegmentationReport, image_id: str, n_cells: int | None, error: str | None):
    if error is None:
        report.done.append(image_id)
        report.n_cells[image_id] = n_cells
    else:
        logger.warning("field %s skipped: %s", image_id, error)
        report.failed[image_id] = error
