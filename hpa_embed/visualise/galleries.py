"""Galleries of cell crops: a labelled grid, the top-scoring cells of each class, and a query cell
beside its nearest neighbours.

Each crop is shown as its RGBY composite (red microtubules, green protein, blue nuclei, yellow
ER); with ``protein=True`` the protein (green) channel alone is shown beside or below it, since
the pattern to judge is the protein's. All the crops of one figure share one display stretch per
channel, so that a dim cell looks dim next to a bright one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import HpaEmbedError
from ..labels import CHANNELS, HPA2021, ClassScheme
from .plots import _wrap, colourise_channel, composite_rgb, save_figure

if TYPE_CHECKING:
    import pandas as pd

    from ..store import CellStore

__all__ = ["crop_images", "describe_cells", "plot_cell_gallery", "plot_top_cells", "plot_neighbours"]

# colour of a label line: the same set as the reference, an overlap, nothing in common
_MATCH_COLOURS = {"same": "#1a7f37", "overlap": "#b35900", "none": "#c62828", "unknown": "black"}
_QUERY_COLOUR = "#1f4e9c"
_GAP = 3  # pixels between a composite and its protein view


# --------------------------------------------------------------------------- crops and labels


def crop_images(crops: np.ndarray, channels: Sequence[str] = CHANNELS, percentile: float | None = 99.8,
                protein: bool = False) -> np.ndarray:
    """Crops ``[N, C, S, S]`` -> uint8 RGB ``[N, S, S, 3]`` composites, one stretch for them all.

    Parameters
    ----------
    crops : numpy.ndarray
        ``[N, C, S, S]`` (uint8 from a :class:`~hpa_embed.store.CellStore`, or float).
    channels : sequence of str
        The planes of the crops, in order.
    percentile : float or None
        Each channel's ``percentile`` over all ``N`` crops maps to full brightness (None: the
        values as they are, 0..1 for float and 0..255 for uint8).
    protein : bool
        Put the protein (green) channel alone to the right of each composite: ``[N, S, 2S + 3, 3]``.

    Returns
    -------
    numpy.ndarray
        uint8 ``[N, S, S, 3]`` (``[N, S, 2S + 3, 3]`` with ``protein``).
    """
    crops = np.asarray(crops)
    channels = tuple(channels)
    if crops.ndim != 4 or crops.shape[1] != len(channels):
        raise ValueError(f"crops must be [N, {len(channels)}, S, S] for channels {channels}, "
                         f"got shape {crops.shape}")
    if protein and "green" not in channels:
        raise ValueError(f"protein=True needs a green (protein) channel, the crops hold {channels}")
    n, _, side, _ = crops.shape
    if not n:
        return np.zeros((0, side, (2 * side + _GAP) if protein else side, 3), np.uint8)
    scale = 255.0 if crops.dtype == np.uint8 else 1.0
    # side by side in one strip [C, S, N*S]: the display percentile is taken over all the crops
    strip = np.concatenate(list(crops.astype(np.float32) / scale), axis=-1)
    images = composite_rgb(strip, channels, percentile).reshape(side, n, side, 3).transpose(1, 0, 2, 3)
    if protein:
        green = colourise_channel(strip[channels.index("green")], "green", percentile)
        green = green.reshape(side, n, side, 3).transpose(1, 0, 2, 3)
        gap = np.full((n, side, _GAP, 3), 255, np.uint8)
        images = np.concatenate([images, gap, green], axis=2)
    return np.ascontiguousarray(images)


def _label_ids(value) -> list[int] | None:
    """A table entry (list/array of class ids, or the Kaggle ``"0|16"``) -> ids; None: unknown."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return [int(v) for v in value.replace("|", " ").split()]
    return [int(v) for v in np.atleast_1d(value)]


def _cell_labels(record: dict) -> list[int] | None:
    """A cell's true labels where known, else its image's labels (None: neither)."""
    for column in ("true_labels", "image_labels"):
        ids = _label_ids(record.get(column))
        if ids is not None:
            return ids
    return None


def _names(ids: Sequence[int] | None, scheme: ClassScheme) -> str:
    if ids is None:
        return "?"
    return ", ".join(scheme.names[i] for i in ids) if len(ids) else "none"


def _match(ids: Sequence[int] | None, reference: Sequence[int] | None) -> str:
    if ids is None or reference is None:
        return "unknown"
    ids, reference = set(ids), set(reference)
    return "same" if ids == reference else "overlap" if ids & reference else "none"


def _records(cells: pd.DataFrame, cell_ids: Sequence[str]) -> list[dict]:
    """Table rows of ``cell_ids`` as dicts, in that order; refuses an id the table lacks."""
    table = cells.drop_duplicates("cell_id").set_index("cell_id", drop=False)
    unknown = [cell_id for cell_id in cell_ids if cell_id not in table.index]
    if unknown:
        raise HpaEmbedError(f"cell id {unknown[0]!r} is not among the {len(table)} cells of the cell table "
                            "(do the index and the store hold the same cells?)")
    return table.loc[list(cell_ids)].to_dict("records")


def describe_cells(cells: pd.DataFrame, cell_ids: Sequence[str],
                   scheme: ClassScheme = HPA2021) -> pd.DataFrame:
    """Image and labels (by class name) of cells, by cell id.

    Parameters
    ----------
    cells : pandas.DataFrame
        A cell table with ``cell_id``, ``image_id`` and ``true_labels`` and/or ``image_labels``
        (a :class:`~hpa_embed.store.CellStore`'s ``cells``).
    cell_ids : sequence of str
    scheme : ClassScheme

    Returns
    -------
    pandas.DataFrame
        One row per id, in order: ``cell_id``, ``image_id``, ``labels`` (the cell's true labels
        where the table has them, else its image's labels, as class names joined by ", ";
        "?" when neither is known).

    Raises
    ------
    HpaEmbedError
        For an id not in ``cells``.
    """
    import pandas as pd

    records = _records(cells, cell_ids)
    return pd.DataFrame({
        "cell_id": list(cell_ids),
        "image_id": [record.get("image_id") for record in records],
        "labels": [_names(_cell_labels(record), scheme) for record in records],
    })


def _store_crops(store: CellStore, records: list[dict]) -> np.ndarray:
    return store.get_crops(np.array([record["row"] for record in records], dtype=np.int64))


def _frame(ax, colour: str, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _panel_width(images: np.ndarray) -> float:
    """Inches per panel: wide enough for the label text, twice that beside a protein view."""
    return 1.9 * images.shape[2] / images.shape[1] if len(images) else 1.9


def _predicted_line(predicted: Sequence[int], truth: list[int] | None, probabilities: np.ndarray | None,
                    scheme: ClassScheme, max_labels: int, chars: int) -> tuple[str, str]:
    """("pred: A 0.91, B 0.55, +3 more" wrapped, its colour against the true set)."""
    predicted = [int(k) for k in predicted]
    if probabilities is not None:
        predicted.sort(key=lambda k: -probabilities[k])
    parts = [scheme.names[k] + ("" if probabilities is None else f" {probabilities[k]:.2f}")
             for k in predicted[:max_labels]]
    if len(predicted) > max_labels:
        parts.append(f"+{len(predicted) - max_labels} more")
    return _wrap("pred: " + (", ".join(parts) or "none"), chars), _MATCH_COLOURS[_match(predicted, truth)]


# --------------------------------------------------------------------------- figures


def plot_cell_gallery(
    crops: np.ndarray,
    titles: Sequence[str] | None,
    path: str | os.PathLike,
    *,
    true_labels: Sequence[Sequence[int] | None] | None = None,
    predicted_labels: Sequence[Sequence[int]] | None = None,
    probabilities: np.ndarray | None = None,
    scheme: ClassScheme = HPA2021,
    channels: Sequence[str] = CHANNELS,
    columns: int = 6,
    protein: bool = False,
    percentile: float | None = 99.8,
    title: str | None = None,
    max_labels: int = 4,
) -> Path:
    """A grid of cells, each with its title, true labels and predicted labels (class names).

    The predicted line is green when it equals the true set, orange when it overlaps it and red
    when it has nothing in common with it.

    Parameters
    ----------
    crops : numpy.ndarray
        ``[N, C, S, S]`` (e.g. :meth:`CellStore.get_crops <hpa_embed.store.CellStore.get_crops>`).
    titles : sequence of str or None
        A first line per cell (its id, say); None: none.
    path : path
        The PNG, written atomically.
    true_labels, predicted_labels : sequence of lists of class ids, optional
        ``N`` each; a true entry may be None (unknown).
    probabilities : numpy.ndarray, optional
        float ``[N, K]``: each predicted class is shown with its probability.
    scheme : ClassScheme
        Class names.
    channels : sequence of str
        The planes of ``crops``.
    columns : int
        Cells per row.
    protein : bool
        Show the protein (green) channel beside each composite.
    percentile : float or None
        Display stretch, shared by all cells (:func:`crop_images`).
    title : str, optional
        Figure title.
    max_labels : int
        Predicted classes named per cell (the most probable first); the rest are counted.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure

    images = crop_images(crops, channels, percentile, protein)
    n = len(images)
    for name, values in (("titles", titles), ("true_labels", true_labels),
                         ("predicted_labels", predicted_labels), ("probabilities", probabilities)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} crops")
    if not n:
        raise ValueError("no crops to show")
    width = _panel_width(images)
    chars = int(15 * width)
    heads, feet = [], []
    for i in range(n):
        truth = None if true_labels is None else _label_ids(true_labels[i])
        lines = ([str(titles[i])] if titles is not None else []) + (
            [_wrap(f"true: {_names(truth, scheme)}", chars)] if true_labels is not None else [])
        heads.append("\n".join(lines))
        if predicted_labels is not None:
            feet.append(_predicted_line(predicted_labels[i], truth, None if probabilities is None
                                        else probabilities[i], scheme, max_labels, chars))
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    # each row as tall as its image plus its longest heading and prediction (7.5 pt lines)
    text_lines = [max(heads[i].count("\n") + 1 + (feet[i][0].count("\n") + 1 if feet else 0)
                      for i in range(r * columns, min(n, (r + 1) * columns))) for r in range(rows)]
    image_height = width * images.shape[1] / images.shape[2]
    heights = [image_height + 0.15 * lines + 0.1 for lines in text_lines]
    figure = Figure(figsize=(width * columns, sum(heights) + 0.7), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw={"height_ratios": heights}).ravel()
    for i, ax in enumerate(axes[:n]):
        ax.imshow(images[i], interpolation="nearest")
        _frame(ax, "0.75", 0.8)
        ax.set_title(heads[i], fontsize=7.5)
        if feet:
            ax.set_xlabel(feet[i][0], fontsize=7.5, color=feet[i][1])
    for ax in axes[n:]:
        ax.set_axis_off()
    legend = ("prediction: green = the true set, orange = overlaps it, red = none of it"
              if true_labels is not None and predicted_labels is not None else "")
    caption = ("composite (red microtubules, green protein, blue nuclei, yellow ER)"
               + (" | protein channel" if protein else ""))
    figure.suptitle("\n".join(filter(None, [title, caption, legend])), fontsize=9)
    return save_figure(figure, path)


def plot_top_cells(
    store: CellStore,
    cells: pd.DataFrame,
    probabilities: np.ndarray,
    path: str | os.PathLike,
    per_class: int = 8,
    *,
    classes: Sequence[int] | None = None,
    scheme: ClassScheme | None = None,
    protein: bool = False,
    percentile: float | None = 99.8,
) -> Path:
    """The ``per_class`` cells with the highest predicted probability of each class, a row per class.

    A cell's frame is green when the class is among its labels (its true labels where the table
    has them, else its image's labels), red when it is not; each panel gives the probability and
    the cell id. Read along a row: the cells the classifier is surest of, and whether it is right.

    Parameters
    ----------
    store : CellStore
        Holds the crops; cells are found in it by ``cell_id``.
    cells : pandas.DataFrame
        One row per row of ``probabilities``, with ``cell_id`` and ideally ``true_labels`` /
        ``image_labels`` (else the store's are used): the cells of
        :func:`hpa_embed.classify.read_predictions`.
    probabilities : numpy.ndarray
        float ``[N, K]``.
    path : path
        The PNG, written atomically.
    per_class : int
        Cells per class (fewer when there are fewer cells).
    classes : sequence of int, optional
        The classes to show (default: all ``K``).
    scheme : ClassScheme, optional
        Class names; default the store's.
    protein : bool
        Show the protein (green) channel beside each composite.
    percentile : float or None
        Display stretch, shared by all the cells of the figure.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure

    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 2 or len(probabilities) != len(cells):
        raise ValueError(f"probabilities must be [N, K] for the {len(cells)} cells, "
                         f"got {probabilities.shape}")
    if per_class < 1 or not len(cells):
        raise ValueError("per_class must be positive and there must be cells to show")
    scheme = scheme or store.scheme
    classes = list(range(probabilities.shape[1])) if classes is None else [int(k) for k in classes]
    per_class = min(per_class, len(cells))
    # the top cells of each class, best first: [n_classes, per_class] positions in `cells`
    top = np.argsort(-probabilities[:, classes], axis=0, kind="stable")[:per_class].T
    table = cells.reset_index(drop=True)
    cell_ids = table["cell_id"].to_numpy()
    needed = cell_ids[np.unique(top)].tolist()
    stored = dict(zip(needed, _records(store.cells, needed)))
    labelled = "true_labels" in table.columns or "image_labels" in table.columns
    images = crop_images(_store_crops(store, [stored[cell_ids[i]] for i in top.ravel()]), store.channels,
                         percentile, protein)
    images = images.reshape(len(classes), per_class, *images.shape[1:])

    width = 1.5 * images.shape[3] / images.shape[2]
    figure = Figure(figsize=(width * per_class + 1.8, 1.95 * len(classes) + 0.7), layout="constrained")
    axes = figure.subplots(len(classes), per_class, squeeze=False)
    for r, class_id in enumerate(classes):
        for c, position in enumerate(top[r]):
            ax = axes[r, c]
            ax.imshow(images[r, c], interpolation="nearest")
            cell_id = cell_ids[position]
            ids = _cell_labels(table.iloc[position].to_dict() if labelled else stored[cell_id])
            colour = "0.6" if ids is None else "#1a7f37" if class_id in ids else "#c62828"
            _frame(ax, colour)
            ax.set_title(f"p {probabilities[position, class_id]:.2f}  {cell_id}", fontsize=6.5)
        axes[r, 0].set_ylabel(_wrap(f"{class_id} {scheme.names[class_id]}", 16), fontsize=8.5,
                              rotation=0, ha="right", va="center")
    figure.suptitle(f"The {per_class} cells with the highest predicted probability of each class\n"
                    "frame: green = the class is among the cell's labels, red = it is not"
                    + (" | right: protein channel" if protein else ""), fontsize=10)
    return save_figure(figure, path)


def plot_neighbours(
    store: CellStore,
    query_id: str,
    neighbour_ids: Sequence[str | None],
    scores: Sequence[float],
    path: str | os.PathLike,
    *,
    score_name: str = "score",
    protein: bool = True,
    scheme: ClassScheme | None = None,
    percentile: float | None = 99.8,
) -> Path:
    """A query cell beside its nearest neighbours: composites on top, protein channels below.

    Each panel gives the rank, score, cell id, image and labels (class names: the cell's true
    labels where the store has them, else its image's). A neighbour's labels are green when they
    equal the query's, orange when they overlap, red when they share none.

    Parameters
    ----------
    store : CellStore
        Holds the crops and the cell table.
    query_id : str
    neighbour_ids : sequence of str or None
        Best first, e.g. the ``cell_ids`` of :meth:`CellIndex.search_cell
        <hpa_embed.index.CellIndex.search_cell>`; None entries (missing neighbours) are skipped.
    scores : sequence of float
        One per neighbour (cosine similarity or squared distance).
    path : path
        The PNG, written atomically.
    score_name : str
        What the score is, for the panel titles (e.g. "cosine").
    protein : bool
        A second row with each cell's protein (green) channel alone.
    scheme : ClassScheme, optional
        Names the classes; the store's scheme by default.
    percentile : float or None
        Display stretch (:func:`crop_images`), one for the query and its neighbours.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure

    if len(neighbour_ids) != len(scores):
        raise ValueError(f"{len(neighbour_ids)} neighbour ids but {len(scores)} scores")
    scheme = scheme or store.scheme
    found = [(cell_id, float(score)) for cell_id, score in zip(neighbour_ids, scores) if cell_id is not None]
    records = _records(store.cells, [query_id, *(cell_id for cell_id, _ in found)])
    crops = _store_crops(store, records)
    side = crops.shape[-1]
    images = crop_images(crops, store.channels, percentile, protein)
    views = [images[:, :, :side], images[:, :, -side:]] if protein else [images]
    query_labels = _cell_labels(records[0])
    columns = len(records)
    figure = Figure(figsize=(1.95 * columns, 2.0 * len(views) + 1.1), layout="constrained")
    axes = figure.subplots(len(views), columns, squeeze=False)
    chars = 26
    for c, record in enumerate(records):
        ids = _cell_labels(record)
        for r, view in enumerate(views):
            ax = axes[r, c]
            ax.imshow(view[c], interpolation="nearest")
            _frame(ax, _QUERY_COLOUR if c == 0 else "0.75", 3.5 if c == 0 else 0.8)
        head = "query" if c == 0 else f"#{c}  {score_name} {found[c - 1][1]:.3f}"
        axes[0, c].set_title(f"{head}\n{record['cell_id']}\nimage {record.get('image_id')}",
                             fontsize=7.5, color=_QUERY_COLOUR if c == 0 else "black",
                             fontweight="bold" if c == 0 else "normal")
        colour = "black" if c == 0 else _MATCH_COLOURS[_match(ids, query_labels)]
        axes[-1, c].set_xlabel(_wrap(_names(ids, scheme), chars), fontsize=7.5, color=colour)
    axes[0, 0].set_ylabel("composite", fontsize=8)
    if protein:
        axes[1, 0].set_ylabel("protein (green)", fontsize=8)
    figure.suptitle(f"Cell {query_id} and its {len(found)} nearest neighbours\n"
                    "labels: green = same as the query's, orange = overlapping, red = none in common",
                    fontsize=10)
    return save_figure(figure, path)
