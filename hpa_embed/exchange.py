"""Interchange with the single-cell ecosystem: AnnData ``.h5ad`` out, external embeddings in.

:func:`export_anndata` writes the cells of a run (or of an embeddings directory) as an AnnData
that scanpy, squidpy or cellxgene read without conversion::

    X                              float32 [N, D]  the embeddings (unit L2 rows)
    obs                            the cell table, indexed by cell_id (str): image_id, mask_id,
                                   bounding box, split, row (the CellStore row), cell_line, ...
    obs[<labels>]                  image_labels, true_labels (and pseudo_labels): class ids joined
                                   by "|" ("0|5"), "" for a cell with no class, missing (NA) where
                                   unknown; categorical
    obs["predicted_<method>"]      the top predicted class by name, categorical over every class
    obsm["Y_<labels>"]             bool [N, K]  the same labels multi-hot (unknown: all False)
    obsm["probabilities_<method>"] float32 [N, K]  per method of the run's predictions/
    obsm["X_umap"]                 float32 [N, 2]  the run's map coordinates (maps/coordinates.npy)
    uns["classes"]                 scheme, ids, names, colours of the class table
    uns["predicted_<method>_colors"]  the class colours, so scanpy colours classes alike
    uns["config"]                  the run's configuration, {section: {key: value}} as config.toml
    uns["embed"]                   where the embeddings came from (embed.json)
    uns["hpa_embed"]               library version, source, the label columns and their encoding

h5ad cannot store None: in ``uns`` an unset value is the string ``"none"``, as ``config.toml``
writes it and the config sections read it.

:func:`import_embeddings` goes the other way: embeddings from another model (an ``.h5ad`` such as
SubCell's ``embeddings.h5ad``, or a ``.npy`` array with a table of its cells) become an
embeddings directory that ``hpa-embed index``, ``search``, ``classify --method knn``,
``evaluate`` and the maps take. Rows are scaled to unit L2 norm, because the index and the kNN
classifier score neighbours by inner product.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .embed import Embeddings, read_embeddings, write_embeddings
from .io import DataError, atomic_path
from .labels import HPA2021
from .store import LIST_COLUMNS, CellStore

if TYPE_CHECKING:
    import anndata

__all__ = ["export_anndata", "import_embeddings", "LABEL_COLUMNS", "LABEL_SEPARATOR"]

log = logging.getLogger(__name__)

#: Table columns of class-id lists, written to h5ad as "|"-joined strings.
LABEL_COLUMNS: tuple[str, ...] = (*LIST_COLUMNS, "pseudo_labels")
#: Joins the class ids of one cell in an h5ad label column: ``[0, 5]`` -> ``"0|5"``.
LABEL_SEPARATOR = "|"
# Rows whose norm is 1 to within this are kept bit for bit (an exported run imports back unchanged).
_UNIT_TOLERANCE = 1e-6
_NONE = "none"


# --------------------------------------------------------------------------- plain values for uns


def _to_uns(value: Any) -> Any:
    """Nested dicts and lists of plain values that h5ad stores (None -> ``"none"``)."""
    if value is None:
        return _NONE
    if isinstance(value, Mapping):
        return {str(key): _to_uns(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_uns(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_uns(value: Any) -> Any:
    """Back to plain Python values: arrays -> lists, numpy scalars -> Python ones (``"none"`` stays,
    as the config sections read it)."""
    if isinstance(value, Mapping):
        return {key: _from_uns(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return [_from_uns(item) for item in value.tolist()]
    if isinstance(value, list):
        return [_from_uns(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- label columns


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, (str, list, tuple, np.ndarray)) and bool(pd.isna(value)))


def _is_list_column(column: pd.Series) -> bool:
    first = next((value for value in column if not _missing(value)), None)
    return isinstance(first, (list, tuple, np.ndarray))


def _encode_labels(values) -> pd.Categorical:
    """Lists of class ids -> ``"0|5"``; ``[]`` -> ``""``; None -> missing."""
    return pd.Categorical([None if _missing(v) else LABEL_SEPARATOR.join(str(int(c)) for c in v)
                           for v in values])


def _decode_labels(values, path: Path, column: str) -> list[list[int] | None]:
    """``"0|5"``, ``""``, missing, or lists/arrays of ids -> lists of ids (None where missing)."""
    out = []
    for value in values:
        if _missing(value):
            out.append(None)
            continue
        try:
            if isinstance(value, str):
                out.append([int(c) for c in value.split(LABEL_SEPARATOR)] if value else [])
            else:
                out.append([int(c) for c in value])
        except (TypeError, ValueError):
            raise DataError(path, f"column {column!r}: {value!r} is not a list of class ids "
                                  f"(expected e.g. '0{LABEL_SEPARATOR}5', or '' for none)") from None
    return out


def _multi_hot(labels: list, path: Path, column: str) -> np.ndarray:
    try:
        return HPA2021.to_multi_hot([[] if ids is None else ids for ids in labels])
    except ValueError as error:
        raise DataError(path, f"column {column!r}: {error}") from None


# --------------------------------------------------------------------------- export


def _obs_table(cells: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The cell table as h5ad ``obs`` (indexed by cell id, strings categorical, label lists
    encoded) and the label columns multi-hot (``Y_<column>``: bool ``[N, K]``); errors name ``path``."""
    obs = cells.reset_index(drop=True).copy()
    obs.index = pd.Index(obs.pop("cell_id").astype(str).to_numpy(), name="cell_id")
    multi_hot = {}
    for name in obs.columns:
        column = obs[name]
        if name in LABEL_COLUMNS or (column.dtype == object and _is_list_column(column)):
            labels = _decode_labels(column.to_numpy(dtype=object), path, name)
            obs[name] = _encode_labels(labels)
            multi_hot[f"Y_{name}"] = _multi_hot(labels, path, name)
        elif column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
            # h5py refuses object columns that mix str and None: categorical strings, NA where missing
            obs[name] = pd.Categorical([None if _missing(v) else str(v) for v in column])
    return obs, multi_hot


def _class_names(top: np.ndarray) -> pd.Categorical:
    return pd.Categorical.from_codes(top, categories=list(HPA2021.names))


def _run_parts(run: Path, method: str | None):
    """A run folder -> (its config, embeddings, {method: predictions folder}, coordinates file)."""
    from .config import read_config_file
    from .pipeline import RunPaths, stage_status

    config = read_config_file(run / "config.toml")
    paths, status = RunPaths(run, config), stage_status(config, run)
    if status["embed"] != "done":
        raise DataError(paths.embeddings, f"the run's embed stage is {status['embed']}: finish the run first "
                                          "(hpa-embed run)")
    methods = list(config.classify.methods)
    if method is not None and method not in methods:
        raise DataError(run / "predictions" / method,
                        f"no predictions by {method!r}: the run classifies with {', '.join(methods)}")
    if status["classify"] == "done":
        predictions = {name: paths.predictions(name) for name in ([method] if method else methods)}
    elif method is not None:
        raise DataError(paths.predictions(method), f"the run's classify stage is {status['classify']}: "
                                                   "finish the run first (hpa-embed run)")
    else:
        predictions = {}
    coordinates = paths.maps / "coordinates.npy"
    if status["map"] != "done" or not coordinates.is_file():
        coordinates = None
    return config, paths.embeddings, predictions, coordinates


def export_anndata(
    source: Embeddings | str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    method: str | None = None,
) -> anndata.AnnData:
    """The cells of a run or of an embeddings directory as an AnnData (see the module docstring).

    Parameters
    ----------
    source : path or Embeddings
        A run folder (``hpa-embed run --out``; its ``config.toml`` marks it), an embeddings
        directory (``hpa-embed embed``) or an :class:`~hpa_embed.embed.Embeddings`. From a run,
        finished stages only: predictions when classify is done, ``X_umap`` when map is done.
    out_path : path, optional
        Write the AnnData to this ``.h5ad`` file, atomically.
    method : str, optional
        Only the predictions of this classify method (``"head"``, ``"knn"``); default every
        method of the run. Needs a run folder.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 ``[N, D]``, ``obs`` ``N`` rows indexed by cell id, ``obsm`` and ``uns`` as in
        the module docstring.
    """
    import anndata

    from . import __version__
    from .classify import read_predictions

    config, predictions, coordinates = None, {}, None
    if isinstance(source, Embeddings):
        embedded, where, table_path = source, None, Path("<Embeddings>")
    else:
        where = embeddings_path = Path(source)
        if (where / "config.toml").is_file():
            config, embeddings_path, predictions, coordinates = _run_parts(where, method)
        elif not (where / "embeddings.npy").is_file():
            raise DataError(where, "neither a run folder (config.toml) nor an embeddings directory "
                                   "(embeddings.npy)")
        embedded, table_path = read_embeddings(embeddings_path), embeddings_path / "cells.parquet"
    if method is not None and config is None:
        raise DataError(where or table_path,
                        f"method={method!r} picks predictions of a run: give the run folder")

    obs, obsm = _obs_table(embedded.cells, table_path)
    uns: dict[str, Any] = {
        "classes": {"scheme": HPA2021.name, "ids": HPA2021.ids, "names": np.array(HPA2021.names),
                    "colours": np.array(HPA2021.colours)},
        "embed": _to_uns(embedded.meta),
        "hpa_embed": {"version": __version__, "source": str(where.resolve()) if where else _NONE,
                      "label_columns": [name[2:] for name in obsm],
                      "prediction_columns": [f"predicted_{name}" for name in predictions],
                      "label_encoding": f"class ids joined by '{LABEL_SEPARATOR}'; '' no class; NA unknown"},
    }
    if config is not None:
        uns["config"] = _to_uns(config.to_dict())
    cell_ids = obs.index
    for name, folder in predictions.items():
        predicted_cells, probabilities = read_predictions(folder)
        order = pd.Index(predicted_cells["cell_id"].astype(str)).get_indexer(cell_ids)
        if (order < 0).any():
            raise DataError(folder / "cells.parquet", f"predictions for {int((order >= 0).sum())} of the "
                                                      f"{len(order)} embedded cells")
        if probabilities.shape[1] != HPA2021.num_classes:
            raise DataError(folder / "probabilities.npy", f"{probabilities.shape[1]} classes, expected "
                                                          f"{HPA2021.num_classes} ({HPA2021.name})")
        probabilities = np.ascontiguousarray(probabilities[order], dtype=np.float32)
        obsm[f"probabilities_{name}"] = probabilities
        obs[f"predicted_{name}"] = _class_names(probabilities.argmax(axis=1))
        uns[f"predicted_{name}_colors"] = np.array(HPA2021.colours)
    if coordinates is not None:
        umap = np.load(coordinates, allow_pickle=False)
        if umap.shape != (len(obs), 2):
            raise DataError(coordinates, f"shape {umap.shape}, expected [{len(obs)}, 2] like the embeddings")
        obsm["X_umap"] = np.ascontiguousarray(umap, dtype=np.float32)

    adata = anndata.AnnData(X=np.ascontiguousarray(embedded.X, dtype=np.float32), obs=obs, obsm=obsm,
                            uns=uns)
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            adata.write_h5ad(tmp)
        log.info("wrote %d cells (D=%d) to %s", adata.n_obs, adata.n_vars, out_path)
    return adata


# --------------------------------------------------------------------------- import


def _read_table(cells: pd.DataFrame | CellStore | str | os.PathLike) -> tuple[pd.DataFrame, Path]:
    """A cell table and the path its errors name; label columns as lists of ids."""
    if isinstance(cells, CellStore):
        return cells.cells, cells.path / "cells.parquet"
    if isinstance(cells, pd.DataFrame):
        table, path = cells.reset_index(drop=True).copy(), Path("<cells DataFrame>")
    else:
        path = Path(cells)
        if (path / "store.json").is_file():
            store = CellStore.open(path)
            return store.cells, path / "cells.parquet"
        if not path.is_file():
            raise DataError(path, "not found: expected a .parquet or .csv cell table, or a CellStore folder")
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        elif path.suffix == ".csv":
            table = pd.read_csv(path, dtype=dict.fromkeys(("cell_id", "image_id", *LABEL_COLUMNS), str))
        else:
            raise DataError(path, "expected a .parquet or .csv cell table, or a CellStore folder")
    if "cell_id" not in table:
        raise DataError(path, f"no cell_id column (columns: {', '.join(map(str, table.columns))})")
    for name in LABEL_COLUMNS:
        if name in table:
            table[name] = _decode_labels(table[name].to_numpy(dtype=object), path, name)
    return table, path


def _read_h5ad(path: Path, key: str | None,
               id_column: str | None) -> tuple[Any, np.ndarray, pd.DataFrame, dict]:
    """Vectors ``[N, D]``, cell ids ``[N]``, the obs table (cell_id column, strings as objects,
    label columns as lists) and the plain ``uns``."""
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except Exception as error:
        raise DataError(path, f"unreadable h5ad ({error})") from error
    if key is None:
        X = adata.X
    elif key in adata.obsm:
        X = adata.obsm[key]
    else:
        raise DataError(path, f"no obsm[{key!r}]; obsm holds {', '.join(adata.obsm) or 'nothing'} (or use X)")
    if X is None:
        raise DataError(path, "X is empty; give the obsm key of the embeddings")
    X = X.to_numpy() if isinstance(X, pd.DataFrame) else X.toarray() if hasattr(X, "toarray") else X
    obs = adata.obs.copy()
    for name in obs.columns:
        if isinstance(obs[name].dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(obs[name].dtype):
            obs[name] = [None if _missing(v) else v for v in obs[name].to_numpy(dtype=object)]
    uns = _from_uns(dict(adata.uns))
    ours = uns.get("hpa_embed") or {}
    # the top classes an export adds are predictions, not properties of the cells
    obs = obs.drop(columns=[name for name in ours.get("prediction_columns") or [] if name in obs])
    label_columns = ours.get("label_columns") or []
    for name in {*LABEL_COLUMNS, *label_columns} & set(obs.columns):
        obs[name] = _decode_labels(obs[name].to_numpy(dtype=object), path, name)
    if id_column is None and "cell_id" in obs:
        id_column = "cell_id"
    if id_column is None:
        ids = obs.index.to_numpy(dtype=object)
    elif id_column in obs:
        ids = obs.pop(id_column).to_numpy(dtype=object)
    else:
        raise DataError(path, f"no obs column {id_column!r} for the cell ids")
    obs = obs.drop(columns="cell_id", errors="ignore")  # an explicit id_column wins
    obs.insert(0, "cell_id", [str(v) for v in ids])
    return X, obs["cell_id"].to_numpy(dtype=object), obs.reset_index(drop=True), uns


def _unit_rows(X: Any, path: Path) -> np.ndarray:
    """float32 ``[N, D]`` with unit L2 rows; refuses what is not a finite 2-D numeric array."""
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number) or 0 in X.shape:
        raise DataError(path, f"expected a numeric 2-D array [N, D] of embeddings, got {X.dtype} {X.shape}")
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        raise DataError(path, f"{int((~finite).sum())} row(s) hold NaN or infinite values, "
                              f"the first row {int(np.flatnonzero(~finite)[0])}")
    norms = np.linalg.norm(X.astype(np.float64), axis=1)
    if (norms == 0).any():
        raise DataError(path, f"row {int(np.flatnonzero(norms == 0)[0])} is all zeros: it has no direction "
                              "to normalise")
    scale = np.where(np.abs(norms - 1) > _UNIT_TOLERANCE, norms, 1.0)
    if (scale == 1.0).all() and X.dtype == np.float32:
        return np.ascontiguousarray(X)
    return np.ascontiguousarray(X / scale[:, None], dtype=np.float32)


def _check_unique(ids: np.ndarray, path: Path, what: str) -> None:
    counts = pd.Series(ids).value_counts()
    duplicated = counts[counts > 1]
    if len(duplicated):
        raise DataError(path, f"{len(duplicated)} duplicate cell id(s) in {what}, e.g. "
                              f"{duplicated.index[0]!r} ({duplicated.iloc[0]} times)")


def import_embeddings(
    source: str | os.PathLike,
    cells: pd.DataFrame | CellStore | str | os.PathLike | None = None,
    key: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    id_column: str | None = None,
) -> Embeddings:
    """Embeddings from another model as :class:`~hpa_embed.embed.Embeddings`.

    Parameters
    ----------
    source : path
        An ``.h5ad`` file (its ``X``, or ``obsm[key]``; the cell ids from its obs column
        ``cell_id`` or ``id_column`` when there is one, else its obs names), or a ``.npy`` array
        ``[N, D]`` whose row ``i`` is row ``i`` of ``cells``.
    cells : DataFrame, CellStore or path, optional
        A cell table (``.parquet`` or ``.csv``, label columns as lists or ``"0|5"`` strings) or a
        CellStore (its folder or the opened store), with ``cell_id``, ``image_id`` and the labels
        and splits. With an ``.npy`` it lists the rows of the array, in order (required). With an
        ``.h5ad`` it is the reference the cells are looked up in, by cell id, instead of the obs.
    key : str, optional
        ``.h5ad`` only: the ``obsm`` key of the embeddings (e.g. ``"features"``); default ``X``.
    out : path, optional
        Write an embeddings directory here (:func:`~hpa_embed.embed.write_embeddings`).
    id_column : str, optional
        ``.h5ad`` only: the obs column of cell ids.

    Returns
    -------
    Embeddings
        ``X`` float32 ``[n, D]``, each row scaled to unit L2 norm (rows already of unit norm to
        within 1e-6 are kept as they are); ``cells`` the reference table's rows of these cells,
        in the reference's order; ``meta`` the h5ad's ``uns["embed"]`` where it has one, and
        ``imported`` (source, key, cell table).

    Raises
    ------
    DataError
        Naming the file: not 2-D, NaN or infinite values, an all-zero row, row counts that differ,
        duplicate cell ids, cell ids missing from the reference, no ``image_id``.
    """
    source = Path(source)
    if not source.is_file():
        raise DataError(source, "not found: expected an .h5ad file or a .npy array")
    origin: dict = {}
    if source.suffix == ".h5ad":
        X, ids, obs, uns = _read_h5ad(source, key, id_column)
        X = _unit_rows(X, source)
        origin = {name: value for name, value in (uns.get("embed") or {}).items()
                  if name not in ("count", "dimension")}
        reference, reference_path = (obs, source) if cells is None else _read_table(cells)
    elif source.suffix == ".npy":
        if key is not None or id_column is not None:
            raise DataError(source, "key and id_column apply to an .h5ad; a .npy is one array whose rows "
                                    "follow the cell table")
        if cells is None:
            raise DataError(source, "a .npy holds no cell ids: give cells, the table (or CellStore) of its "
                                    "rows")
        try:
            X = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(source, f"unreadable array ({error})") from error
        X = _unit_rows(X, source)
        reference, reference_path = _read_table(cells)
        if len(X) != len(reference):
            raise DataError(source, f"{len(X)} rows but {len(reference)} cells in {reference_path}")
        ids = reference["cell_id"].to_numpy(dtype=object)
    else:
        raise DataError(source, "expected an .h5ad file or a .npy array")
    ids = np.array([str(v) for v in ids], dtype=object)
    _check_unique(ids, source, "the embeddings")
    reference_ids = reference["cell_id"].astype(str).to_numpy(dtype=object)
    _check_unique(reference_ids, reference_path, "the cell table")
    positions = pd.Index(reference_ids).get_indexer(ids)
    unknown = ids[positions < 0]
    if len(unknown):
        raise DataError(source, f"{len(unknown)} of {len(ids)} cell ids are not in {reference_path}, "
                                f"e.g. {unknown[0]!r}")
    if "image_id" not in reference:
        raise DataError(reference_path, "no image_id column: classify and evaluate need each cell's image "
                                        "(give cells, a table or CellStore that has it)")
    order = np.argsort(positions, kind="stable")
    table = reference.iloc[positions[order]].reset_index(drop=True)
    imported = {"source": str(source.resolve()), "key": key or "X",
                "cells": str(Path(reference_path).resolve()) if cells is not None and
                not isinstance(cells, pd.DataFrame) else None}
    result = Embeddings(X[order], table, {**origin, "imported": imported})
    if out is not None:
        write_embeddings(out, result)
        log.info("wrote %d imported embeddings (D=%d) to %s", len(result), X.shape[1], out)
    return result
