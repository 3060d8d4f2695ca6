"""The segmentation protocol, the mask conventions, pixel-size estimation and shared array helpers.

Besides the public names that :mod:`hpa_embed.segment` exports, this module holds the helpers
the segmenters of the subpackage share (:data:`RED`, :data:`BLUE`, :data:`YELLOW`,
:func:`check_image`, :func:`block_mean`, :func:`foreground_threshold`); they are internal to
``hpa_embed.segment`` and not part of its ``__all__``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage as ndi

from ..labels import CHANNELS

#: Pixel size (µm) of a 2048² Kaggle 2021 / HPA Cell Atlas field (63x objective, confocal).
REFERENCE_PIXEL_SIZE: float = 0.08
#: Side (px) of that field: a field of another side is assumed, before measuring, to span the
#: same ~164 µm (the 2018 set's 512² fields are the 2048² ones downsampled by 4: 0.32 µm/px).
REFERENCE_FIELD_SIDE: int = 2048

#: Plane indices, in a field ``[C, H, W]``, of the channels the segmenters read: microtubules
#: (red), nuclei (blue) and ER (yellow, absent from a 3-channel field).
RED, BLUE, YELLOW = (CHANNELS.index(name) for name in ("red", "blue", "yellow"))


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
            f"{name}: {without_nucleus.size} cells have no nucleus (ids {without_nucleus[:10].tolist()})"
        )
    return int(cell_ids.size)


def relabel_masks(cell_mask: np.ndarray, nucleus_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bring two label masks to the convention; return int32 ``(cell_mask, nucleus_mask)``.

    Nucleus pixels take the id of the cell they lie in (pixels outside every cell are dropped),
    cells without a nucleus are dropped, and the surviving ids are renumbered 1..n in order.
    """
    from skimage.segmentation import relabel_sequential

    cell_mask = np.asarray(cell_mask)
    nucleus_mask = np.asarray(nucleus_mask)
    if cell_mask.shape != nucleus_mask.shape:
        raise ValueError(f"cell mask {cell_mask.shape} and nucleus mask {nucleus_mask.shape} differ")
    nucleus_cells = np.where(nucleus_mask > 0, cell_mask, 0)
    # the cells holding a nucleus, numbered 1..n in order; the map sends every other id to 0
    nucleus_cells, forward, _ = relabel_sequential(nucleus_cells)
    return forward[cell_mask].astype(np.int32, copy=False), nucleus_cells.astype(np.int32, copy=False)


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
    from skimage.measure import regionprops_table

    check_image(image)
    side = max(image.shape[1:])
    prior = prior_pixel_size(side)
    # coarse enough for speed (~256 px), fine enough to resolve small nuclei (>= 8 px across)
    factor = max(1, int(min(side / 256, nucleus_diameter / prior / 8)))
    blue = block_mean(image[BLUE], factor)
    smoothed = ndi.gaussian_filter(blue, 1.0)
    threshold = foreground_threshold(smoothed, blue)
    foreground = ndi.binary_fill_holes(smoothed > threshold)
    labels, count = ndi.label(foreground)
    if count == 0:
        return prior
    nuclei = regionprops_table(labels, properties=("area", "bbox"))
    areas = np.asarray(nuclei["area"], dtype=np.float64)
    height, width = labels.shape
    inner = ((nuclei["bbox-0"] > 0) & (nuclei["bbox-1"] > 0)
             & (nuclei["bbox-2"] < height) & (nuclei["bbox-3"] < width))
    # nuclei cut by the border look smaller than they are: counted only when there is no other
    areas = areas[inner] if inner.any() else areas
    # specks of a few coarse pixels are noise or debris, not nuclei
    areas = areas[areas >= 4]
    if areas.size == 0:
        return prior
    diameter_px = np.sqrt(4 * np.median(areas) / np.pi) * factor
    measured = nucleus_diameter / diameter_px
    return float(np.clip(measured, prior / max_correction, prior * max_correction))


# --------------------------------------------------------------------------- array helpers


def check_image(image: np.ndarray) -> None:
    """Refuse anything but a field the segmenters can read.

    Parameters
    ----------
    image : float ``[C, H, W]``
        ``C`` = 3 (red, green, blue) or 4 (red, green, blue, yellow), ``H, W >= 8``.

    Raises
    ------
    ValueError
        Naming the shape expected and the one given.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[0] not in (3, 4):
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"expected a field float [C, H, W] with C = 3 (red, green, blue) or 4 (red, green, "
            f"blue, yellow), got shape {shape}"
        )
    if min(image.shape[1:]) < 8:
        raise ValueError(f"field of shape {image.shape} is too small to segment (8 x 8 pixels at least)")


def block_mean(plane: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks: the reduced working resolution of a plane.

    Parameters
    ----------
    plane : float ``[H, W]``
    factor : int
        Block side (px); 1 returns a float32 copy.

    Returns
    -------
    float32 ``[ceil(H / factor), ceil(W / factor)]``
        The last row and column of blocks are completed by repeating the edge pixels.
    """
    from skimage.measure import block_reduce

    plane = np.asarray(plane, dtype=np.float32)
    if factor == 1:
        return plane.copy()
    height, width = plane.shape
    # edge padding: block_reduce's own (a constant) would darken the blocks cut by the border
    plane = np.pad(plane, ((0, -height % factor), (0, -width % factor)), mode="edge")
    return block_reduce(plane, (factor, factor), np.mean, func_kwargs={"dtype": np.float32})


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


def foreground_threshold(
    smoothed: np.ndarray, raw: np.ndarray, factor: float = 1.0, min_snr: float = 6.0
) -> float:
    """``factor`` x Otsu's threshold, but never within ``min_snr`` noise sigmas of background.

    The floor keeps a field without signal (noise or a constant) from being split in two by
    Otsu's method: its foreground comes out empty.

    Parameters
    ----------
    smoothed : float ``[H, W]``
        The smoothed plane that is thresholded.
    raw : float ``[H, W]``
        The same plane unsmoothed, whose pixel noise sets the floor.
    factor : float
        Multiplier of Otsu's threshold.
    min_snr : float
        Noise sigmas above the background (2nd percentile of ``smoothed``) of the floor.

    Returns
    -------
    float
    """
    from skimage.filters import threshold_otsu

    background = float(np.percentile(smoothed, 2))
    floor = background + max(min_snr * _noise_sigma(raw, smoothed), 1e-4)
    if float(smoothed.max()) <= floor:
        return floor
    return max(factor * float(threshold_otsu(smoothed)), floor)
