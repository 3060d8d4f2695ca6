"""Segmentation overlays: cell and nucleus outlines on a field's RGBY composite, cells optionally
tinted by a colour each (their predicted class, say).

An overlay is a picture to look at; the masks themselves stay 16-bit label images
(:func:`hpa_embed.io.write_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..labels import CHANNELS
from .plots import composite_rgb

__all__ = ["CELL_OUTLINE", "NUCLEUS_OUTLINE", "mask_outlines", "overlay_masks"]

#: Default outline colours: white cells, cyan nuclei (both stand out on red, green, blue and yellow).
CELL_OUTLINE = "#ffffff"
NUCLEUS_OUTLINE = "#00e5ff"


def _rgb255(colour) -> np.ndarray:
    """A matplotlib colour (``"#rrggbb"``, a name, or RGB floats 0..1) -> float32 RGB 0..255."""
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(colour), dtype=np.float32) * 255


def mask_outlines(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The inner outline of every object of a label mask, bool ``[H, W]``.

    A pixel of object ``i`` is on the outline when a pixel within ``thickness`` steps of it (4-
    connected) belongs to another object, to the background, or lies outside the image. Two
    touching cells therefore each get their own outline, side by side.

    Parameters
    ----------
    mask : numpy.ndarray
        int ``[H, W]``, 0 = background.
    thickness : int
        Outline width in pixels.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D [H, W], got shape {mask.shape}")
    if thickness < 1:
        raise ValueError(f"thickness must be at least 1, got {thickness}")
    footprint = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), thickness)
    highest = ndimage.maximum_filter(mask, footprint=footprint, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(mask, footprint=footprint, mode="constant", cval=0)
    return (mask > 0) & ((highest != mask) | (lowest != mask))


def overlay_masks(
    image: np.ndarray,
    cell_mask: np.ndarray,
    nucleus_mask: np.ndarray | None = None,
    colours: Mapping[int, object] | None = None,
    *,
    channels: Sequence[str] = CHANNELS,
    alpha: float = 0.35,
    thickness: int | None = None,
    cell_colour=CELL_OUTLINE,
    nucleus_colour=NUCLEUS_OUTLINE,
    percentile: float | None = 99.8,
) -> np.ndarray:
    """Cell (and nucleus) outlines on a field's RGBY composite, cells optionally tinted.

    Parameters
    ----------
    image : numpy.ndarray
        The field, float ``[C, H, W]`` (:func:`hpa_embed.io.read_field`), or an RGB picture
        uint8 ``[H, W, 3]`` to draw on as it is.
    cell_mask : numpy.ndarray
        int ``[H, W]``, 0 = background, cell ``i`` = ``i``.
    nucleus_mask : numpy.ndarray, optional
        int ``[H, W]``; its outlines are drawn in ``nucleus_colour``.
    colours : mapping of int to colour, optional
        Cell id -> colour (``"#rrggbb"``, a name, or RGB floats 0..1): the cell is tinted with it
        (``alpha`` of the colour over the composite) and outlined in it, twice as wide as the
        other outlines; cells not in the mapping are left as they are.
        E.g. ``{cell: HPA2021.colours[predicted_class[cell]] for cell in ...}``.
    channels : sequence of str
        The planes of ``image`` when it is a field.
    alpha : float
        Tint strength, 0..1.
    thickness : int, optional
        Outline width in pixels (see :func:`mask_outlines`); default one pixel per 1024 of the
        field's longer side (2 on a 2048² HPA field), so the outlines stay visible when the
        picture is viewed shrunk to a screen.
    cell_colour, nucleus_colour : colour
        Outline colours.
    percentile : float or None
        Display stretch of the composite (:func:`~hpa_embed.visualise.plots.composite_rgb`).

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``.
    """
    cell_mask = np.asarray(cell_mask)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        rgb = image.astype(np.float32)
    else:
        rgb = composite_rgb(image, channels, percentile).astype(np.float32)
    if rgb.shape[:2] != cell_mask.shape:
        raise ValueError(f"the image is {rgb.shape[:2]} but the cell mask {cell_mask.shape}")
    if nucleus_mask is not None and np.shape(nucleus_mask) != cell_mask.shape:
        raise ValueError(f"the nucleus mask is {np.shape(nucleus_mask)} but the cell mask {cell_mask.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in 0..1, got {alpha}")
    if thickness is None:
        thickness = max(1, round(max(cell_mask.shape) / 1024))
    tinted = np.zeros(cell_mask.shape, bool)
    if colours:
        # one lookup table over the ids: the colour of every pixel in one indexing step
        ids = np.fromiter(colours.keys(), dtype=np.int64, count=len(colours))
        table = np.zeros((max(int(cell_mask.max()), int(ids.max()), 0) + 1, 3), np.float32)
        listed = np.zeros(len(table), bool)
        valid = ids > 0
        table[ids[valid]] = [_rgb255(colour) for colour, ok in zip(colours.values(), valid) if ok]
        listed[ids[valid]] = True
        tinted = listed[np.clip(cell_mask, 0, None)]
        rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * table[cell_mask[tinted]]
    if nucleus_mask is not None:
        rgb[mask_outlines(nucleus_mask, thickness)] = _rgb255(nucleus_colour)
    rgb[mask_outlines(cell_mask, thickness)] = _rgb255(cell_colour)
    if colours:
        # a tinted cell's outline in its own colour, twice as wide: its class reads at a glance
        band = mask_outlines(cell_mask, 2 * thickness) & tinted
        rgb[band] = table[cell_mask[band]]
    return (rgb + 0.5).astype(np.uint8)
