"""Reading HPA fields of view, masks and label tables; atomic writes; our file headers.

A field of view is four single-channel files ``<ID>_{red,green,blue,yellow}.<ext>`` in one
directory (PNG or TIFF, 8- or 16-bit, also ``.tif.gz`` and OME-TIFF as HPA ships them).
:func:`read_field` returns it as float32 ``[C, H, W]`` in (red, green, blue, yellow) order,
scaled to [0, 1] by dtype. Every file the library writes goes through :func:`atomic_path`.

The files of our own formats (a CellStore's ``store.json``, a checkpoint's ``config.json``, a
CellIndex's ``index.json``, a trainer state file's metadata) carry one kind of JSON header:
``format``, ``version``, ``library_version``, the format's own keys, and optionally ``files``,
the SHA-256 (or size) of files beside it. :func:`write_header` writes one, :func:`read_header`
refuses a file that is missing, not JSON, of another format or version, or whose listed files
are missing or changed.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io as _io
import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .labels import CHANNELS, HPA2018, HPA2021, ClassScheme, get_scheme

__all__ = [
    "HpaEmbedError",
    "DataError",
    "IMAGE_SUFFIXES",
    "atomic_path",
    "HEADER_KEYS",
    "file_sha256",
    "make_header",
    "write_header",
    "parse_header",
    "read_header",
    "find_channel_file",
    "read_image",
    "to_unit_float",
    "read_field",
    "list_field_ids",
    "write_png",
    "MASK_SUFFIXES",
    "find_mask_file",
    "read_mask",
    "write_mask",
    "LabelTable",
    "read_labels",
    "write_labels",
]

#: Channel-file suffixes that are recognised, in the order they are looked for.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".tif", ".tiff", ".tif.gz", ".tiff.gz", ".ome.tif", ".ome.tiff", ".jpg", ".jpeg",
)


class HpaEmbedError(Exception):
    """Base of the library's own errors: bad input or configuration, never a defect of the code.

    The command line reports these as one line and exits with status 2.
    """


class DataError(HpaEmbedError, ValueError):
    """Bad input data: the message names the file (and row, where there is one) and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str, row: int | None = None):
        self.path = Path(path)
        self.problem = problem
        self.row = row
        where = f"{self.path}" + (f", line {row}" if row is not None else "")
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The block writes a file, or makes a directory, at the temporary path. The temporary file
    (or directory) is removed when the block raises, so a crash never leaves a half-written file
    under the final name, and an existing file is untouched until the rename. An existing
    directory is moved aside, replaced by the new one, then deleted (moved back if the rename
    fails).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            _swap_directory(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _swap_directory(new: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- file headers

#: Keys every header holds; a header's body may not use them.
HEADER_KEYS: tuple[str, ...] = ("format", "version", "library_version", "files")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as 64 lowercase hex digits; read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def make_header(format_name: str, version: int, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The header of one of our files: ``{"format", "version", "library_version", **body}``.

    Parameters
    ----------
    format_name : str
        E.g. ``"hpa_embed.cellstore"``.
    version : int
        The version of that format the file follows.
    body : mapping, optional
        JSON-serialisable content of the file; its keys may not be any of :data:`HEADER_KEYS`.
    """
    from . import __version__

    body = dict(body or {})
    clash = sorted(set(body) & set(HEADER_KEYS))
    if clash:
        raise ValueError(f"header keys {clash} are reserved for the header itself")
    return {"format": format_name, "version": int(version), "library_version": __version__, **body}


def write_header(
    path: str | os.PathLike,
    format_name: str,
    version: int,
    body: Mapping[str, Any] | None = None,
    files: Sequence[str] = (),
    large_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a JSON header (:func:`make_header`) atomically; returns what was written.

    Parameters
    ----------
    path : path
        The JSON file, e.g. ``<store>/store.json``.
    format_name, version, body
        As :func:`make_header`.
    files : sequence of str
        Names of files beside ``path``, already written; each is recorded under
        ``"files"`` with its SHA-256, which :func:`read_header` checks.
    large_files : sequence of str
        Names of files beside ``path`` recorded by size only (hashing them on every read would
        cost a full read of each).
    """
    path = Path(path)
    header = make_header(format_name, version, body)
    listed = {name: {"sha256": file_sha256(path.parent / name)} for name in files}
    listed.update({name: {"bytes": (path.parent / name).stat().st_size} for name in large_files})
    if listed:
        header["files"] = listed
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
    return header


def parse_header(
    path: str | os.PathLike,
    text: str | bytes | None,
    format_name: str,
    supported_versions: Collection[int],
    *,
    what: str = "hpa_embed file",
) -> dict[str, Any]:
    """Parse and check a header's JSON text (the content of a header file, or header metadata
    stored inside another file).

    Parameters
    ----------
    path : path
        The file the text came from, named in errors; files listed under ``"files"`` are looked
        for beside it.
    text : str, bytes or None
        The JSON text; None when the file holds no header.
    format_name : str
        The format expected.
    supported_versions : collection of int
        The versions this library reads.
    what : str
        What the file is, for messages (``"cell store"``).

    Returns
    -------
    dict
        The header, ``format``, ``version`` and ``library_version`` included.

    Raises
    ------
    DataError
        No header, invalid JSON, not a JSON object, another format, an unsupported version, or a
        listed file that is missing, of another size or with another SHA-256.
    """
    path = Path(path)
    if text is None:
        raise DataError(path, f"not a {what} (no header)")
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise DataError(path, f"not a {what} (expected a JSON object, got {type(header).__name__})")
    if header.get("format") != format_name:
        raise DataError(path, f"not a {what} (format {header.get('format')!r}, expected {format_name!r})")
    version = header.get("version")
    if type(version) is not int or version not in supported_versions:  # bool is not a version
        raise DataError(
            path,
            f"{what} format version {version!r} is not supported (this library reads "
            f"{', '.join(map(str, sorted(supported_versions)))}; written by hpa_embed "
            f"{header.get('library_version', '?')})",
        )
    files = header.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise DataError(path, "'files' must map file names to {'sha256': ...} or {'bytes': ...}")
    for name, expected in files.items():
        file = path.parent / name
        if not file.is_file():
            raise DataError(file, f"missing (listed in {path.name})")
        size = file.stat().st_size
        if "bytes" in expected and size != expected["bytes"]:
            raise DataError(file, f"size {size} bytes, expected {expected['bytes']}")
        if "sha256" in expected and file_sha256(file) != expected["sha256"]:
            raise DataError(file, "checksum mismatch: the file is corrupt or was changed after saving")
    return header


def read_header(
    path: str | os.PathLike,
    format_name: str,
    supported_versions: Collection[int],
    *,
    what: str = "hpa_embed file",
) -> dict[str, Any]:
    """Read a header written by :func:`write_header` and check it (see :func:`parse_header`).

    A missing file is refused too; its message names a directory left aside by an interrupted
    :func:`atomic_path` directory swap, when there is one.
    """
    path = Path(path)
    if not path.is_file():
        directory = path.parent
        leftovers = sorted(directory.parent.glob(f".{directory.name}.old-*"))
        hint = f"; an interrupted save left {leftovers[0]}, rename it back" if leftovers else ""
        raise DataError(path, f"not found (not a {what}?){hint}")
    try:
        text = path.read_bytes()
    except OSError as error:
        raise DataError(path, f"unreadable ({error})") from error
    return parse_header(path, text, format_name, supported_versions, what=what)


# --------------------------------------------------------------------------- images


def _suffix_cases() -> list[str]:
    """The recognised suffixes in lower and in upper case (``.png``, ``.PNG``)."""
    return [case for suffix in IMAGE_SUFFIXES for case in (suffix, suffix.upper())]


def _channel_files(directory: Path, image_id: str, channel: str) -> list[Path]:
    return [
        directory / f"{image_id}_{channel}{suffix}"
        for suffix in _suffix_cases()
        if (directory / f"{image_id}_{channel}{suffix}").is_file()
    ]


def _missing_channels(directory: Path, image_id: str, missing: Sequence[str]) -> DataError:
    """The error for a field that lacks the files of some channels, naming those it has."""
    present = [channel for channel in CHANNELS if _channel_files(directory, image_id, channel)]
    names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    return DataError(
        directory / f"{image_id}_{missing[0]}.png",
        f"missing {names} channel{'s' * (len(missing) > 1)} of field {image_id!r}: no "
        f"{' or '.join(f'{image_id}_{channel}.*' for channel in missing)} file (suffixes "
        f"{', '.join(IMAGE_SUFFIXES)}); the field has {', '.join(present) or 'no channel files'}, "
        "but a field needs red, green and blue (and yellow unless read as RGB)",
    )


def find_channel_file(directory: str | os.PathLike, image_id: str, channel: str) -> Path:
    """The file that holds one channel of a field, e.g. ``<dir>/<ID>_green.png``.

    Raises :class:`DataError` when no file or more than one file (different suffixes) matches.
    """
    directory = Path(directory)
    found = _channel_files(directory, image_id, channel)
    if not found:
        raise _missing_channels(directory, image_id, [channel])
    if len(found) > 1:
        raise DataError(
            found[0], f"ambiguous {channel} channel: several files match ({[p.name for p in found]})"
        )
    return found[0]


def _read_tiff(source, path: Path) -> np.ndarray:
    """The first page of a TIFF; more pages (other than reduced-resolution copies) are refused.

    Only the first two pages are looked at: a corrupt file can chain its pages in an endless loop.
    A page larger than Pillow's decompression-bomb limit is refused before it is allocated.
    """
    import tifffile
    from PIL import Image

    with tifffile.TiffFile(source) as tiff:
        if not tiff.pages:
            raise DataError(path, "a TIFF without any image (no valid page)")
        if tiff.pages.is_multipage and not getattr(tiff.pages[1], "is_reduced", False):
            raise DataError(path, "a TIFF of several pages; a channel file holds one 2-D image")
        page = tiff.pages.first
        if Image.MAX_IMAGE_PIXELS and page.size > 2 * Image.MAX_IMAGE_PIXELS:
            raise DataError(path, f"image of shape {page.shape} is too large for a field of view "
                                  f"({page.size} pixels; corrupt header?)")
        return np.asarray(page.asarray())


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one single-channel image file in its own dtype, ``[H, W]``.

    PNG/JPEG go through Pillow, TIFF/OME-TIFF through tifffile, ``.gz`` is decompressed first.
    An RGB(A) file whose colour planes are equal (a grey image saved in colour) is reduced to one
    plane; any other multi-channel file is refused, since a channel file must hold one channel.
    So are a TIFF of several pages and a float image with NaN or infinite pixels.
    """
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                array = _read_tiff(_io.BytesIO(handle.read()), path)
        elif name.endswith((".tif", ".tiff")):
            array = _read_tiff(path, path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                image.load()
                if image.mode in ("P", "PA"):  # palette indices are not intensities
                    image = image.convert("RGBA" if image.mode == "PA" else "RGB")
                array = np.asarray(image)
    except DataError:
        raise
    except Exception as error:  # Pillow/tifffile/gzip raise many types for a broken file
        raise DataError(path, f"unreadable or truncated image ({type(error).__name__}: {error})") from error
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        planes = array[..., :3]
        if (planes == planes[..., :1]).all():
            array = planes[..., 0]
        else:
            raise DataError(
                path, f"expected a single-channel image, got {array.shape[-1]} colour channels"
            )
    if array.ndim != 2:
        raise DataError(path, f"expected a 2-D single-channel image, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = np.count_nonzero(~np.isfinite(array))
        raise DataError(path, f"{bad} of {array.size} pixels are NaN or infinite")
    return array


def to_unit_float(array: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Scale an image to float32 in [0, 1] by its dtype (uint8 / 255, uint16 / 65535).

    Float images are taken as already scaled and clipped to [0, 1].
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array, 0, 1).astype(np.float32)
    raise DataError(path, f"unsupported pixel type {array.dtype} (expected 8- or 16-bit, or float)")


def read_field(
    directory: str | os.PathLike,
    image_id: str,
    channels: Sequence[str] = CHANNELS,
) -> np.ndarray:
    """Read a field of view -> float32 ``[C, H, W]`` in [0, 1], channels in the order given.

    Parameters
    ----------
    directory : path
        Directory holding ``<image_id>_<channel>.<ext>`` files.
    image_id : str
        The field's ID (the file-name prefix).
    channels : sequence of str
        Default (red, green, blue, yellow); pass :data:`hpa_embed.labels.RGB_CHANNELS` for a
        3-channel read that never touches the yellow file.

    Raises
    ------
    DataError
        Naming every missing channel file (a field of blue and green only is refused), an
        ambiguous one (``x_red.png`` beside ``x_red.tif``), an unreadable one, or channels of
        different shapes. Other files in the directory are ignored.
    """
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; channels are {CHANNELS}")
    # find every file before reading any, so a missing channel fails fast
    try:
        paths = [find_channel_file(directory, image_id, channel) for channel in channels]
    except DataError:
        missing = [channel for channel in channels if not _channel_files(Path(directory), image_id, channel)]
        if missing:  # name them all at once
            raise _missing_channels(Path(directory), image_id, missing) from None
        raise
    planes = []
    for channel, path in zip(channels, paths):
        plane = to_unit_float(read_image(path), path)
        if planes and plane.shape != planes[0].shape:
            raise DataError(
                path,
                f"{channel} channel has shape {plane.shape} but {paths[0].name} has "
                f"{planes[0].shape}",
            )
        planes.append(plane)
    return np.stack(planes)


def list_field_ids(directory: str | os.PathLike, channel: str = "blue") -> list[str]:
    """IDs of the fields in a directory (those with a file for ``channel``), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "not a directory")
    ids = set()
    marker = f"_{channel}"
    for path in directory.iterdir():
        name = path.name
        for suffix in _suffix_cases():
            if name.endswith(marker + suffix):
                ids.add(name[: -len(marker + suffix)])
                break
    return sorted(ids)


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 3) -> Path:
    """Write a uint8 or uint16 ``[H, W]`` (or uint8 ``[H, W, 3]``) array as PNG, atomically."""
    from PIL import Image

    array = np.ascontiguousarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png takes uint8 or uint16, got {array.dtype}")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=compress_level)
    return path


# --------------------------------------------------------------------------- masks


#: Mask-file suffixes, in the order :func:`find_mask_file` looks for them.
MASK_SUFFIXES: tuple[str, ...] = (".png", ".npz")


def find_mask_file(masks_dir: str | os.PathLike, image_id: str, kind: str = "cellmask") -> Path:
    """``<masks_dir>/<image_id>_<kind>.png`` (or ``.npz``); ``kind`` is ``cellmask`` or ``nucleimask``.

    Raises :class:`DataError` naming the expected file when there is none.
    """
    masks_dir = Path(masks_dir)
    for suffix in MASK_SUFFIXES:
        path = masks_dir / f"{image_id}_{kind}{suffix}"
        if path.is_file():
            return path
    expected = masks_dir / f"{image_id}_{kind}{MASK_SUFFIXES[0]}"
    raise DataError(expected, f"missing {kind} of field {image_id!r}")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask (16-bit PNG, TIFF, or ``.npz`` with key ``mask``) -> int32 ``[H, W]``."""
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(path, "file not found")
        try:
            with np.load(path) as archive:
                mask = archive["mask"]
        except Exception as error:
            raise DataError(path, f"unreadable mask archive ({error})") from error
    else:
        mask = read_image(path)
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise DataError(path, f"a mask must hold integer ids, got {mask.dtype}")
    return mask.astype(np.int32)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write an int label mask ``[H, W]`` as 16-bit PNG (``.png``) or compressed ``.npz``."""
    path = Path(path)
    mask = np.asarray(mask)
    if path.suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, mask=mask.astype(np.int32))
        return path
    if mask.size and (mask.min() < 0 or mask.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"{path}: mask ids must lie in 0..65535 for a 16-bit PNG; use .npz")
    return write_png(path, mask.astype(np.uint16))


# --------------------------------------------------------------------------- label tables


@dataclass(frozen=True)
class LabelTable:
    """Image-level labels.

    Attributes
    ----------
    image_ids : list of str
        One per image, unique, in file order.
    labels : list of list of int
        Class ids per image.
    scheme : ClassScheme
    """

    image_ids: list[str]
    labels: list[list[int]]
    scheme: ClassScheme

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"LabelTable({len(self)} images, scheme={self.scheme.name})"

    @property
    def Y(self) -> np.ndarray:
        """Multi-hot labels, bool ``[N, K]``."""
        return self.scheme.to_multi_hot(self.labels)

    def to_frame(self) -> pd.DataFrame:
        """DataFrame with ``image_id``, ``labels`` (list of int) and one bool column per class."""
        frame = pd.DataFrame({"image_id": self.image_ids, "labels": self.labels})
        multi_hot = pd.DataFrame(self.Y, columns=list(self.scheme.names))
        return pd.concat([frame, multi_hot], axis=1)


_FORMATS = {
    # header (id column, label column) -> (scheme, separator)
    ("ID", "Label"): (HPA2021, "|"),
    ("Id", "Target"): (HPA2018, " "),
}


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of each row of a UTF-8 CSV file (a byte-order mark is skipped).

    Raises :class:`DataError` for bytes that are not UTF-8 and for text the csv module refuses.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as error:
            raise DataError(path, f"not UTF-8 text ({error.reason})") from None
        except csv.Error as error:
            raise DataError(path, f"not valid CSV ({error})", reader.line_num + 1) from None


def read_labels(path: str | os.PathLike, scheme: str | ClassScheme | None = None) -> LabelTable:
    """Read a Kaggle label table.

    Recognises the 2021 format (``ID,Label`` with ``|``-separated ids, 19 classes) and the 2018
    format (``Id,Target`` with space-separated ids, 28 classes) from the header; extra columns
    are ignored. ``scheme`` overrides the scheme the header implies.

    Raises :class:`DataError` (naming file and line) for bytes that are not UTF-8 text, an unknown
    header, a malformed row, a label that is not an integer or lies outside the scheme, an empty
    label, or a duplicate ID. A byte-order mark (as spreadsheets write) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with contextlib.closing(_csv_rows(path)) as rows:
        header = next(rows, (1, None))[1]
        if header is None:
            raise DataError(path, "empty file (expected a header 'ID,Label' or 'Id,Target')")
        header = [name.strip() for name in header]
        known = [columns for columns in _FORMATS if set(columns) <= set(header)]
        if not known:
            raise DataError(
                path, f"unknown header {header}; expected 'ID,Label' (2021) or 'Id,Target' (2018)", 1
            )
        id_column, label_column = known[0]
        default_scheme, separator = _FORMATS[known[0]]
        table_scheme = get_scheme(scheme) if scheme is not None else default_scheme
        id_index, label_index = header.index(id_column), header.index(label_column)
        image_ids: list[str] = []
        labels: list[list[int]] = []
        first_line: dict[str, int] = {}
        for line, row in rows:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(path, f"expected {len(header)} fields, got {len(row)}: {row}", line)
            image_id = row[id_index].strip()
            if not image_id:
                raise DataError(path, "empty image ID", line)
            if image_id in first_line:
                raise DataError(
                    path, f"duplicate ID {image_id!r} (first on line {first_line[image_id]})", line
                )
            first_line[image_id] = line
            numbers = [token.strip() for token in row[label_index].split(separator) if token.strip()]
            # plain ASCII digits only: int() would also take '1_0' and non-ASCII digits
            digits = [number.removeprefix("-") for number in numbers]
            if not all(text.isascii() and text.isdigit() for text in digits):
                raise DataError(
                    path, f"label {row[label_index]!r} is not {separator!r}-separated integers", line
                )
            ids = [int(number) for number in numbers]
            if not ids:
                raise DataError(path, f"image {image_id!r} has no label", line)
            bad = [i for i in ids if not 0 <= i < table_scheme.num_classes]
            if bad:
                raise DataError(
                    path,
                    f"label {bad[0]} of image {image_id!r} is outside the {table_scheme.name} "
                    f"scheme (ids 0..{table_scheme.num_classes - 1})",
                    line,
                )
            image_ids.append(image_id)
            labels.append(sorted(set(ids)))
    return LabelTable(image_ids=image_ids, labels=labels, scheme=table_scheme)


def write_labels(path: str | os.PathLike, table: LabelTable) -> Path:
    """Write a label table in its scheme's Kaggle format, atomically."""
    path = Path(path)
    (id_column, label_column), separator = next(
        (header, sep) for header, (s, sep) in _FORMATS.items() if s.name == table.scheme.name
    )
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([id_column, label_column])
            for image_id, ids in zip(table.image_ids, table.labels):
                writer.writerow([image_id, separator.join(str(i) for i in ids)])
    return path
