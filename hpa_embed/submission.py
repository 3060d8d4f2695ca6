"""Cell masks as Kaggle RLE strings, and the HPA 2021 submission file.

A cell's mask travels as the Kaggle HPA 2021 competition encoded it: the binary mask's COCO
run-length encoding (column-major run lengths, starting with a run of zeros) in pycocotools'
compressed string form (``counts``), zlib-compressed at level 9, then base64 (ASCII). The
output is byte-for-byte what the competition's sample code produced with pycocotools;
pycocotools itself is not needed.

:func:`encode_label_mask` encodes every cell of a label mask in one pass over the pixels;
:func:`decode_binary_mask` undoes :func:`encode_binary_mask`.

A :class:`Submission` holds predictions in memory as two tables (images, and one row per
(image, cell, label)); :func:`write_submission` / :func:`read_submission` move it to and from the
Kaggle CSV ``ID,ImageWidth,ImageHeight,PredictionString``, the string being repeated
``label confidence mask`` triples. :func:`predictions_from_cells` builds one image's predictions
from its cell mask and a per-cell probability matrix; :func:`build_submission` does it for every
image of a cell table.
"""

from __future__ import annotations

import base64
import binascii
import csv
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .io import DataError, atomic_path, find_mask_file, read_mask
from .labels import HPA2021

__all__ = [
    "encode_binary_mask",
    "decode_binary_mask",
    "encode_label_mask",
    "decode_mask_runs",
    "rle_to_counts",
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
#: Mask file suffixes looked for by :func:`build_submission`, in order.
# A COCO string value takes at most 12 six-bit characters here (|value| < 2**59), which keeps
# the decoder's shifts inside int64.
_MAX_CHARS_PER_VALUE = 12


# --------------------------------------------------------------------------- COCO counts strings


def _counts_to_chars(counts: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO's compressed string form of several run-length lists at once.

    Parameters
    ----------
    counts : int64 ``[M]``
        The run lengths of several masks, one after the other.
    position : int64 ``[M]``
        Index of each run within its own mask's list.

    Returns
    -------
    chars : uint8 ``[total]``
        The characters of all strings, concatenated.
    n_chars : int64 ``[M]``
        Characters written for each run (sum them per mask to split ``chars``).
    """
    # pycocotools' rleToString: from the fourth value on (``i > 2``, not ``i >= 2``), a value is
    # stored as the difference to the one two places back (same colour of run).
    values = counts.astype(np.int64)
    delta = position > 2
    values[delta] -= counts[np.flatnonzero(delta) - 2]
    # Then 5 bits per character, least significant first; bit 0x20 says "more follows", and the
    # last character's bit 0x10 is the sign. Characters are offset by 48 ('0').
    digits = []
    active = np.ones(len(values), dtype=bool)
    n_chars = np.zeros(len(values), dtype=np.int64)
    while active.any():
        chunk = values & 0x1F
        values = values >> 5  # arithmetic shift: negative deltas end in a run of -1
        more = np.where(chunk & 0x10, values != -1, values != 0)
        digits.append((chunk | (more.astype(np.int64) << 5)) + 48)
        n_chars += active
        active &= more
    if not digits:
        return np.zeros(0, dtype=np.uint8), n_chars
    table = np.stack(digits, axis=1).astype(np.uint8)
    keep = np.arange(table.shape[1])[None, :] < n_chars[:, None]
    return table[keep], n_chars  # row-major boolean indexing keeps the run order


def rle_to_counts(counts_string: bytes | str) -> np.ndarray:
    """Parse a COCO compressed ``counts`` string into run lengths.

    Parameters
    ----------
    counts_string : bytes or str
        As pycocotools' ``mask.encode(...)["counts"]``.

    Returns
    -------
    int64 ``[M]``
        Alternating run lengths in column-major order, starting with a run of zeros.

    Raises
    ------
    ValueError
        For a character outside the encoding, a truncated value or a negative run length.
    """
    if isinstance(counts_string, str):
        counts_string = counts_string.encode("ascii", errors="replace")
    chars = np.frombuffer(counts_string, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if chars.min() < 0 or chars.max() > 63:
        raise ValueError("RLE counts hold a character outside '0'..'o'")
    more = (chars & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end in the middle of a value")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_CHARS_PER_VALUE:
        raise ValueError("RLE counts hold a value too large for any image")
    value_of_char = np.repeat(np.arange(len(starts)), lengths)
    shift = 5 * (np.arange(len(chars)) - starts[value_of_char])
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    # Undo the delta of rleFrString: cnts[m] += cnts[m - 2] for m > 2, i.e. a running sum along
    # each colour from index 2 (zeros) and index 1 (ones) on.
    counts = values.copy()
    counts[2::2] = np.cumsum(values[2::2])
    counts[1::2] = np.cumsum(values[1::2])
    if counts.min() < 0:
        raise ValueError("RLE counts hold a negative run length")
    return counts


# --------------------------------------------------------------------------- masks <-> RLE


def _pack(counts_string: bytes) -> str:
    return base64.b64encode(zlib.compress(counts_string, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def _unpack(rle: str) -> bytes:
    try:
        compressed = base64.b64decode(rle, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"mask is not valid base64 ({error})") from None
    try:
        return zlib.decompress(compressed)
    except zlib.error as error:
        raise ValueError(f"mask is not zlib-compressed ({error})") from None


def _check_label_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D [H, W], got shape {mask.shape}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise ValueError(f"a label mask must hold integer ids, got {mask.dtype}")
    return mask


def encode_label_mask(mask: np.ndarray) -> dict[int, str]:
    """Encode every object of a label mask as a Kaggle RLE string, in one pass.

    The mask is flattened once in column-major order and cut into runs of equal ids; the runs
    (a few per cell and column, far fewer than pixels) are sorted by id, and each id's run
    lengths follow from its runs' starts and ends.

    Parameters
    ----------
    mask : int ``[H, W]``
        Label mask, 0 = background.

    Returns
    -------
    dict of int to str
        Object id -> :func:`encode_binary_mask` of ``mask == id``, for every id present, sorted.
    """
    mask = _check_label_mask(mask)
    flat = mask.ravel(order="F")
    n_pixels = flat.size
    if n_pixels == 0:
        return {}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    run_start = np.concatenate([[0], change])
    run_end = np.append(change, n_pixels)
    run_id = flat[run_start]
    keep = run_id != 0
    order = np.argsort(run_id[keep], kind="stable")  # by id, then position
    run_start, run_end, run_id = run_start[keep][order], run_end[keep][order], run_id[keep][order]
    if run_id.size == 0:
        return {}
    first = np.concatenate([[True], run_id[1:] != run_id[:-1]])
    last = np.append(first[1:], True)
    # Per object: [zeros before run 1, run 1, zeros before run 2, run 2, ..., trailing zeros]; the
    # trailing zeros only when the object does not reach the last pixel (as pycocotools).
    previous_end = np.where(first, 0, np.roll(run_end, 1))
    counts = np.empty(2 * len(run_start), dtype=np.int64)
    counts[0::2] = run_start - previous_end
    counts[1::2] = run_end - run_start
    tail = n_pixels - run_end[last]
    has_tail = tail > 0
    counts = np.insert(counts, 2 * (np.flatnonzero(last) + 1)[has_tail], tail[has_tail])
    # position of each count within its object's list
    object_length = 2 * np.diff(np.append(np.flatnonzero(first), len(run_start))) + has_tail
    object_offset = np.concatenate([[0], np.cumsum(object_length)[:-1]])
    position = np.arange(len(counts)) - np.repeat(object_offset, object_length)
    chars, n_chars = _counts_to_chars(counts, position)
    string_end = np.cumsum(np.add.reduceat(n_chars, object_offset))
    data = chars.tobytes()
    bounds = np.concatenate([[0], string_end]).tolist()
    return {
        int(object_id): _pack(data[start:stop])
        for object_id, start, stop in zip(run_id[first].tolist(), bounds[:-1], bounds[1:])
    }


def encode_binary_mask(mask: np.ndarray) -> str:
    """Encode a binary mask as the Kaggle HPA 2021 competition did.

    COCO RLE counts string (pycocotools ``mask.encode``) -> zlib (level 9) -> base64.

    Parameters
    ----------
    mask : bool ``[H, W]`` (any dtype; nonzero = inside)

    Returns
    -------
    str
        ASCII base64 text.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D [H, W], got shape {mask.shape}")
    encoded = encode_label_mask(mask.astype(bool).view(np.uint8))
    if encoded:
        return encoded[1]
    # an empty mask is one run of zeros over the whole image
    chars, _ = _counts_to_chars(np.array([mask.size], dtype=np.int64), np.zeros(1, dtype=np.int64))
    return _pack(chars.tobytes())


def decode_mask_runs(rle: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs of ones of an RLE mask, as flat column-major pixel ranges.

    Returns
    -------
    starts, lengths : int64 ``[R]``
        Pixel ``p`` (column-major: ``p = x * height + y``) is inside when
        ``starts[i] <= p < starts[i] + lengths[i]`` for some ``i``.

    Raises
    ------
    ValueError
        When the text is not base64, not zlib, not a COCO counts string, or its runs do not
        cover ``height * width`` pixels.
    """
    counts = rle_to_counts(_unpack(rle))
    if int(counts.sum()) != height * width:
        raise ValueError(
            f"mask runs cover {int(counts.sum())} pixels, not {height} x {width} = {height * width}"
        )
    ends = np.cumsum(counts)
    return ends[0::2][: len(counts[1::2])], counts[1::2]


def decode_binary_mask(rle: str, height: int, width: int) -> np.ndarray:
    """Decode :func:`encode_binary_mask` text back to bool ``[height, width]``."""
    counts = rle_to_counts(_unpack(rle))
    if int(counts.sum()) != height * width:
        raise ValueError(
            f"mask runs cover {int(counts.sum())} pixels, not {height} x {width} = {height * width}"
        )
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape((height, width), order="F")


# --------------------------------------------------------------------------- submissions


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
        ``rle`` (str, :func:`encode_binary_mask` of the cell). A cell with several labels has
        several rows with the same ``rle``. Row order is kept; it breaks confidence ties.
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
    cell_mask = _check_label_mask(cell_mask)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    encoded = encode_label_mask(cell_mask)
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
    height, width = cell_mask.shape
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
