"""Evaluation: the Kaggle HPA 2021 metric, cell-level AP, per-class classification tables.

:func:`competition_map` scores a :class:`~hpa_embed.submission.Submission` against true cell
masks and labels as the competition did (per-class AP over (mask, label, confidence)
predictions, a true positive needing IoU >= 0.6 with an unmatched true cell of the class);
:func:`cell_level_ap` is the same AP when predicted and true cells coincide.
:func:`classification_table` gives per-class precision, recall, F1 and the 2x2 confusion counts
of every class at a threshold (drawn by :func:`hpa_embed.visualise.plot_confusion_matrices`).
Segmentation metrics (object IoU, matching, object F1) are in :mod:`hpa_embed.segment.metrics`.
See ``docs/evaluation.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .io import DataError, atomic_path, read_mask
from .labels import HPA2021, ClassScheme
from .rle import decode_mask_runs
from .segment.metrics import mask_iou
from .submission import Submission, read_submission

__all__ = [
    "ImageTruth",
    "TruthDirectory",
    "MetricResult",
    "average_precision",
    "competition_map",
    "cell_level_ap",
    "classification_table",
    "evaluate_submission",
    "evaluate_cells",
    "evaluate_predictions",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class ImageTruth:
    """The true cells of one image.

    Attributes
    ----------
    cell_mask : int ``[H, W]``
        True cell label mask, 0 = background.
    cell_labels : mapping of int to sequence of int
        Cell id -> its true class ids. Every key must be an id of ``cell_mask``; a cell of the
        mask without an entry is a true cell of no class (it cannot be a true positive).
    """

    cell_mask: np.ndarray
    cell_labels: Mapping[int, Sequence[int]]

    @classmethod
    def from_list(cls, cell_mask: np.ndarray, cell_labels: Sequence[Sequence[int]]) -> ImageTruth:
        """Truth whose cell ``i + 1`` has ``cell_labels[i]`` (the synthetic generator's form)."""
        return cls(cell_mask, {index + 1: list(labels) for index, labels in enumerate(cell_labels)})


class TruthDirectory(Mapping):
    """The truth of a synthetic data set, image id -> :class:`ImageTruth`, masks read lazily.

    Reads the cell labels (:func:`hpa_embed.synthetic.truth_labels_by_image`) at once and
    ``<root>/truth/<ID>_cellmask.png`` (or ``.npz``) when an image is asked for, so a set of
    thousands of 2048² fields is never in memory at once. The images are those with a mask file,
    or the ``image_ids`` among them when given (e.g. the held-out images a run scores).
    """

    def __init__(self, root: str | os.PathLike, image_ids: Sequence[str] | None = None):
        from .synthetic import truth_labels_by_image

        self.root = Path(root)
        self._truth_dir = self.root / "truth"
        self._labels = truth_labels_by_image(self.root)
        self._masks = {}
        for suffix in (".npz", ".png"):  # .png wins when both exist
            for path in self._truth_dir.glob(f"*_cellmask{suffix}"):
                self._masks[path.name[: -len(f"_cellmask{suffix}")]] = path
        missing = sorted(set(self._labels) - set(self._masks))
        if missing:
            raise DataError(self._truth_dir / f"{missing[0]}_cellmask.png",
                            f"missing true cell mask ({len(missing)} labelled image(s) have none)")
        if image_ids is not None:
            unknown = sorted(set(image_ids) - set(self._masks))
            if unknown:
                raise DataError(self._truth_dir / f"{unknown[0]}_cellmask.png",
                                f"missing true cell mask ({len(unknown)} image(s) asked for have none)")
            self._masks = {image_id: self._masks[image_id] for image_id in image_ids}
        self._ids = sorted(self._masks)

    def __getitem__(self, image_id: str) -> ImageTruth:
        mask_path = self._masks[image_id]
        return ImageTruth(read_mask(mask_path), self._labels.get(image_id, {}))

    def __contains__(self, image_id) -> bool:  # without reading the mask
        return image_id in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"TruthDirectory({str(self.root)!r}, {len(self)} images)"


def _truth_classes(truth: ImageTruth, true_ids: np.ndarray, num_classes: int, image_id: str) -> np.ndarray:
    """Multi-hot true classes of the cells ``true_ids`` of one image, bool ``[n_true, K]``."""
    classes = np.zeros((len(true_ids), num_classes), dtype=bool)
    for cell_id, labels in truth.cell_labels.items():
        row = int(np.searchsorted(true_ids, cell_id))
        if row == len(true_ids) or true_ids[row] != cell_id:
            raise ValueError(f"image {image_id!r}: labelled true cell {cell_id} is not in its cell mask")
        labels = np.asarray(list(labels), dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"image {image_id!r}: true cell {cell_id} has labels {labels.tolist()} "
                             f"outside 0..{num_classes - 1}")
        classes[row, labels] = True
    return classes


# --------------------------------------------------------------------------- average precision


@dataclass(frozen=True)
class MetricResult:
    """Per-class average precision and its mean.

    Attributes
    ----------
    map : float
        Mean of ``per_class_ap`` over the classes present in the truth (nan if none is).
    per_class_ap : float64 ``[K]``
        AP per class; nan for a class with no true cell, which is left out of the mean (it has
        no recall to measure; scoring it 0 or 1 would move the mean by a choice, not a result).
    n_gt, n_pred, n_tp : int64 ``[K]``
        True cells, predictions and true-positive predictions per class.
    """

    map: float
    per_class_ap: np.ndarray
    n_gt: np.ndarray
    n_pred: np.ndarray
    n_tp: np.ndarray

    @classmethod
    def from_per_class(cls, per_class_ap, n_gt, n_pred, n_tp) -> MetricResult:
        per_class_ap = np.asarray(per_class_ap, dtype=np.float64)
        present = ~np.isnan(per_class_ap)
        mean = float(per_class_ap[present].mean()) if present.any() else float("nan")
        return cls(mean, per_class_ap, *(np.asarray(a, dtype=np.int64) for a in (n_gt, n_pred, n_tp)))

    def to_frame(self, scheme: ClassScheme = HPA2021) -> pd.DataFrame:
        """One row per class: ``class_id``, ``name``, ``ap``, ``n_gt``, ``n_pred``, ``n_tp``."""
        names = scheme.names if len(scheme.names) == len(self.per_class_ap) else [
            str(i) for i in range(len(self.per_class_ap))]
        return pd.DataFrame({"class_id": np.arange(len(self.per_class_ap)), "name": list(names),
                             "ap": self.per_class_ap, "n_gt": self.n_gt, "n_pred": self.n_pred,
                             "n_tp": self.n_tp})

    def __str__(self) -> str:
        return f"mAP {self.map:.4f} over {int((~np.isnan(self.per_class_ap)).sum())} classes"


def average_precision(is_tp: np.ndarray, n_true: int) -> float:
    """PASCAL VOC 2010 / OpenImages average precision of one ranked list of predictions.

    Precision is made monotone (each value replaced by the best precision at any higher
    recall), then summed over the recall steps: ``sum (r_i - r_{i-1}) * p_interp(r_i)``.

    Parameters
    ----------
    is_tp : bool ``[n]``
        Whether each prediction, in decreasing confidence, is a true positive.
    n_true : int
        Number of true objects (true positives found + missed).

    Returns
    -------
    float
        nan when ``n_true == 0``; 0.0 when there are no predictions.
    """
    is_tp = np.asarray(is_tp, dtype=bool)
    if n_true == 0:
        return float("nan")
    if is_tp.size == 0:
        return 0.0
    found = np.cumsum(is_tp)
    if found[-1] > n_true:
        raise ValueError(f"{found[-1]} true positives for {n_true} true objects")
    precision = np.concatenate([[0.0], found / np.arange(1, len(is_tp) + 1), [0.0]])
    recall = np.concatenate([[0.0], found / n_true, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _per_class_ap(labels, confidence, is_tp, n_gt, num_classes) -> MetricResult:
    """AP of each class from every prediction's class, confidence and TP flag (in row order)."""
    # decreasing confidence; equal confidences keep their row order
    order = np.lexsort((np.arange(len(labels)), -confidence))
    ranked_labels, ranked_tp = labels[order], is_tp[order]
    ap = [average_precision(ranked_tp[ranked_labels == c], int(n_gt[c])) for c in range(num_classes)]
    n_pred = np.bincount(labels, minlength=num_classes)
    n_tp = np.bincount(labels[is_tp], minlength=num_classes)
    return MetricResult.from_per_class(ap, n_gt, n_pred, n_tp)


def _run_pixels(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels covered by runs ``[start, start + length)``."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total) + np.repeat(starts - offsets, lengths)


def _predicted_iou(
    true_mask: np.ndarray, rles: Sequence[str], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """IoU of each true cell with each predicted mask, float64 ``[n_true, len(rles)]``, and true ids.

    The masks are painted into label masks (a new one only where a mask overlaps one already
    painted, which segmentations never do) so that :func:`mask_iou` scores them all at once.
    """
    layers: list[np.ndarray] = []
    for number, rle in enumerate(rles, 1):
        pixels = _run_pixels(*decode_mask_runs(rle, height, width))
        for layer in layers:
            if not layer[pixels].any():
                layer[pixels] = number
                break
        else:
            layers.append(np.zeros(height * width, dtype=np.int32))
            layers[-1][pixels] = number
    if not layers:
        layers.append(np.zeros(height * width, dtype=np.int32))
    iou = true_ids = None
    for layer in layers:
        layer_iou, true_ids, pred_ids = mask_iou(true_mask, layer.reshape((height, width), order="F"))
        if iou is None:
            iou = np.zeros((len(true_ids), len(rles)))
        iou[:, pred_ids - 1] = layer_iou  # an empty predicted mask keeps IoU 0
    return iou, true_ids


def _match_image(
    iou: np.ndarray, true_classes: np.ndarray, mask_index: np.ndarray, labels: np.ndarray,
    ranked: np.ndarray, iou_threshold: float,
) -> np.ndarray:
    """True-positive flags of one image's predictions (``ranked``: its rows, best first)."""
    is_tp = np.zeros(len(labels), dtype=bool)
    for class_id in np.unique(labels):
        rows = ranked[labels[ranked] == class_id]
        true_rows = np.flatnonzero(true_classes[:, class_id])
        if not true_rows.size:
            continue
        class_iou = iou[np.ix_(true_rows, mask_index[rows])]  # [true cells of c, predictions of c]
        unmatched = np.ones(len(true_rows), dtype=bool)
        # only predictions that reach the threshold with some true cell can match
        for column in np.flatnonzero(class_iou.max(axis=0) >= iou_threshold):
            candidates = np.where(unmatched, class_iou[:, column], -1.0)
            best = int(candidates.argmax())
            if candidates[best] >= iou_threshold:
                unmatched[best] = False
                is_tp[rows[column]] = True
    return is_tp


def competition_map(
    predictions: Submission,
    truth: Mapping[str, ImageTruth],
    iou_threshold: float = 0.6,
    num_classes: int = HPA2021.num_classes,
    progress: bool = True,
) -> MetricResult:
    """The Kaggle HPA 2021 metric: mean over classes of the AP of (mask, label, confidence) predictions.

    For each class, the predictions of that class over all images are ranked by confidence
    (ties keep the row order of ``predictions.predictions``, so the result is deterministic).
    Going down the ranking, a prediction is a true positive when its mask has IoU >=
    ``iou_threshold`` with a not yet matched true cell of that class in the same image (the one
    with the highest IoU among them); otherwise, including a second prediction of an already
    matched cell, it is a false positive (OpenImages / PASCAL VOC style). AP is
    :func:`average_precision`; classes without true cells get nan and are left out of the mean.

    Parameters
    ----------
    predictions : Submission
    truth : mapping of str to ImageTruth
        Every image to score (e.g. a :class:`TruthDirectory`). Its true cells count as missed
        where the submission has no predictions for it.
    iou_threshold : float
    num_classes : int
    progress : bool
        Show a tqdm bar over the images.

    Returns
    -------
    MetricResult

    Raises
    ------
    ValueError
        A predicted image missing from ``truth``, a size that differs from the true mask's, a
        label outside ``0..num_classes-1``, or an undecodable mask.
    """
    table = predictions.predictions
    image_size = {str(i): (int(h), int(w)) for i, w, h in zip(
        predictions.images["image_id"], predictions.images["width"], predictions.images["height"])}
    unknown = [image_id for image_id in image_size if image_id not in truth]
    if unknown:
        raise ValueError(f"{len(unknown)} predicted image(s) have no truth, e.g. {unknown[0]!r}")
    labels = table["label"].to_numpy(dtype=np.int64)
    confidence = table["confidence"].to_numpy(dtype=np.float64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"prediction labels must lie in 0..{num_classes - 1}")
    rles = table["rle"].to_numpy()
    rows_of = pd.Series(np.arange(len(table))).groupby(table["image_id"].astype(str).to_numpy()).indices
    is_tp = np.zeros(len(table), dtype=bool)
    n_gt = np.zeros(num_classes, dtype=np.int64)
    n_unpredicted = 0
    for image_id in tqdm(list(truth), desc="metric", unit="image", disable=not progress):
        image_truth = truth[image_id]
        true_mask = np.asarray(image_truth.cell_mask)
        height, width = image_size.get(image_id, true_mask.shape)
        n_unpredicted += image_id not in image_size
        if (height, width) != true_mask.shape:
            raise ValueError(f"image {image_id!r}: predicted size {width} x {height} (width x height) "
                             f"differs from the true mask's {true_mask.shape[1]} x {true_mask.shape[0]}")
        rows = rows_of.get(image_id, np.zeros(0, dtype=np.int64))
        mask_index, unique_rles = pd.factorize(rles[rows])  # decode each cell once
        try:
            iou, true_ids = _predicted_iou(true_mask, list(unique_rles), height, width)
        except ValueError as error:
            raise ValueError(f"image {image_id!r}: {error}") from None
        true_classes = _truth_classes(image_truth, true_ids, num_classes, image_id)
        n_gt += true_classes.sum(axis=0)
        ranked = np.lexsort((rows, -confidence[rows]))
        is_tp[rows] = _match_image(iou, true_classes, mask_index, labels[rows], ranked, iou_threshold)
    if n_unpredicted:
        log.warning("%d of %d images have no entry in the submission; their cells count as missed",
                    n_unpredicted, len(truth))
    return _per_class_ap(labels, confidence, is_tp, n_gt, num_classes)


def cell_level_ap(probabilities: np.ndarray, Y: np.ndarray) -> MetricResult:
    """Per-class AP when every cell is predicted with its true mask (cell-level classification).

    Equals :func:`competition_map` of predictions made on the true masks with every (cell,
    class) listed, cells in the same order as the rows here (ties keep row order).

    Parameters
    ----------
    probabilities : float ``[N, K]``
        Confidence of each class for each cell.
    Y : bool ``[N, K]``
        True multi-hot labels.

    Returns
    -------
    MetricResult
        ``n_pred`` is ``N`` for every class.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    Y = np.asarray(Y, dtype=bool)
    if probabilities.ndim != 2 or probabilities.shape != Y.shape:
        raise ValueError(f"probabilities {probabilities.shape} and Y {Y.shape} must both be [N, K]")
    n_cells, num_classes = Y.shape
    labels = np.tile(np.arange(num_classes), n_cells)  # rows: cell-major, as predictions_from_cells
    return _per_class_ap(labels, probabilities.ravel(), Y.ravel(), Y.sum(axis=0), num_classes)


# --------------------------------------------------------------------------- per-class tables


def _as_predicted(Y_true, Y_pred, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    Y_true = np.asarray(Y_true, dtype=bool)
    Y_pred = np.asarray(Y_pred)
    if Y_pred.dtype != bool:
        Y_pred = Y_pred >= threshold
    if Y_true.ndim != 2 or Y_true.shape != Y_pred.shape:
        raise ValueError(f"Y_true {Y_true.shape} and Y_pred {Y_pred.shape} must both be [N, K]")
    return Y_true, Y_pred


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = numerator.astype(np.float64), denominator.astype(np.float64)
    return np.divide(numerator, denominator, out=np.full_like(numerator, np.nan), where=denominator > 0)


def classification_table(
    Y_true: np.ndarray, Y_pred: np.ndarray, threshold: float = 0.5, scheme: ClassScheme = HPA2021
) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support of multi-label predictions.

    Parameters
    ----------
    Y_true : bool ``[N, K]``
    Y_pred : bool ``[N, K]``, or float ``[N, K]`` probabilities, predicted where ``>= threshold``
    threshold : float
    scheme : ClassScheme
        Gives the class names (``K`` must be its number of classes).

    Returns
    -------
    pandas.DataFrame
        One row per class: ``class_id``, ``name``, ``precision``, ``recall``, ``f1``, ``support``
        (true positives + false negatives), ``tp``, ``fp``, ``fn``, ``tn``. A ratio whose
        denominator is 0 (no prediction, no true cell) is nan rather than a made-up 0 or 1.
    """
    from sklearn.metrics import multilabel_confusion_matrix

    Y_true, Y_pred = _as_predicted(Y_true, Y_pred, threshold)
    if Y_true.shape[1] != scheme.num_classes:
        raise ValueError(f"{Y_true.shape[1]} columns, but scheme {scheme.name} has "
                         f"{scheme.num_classes} classes")
    matrices = multilabel_confusion_matrix(Y_true, Y_pred, labels=np.arange(scheme.num_classes))
    tn, fp, fn, tp = (matrices[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    return pd.DataFrame({
        "class_id": np.arange(scheme.num_classes), "name": list(scheme.names),
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn), "support": tp + fn,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    })


# --------------------------------------------------------------------------- reports


def _write_frame(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def evaluate_submission(
    submission: Submission | str | os.PathLike,
    truth: Mapping[str, ImageTruth] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    iou_threshold: float = 0.6,
    scheme: ClassScheme = HPA2021,
    progress: bool = True,
) -> MetricResult:
    """Score a submission against the truth, and write ``<out_dir>/competition_ap.csv``.

    Parameters
    ----------
    submission : Submission or path
        A :class:`~hpa_embed.submission.Submission` or a submission CSV.
    truth : mapping of str to ImageTruth, or path
        A mapping (its every image is scored; one the submission lacks counts as missed), or a
        synthetic data set's directory, whose images listed in the submission are scored.
    out_dir : path, optional
        Where to write the per-class table (:meth:`MetricResult.to_frame`).
    """
    if not isinstance(submission, Submission):
        submission = read_submission(submission, scheme.num_classes)
    if not isinstance(truth, Mapping):
        truth = TruthDirectory(truth, image_ids=submission.images["image_id"].astype(str).tolist())
    result = competition_map(submission, truth, iou_threshold, scheme.num_classes, progress)
    log.info("competition metric: %s", result)
    if out_dir is not None:
        _write_frame(result.to_frame(scheme), Path(out_dir) / "competition_ap.csv")
    return result


def evaluate_cells(
    Y_true: np.ndarray,
    probabilities: np.ndarray,
    out_dir: str | os.PathLike | None = None,
    threshold: float = 0.5,
    scheme: ClassScheme = HPA2021,
) -> MetricResult:
    """Cell-level AP, and per-class scores at ``threshold``.

    Writes to ``out_dir`` (when given) two tables: ``cell_ap.csv`` (:meth:`MetricResult.to_frame`)
    and ``per_class.csv`` (:func:`classification_table`). Figures are the caller's to draw, e.g.
    :func:`hpa_embed.visualise.plot_confusion_matrices` of that table.

    Parameters
    ----------
    Y_true : bool ``[N, K]``
    probabilities : float ``[N, K]``
    out_dir : path, optional
    threshold : float
        Probabilities ``>= threshold`` count as predicted in ``per_class.csv``.
    scheme : ClassScheme

    Returns
    -------
    MetricResult
    """
    result = cell_level_ap(probabilities, Y_true)
    log.info("cell-level %s", result)
    if out_dir is not None:
        out_dir = Path(out_dir)
        _write_frame(result.to_frame(scheme), out_dir / "cell_ap.csv")
        table = classification_table(Y_true, probabilities, threshold, scheme)
        _write_frame(table, out_dir / "per_class.csv")
    return result


# --------------------------------------------------------------------------- a predictions directory


def evaluate_predictions(
    predictions: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | None = ("test",),
    truth: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    label_mode: str = "true_labels",
    iou_threshold: float = 0.6,
    threshold: float = 0.5,
    scheme: ClassScheme = HPA2021,
    progress: bool = True,
) -> dict:
    """Score the cells of some splits of a predictions directory (``hpa-embed classify``).

    Three scores, each where its truth exists:

    * ``cell_map``: cell-level mAP against the cells' ``label_mode`` labels (their synthetic
      ``true_labels`` by default; tables ``cell_ap.csv`` and ``per_class.csv``);
    * ``image_map``: image-level mAP of the image scores (the union, i.e. maximum, of the image's
      cells) against the image labels (``images_ap.csv``);
    * ``competition_map``: with ``masks`` and ``truth``, the Kaggle metric of a submission of
      these cells cut along ``masks`` against the true masks (``submission.csv``,
      ``competition_ap.csv``).

    Parameters
    ----------
    predictions : path
    out_dir : path, optional
        Where the tables go.
    splits : sequence of str or None
        Score only cells of these splits (default: held-out test images); None scores all.
    truth : path, optional
        Root of a synthetic data set with ``truth/`` (for the competition metric).
    masks : path, optional
        The cell masks the cells were cut along (for the competition metric).
    label_mode : {"true_labels", "image_labels"}
    iou_threshold, threshold : float
    scheme : ClassScheme
    progress : bool

    Returns
    -------
    dict
        ``cells``, ``images`` (counts scored), ``splits`` and ``scores`` (name -> mAP).
    """
    from .classify import aggregate_images, read_predictions
    from .data import cell_targets
    from .submission import build_submission, write_submission

    cells, probabilities = read_predictions(predictions)
    if splits is not None:
        chosen = cells["split"].isin(list(splits)).to_numpy()
        cells, probabilities = cells[chosen].reset_index(drop=True), probabilities[chosen]
    if not len(cells):
        raise DataError(predictions, f"no cell of split(s) {list(splits)} to score")
    out_dir = Path(out_dir) if out_dir is not None else None
    scores: dict[str, float] = {}
    if label_mode == "image_labels" or cells.get("true_labels", pd.Series(dtype=object)).notna().any():
        positions, Y = cell_targets(cells, label_mode, scheme)
        scores["cell_map"] = evaluate_cells(Y, probabilities[positions], out_dir, threshold, scheme).map
    labelled_positions, _ = cell_targets(cells, "image_labels", scheme)
    if len(labelled_positions):
        images, image_scores = aggregate_images(probabilities, cells["image_id"])
        labels = cells.groupby("image_id")["image_labels"].first()
        image_truth = scheme.to_multi_hot([list(labels[i]) for i in images])
        result = cell_level_ap(image_scores, image_truth)
        scores["image_map"] = result.map
        if out_dir is not None:
            _write_frame(result.to_frame(scheme), out_dir / "images_ap.csv")
    if masks is not None and truth is not None:
        submission = build_submission(cells, probabilities, masks, progress=progress)
        if out_dir is not None:
            write_submission(out_dir / "submission.csv", submission)
        scores["competition_map"] = evaluate_submission(submission, truth, out_dir, iou_threshold, scheme,
                                                        progress).map
    return {"cells": len(cells), "images": int(cells["image_id"].nunique()),
            "splits": list(splits) if splits is not None else None, "scores": scores}
