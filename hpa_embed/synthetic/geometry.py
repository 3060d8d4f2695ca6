"""Cell and nucleus geometry of a synthetic field: where cells sit, their outlines, the masks.

Cells are a warped, weighted Voronoi partition around the nuclei: each pixel goes to the cell
whose (anisotropic, wobbly) normalised distance, plus smooth noise of the cell's own, is
smallest, and stays background where the smallest distance without noise exceeds 1. Crowded
cells touch while sparse ones leave gaps, and the border between two touching cells meanders
instead of following a Voronoi line. The field is laid out on a canvas with a margin, so cells
cut by the image border keep their true shape; cells whose nucleus is mostly outside the field
are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .config import CellLine, SyntheticConfig

__all__ = ["CellGeometry", "FieldGeometry", "build_geometry", "touching_fraction"]

_HARMONICS = np.arange(2, 7)  # outline wobble: 2..6 lobes (consecutive, see _normalised_distance)
# Per-cell border noise: amplitude in units of the normalised distance (1 = the cell's edge) and
# wavelength in mean cell radii. Between touching cells the border moves by about
# amplitude x radius, in bends a third of a cell long.
_BORDER_NOISE = 0.12
_BORDER_NOISE_SCALE = 0.6


@dataclass
class CellGeometry:
    """One cell's shape parameters (canvas coordinates).

    Attributes
    ----------
    center : tuple of float
        Nucleus centre (y, x).
    radius, nucleus_radius : float
        Mean cell and nucleus radii (pixels).
    angle : float
        Orientation of the cell's long axis (radians).
    nucleus_angle : float
        Orientation of the nucleus' long axis (for a mitotic cell: of the metaphase plate).
    mitotic : bool
    polarity : float
        Direction (radians) from the nucleus to the centrosome / Golgi side.
    """

    center: tuple[float, float]
    radius: float
    nucleus_radius: float
    angle: float
    nucleus_angle: float
    mitotic: bool
    polarity: float


@dataclass
class FieldGeometry:
    """Masks and cells of one field on its canvas (field plus ``margin`` on every side).

    Attributes
    ----------
    cell_mask, nucleus_mask : int32 ndarray ``[size + 2 margin, size + 2 margin]``
        Cell ``i + 1`` is ``cells[i]``; a nucleus carries its cell's id.
    cells : list of CellGeometry
    margin : int
    size : int
    line : CellLine
    """

    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    cells: list[CellGeometry]
    margin: int
    size: int
    line: CellLine

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The field part of a canvas-sized array (last two axes)."""
        m = self.margin
        return array[..., m:m + self.size, m:m + self.size]


def _wobble(rng: np.random.Generator, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Random Fourier coefficients of an outline: radius factor ``1 + sum a_m cos(m t + p_m)``."""
    amplitudes = amplitude * rng.normal(0.0, 1.0, _HARMONICS.size) / _HARMONICS**0.7
    phases = rng.uniform(0, 2 * np.pi, _HARMONICS.size)
    return amplitudes.astype(np.float32), phases.astype(np.float32)


def _normalised_distance(
    dy: np.ndarray, dx: np.ndarray, radius: float, angle: float, aspect: float,
    wobble: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Distance to a centre in units of a wobbly ellipse's radius (< 1 inside), float32."""
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    stretch = np.float32(np.sqrt(aspect))
    along = (dx * cos + dy * sin) / stretch
    across = (-dx * sin + dy * cos) * stretch
    rho = np.hypot(along, across)
    # cos(m t), sin(m t) by the angle-addition recurrence: far cheaper than arctan2 + cos.
    safe = np.maximum(rho, np.float32(1e-6))
    cos_1, sin_1 = along / safe, across / safe
    cos_m, sin_m = cos_1, sin_1
    amplitudes, phases = wobble
    factor = np.ones_like(rho)
    for harmonic in range(2, _HARMONICS[-1] + 1):
        cos_m, sin_m = cos_m * cos_1 - sin_m * sin_1, sin_m * cos_1 + cos_m * sin_1
        k = harmonic - _HARMONICS[0]
        # a cos(m t + p) = a cos(p) cos(m t) - a sin(p) sin(m t)
        factor += (amplitudes[k] * np.cos(phases[k])) * cos_m
        factor -= (amplitudes[k] * np.sin(phases[k])) * sin_m
    return rho / (np.float32(radius) * np.maximum(factor, np.float32(0.35)))


class _Warp:
    """A smooth random displacement field, a sum of a few plane waves (wavelength ~ ``scale``).

    Evaluated only on the windows that need it: each wave separates into outer products.
    """

    def __init__(self, rng: np.random.Generator, scale: float, amplitude: float, n_waves: int = 8):
        directions = rng.uniform(0, 2 * np.pi, (2, n_waves))
        wavenumber = 2 * np.pi / (scale * rng.uniform(0.6, 1.6, (2, n_waves)))
        self.ky = (wavenumber * np.sin(directions)).astype(np.float32)
        self.kx = (wavenumber * np.cos(directions)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, (2, n_waves)).astype(np.float32)
        self.amplitude = np.float32(amplitude * np.sqrt(2.0 / n_waves))

    def at(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacements (dy, dx) on the grid ``y`` x ``x`` (float32 1-D), each ``[len(y), len(x)]``."""
        out = []
        for axis in range(2):
            a = y[:, None] * self.ky[axis]  # [h, waves]
            b = x[:, None] * self.kx[axis] + self.phase[axis]  # [w, waves]
            # sum_k sin(a_k + b_k) = sum_k sin a_k cos b_k + cos a_k sin b_k; einsum (not BLAS)
            # keeps the result bit-identical whatever the thread count.
            both = np.einsum("hk,wk->hw", np.concatenate([np.sin(a), np.cos(a)], 1),
                             np.concatenate([np.cos(b), np.sin(b)], 1))
            out.append(self.amplitude * both)
        return out[0], out[1]


class _BorderNoise:
    """Smooth random noise of its own for every cell: a sum of plane waves (wavelength ~
    ``scale``) sharing directions but with per-cell phases and amplitudes.

    Added to the normalised distances that cells compare to claim a pixel, it makes the border
    between two touching cells (where their noises differ) meander. Separable like
    :class:`_Warp`, so a cell's window costs one small matrix product.
    """

    def __init__(self, rng: np.random.Generator, scale: float, amplitude: float, n_cells: int,
                 n_waves: int = 6):
        directions = rng.uniform(0, np.pi, n_waves) + np.pi / n_waves * np.arange(n_waves)
        wavenumber = 2 * np.pi / (scale * rng.uniform(0.7, 1.4, n_waves))
        self.ky = (wavenumber * np.sin(directions)).astype(np.float32)
        self.kx = (wavenumber * np.cos(directions)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, (n_cells, n_waves)).astype(np.float32)
        self.weight = (amplitude * np.sqrt(2.0 / n_waves)
                       * rng.normal(0, 1, (n_cells, n_waves))).astype(np.float32)

    def at(self, cell: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Cell ``cell``'s noise on the grid ``y`` x ``x`` (float32 1-D), ``[len(y), len(x)]``."""
        a = y[:, None] * self.ky + self.phase[cell]  # [h, waves]
        b = x[:, None] * self.kx  # [w, waves]
        # sum_k w_k sin(a_k + b_k) = sum_k w_k (sin a_k cos b_k + cos a_k sin b_k)
        weight = np.concatenate([self.weight[cell], self.weight[cell]])
        return np.einsum("hk,wk->hw", np.concatenate([np.sin(a), np.cos(a)], 1) * weight,
                         np.concatenate([np.cos(b), np.sin(b)], 1))


def _reassign_fragments(mask: np.ndarray, anchor: np.ndarray, n_cells: int) -> None:
    """Keep each cell's part that holds its ``anchor`` pixels; hand every other fragment to the
    neighbouring cell it shares most border with (background if it touches none). In place.

    The noisy partition can cut a sliver off a cell; giving it to a neighbour keeps a crowded
    sheet free of holes, where dropping it would open a gap no real monolayer has.
    """
    strays = []
    for i, box in enumerate(ndi.find_objects(mask, max_label=n_cells)):
        if box is None:
            continue
        # one pixel of margin, so every fragment's ring of neighbours lies in the window
        window = _grow(box, mask.shape)
        components, count = ndi.label(mask[window] == i + 1)
        if count < 2:
            continue
        keep = np.unique(components[anchor[window] == i + 1])
        for label, piece in enumerate(ndi.find_objects(components), start=1):
            if label not in keep:
                piece = _grow(piece, components.shape)
                on_canvas = tuple(slice(p.start + w.start, p.stop + w.start) for p, w in zip(piece, window))
                strays.append((on_canvas, components[piece] == label))
    for on_canvas, fragment in strays:
        mask[on_canvas][fragment] = 0
    for on_canvas, fragment in strays:
        ring = mask[on_canvas][ndi.binary_dilation(fragment) & ~fragment]
        ring = ring[ring > 0]
        if ring.size:
            mask[on_canvas][fragment] = np.bincount(ring).argmax()


def _grow(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by one pixel on every side, clipped to ``shape``."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape))


def _place_nuclei(
    rng: np.random.Generator, n_cells: int, low: float, high: float, inner: tuple[float, float],
    spacing_radius: np.ndarray,
) -> np.ndarray:
    """Dart throwing: centres ``[m, 2]`` (m <= n) at least ``spacing_radius`` sums apart.

    The first centre lies in ``inner`` (so at least one cell survives the border cut).
    """
    centres = [rng.uniform(inner[0], inner[1], 2)]
    radii = [spacing_radius[0]]
    for _ in range(40 * n_cells):
        if len(centres) == n_cells:
            break
        candidate = rng.uniform(low, high, 2)
        own = spacing_radius[len(centres)]
        gaps = np.hypot(*(np.asarray(centres) - candidate).T) - (np.asarray(radii) + own)
        if gaps.min() > 0:
            centres.append(candidate)
            radii.append(own)
    return np.asarray(centres)


def build_geometry(
    config: SyntheticConfig,
    line: CellLine,
    rng: np.random.Generator,
    n_mitotic_min: int = 0,
) -> FieldGeometry:
    """Lay out the cells and nuclei of one field.

    Parameters
    ----------
    config : SyntheticConfig
    line : CellLine
        The field's morphology.
    rng : numpy Generator
    n_mitotic_min : int
        At least this many cells (among those that stay in the field) are mitotic.

    Returns
    -------
    FieldGeometry
        With at least one cell.
    """
    size = config.size
    mean_radius = config.cell_radius * line.radius_scale
    max_aspect = line.elongation[1]
    margin = int(np.ceil(mean_radius * (0.4 + 1.3 * np.sqrt(max_aspect))))
    canvas = size + 2 * margin

    # How many cells: confluence x (seeding area / mean cell area).
    spread = 0.3 * mean_radius
    seeding_side = size + 2 * spread
    # Log-uniform: as many sparse as confluent fields, by ratio of density.
    confluence = np.exp(rng.uniform(*np.log(config.confluence))) * line.crowding
    n_cells = max(1, int(round(confluence * seeding_side**2 / (np.pi * mean_radius**2))))

    mitotic = rng.random(n_cells) < config.mitotic_fraction
    mitotic[: min(n_mitotic_min, n_cells)] = True  # the first cell always survives the border cut
    radius = mean_radius * np.exp(rng.normal(0, config.cell_radius_sd, n_cells))
    nucleus_radius = radius * line.nucleus_ratio * np.exp(rng.normal(0, 0.08, n_cells))
    radius = np.where(mitotic, radius * 0.72, radius)  # mitotic cells round up and shrink
    aspect = np.where(mitotic, 1.0, rng.uniform(*line.elongation, n_cells))
    nucleus_aspect = np.where(mitotic, 3.2, 1.0 + 0.35 * (aspect - 1.0) + rng.uniform(0.05, 0.4, n_cells))

    spacing = np.maximum(1.05 * nucleus_radius * np.sqrt(nucleus_aspect), 0.42 * radius)
    inner = (margin + mean_radius, margin + size - mean_radius)
    if inner[0] >= inner[1]:
        inner = (margin + size / 2 - 1, margin + size / 2 + 1)
    centres = _place_nuclei(rng, n_cells, margin - spread, margin + size + spread, inner, spacing)
    n_cells = len(centres)
    mitotic, radius, nucleus_radius = mitotic[:n_cells], radius[:n_cells], nucleus_radius[:n_cells]
    aspect, nucleus_aspect = aspect[:n_cells], nucleus_aspect[:n_cells]

    field_angle = rng.uniform(0, np.pi)
    if line.aligned:
        angle = field_angle + rng.normal(0, 0.3, n_cells)
    else:
        angle = rng.uniform(0, np.pi, n_cells)
    nucleus_angle = np.where(mitotic, rng.uniform(0, np.pi, n_cells), angle + rng.normal(0, 0.25, n_cells))
    polarity = rng.uniform(0, 2 * np.pi, n_cells)
    # The cell body sits off-centre around its nucleus.
    offset = rng.uniform(0, 0.22, n_cells) * radius * np.where(mitotic, 0.2, 1.0)
    body_centre = centres + np.stack([np.sin(polarity), np.cos(polarity)], axis=1) * offset[:, None]

    warp_amplitude = 0.08 * mean_radius
    warp = _Warp(rng, mean_radius, warp_amplitude)
    border_noise = _BorderNoise(rng, _BORDER_NOISE_SCALE * mean_radius, _BORDER_NOISE, n_cells)
    # The partition is computed on a grid coarser by `factor` and upsampled: the cost drops by
    # factor**2, and blocky cell outlines are what real segmentations (run at reduced scale)
    # give anyway. Nuclei are drawn at full resolution.
    factor = 2 if mean_radius >= 40 else 1
    coarse = -(-canvas // factor)
    best = np.full((coarse, coarse), np.inf, dtype=np.float32)
    nearest = np.full((coarse, coarse), np.inf, dtype=np.float32)
    coarse_mask = np.zeros((coarse, coarse), dtype=np.int32)

    def window(centre, half, limit):
        y0, x0 = (max(int(c - half), 0) for c in centre)
        y1, x1 = (min(int(c + half) + 2, limit) for c in centre)
        return slice(y0, y1), slice(x0, x1)

    for i in range(n_cells):
        irregularity = line.irregularity * (0.3 if mitotic[i] else 1.0)
        wobble = _wobble(rng, irregularity)
        half = radius[i] * np.sqrt(aspect[i]) * (1 + np.abs(wobble[0]).sum()) + warp_amplitude * 3
        rows, cols = window(body_centre[i] / factor, half / factor, coarse)
        # Full-resolution coordinates of the coarse pixels' centres.
        y = np.arange(rows.start, rows.stop, dtype=np.float32) * factor + np.float32((factor - 1) / 2)
        x = np.arange(cols.start, cols.stop, dtype=np.float32) * factor + np.float32((factor - 1) / 2)
        warp_y, warp_x = warp.at(y, x)
        distance = _normalised_distance(
            y[:, None] + warp_y - np.float32(body_centre[i, 0]),
            x[None, :] + warp_x - np.float32(body_centre[i, 1]),
            radius[i], angle[i], aspect[i], wobble,
        )
        np.minimum(nearest[rows, cols], distance, out=nearest[rows, cols])
        # The noise decides who owns a pixel, not whether it is background: borders between
        # cells meander while free outlines keep their smooth wobble.
        distance += border_noise.at(i, y, x)
        closer = distance < best[rows, cols]
        best[rows, cols][closer] = distance[closer]
        coarse_mask[rows, cols][closer] = i + 1
    coarse_mask[nearest >= 1.0] = 0
    cell_mask = np.repeat(np.repeat(coarse_mask, factor, axis=0), factor, axis=1)[:canvas, :canvas]
    cell_mask = np.ascontiguousarray(cell_mask)
    nucleus_mask = np.zeros((canvas, canvas), dtype=np.int32)

    for i in range(n_cells):
        wobble = _wobble(rng, 0.09 if not mitotic[i] else 0.2)
        half = nucleus_radius[i] * np.sqrt(nucleus_aspect[i]) * (1 + np.abs(wobble[0]).sum()) + 2
        rows, cols = window(centres[i], half, canvas)
        yy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - np.float32(centres[i, 0])
        xx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - np.float32(centres[i, 1])
        # A mitotic nucleus is the condensed metaphase plate: thin, about as long as a nucleus.
        plate_radius = nucleus_radius[i] * (0.62 if mitotic[i] else 1.0)
        inside = _normalised_distance(yy, xx, plate_radius, nucleus_angle[i], nucleus_aspect[i], wobble) < 1
        free = inside & (nucleus_mask[rows, cols] == 0)
        nucleus_mask[rows, cols][free] = i + 1
        cell_mask[rows, cols][free] = i + 1  # a nucleus always belongs to its own cell

    # Each cell keeps the part that holds its nucleus; slivers cut off by the noisy partition go
    # to the neighbour around them.
    _reassign_fragments(cell_mask, nucleus_mask, n_cells)

    # Drop cells whose nucleus lies mostly outside the field; renumber the rest 1..n.
    field = (slice(margin, margin + size), slice(margin, margin + size))
    total = np.bincount(nucleus_mask.ravel(), minlength=n_cells + 1)
    inside = np.bincount(nucleus_mask[field].ravel(), minlength=n_cells + 1)
    keep = (inside[1:] >= 0.3 * np.maximum(total[1:], 1)) & (total[1:] > 0)
    new_ids = np.zeros(n_cells + 1, dtype=np.int32)
    new_ids[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    cell_mask = new_ids[cell_mask]
    nucleus_mask = new_ids[nucleus_mask]
    cells = [
        CellGeometry(
            center=(float(centres[i, 0]), float(centres[i, 1])),
            radius=float(radius[i]),
            nucleus_radius=float(nucleus_radius[i]),
            angle=float(angle[i]),
            nucleus_angle=float(nucleus_angle[i]),
            mitotic=bool(mitotic[i]),
            polarity=float(polarity[i]),
        )
        for i in np.flatnonzero(keep)
    ]
    return FieldGeometry(cell_mask, nucleus_mask, cells, margin, size, line)


def touching_fraction(cell_mask: np.ndarray) -> float:
    """Fraction of the cells in ``cell_mask`` that share a border with another cell.

    Parameters
    ----------
    cell_mask : int ndarray ``[H, W]``
        0 background, cells 1..n.

    Returns
    -------
    float
        Share of cells with at least one pixel 4-adjacent to a pixel of another cell (0.0 for
        a mask without cells).
    """
    cell_mask = np.asarray(cell_mask)
    n_cells = int(cell_mask.max(initial=0))
    if n_cells == 0:
        return 0.0
    touching = np.zeros(n_cells + 1, dtype=bool)
    for a, b in ((cell_mask[:, :-1], cell_mask[:, 1:]), (cell_mask[:-1], cell_mask[1:])):
        border = (a != b) & (a > 0) & (b > 0)
        touching[a[border]] = True
        touching[b[border]] = True
    present = np.bincount(cell_mask.ravel(), minlength=n_cells + 1) > 0
    present[0] = False
    return float(touching[present].mean())
