"""The CellStore: single-cell crops on disk with one table row per cell.

A store is a directory::

    <store>/store.json                 header (format, version, library version; hpa_embed.io),
                                       crop size, channels, dtype, chunk size, scheme, attrs
    <store>/cells.parquet              one row per cell; column ``row`` indexes the crop array
    <store>/crops/chunk-000000.npy     uint8 [n0, C, S, S]
    <store>/crops/chunk-000001.npy     uint8 [n1, C, S, S], rows n0 .. n0 + n1 - 1
    <store>/incoming/                  chunks written by the tasks of a crop run, not yet committed

The crop array is the chunks' rows in chunk order. Chunks are plain ``.npy`` files read through
``np.load(mmap_mode="r")``: lazy, random access at page-cache speed, no dependency beyond numpy,
and readable by any tool that reads ``.npy``. :meth:`CellStore.append` fills chunks up to
``chunk_size`` crops; :meth:`CellStore.append_chunks` takes in chunk files of any size that
other processes wrote (:func:`write_chunk`: the workers of a crop run, each writing its own batch
of fields), and :meth:`CellStore.extend` links the chunks of other stores; neither copies a crop.

The table is the commit point. A write first puts every chunk it touches in place (a partial
last chunk is rewritten as old rows + new rows under the same name, atomically, so the rows a
reader already sees never change), and only then replaces ``cells.parquet`` atomically. A crash
at any point leaves the previous table, which references only rows that are on disk.

The table's parquet metadata (key ``hpa_embed.chunks``) holds, per chunk, its number of rows and
their SHA-256 when they were written (``{"chunk-000000.npy": {"rows": n, "sha256": ...}}``): the
row counts say where each chunk starts, and its pages carry CRC checksums. A chunk is checked the
first time a process maps it (one read of the chunk, which readers of its crops mostly make
anyway), so a changed crop raises :class:`~hpa_embed.io.DataError` naming the chunk instead of
reaching a model. Stores of format version 1 hold ``chunk_size`` rows in every chunk but the
last, and those written before the checksums may lack the metadata; they are read as such, and
their first write records every chunk.

Writers take ``<store>/write.lock`` (an exclusive ``flock``) for each append or column change and
first read the table again if another writer committed since, so processes appending to one
store take turns and lose nothing; any number may read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import HEADER_KEYS, DataError, atomic_path, read_header, write_header
from .labels import CHANNELS, ClassScheme, get_scheme

__all__ = ["CellStore", "FORMAT_NAME", "FORMAT_VERSION", "LIST_COLUMNS", "StagedChunk", "write_chunk"]

log = logging.getLogger(__name__)

FORMAT_NAME = "hpa_embed.cellstore"
FORMAT_VERSION = 2
#: Version 1: every chunk but the last holds ``chunk_size`` rows.
_READ_VERSIONS = {1, FORMAT_VERSION}
#: Table columns holding lists of class ids (parquet list<int64>; Python lists in memory).
LIST_COLUMNS: tuple[str, ...] = ("image_labels", "true_labels")

_META_FILE = "store.json"
_TABLE_FILE = "cells.parquet"
_CHUNK_DIR = "crops"
_LOCK_FILE = "write.lock"
_INCOMING_DIR = "incoming"
# parquet metadata key of the chunk checksums
_DIGESTS_KEY = b"hpa_embed.chunks"


def _fsync(path: Path) -> None:
    # The rename that commits a file must not reach the disk before the file's own bytes do.
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({"cell_id": pd.Series(dtype=str), "image_id": pd.Series(dtype=str),
                         "row": pd.Series(dtype=np.int64)})


def _to_id_list(value) -> list[int] | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return [int(v) for v in value]


def _link_or_copy(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as a hard link (a copy across file systems), atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        _fsync(tmp)
    os.replace(tmp, target)


def _table_stamp(table_path: Path) -> tuple[int, int, int] | None:
    """What identifies a committed table file (inode, size, mtime); None when there is none."""
    try:
        stat = table_path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _table_rows(table_path: Path) -> int:
    """Rows of the committed table, from its footer alone (0 when there is none)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(table_path).num_rows if table_path.is_file() else 0


def _chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.npy"


def _rows_digest(rows: np.ndarray) -> dict[str, Any]:
    """What the table records of a chunk's rows (uint8 ``[n, C, S, S]``): their count and SHA-256."""
    return {"rows": len(rows), "sha256": hashlib.sha256(np.ascontiguousarray(rows)).hexdigest()}


def _chunk_sizes(digests: Mapping[int, Mapping[str, Any]], n_rows: int, chunk_size: int,
                 where: Path) -> list[int]:
    """Rows per chunk, in chunk order, of a table of ``n_rows`` rows: those the checksums record,
    ``chunk_size`` (at most what is left) for a chunk without one (a store of format version 1)."""
    sizes: list[int] = []
    total = 0
    while total < n_rows:
        entry = digests.get(len(sizes))
        sizes.append(entry["rows"] if entry is not None else min(chunk_size, n_rows - total))
        if sizes[-1] < 1:
            raise DataError(where, f"chunk {_chunk_name(len(sizes) - 1)} is recorded with no rows")
        total += sizes[-1]
    if total != n_rows:
        raise DataError(where, f"the chunks hold {total} rows, the table {n_rows}")
    return sizes


@dataclass(frozen=True)
class StagedChunk:
    """A chunk file written by :func:`write_chunk`, for :meth:`CellStore.append_chunks`.

    Attributes
    ----------
    path : str
        The ``.npy`` file, uint8 ``[rows, C, S, S]``.
    rows : int
    sha256 : str
        Of its crops, as they were written.
    """

    path: str
    rows: int
    sha256: str


def write_chunk(directory: str | os.PathLike, crops: np.ndarray) -> StagedChunk:
    """Write crops (uint8 ``[n, C, S, S]``, ``n >= 1``) to a new chunk file in ``directory``.

    What a worker of a crop run calls for its batch of fields; the driver then moves the file
    into the store with :meth:`CellStore.append_chunks`, so the crops are written once, by the
    worker, and never pass through the driver. ``directory`` must lie on the store's file system
    (:meth:`CellStore.staging` gives one inside the store).
    """
    crops = np.ascontiguousarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or not len(crops):
        raise ValueError(f"crops must be uint8 [n >= 1, C, S, S], got {crops.dtype} {crops.shape}")
    path = Path(directory) / f"chunk-{uuid.uuid4().hex}.npy"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, crops)
        _fsync(tmp)
    digest = _rows_digest(crops)
    return StagedChunk(str(path), digest["rows"], digest["sha256"])


def _read_table(table_path: Path) -> tuple[pd.DataFrame, dict[int, dict[str, Any]]]:
    """The committed table and its chunk checksums ({chunk index: :func:`_rows_digest`})."""
    import pyarrow.parquet as pq

    if not table_path.is_file():
        return _empty_table(), {}
    try:
        with open(table_path, "rb") as handle:  # one file: a commit meanwhile replaces another
            metadata = pq.read_schema(handle).metadata or {}
            handle.seek(0)
            cells = pd.read_parquet(handle, page_checksum_verification=True)
        digests = json.loads(metadata.get(_DIGESTS_KEY, b"{}"))
        digests = {int(name[len("chunk-"):-len(".npy")]): {"rows": int(entry["rows"]),
                                                           "sha256": str(entry["sha256"])}
                   for name, entry in digests.items()}
    except Exception as error:  # pyarrow, json and int() raise many types for a damaged file
        raise DataError(table_path, f"unreadable cell table ({type(error).__name__}: {error})") from error
    missing = {"cell_id", "image_id", "row"} - set(cells.columns)
    if missing:
        raise DataError(table_path, f"the cell table lacks column(s) {sorted(missing)}")
    for column in LIST_COLUMNS:
        if column in cells:
            cells[column] = [_to_id_list(value) for value in cells[column]]
    if not np.array_equal(cells["row"].to_numpy(), np.arange(len(cells))):
        raise DataError(table_path, "column 'row' is not 0..N-1 in order")
    return cells, digests


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Refuse a ``store.json`` whose settings are not those of a store this library writes."""
    def positive(name: str) -> bool:
        return type(meta.get(name)) is int and meta[name] >= 1

    channels = meta.get("channels")
    problems = [f"{name} {meta.get(name)!r} is not a positive integer" for name in ("crop_size", "chunk_size")
                if not positive(name)]
    if not (isinstance(channels, list) and channels and all(name in CHANNELS for name in channels)):
        problems.append(f"channels {channels!r} are not a list of {CHANNELS}")
    if meta.get("dtype") != "uint8":
        problems.append(f"dtype {meta.get('dtype')!r} is not 'uint8'")
    if not isinstance(meta.get("attrs", {}), dict):
        problems.append("attrs is not a JSON object")
    try:
        get_scheme(str(meta.get("scheme")))
    except ValueError:
        problems.append(f"scheme {meta.get('scheme')!r} is unknown")
    if problems:
        raise DataError(path, "invalid cell store settings: " + "; ".join(problems))


class CellStore:
    """Single-cell crops (uint8 ``[N, C, S, S]``) and their table, in one directory.

    Open one with :meth:`create` or :meth:`open`, never the constructor.

    Attributes
    ----------
    path : Path
        The store directory.
    meta : dict
        The content of ``store.json``.
    """

    def __init__(self, path: Path, meta: dict[str, Any], cells: pd.DataFrame,
                 stamp: tuple[int, int, int] | None = None, digests: dict[int, dict] | None = None):
        self.path = path
        self.meta = meta
        self._chunks: dict[int, np.ndarray] = {}
        # checksums of the chunks' rows: as committed with the table, and those written since
        self._digests: dict[int, dict[str, Any]] = dict(digests or {})
        self._pending: dict[int, dict[str, Any]] = {}
        self._set_table(cells, self._digests)
        # the table file the cells were read from, taken before reading it: a table committed by
        # another writer meanwhile differs from it and is read again before this store writes
        self._stamp = stamp

    # ----------------------------------------------------------------------- open / create

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        crop_size: int = 128,
        channels: Sequence[str] = CHANNELS,
        chunk_size: int = 1024,
        scheme: str | ClassScheme = "hpa2021",
        attrs: Mapping[str, Any] | None = None,
    ) -> CellStore:
        """Create an empty store.

        Parameters
        ----------
        path : path
            A directory that does not exist yet or holds no store.
        crop_size : int
            Side ``S`` of the square crops, pixels.
        channels : sequence of str
            Channel names, in crop order (``C = len(channels)``).
        chunk_size : int
            Crops per chunk file. 1024 crops of 4 x 128² are 64 MiB: big enough that a 100k-cell
            store is ~100 files, small enough that rewriting a partial chunk on append is cheap.
        scheme : str or ClassScheme
            The class scheme the label columns use.
        attrs : mapping, optional
            JSON-serialisable settings to record (e.g. how the crops were made).
        """
        path = Path(path)
        if (path / _META_FILE).exists():
            raise FileExistsError(f"{path}: a cell store already exists here; open it instead")
        for name in channels:
            if name not in CHANNELS:
                raise ValueError(f"unknown channel {name!r}; channels are {CHANNELS}")
        if crop_size < 1 or chunk_size < 1:
            raise ValueError(f"crop_size and chunk_size must be positive, got {crop_size}, {chunk_size}")
        body = {
            "crop_size": int(crop_size),
            "channels": list(channels),
            "dtype": "uint8",
            "chunk_size": int(chunk_size),
            "scheme": get_scheme(scheme).name,
            "attrs": dict(attrs or {}),
        }
        (path / _CHUNK_DIR).mkdir(parents=True, exist_ok=True)
        meta = write_header(path / _META_FILE, FORMAT_NAME, FORMAT_VERSION, body)
        log.info("created cell store %s (%d px, channels %s)", path, crop_size, ",".join(channels))
        return cls(path, meta, _empty_table())

    @classmethod
    def open(cls, path: str | os.PathLike) -> CellStore:
        """Open an existing store; raises :class:`~hpa_embed.io.DataError` if it is not one."""
        path = Path(path)
        meta = read_header(path / _META_FILE, FORMAT_NAME, _READ_VERSIONS, what="cell store")
        _check_meta(path / _META_FILE, meta)
        stamp = _table_stamp(path / _TABLE_FILE)
        cells, digests = _read_table(path / _TABLE_FILE)
        return cls(path, meta, cells, stamp, digests)

    # ----------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._cells)

    def __repr__(self) -> str:
        return (f"CellStore({str(self.path)!r}, cells={len(self)}, crop_size={self.crop_size}, "
                f"channels={self.channels})")

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps would be pickled as full copies: drop them and re-map in the new process.
        state = dict(self.__dict__)
        state["_chunks"] = {}
        return state

    @property
    def cells(self) -> pd.DataFrame:
        """The cell table, one row per cell, in crop-array order (treat as read-only)."""
        return self._cells

    @property
    def crop_size(self) -> int:
        return int(self.meta["crop_size"])

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.meta["channels"])

    @property
    def chunk_size(self) -> int:
        """Crops :meth:`append` puts in a chunk (chunks from other writers may hold any number)."""
        return int(self.meta["chunk_size"])

    @property
    def chunk_rows(self) -> tuple[int, ...]:
        """Rows of each chunk, in chunk order (their sum is ``len(self)``)."""
        return tuple(self._sizes)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new folder ``<store>/incoming/<random>/`` for :func:`write_chunk`, removed when the
        block ends. Folders that killed runs left there are removed first: a run holds a lock on
        ``<random>.lock`` while its folder is in use."""
        incoming = self.path / _INCOMING_DIR
        incoming.mkdir(exist_ok=True)
        for lock_path in incoming.glob("*.lock"):
            with open(lock_path, "a+b") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run in progress
                shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
                lock_path.unlink(missing_ok=True)
        folder = incoming / uuid.uuid4().hex
        with open(folder.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            folder.mkdir()
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                folder.with_suffix(".lock").unlink(missing_ok=True)

    @property
    def scheme(self) -> ClassScheme:
        return get_scheme(self.meta["scheme"])

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """``(C, S, S)``."""
        return (len(self.channels), self.crop_size, self.crop_size)

    def _chunk_path(self, index: int) -> Path:
        return self.path / _CHUNK_DIR / _chunk_name(index)

    def _chunk(self, index: int) -> np.ndarray:
        chunk = self._chunks.get(index)
        if chunk is None:
            path = self._chunk_path(index)
            try:
                chunk = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise DataError(path, f"unreadable crop chunk ({error})") from error
            if chunk.dtype != np.uint8 or chunk.shape[1:] != self.crop_shape:
                raise DataError(path, f"chunk holds {chunk.dtype} {chunk.shape}, expected uint8 "
                                      f"[n, {', '.join(map(str, self.crop_shape))}] as {_META_FILE} says")
            expected = self._pending.get(index) or self._digests.get(index)
            needed = expected["rows"] if expected is not None else self._sizes[index]
            if len(chunk) < needed:
                raise DataError(path, f"chunk holds {len(chunk)} rows, the table expects {needed}")
            if expected is not None and _rows_digest(chunk[:needed]) != expected:
                raise DataError(path, "checksum mismatch: the crops are corrupt or were changed "
                                      f"after saving (checked {needed} rows)")
            self._chunks[index] = chunk
        return chunk

    def get_crops(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Crops of the given rows, in the order given (repeats allowed).

        Parameters
        ----------
        rows : int array-like ``[n]``
            Values of the ``row`` column, ``0 <= row < len(store)``.

        Returns
        -------
        uint8 ``[n, C, S, S]``
        """
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise TypeError(f"rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in 0..{len(self) - 1}, got {rows.min()}..{rows.max()}")
        out = np.empty((len(rows), *self.crop_shape), dtype=np.uint8)
        chunk_of_row = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(chunk_of_row, kind="stable")
        chunks, starts = np.unique(chunk_of_row[order], return_index=True)
        for chunk_index, positions in zip(chunks, np.split(order, starts[1:])):
            local = rows[positions] - self._starts[chunk_index]
            out[positions] = self._chunk(int(chunk_index))[local]
        return out

    # ----------------------------------------------------------------------- writing

    def _check_new_cells(self, cells: pd.DataFrame, n_crops: int) -> None:
        if len(cells) != n_crops:
            raise ValueError(f"{len(cells)} table rows but {n_crops} crops")
        missing = {"cell_id", "image_id"} - set(cells.columns)
        if missing:
            raise ValueError(f"the cell table lacks column(s) {sorted(missing)}")
        if cells["cell_id"].duplicated().any():
            raise ValueError(f"duplicate cell_id in the new cells: "
                             f"{cells['cell_id'][cells['cell_id'].duplicated()].iloc[0]!r}")

    def _commit_new_cells(self, cells: pd.DataFrame, sizes: list[int]) -> np.ndarray:
        """Commit the table with ``cells`` after the current rows (the chunks are in place)."""
        start = len(self)
        rows = np.arange(start, start + len(cells), dtype=np.int64)
        new = cells.drop(columns=["row"], errors="ignore").assign(row=rows)
        self._write_table(new if start == 0 else pd.concat([self._cells, new], ignore_index=True), sizes)
        return rows

    def _refuse_known(self, cell_ids: pd.Series) -> None:
        clash = set(cell_ids) & set(self._cells["cell_id"])
        if clash:
            raise ValueError(f"{len(clash)} cell_id(s) already in the store, e.g. {sorted(clash)[0]!r}")

    def append(self, cells: pd.DataFrame, crops: np.ndarray) -> np.ndarray:
        """Add cells and their crops; returns the ``row`` values they were given, int64 ``[n]``.

        Parameters
        ----------
        cells : DataFrame
            One row per crop, with at least ``cell_id`` (unique, also against the store) and
            ``image_id``. A ``row`` column, if any, is replaced.
        crops : uint8 ``[n, C, S, S]``

        The crops fill the last chunk up to ``chunk_size`` rows, then new chunks. The chunks are
        written before the table that references them, each through
        :func:`~hpa_embed.io.atomic_path`, so an exception or a crash at any point leaves the
        store as it was before the call.
        """
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != self.crop_shape:
            raise ValueError(f"crops must be uint8 [n, {', '.join(map(str, self.crop_shape))}], "
                             f"got {crops.dtype} {crops.shape}")
        self._check_new_cells(cells, len(crops))
        if len(cells) == 0:
            return np.empty(0, dtype=np.int64)
        with self._writing():
            self._refuse_known(cells["cell_id"])
            return self._commit_new_cells(cells, self._write_rows(crops))

    def append_chunks(self, cells: pd.DataFrame, chunks: Sequence[StagedChunk]) -> np.ndarray:
        """Add cells whose crops are in chunk files :func:`write_chunk` wrote; returns their ``row``
        values, int64 ``[n]``.

        Each file becomes a chunk of the store as it is (a hard link, or a copy where
        ``<store>/crops`` is on another file system), after the current ones, and is removed
        once the table is committed; no crop is read or written again. The checksums recorded
        are those :func:`write_chunk` computed. A failure before the commit leaves the store as
        it was and the files where they were.

        Parameters
        ----------
        cells : DataFrame
            As for :meth:`append`: one row per crop of the chunks, in their order.
        chunks : sequence of StagedChunk
        """
        self._check_new_cells(cells, sum(chunk.rows for chunk in chunks))
        for chunk in chunks:
            try:
                mapped = np.load(chunk.path, mmap_mode="r")  # reads the header only
            except (OSError, ValueError) as error:
                raise DataError(chunk.path, f"unreadable staged crop chunk ({error})") from error
            if mapped.dtype != np.uint8 or mapped.shape != (chunk.rows, *self.crop_shape):
                raise DataError(chunk.path, f"staged chunk holds {mapped.dtype} {mapped.shape}, expected "
                                            f"uint8 [{chunk.rows}, {', '.join(map(str, self.crop_shape))}]")
            del mapped
        if len(cells) == 0:
            return np.empty(0, dtype=np.int64)
        with self._writing():
            self._refuse_known(cells["cell_id"])
            sizes = list(self._sizes)
            for chunk in chunks:
                _link_or_copy(Path(chunk.path), self._chunk_path(len(sizes)))
                self._chunks.pop(len(sizes), None)
                self._pending[len(sizes)] = {"rows": chunk.rows, "sha256": chunk.sha256}
                sizes.append(chunk.rows)
            rows = self._commit_new_cells(cells, sizes)
        for chunk in chunks:
            Path(chunk.path).unlink(missing_ok=True)
        return rows

    def extend(self, stores: Sequence[CellStore]) -> None:
        """Add every cell of other stores without copying a crop.

        The chunks of each store become chunks of this one, in the order given, through hard
        links (a copy where the file system has none; chunks are only ever replaced, never
        changed in place, so the stores stay independent); the table, committed once at the
        end, keeps the stores' columns. The other stores must have this one's crop shape,
        channels, chunk size and scheme.

        Parameters
        ----------
        stores : sequence of CellStore
            Their ``cell_id`` values must be unique, also against this store.
        """
        if not stores:
            return
        for store in stores:
            for key in ("crop_shape", "channels", "chunk_size"):
                if getattr(store, key) != getattr(self, key):
                    raise ValueError(f"{store.path}: {key} {getattr(store, key)} differs from "
                                     f"{getattr(self, key)} in {self.path}")
            if store.scheme.name != self.scheme.name:
                raise ValueError(f"{store.path}: scheme {store.scheme.name} differs from {self.scheme.name}")
        tables = [store.cells for store in stores if len(store)] or [_empty_table()]
        new = pd.concat(tables, ignore_index=True)
        if new["cell_id"].duplicated().any():
            shared = new["cell_id"][new["cell_id"].duplicated()].iloc[0]
            raise ValueError(f"the stores share cell_id {shared!r}")
        with self._writing():
            self._refuse_known(new["cell_id"])
            sizes = list(self._sizes)
            for store in stores:
                for index, rows in enumerate(store.chunk_rows):
                    store._chunk(index)  # checks the dtype, crop shape, rows and checksum
                    _link_or_copy(store._chunk_path(index), self._chunk_path(len(sizes)))
                    self._chunks.pop(len(sizes), None)
                    if index in store._digests:  # the same file: the same checksum
                        self._pending[len(sizes)] = store._digests[index]
                    sizes.append(rows)
            self._commit_new_cells(new, sizes)
        log.info("%s: %d cells added from %d store(s) in %d linked chunks", self.path, len(new),
                 len(stores), sum(len(store.chunk_rows) for store in stores))

    def set_columns(self, columns: Mapping[str, Sequence[Any]]) -> None:
        """Replace or add table columns (one value per cell), atomically; crops are untouched."""
        for name in columns:
            if name in ("row", "cell_id"):
                raise ValueError(f"column {name!r} is managed by the store and cannot be set")
        known = len(self)
        with self._writing():
            if len(self) != known:
                raise DataError(self.path / _TABLE_FILE, f"another writer added {len(self) - known} cells "
                                "since these columns were computed; compute them again")
            table = self._cells.assign(**{name: list(values) for name, values in columns.items()})
            self._write_table(table, list(self._sizes))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the store's writer lock; first take in what other writers committed meanwhile."""
        with open(self.path / _LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the writer before us
            try:
                # tables only grow between writers: a row count that differs catches a commit
                # whose file stamp happens to equal ours (coarse mtime, a reused inode)
                stamp = _table_stamp(self.path / _TABLE_FILE)
                if stamp != self._stamp or _table_rows(self.path / _TABLE_FILE) != len(self._cells):
                    self._set_table(*_read_table(self.path / _TABLE_FILE))
                    self._chunks.clear()  # a partial chunk may have been rewritten
                    self._stamp = stamp
                self._pending.clear()  # what a failed write left uncommitted
                if self.meta["version"] != FORMAT_VERSION:  # this write may give chunks any size
                    body = {key: value for key, value in self.meta.items() if key not in HEADER_KEYS}
                    self.meta = write_header(self.path / _META_FILE, FORMAT_NAME, FORMAT_VERSION, body)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_rows(self, crops: np.ndarray) -> list[int]:
        """Write ``crops`` after the committed rows: into the last chunk up to ``chunk_size``
        rows, then new chunks. Returns the rows per chunk the table will then have."""
        sizes, written = list(self._sizes), 0
        while written < len(crops):
            if not sizes or sizes[-1] >= self.chunk_size:
                sizes.append(0)
            chunk_index, offset = len(sizes) - 1, sizes[-1]
            take = min(self.chunk_size - offset, len(crops) - written)
            part = crops[written : written + take]
            if offset:
                # Keep the committed rows of a partial chunk; rows past them are uncommitted leftovers.
                part = np.concatenate([self._chunk(chunk_index)[:offset], part])
            path = self._chunk_path(chunk_index)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(part))
                _fsync(tmp)
            self._chunks.pop(chunk_index, None)
            self._pending[chunk_index] = _rows_digest(part)
            sizes[-1] = len(part)
            written += take
        return sizes

    def _write_table(self, table: pd.DataFrame, sizes: list[int]) -> None:
        """Commit ``table``, whose rows the chunks of ``sizes`` rows hold, with the checksums of
        every chunk (those of a version-1 store that had none are computed now)."""
        import pyarrow as pa

        digests = {**self._digests, **self._pending}
        for index, rows in enumerate(sizes):
            if index not in digests:
                digests[index] = _rows_digest(self._chunk(index)[:rows])
        schema = pa.Schema.from_pandas(table, preserve_index=False)
        recorded = {_chunk_name(index): digests[index] for index in range(len(sizes))}
        schema = schema.with_metadata({**schema.metadata, _DIGESTS_KEY: json.dumps(recorded).encode()})
        with atomic_path(self.path / _TABLE_FILE) as tmp:
            table.to_parquet(tmp, index=False, schema=schema, write_page_checksum=True)
            _fsync(tmp)
        self._set_table(table, {index: digests[index] for index in range(len(sizes))})
        self._pending = {}
        self._stamp = _table_stamp(self.path / _TABLE_FILE)

    def _set_table(self, cells: pd.DataFrame, digests: dict[int, dict[str, Any]]) -> None:
        """Take ``cells`` and the chunk checksums as the committed state; derive the chunk layout."""
        self._cells, self._digests = cells, digests
        self._sizes = _chunk_sizes(digests, len(cells), self.chunk_size, self.path / _TABLE_FILE)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes, dtype=np.int64)])
