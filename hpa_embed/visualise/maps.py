"""Static maps of cells (PNG): a 2-D embedding (e.g. :class:`~.projection.UMAPProjector`'s)
coloured by class, image, cell line, prediction or correctness.

Up to ``max_points`` cells (100,000 by default) each cell is a dot, drawn in random order so that
no category hides another by drawing last. Beyond that, dots would saturate, so the map becomes
a 2-D histogram: each bin takes the colour of the majority category of its cells and an opacity
that grows with the log of its cell count (for correctness: the fraction of wrong cells among
the known ones). Figures are built on :class:`matplotlib.figure.Figure` (no pyplot) and written
with :func:`~.plots.save_figure`.

Multi-label cells: :func:`plot_class_panels` draws one small panel per class with that class's
cells highlighted over all cells in grey, a cell with several labels appearing in each of its
classes; :func:`plot_map` with ``kind="class"`` and a multi-hot ``Y`` colours single-label cells
by their class and gives cells with several labels a colour of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..labels import HPA2018, HPA2021
from .plots import save_figure

__all__ = ["map_figure", "plot_map", "class_panels_figure", "plot_class_panels", "MAX_POINTS"]

log = logging.getLogger(__name__)

#: Above this many cells a map is drawn as a 2-D histogram instead of dots.
MAX_POINTS = 100_000
_GREY = "#cfcfcf"  # "other", "unknown", "none", and every cell behind a class panel
_SEVERAL = "#222222"  # cells with several classes
_CORRECTNESS = ("correct", "wrong", "unknown")
_CORRECTNESS_COLOURS = ("#1a9850", "#d73027", _GREY)
_BINS = 400  # histogram bins along the longer side of the map


@dataclass
class _Categories:
    """Each cell's category (codes int ``[N]``) and, per category, a label, colour and count."""

    codes: np.ndarray
    labels: list[str]
    colours: np.ndarray  # RGBA [C, 4]
    background: np.ndarray  # bool [C]: grey categories, drawn beneath the others

    def legend(self, ax, title: str | None) -> None:
        counts = np.bincount(self.codes, minlength=len(self.labels))
        handles = [Line2D([], [], linestyle="", marker="o", markersize=6, color=colour,
                          label=f"{label} ({count:,})")
                   for label, colour, count in zip(self.labels, self.colours, counts) if count]
        ax.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  title_fontsize=9, frameon=False)


# --------------------------------------------------------------------------- inputs


def _as_coordinates(coordinates: np.ndarray) -> np.ndarray:
    coordinates = np.asarray(coordinates, dtype=np.float64)
    if coordinates.ndim != 2 or coordinates.shape[1] != 2:
        raise ValueError(f"coordinates must be [N, 2], got shape {coordinates.shape}")
    if not len(coordinates):
        raise ValueError("no cells to draw")
    if not np.isfinite(coordinates).all():
        raise ValueError("coordinates hold NaN or infinite values")
    return coordinates


def class_table(n_classes: int, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Names and RGBA colours ``[K, 4]`` of ``n_classes`` classes: the HPA 2021 (19) or 2018 (28)
    palette; another count needs ``names`` and gets matplotlib's ``tab20`` colours, cycled."""
    schemes = {HPA2021.num_classes: HPA2021, HPA2018.num_classes: HPA2018}
    scheme = schemes.get(n_classes)
    if names is None:
        if scheme is None:
            raise ValueError(f"{n_classes} classes match no HPA scheme (19 or 28): pass names")
        names = scheme.names
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} names for {n_classes} classes")
    if scheme is not None:
        return list(names), to_rgba_array(scheme.colours)
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    return list(names), to_rgba_array([tab20[i % len(tab20)] for i in range(n_classes)])


def _class_categories(values: np.ndarray, names: Sequence[str] | None) -> _Categories:
    """Class ids ``[N]`` (-1: none) or multi-hot ``[N, K]`` -> categories in the class palette."""
    if values.ndim == 2:
        Y = values.astype(bool)
        labels, colours = class_table(Y.shape[1], names)
        count = Y.sum(axis=1)
        codes = np.where(count == 1, Y.argmax(axis=1), np.where(count > 1, len(labels), len(labels) + 1))
        extra = ["several classes", "no class"]
        colours = np.vstack([colours, to_rgba_array([_SEVERAL, _GREY])])
    else:
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f'kind="class" needs int class ids [N] or multi-hot [N, K], '
                             f'got dtype {values.dtype}')
        labels, colours = class_table(len(names) if names is not None else HPA2021.num_classes, names)
        if values.max() >= len(labels) or values.min() < -1:
            raise ValueError(f"class ids must lie in -1..{len(labels) - 1} (-1: no class)")
        codes = np.where(values < 0, len(labels), values)
        extra = ["no class"]
        colours = np.vstack([colours, to_rgba_array([_GREY])])
    background = np.zeros(len(colours), dtype=bool)
    background[-1] = True
    return _Categories(codes.astype(np.int64), labels + extra, colours, background)


def _column_categories(values: np.ndarray, max_legend: int) -> _Categories:
    """Any column ``[N]`` (image, cell line, ...): the most frequent values get colours, the rest
    (beyond ``max_legend`` categories) and missing values go grey."""
    import matplotlib

    codes, uniques = pd.factorize(pd.Series(values.astype(object)), sort=False)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    order = np.argsort(-counts, kind="stable")
    shown = order if len(order) <= max_legend else order[:max_legend - 1]
    rank = np.full(len(uniques) + 1, len(shown), dtype=np.int64)  # default: "other" / missing
    rank[shown] = np.arange(len(shown))
    new_codes = rank[codes]  # codes == -1 (missing) index the last entry
    labels = [str(uniques[i]) for i in shown]
    palette = matplotlib.colormaps["tab20" if len(shown) > 10 else "tab10"].colors
    colours = [palette[i % len(palette)] for i in range(len(shown))]
    hidden = len(uniques) - len(shown)
    labels.append(f"other ({hidden:,} values)" if hidden else "missing")
    colours.append(_GREY)
    background = np.zeros(len(labels), dtype=bool)
    background[-1] = True
    return _Categories(new_codes, labels, to_rgba_array(colours), background)


def _correctness_categories(values: np.ndarray) -> _Categories:
    """True/False/None, 1/0/-1, or "correct"/"wrong" (anything else: unknown) -> 3 categories."""
    series = pd.Series(values.astype(object))
    correct = series.isin([True, 1, "correct"]) & series.notna()
    wrong = series.isin([False, 0, "wrong"]) & series.notna()
    codes = np.where(correct, 0, np.where(wrong, 1, 2)).astype(np.int64)
    return _Categories(codes, list(_CORRECTNESS), to_rgba_array(_CORRECTNESS_COLOURS),
                       np.array([False, False, True]))


# --------------------------------------------------------------------------- drawing


def _grid(coordinates: np.ndarray, bins: int = _BINS) -> tuple[np.ndarray, tuple[int, int], tuple]:
    """Flat histogram bin of every cell (int64 ``[N]``), the grid shape (rows, columns) with
    square bins, and the imshow extent."""
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    size = max(float((high - low).max()), 1e-9) / bins
    shape = np.maximum(np.ceil((high - low) / size).astype(np.int64), 1)  # (x bins, y bins)
    cells = np.minimum(((coordinates - low) / size).astype(np.int64), shape - 1)
    extent = (low[0], low[0] + shape[0] * size, low[1], low[1] + shape[1] * size)
    return cells[:, 1] * shape[0] + cells[:, 0], (int(shape[1]), int(shape[0])), extent


def _opacity(total: np.ndarray) -> np.ndarray:
    """Bin opacity from its cell count: 0 when empty, 0.35..1 growing with log count."""
    scale = np.log1p(total) / np.log1p(max(total.max(), 1))
    return np.where(total > 0, 0.35 + 0.65 * scale, 0.0)


def _density_image(coordinates: np.ndarray, categories: _Categories, correctness: bool) -> tuple:
    """RGBA image ``[rows, cols, 4]`` of the majority category per bin (for correctness: the
    share of wrong among known cells, green to red), and its extent."""
    import matplotlib

    # correctness shows a share per bin, which wants more cells per bin than a majority does
    flat, shape, extent = _grid(coordinates, bins=_BINS // 3 if correctness else _BINS)
    n_bins, n_categories = shape[0] * shape[1], len(categories.labels)
    counts = np.bincount(flat * n_categories + categories.codes,
                         minlength=n_bins * n_categories).reshape(n_bins, n_categories)
    total = counts.sum(axis=1)
    if correctness:
        known = counts[:, 0] + counts[:, 1]
        share = np.divide(counts[:, 1], known, out=np.zeros(n_bins), where=known > 0)
        rgba = matplotlib.colormaps["RdYlGn_r"](share)
        rgba[known == 0] = to_rgba_array([_GREY])[0]
    else:
        # background categories win a bin only when it holds nothing else
        foreground = np.where(categories.background[None, :], 0, counts)
        majority = np.where(foreground.sum(axis=1) > 0, foreground.argmax(axis=1), counts.argmax(axis=1))
        rgba = categories.colours[majority].copy()
    rgba[:, 3] = _opacity(total)
    return rgba.reshape(*shape, 4), extent


def _draw(ax, coordinates: np.ndarray, categories: _Categories, *, max_points: int, correctness: bool,
          seed: int = 0) -> bool:
    """Dots or a density image on ``ax``; returns whether the density mode was used."""
    n = len(coordinates)
    if n > max_points:
        image, extent = _density_image(coordinates, categories, correctness)
        ax.imshow(image, origin="lower", extent=extent, interpolation="nearest", aspect="equal")
        return True
    # background categories first, then everything else in random order
    order = np.lexsort((np.random.default_rng(seed).random(n), ~categories.background[categories.codes]))
    ax.scatter(coordinates[order, 0], coordinates[order, 1], c=categories.colours[categories.codes[order]],
               s=_dot_size(n), linewidths=0, rasterized=True)
    ax.set_aspect("equal", adjustable="datalim")
    return False


def _dot_size(n: int) -> float:
    """Marker area (points²): large for a few hundred cells, a fraction of a point at 100k."""
    return float(np.clip(30_000 / n, 0.3, 16.0))


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def map_figure(coordinates: np.ndarray, values: np.ndarray, kind: str = "categorical", *,
               title: str | None = None, names: Sequence[str] | None = None, legend_title: str | None = None,
               max_points: int = MAX_POINTS, max_legend: int = 20) -> Figure:
    """The figure :func:`plot_map` writes (see there); returns it without saving."""
    coordinates = _as_coordinates(coordinates)
    values = np.asarray(values)
    if len(values) != len(coordinates):
        raise ValueError(f"{len(values)} values for {len(coordinates)} cells")
    if kind == "class":
        categories = _class_categories(values, names)
    elif kind == "categorical":
        if values.ndim != 1:
            raise ValueError(f'kind="categorical" needs one value per cell [N], got shape {values.shape}')
        categories = _column_categories(values, max_legend)
    elif kind == "correctness":
        categories = _correctness_categories(values.ravel())
    else:
        raise ValueError(f"kind={kind!r}: expected 'class', 'categorical' or 'correctness'")
    figure = Figure(figsize=(9.0, 7.0))
    ax = figure.add_subplot()
    density = _draw(ax, coordinates, categories, max_points=max_points, correctness=kind == "correctness")
    categories.legend(ax, legend_title)
    if density and kind == "correctness":
        import matplotlib

        mappable = matplotlib.cm.ScalarMappable(cmap="RdYlGn_r")
        figure.colorbar(mappable, ax=ax, location="bottom", shrink=0.5, pad=0.02,
                        label="share of wrong cells per bin (grey: only unknown)")
    mode = "density: colour = majority per bin" if density and kind != "correctness" else (
        "density" if density else "")
    heading = f"{title}\n" if title else ""
    ax.set_title(f"{heading}{len(coordinates):,} cells" + (f" ({mode})" if mode else ""), fontsize=10)
    _bare(ax)
    log.debug("map of %d cells, kind=%s, density=%s", len(coordinates), kind, density)
    return figure


def plot_map(coordinates: np.ndarray, values: np.ndarray, path: str | os.PathLike,
             kind: str = "categorical", *, title: str | None = None, names: Sequence[str] | None = None,
             legend_title: str | None = None, max_points: int = MAX_POINTS, max_legend: int = 20,
             dpi: int = 150) -> Path:
    """A map of cells coloured by one column, written as PNG.

    Parameters
    ----------
    coordinates : numpy.ndarray
        float ``[N, 2]``, e.g. ``UMAPProjector.embedding_``.
    values : numpy.ndarray
        One entry per cell; what it holds depends on ``kind``.
    path : path
        The PNG to write (atomically).
    kind : {"categorical", "class", "correctness"}
        ``"class"``: int class ids ``[N]`` (-1: no class; e.g. true or predicted classes) or a
        multi-hot bool ``Y [N, K]`` (single-label cells in their class's colour, cells with
        several classes in black, cells with none in grey), in the HPA class palette with the
        class names in the legend. ``"categorical"``: any column ``[N]`` (image id, cell line,
        ...): the most frequent values get colours and legend entries (at most ``max_legend``
        entries; the other values, and missing ones, in grey). ``"correctness"``: ``True`` /
        ``1`` / ``"correct"``, ``False`` / ``0`` / ``"wrong"``, anything else unknown (grey).
    title : str, optional
        First title line; the second gives the cell count and the drawing mode.
    names : sequence of str, optional
        ``kind="class"``: class names (default: the HPA 2021 or 2018 names, by class count).
    legend_title : str, optional
    max_points : int
        Above this many cells, a 2-D histogram (majority category per bin; for correctness the
        share of wrong cells per bin) replaces the dots.
    max_legend : int
        ``kind="categorical"``: legend entries (coloured values) at most, "other" included.
    dpi : int

    Returns
    -------
    pathlib.Path
    """
    figure = map_figure(coordinates, values, kind, title=title, names=names, legend_title=legend_title,
                        max_points=max_points, max_legend=max_legend)
    return save_figure(figure, path, dpi=dpi)


def class_panels_figure(coordinates: np.ndarray, Y: np.ndarray, names: Sequence[str] | None = None, *,
                        title: str | None = None, columns: int = 5, max_points: int = MAX_POINTS) -> Figure:
    """The figure :func:`plot_class_panels` writes (see there); returns it without saving."""
    coordinates = _as_coordinates(coordinates)
    Y = np.asarray(Y)
    if Y.ndim != 2 or len(Y) != len(coordinates):
        raise ValueError(f"Y must be multi-hot [N, K] with N = {len(coordinates)}, got shape {Y.shape}")
    Y = Y.astype(bool)
    labels, colours = class_table(Y.shape[1], names)
    present = np.flatnonzero(Y.any(axis=0))
    if not len(present):
        raise ValueError("no cell carries any class")
    multi = Y.sum(axis=1) > 1
    rows = -(-len(present) // columns)
    width = min(columns, len(present))
    figure = Figure(figsize=(2.8 * width, 2.9 * rows))
    density = len(coordinates) > max_points
    if density:
        flat, shape, extent = _grid(coordinates, bins=200)
        everyone = np.bincount(flat, minlength=shape[0] * shape[1])
        background = np.zeros((len(everyone), 4))
        background[:] = to_rgba_array([_GREY])[0]
        background[:, 3] = 0.6 * (everyone > 0)
    for slot, k in enumerate(present):
        ax = figure.add_subplot(rows, width, slot + 1)
        members = Y[:, k]
        if density:
            ax.imshow(background.reshape(*shape, 4), origin="lower", extent=extent, interpolation="nearest")
            highlight = np.zeros((len(everyone), 4))
            highlight[:] = colours[k]
            highlight[:, 3] = _opacity(np.bincount(flat[members], minlength=len(everyone)))
            ax.imshow(highlight.reshape(*shape, 4), origin="lower", extent=extent, interpolation="nearest")
        else:
            size = _dot_size(len(coordinates)) / 2
            ax.scatter(coordinates[:, 0], coordinates[:, 1], c=_GREY, s=size, linewidths=0, rasterized=True)
            ax.scatter(coordinates[members, 0], coordinates[members, 1], color=colours[k], s=size * 2,
                       linewidths=0, rasterized=True)
            ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{k}: {labels[k]}\n{members.sum():,} cells, {(members & multi).sum():,} multi-label",
                     fontsize=8)
        _bare(ax)
    heading = f"{title}\n" if title else ""
    figure.suptitle(f"{heading}{len(coordinates):,} cells; a cell with several classes appears in each"
                    + (" (density)" if density else ""), fontsize=10)
    figure.tight_layout()
    return figure


def plot_class_panels(coordinates: np.ndarray, Y: np.ndarray, path: str | os.PathLike,
                      names: Sequence[str] | None = None, *, title: str | None = None, columns: int = 5,
                      max_points: int = MAX_POINTS, dpi: int = 120) -> Path:
    """One small map per class present, that class's cells highlighted over all cells in grey; PNG.

    Multi-label cells are shown honestly: a cell carrying classes A and B is highlighted in the
    panel of A and in the panel of B (each panel's title counts its multi-label cells).

    Parameters
    ----------
    coordinates : numpy.ndarray
        float ``[N, 2]``.
    Y : numpy.ndarray
        Multi-hot bool ``[N, K]`` (true, image-level or predicted labels).
    path : path
        The PNG to write (atomically).
    names : sequence of str, optional
        Class names; default the HPA 2021 or 2018 names, by ``K``. Colours: the HPA palette.
    title : str, optional
    columns : int
        Panels per row.
    max_points : int
        Above this many cells each panel is a 2-D histogram (grey: any cell; colour: the class's
        cells, opacity growing with their log count) instead of dots.
    dpi : int

    Returns
    -------
    pathlib.Path
    """
    figure = class_panels_figure(coordinates, Y, names, title=title, columns=columns, max_points=max_points)
    return save_figure(figure, path, dpi=dpi)
