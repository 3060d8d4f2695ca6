"""Vectorised drawing primitives shared by the renderers: noise, spots, fibres, point sampling.

All work on small local arrays (a cell's bounding box) and return float32.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["smooth_noise", "splat_spots", "trace_fibres", "sample_points", "saturate"]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, float32 ``shape``, zero mean and unit standard deviation.

    ``sigma`` (pixels) is the correlation length: blobs and ridges have about that size.
    """
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3.0)
    std = float(noise.std())
    return (noise - noise.mean()) / (std if std > 0 else 1.0)


def splat_spots(
    shape: tuple[int, int],
    points: np.ndarray,
    sigma: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian spots of one size at ``points`` (float ``[n, 2]`` as (y, x)), float32 ``shape``.

    A spot of weight 1 peaks at about 1: impulses are added, then blurred and rescaled, which
    costs one filter whatever the number of spots.
    """
    image = np.zeros(shape, dtype=np.float32)
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if points.size == 0:
        return image
    rows = np.clip(np.rint(points[:, 0]).astype(int), 0, shape[0] - 1)
    cols = np.clip(np.rint(points[:, 1]).astype(int), 0, shape[1] - 1)
    weights = np.ones(len(points), np.float32) if weights is None else np.asarray(weights, np.float32)
    sigma = max(float(sigma), 0.5)
    # Blur only the region the spots can reach: a few dots need a small filter, not the box.
    reach = int(np.ceil(3 * sigma)) + 1
    y0, x0 = max(rows.min() - reach, 0), max(cols.min() - reach, 0)
    y1, x1 = min(rows.max() + reach + 1, shape[0]), min(cols.max() + reach + 1, shape[1])
    region = image[y0:y1, x0:x1]
    np.add.at(region, (rows - y0, cols - x0), weights)
    region[...] = ndi.gaussian_filter(region, sigma, truncate=3.0) * np.float32(2 * np.pi * sigma**2)
    return image


def trace_fibres(
    mask: np.ndarray,
    starts: np.ndarray,
    angles: np.ndarray,
    n_steps: int,
    curvature: float,
    rng: np.random.Generator,
    step: float = 1.0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise curved fibres that start at ``starts`` and end where they leave ``mask``.

    Each fibre is a path of ``n_steps`` steps whose heading drifts by a random walk with
    ``curvature`` radians per step; all fibres are traced at once (cumulative sums, no loop).

    Parameters
    ----------
    mask : bool ndarray ``[h, w]``
        Where fibres may run; a fibre stops for good at its first step outside.
    starts : float ndarray ``[k, 2]``
        Start points (y, x).
    angles : float ndarray ``[k]``
        Initial headings (radians).
    n_steps : int
    curvature : float
    rng : numpy Generator
    step : float
        Step length in pixels.
    weights : float ndarray ``[k]``, optional
        Brightness per fibre.

    Returns
    -------
    float32 ndarray ``[h, w]``
        How many fibre steps fell on each pixel (weighted).
    """
    height, width = mask.shape
    starts = np.asarray(starts, dtype=np.float32).reshape(-1, 2)
    n_fibres = len(starts)
    density = np.zeros(height * width, dtype=np.float32)
    if n_fibres == 0 or n_steps <= 0:
        return density.reshape(height, width)
    headings = np.asarray(angles, np.float32) + np.cumsum(
        rng.normal(0.0, curvature, (n_steps, n_fibres)).astype(np.float32), axis=0
    )
    ys = starts[:, 0] + np.cumsum(np.sin(headings) * step, axis=0)
    xs = starts[:, 1] + np.cumsum(np.cos(headings) * step, axis=0)
    rows, cols = np.rint(ys).astype(np.int32), np.rint(xs).astype(np.int32)
    in_bounds = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    np.clip(rows, 0, height - 1, out=rows)
    np.clip(cols, 0, width - 1, out=cols)
    alive = np.logical_and.accumulate(in_bounds & mask[rows, cols], axis=0)
    flat = rows * width + cols
    fibre_weights = np.ones(n_fibres, np.float32) if weights is None else np.asarray(weights, np.float32)
    step_weights = np.broadcast_to(fibre_weights, flat.shape)
    density += np.bincount(flat[alive], step_weights[alive], minlength=height * width).astype(np.float32)
    return density.reshape(height, width)


def sample_points(
    mask: np.ndarray,
    n: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` random pixel positions inside ``mask`` (float ``[n, 2]``, (y, x), sub-pixel jitter).

    ``weights`` (``[h, w]``, non-negative) makes some pixels likelier. Empty mask -> ``[0, 2]``.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0 or n <= 0:
        return np.zeros((0, 2), dtype=float)
    if weights is None:
        chosen = rng.integers(rows.size, size=n)
    else:
        p = np.asarray(weights, dtype=float)[rows, cols]
        total = p.sum()
        chosen = rng.choice(rows.size, size=n, p=p / total) if total > 0 else rng.integers(rows.size, size=n)
    jitter = rng.uniform(-0.5, 0.5, (n, 2))
    return np.stack([rows[chosen], cols[chosen]], axis=1) + jitter


def saturate(image: np.ndarray, level: float) -> np.ndarray:
    """``1 - exp(-image / level)``: counts -> [0, 1), so overlapping fibres do not blow up."""
    return (1.0 - np.exp(-image / np.float32(level))).astype(np.float32)
