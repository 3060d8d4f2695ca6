"""UMAP maps of cell embeddings, with the nearest-neighbour graph taken from FAISS.

:class:`UMAPProjector` is umap-learn's ``UMAP`` behind the scikit-learn estimator contract, with
three changes that matter at HPA scale:

- the kNN graph comes from a :class:`~hpa_embed.index.CellIndex` (the one the kNN classifier and
  the retrieval metrics use, or one built here) and is handed to ``UMAP(precomputed_knn=...)``, so
  pynndescent never runs;
- with ``sample_size``, UMAP is fitted on a random sample and every other cell is placed from its
  neighbours among the sample (:meth:`UMAPProjector.transform`);
- new cells are placed the same way, without refitting and without pickles: :meth:`save` writes
  the reference index, the reference coordinates and the parameters, which is all
  :meth:`transform` needs.

Placement of a new point: its ``n_neighbors`` nearest reference points (FAISS), weighted by
UMAP's own membership strengths (``umap.umap_.smooth_knn_dist``, with ``local_connectivity``
lowered by one as umap-learn's ``transform`` does), and the weighted mean of their 2-D
coordinates. This is umap-learn's initial placement for ``transform``; its further optimisation
epochs are left out, so that placing is one search and one weighted mean.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted
from tqdm.auto import tqdm

from ..config import IndexConfig
from ..index import BLOCK_SIZE, CellIndex
from ..io import DataError, atomic_path, read_header, write_header

__all__ = ["UMAPProjector", "knn_graph"]

log = logging.getLogger(__name__)

FORMAT_NAME = "hpa_embed.umapprojector"
FORMAT_VERSION = 1
META_FILE = "projector.json"
EMBEDDING_FILE = "reference_embedding.npy"
ROWS_FILE = "reference_rows.npy"
INDEX_DIR = "index"

#: UMAP metric -> CellIndex metric. Other UMAP metrics have no FAISS index here.
_INDEX_METRIC = {"cosine": "cosine", "euclidean": "l2"}
# umap-learn's warnings for a precomputed kNN without a pynndescent index (transform is ours) and
# for a seed forcing one thread (the documented price of reproducibility): expected, not news.
_EXPECTED_WARNINGS = (r"precomputed_knn\[2\]", r"n_jobs value .* overridden to 1 by setting random_state")


def _row_ids(n: int) -> np.ndarray:
    """Cell ids ``"0"`` ... ``"n-1"`` for an index whose rows are an array's rows."""
    return np.arange(n).astype(str).astype(object)


def _distances(scores: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """CellIndex scores -> umap-learn distances, float32: ``1 - cos`` in [0, 2] or Euclidean; inf
    where a neighbour is missing."""
    if metric == "cosine":
        distances = np.clip(1.0 - scores, 0.0, 2.0)
    else:
        distances = np.sqrt(np.maximum(scores, 0.0))
    distances[rows < 0] = np.inf
    return distances.astype(np.float32, copy=False)


def knn_graph(index: CellIndex, X: np.ndarray, n_neighbors: int, *,
              progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of the indexed points, in umap-learn's ``precomputed_knn`` form.

    Parameters
    ----------
    index : CellIndex
        Holds ``X``: row ``i`` of the index is row ``i`` of ``X``.
    X : numpy.ndarray
        float ``[N, D]``, the indexed vectors (the queries).
    n_neighbors : int
        Neighbours per point, the point itself included.
    progress : bool
        Show a progress bar over blocks of queries.

    Returns
    -------
    knn_indices : numpy.ndarray
        int64 ``[N, n_neighbors]``: column 0 is the point itself (umap-learn's contract, also for
        duplicated vectors), then its ``n_neighbors - 1`` nearest other points, nearest first;
        -1 where an approximate index found too few.
    knn_dists : numpy.ndarray
        float32 ``[N, n_neighbors]``: 0 for the point itself, then umap-learn's distance for the
        index metric (cosine distance ``1 - similarity``, or Euclidean distance, not its square);
        inf where missing.
    """
    if len(index) != len(X):
        raise ValueError(f"the index holds {len(index)} cells but X has {len(X)} rows; "
                         "its rows must be X's rows")
    n = len(X)
    knn_indices = np.empty((n, n_neighbors), dtype=np.int64)
    knn_dists = np.empty((n, n_neighbors), dtype=np.float32)
    knn_indices[:, 0] = np.arange(n)
    knn_dists[:, 0] = 0.0
    starts = range(0, n, BLOCK_SIZE)
    for start in tqdm(starts, desc="kNN graph", unit="block", disable=not progress or len(starts) < 2):
        stop = min(start + BLOCK_SIZE, n)
        # search k and leave the point itself out (or the last neighbour, where it was not found)
        scores, rows = index.search_rows(X[start:stop], n_neighbors - 1, exclude_rows=np.arange(start, stop))
        knn_indices[start:stop, 1:] = rows
        knn_dists[start:stop, 1:] = _distances(scores, rows, index.metric)
    return knn_indices, knn_dists


class UMAPProjector(BaseEstimator):
    """A 2-D UMAP map of cell embeddings, its kNN graph from FAISS; places new cells without refitting.

    A scikit-learn estimator (``get_params``, ``fit`` returning self, fitted attributes ending in
    ``_``, ``NotFittedError`` before ``fit``). The UMAP parameters mean what they mean in
    ``umap.UMAP``, and default to its defaults; only the kNN source differs.

    Parameters
    ----------
    n_neighbors : int
        UMAP's neighbourhood size (the kNN graph's k, the point itself included, as in
        umap-learn); also the neighbours that place a point in :meth:`transform`.
    min_dist : float
        UMAP's minimum distance between points on the map.
    metric : {"cosine", "euclidean"}
        Distance between embeddings; cosine uses a cosine :class:`~hpa_embed.index.CellIndex`,
        euclidean an ``"l2"`` one.
    n_epochs : int or None
        UMAP's layout epochs; None: umap-learn's default (500 up to 10,000 fitted points, 200
        above).
    sample_size : int or None
        Fit UMAP on a random sample of this many rows and place the others with :meth:`transform`;
        None (or at least ``N``): fit on all rows.
    random_state : int or None
        Seed of the sample and of UMAP. An int makes the map reproducible; umap-learn then runs
        its layout on one thread. None: multithreaded, not reproducible.
    index_config : IndexConfig, optional
        How :meth:`fit` indexes the points when it is not handed an index; default
        ``IndexConfig(metric=...)`` (exact search below ``flat_threshold`` points, IVF above).
        Its metric must be the one ``metric`` needs.

    Attributes
    ----------
    embedding_ : numpy.ndarray
        float32 ``[N, 2]``: the map of ``fit``'s ``X`` (fitted sample rows and placed rows alike).
    reference_embedding_ : numpy.ndarray
        float32 ``[M, 2]``: the coordinates of the points UMAP was fitted on (``M = N`` without
        sampling), aligned with the rows of ``index_``.
    reference_rows_ : numpy.ndarray
        int64 ``[M]``: the rows of ``fit``'s ``X`` UMAP was fitted on.
    index_ : CellIndex
        The fitted points (row ``j`` = ``reference_embedding_[j]``): :meth:`transform` searches it.
    n_epochs_ : int
        Layout epochs UMAP ran.
    n_features_in_ : int
        Embedding width D.

    Examples
    --------
    >>> projector = UMAPProjector(random_state=0).fit(X, index=cell_index)  # doctest: +SKIP
    >>> projector.embedding_.shape                                          # doctest: +SKIP
    (N, 2)
    >>> projector.transform(new_X)                                          # doctest: +SKIP
    """

    def __init__(
        self,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "cosine",
        n_epochs: int | None = None,
        sample_size: int | None = None,
        random_state: int | None = 0,
        index_config: IndexConfig | None = None,
    ):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_epochs = n_epochs
        self.sample_size = sample_size
        self.random_state = random_state
        self.index_config = index_config

    # ----------------------------------------------------------------------- parameters

    def _index_config(self) -> IndexConfig:
        if self.metric not in _INDEX_METRIC:
            raise ValueError(f"metric={self.metric!r}: expected one of {sorted(_INDEX_METRIC)} "
                             "(the metrics a CellIndex searches)")
        wanted = _INDEX_METRIC[self.metric]
        if self.index_config is None:
            return IndexConfig(metric=wanted)
        if self.index_config.metric != wanted:
            raise ValueError(f"index_config.metric={self.index_config.metric!r} but metric={self.metric!r} "
                             f"needs {wanted!r}")
        return self.index_config

    def _check_params(self) -> None:
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 2:
            raise ValueError(f"n_neighbors={self.n_neighbors!r} must be an integer >= 2")
        if self.sample_size is not None and (not isinstance(self.sample_size, (int, np.integer))
                                             or self.sample_size <= self.n_neighbors):
            raise ValueError(f"sample_size={self.sample_size!r} must be None or an integer > n_neighbors")

    def umap_params(self) -> dict:
        """The keyword arguments that give plain ``umap.UMAP`` the parameters of this projector
        (what a fair comparison runs: the kNN graph is then the only difference)."""
        return {
            "n_neighbors": int(self.n_neighbors), "min_dist": float(self.min_dist), "metric": self.metric,
            "n_epochs": None if self.n_epochs is None else int(self.n_epochs),
            "random_state": self.random_state,
        }

    # ----------------------------------------------------------------------- fitting

    def fit(self, X: np.ndarray, y=None, *, index: CellIndex | None = None) -> UMAPProjector:
        """Map ``X``.

        Parameters
        ----------
        X : numpy.ndarray
            Embeddings, float ``[N, D]`` (converted to float32).
        y : None
            Ignored (scikit-learn's signature).
        index : CellIndex, optional
            An index whose row ``i`` is row ``i`` of ``X`` (e.g. the run's cell index): its kNN
            graph is the map's, and it is kept for :meth:`transform`. Default: ``X`` is indexed
            with ``index_config``. With ``sample_size`` < N, the sample gets an index of its own
            (its neighbours must be sample points) and ``index`` is not used.

        Returns
        -------
        self
        """
        import umap

        self._check_params()
        config = self._index_config()
        X = check_array(X, dtype=np.float32, order="C")
        n = len(X)
        if n <= self.n_neighbors:
            raise ValueError(f"X has {n} rows; UMAP needs more than n_neighbors={self.n_neighbors}")
        rng = np.random.default_rng(self.random_state)
        sampled = self.sample_size is not None and self.sample_size < n
        if sampled:
            rows = np.sort(rng.choice(n, int(self.sample_size), replace=False))
            if index is not None:
                log.info("sample_size=%d < %d rows: the sample gets its own index; the given one is "
                         "not used", self.sample_size, n)
            reference = X[rows]
            ref_index = CellIndex.build(reference, _row_ids(len(rows)), config, progress=False)
        else:
            rows = np.arange(n, dtype=np.int64)
            reference = X
            ref_index = self._check_index(index, X) if index is not None else CellIndex.build(
                X, _row_ids(n), config, progress=False)

        log.info("kNN graph of %d points (k=%d) from %r", len(reference), self.n_neighbors, ref_index)
        knn_indices, knn_dists = knn_graph(ref_index, reference, int(self.n_neighbors), progress=True)
        model = umap.UMAP(**self.umap_params(), precomputed_knn=(knn_indices, knn_dists))
        with warnings.catch_warnings():
            for message in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            reference_embedding = model.fit_transform(reference).astype(np.float32)

        self.index_ = ref_index
        self.reference_embedding_ = reference_embedding
        self.reference_rows_ = rows
        self.n_epochs_ = int(model.n_epochs if model.n_epochs is not None else
                             (500 if len(reference) <= 10_000 else 200))
        self.n_features_in_ = int(X.shape[1])
        if sampled:
            embedding = np.empty((n, 2), dtype=np.float32)
            embedding[rows] = reference_embedding
            rest = np.ones(n, dtype=bool)
            rest[rows] = False
            rest = np.flatnonzero(rest)
            log.info("placing the %d rows outside the sample", len(rest))
            embedding[rest] = self._place(X, rest)
            self.embedding_ = embedding
        else:
            self.embedding_ = reference_embedding
        return self

    def _check_index(self, index: CellIndex, X: np.ndarray) -> CellIndex:
        if not isinstance(index, CellIndex):
            raise TypeError(f"index must be a CellIndex, got {type(index).__name__}")
        if len(index) != len(X) or index.dimension != X.shape[1]:
            raise ValueError(f"the index holds {len(index)} cells of dimension {index.dimension}, "
                             f"X is {X.shape}: its rows must be X's rows")
        wanted = _INDEX_METRIC[self.metric]
        if index.metric != wanted:
            raise ValueError(f"the index's metric is {index.metric!r}; "
                             f"metric={self.metric!r} needs {wanted!r}")
        if index.kind == "flat":  # a cheap check that the rows line up
            probe = np.unique(np.linspace(0, len(X) - 1, 5).astype(np.int64))
            stored = index.faiss_index.reconstruct_batch(probe + index.id_offset)
            expected = X[probe] / np.linalg.norm(X[probe], axis=1, keepdims=True) if wanted == "cosine" \
                else X[probe]
            if not np.allclose(stored, expected, atol=1e-4):
                raise ValueError("the index's vectors differ from X's rows: its rows must be X's rows")
        return index

    def fit_transform(self, X: np.ndarray, y=None, *, index: CellIndex | None = None) -> np.ndarray:
        """:meth:`fit`, then return ``embedding_`` (float32 ``[N, 2]``)."""
        return self.fit(X, y, index=index).embedding_

    # ----------------------------------------------------------------------- placing

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Place new points on the fitted map, float32 ``[n, 2]``, without refitting.

        Each point goes to the weighted mean of the map coordinates of its ``n_neighbors`` nearest
        fitted points (FAISS search of ``index_``), weighted by UMAP's membership strengths.
        A fitted point lands near, not exactly on, its own coordinates.
        """
        check_is_fitted(self, "embedding_")
        X = check_array(X, dtype=np.float32, order="C")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the projector was fitted on "
                             f"{self.n_features_in_}")
        return self._place(X)

    def _place(self, X: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
        """Coordinates float32 ``[n, 2]`` of the rows of ``X`` (or of its rows ``subset``, int
        ``[n]``), read and placed block by block."""
        from umap.umap_ import smooth_knn_dist

        k = int(min(self.n_neighbors, len(self.index_)))
        n = len(X) if subset is None else len(subset)
        out = np.empty((n, 2), dtype=np.float32)
        starts = range(0, n, BLOCK_SIZE)
        for start in tqdm(starts, desc="placing", unit="block", disable=len(starts) < 4):
            block = X[start:start + BLOCK_SIZE] if subset is None else X[subset[start:start + BLOCK_SIZE]]
            scores, rows = self.index_.search_rows(block, k)
            distances = _distances(scores, rows, self.index_.metric)
            if (rows < 0).all(axis=1).any():
                raise RuntimeError("the index found no neighbour for some points; raise its nprobe")
            # umap-learn's transform: local_connectivity - 1 = 0, i.e. no neighbour is fully trusted
            sigmas, rhos = smooth_knn_dist(np.where(rows < 0, np.float32(1e30), distances), float(k),
                                           local_connectivity=0.0)
            weights = np.exp(-np.maximum(distances - rhos[:, None], 0) / sigmas[:, None])
            weights[rows < 0] = 0.0
            weights /= weights.sum(axis=1, keepdims=True)
            coordinates = self.reference_embedding_[np.where(rows < 0, 0, rows)]
            out[start:start + BLOCK_SIZE] = np.einsum("nk,nkc->nc", weights, coordinates)
        return out

    # ----------------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike) -> Path:
        """Write what :meth:`transform` needs to a directory, atomically; returns its path.

        ``<path>/projector.json`` (header, parameters, index config), ``reference_embedding.npy``
        (float32 ``[M, 2]``), ``reference_rows.npy`` (int64 ``[M]``) and ``index/`` (the reference
        :class:`~hpa_embed.index.CellIndex`, its own format). No pickle. ``embedding_`` of the
        fitting set is not saved (it is an output: keep it with the cells, e.g. ``obsm["X_umap"]``).
        An existing projector directory is replaced; any other existing path is refused.
        """
        check_is_fitted(self, "embedding_")
        path = Path(path)
        if path.exists() and not (path / META_FILE).is_file():
            raise FileExistsError(f"{path} exists and is not a saved UMAPProjector; refusing to replace it")
        params = self.get_params()
        params["index_config"] = None if self.index_config is None else self.index_config.to_dict()
        with atomic_path(path) as tmp:
            tmp.mkdir()
            np.save(tmp / EMBEDDING_FILE, self.reference_embedding_, allow_pickle=False)
            np.save(tmp / ROWS_FILE, self.reference_rows_, allow_pickle=False)
            self.index_.save(tmp / INDEX_DIR)
            write_header(tmp / META_FILE, FORMAT_NAME, FORMAT_VERSION,
                         {"params": params, "n_epochs": self.n_epochs_, "n_features": self.n_features_in_,
                          "n_reference": len(self.reference_rows_)},
                         files=[EMBEDDING_FILE, ROWS_FILE])
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> UMAPProjector:
        """Read a projector written by :meth:`save`, ready to :meth:`transform`.

        ``embedding_`` is the reference embedding (the fitted sample's coordinates). Raises
        :class:`~hpa_embed.io.DataError` naming the file for a missing, corrupt or inconsistent one.
        """
        path = Path(path)
        meta = read_header(path / META_FILE, FORMAT_NAME, {FORMAT_VERSION}, what="UMAP projector")
        if set(meta.get("files", {})) != {EMBEDDING_FILE, ROWS_FILE}:
            raise DataError(path / META_FILE, f"must list the checksums of {EMBEDDING_FILE} and {ROWS_FILE}")
        try:
            params = dict(meta["params"])
            if params.get("index_config") is not None:
                params["index_config"] = IndexConfig.from_dict(params["index_config"])
            projector = cls(**params)
            projector._check_params()
            projector._index_config()
            n, n_epochs, n_features = (int(meta[key]) for key in ("n_reference", "n_epochs", "n_features"))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(path / META_FILE, f"invalid projector description ({type(error).__name__}: "
                                              f"{error})") from error
        embedding = np.load(path / EMBEDDING_FILE, allow_pickle=False)
        rows = np.load(path / ROWS_FILE, allow_pickle=False)
        index = CellIndex.load(path / INDEX_DIR)
        if (embedding.shape, rows.shape, len(index), index.dimension) != ((n, 2), (n,), n, n_features):
            raise DataError(path / META_FILE, f"inconsistent: says {n} reference points of {n_features} "
                                              f"features; {EMBEDDING_FILE} is {embedding.shape}, {ROWS_FILE} "
                                              f"{rows.shape}, the index holds {len(index)}")
        projector.index_ = index
        projector.reference_embedding_ = embedding.astype(np.float32, copy=False)
        projector.reference_rows_ = rows.astype(np.int64, copy=False)
        projector.embedding_ = projector.reference_embedding_
        projector.n_epochs_ = n_epochs
        projector.n_features_in_ = n_features
        return projector
