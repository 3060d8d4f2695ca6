"""Single-cell crops: cut, mask, normalise and resize every cell of a field, and fill a CellStore.

For each cell of a label mask, :func:`extract_crops` takes a square window around the cell's
bounding box (plus a margin), zeroes the pixels of other cells and background (unless
``keep_neighbours``), resizes it to ``S x S`` with antialiasing and stores it as uint8.

Intensities are normalised per field and per channel: each channel is divided by a high
percentile (default 99.9) of the pixels inside cells of that field, then mapped to 0..255.
Why this choice:

* per field, not per cell: a cell's brightness relative to its neighbours is kept (a cell that
  does not express the protein stays dark beside one that does, which is what "Negative" and
  cell-to-cell variation look like);
* per field, not global: HPA sets the exposure per antibody and field, so raw levels are not
  comparable between fields anyway, and 16-bit fields often use a small part of their range;
* a percentile of the cell pixels, not the maximum or the mean of the whole field: robust to a
  few hot pixels, and not dominated by the background, which covers half a typical field;
* a floor (``min_scale``, default 0.05 of full range): a channel with almost no signal is not
  stretched until its noise fills the range.

The divisor of every channel is kept in the table (``scale_<channel>``), so a crop pixel ``v``
maps back to the field intensity ``v / 255 * scale`` (exact up to rounding, for pixels that were
not clipped). uint8 crops are 4x smaller than float32 (100k cells x 4 x 128² = 6.5 GB) and hold
the 8-bit precision of most HPA images.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from .batch import read_skipped, write_skipped
from .config import CropConfig
from .executors import check_lost, map_batches, select_shard
from .io import (
    DataError,
    LabelTable,
    atomic_path,
    find_mask_file,
    list_field_ids,
    read_field,
    read_labels,
    read_mask,
)
from .labels import HPA2021
from .store import CellStore, StagedChunk, write_chunk

__all__ = [
    "cell_geometry",
    "field_scales",
    "extract_crops",
    "BuildReport",
    "build_store",
    "merge_stores",
    "assign_splits",
    "SPLITS",
]

log = logging.getLogger(__name__)

#: Split names, in the order of the ``fractions`` given to :func:`assign_splits`.
SPLITS: tuple[str, ...] = ("train", "val", "test")


# --------------------------------------------------------------------------- one field


def cell_geometry(cell_mask: np.ndarray, nucleus_mask: np.ndarray | None = None) -> pd.DataFrame:
    """Per-cell geometry of a label mask, one row per cell id present, sorted by id.

    Parameters
    ----------
    cell_mask : int ``[H, W]``
        0 = background, ``k > 0`` = cell ``k``.
    nucleus_mask : int ``[H, W]``, optional
        Nucleus ids equal the ids of the cells that hold them.

    Returns
    -------
    DataFrame
        ``mask_id`` (int64), ``y0, x0, y1, x1`` (int64; half-open bounding box), ``area`` (int64,
        pixels), ``centroid_y, centroid_x`` (float64), ``nucleus_area`` (int64; -1 when no nucleus
        mask is given), ``touches_border`` (bool).
    """
    cell_mask = np.asarray(cell_mask)
    if cell_mask.ndim != 2 or not np.issubdtype(cell_mask.dtype, np.integer):
        raise ValueError(f"a cell mask must be an integer [H, W] array, "
                         f"got {cell_mask.dtype} {cell_mask.shape}")
    if cell_mask.size and cell_mask.min() < 0:
        raise ValueError("a cell mask must not hold negative ids")
    height, width = cell_mask.shape
    flat = cell_mask.ravel()
    top = int(flat.max()) if flat.size else 0
    area = np.bincount(flat, minlength=top + 1)
    ids = np.flatnonzero(area)
    ids = ids[ids > 0]
    # Centroids from per-id sums of row and column indices: one pass over the pixels each.
    row_index = np.repeat(np.arange(height, dtype=np.float64), width)
    col_index = np.tile(np.arange(width, dtype=np.float64), height)
    row_sum = np.bincount(flat, weights=row_index, minlength=top + 1)
    col_sum = np.bincount(flat, weights=col_index, minlength=top + 1)
    boxes = ndimage.find_objects(cell_mask)
    y0, x0, y1, x1 = (np.array([getattr(boxes[i - 1][axis], end) for i in ids], dtype=np.int64)
                      for axis, end in ((0, "start"), (1, "start"), (0, "stop"), (1, "stop")))
    if nucleus_mask is None:
        nucleus_area = np.full(len(ids), -1, dtype=np.int64)
    else:
        nuclei = np.asarray(nucleus_mask).ravel()
        nucleus_counts = np.bincount(nuclei, minlength=top + 1) if nuclei.size else np.zeros(top + 1)
        nucleus_area = np.zeros(len(ids), dtype=np.int64)
        known = ids < len(nucleus_counts)
        nucleus_area[known] = nucleus_counts[ids[known]]
    return pd.DataFrame({
        "mask_id": ids.astype(np.int64),
        "y0": y0, "x0": x0, "y1": y1, "x1": x1,
        "area": area[ids].astype(np.int64),
        "centroid_y": row_sum[ids] / area[ids],
        "centroid_x": col_sum[ids] / area[ids],
        "nucleus_area": nucleus_area,
        "touches_border": (y0 == 0) | (x0 == 0) | (y1 == height) | (x1 == width),
    })


def field_scales(image: np.ndarray, cell_mask: np.ndarray, config: CropConfig | None = None) -> np.ndarray:
    """The per-channel divisors of a field, float32 ``[C]`` (see the module docstring).

    ``image`` is float32 ``[C, H, W]`` in [0, 1]; ``cell_mask`` int ``[H, W]``; ``config``
    defaults to ``CropConfig()``.
    """
    config = config or CropConfig()
    channels = image.shape[0]
    if config.normalisation == "none":
        return np.ones(channels, dtype=np.float32)
    inside = np.asarray(cell_mask) > 0
    if not inside.any():
        return np.ones(channels, dtype=np.float32)
    # Sample the cell pixels with a stride: a percentile of 2M pixels gains nothing over 250k.
    pixels = image[:, inside]
    stride = max(1, pixels.shape[1] // 250_000)
    high = np.percentile(pixels[:, ::stride], config.percentile, axis=1)
    return np.maximum(high, config.min_scale).astype(np.float32)


def _windows(geometry: pd.DataFrame, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square windows ``(y0, x0, side)`` centred on each bounding box, int64 ``[N]`` each."""
    height = (geometry["y1"] - geometry["y0"]).to_numpy()
    width = (geometry["x1"] - geometry["x0"]).to_numpy()
    side = np.ceil(np.maximum(height, width) * (1 + 2 * margin)).astype(np.int64)
    wy0 = (geometry["y0"].to_numpy() + geometry["y1"].to_numpy() - side) // 2
    wx0 = (geometry["x0"].to_numpy() + geometry["x1"].to_numpy() - side) // 2
    return wy0, wx0, side


def _cut(array: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    """``array[..., y0:y0+side, x0:x0+side]`` with zeros where the window leaves the array."""
    height, width = array.shape[-2:]
    out = np.zeros((*array.shape[:-2], side, side), dtype=array.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + side, height), min(x0 + side, width)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[..., sy0:sy1, sx0:sx1]
    return out


def _resize(planes: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[C, L, L]`` -> ``[C, size, size]``; antialiased (Pillow widens its bilinear
    kernel by the reduction factor when shrinking)."""
    from PIL import Image

    if planes.shape[-1] == size:
        return planes
    return np.stack([
        np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize(
            (size, size), Image.Resampling.BILINEAR))
        for plane in planes
    ])


def extract_crops(
    image: np.ndarray,
    cell_mask: np.ndarray,
    nucleus_mask: np.ndarray | None = None,
    config: CropConfig | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Cut every cell of a field into a square, masked, normalised, resized crop.

    Parameters
    ----------
    image : float32 ``[C, H, W]``
        A field in [0, 1], channels in ``config.channels`` order.
    cell_mask : int ``[H, W]``
        0 = background.
    nucleus_mask : int ``[H, W]``, optional
    config : CropConfig, optional
        Default ``CropConfig()``.

    Returns
    -------
    cells : DataFrame
        :func:`cell_geometry` columns, the window each crop was cut from (``window_y0``,
        ``window_x0``, ``window_size``, field pixels; the crop is this window resized) and
        ``scale_<channel>`` (float32, the divisor of that channel), one row per crop.
    crops : uint8 ``[N, C, S, S]``
    """
    config = config or CropConfig()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != len(config.channels):
        raise ValueError(f"image must be [{len(config.channels)}, H, W] for channels "
                         f"{config.channels}, got {image.shape}")
    for name, mask in (("cell", cell_mask), ("nucleus", nucleus_mask)):
        if mask is not None and np.shape(mask) != image.shape[1:]:
            raise ValueError(f"{name} mask shape {np.shape(mask)} != field shape {image.shape[1:]}")
    cell_mask = np.asarray(cell_mask)
    geometry = cell_geometry(cell_mask, nucleus_mask)
    scales = field_scales(image, cell_mask, config)
    size = config.crop_size
    crops = np.empty((len(geometry), len(config.channels), size, size), dtype=np.uint8)
    wy0, wx0, side = _windows(geometry, config.margin)
    for index, (mask_id, y0, x0, length) in enumerate(zip(geometry["mask_id"], wy0, wx0, side)):
        window = _cut(image, y0, x0, length)
        window /= scales[:, None, None]
        if not config.keep_neighbours:
            window *= _cut(cell_mask, y0, x0, length) == mask_id
        resized = _resize(window, size)
        crops[index] = np.clip(np.rint(resized * 255), 0, 255).astype(np.uint8)
    cells = geometry.assign(window_y0=wy0, window_x0=wx0, window_size=side)
    for name, scale in zip(config.channels, scales):
        cells[f"scale_{name}"] = np.float32(scale)
    return cells, crops


# --------------------------------------------------------------------------- a directory of fields


def _read_mask_for(path: Path, shape: tuple[int, ...], field_dir: Path, image_id: str) -> np.ndarray:
    mask = read_mask(path)
    if mask.shape != shape:
        raise DataError(path, f"mask shape {mask.shape} differs from the shape {shape} of field "
                              f"{image_id!r} in {field_dir}")
    return mask


@dataclass(frozen=True)
class _FieldJob:
    images_dir: Path
    masks_dir: Path
    image_id: str
    config: CropConfig
    image_labels: list[int]
    true_masks_dir: Path | None = None
    true_labels: Mapping[int, list[int]] | None = None


def _crop_field(job: _FieldJob) -> tuple[str, pd.DataFrame | None, np.ndarray | None, str | None]:
    """Crop one field -> ``(image_id, cells, crops, None)`` or ``(image_id, None, None, error)``."""
    from .segment.metrics import match_cells

    try:
        image = read_field(job.images_dir, job.image_id, job.config.channels)
        shape = image.shape[1:]
        cell_mask = _read_mask_for(find_mask_file(job.masks_dir, job.image_id, "cellmask"), shape,
                                   job.images_dir, job.image_id)
        nucleus_mask = _read_mask_for(find_mask_file(job.masks_dir, job.image_id, "nucleimask"), shape,
                                      job.images_dir, job.image_id)
        cells, crops = extract_crops(image, cell_mask, nucleus_mask, job.config)
        true_labels: list[list[int] | None] = [None] * len(cells)
        if job.true_masks_dir is not None:
            true_path = find_mask_file(job.true_masks_dir, job.image_id, "cellmask")
            true_mask = _read_mask_for(true_path, shape, job.images_dir, job.image_id)
            matches = match_cells(cell_mask, true_mask)
            true_labels = [job.true_labels.get(int(true_id)) if true_id else None
                           for true_id in matches["true_id"]]
    except (DataError, OSError, ValueError) as error:
        return job.image_id, None, None, str(error)
    cells.insert(0, "cell_id", [f"{job.image_id}_{mask_id}" for mask_id in cells["mask_id"]])
    cells.insert(1, "image_id", job.image_id)
    cells["image_labels"] = [list(job.image_labels)] * len(cells)
    cells["true_labels"] = true_labels
    cells["split"] = ""
    return job.image_id, cells, crops, None


def _crop_batch(jobs: list[_FieldJob], staging: Path) -> tuple[list[tuple], StagedChunk | None]:
    """Task: :func:`_crop_field` for each field of a batch; the crops of the batch go to one chunk
    file in ``staging`` (:func:`~hpa_embed.store.write_chunk`), the rest back to the driver.

    Returns ``[(image_id, cells or None, error or None), ...]`` in the order of ``jobs``, and the
    chunk (None when no field gave a cell).
    """
    results, crops = [], []
    for job in jobs:
        image_id, cells, field_crops, error = _crop_field(job)
        results.append((image_id, cells, error))
        if field_crops is not None and len(field_crops):
            crops.append(field_crops)
    return results, write_chunk(staging, np.concatenate(crops)) if crops else None


@dataclass
class BuildReport:
    """What :func:`build_store` did.

    Attributes
    ----------
    store : Path
    fields_added : list of str
        Fields cropped by this call.
    fields_skipped : list of str
        Fields already in the store (resumed or appended runs).
    fields_failed : dict of str to str
        Field -> why it was skipped (unreadable file, missing mask, shape mismatch, no label).
    cells_added : int
    """

    store: Path
    fields_added: list[str] = field(default_factory=list)
    fields_skipped: list[str] = field(default_factory=list)
    fields_failed: dict[str, str] = field(default_factory=dict)
    cells_added: int = 0


def build_store(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | os.PathLike | LabelTable | None = None,
    truth: str | os.PathLike | None = None,
    config: CropConfig | None = None,
    image_ids: Sequence[str] | None = None,
    workers: int | None = None,
    fields_per_commit: int = 32,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool = True,
    executor: Executor | Any | str | None = None,
    shard: tuple[int, int] | None = None,
) -> BuildReport:
    """Crop every field of a directory into a :class:`~hpa_embed.store.CellStore`.

    Fields already in the store are skipped, so re-running after an interruption resumes, and
    pointing at a new directory appends. The table is committed every ``fields_per_commit``
    fields. A field that cannot be read (bad file, missing or mis-shaped mask) is logged,
    skipped and listed in ``<out>/skipped.csv`` (:mod:`hpa_embed.batch`). A field whose mask
    holds no cell adds no row, so a later run looks at it again.
    At the end, images without a split get one (:func:`assign_splits`); images that already
    had one keep it.

    Parameters
    ----------
    images_dir : path
        ``<ID>_{red,green,blue,yellow}.<ext>`` files.
    masks_dir : path
        ``<ID>_cellmask.png`` and ``<ID>_nucleimask.png`` (or ``.npz``).
    out : path
        The store; created if missing.
    labels : path or LabelTable, optional
        Image labels (``train.csv``). When given, only fields in it are cropped (the others are
        reported as failed); without it ``image_labels`` is empty.
    truth : path, optional
        Root of a synthetic dataset (``<truth>/truth/`` holds the true masks and ``cells.csv``):
        each cell gets the labels of the true cell it overlaps with IoU >= 0.5 (``true_labels``;
        null when none does).
    config : CropConfig, optional
        Default: the store's own settings when it exists, else ``CropConfig()``. Must match the
        store's settings when it exists.
    image_ids : sequence of str, optional
        Crop only these fields.
    workers : int, optional
        Processes; default ``min(os.cpu_count(), 8)``; ``<= 1`` crops in this process. With an
        ``executor``: the tasks it runs at once (a Dask Client knows its own).
    fields_per_commit : int
    fractions, seed
        Passed to :func:`assign_splits`.
    progress : bool
        Show a progress bar.
    executor : Executor, dask.distributed.Client or str, optional
        Where the tasks (a batch of fields each) run: default a local process pool; a Dask
        Client or scheduler address runs them on its cluster (the fields, the masks and ``out``
        on storage the workers share). Each task writes the crops of its fields to a chunk file
        in ``<out>/incoming/`` and returns their table rows; this process moves the chunks into
        the store in field order and commits (:meth:`~hpa_embed.store.CellStore.append_chunks`),
        so the table is the one a local run makes and no crop passes through it. See
        :mod:`hpa_embed.executors`.
    shard : (int, int), optional
        ``(i, n)``: only the fields of shard ``i`` of ``n`` (:func:`~hpa_embed.executors.select_shard`),
        into a part store of its own; the splits stay empty until :func:`merge_stores` joins
        the parts and assigns them as one run would.
    """
    images_dir, masks_dir, out = Path(images_dir), Path(masks_dir), Path(out)
    for directory, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not directory.is_dir():  # refuse before a store is created
            raise DataError(directory, f"{what}: not a directory")
    scheme = labels.scheme if isinstance(labels, LabelTable) else None
    table = read_labels(labels) if labels is not None and not isinstance(labels, LabelTable) else labels
    if table is not None:
        scheme = table.scheme

    if (out / "store.json").exists():
        store = CellStore.open(out)
        if "crop" not in store.meta["attrs"]:
            raise DataError(out / "store.json", "the store records no crop settings (attrs.crop); "
                                                "build_store only appends to stores it made")
        stored = CropConfig.from_dict(store.meta["attrs"]["crop"])
        if config is not None and config != stored:
            changed = {key: (value, getattr(config, key)) for key, value in stored.to_dict().items()
                       if config.to_dict()[key] != value}
            raise ValueError(f"{out}: the store was made with other crop settings "
                             f"(store vs given: {changed})")
        config = stored
        if scheme is not None and scheme.name != store.scheme.name:
            raise ValueError(f"{out}: the store uses scheme {store.scheme.name}, the labels {scheme.name}")
    else:
        config = config or CropConfig()
        store = CellStore.create(out, crop_size=config.crop_size, channels=config.channels,
                                 scheme=scheme or HPA2021, attrs={"crop": config.to_dict()})

    field_ids = list(image_ids) if image_ids is not None else list_field_ids(images_dir)
    if shard is not None:
        field_ids = select_shard(field_ids, *shard)
    report = BuildReport(store=out)
    image_labels: dict[str, list[int]] = {}
    if table is not None:
        image_labels = dict(zip(table.image_ids, table.labels))
        for image_id in field_ids:
            if image_id not in image_labels:
                report.fields_failed[image_id] = "no label in the label table"
        field_ids = [image_id for image_id in field_ids if image_id in image_labels]
    done = set(store.cells["image_id"]) if len(store) else set()
    report.fields_skipped = [image_id for image_id in field_ids if image_id in done]
    true_masks_dir, true_labels = None, {}
    if truth is not None:
        from .synthetic import truth_labels_by_image

        true_masks_dir, true_labels = Path(truth) / "truth", truth_labels_by_image(truth)
    jobs = [
        _FieldJob(images_dir, masks_dir, image_id, config, image_labels.get(image_id, []),
                  true_masks_dir, true_labels.get(image_id, {}) if truth is not None else None)
        for image_id in field_ids if image_id not in done
    ]
    if report.fields_skipped:
        log.info("%d field(s) already in %s: skipped", len(report.fields_skipped), out)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers

    batch_cells: list[pd.DataFrame] = []
    batch_chunks: list[StagedChunk] = []

    def commit() -> None:
        if batch_cells:
            cells = pd.concat(batch_cells, ignore_index=True)
            store.append_chunks(cells, batch_chunks)
            report.fields_added.extend(cells["image_id"].unique())
            report.cells_added += len(cells)
        batch_cells.clear()
        batch_chunks.clear()

    lost: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="crop", unit="field", disable=not progress)
    with store.staging() as staging, bar:
        for batch, result, lost_because in map_batches(_crop_batch, jobs, staging, executor=executor,
                                                       workers=workers, ordered=True):
            bar.update(len(batch))
            if lost_because is not None:
                lost.update({job.image_id: lost_because for job in batch})
                continue
            results, chunk = result
            for image_id, cells, error in results:
                if error is not None:
                    log.warning("skipped field %s: %s", image_id, error)
                    report.fields_failed[image_id] = error
                elif cells.empty:
                    log.info("field %s has no cells", image_id)
                else:
                    batch_cells.append(cells)
            if chunk is not None:
                batch_chunks.append(chunk)
            if len(batch_cells) >= fields_per_commit:
                commit()
        commit()

    report.fields_failed = dict(sorted(report.fields_failed.items()))
    write_skipped(out, {"crop": report.fields_failed})
    check_lost(lost, out)  # before the splits: a rerun assigns them over every field, as one run would
    if shard is None or shard[1] == 1:
        _assign_missing_splits(store, fractions, seed)
    else:
        log.info("%s: shard %d of %d, splits left to merge_stores", out, *shard)
    log.info("%s: %d cell(s) from %d field(s) added, %d field(s) skipped, %d failed",
             out, report.cells_added, len(report.fields_added), len(report.fields_skipped),
             len(report.fields_failed))
    return report


def merge_stores(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> CellStore:
    """Join the part stores of a sharded crop run (``build_store(shard=...)``) into one new store.

    The parts must share their crop settings, channels, class scheme, chunk size and table
    columns, and hold disjoint fields; anything else is refused. Their crop chunks are
    hard-linked into ``out`` (:meth:`CellStore.extend`), so no crop is written a second time.
    Images without a split then get one from :func:`assign_splits` over every image, as one run
    over all the fields would give them, and the parts' ``skipped.csv`` lists are joined.

    Parameters
    ----------
    parts : sequence of path
        The part stores, in the order their rows should take.
    out : path
        The merged store; must not exist (it is written beside and renamed into place).
    fractions, seed
        Passed to :func:`assign_splits`: those of the crop runs.

    Returns
    -------
    CellStore
        The merged store, opened from ``out``.
    """
    out = Path(out)
    if not parts:
        raise ValueError("no part stores to merge")
    if out.exists():
        raise FileExistsError(f"{out}: exists; merge_stores writes a new store")
    stores = [CellStore.open(part) for part in parts]
    first = stores[0]
    columns = next((set(store.cells.columns) for store in stores if len(store)), set())
    owner: dict[str, Path] = {}
    for store in stores:
        for key in ("crop_size", "channels", "dtype", "chunk_size", "scheme", "attrs"):
            if store.meta.get(key) != first.meta.get(key):
                raise DataError(store.path / "store.json", f"{key} {store.meta.get(key)!r} differs from "
                                f"{first.meta.get(key)!r} in {first.path}: the parts must come from one "
                                "crop configuration")
        if len(store) and set(store.cells.columns) != columns:
            raise DataError(store.path / "cells.parquet", f"columns {sorted(set(store.cells.columns))} "
                                                          f"differ from the other parts' {sorted(columns)}")
        for image_id in store.cells["image_id"].unique():
            if image_id in owner:
                raise DataError(store.path, f"field {image_id!r} is also in {owner[image_id]}: the parts "
                                            "overlap (each field must be cropped by one shard)")
            owner[image_id] = store.path
    skipped: dict[str, dict[str, str]] = {}
    for store in stores:
        for image_id, stage, reason in read_skipped(store.path).itertuples(index=False):
            skipped.setdefault(stage, {})[image_id] = reason
    with atomic_path(out) as tmp:
        merged = CellStore.create(tmp, crop_size=first.crop_size, channels=first.channels,
                                  chunk_size=first.chunk_size, scheme=first.scheme,
                                  attrs=first.meta["attrs"])
        merged.extend(stores)
        _assign_missing_splits(merged, fractions, seed)
        write_skipped(tmp, skipped)
    log.info("merged %d part store(s), %d cells of %d fields, into %s", len(stores),
             sum(map(len, stores)), len(owner), out)
    return CellStore.open(out)


# --------------------------------------------------------------------------- splits and weak labels


def _assign_missing_splits(store: CellStore, fractions: Sequence[float], seed: int) -> None:
    """Give the images of a store that have no split one (:func:`assign_splits`)."""
    if len(store) and (store.cells["split"] == "").any():
        store.set_columns({"split": assign_splits(store.cells, fractions, seed).to_numpy()})


def assign_splits(
    cells: pd.DataFrame,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> pd.Series:
    """A split per cell, made by image: all cells of an image share its split.

    Images whose cells already have a non-empty ``split`` keep it (so appending images never
    moves old ones). New images are stratified by their rarest label: they are ordered by that
    label (its frequency over all images in the table), shuffled within it, and walk along a
    golden-ratio sequence, which spreads every contiguous run (every stratum) over the splits in
    proportion to ``fractions``, even a stratum of two or three images.

    Parameters
    ----------
    cells : DataFrame
        ``image_id``, ``image_labels`` (list of int); optional ``split``.
    fractions : sequence of float
        Relative split sizes, one per name.
    seed : int
    names : sequence of str
        Split names, default ``("train", "val", "test")``.

    Returns
    -------
    Series of str, aligned with ``cells.index``.
    """
    weights = np.asarray(fractions, dtype=np.float64)
    if len(weights) != len(names) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"fractions {tuple(fractions)} must be {len(names)} non-negative numbers "
                         f"with a positive sum (one per split {tuple(names)})")
    images = cells.groupby("image_id", sort=True).first()
    current = images["split"].fillna("") if "split" in images else pd.Series("", index=images.index)
    if "image_labels" in images:
        labels = images["image_labels"].map(lambda ids: [] if ids is None else list(ids))
    else:
        labels = pd.Series([[]] * len(images), index=images.index)
    frequency = Counter(label for ids in labels for label in ids)
    new = images.index[current.to_numpy() == ""]
    rng = np.random.default_rng(seed)
    # Rarest label first, so that rare classes are what decides where an image goes.
    stratum = np.array([min((frequency[label], label) for label in labels[image_id])
                        if labels[image_id] else (0, -1) for image_id in new], dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((rng.random(len(new)), stratum[:, 1], stratum[:, 0]))
    golden = (np.sqrt(5) - 1) / 2
    position = (rng.random() + golden * np.arange(len(new))) % 1.0
    bounds = np.cumsum(weights) / weights.sum()
    chosen = np.minimum(np.searchsorted(bounds, position, side="right"), len(names) - 1)
    split_of_image = current.copy()
    split_of_image[new[order]] = np.asarray(names, dtype=object)[chosen]
    return pd.Series(split_of_image[cells["image_id"]].to_numpy(), index=cells.index, name="split")
