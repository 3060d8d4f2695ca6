"""Segmentation metrics: object IoU, one-to-one matching, object F1, cells matched to true cells.

:func:`mask_iou` computes the IoU of every (true, predicted) object pair in one pass over the
image; :func:`match_objects` pairs them one-to-one; :func:`object_f1` summarises a segmentation
against the truth (precision, recall, F1 at an IoU threshold, mean IoU of matches);
:func:`match_cells` gives each cell of a segmentation the true cell it overlaps best (how cut
cells inherit the labels of synthetic true cells). See ``docs/segmentation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["MATCH_IOU", "mask_iou", "match_objects", "ObjectScores", "object_f1", "match_cells"]

#: The IoU a predicted cell needs with a true cell to inherit its labels (:func:`match_cells`).
MATCH_IOU = 0.5


def _check_pair(true_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as flat arrays, after checking equal shapes and non-negative integer ids."""
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

    Parameters
    ----------
    true_mask, pred_mask : int ``[H, W]``
        Label masks, 0 = background.
    iou_threshold : float

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

    Parameters
    ----------
    true_mask, pred_mask : int ``[H, W]``
        Label masks, 0 = background.
    iou_threshold : float
        As :func:`match_objects`.

    Returns
    -------
    ObjectScores
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


def match_cells(cell_mask: np.ndarray, true_mask: np.ndarray, min_iou: float = MATCH_IOU) -> pd.DataFrame:
    """The true cell that best overlaps each cell of ``cell_mask``.

    Each cell is matched on its own (two cells may name the same true cell when ``min_iou``
    is at most 0.5); of true cells with equal IoU, the lowest id is taken.

    Parameters
    ----------
    cell_mask : int ``[H, W]``
        The predicted (segmented) cells, 0 = background.
    true_mask : int ``[H, W]``
        The true cells, 0 = background.
    min_iou : float
        The IoU a cell needs with its best true cell to be matched to it.

    Returns
    -------
    DataFrame
        ``mask_id`` (int64, every id of ``cell_mask``, sorted), ``true_id`` (int64, the true
        cell with the highest IoU, 0 when none reaches ``min_iou``) and ``iou`` (float64, that
        highest IoU, also when below ``min_iou``).
    """
    iou, true_ids, mask_ids = mask_iou(true_mask, cell_mask)
    # a background row of IoU 0 first: a cell overlapping no true cell (or none at all) gets 0
    iou = np.vstack([np.zeros((1, len(mask_ids))), iou])
    true_ids = np.concatenate([[0], true_ids]).astype(np.int64)
    best = iou.argmax(axis=0)
    best_iou = iou[best, np.arange(len(mask_ids))]
    best_true = np.where(best_iou >= min_iou, true_ids[best], 0)
    return pd.DataFrame({"mask_id": mask_ids.astype(np.int64), "true_id": best_true, "iou": best_iou})
