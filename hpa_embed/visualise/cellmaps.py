"""Every map of a run's cells from its embeddings: the UMAP projection (its kNN graph from the
FAISS index), the static PNG maps and the interactive cell map.

A map folder holds::

    <out>/coordinates.npy          float32 [N, 2], the cells' map positions (rows of embeddings)
    <out>/cells.parquet            the cells in the same order, with their predictions
    <out>/maps.json                header (hpa_embed.io) with the SHA-256 of the two files above;
                                   :func:`read_cell_maps` reads them back, checked
    <out>/projector/               the fitted UMAPProjector (new cells: UMAPProjector.load + transform)
    <out>/map_<colour>.png         cells coloured by class, image, cell line, prediction, correctness
    <out>/class_panels.png         one panel per class, its cells highlighted
    <out>/interactive/index.html   the interactive cell map (opens from disk)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import DataError, atomic_path, read_header, write_header
from ..labels import HPA2021
from .interactive import cell_map_from_store
from .maps import plot_class_panels, plot_map
from .projection import UMAPProjector, knn_graph

__all__ = ["draw_cell_maps", "read_cell_maps"]

FORMAT_NAME = "hpa_embed.cellmaps"
FORMAT_VERSION = 1
_META_FILE = "maps.json"
_COORDINATES_FILE = "coordinates.npy"
_CELLS_FILE = "cells.parquet"

log = logging.getLogger(__name__)


def _predicted_classes(probabilities: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    """Each cell's predicted classes: those at or above ``threshold``, else its top class."""
    above = probabilities >= threshold
    top = probabilities.argmax(axis=1)
    return [np.flatnonzero(row).tolist() if row.any() else [int(best)] for row, best in zip(above, top)]


def _labels(cells: pd.DataFrame) -> tuple[str | None, list]:
    """The truth a map colours by: the cells' true labels where known, else their image labels."""
    for column in ("true_labels", "image_labels"):
        if column in cells and cells[column].notna().any():
            return column, [list(v) if v is not None else [] for v in cells[column]]
    return None, []


def draw_cell_maps(
    embeddings,
    store,
    out: str | os.PathLike,
    index=None,
    predictions: str | os.PathLike | None = None,
    n_neighbors: int = 10,
    projector: UMAPProjector | None = None,
    interactive: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Project a run's cells with UMAP and draw their maps into ``out`` (see the module docstring).

    Parameters
    ----------
    embeddings : Embeddings or path
        The cells to map (:func:`hpa_embed.embed.embed_store`).
    store : CellStore or path
        Their CellStore (thumbnails of the interactive map).
    out : path
    index : CellIndex or path, optional
        A FAISS index over exactly these embeddings, in the same order (``hpa-embed index``):
        its kNN graph feeds UMAP and the neighbour lists. Default: one is built.
    predictions : path, optional
        A predictions directory of the same cells (``hpa-embed classify``): adds the maps by
        prediction and by correctness.
    n_neighbors : int
        Neighbours listed per cell in the interactive map.
    projector : UMAPProjector, optional
        Its parameters (default ``UMAPProjector()``).
    interactive : bool
        Write the interactive map too.

    Returns
    -------
    dict of str to Path
        What was written, by name.
    """
    from ..classify import read_predictions
    from ..config import IndexConfig
    from ..embed import Embeddings, read_embeddings
    from ..index import CellIndex

    embedded = embeddings if isinstance(embeddings, Embeddings) else read_embeddings(embeddings, mmap=True)
    X = np.ascontiguousarray(embedded.X, dtype=np.float32)  # no copy of a memory-mapped float32 array
    cells = embedded.cells.reset_index(drop=True).copy()
    if index is None:
        index = CellIndex.build(X, cells["cell_id"].astype(str).to_numpy(dtype=object), IndexConfig(),
                                progress=False)
    elif not isinstance(index, CellIndex):
        index = CellIndex.load(index)
    if len(index) != len(X) or not np.array_equal(index.cell_ids, cells["cell_id"].astype(str).to_numpy()):
        raise ValueError("the index does not hold exactly these cells in this order; build it from the "
                         "same embeddings (hpa-embed index)")
    out = Path(out)
    projector = projector or UMAPProjector()
    coordinates = projector.fit_transform(X, index=index).astype(np.float32)
    written = {"projector": projector.save(out / "projector")}
    with atomic_path(out / _COORDINATES_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, coordinates)
    written["coordinates"] = out / _COORDINATES_FILE

    truth_column, truth = _labels(cells)
    names = HPA2021.names
    if truth_column:
        Y = HPA2021.to_multi_hot(truth)
        written["map_class"] = plot_map(coordinates, Y, out / "map_class.png", kind="class", names=names,
                                        title=f"cells by class ({truth_column.replace('_', ' ')})")
        written["class_panels"] = plot_class_panels(coordinates, Y, out / "class_panels.png", names=names)
    written["map_image"] = plot_map(coordinates, cells["image_id"].to_numpy(), out / "map_image.png",
                                    title="cells by image", legend_title="image")
    if "cell_line" in cells:
        written["map_cell_line"] = plot_map(coordinates, cells["cell_line"].to_numpy(),
                                            out / "map_cell_line.png", title="cells by cell line",
                                            legend_title="cell line")
    if predictions is not None:
        predicted_cells, probabilities = read_predictions(predictions)
        order = pd.Index(predicted_cells["cell_id"]).get_indexer(cells["cell_id"])
        if (order < 0).any():
            raise ValueError(f"{predictions}: the predictions do not cover every mapped cell")
        probabilities = probabilities[order]
        cells["prediction"] = _predicted_classes(probabilities)
        top = probabilities.argmax(axis=1)
        written["map_prediction"] = plot_map(coordinates, top, out / "map_prediction.png", kind="class",
                                             names=names, title="cells by predicted class (top)")
        if truth_column:
            correct = np.array([int(best) in labels if labels else None for best, labels in zip(top, truth)],
                               dtype=object)
            title = f"top prediction among the cell's {truth_column.replace('_', ' ')}"
            written["map_correct"] = plot_map(coordinates, correct, out / "map_correct.png",
                                              kind="correctness", title=title)
    with atomic_path(out / _CELLS_FILE) as tmp:
        cells.to_parquet(tmp, index=False)
    written["cells"] = out / _CELLS_FILE
    written["description"] = out / _META_FILE
    write_header(written["description"], FORMAT_NAME, FORMAT_VERSION, {"cells": len(cells)},
                 files=[_COORDINATES_FILE, _CELLS_FILE])
    if interactive:
        # each cell's k nearest other cells (-1 where missing), searched block by block
        neighbours = knn_graph(index, X, min(n_neighbors, len(X) - 1) + 1)[0][:, 1:]
        written["interactive"] = cell_map_from_store(out / "interactive", coordinates, cells, store,
                                                     neighbours, progress=progress)
    log.info("wrote %d maps of %d cells to %s", len(written), len(cells), out)
    return written


def read_cell_maps(path: str | os.PathLike) -> tuple[np.ndarray, pd.DataFrame]:
    """The map positions and cells of a map folder written by :func:`draw_cell_maps`.

    Returns
    -------
    coordinates : numpy.ndarray
        float32 ``[N, 2]``.
    cells : pandas.DataFrame
        ``N`` rows, row ``i`` at ``coordinates[i]``.

    Raises :class:`~hpa_embed.io.DataError` naming the file for a missing one, or one that differs
    from its checksum in ``maps.json`` or from the count there.
    """
    path = Path(path)
    meta_path = path / _META_FILE
    meta = read_header(meta_path, FORMAT_NAME, {FORMAT_VERSION}, what="cell map folder")
    if set(meta.get("files", {})) != {_COORDINATES_FILE, _CELLS_FILE}:
        raise DataError(meta_path, f"must list the checksums of {_COORDINATES_FILE} and {_CELLS_FILE}")
    coordinates = np.load(path / _COORDINATES_FILE, allow_pickle=False)
    cells = pd.read_parquet(path / _CELLS_FILE)
    n = meta.get("cells")
    if coordinates.dtype != np.float32 or coordinates.shape != (len(cells), 2) or n != len(cells):
        raise DataError(meta_path, f"says {n} cells; {_CELLS_FILE} holds {len(cells)}, "
                                   f"{_COORDINATES_FILE} {coordinates.dtype} {coordinates.shape}")
    return coordinates, cells
