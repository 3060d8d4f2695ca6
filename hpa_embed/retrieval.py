"""Retrieval metrics of embeddings: do a cell's nearest neighbours share its label?

:func:`retrieval_metrics` runs pytorch-metric-learning's ``AccuracyCalculator`` with its k-NN
search done by a :class:`~hpa_embed.index.CellIndex` (:class:`IndexKNN`), so the index that
serves search also serves evaluation. Multi-hot labels count as matching when they share at
least one class (:func:`share_a_label`).

Metrics (pytorch-metric-learning's definitions, averaged over queries):

- ``precision_at_1``: the nearest neighbour matches.
- ``r_precision``: with R the number of references that match the query, the fraction of the
  R nearest neighbours that match.
- ``mean_average_precision_at_r``: mean over the matching positions i among the R nearest of
  (matches among the first i) / i, divided by R.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from .config import IndexConfig
from .index import CellIndex

__all__ = ["IndexKNN", "retrieval_metrics", "share_a_label", "DEFAULT_METRICS"]

DEFAULT_METRICS: tuple[str, ...] = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def share_a_label(labels: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Multi-hot label comparison for ``AccuracyCalculator(label_comparison_fn=...)``.

    ``labels [..., K]`` and ``others [..., K]`` broadcast against each other; the result
    (bool, the broadcast shape without ``K``) is True where the two rows share a class. A row
    with no class matches nothing, itself included.
    """
    return (labels * others).sum(dim=-1) > 0


class IndexKNN:
    """A ``knn_func`` for pytorch-metric-learning's ``AccuracyCalculator`` that searches a CellIndex.

    The calculator calls ``knn(query, k, reference, ref_includes_query)``; ``reference`` is
    ignored (the index holds the references, in row order) and, when ``ref_includes_query``,
    query ``i`` is reference row ``i`` and is left out of its own neighbours.

    Parameters
    ----------
    index : CellIndex
    queries : numpy.ndarray, optional
        float ``[n, D]``, searched instead of the ``query`` tensor the calculator passes (which
        may then be a zero-width placeholder ``[n, 0]``, so no vectors are copied into torch).
    """

    def __init__(self, index: CellIndex, queries: np.ndarray | None = None):
        self.index = index
        self.queries = queries

    def __call__(self, query: torch.Tensor, k: int, reference: torch.Tensor | None = None,
                 ref_includes_query: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self.queries if self.queries is not None else query.detach().cpu().numpy()
        exclude = np.arange(len(queries)) if ref_includes_query else None
        scores, rows = self.index.search_rows(queries, int(k), exclude_rows=exclude)
        return torch.from_numpy(scores).to(query.device), torch.from_numpy(rows).to(query.device)


def retrieval_metrics(query_X: np.ndarray, query_labels: np.ndarray, ref_X: np.ndarray | None = None,
                      ref_labels: np.ndarray | None = None, *, k: int | str = "max_bin_count",
                      index: CellIndex | None = None, ref_includes_query: bool = False,
                      include: tuple[str, ...] = DEFAULT_METRICS) -> dict[str, float]:
    """Retrieval metrics of query embeddings against reference embeddings.

    Parameters
    ----------
    query_X : numpy.ndarray
        float ``[n, D]``.
    query_labels : numpy.ndarray
        int ``[n]`` or multi-hot ``[n, K]`` (then "match" means sharing a class).
    ref_X, ref_labels : numpy.ndarray, optional
        References ``[N, D]`` and their labels. When ``ref_X`` and ``index`` are both None the
        queries are their own references, each left out of its own neighbours.
    k : int or "max_bin_count"
        Neighbours retrieved; ``"max_bin_count"`` (the largest number of references matching one
        query) is what ``r_precision`` and ``mean_average_precision_at_r`` need to be exact.
    index : CellIndex, optional
        Search this index instead of indexing ``ref_X`` (its rows are the references, labelled by
        ``ref_labels``). Without it, an exact index is built (``IndexConfig(kind="flat")``).
    ref_includes_query : bool
        With ``index``: the queries are the index's first ``n`` rows, left out of their own results.
    include : tuple of str
        ``AccuracyCalculator`` metric names.

    Returns
    -------
    dict
        metric name -> value (float).
    """
    query_labels = np.asarray(query_labels)
    if ref_X is None and index is None:
        if ref_labels is not None:
            raise ValueError("ref_labels given without ref_X or index")
        ref_labels, ref_includes_query = query_labels, True
        index = CellIndex.build(query_X, np.arange(len(query_X)).astype(str).astype(object),
                                IndexConfig(kind="flat"), progress=False)
    elif index is None:
        if ref_labels is None:
            raise ValueError("ref_X needs ref_labels")
        if ref_includes_query:
            raise ValueError("ref_includes_query applies only with index=")
        index = CellIndex.build(ref_X, np.arange(len(ref_X)).astype(str).astype(object),
                                IndexConfig(kind="flat"), progress=False)
    else:
        if ref_X is not None or ref_labels is None:
            raise ValueError("with index=, pass ref_labels (aligned with the index rows) and no ref_X")
    ref_labels = np.asarray(ref_labels)
    if len(ref_labels) != len(index):
        raise ValueError(f"{len(ref_labels)} reference labels for {len(index)} reference cells")
    if query_labels.ndim != ref_labels.ndim or query_labels.shape[1:] != ref_labels.shape[1:]:
        raise ValueError(f"query labels {query_labels.shape} and reference labels {ref_labels.shape} "
                         "differ in kind")
    if query_labels.ndim not in (1, 2):
        raise ValueError(f"labels must be [n] or multi-hot [n, K], got shape {query_labels.shape}")
    calculator = AccuracyCalculator(
        include=include, k=k, device=torch.device("cpu"), knn_func=IndexKNN(index, queries=query_X),
        label_comparison_fn=share_a_label if query_labels.ndim == 2 else None,
    )
    # The calculator uses the vectors only for their count (and, with ref_includes_query, to check
    # that the queries are the first references, which zero-width placeholders pass): the search
    # happens in the index, so no vectors are copied.
    result = calculator.get_accuracy(np.zeros((len(query_X), 0), np.float32), query_labels,
                                     np.zeros((len(index), 0), np.float32), ref_labels,
                                     ref_includes_query=ref_includes_query)
    return {name: float(value) for name, value in result.items()}
