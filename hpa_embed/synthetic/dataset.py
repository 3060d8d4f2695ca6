"""Writing a synthetic data set in the Kaggle layout (plus truth), in parallel and resumably.

Layout of ``out_dir``::

    train/<ID>_{red,green,blue,yellow}.png   the fields (8- or 16-bit)
    train.csv                                 ID,Label (image labels, '|'-separated)
    truth/<ID>_cellmask.png                   16-bit cell mask (0 background, cells 1..n)
    truth/<ID>_nucleimask.png                 16-bit nucleus mask (nucleus id = its cell's id)
    truth/cells.csv                           image_id,cell_id,labels,cell_line,mitotic,area
    truth/parts/<ID>.json                     one field's truth; written last, marks it complete
    dataset.json                              config, seed, n_images, generator version
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..io import DataError, LabelTable, atomic_path, write_labels, write_mask, write_png
from ..labels import CHANNELS, HPA2021, NEGATIVE
from .config import SyntheticConfig, get_preset
from .field import SyntheticField, generate_field

__all__ = [
    "GENERATOR_VERSION",
    "TRUTH_COLUMNS",
    "field_seed",
    "generate_dataset",
    "read_truth",
    "truth_labels_by_image",
]

log = logging.getLogger(__name__)

#: Bumped whenever the same config and seed would give different fields.
GENERATOR_VERSION = 3
TRUTH_COLUMNS = ("image_id", "cell_id", "labels", "cell_line", "mitotic", "area")
_PNG_COMPRESSION = 1  # fast: generation, not disk, is what a user waits for


def field_seed(seed: int, index: int) -> int:
    """The seed of field ``index`` of a data set generated with ``seed``.

    ``generate_field(config, field_seed(seed, i))`` reproduces that field; it depends on
    neither the number of workers nor the other fields.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def _image_id(index: int) -> str:
    return f"syn_{index:06d}"


def _part_path(out: Path, image_id: str) -> Path:
    return out / "truth" / "parts" / f"{image_id}.json"


def _field_paths(out: Path, image_id: str) -> list[Path]:
    return [
        *(out / "train" / f"{image_id}_{channel}.png" for channel in CHANNELS),
        out / "truth" / f"{image_id}_cellmask.png",
        out / "truth" / f"{image_id}_nucleimask.png",
        _part_path(out, image_id),
    ]


def _is_complete(out: Path, image_id: str) -> bool:
    return all(path.is_file() for path in _field_paths(out, image_id))


def _summary(field: SyntheticField) -> dict:
    areas = np.bincount(field.cell_mask.ravel(), minlength=field.n_cells + 1)[1:]
    return {
        "image_id": field.image_id,
        "image_labels": field.image_labels,
        "cell_line": field.cell_line,
        "cells": [
            {"cell_id": i + 1, "labels": labels, "mitotic": bool(field.mitotic[i]),
             "area": int(areas[i])}
            for i, labels in enumerate(field.cell_labels)
        ],
    }


def _write_field(field: SyntheticField, out: Path, bit_depth: int) -> dict:
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    levels = np.float32(2**bit_depth - 1)
    for plane, channel in zip(field.image, CHANNELS):
        write_png(out / "train" / f"{field.image_id}_{channel}.png",
                  np.rint(plane * levels).astype(dtype), compress_level=_PNG_COMPRESSION)
    write_mask(out / "truth" / f"{field.image_id}_cellmask.png", field.cell_mask)
    write_mask(out / "truth" / f"{field.image_id}_nucleimask.png", field.nucleus_mask)
    summary = _summary(field)
    with atomic_path(_part_path(out, field.image_id)) as tmp:  # last: marks the field complete
        tmp.write_text(json.dumps(summary))
    return summary


def _read_part(out: Path, image_id: str) -> dict:
    path = _part_path(out, image_id)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(
            path, f"unreadable field truth ({error}); delete it to regenerate the field"
        ) from error


def _make_field(config: SyntheticConfig, seed: int, index: int, out: Path) -> dict:
    """Worker: generate and write field ``index`` (module level, so processes can pickle it)."""
    field = generate_field(config, field_seed(seed, index), _image_id(index))
    return _write_field(field, out, config.bit_depth)


def _check_manifest(out: Path, config: SyntheticConfig, seed: int) -> None:
    """Refuse to resume into a directory made with another config, seed or generator version."""
    path = out / "dataset.json"
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise DataError(path, f"not valid JSON ({error})") from error
    wanted = {"config": config.to_dict(), "seed": seed, "version": GENERATOR_VERSION}
    different = [key for key, value in wanted.items() if manifest.get(key) != value]
    if different:
        raise DataError(
            path,
            f"this directory holds a synthetic set made with a different {', '.join(different)}; "
            "choose another output directory or delete this one",
        )


def _write_manifest(out: Path, config: SyntheticConfig, seed: int, n_images: int) -> None:
    from .. import __version__

    manifest = {
        "generator": "hpa_embed.synthetic",
        "version": GENERATOR_VERSION,
        "hpa_embed_version": __version__,
        "seed": seed,
        "n_images": n_images,
        "config": config.to_dict(),
    }
    with atomic_path(out / "dataset.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))


def generate_dataset(
    out_dir: str | os.PathLike,
    n_images: int,
    config_or_preset_name: SyntheticConfig | str,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n_images`` synthetic fields and their truth to ``out_dir`` (Kaggle layout).

    Field ``i`` is ``syn_{i:06d}``, generated from ``field_seed(seed, i)``, so the output does
    not depend on ``workers``. Resumable: a field whose files are all there is not generated
    again; the CSV tables are written last, atomically.

    Parameters
    ----------
    out_dir : path
    n_images : int
    config_or_preset_name : SyntheticConfig or str
        A config, or a name from :data:`~hpa_embed.synthetic.PRESETS`.
    seed : int
    workers : int, optional
        Processes (default: the CPU count); 1 generates in this process.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    DataError
        When ``out_dir`` holds a set made with another config or seed.
    """
    config = (get_preset(config_or_preset_name) if isinstance(config_or_preset_name, str)
              else config_or_preset_name)
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"expected a SyntheticConfig or a preset name, got {type(config).__name__}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    out = Path(out_dir)
    _check_manifest(out, config, seed)
    for sub in ("train", "truth/parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _write_manifest(out, config, seed, n_images)

    ids = [_image_id(index) for index in range(n_images)]
    summaries: dict[int, dict] = {}
    pending = []
    for index, image_id in enumerate(ids):
        if _is_complete(out, image_id):
            summaries[index] = _read_part(out, image_id)
        else:
            pending.append(index)
    if summaries:
        log.info("%d of %d fields already in %s; generating the other %d",
                 len(summaries), n_images, out, len(pending))
    workers = max(1, min(workers or os.cpu_count() or 1, len(pending) or 1))
    bar = tqdm(total=len(pending), desc="synthetic fields", unit="field", disable=not progress)
    if workers == 1:
        for index in pending:
            summaries[index] = _make_field(config, seed, index, out)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_make_field, config, seed, index, out): index for index in pending}
            for future in as_completed(futures):
                summaries[futures[future]] = future.result()
                bar.update()
    bar.close()

    ordered = [summaries[index] for index in range(n_images)]
    write_labels(out / "train.csv", LabelTable(
        image_ids=ids, labels=[summary["image_labels"] for summary in ordered], scheme=HPA2021,
    ))
    rows = [
        (summary["image_id"], cell["cell_id"], "|".join(map(str, cell["labels"])),
         summary["cell_line"], cell["mitotic"], cell["area"])
        for summary in ordered for cell in summary["cells"]
    ]
    with atomic_path(out / "truth" / "cells.csv") as tmp:
        pd.DataFrame(rows, columns=list(TRUTH_COLUMNS)).to_csv(tmp, index=False)
    log.info("wrote %d synthetic fields (%d cells) to %s", n_images, len(rows), out)
    return out


def read_truth(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The per-cell truth of a synthetic set (``<out_dir>/truth/cells.csv``).

    Returns
    -------
    pandas.DataFrame
        Columns ``image_id`` (str), ``cell_id`` (int), ``labels`` (list of int; ``[18]`` for a
        cell that shows none of its image's labels), ``cell_line`` (str), ``mitotic`` (bool),
        ``area`` (int, pixels).

    Raises
    ------
    DataError
        When the file is missing, lacks a column, or holds a malformed row.
    """
    path = Path(out_dir) / "truth" / "cells.csv"
    if not path.is_file():
        raise DataError(path, "file not found (is this a synthetic set made by generate_dataset?)")
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "labels": str, "cell_line": str})
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(path, f"unreadable CSV ({error})") from error
    missing = [column for column in TRUTH_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected {list(TRUTH_COLUMNS)}", 1)

    def parse(row: int, text) -> list[int]:
        try:
            labels = [int(token) for token in str(text).split("|")]
        except ValueError:
            raise DataError(path, f"labels {text!r} are not '|'-separated integers", row + 2) from None
        if not labels or any(not 0 <= label <= NEGATIVE for label in labels):
            raise DataError(path, f"labels {text!r} lie outside 0..{NEGATIVE}", row + 2)
        return labels

    frame["labels"] = [parse(row, text) for row, text in enumerate(frame["labels"])]
    for column in ("cell_id", "area"):
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(path, f"column {column!r} must hold integers")
    mitotic = frame["mitotic"].astype(str).str.lower().map({"true": True, "false": False})
    if mitotic.isna().any():
        row = int(np.flatnonzero(mitotic.isna())[0])
        raise DataError(path, f"mitotic must be True or False, got {frame['mitotic'].iloc[row]!r}", row + 2)
    frame["mitotic"] = mitotic.astype(bool)
    return frame


def truth_labels_by_image(out_dir: str | os.PathLike) -> dict[str, dict[int, list[int]]]:
    """The true labels of every cell of a synthetic set, grouped by image.

    Parameters
    ----------
    out_dir : path
        The set's root (``<out_dir>/truth/cells.csv``, read by :func:`read_truth`).

    Returns
    -------
    dict of str to (dict of int to list of int)
        Image id -> (cell id, as in the image's true cell mask -> its class ids). Images without
        cells have no entry.

    Raises
    ------
    DataError
        As :func:`read_truth`.
    """
    table = read_truth(out_dir)
    by_image: dict[str, dict[int, list[int]]] = {}
    for image_id, cell_id, labels in zip(table["image_id"], table["cell_id"], table["labels"]):
        by_image.setdefault(str(image_id), {})[int(cell_id)] = list(labels)
    return by_image
