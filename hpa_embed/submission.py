"""The Kaggle HPA 2021 submission: cell-level predictions in memory and as the competition CSV.

A :class:`Submission` holds predictions in memory as two tables (images, and one row per
(image, cell, label)); :func:`write_submission` / :func:`read_submission` move it to and from the
Kaggle CSV ``ID,ImageWidth,ImageHeight,PredictionString``, the string being repeated
``label confidence mask`` triples, each mask a Kaggle RLE string (:mod:`hpa_embed.rle`).
:func:`predictions_from_cells` builds one image's predictions from its cell mask and a per-cell
probability matrix; :func:`build_submission` does it for every image of a cell table.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .io import DataError, atomic_path, find_mask_file, read_mask
from .labels import HPA2021
from .rle import decode_mask_runs, encode_label_mask

__all__ = [
    "SUBMISSION_COLUMNS",
    "Submission",
    "predictions_from_cells",
    "build_submission",
    "write_submission",
    "read_submission",
]

log = logging.getLogger(__name__)

#: The header of a Kaggle HPA 2021 submission file.
SUBMISSION_COLUMNS: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")

_IMAGE_COLUMNS = ("image_id", "width", "height")
_PREDICTION_COLUMNS = ("image_id", "cell", "label", "confidence", "rle")


@dataclass(frozen=True)
class Submission:
    """Cell-level predictions for a set of images, as the Kaggle submission holds them.

    Two tables, so that an image without cells (an empty ``PredictionString``, which Kaggle
    still requires) is kept.

    Attributes
    ----------
    images : pandas.DataFrame
        One row per image: ``image_id`` (str, unique), ``width``, ``height`` (int64).
    predictions : pandas.DataFrame
        One row per (image, cell, label): ``image_id`` (str), ``cell`` (int64; the cell's id in
        its image: the label-mask id, or for a read file the order of first appearance of the
        mask, from 1), ``label`` (int64 class id), ``confidence`` (float64 in [0, 1]) and
        ``rle`` (str, :func:`~hpa_embed.rle.encode_binary_mask` of the cell). A cell with
        several labels has several rows with the same ``rle``. Row order is kept; it breaks
        confidence ties.
    """

    images: pd.DataFrame
    predictions: pd.DataFrame

    def __post_init__(self):
        for name, frame, columns in (("images", self.images, _IMAGE_COLUMNS),
                                     ("predictions", self.predictions, _PREDICTION_COLUMNS)):
            missing = [column for column in columns if column not in frame.columns]
            if missing:
                raise ValueError(f"Submission.{name} lacks column(s) {missing}; expected {list(columns)}")
        duplicated = self.images["image_id"][self.images["image_id"].duplicated()]
        if len(duplicated):
            raise ValueError(f"Submission.images lists image {duplicated.iloc[0]!r} twice")
        unknown = ~self.predictions["image_id"].isin(self.images["image_id"])
        if unknown.any():
            raise ValueError(
                f"prediction for image {self.predictions['image_id'][unknown].iloc[0]!r}, "
                "which Submission.images does not list"
            )

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def __repr__(self) -> str:
        return f"Submission({len(self.images)} images, {len(self.predictions)} predictions)"

    @classmethod
    def concat(cls, parts: Iterable[Submission]) -> Submission:
        """Join the submissions of disjoint sets of images, in order."""
        parts = list(parts)
        if not parts:
            return cls(_empty_images(), _empty_predictions())
        return cls(
            pd.concat([part.images for part in parts], ignore_index=True),
            pd.concat([part.predictions for part in parts], ignore_index=True),
        )


def _empty_images() -> pd.DataFrame:
    return pd.DataFrame({"image_id": pd.Series(dtype=str), "width": pd.Series(dtype=np.int64),
                         "height": pd.Series(dtype=np.int64)})


def _empty_predictions() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": pd.Series(dtype=str), "cell": pd.Series(dtype=np.int64),
        "label": pd.Series(dtype=np.int64), "confidence": pd.Series(dtype=np.float64),
        "rle": pd.Series(dtype=str),
    })


def predictions_from_cells(
    image_id: str,
    cell_mask: np.ndarray,
    probabilities: np.ndarray,
    cell_ids: Sequence[int] | None = None,
    min_confidence: float = 0.0,
) -> Submission:
    """One image's predictions: every (cell, class) with its probability as the confidence.

    The competition's AP rewards listing every class of every cell with its confidence (a low
    confidence costs little), so by default nothing is dropped; ``min_confidence`` trims the
    file by dropping pairs below it.

    Parameters
    ----------
    image_id : str
    cell_mask : int ``[H, W]``
        The image's cell label mask, 0 = background.
    probabilities : float ``[n_cells, K]``
        Per-cell class probabilities in [0, 1].
    cell_ids : sequence of int ``[n_cells]``, optional
        The mask id of each row of ``probabilities``; by default the mask's ids, sorted.
    min_confidence : float
        Keep (cell, class) pairs with probability >= this.

    Returns
    -------
    Submission
        One image; rows ordered by cell (as ``cell_ids``), then class.
    """
    encoded = encode_label_mask(cell_mask)  # checks the mask too
    probabilities = np.asarray(probabilities, dtype=np.float64)
    cell_ids = np.array(sorted(encoded) if cell_ids is None else cell_ids, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(cell_ids):
        raise ValueError(
            f"image {image_id!r}: probabilities must be [n_cells, K] with one row per cell "
            f"({len(cell_ids)} cells), got shape {probabilities.shape}"
        )
    missing = [int(i) for i in cell_ids if int(i) not in encoded]
    if missing:
        raise ValueError(f"image {image_id!r}: cell id(s) {missing[:5]} are not in the cell mask")
    if probabilities.size and (not np.isfinite(probabilities).all() or probabilities.min() < 0
                               or probabilities.max() > 1):
        raise ValueError(f"image {image_id!r}: probabilities must lie in [0, 1]")
    rows, labels = np.nonzero(probabilities >= min_confidence)
    height, width = np.shape(cell_mask)
    images = pd.DataFrame({"image_id": [str(image_id)], "width": np.array([width], dtype=np.int64),
                           "height": np.array([height], dtype=np.int64)})
    predictions = pd.DataFrame({
        "image_id": pd.Series([str(image_id)] * len(rows), dtype=str),
        "cell": cell_ids[rows],
        "label": labels.astype(np.int64),
        "confidence": probabilities[rows, labels],
        "rle": pd.Series([encoded[int(i)] for i in cell_ids[rows]], dtype=str),
    })
    return Submission(images, predictions)


def build_submission(
    cells: pd.DataFrame,
    probabilities: np.ndarray,
    masks_dir: str | os.PathLike,
    image_ids: Sequence[str] | None = None,
    min_confidence: float = 0.0,
    progress: bool = True,
) -> Submission:
    """Predictions for every image of a cell table (e.g. a CellStore's ``cells``).

    Parameters
    ----------
    cells : pandas.DataFrame
        One row per cell with ``image_id`` and ``mask_id`` (the cell's id in its image's mask).
    probabilities : float ``[n_cells, K]``
        Aligned with the rows of ``cells``.
    masks_dir : path
        Holds ``<image_id>_cellmask.png`` (or ``.npz``) for every image.
    image_ids : sequence of str, optional
        The images to list, in order (Kaggle wants every test image, also those where no cell
        was found: their mask gives the size and they get an empty string). Default: the
        images of ``cells`` in order of appearance.
    min_confidence : float
        See :func:`predictions_from_cells`.
    progress : bool
        Show a tqdm bar.

    Raises
    ------
    DataError
        When an image's mask is missing or unreadable: a submission without it is not valid.
    """
    probabilities = np.asarray(probabilities)
    if len(probabilities) != len(cells):
        raise ValueError(f"{len(probabilities)} probability rows for {len(cells)} cells")
    masks_dir = Path(masks_dir)
    image_column = cells["image_id"].astype(str).to_numpy()
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be [n_cells, K], got shape {probabilities.shape}")
    rows_of = pd.Series(np.arange(len(cells))).groupby(image_column).indices
    if image_ids is None:
        image_ids = list(pd.unique(image_column))
    parts = []
    for image_id in tqdm(image_ids, desc="submission", unit="image", disable=not progress):
        rows = rows_of.get(image_id, np.zeros(0, dtype=np.int64))
        mask_path = find_mask_file(masks_dir, image_id)
        cell_mask = read_mask(mask_path)
        try:
            parts.append(predictions_from_cells(
                image_id, cell_mask, probabilities[rows],
                cells["mask_id"].to_numpy()[rows], min_confidence,
            ))
        except ValueError as error:
            raise DataError(mask_path, str(error)) from error
    submission = Submission.concat(parts)
    log.info("built a submission: %d images, %d predictions", len(submission.images),
             len(submission.predictions))
    return submission


def _format_confidence(value: float) -> str:
    # repr round-trips exactly, so ties (and their order) survive writing and reading
    return repr(float(value))


def write_submission(path: str | os.PathLike, submission: Submission) -> Path:
    """Write a Kaggle submission CSV (``ID,ImageWidth,ImageHeight,PredictionString``), atomically.

    Images keep the order of ``submission.images``; an image's triples keep the order of its
    rows in ``submission.predictions``.
    """
    path = Path(path)
    predictions = submission.predictions
    strings = {}
    if len(predictions):
        triples = (predictions["label"].astype(np.int64).astype(str) + " "
                   + predictions["confidence"].map(_format_confidence) + " "
                   + predictions["rle"].astype(str))
        strings = triples.groupby(predictions["image_id"].astype(str).to_numpy(), sort=False).agg(" ".join)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="ascii") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(SUBMISSION_COLUMNS)
            for image_id, width, height in zip(submission.images["image_id"], submission.images["width"],
                                               submission.images["height"]):
                writer.writerow([image_id, int(width), int(height), strings.get(str(image_id), "")])
    log.info("wrote %s (%d images, %d predictions)", path, len(submission.images), len(predictions))
    return path


def _parse_prediction_string(text: str, width: int, height: int, num_classes: int) -> list[tuple]:
    """``label confidence mask`` triples -> [(label, confidence, rle)]; ValueError when malformed."""
    tokens = text.split()
    if len(tokens) % 3:
        raise ValueError(f"PredictionString has {len(tokens)} tokens, not a multiple of 3 "
                         "(label confidence mask triples)")
    triples = []
    checked: set[str] = set()
    for index in range(0, len(tokens), 3):
        label_text, confidence_text, rle = tokens[index : index + 3]
        triple = index // 3 + 1
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"triple {triple}: label {label_text!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise ValueError(f"triple {triple}: label {label} is outside 0..{num_classes - 1}")
        try:
            confidence = float(confidence_text)
        except ValueError:
            raise ValueError(f"triple {triple}: confidence {confidence_text!r} is not a number") from None
        if not 0.0 <= confidence <= 1.0:  # also refuses nan
            raise ValueError(f"triple {triple}: confidence {confidence_text} is outside [0, 1]")
        if rle not in checked:
            try:
                decode_mask_runs(rle, height, width)
            except ValueError as error:
                raise ValueError(f"triple {triple}: {error}") from None
            checked.add(rle)
        triples.append((label, confidence, rle))
    return triples


def read_submission(path: str | os.PathLike, num_classes: int = HPA2021.num_classes) -> Submission:
    """Read and check a Kaggle submission CSV.

    Every mask is checked (base64, zlib, COCO counts covering exactly width x height pixels)
    without being drawn. Cells are numbered per image by first appearance of their mask, from 1.

    Raises
    ------
    DataError
        Naming the file and line: wrong header, duplicate ID, bad size, a malformed triple, bad
        base64/zlib/RLE, a label outside ``0..num_classes-1``, a confidence outside [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        # the C parser has no field-size limit (a PredictionString easily exceeds csv's 128 kB)
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(path, f"unreadable CSV ({error})") from error
    if tuple(table.columns) != SUBMISSION_COLUMNS:
        raise DataError(path, f"header {list(table.columns)} is not {list(SUBMISSION_COLUMNS)}", 1)
    image_rows, prediction_rows = [], []
    seen: dict[str, int] = {}
    for index, (image_id, width_text, height_text, text) in enumerate(table.itertuples(index=False)):
        line = index + 2
        if not image_id:
            raise DataError(path, "empty ID", line)
        if image_id in seen:
            raise DataError(path, f"duplicate ID {image_id!r} (first on line {seen[image_id]})", line)
        seen[image_id] = line
        try:
            width, height = int(width_text), int(height_text)
        except ValueError:
            raise DataError(path, f"image size {width_text!r} x {height_text!r} is not integer",
                            line) from None
        if width <= 0 or height <= 0:
            raise DataError(path, f"image size {width} x {height} is not positive", line)
        try:
            triples = _parse_prediction_string(text, width, height, num_classes)
        except ValueError as error:
            raise DataError(path, f"image {image_id!r}: {error}", line) from None
        image_rows.append((image_id, width, height))
        cell_of: dict[str, int] = {}
        for label, confidence, rle in triples:
            cell = cell_of.setdefault(rle, len(cell_of) + 1)
            prediction_rows.append((image_id, cell, label, confidence, rle))
    images = _empty_images()
    predictions = _empty_predictions()
    if image_rows:
        images = pd.DataFrame(image_rows, columns=list(_IMAGE_COLUMNS)).astype(
            {"image_id": str, "width": np.int64, "height": np.int64})
    if prediction_rows:
        predictions = pd.DataFrame(prediction_rows, columns=list(_PREDICTION_COLUMNS)).astype(
            {"image_id": str, "cell": np.int64, "label": np.int64, "confidence": np.float64, "rle": str})
    return Submission(images, predictions)
