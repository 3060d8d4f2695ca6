"""The green (protein) channel: one renderer per HPA 2021 location class.

A renderer takes a :class:`~hpa_embed.synthetic.reference.CellContext` and a random generator
and returns float32 ``[h, w]`` over the cell's box, scaled so its bright end is about 1.
``ctx.difficulty`` (0..1) pulls the classes that biologists confuse towards each other:
nuclear speckles and nuclear bodies shrink, multiply and sit on a rising diffuse nucleoplasm;
ER, vesicles and mitochondria blur, fragment and sit on a rising diffuse cytosol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .primitives import sample_points, saturate, smooth_noise, splat_spots, trace_fibres
from .reference import CellContext

__all__ = ["GREEN_RENDERERS", "render_green"]

Renderer = Callable[[CellContext, np.random.Generator], np.ndarray]


def _gauss(x: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-0.5 * (x / np.float32(width)) ** 2)


def _nucleoplasm(ctx: CellContext, rng: np.random.Generator, grain: float) -> np.ndarray:
    """Diffuse nuclear signal that spares the nucleoli; ``grain`` sets its mottling."""
    texture = 1.0 + grain * ctx.nuclear_noise(rng, ctx.px(1.5))
    soft_edge = np.clip(ctx.nucleus_depth / np.float32(ctx.px(2.5)), 0, 1)
    return np.clip(texture * soft_edge * (1.0 - 0.85 * ctx.nucleoli), 0, None)


def _cytosol(ctx: CellContext, rng: np.random.Generator, grain: float) -> np.ndarray:
    """Diffuse cytoplasmic signal with a soft edge: fine grain (``grain`` sets its strength)
    over patches a few microns wide, as real cytoplasm is never a flat wash."""
    texture = (1.0 + grain * smooth_noise(rng, ctx.shape, ctx.px(1.0))) * ctx.cytoplasm_patches
    return np.clip(texture, 0, None) * ctx.cytoplasm_soft


def nucleoplasm(ctx, rng):
    return _nucleoplasm(ctx, rng, grain=0.12 + 0.3 * ctx.difficulty)


def nuclear_membrane(ctx, rng):
    rim = _gauss(ctx.nucleus_rim, ctx.px(1.3)) * (0.75 + 0.2 * smooth_noise(rng, ctx.shape, ctx.px(3)))
    return rim * ctx.cell + 0.25 * ctx.difficulty * _nucleoplasm(ctx, rng, 0.2)


def nucleoli(ctx, rng):
    texture = 0.85 + 0.15 * ctx.nuclear_noise(rng, ctx.px(1.2))
    return ctx.nucleoli * texture + 0.15 * ctx.difficulty * _nucleoplasm(ctx, rng, 0.2)


def nucleoli_fibrillar_center(ctx, rng):
    count = int(rng.integers(3, 9))
    dots = splat_spots(ctx.shape, sample_points(ctx.nucleoli > 0.5, count, rng), ctx.px(1.3),
                       rng.uniform(0.6, 1.0, count))
    return dots + (0.1 + 0.25 * ctx.difficulty) * ctx.nucleoli


def nuclear_speckles(ctx, rng):
    d = ctx.difficulty
    field = ctx.nuclear_noise(rng, ctx.px(3.0 * (1 - 0.4 * d)))
    threshold = 1.0 - 0.6 * d
    blobs = np.clip((field - threshold) / (2.2 - threshold), 0, 1) ** 0.7
    speckles = blobs * np.clip(ctx.nucleus_depth / np.float32(ctx.px(2)), 0, 1) * (1 - ctx.nucleoli)
    return speckles + (0.15 + 0.45 * d) * _nucleoplasm(ctx, rng, 0.2)


def nuclear_bodies(ctx, rng):
    d = ctx.difficulty
    count = int(rng.integers(1, 7 + int(8 * d)))
    inner = (ctx.nucleus_depth > ctx.px(3)) & (ctx.nucleoli < 0.3)
    bodies = splat_spots(ctx.shape, sample_points(inner, count, rng), ctx.px(2.6 * (1 - 0.4 * d)),
                         rng.uniform(0.6, 1.0, count))
    return bodies + (0.05 + 0.4 * d) * _nucleoplasm(ctx, rng, 0.2)


def endoplasmic_reticulum(ctx, rng):
    d = ctx.difficulty
    network = ctx.er_network * (0.85 + 0.15 * smooth_noise(rng, ctx.shape, ctx.px(2)))
    if d > 0:
        network = ndi.gaussian_filter(network, ctx.px(1.5 * d))
    return network * ctx.cytoplasm + 0.4 * d * _cytosol(ctx, rng, 0.2)


def golgi_apparatus(ctx, rng):
    dy, dx = ctx.coords
    # Angle from the polarity direction, wrapped to [-pi, pi].
    offset = np.angle(np.exp(1j * (np.arctan2(dy, dx) - ctx.geometry.polarity))).astype(np.float32)
    spread = 0.7 + 0.5 * ctx.difficulty
    cap = _gauss(offset, spread) * _gauss(ctx.nucleus_distance - ctx.px(8), ctx.px(6 + 4 * ctx.difficulty))
    fragments = np.clip(0.4 + smooth_noise(rng, ctx.shape, ctx.px(1.6)), 0, None)
    return cap * fragments * ctx.cytoplasm


def intermediate_filaments(ctx, rng):
    radius = ctx.geometry.radius
    count = int(90 + 0.6 * radius)
    near_nucleus = np.exp(-ctx.nucleus_distance / np.float32(0.25 * radius))
    starts = sample_points(ctx.cytoplasm, count, rng, weights=near_nucleus)
    # Head roughly around the nucleus: a cage of wavy filaments.
    tangent = np.arctan2(starts[:, 0] - ctx.center[0], starts[:, 1] - ctx.center[1]) + np.pi / 2
    angles = tangent + rng.normal(0, 0.5, count) + np.pi * rng.integers(0, 2, count)
    density = trace_fibres(ctx.cell, starts, angles, int(1.2 * radius), 0.12, rng,
                           weights=rng.uniform(0.2, 0.6, count))
    fibres = saturate(ndi.gaussian_filter(density, ctx.px(0.6)), 1.0)
    return fibres * (1.0 - 0.6 * ctx.nucleus)


def actin_filaments(ctx, rng):
    radius = ctx.geometry.radius
    count = int(rng.integers(12, 30))
    starts = sample_points(ctx.cytoplasm, count, rng)
    heading = ctx.geometry.angle + rng.normal(0, 0.2, count)
    # Stress fibres are straight and span the cell: trace each both ways from its start.
    starts2 = np.concatenate([starts, starts])
    angles = np.concatenate([heading, heading + np.pi])
    density = trace_fibres(ctx.cell, starts2, angles, int(3 * radius), 0.004, rng,
                           weights=np.tile(rng.uniform(0.4, 1.0, count), 2))
    fibres = saturate(ndi.gaussian_filter(density, ctx.px(0.8)), 0.5) * (1 - 0.8 * ctx.nucleus)
    cortex = 0.7 * np.exp(-ctx.edge_distance / np.float32(ctx.px(2.5))) * ctx.cell
    return fibres * (1 - 0.4 * ctx.difficulty) + cortex


def microtubules(ctx, rng):
    network = ctx.spindle if ctx.mitotic else ctx.microtubules
    return network + 0.3 * ctx.difficulty * _cytosol(ctx, rng, 0.1)


def mitotic_spindle(ctx, rng):
    return ctx.spindle


def centrosome(ctx, rng):
    count = int(rng.integers(1, 3))
    dots = ctx.centrosome + rng.normal(0, ctx.px(2.5), (count, 2))
    spots = splat_spots(ctx.shape, dots, ctx.px(2.2), rng.uniform(0.7, 1.0, count))
    return spots * ctx.cell + 0.15 * ctx.difficulty * _cytosol(ctx, rng, 0.1)


def plasma_membrane(ctx, rng):
    rim = _gauss(ctx.edge_distance, ctx.px(1.8)) * (0.7 + 0.2 * smooth_noise(rng, ctx.shape, ctx.px(3)))
    return np.clip(rim, 0, None) * ctx.cell + 0.35 * ctx.difficulty * _cytosol(ctx, rng, 0.2)


def mitochondria(ctx, rng):
    d = ctx.difficulty
    radius = ctx.geometry.radius
    count = int(ctx.cytoplasm.sum() / (ctx.px(1) ** 2 * 90))
    perinuclear = 0.3 + np.exp(-ctx.nucleus_distance / np.float32(0.4 * radius))
    starts = sample_points(ctx.cytoplasm, count, rng, weights=perinuclear)
    length = int(ctx.px(12 * (1 - 0.65 * d))) + 2
    density = trace_fibres(ctx.cytoplasm, starts, rng.uniform(0, 2 * np.pi, count), length, 0.15, rng,
                           step=0.8, weights=rng.uniform(0.5, 1.0, count))
    tubules = saturate(ndi.gaussian_filter(density, ctx.px(0.9)), 0.7)
    return tubules + 0.25 * d * _cytosol(ctx, rng, 0.2)


def aggresome(ctx, rng):
    centre = ctx.centrosome + rng.normal(0, ctx.px(3), 2)
    body = splat_spots(ctx.shape, centre[None], ctx.px(5) * rng.uniform(0.8, 1.4))
    rough = np.clip(body * (1 + 0.3 * smooth_noise(rng, ctx.shape, ctx.px(1.5))), 0, None)
    return rough * ctx.cell + 0.1 * _cytosol(ctx, rng, 0.1)


def cytosol(ctx, rng):
    return _cytosol(ctx, rng, grain=0.25 + 0.3 * ctx.difficulty)


def vesicles(ctx, rng):
    d = ctx.difficulty
    count = int(ctx.cytoplasm.sum() / (ctx.px(1) ** 2 * (260 - 170 * d)))
    dots = splat_spots(ctx.shape, sample_points(ctx.cytoplasm, count, rng), ctx.px(1.4 * (1 - 0.3 * d)),
                       rng.uniform(0.3, 1.0, count))
    return dots * ctx.cell + (0.05 + 0.35 * d) * _cytosol(ctx, rng, 0.2)


def negative(ctx, rng):
    return np.zeros(ctx.shape, dtype=np.float32)


#: Class id -> renderer, in HPA 2021 order.
GREEN_RENDERERS: dict[int, Renderer] = dict(enumerate((
    nucleoplasm, nuclear_membrane, nucleoli, nucleoli_fibrillar_center, nuclear_speckles,
    nuclear_bodies, endoplasmic_reticulum, golgi_apparatus, intermediate_filaments,
    actin_filaments, microtubules, mitotic_spindle, centrosome, plasma_membrane, mitochondria,
    aggresome, cytosol, vesicles, negative,
)))


def render_green(ctx: CellContext, labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """The protein channel of one cell showing ``labels``, float32 ``[h, w]``, peak about 1.

    Each pattern is scaled so its bright end is 1 (the 99th percentile in the cell, or half the
    maximum for sparse patterns such as a few dots); a cell with several labels sums them with
    random weights (the strongest weighted 1).
    """
    total = np.zeros(ctx.shape, dtype=np.float32)
    weights = rng.uniform(0.4, 1.0, len(labels))
    weights /= weights.max()
    for label, weight in zip(labels, weights):
        pattern = GREEN_RENDERERS[label](ctx, rng).astype(np.float32, copy=False)
        values = pattern[ctx.cell]
        peak = max(float(np.percentile(values, 99)), 0.5 * float(values.max())) if values.size else 0.0
        if peak > 0:
            total += np.float32(weight / peak) * pattern
    return np.clip(total, 0, 1.5) * ctx.cell
