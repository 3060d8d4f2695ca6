"""The CellStore: single-cell crops on disk with one table row per cell.

A store is a directory::

    <store>/store.json                 header (format, version, library version; hpa_embed.io),
                                       crop size, channels, dtype, chunk size, scheme, attrs
    <store>/cells.parquet              one row per cell; column ``row`` indexes the crop array
    <store>/crops/chunk-000000.npy     uint8 [chunk_size, C, S, S] (the last chunk may hold fewer)
    <store>/crops/chunk-000001.npy     ...

Rows ``k * chunk_size ... (k + 1) * chunk_size - 1`` of the crop array live in chunk ``k``.
Chunks are plain ``.npy`` files read through ``np.load(mmap_mode="r")``: lazy, random access at
page-cache speed, no dependency beyond numpy, and readable by any tool that reads ``.npy``.

The table is the commit point. :meth:`CellStore.append` first writes every chunk it touches
(a partial last chunk is rewritten as old rows + new rows under the same name, atomically, so the
rows a reader already sees never change), and only then replaces ``cells.parquet`` atomically.
A crash at any point leaves the previous table, which references only rows that are on disk.

The table's parquet metadata (key ``hpa_embed.chunks``) holds, per chunk, the SHA-256 of its rows
when they were written (``{"chunk-000000.npy": {"rows": n, "sha256": ...}}``), and its pages carry
CRC checksums. A chunk is checked the first time a process maps it (one read of the chunk, which
readers of its crops mostly make anyway), so a changed crop raises
:class:`~hpa_embed.io.DataError` naming the chunk instead of reaching a model. Stores written
before the checksums are read without them.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import DataError, atomic_path, read_header, write_header
from .labels import CHANNELS, ClassScheme, get_scheme

__all__ = ["CellStore", "FORMAT_NAME", "FORMAT_VERSION", "LIST_COLUMNS"]

log = logging.getLogger(__name__)

FORMAT_NAME = "hpa_embed.cellstore"
FORMAT_VERSION = 1
#: Table columns holding lists of class ids (parquet list<int64>; Python lists in memory).
LIST_COLUMNS: tuple[str, ...] = ("image_labels", "true_labels")

_META_FILE = "store.json"
_TABLE_FILE = "cells.parquet"
_CHUNK_DIR = "crops"
_LOCK_FILE = "write.lock"
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
        self._cells = cells
        self._chunks: dict[int, np.ndarray] = {}
        # checksums of the chunks' rows: as committed with the table, and those written since
        self._digests: dict[int, dict[str, Any]] = dict(digests or {})
        self._pending: dict[int, dict[str, Any]] = {}
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
        meta = read_header(path / _META_FILE, FORMAT_NAME, {FORMAT_VERSION}, what="cell store")
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
        return int(self.meta["chunk_size"])

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
            if expected is not None and (len(chunk) < expected["rows"]
                                         or _rows_digest(chunk[:expected["rows"]]) != expected):
                raise DataError(path, "checksum mismatch: the crops are corrupt or were changed "
                                      f"after saving (checked {expected['rows']} rows)")
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
        chunk_of_row = rows // self.chunk_size
        order = np.argsort(chunk_of_row, kind="stable")
        chunks, starts = np.unique(chunk_of_row[order], return_index=True)
        for chunk_index, positions in zip(chunks, np.split(order, starts[1:])):
            local = rows[positions] - chunk_index * self.chunk_size
            out[positions] = self._chunk(int(chunk_index))[local]
        return out

    # ----------------------------------------------------------------------- writing

    def append(self, cells: pd.DataFrame, crops: np.ndarray) -> np.ndarray:
        """Add cells and their crops; returns the ``row`` values they were given, int64 ``[n]``.

        Parameters
        ----------
        cells : DataFrame
            One row per crop, with at least ``cell_id`` (unique, also against the store) and
            ``image_id``. A ``row`` column, if any, is replaced.
        crops : uint8 ``[n, C, S, S]``

        The chunks are written before the table that references them, each through
        :func:`~hpa_embed.io.atomic_path`, so an exception or a crash at any point leaves the
        store as it was before the call.
        """
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != self.crop_shape:
            raise ValueError(f"crops must be uint8 [n, {', '.join(map(str, self.crop_shape))}], "
                             f"got {crops.dtype} {crops.shape}")
        if len(cells) != len(crops):
            raise ValueError(f"{len(cells)} table rows but {len(crops)} crops")
        missing = {"cell_id", "image_id"} - set(cells.columns)
        if missing:
            raise ValueError(f"the cell table lacks column(s) {sorted(missing)}")
        if cells["cell_id"].duplicated().any():
            raise ValueError(f"duplicate cell_id in the new cells: "
                             f"{cells['cell_id'][cells['cell_id'].duplicated()].iloc[0]!r}")
        if len(cells) == 0:
            return np.empty(0, dtype=np.int64)
        with self._writing():
            clash = set(cells["cell_id"]) & set(self._cells["cell_id"])
            if clash:
                raise ValueError(f"{len(clash)} cell_id(s) already in the store, e.g. {sorted(clash)[0]!r}")
            start = len(self)
            rows = np.arange(start, start + len(cells), dtype=np.int64)
            self._write_rows(start, crops)
            new = cells.drop(columns=["row"], errors="ignore").assign(row=rows)
            table = new if start == 0 else pd.concat([self._cells, new], ignore_index=True)
            self._write_table(table)
        return rows

    def extend(self, stores: Sequence[CellStore]) -> None:
        """Add every cell of other stores without copying their full chunks.

        The full chunks of each store become chunks of this one through hard links (a copy
        where the file system has none; chunks are only ever replaced, never changed in place,
        so the stores stay independent). The rows of each store's last, partial chunk follow,
        copied. New rows: every store's full-chunk rows in the order given, then their
        partial-chunk rows; the table, committed once at the end, keeps the stores' columns.
        This store must end on a chunk boundary (an empty one does), and the others must have
        its crop shape, channels, chunk size and scheme.

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
        ids = pd.concat([_empty_table()["cell_id"], *(store.cells["cell_id"] for store in stores)],
                        ignore_index=True)
        if ids.duplicated().any():
            raise ValueError(f"the stores share cell_id {ids[ids.duplicated()].iloc[0]!r}")
        size = self.chunk_size
        with self._writing():
            if len(self) % size:
                raise ValueError(f"{self.path}: its {len(self)} rows do not end on a chunk boundary "
                                 f"({size} rows per chunk)")
            clash = set(ids) & set(self._cells["cell_id"])
            if clash:
                raise ValueError(f"{len(clash)} cell_id(s) already in the store, e.g. {sorted(clash)[0]!r}")
            chunk, full, tails = len(self) // size, [], []
            for store in stores:
                n_full = len(store) // size
                for index in range(n_full):
                    if len(store._chunk(index)) != size:  # _chunk checks the dtype and crop shape
                        raise DataError(store._chunk_path(index), f"a full chunk must hold {size} rows")
                    _link_or_copy(store._chunk_path(index), self._chunk_path(chunk))
                    if index in store._digests:  # the same file: the same checksum
                        self._pending[chunk] = store._digests[index]
                    chunk += 1
                full.append(store.cells.iloc[: n_full * size])
                tails.append((store, store.cells.iloc[n_full * size:]))
            position, pending = chunk * size, [np.empty((0, *self.crop_shape), dtype=np.uint8)]
            for store, tail in tails:  # copied a chunk at a time: memory stays at one chunk or two
                pending.append(store.get_crops(tail["row"].to_numpy()))
                block = np.concatenate(pending)
                ready = len(block) // size * size
                self._write_rows(position, block[:ready])
                position, pending = position + ready, [block[ready:]]
            self._write_rows(position, pending[0])
            new = pd.concat([*full, *(tail for _, tail in tails)], ignore_index=True)
            start = len(self)
            new = new.assign(row=np.arange(start, start + len(new), dtype=np.int64))
            self._write_table(new if start == 0 else pd.concat([self._cells, new], ignore_index=True))
        log.info("%s: %d cells added from %d store(s), %d of them in linked chunks", self.path, len(new),
                 len(stores), sum(map(len, full)))

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
            self._write_table(table)

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
                    self._cells, self._digests = _read_table(self.path / _TABLE_FILE)
                    self._chunks.clear()  # a partial chunk may have been rewritten
                    self._stamp = stamp
                self._pending.clear()  # what a failed write left uncommitted
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_rows(self, start: int, crops: np.ndarray) -> None:
        written = 0
        while written < len(crops):
            position = start + written
            chunk_index, offset = divmod(position, self.chunk_size)
            take = min(self.chunk_size - offset, len(crops) - written)
            part = crops[written : written + take]
            if offset:
                # Keep the committed rows of a partial chunk; rows past them are uncommitted leftovers.
                kept = self._chunk(chunk_index)
                if len(kept) < offset:
                    raise DataError(self._chunk_path(chunk_index),
                                    f"chunk holds {len(kept)} rows, the table expects {offset}")
                part = np.concatenate([kept[:offset], part])
            path = self._chunk_path(chunk_index)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(part))
                _fsync(tmp)
            self._chunks.pop(chunk_index, None)
            self._pending[chunk_index] = _rows_digest(part)
            written += take

    def _write_table(self, table: pd.DataFrame) -> None:
        """Commit ``table`` with the checksums of the chunks written since the last commit."""
        import pyarrow as pa

        digests = {**self._digests, **self._pending}
        schema = pa.Schema.from_pandas(table, preserve_index=False)
        recorded = {_chunk_name(index): digests[index] for index in sorted(digests)}
        schema = schema.with_metadata({**schema.metadata, _DIGESTS_KEY: json.dumps(recorded).encode()})
        with atomic_path(self.path / _TABLE_FILE) as tmp:
            table.to_parquet(tmp, index=False, schema=schema, write_page_checksum=True)
            _fsync(tmp)
        self._cells, self._digests = table, digests
        self._pending = {}
        self._stamp = _table_stamp(self.path / _TABLE_FILE)
