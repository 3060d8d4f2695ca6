"""The on-disk format of a :class:`~hpa_embed.index.CellIndex`.

This module is the lower layer: it reads and writes the pieces of a saved index (the FAISS
index, the cell ids, the :class:`~hpa_embed.config.IndexConfig`, the kind, the id offset and
the trained index) as plain values, and knows nothing of ``CellIndex``, which
:mod:`hpa_embed.index` builds from them.

A saved index is a directory::

    <index>/index.json         header (format "hpa_embed.cellindex", version, library version, and
                               the sha256 or size of every other file; see hpa_embed.io), kind,
                               metric, dimension, count, id offset, nlist, config
    <index>/index.faiss        faiss.write_index
    <index>/cell_ids.parquet   faiss_id (int64), cell_id (string): one row per cell, in row order
    <index>/trained.faiss      IVF kinds: the empty trained index (quantiser, PQ codebooks); shards
                               can be merged only if theirs are identical
    <index>/index.ivfdata      merged indexes only: the on-disk inverted lists (OnDiskInvertedLists);
                               recorded by size, since hashing it would read it whole on every load

It is written to a temporary directory and renamed into place (:func:`save_index_files`);
:func:`load_index_files` checks every file against ``index.json`` before reading the index.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import pandas as pd

from .config import IndexConfig
from .io import DataError, atomic_path, read_header, write_header

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_FILE",
    "INDEX_FILE",
    "IDS_FILE",
    "TRAINED_FILE",
    "IVFDATA_FILE",
    "SavedIndex",
    "IndexFiles",
    "faiss_metric",
    "extract_ivf",
    "on_disk_invlists",
    "read_description",
    "read_id_table",
    "replace_directory",
    "write_index_files",
    "save_index_files",
    "load_index_files",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "hpa_embed.cellindex"
FORMAT_VERSION = 1

META_FILE = "index.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "cell_ids.parquet"
TRAINED_FILE = "trained.faiss"
IVFDATA_FILE = "index.ivfdata"

_KINDS = ("flat", "ivf", "ivfpq")


# --------------------------------------------------------------------------- FAISS helpers


def faiss_metric(metric: str) -> int:
    """The FAISS metric constant of an :class:`IndexConfig` metric (``"cosine"`` or ``"l2"``)."""
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def extract_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF index inside ``index``, or None for a flat one."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def on_disk_invlists(index: faiss.Index) -> faiss.OnDiskInvertedLists | None:
    """The on-disk inverted lists of ``index`` (merged shards), or None when they are in memory."""
    ivf = extract_ivf(index)
    if ivf is None:
        return None
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    return invlists if isinstance(invlists, faiss.OnDiskInvertedLists) else None


# --------------------------------------------------------------------------- descriptions


class SavedIndex(NamedTuple):
    """A saved index's ``index.json``, parsed, with its files checked.

    Attributes
    ----------
    path : Path
        The index directory.
    meta : dict
        The whole of ``index.json``.
    config : IndexConfig
    kind : str
        ``"flat"``, ``"ivf"`` or ``"ivfpq"``.
    count, dimension, id_offset : int
    files : dict
        File name -> ``{"sha256": ...}`` or ``{"bytes": ...}``.
    """

    path: Path
    meta: dict
    config: IndexConfig
    kind: str
    count: int
    dimension: int
    id_offset: int
    files: dict


class IndexFiles(NamedTuple):
    """The pieces of a saved index, read and checked by :func:`load_index_files`.

    Attributes
    ----------
    faiss_index : faiss.Index
        ``nprobe`` already set from ``config`` for IVF kinds.
    cell_ids : numpy.ndarray
        object ``[count]``, in row order.
    config : IndexConfig
    kind : str
        ``"flat"``, ``"ivf"`` or ``"ivfpq"``.
    id_offset : int
        FAISS id of row 0.
    trained : bytes or None
        The trained, empty FAISS index, serialised (IVF kinds).
    on_disk : bool
        Whether the inverted lists live in ``index.ivfdata`` (merged shards: read-only).
    """

    faiss_index: faiss.Index
    cell_ids: np.ndarray
    config: IndexConfig
    kind: str
    id_offset: int
    trained: bytes | None
    on_disk: bool


def read_description(path: str | os.PathLike) -> SavedIndex:
    """Parse ``<path>/index.json`` and check every file it lists (presence, checksum or size).

    Raises :class:`~hpa_embed.io.DataError` naming the file at fault.
    """
    path = Path(path)
    meta_path = path / META_FILE
    meta = read_header(meta_path, FORMAT_NAME, {FORMAT_VERSION}, what="CellIndex")
    try:
        saved = SavedIndex(path, meta, IndexConfig.from_dict(meta["config"]), meta["kind"],
                           int(meta["count"]), int(meta["dimension"]), int(meta["id_offset"]),
                           dict(meta["files"]))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(meta_path, f"incomplete or invalid description ({error!r})") from error
    if saved.kind not in _KINDS or meta.get("metric") != saved.config.metric:
        raise DataError(meta_path, f"inconsistent kind {saved.kind!r} / metric {meta.get('metric')!r}")
    for name in (INDEX_FILE, IDS_FILE):
        if name not in saved.files:
            raise DataError(meta_path, f"does not list {name}")
    return saved


def read_id_table(saved: SavedIndex) -> np.ndarray:
    """The cell ids (object ``[count]``) of a saved index, checked against its description."""
    path = saved.path / IDS_FILE
    try:
        table = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a broken file
        raise DataError(path, f"unreadable table ({error})") from error
    if list(table.columns) != ["faiss_id", "cell_id"] or len(table) != saved.count:
        raise DataError(path, f"expected columns ['faiss_id', 'cell_id'] and {saved.count} rows, "
                              f"got {list(table.columns)} and {len(table)} rows")
    if not np.array_equal(table["faiss_id"].to_numpy(), np.arange(saved.count) + saved.id_offset):
        raise DataError(path, f"faiss_id must run {saved.id_offset}, {saved.id_offset + 1}, ... in order")
    if table["cell_id"].isna().any() or not table["cell_id"].is_unique:
        raise DataError(path, "cell_id holds missing or duplicate values")
    return table["cell_id"].to_numpy(dtype=object)


def replace_directory(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write an index directory with ``write(tmp_dir)`` and swap it in for ``path``, atomically.

    An existing ``path`` is replaced only if it is a CellIndex directory, so a mistyped path
    never deletes unrelated files.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and (path / META_FILE).is_file()):
        raise DataError(path, "exists and is not a CellIndex directory; refusing to replace it")
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write(tmp)


def write_index_files(tmp: Path, final: Path, faiss_index: faiss.Index, cell_ids: np.ndarray,
                      config: IndexConfig, kind: str, *, id_offset: int = 0,
                      trained: bytes | None = None) -> None:
    """Write every file of an index into the directory ``tmp``, which will be renamed to ``final``.

    ``cell_ids`` (one per vector of ``faiss_index``, in row order) and ``trained`` (the trained,
    empty FAISS index, serialised; IVF kinds) as held by a :class:`~hpa_embed.index.CellIndex`.
    """
    location: dict[str, Any] = {}
    large_files = []
    on_disk = on_disk_invlists(faiss_index)
    if on_disk is not None:
        if Path(on_disk.filename).resolve() != (tmp / IVFDATA_FILE).resolve():
            shutil.copyfile(on_disk.filename, tmp / IVFDATA_FILE)
        # The index file records where its inverted lists live: point it at the final place.
        current = on_disk.filename
        location["ivfdata_path"] = on_disk.filename = str((final / IVFDATA_FILE).resolve())
        try:
            faiss.write_index(faiss_index, str(tmp / INDEX_FILE))
        finally:
            on_disk.filename = current
        large_files.append(IVFDATA_FILE)
    else:
        faiss.write_index(faiss_index, str(tmp / INDEX_FILE))
    files = [INDEX_FILE, IDS_FILE]
    if trained is not None:
        (tmp / TRAINED_FILE).write_bytes(trained)
        files.append(TRAINED_FILE)
    count = int(faiss_index.ntotal)
    table = pd.DataFrame({
        "faiss_id": np.arange(count, dtype=np.int64) + int(id_offset),
        "cell_id": pd.array(cell_ids, dtype="string"),
    })
    table.to_parquet(tmp / IDS_FILE, index=False)
    ivf = extract_ivf(faiss_index)
    body = {
        "kind": kind,
        "metric": config.metric,
        "dimension": int(faiss_index.d),
        "count": count,
        "id_offset": int(id_offset),
        "nlist": None if ivf is None else int(ivf.nlist),
        "on_disk": on_disk is not None,
        **location,
        "faiss_version": faiss.__version__,
        "config": config.to_dict(),
    }
    write_header(tmp / META_FILE, FORMAT_NAME, FORMAT_VERSION, body, files=files, large_files=large_files)


def save_index_files(path: str | os.PathLike, faiss_index: faiss.Index, cell_ids: np.ndarray,
                     config: IndexConfig, kind: str, *, id_offset: int = 0,
                     trained: bytes | None = None) -> Path:
    """Write the index directory (see the module docstring) atomically; returns its path.

    The pieces are those of :func:`write_index_files`. An existing CellIndex directory at
    ``path`` is replaced; any other existing path is refused.
    """
    path = Path(path)
    replace_directory(path, lambda tmp: write_index_files(tmp, path, faiss_index, cell_ids, config, kind,
                                                          id_offset=id_offset, trained=trained))
    return path


def load_index_files(path: str | os.PathLike) -> IndexFiles:
    """Read the pieces of an index directory written by :func:`save_index_files` or
    :func:`~hpa_embed.index_shards.merge_shards`.

    Raises :class:`~hpa_embed.io.DataError` naming the file for a missing, corrupt (checksum)
    or inconsistent file.
    """
    saved = read_description(path)
    index = _read_faiss(saved.path, saved.meta)
    if (index.d, index.ntotal, index.metric_type) != (saved.dimension, saved.count,
                                                       faiss_metric(saved.config.metric)):
        raise DataError(saved.path / INDEX_FILE,
                        f"holds {index.ntotal} vectors of dimension {index.d} (FAISS metric "
                        f"{index.metric_type}); {META_FILE} says {saved.count} of dimension "
                        f"{saved.dimension} ({saved.config.metric})")
    ivf = extract_ivf(index)
    if (saved.kind == "flat") != (ivf is None):
        raise DataError(saved.path / INDEX_FILE, f"is not a {saved.kind} index")
    if ivf is not None:
        ivf.nprobe = min(saved.config.nprobe, ivf.nlist)
    trained = (saved.path / TRAINED_FILE).read_bytes() if TRAINED_FILE in saved.files else None
    return IndexFiles(index, read_id_table(saved), saved.config, saved.kind, saved.id_offset, trained,
                      bool(saved.meta.get("on_disk")))


def _read_faiss(path: Path, meta: dict) -> faiss.Index:
    index_path = path / INDEX_FILE
    flags = 0
    if meta.get("on_disk"):
        ivfdata = (path / IVFDATA_FILE).resolve()
        # The index file names its ivfdata file; when the directory has moved, let FAISS look
        # beside the index file instead (it then prints a note on stdout, hence only then).
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if meta.get("ivfdata_path") != str(ivfdata) else 0
    try:
        return faiss.read_index(str(index_path), flags)
    except RuntimeError as error:
        problem = str(error).splitlines()[0][:200]
        raise DataError(index_path, f"unreadable FAISS index ({problem})") from error
