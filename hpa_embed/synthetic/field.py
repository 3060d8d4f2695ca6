"""One synthetic field of view: geometry, reference and protein channels, optics and noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..labels import HPA2021, MITOTIC_SPINDLE, NEGATIVE
from .annotation import assign_cell_labels, sample_image_labels
from .config import CELL_LINES, SyntheticConfig
from .geometry import build_geometry
from .patterns import render_green
from .reference import CellContext, render_blue, render_red, render_yellow

__all__ = ["SyntheticField", "generate_field"]

#: Pixel size of subcellular structures is set relative to this cell radius (the standard's).
_REFERENCE_RADIUS = 110.0
_BOX_PAD = 4  # px around a cell's box, so distance maps see its edge


@dataclass
class SyntheticField:
    """A synthetic field of view and its truth.

    Attributes
    ----------
    image_id : str
    image : float32 ndarray ``[4, H, W]``
        (red, green, blue, yellow) in [0, 1], already quantised to the config's bit depth, so
        writing and reading it back gives the same values.
    cell_mask : int32 ndarray ``[H, W]``
        0 background, cells 1..n.
    nucleus_mask : int32 ndarray ``[H, W]``
        Each nucleus carries the id of the cell that holds it.
    cell_labels : list of list of int
        True classes of cell ``i`` at index ``i - 1``; ``[18]`` for a cell showing none.
    image_labels : list of int
        Union of the cells' classes without Negative (``[18]`` for a Negative image).
    cell_line : str
    mitotic : bool ndarray ``[n]``
    """

    image_id: str
    image: np.ndarray
    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    cell_labels: list[list[int]]
    image_labels: list[int]
    cell_line: str
    mitotic: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.cell_labels)


def _check_labels(labels: Sequence[int]) -> list[int]:
    labels = sorted({int(label) for label in labels})
    if not labels or any(not 0 <= label < HPA2021.num_classes for label in labels):
        raise ValueError(f"image_labels must be class ids in 0..{HPA2021.num_classes - 1}, got {labels}")
    if NEGATIVE in labels and len(labels) > 1:
        raise ValueError(f"Negative (18) cannot come with other labels, got {labels}")
    return labels


_GREEN_EXPOSURE = 0.45  # the median field's green gain


def _lognormal(rng: np.random.Generator, sd: float, size=None):
    return np.exp(rng.normal(-0.5 * sd**2, sd, size))


def generate_field(
    config: SyntheticConfig,
    seed: int,
    image_id: str = "syn_000000",
    image_labels: Sequence[int] | None = None,
) -> SyntheticField:
    """Generate one field of view with its true masks and cell labels.

    Parameters
    ----------
    config : SyntheticConfig
    seed : int
        The same seed (and config) gives the same field, bit for bit.
    image_id : str
    image_labels : sequence of int, optional
        Force the image's label set instead of drawing it from ``config.class_frequencies``.

    Returns
    -------
    SyntheticField
    """
    seeds = np.random.SeedSequence(seed).spawn(5)
    label_rng, geometry_rng, intensity_rng, noise_rng = (np.random.default_rng(s) for s in seeds[:4])
    cell_seeds = seeds[4]
    d = config.difficulty

    if image_labels is not None:
        labels = _check_labels(image_labels)
    else:
        labels = sample_image_labels(config, label_rng)
    line = CELL_LINES[config.cell_lines[int(label_rng.integers(len(config.cell_lines)))]]
    geometry = build_geometry(config, line, geometry_rng, n_mitotic_min=3 if MITOTIC_SPINDLE in labels else 0)
    mitotic = np.array([cell.mitotic for cell in geometry.cells], dtype=bool)
    cell_labels = assign_cell_labels(labels, mitotic, config, label_rng)
    shown = sorted({label for cell in cell_labels for label in cell} - {NEGATIVE})

    # Brightness: per image and channel, then per cell; some cells stain very faintly.
    n_cells = len(geometry.cells)
    reference_gain = intensity_rng.uniform([0.65, 0.0, 0.45, 0.3], [1.0, 0.0, 0.8, 0.6])
    # The green exposure keeps most fields below saturation, so that the per-field normalisation
    # of the crops can undo it; the unspecific signal scales with it, as real staining does.
    green_gain = min(_GREEN_EXPOSURE * _lognormal(intensity_rng, config.image_intensity_sd), 1.0)
    cell_reference = _lognormal(intensity_rng, 0.15, (n_cells, 3))
    cell_green = _lognormal(intensity_rng, config.cell_intensity_sd + 0.3 * d, n_cells)
    cell_unspecific = _lognormal(intensity_rng, config.cell_intensity_sd, n_cells)
    faint = intensity_rng.random(n_cells) < min(config.faint_fraction + 0.15 * d, 1.0)
    cell_green[faint] *= intensity_rng.uniform(0.05, 0.25, faint.sum())

    canvas = np.zeros((4, *geometry.cell_mask.shape), dtype=np.float32)
    scale = config.cell_radius / _REFERENCE_RADIUS
    boxes = ndi.find_objects(geometry.cell_mask, max_label=n_cells)
    for index, (cell, box, cell_seed) in enumerate(zip(geometry.cells, boxes, cell_seeds.spawn(n_cells))):
        box = tuple(slice(max(s.start - _BOX_PAD, 0), min(s.stop + _BOX_PAD, limit))
                    for s, limit in zip(box, canvas.shape[1:]))
        structure_rng, pattern_rng = (np.random.default_rng(s) for s in cell_seed.spawn(2))
        in_cell = geometry.cell_mask[box] == index + 1
        ctx = CellContext(cell, box, in_cell, geometry.nucleus_mask[box] == index + 1,
                          geometry.cell_mask[box] == 0, scale, d, structure_rng)
        red, blue, yellow = cell_reference[index] * reference_gain[[0, 2, 3]]
        blue *= 1.15 if cell.mitotic else 1.0  # condensed chromatin is brighter
        specific = cell_green[index] * render_green(ctx, cell_labels[index], pattern_rng)
        unspecific = (config.autofluorescence * cell_unspecific[index]
                      * ctx.cytoplasm_soft * ctx.cytoplasm_patches)
        green = green_gain * (specific + unspecific)
        for channel, value in ((0, red * render_red(ctx)), (1, green), (2, blue * render_blue(ctx)),
                               (3, yellow * render_yellow(ctx))):
            canvas[channel][box] += value * in_cell

    image = _optics_and_noise(geometry.crop(canvas), config, noise_rng)
    return SyntheticField(
        image_id=image_id,
        image=image,
        cell_mask=np.ascontiguousarray(geometry.crop(geometry.cell_mask)),
        nucleus_mask=np.ascontiguousarray(geometry.crop(geometry.nucleus_mask)),
        cell_labels=cell_labels,
        image_labels=shown or [NEGATIVE],
        cell_line=line.name,
        mitotic=mitotic,
    )


def _optics_and_noise(signal: np.ndarray, config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Blur, background, shot and read noise, clipping and quantisation, float32 ``[4, H, W]``.

    Shot noise uses the normal approximation of Poisson noise (variance = mean / photons), and
    is drawn together with the read noise: one normal draw per pixel, several times cheaper
    than Poisson draws at this size and indistinguishable at the counts that matter.
    """
    d = config.difficulty
    photons = np.float32(config.photons / (1.0 + 3.0 * d))
    read_variance = np.float32((config.read_noise * (1.0 + d)) ** 2)
    blur = config.blur_sigma * (1.0 + 0.5 * d)
    levels = np.float32(2**config.bit_depth - 1)
    image = np.empty(signal.shape, dtype=np.float32)
    for channel, plane in enumerate(signal):
        plane = ndi.gaussian_filter(plane, blur, truncate=3.0) if blur > 0 else plane.copy()
        plane += np.float32(config.background)
        noise = rng.standard_normal(plane.shape, dtype=np.float32)
        noise *= np.sqrt(plane / photons + read_variance)
        plane += noise
        np.clip(plane, 0, 1, out=plane)
        # Quantise exactly as a reader scales integers back (k / levels in float32).
        image[channel] = np.rint(plane * levels) / levels
    return image
