"""The reference channels of one cell (blue nuclei, red microtubules, yellow ER) and the
per-cell context (local masks, distance maps, organelle positions) that every renderer shares.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from .geometry import CellGeometry
from .primitives import sample_points, saturate, smooth_noise, splat_spots, trace_fibres

__all__ = ["CellContext", "render_blue", "render_red", "render_yellow"]


class CellContext:
    """One cell, seen through its bounding box on the canvas.

    Everything a renderer needs is here, computed once on first use: masks, distance maps,
    nucleoli, the centrosome, the microtubule and ER networks (the green microtubule and ER
    patterns follow the red and yellow channels, as in real cells).

    Parameters
    ----------
    geometry : CellGeometry
    box : tuple of slice
        The bounding box on the canvas (padded, so the cell's edge lies inside it).
    cell, nucleus : bool ndarray ``[h, w]``
        The cell's and its nucleus' pixels in the box.
    background : bool ndarray ``[h, w]``
        Pixels of no cell in the box: where the cell's edge is free rather than shared with a
        neighbour.
    scale : float
        Pixel size of subcellular structures relative to the ``standard`` preset's.
    difficulty : float
    rng : numpy Generator
        Drives the cell's own structures (nucleoli, networks); renderers get their own.
    """

    def __init__(
        self,
        geometry: CellGeometry,
        box: tuple[slice, slice],
        cell: np.ndarray,
        nucleus: np.ndarray,
        background: np.ndarray,
        scale: float,
        difficulty: float,
        rng: np.random.Generator,
    ):
        self.geometry = geometry
        self.box = box
        self.cell = cell
        self.nucleus = nucleus
        self.background = background
        self.cytoplasm = cell & ~nucleus
        self.shape = cell.shape
        self.scale = float(scale)
        self.difficulty = float(difficulty)
        self.rng = rng
        self.mitotic = geometry.mitotic
        # Nucleus centre in local coordinates.
        self.center = np.array(
            [geometry.center[0] - box[0].start, geometry.center[1] - box[1].start], dtype=float
        )

    def px(self, length: float) -> float:
        """A structure size given for the ``standard`` preset, in this field's pixels (>= 0.6)."""
        return max(length * self.scale, 0.6)

    @functools.cached_property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(dy, dx) from the nucleus centre, float32 ``[h, 1]`` and ``[1, w]``."""
        dy = np.arange(self.shape[0], dtype=np.float32)[:, None] - np.float32(self.center[0])
        dx = np.arange(self.shape[1], dtype=np.float32)[None, :] - np.float32(self.center[1])
        return dy, dx

    @functools.cached_property
    def _edge_transform(self) -> tuple[np.ndarray, np.ndarray]:
        """Distance (px) from each cell pixel to the nearest pixel outside the cell, and
        whether that pixel is background (a free edge) rather than a neighbouring cell."""
        distance, (rows, cols) = ndi.distance_transform_edt(self.cell, return_indices=True)
        return distance.astype(np.float32), self.background[rows, cols]

    @functools.cached_property
    def edge_distance(self) -> np.ndarray:
        """Distance (px) from each cell pixel to the cell's edge, float32 (0 outside)."""
        return self._edge_transform[0]

    @functools.cached_property
    def nucleus_box(self) -> tuple[slice, slice]:
        """The nucleus' bounding box in the cell's box, padded by 3 px."""
        box = ndi.find_objects(self.nucleus.astype(np.int8))
        if not box or box[0] is None:
            return (slice(0, 0), slice(0, 0))
        return tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box[0])

    def nuclear_noise(self, rng: np.random.Generator, sigma: float) -> np.ndarray:
        """:func:`smooth_noise` drawn only over the nucleus' box (zeros elsewhere): nuclear
        textures need no more, and the box is several times smaller than the cell's."""
        noise = np.zeros(self.shape, dtype=np.float32)
        view = noise[self.nucleus_box]
        if view.size:
            view[...] = smooth_noise(rng, view.shape, sigma)
        return noise

    @functools.cached_property
    def nucleus_depth(self) -> np.ndarray:
        """Distance (px) from each nucleus pixel to the nucleus' edge, float32 (0 outside)."""
        depth = np.zeros(self.shape, dtype=np.float32)
        box = self.nucleus_box
        depth[box] = ndi.distance_transform_edt(self.nucleus[box])
        return depth

    @functools.cached_property
    def nucleus_distance(self) -> np.ndarray:
        """Distance (px) from each pixel outside the nucleus to it, float32 (0 inside)."""
        return ndi.distance_transform_edt(~self.nucleus).astype(np.float32)

    @functools.cached_property
    def nucleus_rim(self) -> np.ndarray:
        """Unsigned distance (px) to the nuclear envelope, float32 (small on both sides)."""
        return np.where(self.nucleus, self.nucleus_depth, self.nucleus_distance)

    @functools.cached_property
    def nucleoli(self) -> np.ndarray:
        """2-5 nucleoli: smooth blobs inside an interphase nucleus, float32 in [0, 1]."""
        shape = np.zeros(self.shape, dtype=np.float32)
        if self.mitotic:
            return shape  # nucleoli disassemble in mitosis
        deep = self.nucleus_depth > 0.3 * self.geometry.nucleus_radius
        count = int(self.rng.integers(2, 6))
        centres = sample_points(deep if deep.any() else self.nucleus, count, self.rng)
        sigma = self.px(4.5) * self.rng.uniform(0.8, 1.3)
        blobs = splat_spots(self.shape, centres, sigma, self.rng.uniform(0.7, 1.0, count))
        # Irregular outlines: threshold the blobs against a little noise.
        rough = blobs + 0.15 * self.nuclear_noise(self.rng, self.px(1.2))
        return np.clip((rough - 0.35) / 0.3, 0, 1) * self.nucleus

    @functools.cached_property
    def centrosome(self) -> np.ndarray:
        """Centrosome position (y, x) just outside the nucleus on the polarity side."""
        direction = np.array([np.sin(self.geometry.polarity), np.cos(self.geometry.polarity)])
        steps = np.arange(0, 3 * self.geometry.radius, 1.0)
        path = self.center + steps[:, None] * direction
        rows = np.clip(np.rint(path[:, 0]).astype(int), 0, self.shape[0] - 1)
        cols = np.clip(np.rint(path[:, 1]).astype(int), 0, self.shape[1] - 1)
        outside = np.flatnonzero(~self.nucleus[rows, cols] & self.cell[rows, cols])
        if outside.size == 0:
            return self.center.copy()
        return path[min(outside[0] + int(self.px(4)), outside[-1])]

    @functools.cached_property
    def microtubules(self) -> np.ndarray:
        """Interphase microtubule network, float32 ``[h, w]`` in [0, 1].

        Fibres radiate from the centrosome to the cell edge, plus free fibres forming a mesh;
        bright, contrasted bundles that crowd around the nucleus and the centrosome, as tubulin
        stains in HPA fields.
        """
        rng = self.rng
        radius = self.geometry.radius
        n_aster = int(70 + 0.6 * radius)
        n_free = int(0.5 * n_aster)
        starts = np.concatenate([
            self.centrosome + rng.normal(0, self.px(2), (n_aster, 2)),
            sample_points(self.cytoplasm, n_free, rng),
        ])
        angles = rng.uniform(0, 2 * np.pi, len(starts))
        weights = rng.uniform(0.15, 1.0, len(starts)).astype(np.float32) ** 1.5
        density = trace_fibres(self.cell, starts, angles, int(2 * radius), 0.06, rng,
                               weights=weights)
        fibres = saturate(ndi.gaussian_filter(density, self.px(0.6)), 0.45)
        # Brighter where the cell is thick, around the nucleus, and at the centrosome where
        # the fibres converge.
        dy, dx = self.coords
        to_centrosome = np.hypot(dy + np.float32(self.center[0] - self.centrosome[0]),
                                 dx + np.float32(self.center[1] - self.centrosome[1]))
        thickness = (0.25 + 0.75 * np.exp(-self.nucleus_distance / np.float32(0.35 * radius))
                     + 0.5 * np.exp(-to_centrosome / np.float32(0.2 * radius)))
        return np.clip(fibres * thickness * (1.0 - 0.4 * self.nucleus)
                       + 0.06 * self.cytoplasm_soft, 0, 1)

    @functools.cached_property
    def spindle(self) -> np.ndarray:
        """Bipolar mitotic spindle, float32 ``[h, w]`` in [0, 1] (zeros for interphase cells).

        Fibres run from two poles, either side of the metaphase plate, to points along it.
        """
        if not self.mitotic:
            return np.zeros(self.shape, dtype=np.float32)
        dy, dx = self.coords
        plate = self.geometry.nucleus_angle
        along_plate = dx * np.float32(np.cos(plate)) + dy * np.float32(np.sin(plate))
        to_pole = -dx * np.float32(np.sin(plate)) + dy * np.float32(np.cos(plate))
        half_length = np.float32(0.95 * self.geometry.nucleus_radius)
        half_width = np.float32(0.75 * self.geometry.nucleus_radius)
        taper = np.clip(1.0 - np.abs(to_pole) / half_length, 0, 1)
        # Position across the spindle, 0 at the axis, +-1 at its outline; fibres converge at poles.
        across = along_plate / (half_width * taper + np.float32(1e-3))
        comb = self.rng.uniform(0.3, 1.0, 24).astype(np.float32)
        index = np.clip(((across + 1) * 12).astype(int), 0, 23)
        fibres = comb[index] * np.clip(1 - across**2, 0, 1) * (taper > 0)
        poles = splat_spots(self.shape, self.center + np.array(
            [[np.cos(plate), -np.sin(plate)], [-np.cos(plate), np.sin(plate)]]) * half_length,
            self.px(2.5))
        return np.clip(fibres * (0.5 + 0.5 * taper) + poles, 0, 1) * self.cell

    @functools.cached_property
    def er_network(self) -> np.ndarray:
        """Reticular ER, densest around the nucleus and fading to the edge, float32 in [0, 1]."""
        sigma = self.px(2.6)
        ridges = np.exp(-(smooth_noise(self.rng, self.shape, sigma) / 0.3) ** 2)
        radius = self.geometry.radius
        profile = 0.25 + 0.75 * np.exp(-self.nucleus_distance / np.float32(0.35 * radius))
        sheet = 0.5 * np.exp(-self.nucleus_distance / np.float32(self.px(5)))
        network = np.clip(profile * (0.3 + 0.7 * ridges) + sheet, 0, 1)
        return network * self.cytoplasm

    @functools.cached_property
    def cytoplasm_patches(self) -> np.ndarray:
        """Slow multiplicative modulation of the cytoplasm (0.55..1.45), float32 ``[h, w]``:
        thicker and thinner patches that every diffuse cytoplasmic stain of the cell shares."""
        # Drawn at half resolution (a quarter of the cost): the patches are far wider than a pixel.
        half = smooth_noise(self.rng, ((self.shape[0] + 1) // 2, (self.shape[1] + 1) // 2),
                            self.px(3))
        patches = half.repeat(2, axis=0).repeat(2, axis=1)[: self.shape[0], : self.shape[1]]
        return np.clip(1.0 + 0.25 * patches, 0.55, 1.45)

    @functools.cached_property
    def cytoplasm_soft(self) -> np.ndarray:
        """Cytoplasm with a soft edge, float32 in [0, 1]: the diffuse-protein footprint.

        It fades to 0 at a free edge (the cell thins out) but only dips to 0.7 at a border
        shared with a neighbour, so the cytoplasm of touching cells abuts as in a monolayer.
        """
        distance, free_edge = self._edge_transform
        free = np.where(free_edge, np.clip(distance / np.float32(self.px(4)), 0, 1), 1)
        shared = 0.7 + 0.3 * np.clip(distance / np.float32(self.px(2)), 0, 1)
        return free * shared * self.cytoplasm


def render_blue(ctx: CellContext) -> np.ndarray:
    """DAPI-like nucleus with chromatin texture and dark nucleoli, float32 ``[h, w]``."""
    if ctx.mitotic:
        texture = 0.8 + 0.1 * ctx.nuclear_noise(ctx.rng, ctx.px(1.0))
        return np.clip(texture, 0, 1) * ctx.nucleus
    chromatin = (0.72 + 0.1 * ctx.nuclear_noise(ctx.rng, ctx.px(3.0))
                 + 0.08 * ctx.nuclear_noise(ctx.rng, ctx.px(1.0)))
    rim = 0.75 + 0.25 * np.clip(ctx.nucleus_depth / np.float32(ctx.px(4)), 0, 1)
    return np.clip(chromatin * rim * (1.0 - 0.5 * ctx.nucleoli), 0, 1) * ctx.nucleus


def render_red(ctx: CellContext) -> np.ndarray:
    """Tubulin: the microtubule network (the spindle in a mitotic cell), float32 ``[h, w]``."""
    if ctx.mitotic:
        return np.clip(ctx.spindle + 0.18 * ctx.cytoplasm_soft, 0, 1)
    return ctx.microtubules


def render_yellow(ctx: CellContext) -> np.ndarray:
    """ER marker: the reticular network (diffuse in a mitotic cell), float32 ``[h, w]``."""
    if ctx.mitotic:
        texture = 0.5 + 0.15 * smooth_noise(ctx.rng, ctx.shape, ctx.px(1.5))
        return np.clip(texture, 0, 1) * ctx.cell * (1 - 0.7 * ctx.nucleus)
    return ctx.er_network
