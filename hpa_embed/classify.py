"""Per-cell classifiers over embeddings.

:class:`KNNClassifier` votes among a cell's nearest reference cells in a
:class:`~hpa_embed.index.CellIndex`, single-label (int ``y``) or multi-label (multi-hot ``Y``);
:func:`head_probabilities` applies a trained model's linear classifier to stored embeddings.
:func:`aggregate_images` turns cell predictions into image predictions (the union of the cells)
and :func:`fuse_scores` blends image-level scores back into the cells'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .config import IndexConfig
from .index import BLOCK_SIZE, CellIndex
from .io import HpaEmbedError
from .labels import NEGATIVE

__all__ = [
    "KNNClassifier",
    "head_probabilities",
    "aggregate_images",
    "fuse_scores",
    "score_negative",
    "predict_cells",
    "with_training_targets",
    "write_predictions",
    "read_predictions",
]


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest-neighbour vote over a FAISS :class:`~hpa_embed.index.CellIndex`.

    A scikit-learn estimator: on an exact (flat) index, ``predict``, ``predict_proba`` and
    ``kneighbors`` equal those of ``sklearn.neighbors.KNeighborsClassifier(algorithm="brute")``
    with ``metric="cosine"`` (index metric ``"cosine"``) or ``metric="euclidean"`` (index metric
    ``"l2"``) and the same ``n_neighbors`` and ``weights``, up to float32 rounding and the order of
    exactly tied neighbours.

    Parameters
    ----------
    n_neighbors : int
        Neighbours that vote.
    weights : {"distance", "uniform"}
        ``"distance"``: a neighbour's vote is ``1 / d`` with ``d`` its scikit-learn distance
        (cosine distance ``1 - similarity``, or Euclidean distance); where some neighbours are at
        distance 0, only those vote, equally (as in scikit-learn). ``"uniform"``: one vote each.
    index_config : IndexConfig, optional
        How :meth:`fit` indexes the reference cells; default ``IndexConfig()`` (exact below
        ``flat_threshold`` cells, IVF above). Pass ``IndexConfig(kind="flat")`` for exact search.
    threshold : float
        Multi-label :meth:`predict`: a class is predicted when its probability exceeds this.

    Attributes
    ----------
    index_ : CellIndex
        The reference cells.
    classes_ : numpy.ndarray
        Single-label: the sorted distinct labels ``[C]``; multi-label: ``arange(K)``.
    Y_ : numpy.ndarray
        Reference labels: int64 positions into ``classes_`` ``[N]`` (single-label) or bool
        multi-hot ``[N, K]`` (multi-label), aligned with the index rows.
    multilabel_ : bool
        Whether fitted on multi-hot ``Y``.
    n_features_in_ : int
        Embedding width D.
    n_samples_fit_ : int
        Reference cell count N.
    """

    def __init__(
        self,
        n_neighbors: int = 10,
        weights: str = "distance",
        index_config: IndexConfig | None = None,
        threshold: float = 0.5,
    ):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.index_config = index_config
        self.threshold = threshold

    def fit(self, X: np.ndarray | CellIndex, y: np.ndarray) -> KNNClassifier:
        """Index the reference cells and remember their labels.

        Parameters
        ----------
        X : numpy.ndarray or CellIndex
            Reference embeddings float ``[N, D]`` (indexed under ids ``"0"`` ... ``"N-1"``), or an
            already-built index whose rows are the reference cells (``index_config`` is then unused).
        y : numpy.ndarray
            ``[N]`` labels (any sortable values) or multi-hot ``[N, K]`` (bool or 0/1), row ``i``
            for row ``i`` of ``X``.

        Returns
        -------
        self
        """
        if self.weights not in ("distance", "uniform"):
            raise ValueError(f"weights={self.weights!r}: expected 'distance' or 'uniform'")
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors={self.n_neighbors!r} must be a positive integer")
        if isinstance(X, CellIndex):
            index = X
        else:
            X = np.asarray(X)
            if X.ndim != 2:
                raise ValueError(f"X must be a 2-D array [N, D] or a CellIndex, got shape {X.shape}")
            index = CellIndex.build(
                X, np.arange(len(X)).astype(str).astype(object), self.index_config, progress=False
            )
        y = np.asarray(y)
        if len(y) != len(index):
            raise ValueError(f"y has {len(y)} rows for {len(index)} reference cells")
        if y.ndim == 1:
            self.classes_, self.Y_ = np.unique(y, return_inverse=True)
            self.Y_ = self.Y_.astype(np.int64)
            self.multilabel_ = False
        elif y.ndim == 2:
            if y.dtype != bool and not np.isin(y, (0, 1)).all():  # isin would copy y as int64
                raise ValueError("a 2-D y must be multi-hot: bool or 0/1 values")
            self.Y_ = y.astype(bool)
            self.classes_ = np.arange(y.shape[1])
            self.multilabel_ = True
        else:
            raise ValueError(f"y must be [N] labels or [N, K] multi-hot, got shape {y.shape}")
        self.index_ = index
        self.n_features_in_ = index.dimension
        self.n_samples_fit_ = len(index)
        return self

    def kneighbors(
        self, X: np.ndarray, n_neighbors: int | None = None, return_distance: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Nearest reference cells, in scikit-learn's conventions.

        Returns
        -------
        distances : numpy.ndarray
            float32 ``[n, k]``, ascending: cosine distance ``1 - similarity`` clipped to [0, 2]
            (index metric ``"cosine"``) or Euclidean distance (``"l2"``); inf where an approximate
            index found fewer than ``k`` neighbours. Only when ``return_distance``.
        indices : numpy.ndarray
            int64 ``[n, k]``: rows of the reference set (``fit``'s ``X``), -1 where missing.
        """
        check_is_fitted(self, "index_")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if k > self.n_samples_fit_:
            raise ValueError(
                f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, "
                f"n_samples_fit = {self.n_samples_fit_}"
            )
        scores, rows = self.index_.search_rows(X, k)
        if not return_distance:
            return rows
        if self.index_.metric == "cosine":
            distances = np.clip(1 - scores, 0, 2)  # -inf similarity of a missing neighbour -> clipped below
            distances[rows < 0] = np.inf
        else:
            distances = np.sqrt(np.maximum(scores, 0))
        return distances, rows

    def _votes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vote weights float64 ``[n, k]`` (0 for missing neighbours) and neighbour rows ``[n, k]``."""
        distances, rows = self.kneighbors(X)
        if self.weights == "uniform":
            weights = np.ones(rows.shape)
        else:
            with np.errstate(divide="ignore"):
                weights = 1.0 / distances.astype(np.float64)
            exact = np.isinf(weights)
            exact_rows = exact.any(axis=1)
            weights[exact_rows] = exact[exact_rows]  # a cell at distance 0 outvotes everything
        weights[rows < 0] = 0.0
        return weights, np.where(rows < 0, 0, rows)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Weighted vote fractions, float64 ``[n, C]`` (columns follow ``classes_``).

        Single-label: the weighted fraction of neighbours with each label (rows sum to 1).
        Multi-label: for each class, the weighted fraction of neighbours that have it.
        A query whose neighbours all are missing gets a row of zeros. The queries are searched
        ``BLOCK_SIZE`` at a time, so a memory-mapped ``X`` is read block by block.
        """
        check_is_fitted(self, "index_")
        X = np.asarray(X)
        out = np.empty((len(X), len(self.classes_)))
        for start in range(0, len(X), BLOCK_SIZE):
            out[start:start + BLOCK_SIZE] = self._proba(X[start:start + BLOCK_SIZE])
        return out

    def _proba(self, X: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` of one block of queries."""
        weights, rows = self._votes(X)
        n, n_classes = len(rows), len(self.classes_)
        if self.multilabel_:
            votes = np.einsum("nk,nkc->nc", weights, self.Y_[rows])
        else:
            # Flat bin per (query, class): one bincount sums every vote, in neighbour order.
            bins = np.arange(n)[:, None] * n_classes + self.Y_[rows]
            votes = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=n * n_classes)
            votes = votes.reshape(n, n_classes)
        total = weights.sum(axis=1, keepdims=True)
        return votes / np.where(total > 0, total, 1.0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Single-label: the label with the largest vote ``[n]`` (ties: the smallest label).
        Multi-label: bool ``[n, K]``, probability > ``threshold``."""
        proba = self.predict_proba(X)
        if self.multilabel_:
            return proba > self.threshold
        return self.classes_[np.argmax(proba, axis=1)]


# --------------------------------------------------------------------------- linear head


def head_probabilities(
    checkpoint, X: np.ndarray, activation: str | None = None, batch_size: int = 65536
) -> np.ndarray:
    """Per-cell class probabilities from a trained model's linear classifier.

    The classifier reads the stored (L2-normalised) embedding, so no image is needed.

    Parameters
    ----------
    checkpoint : path or CellEmbeddingModel
        A checkpoint directory (or a loaded model).
    X : float32 ``[N, D]``
        Embeddings from :func:`hpa_embed.embed.embed` with the same model.
    activation : {"softmax", "sigmoid"}, optional
        Default: softmax for a model trained with cross-entropy (``loss.classification == "ce"``
        in the checkpoint), sigmoid otherwise.

    Returns
    -------
    float32 ``[N, K]``
    """
    import torch

    from .models import CellEmbeddingModel, load_checkpoint

    if isinstance(checkpoint, CellEmbeddingModel):
        model, trained_with = checkpoint, None
    else:
        model, _, extra = load_checkpoint(checkpoint)
        trained_with = extra.get("loss", {}).get("classification")
    activation = activation or ("softmax" if trained_with == "ce" else "sigmoid")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation={activation!r}: choose 'softmax' or 'sigmoid'")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != model.config.embedding_dim:
        raise ValueError(
            f"X has shape {X.shape}; the model embeds into {model.config.embedding_dim} dimensions"
        )
    out = np.empty((len(X), model.config.num_classes), dtype=np.float32)
    classifier = model.classifier.eval()
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            logits = classifier(torch.tensor(X[start : start + batch_size]))  # a copy: X may be read-only
            scores = torch.softmax(logits, 1) if activation == "softmax" else torch.sigmoid(logits)
            out[start : start + len(logits)] = scores.numpy()
    return out


# --------------------------------------------------------------------------- images from cells


def aggregate_images(probabilities: np.ndarray, image_ids) -> tuple[np.ndarray, np.ndarray]:
    """Image-level scores as the union of the image's cells: the maximum over its cells.

    Parameters
    ----------
    probabilities : float ``[N, K]``
        Per-cell class probabilities.
    image_ids : array-like ``[N]``
        The image of each cell.

    Returns
    -------
    images : object ``[M]``
        The distinct image ids, sorted.
    image_probabilities : float32 ``[M, K]``
        ``max`` over each image's cells: an image shows a class when one of its cells does.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    images, index = np.unique(np.asarray(image_ids, dtype=object), return_inverse=True)
    out = np.zeros((len(images), probabilities.shape[1]), dtype=np.float32)
    np.maximum.at(out, index, probabilities)
    return images, out


def fuse_scores(
    cell_probabilities: np.ndarray,
    image_probabilities: np.ndarray,
    image_index: np.ndarray,
    weight: float = 0.5,
    method: str = "mean",
) -> np.ndarray:
    """Blend each cell's scores with its image's (e.g. from an image-level model).

    ``"mean"``: ``(1 - w) * cell + w * image``; ``"geometric"``: ``cell ** (1 - w) * image ** w``.
    A cell then ranks high for a class only when its image shows the class too, which
    suppresses isolated false positives in images that lack the class.

    Parameters
    ----------
    cell_probabilities : float ``[N, K]``
    image_probabilities : float ``[M, K]``
    image_index : int ``[N]``
        Row of ``image_probabilities`` for each cell.
    weight : float in [0, 1]
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"weight={weight!r} must lie in [0, 1]")
    cell = np.asarray(cell_probabilities, dtype=np.float32)
    image = np.asarray(image_probabilities, dtype=np.float32)[np.asarray(image_index)]
    if method == "mean":
        return (1 - weight) * cell + weight * image
    if method == "geometric":
        return cell ** (1 - weight) * image**weight
    raise ValueError(f"method={method!r}: choose 'mean' or 'geometric'")


# --------------------------------------------------------------------------- predictions on disk


def score_negative(probabilities: np.ndarray, negative: int = NEGATIVE) -> np.ndarray:
    """The complement rule for the Negative class, float32 ``[N, K]`` (a copy).

    A cell's Negative score becomes ``max(p_negative, 1 - max_{k != negative} p_k)``: a cell in
    which the model sees none of the other classes is Negative, whatever its image's labels.
    Weak image labels name Negative only for images where no cell shows anything, so without
    this rule a model trained on them never scores a silent cell of a positive image Negative.
    """
    probabilities = np.array(probabilities, dtype=np.float32)
    others = np.delete(probabilities, negative, axis=1)
    probabilities[:, negative] = np.maximum(probabilities[:, negative], 1 - others.max(axis=1))
    return probabilities


def predict_cells(
    embeddings,
    method: str = "head",
    checkpoint=None,
    reference=None,
    label_mode: str = "image_labels",
    n_neighbors: int = 10,
    index_config: IndexConfig | None = None,
    negative: str = "complement",
    fusion_weight: float = 0.0,
    reference_splits: str | Sequence[str] | None = None,
    training_run=None,
) -> np.ndarray:
    """Per-cell class probabilities float32 ``[N, K]`` for the cells of an embeddings directory.

    Parameters
    ----------
    embeddings : Embeddings or path
        From :func:`hpa_embed.embed.embed_store`.
    method : {"head", "knn"}
        ``"head"``: the trained linear classifier (:func:`head_probabilities`; ``checkpoint``
        defaults to the one the embeddings came from). ``"knn"``: :class:`KNNClassifier` with
        the labelled cells of ``reference`` (another embeddings directory, e.g. the training
        split) as neighbours, labels from its ``label_mode`` column (``"training_targets"``: the
        targets the model of ``training_run`` trained on, :func:`with_training_targets`). A
        reference read from a path is memory-mapped and indexed block by block, so it may be
        larger than memory.
    negative : {"complement", "model"}
        How Negative is scored: :func:`score_negative`, or the model's own output alone.
    fusion_weight : float in [0, 1]
        Blend each cell's scores with its image's, the maximum over the image's cells
        (:func:`fuse_scores`, ``"mean"``); 0 leaves the cells alone.
    reference_splits : str or sequence of str, optional
        Only the reference cells of these splits vote (e.g. ``"train"`` when ``reference`` is
        ``embeddings`` itself); default all.
    training_run : path, optional
        kNN with ``label_mode="training_targets"``: the :func:`~hpa_embed.train.fit` run
        directory of the model (``<run>/train`` in a pipeline run).
    """
    from .data import cell_targets, label_column
    from .embed import Embeddings, read_embeddings

    if negative not in ("complement", "model"):
        raise ValueError(f"negative={negative!r}: choose 'complement' or 'model'")
    embedded = embeddings if isinstance(embeddings, Embeddings) else read_embeddings(
        embeddings, mmap=True, columns=["image_id"])
    if method == "head":
        checkpoint = checkpoint or embedded.meta.get("checkpoint")
        if checkpoint is None:
            raise HpaEmbedError("method 'head' needs the checkpoint of the model that made the embeddings; "
                                "these name none (imported?): give the checkpoint, or use method 'knn'")
        probabilities = head_probabilities(checkpoint, embedded.X)
    elif method == "knn":
        if reference is None:
            raise ValueError("method='knn' needs reference embeddings (labelled cells to vote)")
        if label_mode == "training_targets":
            if training_run is None:
                raise ValueError("label_mode='training_targets' needs the training_run that made the model")
            reference = with_training_targets(reference, training_run)
            label_mode = "pseudo_labels"
        ref = reference if isinstance(reference, Embeddings) else read_embeddings(
            reference, mmap=True, columns=[label_column(label_mode), "split"])
        positions, Y = cell_targets(ref.cells, label_mode, splits=reference_splits)
        if len(positions) == 0:
            raise ValueError(f"the reference cells carry no {label_mode}")
        cell_ids, X_ref = ref.cells["cell_id"].astype(str).to_numpy(dtype=object)[positions], ref.X
        del ref  # a table read here is no longer needed (a million cells' labels take hundreds of MB)
        # the labelled rows are indexed block by block: a memory-mapped reference stays on disk
        index = CellIndex.build(X_ref, cell_ids, index_config, rows=positions, progress=False)
        knn = KNNClassifier(n_neighbors=min(n_neighbors, len(positions)))
        probabilities = knn.fit(index, Y).predict_proba(embedded.X).astype(np.float32)
    else:
        raise ValueError(f"method={method!r}: choose 'head' or 'knn'")
    if fusion_weight:
        _, image_index = np.unique(embedded.cells["image_id"].to_numpy(dtype=object), return_inverse=True)
        _, image_probabilities = aggregate_images(probabilities, embedded.cells["image_id"])
        probabilities = fuse_scores(probabilities, image_probabilities, image_index, fusion_weight)
    return score_negative(probabilities) if negative == "complement" else probabilities


def with_training_targets(reference, training_run):
    """``reference`` (Embeddings or path) with a ``pseudo_labels`` column: the class ids each cell
    trained on in the :func:`~hpa_embed.train.fit` run ``training_run`` (its ``targets.parquet``),
    None for the cells it did not train on. A kNN vote on it repeats what the model was taught,
    e.g. the dim cells of a ``dim-negative`` run as Negative rather than their image's labels."""
    from .embed import Embeddings, read_embeddings
    from .io import DataError
    from .train import TARGETS_FILE

    path = Path(training_run) / TARGETS_FILE
    if not path.is_file():
        raise DataError(path, "missing: the training run wrote no targets (trained by an earlier release?)")
    targets = pd.read_parquet(path)
    ref = reference if isinstance(reference, Embeddings) else read_embeddings(
        reference, mmap=True, columns=["split"])
    labels = pd.Series(targets["labels"].map(list).to_numpy(), index=targets["cell_id"].astype(str))
    column = ref.cells["cell_id"].astype(str).map(labels)
    return Embeddings(ref.X, ref.cells.assign(pseudo_labels=column.where(column.notna(), None).to_numpy()),
                      ref.meta)


def write_predictions(out, embeddings, probabilities: np.ndarray, method: str) -> Path:
    """Write ``<out>/probabilities.npy`` (float32 ``[N, K]``), ``<out>/cells.parquet`` (the cells,
    in the same order) and ``<out>/images.csv`` (image-level union, one column per class)."""
    from .io import atomic_path

    out = Path(out)
    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    cells = embeddings.cells.reset_index(drop=True)
    if len(probabilities) != len(cells):
        raise ValueError(f"{len(probabilities)} probability rows for {len(cells)} cells")
    images, image_probabilities = aggregate_images(probabilities, cells["image_id"])
    with atomic_path(out / "probabilities.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, probabilities)
    table = pd.DataFrame(image_probabilities, columns=[str(k) for k in range(probabilities.shape[1])])
    table.insert(0, "image_id", images)
    with atomic_path(out / "images.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out / "cells.parquet") as tmp:
        cells.assign(prediction_method=method).to_parquet(tmp, index=False)
    return out


def read_predictions(path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a predictions directory -> (cells table, probabilities float32 ``[N, K]``)."""
    from .io import DataError

    path = Path(path)
    for name in ("probabilities.npy", "cells.parquet"):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: not a predictions directory (see hpa-embed classify)")
    probabilities = np.load(path / "probabilities.npy", allow_pickle=False)
    cells = pd.read_parquet(path / "cells.parquet")
    if probabilities.ndim != 2 or len(probabilities) != len(cells):
        raise DataError(
            path / "probabilities.npy",
            f"shape {probabilities.shape} does not match {len(cells)} cells in cells.parquet",
        )
    return cells, probabilities
