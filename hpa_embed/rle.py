"""Cell masks as Kaggle RLE strings: COCO run-length encoding, zlib, base64.

A cell's mask travels as the Kaggle HPA 2021 competition encoded it: the binary mask's COCO
run-length encoding (column-major run lengths, starting with a run of zeros) in pycocotools'
compressed string form (``counts``), zlib-compressed at level 9, then base64 (ASCII). The
output is byte-for-byte what the competition's sample code produced with pycocotools;
pycocotools itself is not needed.

:func:`encode_label_mask` encodes every cell of a label mask in one pass over the pixels;
:func:`decode_binary_mask` undoes :func:`encode_binary_mask`; :func:`decode_mask_runs` gives a
mask's runs without drawing it. Text that is not such a mask, or not one of the size given, raises
:class:`RleError`.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from .io import HpaEmbedError

__all__ = [
    "RleError",
    "encode_binary_mask",
    "decode_binary_mask",
    "encode_label_mask",
    "decode_mask_runs",
    "rle_to_counts",
]

# A COCO string value takes at most 12 six-bit characters here (|value| < 2**59), which keeps
# the decoder's shifts inside int64.
_MAX_CHARS_PER_VALUE = 12


class RleError(HpaEmbedError, ValueError):
    """Text that is not a Kaggle RLE mask (base64 of zlib of COCO counts) of the size given."""


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
    RleError
        For a character outside the encoding, a truncated value or a negative run length.
    """
    if isinstance(counts_string, str):
        if not counts_string.isascii():
            raise RleError("RLE counts hold a character outside '0'..'o'")
        counts_string = counts_string.encode("ascii")
    chars = np.frombuffer(counts_string, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if chars.min() < 0 or chars.max() > 63:
        raise RleError("RLE counts hold a character outside '0'..'o'")
    more = (chars & 0x20) != 0
    if more[-1]:
        raise RleError("RLE counts end in the middle of a value")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_CHARS_PER_VALUE:
        raise RleError("RLE counts hold a value too large for any image")
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
        raise RleError("RLE counts hold a negative run length")
    return counts


# --------------------------------------------------------------------------- masks <-> RLE


def _pack(counts_string: bytes) -> str:
    return base64.b64encode(zlib.compress(counts_string, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def _unpack(rle: str) -> bytes:
    try:
        compressed = base64.b64decode(rle, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RleError(f"mask is not valid base64 ({error})") from None
    try:
        return zlib.decompress(compressed)
    except zlib.error as error:
        raise RleError(f"mask is not zlib-compressed ({error})") from None


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


def _decode_counts(rle: str, height: int, width: int) -> np.ndarray:
    """Run lengths (int64 ``[M]``) of Kaggle RLE text, checked to cover ``height * width`` pixels."""
    counts = rle_to_counts(_unpack(rle))
    if int(counts.sum()) != height * width:
        raise RleError(
            f"mask runs cover {int(counts.sum())} pixels, not {height} x {width} = {height * width}"
        )
    return counts


def decode_mask_runs(rle: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs of ones of an RLE mask, as flat column-major pixel ranges.

    Returns
    -------
    starts, lengths : int64 ``[R]``
        Pixel ``p`` (column-major: ``p = x * height + y``) is inside when
        ``starts[i] <= p < starts[i] + lengths[i]`` for some ``i``.

    Raises
    ------
    RleError
        When the text is not base64, not zlib, not a COCO counts string, or its runs do not
        cover ``height * width`` pixels.
    """
    counts = _decode_counts(rle, height, width)
    ends = np.cumsum(counts)
    return ends[0::2][: len(counts[1::2])], counts[1::2]


def decode_binary_mask(rle: str, height: int, width: int) -> np.ndarray:
    """Decode :func:`encode_binary_mask` text back to bool ``[height, width]``.

    Raises :class:`RleError` as :func:`decode_mask_runs`.
    """
    counts = _decode_counts(rle, height, width)
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape((height, width), order="F")
