"""CellIndex: a FAISS index over cell embeddings, keyed by cell id.

Cells are identified by strings (``cell_id`` in a CellStore). Inside FAISS each cell is an int64
id: the cell's row in the index's id table, in the order cells were added, plus an ``id_offset``
that is 0 except on the shards of a distributed build. Search returns ``(scores, cell_ids)``; the
``rows`` variants return the int64 rows instead (what :class:`~hpa_embed.classify.KNNClassifier`
uses as indices into its training set).

Kinds (:class:`~hpa_embed.config.IndexConfig`):

- ``"flat"``: exact search (``IndexFlatIP`` / ``IndexFlatL2``). The row is the FAISS position, so
  no ``IndexIDMap`` is needed.
- ``"ivf"``: ``IndexIVFFlat``, trained on a random sample; ``nprobe`` of ``nlist`` cells are visited.
- ``"ivfpq"``: ``IndexIVFPQ``, vectors stored as ``pq_m`` bytes; scores are approximate.

With ``metric="cosine"`` every vector (indexed or query) is L2-normalised first, and the score
is the inner product, i.e. the cosine similarity (higher is closer). With ``metric="l2"`` the
score is the squared Euclidean distance (lower is closer). A neighbour that does not exist
(``k`` larger than the index, or an IVF probe that found too few vectors) has row -1, cell id
None and score -inf (cosine) or +inf (l2).

A saved index is a directory (:meth:`CellIndex.save`, :meth:`CellIndex.load`); its format is
:mod:`hpa_embed.index_format`. Beyond one machine, see :meth:`CellIndex.train_empty`,
:meth:`CellIndex.new_shard` and :func:`hpa_embed.index_shards.merge_shards` (and
``docs/index.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import IndexConfig
from .index_format import extract_ivf, faiss_metric, load_index_files, on_disk_invlists, save_index_files
from .io import HpaEmbedError

__all__ = [
    "CellIndex",
    "UnknownCellError",
    "index_embeddings",
    "neighbours_table",
    "resolve_kind",
    "resolve_nlist",
]

log = logging.getLogger(__name__)

#: Vectors per block when a whole array is added: bounds the normalised copy made for cosine.
BLOCK_SIZE = 65_536
# k-means wants at least this many training vectors per IVF cell (FAISS warns below 39).
_MIN_POINTS_PER_CELL = 39
_MAX_NLIST = 65_536


# --------------------------------------------------------------------------- configuration


def resolve_kind(config: IndexConfig, n_total: int | None) -> str:
    """The concrete kind (``"flat"``, ``"ivf"`` or ``"ivfpq"``) for an index of ``n_total`` vectors.

    ``"auto"`` needs ``n_total``: flat below ``config.flat_threshold``, IVF from there on.
    """
    if config.kind != "auto":
        return config.kind
    if n_total is None:
        raise ValueError('kind="auto" needs the number of vectors (n_total) to choose flat or IVF')
    return "flat" if n_total < config.flat_threshold else "ivf"


def resolve_nlist(config: IndexConfig, n_total: int, n_train: int) -> int:
    """IVF cell count: ``config.nlist``, or about ``4 sqrt(n_total)`` when None.

    Never more than one cell per 39 training vectors (k-means needs that many per centroid).
    """
    cap = max(1, n_train // _MIN_POINTS_PER_CELL)
    if config.nlist is not None:
        if config.nlist > n_train:
            raise ValueError(f"nlist={config.nlist} exceeds the {n_train} training vectors")
        if config.nlist > cap:
            log.warning("nlist=%d with %d training vectors: fewer than %d per cell",
                        config.nlist, n_train, _MIN_POINTS_PER_CELL)
        return config.nlist
    return int(min(max(1, round(4 * math.sqrt(max(n_total, 1)))), cap, _MAX_NLIST))


# --------------------------------------------------------------------------- helpers


def _missing_score(metric: str) -> float:
    return -np.inf if metric == "cosine" else np.inf


def _as_vectors(X: Any, dimension: int | None, metric: str, name: str = "X") -> np.ndarray:
    """float32 C-contiguous ``[n, D]``; a normalised copy for cosine (the caller's array is untouched)."""
    array = np.asarray(X)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, D], got shape {array.shape}")
    if dimension is not None and array.shape[1] != dimension:
        raise ValueError(f"{name} has {array.shape[1]} columns but the index holds {dimension}-D vectors")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if metric == "cosine":
        array = np.array(array, dtype=np.float32, order="C", copy=True)
        faiss.normalize_L2(array)
    else:
        array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _training_rows(n: int, config: IndexConfig) -> np.ndarray | None:
    """Sorted random rows (int64) of ``n`` vectors that train an IVF index; None: all ``n`` train."""
    if n <= config.train_sample:
        return None
    return np.sort(np.random.default_rng(config.seed).choice(n, config.train_sample, replace=False))


def _as_cell_ids(cell_ids: Any, n: int) -> np.ndarray:
    """Object array of ``n`` non-empty strings, unique among themselves."""
    ids = np.asarray(cell_ids, dtype=object).ravel()
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} cell ids for {n} vectors")
    if n and not all(isinstance(value, str) and value for value in ids):
        raise ValueError("cell ids must be non-empty strings")
    if duplicates(ids):
        raise ValueError(f"duplicate cell ids, e.g. {duplicates(ids)}")
    return ids


def duplicates(values: np.ndarray, limit: int = 5) -> list:
    """Up to ``limit`` values that occur more than once (empty when all are unique)."""
    index = pd.Index(values)
    return [] if index.is_unique else index[index.duplicated()][:limit].tolist()


def _new_faiss_index(kind: str, dimension: int, config: IndexConfig, nlist: int) -> faiss.Index:
    metric = faiss_metric(config.metric)
    if kind == "flat":
        return faiss.IndexFlat(dimension, metric)
    quantizer = faiss.IndexFlat(dimension, metric)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dimension, nlist, metric)
    else:
        if dimension % config.pq_m:
            raise ValueError(f"pq_m={config.pq_m} must divide the dimension {dimension}")
        index = faiss.IndexIVFPQ(quantizer, dimension, nlist, config.pq_m, config.pq_nbits, metric)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
    index.cp.seed = config.seed
    # Spherical k-means keeps centroids on the unit sphere, where cosine-normalised vectors live.
    index.cp.spherical = config.metric == "cosine"
    index.nprobe = min(config.nprobe, nlist)
    return index


# --------------------------------------------------------------------------- the index


class UnknownCellError(HpaEmbedError, KeyError):
    """A cell id that the index does not hold."""

    def __init__(self, cell_id: object, n_cells: int):
        super().__init__(cell_id)
        self.cell_id = cell_id
        self.n_cells = n_cells

    def __str__(self) -> str:
        return f"cell id {self.cell_id!r} is not among the {self.n_cells} cells of the index"


class CellIndex:
    """A FAISS index over cell embeddings, searched by vector or by cell id.

    Build with :meth:`build` (an array), :meth:`build_from_blocks` (an iterator of blocks),
    :meth:`train_empty` then :meth:`add`, or :meth:`load`. Not thread-safe for concurrent adds;
    concurrent searches are fine (FAISS parallelises each search over its queries with OpenMP,
    with FAISS's default thread count).

    Attributes
    ----------
    config : IndexConfig
        The configuration it was built with (``nprobe`` follows :attr:`nprobe`).
    kind : str
        ``"flat"``, ``"ivf"`` or ``"ivfpq"``.
    dimension : int
        Vector width D.
    id_offset : int
        FAISS id of row 0 (0 except for shards, see :meth:`new_shard`).
    """

    def __init__(self, index: faiss.Index, cell_ids: np.ndarray, config: IndexConfig, kind: str, *,
                 id_offset: int = 0, trained: bytes | None = None, read_only: bool = False):
        if index.ntotal != len(cell_ids):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but {len(cell_ids)} cell ids")
        self._index = index
        self._cell_ids = np.asarray(cell_ids, dtype=object)
        self.config = config
        self.kind = kind
        self.dimension = int(index.d)
        self.id_offset = int(id_offset)
        self._trained = trained
        self._read_only = read_only
        self._row_of: dict[str, int] | None = None  # built on first need: costly for millions of ids
        self._building = threading.Lock()  # threads may search at once; lazy structures are built once

    # ----------------------------------------------------------------------- construction

    @classmethod
    def train_empty(cls, sample: np.ndarray, config: IndexConfig | None = None, *,
                    n_total: int | None = None) -> CellIndex:
        """An empty index, trained on ``sample`` when its kind needs training.

        Parameters
        ----------
        sample : numpy.ndarray
            float ``[m, D]``: the training vectors for IVF kinds (a random sample of the data;
            at most ``config.train_sample`` rows of it are used); only its width matters for flat.
        config : IndexConfig, optional
            Default ``IndexConfig()``.
        n_total : int, optional
            How many vectors the index will hold: picks the kind for ``kind="auto"`` and the
            default ``nlist``. Default ``len(sample)``.
        """
        config = config or IndexConfig()
        sample = np.asarray(sample)
        n_total = len(sample) if n_total is None else int(n_total)
        kind = resolve_kind(config, n_total)
        if sample.ndim != 2 or sample.shape[1] < 1:
            raise ValueError(f"sample must be a 2-D array [m, D], got shape {sample.shape}")
        dimension = sample.shape[1]
        if kind == "flat":
            return cls(_new_faiss_index(kind, dimension, config, 1), np.empty(0, dtype=object), config, kind)
        picked = _training_rows(len(sample), config)
        if picked is not None:
            sample = sample[picked]
        train = _as_vectors(sample, dimension, config.metric, "sample")
        nlist = resolve_nlist(config, n_total, len(train))
        if kind == "ivfpq" and len(train) < 2**config.pq_nbits:
            raise ValueError(f"IVFPQ with {config.pq_nbits}-bit codes needs at least {2**config.pq_nbits} "
                             f"training vectors, got {len(train)}")
        index = _new_faiss_index(kind, dimension, config, nlist)
        log.info("training %s index (nlist=%d, metric=%s) on %d vectors", kind, nlist, config.metric,
                 len(train))
        index.train(train)
        trained = faiss.serialize_index(index).tobytes()
        return cls(index, np.empty(0, dtype=object), config, kind, trained=trained)

    @classmethod
    def build(cls, X: np.ndarray, cell_ids: Sequence[str], config: IndexConfig | None = None, *,
              rows: np.ndarray | None = None, progress: bool = True) -> CellIndex:
        """Index ``X`` (float ``[N, D]``) under ``cell_ids`` (``N`` unique strings).

        IVF kinds train on a random sample of ``config.train_sample`` rows of ``X``. ``X`` is read
        block by block (and L2-normalised per block for cosine), so it is never copied whole: a
        memory-mapped array stays on disk. ``rows`` (int ``[n]``): index only these rows of ``X``,
        in this order (e.g. the labelled ones); ``cell_ids`` then names these ``n`` rows.
        """
        config = config or IndexConfig()
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D array [N, D], got shape {X.shape}")
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64).ravel()
        n = len(X) if rows is None else len(rows)
        cell_ids = _as_cell_ids(cell_ids, n)
        sample = X
        if rows is not None and resolve_kind(config, n) != "flat":  # the sample comes from the rows
            picked = _training_rows(n, config)
            sample = X[rows if picked is None else rows[picked]]
        index = cls.train_empty(sample, config, n_total=n)

        def block(start: int) -> np.ndarray:
            return X[start:start + BLOCK_SIZE] if rows is None else X[rows[start:start + BLOCK_SIZE]]

        index.add_blocks(((block(start), cell_ids[start:start + BLOCK_SIZE])
                          for start in range(0, n, BLOCK_SIZE)), total=n, progress=progress)
        return index

    @classmethod
    def build_from_blocks(cls, blocks: Iterable[tuple[np.ndarray, Sequence[str]]],
                          config: IndexConfig | None = None, *, n_total: int | None = None,
                          train_X: np.ndarray | None = None, progress: bool = True) -> CellIndex:
        """Index a database passed as an iterator of ``(X_block, cell_ids_block)``.

        Parameters
        ----------
        blocks : iterable of (numpy.ndarray, sequence of str)
            float ``[n_i, D]`` vectors and their ``n_i`` cell ids, block by block (e.g. slices of a
            memory-mapped ``embeddings.npy``), so the whole database is never in memory twice.
        config : IndexConfig, optional
        n_total : int, optional
            Total vector count: needed by ``kind="auto"``, sets the default ``nlist`` and the
            progress bar.
        train_X : numpy.ndarray, optional
            IVF training sample, float ``[m, D]``; best a random sample of the whole database.
            Default: the first block (logged, since the first block may not be representative).
        """
        config = config or IndexConfig()
        iterator = iter(blocks)
        first = next(iterator, None)
        if first is None:
            raise ValueError("no blocks to index")
        if train_X is None:
            if resolve_kind(config, n_total) != "flat":
                log.warning("training the IVF index on the first block only (%d vectors); pass train_X, "
                            "a random sample of the database, for a representative quantiser", len(first[0]))
            train_X = np.asarray(first[0])
        index = cls.train_empty(train_X, config, n_total=n_total if n_total is not None else len(first[0]))

        def chained():
            yield first
            yield from iterator

        index.add_blocks(chained(), total=n_total, progress=progress)
        return index

    def new_shard(self, id_offset: int) -> CellIndex:
        """An empty copy of this trained, empty IVF index whose FAISS ids start at ``id_offset``.

        Each machine of a distributed build adds its block of cells to its own shard; give each
        shard the position of its first cell in the whole database (the shards' cells must be
        contiguous and in order, so that :func:`~hpa_embed.index_shards.merge_shards` can give the
        merged index ids 0..N-1 without rewriting them).
        """
        if self.kind == "flat" or self._trained is None:
            raise ValueError("shards need a trained IVF index (kind 'ivf' or 'ivfpq'); see train_empty")
        if len(self):
            raise ValueError(f"new_shard needs an empty trained index; this one holds {len(self)} cells")
        if not isinstance(id_offset, (int, np.integer)) or id_offset < 0:
            raise ValueError(f"id_offset={id_offset!r} must be a non-negative integer")
        index = faiss.deserialize_index(np.frombuffer(self._trained, dtype=np.uint8))
        extract_ivf(index).nprobe = min(self.config.nprobe, extract_ivf(index).nlist)
        return CellIndex(index, np.empty(0, dtype=object), self.config, self.kind, id_offset=int(id_offset),
                         trained=self._trained)

    # ----------------------------------------------------------------------- adding

    def add(self, X: np.ndarray, cell_ids: Sequence[str]) -> None:
        """Add vectors (float ``[n, D]``) under new, unique cell ids (``n`` strings).

        Raises ``ValueError`` for an id already in the index or repeated in ``cell_ids``, and
        for a read-only (merged, on-disk) index.
        """
        if self._read_only:
            raise ValueError("this index is read-only (on-disk inverted lists from merge_shards); build new "
                             "shards and merge them again to add cells")
        vectors = _as_vectors(X, self.dimension, self.config.metric)
        cell_ids = _as_cell_ids(cell_ids, len(vectors))
        row_of = self._row_lookup()
        already = [cell_id for cell_id in cell_ids if cell_id in row_of]
        if already:
            raise ValueError(f"{len(already)} cell ids already in the index, e.g. {already[:5]}")
        start = len(self)
        if self.id_offset:
            ids = np.arange(start, start + len(vectors), dtype=np.int64) + self.id_offset
            self._index.add_with_ids(vectors, ids)
        else:
            self._index.add(vectors)  # FAISS numbers them ntotal, ntotal + 1, ...: our rows
        self._cell_ids = np.concatenate([self._cell_ids, cell_ids])
        row_of.update(zip(cell_ids.tolist(), range(start, start + len(cell_ids))))

    def add_blocks(self, blocks: Iterable[tuple[np.ndarray, Sequence[str]]], *, total: int | None = None,
                   progress: bool = True) -> None:
        """:meth:`add` each ``(X_block, cell_ids_block)`` of an iterator, with a progress bar.

        ``total`` (vectors) only sizes the progress bar.
        """
        with tqdm(total=total, unit="vec", desc="indexing", disable=not progress) as bar:
            for X, cell_ids in blocks:
                self.add(X, cell_ids)
                bar.update(len(X))

    # ----------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __contains__(self, cell_id: object) -> bool:
        return cell_id in self._row_lookup()

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind != "flat" else ""
        return (f"CellIndex(kind={self.kind!r}, metric={self.metric!r}, n={len(self)}, "
                f"dimension={self.dimension}{extra})")

    @property
    def metric(self) -> str:
        """``"cosine"`` (scores are similarities) or ``"l2"`` (squared distances)."""
        return self.config.metric

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (its ids are ``id_offset + row``)."""
        return self._index

    @property
    def cell_ids(self) -> np.ndarray:
        """Cell id of every row, object ``[N]`` (read-only view)."""
        view = self._cell_ids.view()
        view.flags.writeable = False
        return view

    @property
    def nlist(self) -> int | None:
        """IVF cell count (None for flat)."""
        ivf = extract_ivf(self._index)
        return None if ivf is None else int(ivf.nlist)

    @property
    def nprobe(self) -> int | None:
        """IVF cells visited per query (None for flat); settable."""
        ivf = extract_ivf(self._index)
        return None if ivf is None else int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = extract_ivf(self._index)
        if ivf is None:
            raise ValueError("a flat index has no nprobe")
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"nprobe={value!r} must be a positive integer")
        ivf.nprobe = int(min(value, ivf.nlist))
        self.config = dataclasses.replace(self.config, nprobe=int(value))

    @property
    def trained_bytes(self) -> bytes | None:
        """The trained, empty FAISS index, serialised (IVF kinds; shards share it), else None."""
        return self._trained

    @property
    def is_on_disk(self) -> bool:
        """Whether the inverted lists live in an ``index.ivfdata`` file (merged shards)."""
        return on_disk_invlists(self._index) is not None

    def _row_lookup(self) -> dict[str, int]:
        with self._building:
            if self._row_of is None:
                self._row_of = {cell_id: row for row, cell_id in enumerate(self._cell_ids.tolist())}
        return self._row_of

    def rows_of(self, cell_ids: str | Sequence[str]) -> np.ndarray:
        """Rows (int64) of cell ids, a scalar for one id; :class:`UnknownCellError` (a
        ``KeyError``) naming an unknown id."""
        row_of = self._row_lookup()
        single = isinstance(cell_ids, str)
        try:
            rows = np.array([row_of[cell_id] for cell_id in ([cell_ids] if single else cell_ids)],
                            dtype=np.int64)
        except KeyError as error:
            raise UnknownCellError(error.args[0], len(self)) from None
        return rows[0] if single else rows

    # ----------------------------------------------------------------------- search

    def search_rows(self, X: np.ndarray, k: int, *,
                    exclude_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest cells of each query, as rows of the index.

        Parameters
        ----------
        X : numpy.ndarray
            Queries, float ``[n, D]`` (normalised here for cosine).
        k : int
            Neighbours per query.
        exclude_rows : numpy.ndarray, optional
            int ``[n]``: a row to leave out of each query's results (the query's own cell). One
            extra neighbour is searched; where the excluded row is not among the results (an
            approximate index, or ties), the last one is dropped instead.

        Returns
        -------
        scores : numpy.ndarray
            float32 ``[n, k]``, best first: cosine similarities (descending) or squared L2
            distances (ascending); -inf / +inf where a neighbour is missing.
        rows : numpy.ndarray
            int64 ``[n, k]``: rows of the index (insertion order), -1 where missing.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} must be a positive integer")
        queries = _as_vectors(X, self.dimension, self.config.metric)
        extra = 0 if exclude_rows is None else 1
        if exclude_rows is not None:
            exclude_rows = np.asarray(exclude_rows, dtype=np.int64).ravel()
            if len(exclude_rows) != len(queries):
                raise ValueError(f"exclude_rows has {len(exclude_rows)} entries for {len(queries)} queries")
        if len(self):
            scores, ids = self._index.search(queries, int(k) + extra)
        else:  # FAISS refuses to search an empty flat index
            scores = np.empty((len(queries), int(k) + extra), dtype=np.float32)
            ids = np.full(scores.shape, -1, dtype=np.int64)
        missing = ids < 0
        rows = np.where(missing, -1, ids - self.id_offset)
        scores[missing] = _missing_score(self.config.metric)
        if exclude_rows is not None:
            keep = rows != exclude_rows[:, None]
            keep[keep.all(axis=1), -1] = False  # one column goes from every row
            rows = rows[keep].reshape(len(queries), int(k))
            scores = scores[keep].reshape(len(queries), int(k))
        return scores, rows

    def search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest cells of each query.

        Returns
        -------
        scores : numpy.ndarray
            float32 ``[n, k]`` as in :meth:`search_rows`.
        cell_ids : numpy.ndarray
            object ``[n, k]`` of cell id strings, None where a neighbour is missing.
        """
        scores, rows = self.search_rows(X, k)
        return scores, self._ids_of_rows(rows)

    def search_cell(self, cell_id: str | Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest other cells of an indexed cell (or of each of several).

        The query vector is the cell's own stored vector (:meth:`reconstruct`); the cell itself is
        left out of its results.

        Returns
        -------
        scores, cell_ids : numpy.ndarray
            ``[k]`` for one cell id, ``[n, k]`` for a sequence, as in :meth:`search`.
        """
        single = isinstance(cell_id, str)
        rows = np.atleast_1d(self.rows_of(cell_id))
        scores, neighbours = self.search_rows(self._reconstruct_rows(rows), k, exclude_rows=rows)
        cell_ids = self._ids_of_rows(neighbours)
        return (scores[0], cell_ids[0]) if single else (scores, cell_ids)

    def reconstruct(self, cell_id: str | Sequence[str]) -> np.ndarray:
        """Stored vector(s) of cell id(s): float32 ``[D]`` or ``[n, D]``.

        Normalised for cosine; approximate (decoded PQ codes) for ``"ivfpq"``. For IVF kinds the
        first call builds FAISS's id -> list position map (8 bytes per vector).
        """
        single = isinstance(cell_id, str)
        vectors = self._reconstruct_rows(np.atleast_1d(self.rows_of(cell_id)))
        return vectors[0] if single else vectors

    def _reconstruct_rows(self, rows: np.ndarray) -> np.ndarray:
        ivf = extract_ivf(self._index)
        with self._building:
            if ivf is not None and ivf.direct_map.no():
                if self.id_offset:  # FAISS's array map needs ids 0..N-1
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                else:
                    ivf.make_direct_map()
        ids = np.ascontiguousarray(rows, dtype=np.int64) + self.id_offset
        return self._index.reconstruct_batch(ids)

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        cell_ids = self._cell_ids[np.where(rows < 0, 0, rows)] if len(self) else np.full(rows.shape, None)
        cell_ids = np.asarray(cell_ids, dtype=object).reshape(rows.shape)
        cell_ids[rows < 0] = None
        return cell_ids

    # ----------------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory (:mod:`hpa_embed.index_format`) atomically; returns its path.

        An existing CellIndex directory at ``path`` is replaced; any other existing path is refused.
        """
        path = save_index_files(path, self._index, self.cell_ids, self.config, self.kind,
                                id_offset=self.id_offset, trained=self._trained)
        log.info("saved %r to %s", self, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CellIndex:
        """Read an index directory written by :meth:`save` or
        :func:`~hpa_embed.index_shards.merge_shards`.

        Raises :class:`~hpa_embed.io.DataError` naming the file for a missing, corrupt (checksum)
        or inconsistent file.
        """
        files = load_index_files(path)
        return cls(files.faiss_index, files.cell_ids, files.config, files.kind, id_offset=files.id_offset,
                   trained=files.trained, read_only=files.on_disk)


def neighbours_table(queries: Sequence[str], scores: np.ndarray, cell_ids: np.ndarray) -> pd.DataFrame:
    """Search results in long form, one row per found neighbour (missing ones are dropped).

    Parameters
    ----------
    queries : sequence of str
        A name per query (its cell id, or its row in a query file).
    scores, cell_ids : numpy.ndarray
        ``[n, k]`` from :meth:`CellIndex.search` or :meth:`CellIndex.search_cell`.

    Returns
    -------
    pandas.DataFrame
        Columns ``query``, ``rank`` (1 = nearest), ``cell_id``, ``score``.
    """
    scores, cell_ids = np.atleast_2d(scores), np.atleast_2d(cell_ids)
    n, k = cell_ids.shape
    if len(queries) != n:
        raise ValueError(f"{len(queries)} query names for {n} result rows")
    table = pd.DataFrame({
        "query": np.repeat(np.asarray(queries, dtype=object), k),
        "rank": np.tile(np.arange(1, k + 1), n),
        "cell_id": cell_ids.ravel(),
        "score": scores.ravel(),
    })
    return table[table["cell_id"].notna()].reset_index(drop=True)


def index_embeddings(embeddings: str | os.PathLike, out: str | os.PathLike, config: IndexConfig | None = None,
                     *, block_size: int = BLOCK_SIZE, progress: bool = True) -> CellIndex:
    """Index an embeddings directory (``hpa_embed.embed``) under its cells' ids and save it to ``out``.

    The embeddings are memory-mapped and added block by block; IVF kinds train on a random
    sample of ``config.train_sample`` rows.
    """
    from .embed import read_embeddings

    config = config or IndexConfig()
    embedded = read_embeddings(embeddings, mmap=True, columns=["cell_id"])
    # only the ids are read from the table; astype(str) keeps the table's string objects
    X, cell_ids = embedded.X, embedded.cells["cell_id"].astype(str).to_numpy(dtype=object)
    blocks = ((X[start:start + block_size], cell_ids[start:start + block_size])
              for start in range(0, len(X), block_size))
    # train_empty draws its random training sample from the memory-mapped array
    index = CellIndex.build_from_blocks(blocks, config, n_total=len(X), train_X=X, progress=progress)
    index.save(out)
    return index
