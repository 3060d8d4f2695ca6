"""The classical segmenter: thresholds and watersheds at a reduced working resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .base import (
    BLUE,
    RED,
    YELLOW,
    block_mean,
    check_image,
    estimate_pixel_size,
    foreground_threshold,
    relabel_masks,
)

# --------------------------------------------------------------------------- working resolution


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
    """Each working pixel repeated over its ``factor x factor`` block, cropped to ``shape``."""
    if factor == 1:
        return labels[: shape[0], : shape[1]]
    rows = np.arange(shape[0]) // factor
    cols = np.arange(shape[1]) // factor
    return labels[rows][:, cols]


def _remove_small_labels(labels: np.ndarray, min_area: float) -> np.ndarray:
    """``labels`` with the objects under ``min_area`` pixels set to 0."""
    # ours: remove_small_objects turned min_size into an inclusive max_size in skimage 0.26; we take 0.22
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
        box = tuple(
            slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, labels.shape)
        )
        blurred = ndi.gaussian_filter((labels[box] == index).astype(np.float32), sigma, truncate=3.0)
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


def split_touching(foreground: np.ndarray, saddle_ratio: float = 0.7, min_depth: float = 2.0) -> np.ndarray:
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
    from skimage.segmentation import relabel_sequential, watershed

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
    relabel, _, _ = relabel_sequential(roots)  # root 0 (background) stays 0
    return relabel.astype(np.int32)[regions]


# --------------------------------------------------------------------------- classical


def _cell_altitude(
    reference: np.ndarray, sigma: float, edge_weight: float, edge_sigma: float, pixel_size: float = 1.0
) -> np.ndarray:
    """The landscape the cell watershed floods: the negated smoothed reference plus its edges.

    ``-G_sigma * reference + edge_weight * |grad(G_edge_sigma * reference)|``, the gradient per
    µm (Sobel, divided by ``pixel_size``). The first term alone leaves the border between a
    bright and a dim cell to chance: once the water reaches the dim cell's level, both cells
    flood its flat cytoplasm at once and meet halfway between the step and the dim nucleus.
    The second raises the step into a wall: a step of height ``h`` blurred over ``s`` µm
    has a slope of about ``h / (2.5 s)``, so with ``edge_weight`` near ``s`` or above the wall
    stands above the dim side and the dim cell floods up to it first. Within a cell, where
    the reference varies slowly, the term adds little.

    Parameters
    ----------
    reference : float32 ``[H, W]``
        The reference channels (red + yellow) at working resolution.
    sigma, edge_sigma : float
        Gaussian sigmas (pixels) of the two terms.
    edge_weight : float
        Weight (µm) of the gradient term; 0 gives the negated smoothed reference.
    pixel_size : float
        µm per pixel, so that ``edge_weight`` is in µm at any resolution.

    Returns
    -------
    float32 ``[H, W]``, low inside cells (where their seeds flood first), high at their borders.
    """
    from skimage.filters import sobel

    reference = np.asarray(reference, dtype=np.float32)
    altitude = -ndi.gaussian_filter(reference, sigma)
    if edge_weight > 0:
        edges = sobel(ndi.gaussian_filter(reference, edge_sigma))
        altitude += np.float32(edge_weight / pixel_size) * edges
    return altitude


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
    3. Cells: watershed seeded by the nuclei, each grown by ``seed_growth`` (the reference is
       dark over a nucleus: a seed must reach the bright cytoplasm round it), flooding the
       negated reference, lightly smoothed (``watershed_smoothing``) so the dim line between
       touching cells survives, plus ``edge_weight`` x its gradient magnitude (smoothed over
       ``edge_smoothing``): where a bright cell meets a dim one, the step between them is a
       wall that the bright cell cannot cross before the dim one has flooded its own flat
       cytoplasm, so the border lies at the intensity edge rather than between the nuclei.
       No compactness by default (see ``_cell_altitude``).
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
    edge_weight, edge_smoothing : float
        Weight (µm) of the reference's gradient magnitude (per µm) in the flooded landscape, and
        the Gaussian sigma (µm) it is taken at; 0 floods the negated reference alone.
    seed_growth : float
        Distance (µm) by which the nuclei are grown, within the cell foreground, into the
        watershed's seeds.
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
        Compact-watershed regularisation (0: plain watershed). It pulls the border between two
        touching cells towards the middle between their nuclei, against the intensity edge.
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
    watershed_smoothing: float = 0.25
    edge_weight: float = 0.5
    edge_smoothing: float = 0.5
    seed_growth: float = 1.5
    min_cell_area: float = 30.0
    orphan_distance: float = 10.0
    valley_ratio: float = 0.7
    compactness: float = 0.0
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
        check_image(image)
        shape = image.shape[1:]
        pixel_size = self.resolve_pixel_size(image)
        factor = max(1, int(round(self.working_pixel_size / pixel_size)))
        work_pixel = pixel_size * factor
        area_px = 1.0 / work_pixel**2  # working pixels per µm²

        # nuclei
        blue = block_mean(image[BLUE], factor)
        blue_smooth = ndi.gaussian_filter(blue, self.nucleus_smoothing / work_pixel)
        blue_threshold = foreground_threshold(blue_smooth, blue, self.nucleus_threshold)
        nuclei = self._nuclei(blue_smooth > blue_threshold, work_pixel, area_px)
        if not nuclei.any():
            empty = np.zeros(shape, dtype=np.int32)
            return empty, empty.copy()

        # cells
        reference = block_mean(image[RED], factor)
        if image.shape[0] > YELLOW:
            reference += block_mean(image[YELLOW], factor)
        ref_smooth = ndi.gaussian_filter(reference, self.cell_smoothing / work_pixel)
        ref_threshold = foreground_threshold(ref_smooth, reference, self.cell_threshold)
        altitude = _cell_altitude(
            reference,
            self.watershed_smoothing / work_pixel,
            self.edge_weight,
            self.edge_smoothing / work_pixel,
            work_pixel,
        )
        # cells, plus the regions of unseen cells (ids > n_nuclei), refined together so that
        # the border between a cell and a dropped neighbour is as smooth as between two cells
        regions = self._cells(nuclei, ref_smooth, ref_threshold, altitude, work_pixel)
        n_nuclei = int(nuclei.max())
        small = np.bincount(regions.ravel()) < self.min_cell_area * area_px
        small[0] = False
        small[n_nuclei + 1 :] = False
        regions[small[regions]] = 0
        cells = np.where(regions <= n_nuclei, regions, 0)

        # back to full resolution; the nucleus is painted into its cell so it always lies inside
        nuclei = np.where(cells > 0, nuclei, 0)
        nucleus_margin = np.where(
            nuclei > 0,
            np.maximum(blue_smooth - blue_threshold, 1e-6),
            np.minimum(blue_smooth - blue_threshold, -1e-6),
        )
        cell_margin = np.where(
            regions > 0,
            np.maximum(ref_smooth - ref_threshold, 1e-6),
            np.minimum(ref_smooth - ref_threshold, -1e-6),
        )
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
        altitude: np.ndarray,
        work_pixel: float,
    ) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.segmentation import expand_labels, watershed

        foreground = (ref_smooth > ref_threshold) | (nuclei > 0)
        # pinholes in the cytoplasm (smaller than a nucleus) belong to the cell around them
        holes, _ = ndi.label(ndi.binary_fill_holes(foreground) & ~foreground)
        holes = np.bincount(holes.ravel())[holes] < self.min_nucleus_area / work_pixel**2
        foreground |= holes
        n_nuclei = int(nuclei.max())
        markers = np.where(foreground, expand_labels(nuclei, self.seed_growth / work_pixel), 0)
        n_kept_apart = n_nuclei
        if np.isfinite(self.orphan_distance):
            # each stretch of cytoplasm far from every nucleus gets competing seeds at its
            # brightest points (a watershed seed must sit in a basin, not on a slope)
            to_nucleus = ndi.distance_transform_edt(nuclei == 0) * work_pixel
            far, n_far = ndi.label(foreground & (to_nucleus > self.orphan_distance))
            if n_far:
                # one seed per local maximum (a nucleus radius apart), at least one per stretch
                seeds = [
                    np.asarray(ndi.maximum_position(ref_smooth, far, np.arange(1, n_far + 1))).reshape(-1, 2)
                ]
                spacing = max(1, int(self.nucleus_diameter / 2 / work_pixel))
                seeds.append(
                    peak_local_max(ref_smooth, min_distance=spacing, labels=far, exclude_border=False)
                )
                rows, cols = np.concatenate(seeds).astype(np.int64).T
                markers[rows, cols] = n_kept_apart + np.arange(1, len(rows) + 1)
        # in units of the threshold, so that the compactness means the same in every field
        altitude = altitude / max(ref_threshold, 1e-6)
        regions = watershed(altitude, markers, mask=foreground, compactness=self.compactness)
        if regions.max() > n_kept_apart:
            # valleys measured on the landscape that was flooded: the step from a bright cell
            # down to a dim one is then a valley, and a seeded stretch of the dim cell's
            # cytoplasm joins the dim cell, not the bright one across the step
            regions = _merge_unseeded(regions, n_kept_apart, -altitude, self.valley_ratio)
        regions = _smooth_labels(regions, self.boundary_smoothing / work_pixel)
        # a nucleus always lies in its own cell
        return np.where(nuclei > 0, nuclei, regions).astype(np.int32)
