"""Evaluation: object matching, the Kaggle HPA 2021 metric, cell-level AP, confusion matrices.

Segmentation: :func:`mask_iou` computes the IoU of every (true, predicted) object pair in one
pass over the image, :func:`match_objects` pairs them one-to-one, and :func:`object_f1`
summarises a segmentation against the truth (precision, recall, F1 at an IoU threshold, mean IoU
of matches).

Classification: :func:`competition_map` scores a :class:`~hpa_embed.submission.Submission`
against true cell masks and labels as the competition did (per-class AP over (mask, label,
confidence) predictions, a true positive needing IoU >= 0.6 with an unmatched true cell of the
class); :func:`cell_level_ap` is the same AP when predicted and true cells coincide.
:func:`classification_table` and :func:`plot_confusion_matrices` give per-class precision,
recall and F1 and the 2x2 confusion matrix of every class at a threshold. See
``docs/evaluation.md``.
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
from .submission import Submission, decode_mask_runs, read_submission

__all__ = [
    "mask_iou",
    "match_objects",
    "ObjectScores",
    "object_f1",
    "ImageTruth",
    "TruthDirectory",
    "MetricResult",
    "average_precision",
    "competition_map",
    "cell_level_ap",
    "classification_table",
    "plot_confusion_matrices",
    "evaluate_submission",
    "evaluate_cells",
]

log = logging.getLogger(__name__)


def _check_pair(true_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true_mask = np.asarray(true_mask)
    pred_mask = np.asarray(pred_mask)
    if true_mask.shape != pred_mask.shape:
        raise ValueError(f"masks differ in shape: true {true_mask.shape}, pred {pred_mask.shape}")
    for name, mask in (("true", true_mask), ("pred", pred_mask)):
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise ValueError(f"{name} mask must hold integer ids, got {mask.dtype}")
        if mask.size and mask.min() < 0:
            raise ValueError(f"{name} mask has negative ids")
    return true_mask.ravel(), pred_mask.ravel()


def _compact_ids(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids of ``flat`` with 0 always first, and each pixel's index among them."""
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    top = int(flat.max()) if flat.size else 0
    if top <= max(flat.size, 1 << 16):
        # a lookup table no larger than the image: linear time, where np.unique would sort
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = True
        ids = np.flatnonzero(present).astype(flat.dtype)
        return ids, (np.cumsum(present) - 1)[flat]
    ids, index = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids, index = np.concatenate([np.zeros(1, ids.dtype), ids]), index + 1
    return ids, index


def mask_iou(
    true_mask: np.ndarray, pred_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every labelled object of ``true_mask`` and of ``pred_mask``.

    One joint histogram of (true id, pred id) pixel pairs (``np.bincount`` over compacted ids)
    gives all intersections; areas come from its margins. Ids need not be consecutive; up to
    the number of pixels (or 65536) they are compacted through a lookup table, beyond by sorting.

    Parameters
    ----------
    true_mask, pred_mask : int ``[H, W]``
        Label masks, 0 = background.

    Returns
    -------
    iou : float64 ``[n_true, n_pred]``
    true_ids : ``[n_true]``, sorted object ids of ``true_mask`` (rows of ``iou``)
    pred_ids : ``[n_pred]``, sorted object ids of ``pred_mask`` (columns)
    """
    true_flat, pred_flat = _check_pair(true_mask, pred_mask)
    # compact ids (0 stays at index 0) so the histogram is (n_true+1) x (n_pred+1)
    true_ids, true_index = _compact_ids(true_flat)
    pred_ids, pred_index = _compact_ids(pred_flat)
    n_true, n_pred = len(true_ids), len(pred_ids)
    joint = np.bincount(true_index * n_pred + pred_index, minlength=n_true * n_pred)
    joint = joint.reshape(n_true, n_pred).astype(np.float64)
    true_area = joint.sum(axis=1)[1:, None]
    pred_area = joint.sum(axis=0)[None, 1:]
    intersection = joint[1:, 1:]
    union = true_area + pred_area - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return iou, true_ids[1:], pred_ids[1:]


def match_objects(
    true_mask: np.ndarray, pred_mask: np.ndarray, iou_threshold: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of objects with IoU >= ``iou_threshold``, greedy by IoU.

    Pairs are taken highest IoU first, each object used at most once. For thresholds above 0.5
    this is the unique matching (an object cannot overlap two others by more than half).

    Returns
    -------
    true_ids, pred_ids : ``[n_matches]``
        Matched object ids, in decreasing IoU order.
    ious : float64 ``[n_matches]``
    """
    iou, true_ids, pred_ids = mask_iou(true_mask, pred_mask)
    rows, cols = np.nonzero(iou >= iou_threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_true, used_pred = set(), set()
    matches = []
    for row, col in zip(rows[order], cols[order]):
        if row in used_true or col in used_pred:
            continue
        used_true.add(row)
        used_pred.add(col)
        matches.append((row, col))
    if not matches:
        empty = np.zeros(0, dtype=true_ids.dtype)
        return empty, np.zeros(0, dtype=pred_ids.dtype), np.zeros(0)
    rows, cols = np.array(matches).T
    return true_ids[rows], pred_ids[cols], iou[rows, cols]


@dataclass(frozen=True)
class ObjectScores:
    """Object-level agreement of a predicted mask with the truth.

    Attributes
    ----------
    precision, recall, f1 : float
        Matched / predicted, matched / true, and their harmonic mean (1.0 when both masks are
        empty, 0.0 when only one is).
    mean_iou : float
        Mean IoU of the matched pairs (nan without matches).
    n_true, n_pred, n_matched : int
    """

    precision: float
    recall: float
    f1: float
    mean_iou: float
    n_true: int
    n_pred: int
    n_matched: int


def object_f1(
    true_mask: np.ndarray, pred_mask: np.ndarray, iou_threshold: float = 0.6
) -> ObjectScores:
    """Precision, recall and F1 of object matching at ``iou_threshold``, and the matches' mean IoU.

    Scores over several fields: sum their ``n_true``, ``n_pred`` and ``n_matched``.
    """
    true_flat, pred_flat = _check_pair(true_mask, pred_mask)
    n_true = int(np.count_nonzero(np.bincount(true_flat)[1:]))
    n_pred = int(np.count_nonzero(np.bincount(pred_flat)[1:]))
    _, _, ious = match_objects(true_mask, pred_mask, iou_threshold)
    n_matched = len(ious)
    if n_true == 0 and n_pred == 0:
        precision = recall = f1 = 1.0
    else:
        precision = n_matched / n_pred if n_pred else 0.0
        recall = n_matched / n_true if n_true else 0.0
        f1 = 2 * n_matched / (n_true + n_pred)
    mean_iou = float(ious.mean()) if n_matched else float("nan")
    return ObjectScores(precision, recall, f1, mean_iou, n_true, n_pred, n_matched)


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

    Reads ``<root>/truth/cells.csv`` (see :func:`hpa_embed.synthetic.read_truth`) at once and
    ``<root>/truth/<ID>_cellmask.png`` (or ``.npz``) when an image is asked for, so a set of
    thousands of 2048² fields is never in memory at once. The images are those with a mask file.
    """

    def __init__(self, root: str | os.PathLike):
        from .synthetic import read_truth

        self.root = Path(root)
        self._truth_dir = self.root / "truth"
        table = read_truth(self.root)
        self._labels: dict[str, dict[int, list[int]]] = {}
        for image_id, cell_id, labels in zip(table["image_id"], table["cell_id"], table["labels"]):
            self._labels.setdefault(str(image_id), {})[int(cell_id)] = list(labels)
        self._masks = {}
        for suffix in (".npz", ".png"):  # .png wins when both exist
            for path in self._truth_dir.glob(f"*_cellmask{suffix}"):
                self._masks[path.name[: -len(f"_cellmask{suffix}")]] = path
        missing = sorted(set(self._labels) - set(self._masks))
        if missing:
            raise DataError(self._truth_dir / f"{missing[0]}_cellmask.png",
                            f"missing true cell mask ({len(missing)} labelled image(s) have none)")
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


# --------------------------------------------------------------------------- confusion matrices


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


def plot_confusion_matrices(
    Y_true: np.ndarray,
    Y_pred: np.ndarray,
    path: str | os.PathLike,
    scheme: ClassScheme = HPA2021,
    threshold: float = 0.5,
    columns: int = 5,
) -> Path:
    """Draw one 2x2 confusion matrix per class (true rows, predicted columns) as a PNG grid.

    Cells show counts; the colour is the fraction of the true row, so that rare classes (a few
    positives among thousands of negatives) read as clearly as common ones.

    Parameters
    ----------
    Y_true, Y_pred, threshold, scheme
        As :func:`classification_table`.
    path : path
        The PNG, written atomically.
    columns : int
        Panels per row of the grid.
    """
    from matplotlib.figure import Figure

    from .visualise import save_figure

    table = classification_table(Y_true, Y_pred, threshold, scheme)
    n_classes = len(table)
    rows = -(-n_classes // columns)
    figure = Figure(figsize=(2.3 * columns, 2.5 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, record in zip(axes, table.itertuples(index=False)):
        counts = np.array([[record.tn, record.fp], [record.fn, record.tp]])
        fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if fraction[i, j] > 0.6 else "black")
        ax.set_xticks([0, 1], ["neg", "pos"], fontsize=7)
        ax.set_yticks([0, 1], ["neg", "pos"], fontsize=7)
        f1 = "n/a" if np.isnan(record.f1) else f"{record.f1:.2f}"
        ax.set_title(f"{record.class_id} {record.name}\nF1 {f1}", fontsize=8)
    for ax in axes[n_classes:]:
        ax.set_axis_off()
    figure.supxlabel("predicted", fontsize=9)
    figure.supylabel("true", fontsize=9)
    return save_figure(figure, path)


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
        A synthetic data set's directory (read as a :class:`TruthDirectory`) or a mapping.
    out_dir : path, optional
        Where to write the per-class table (:meth:`MetricResult.to_frame`).
    """
    if not isinstance(submission, Submission):
        submission = read_submission(submission, scheme.num_classes)
    if not isinstance(truth, Mapping):
        truth = TruthDirectory(truth)
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
    """Cell-level AP, and per-class scores and confusion matrices at ``threshold``.

    Writes to ``out_dir`` (when given): ``cell_ap.csv`` (:meth:`MetricResult.to_frame`),
    ``per_class.csv`` (:func:`classification_table`) and ``confusion_matrices.png``.

    Parameters
    ----------
    Y_true : bool ``[N, K]``
    probabilities : float ``[N, K]``
    """
    result = cell_level_ap(probabilities, Y_true)
    log.info("cell-level %s", result)
    if out_dir is not None:
        out_dir = Path(out_dir)
        _write_frame(result.to_frame(scheme), out_dir / "cell_ap.csv")
        table = classification_table(Y_true, probabilities, threshold, scheme)
        _write_frame(table, out_dir / "per_class.csv")
        plot_confusion_matrices(Y_true, probabilities, out_dir / "confusion_matrices.png", scheme, threshold)
    return result
