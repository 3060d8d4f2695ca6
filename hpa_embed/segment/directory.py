"""Segmenting every field of a directory, in parallel and resumably."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batch import SKIPPED_FILE, write_skipped
from ..executors import check_lost, map_batches, select_shard
from ..io import DataError, list_field_ids, read_field, read_mask, write_mask, write_png
from .base import Segmenter, check_masks
from .classical import ClassicalSegmenter

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- directories


@dataclass
class SegmentationReport:
    """What :func:`segment_directory` did.

    Attributes
    ----------
    done : list of str
        Field IDs segmented in this run.
    skipped : list of str
        Field IDs whose two mask files already existed (and, when overlays were asked for, whose
        overlay already existed or was drawn from them in this run).
    failed : dict of str to str
        Field ID -> reason, for fields that could not be read or segmented.
    n_cells : dict of str to int
        Cells found per field segmented in this run.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_cells: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{len(self.done)} fields segmented ({sum(self.n_cells.values())} cells), "
            f"{len(self.skipped)} already done, {len(self.failed)} skipped"
        )


def mask_paths(out_dir: str | os.PathLike, image_id: str, mask_format: str = "png") -> tuple[Path, Path]:
    """``(<out>/<ID>_cellmask.<fmt>, <out>/<ID>_nucleimask.<fmt>)``, fmt ``png`` or ``npz``."""
    if mask_format not in ("png", "npz"):
        raise ValueError(f"mask_format must be 'png' or 'npz', got {mask_format!r}")
    out_dir = Path(out_dir)
    return (out_dir / f"{image_id}_cellmask.{mask_format}", out_dir / f"{image_id}_nucleimask.{mask_format}")


def overlay_path(out_dir: str | os.PathLike, image_id: str) -> Path:
    """``<out>/<ID>_overlay.png``: the outlines of a field's masks on its composite (RGB, to look at)."""
    return Path(out_dir) / f"{image_id}_overlay.png"


def _segment_one(
    images_dir: str, out_dir: str, image_id: str, segmenter: Segmenter, mask_format: str,
    overlay: bool = False,
) -> tuple[str, int | None, str | None, bool]:
    """Worker: segment one field and write its masks (and overlay) -> (id, n_cells, error or None,
    segmented: False when existing masks were only drawn)."""
    try:
        image = read_field(images_dir, image_id)
        cell_path, nucleus_path = mask_paths(out_dir, image_id, mask_format)
        segmented = not (cell_path.is_file() and nucleus_path.is_file())
        if segmented:
            cell_mask, nucleus_mask = segmenter.segment(image)
        else:  # masks from an earlier run, only the overlay is missing
            cell_mask, nucleus_mask = read_mask(cell_path), read_mask(nucleus_path)
        n_cells = check_masks(cell_mask, nucleus_mask, name=image_id)
        if segmented:
            write_mask(nucleus_path, nucleus_mask)
        if overlay:
            from ..visualise.overlays import overlay_masks

            write_png(overlay_path(out_dir, image_id), overlay_masks(image, cell_mask, nucleus_mask))
        if segmented:
            # written last: the cell mask's presence marks a finished field
            write_mask(cell_path, cell_mask)
        return image_id, n_cells, None, segmented
    except (DataError, ValueError, OSError, RuntimeError) as error:
        return image_id, None, f"{type(error).__name__}: {error}", True


def _segment_batch(image_ids: list[str], images_dir: str, out_dir: str, segmenter: Segmenter,
                   mask_format: str, overlay: bool) -> list[tuple[str, int | None, str | None, bool]]:
    """Task: :func:`_segment_one` for each field of a batch (the task writes the masks)."""
    return [_segment_one(images_dir, out_dir, image_id, segmenter, mask_format, overlay)
            for image_id in image_ids]


def segment_directory(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    segmenter: Segmenter | None = None,
    workers: int | None = None,
    mask_format: str = "png",
    progress: bool = True,
    image_ids: Sequence[str] | None = None,
    overlay: bool = False,
    executor: Executor | Any | str | None = None,
    shard: tuple[int, int] | None = None,
) -> SegmentationReport:
    """Segment every field in a directory; write ``<ID>_cellmask`` and ``<ID>_nucleimask``.

    Fields whose two mask files exist are skipped (a run can be resumed). A field that cannot be
    read or segmented is logged, reported and listed in ``<out_dir>/skipped.csv``
    (:mod:`hpa_embed.batch`), and the others are still done.

    Parameters
    ----------
    images_dir : path
        Fields as ``<ID>_{red,green,blue,yellow}.<ext>`` (see :func:`hpa_embed.io.read_field`).
    out_dir : path
        Where the masks go (created if needed).
    segmenter : Segmenter or None
        None: :class:`ClassicalSegmenter` with its defaults. Must be picklable for ``workers > 1``
        and for an executor.
    workers : int or None
        Worker processes; None: one per CPU (at most the number of fields). 1: in this process.
        With an ``executor``: the tasks it runs at once (a Dask Client knows its own).
    mask_format : {"png", "npz"}
        16-bit PNG (at most 65535 cells) or compressed ``.npz`` (key ``mask``).
    progress : bool
        Show a tqdm progress bar.
    image_ids : sequence of str or None
        Only these fields (default: every field in ``images_dir``).
    overlay : bool
        Also write ``<ID>_overlay.png`` (:func:`overlay_path`): RGB, the cell (white) and nucleus
        (cyan) outlines on the field's RGBY composite (:func:`hpa_embed.visualise.overlay_masks`).
        Fields segmented earlier get their overlay drawn from their masks.
    executor : Executor, dask.distributed.Client or str, optional
        Where the tasks (a batch of fields each) run: default a local process pool; a Dask
        Client or scheduler address runs them on its cluster, the masks written by the workers
        (``images_dir`` and ``out_dir`` on storage they share). See :mod:`hpa_embed.executors`.
        A batch lost to a dead worker ends the run with
        :class:`~hpa_embed.executors.LostBatchesError` after the others; a rerun does the rest.
    shard : (int, int), optional
        ``(i, n)``: only the fields of shard ``i`` of ``n`` (:func:`~hpa_embed.executors.select_shard`),
        for array jobs writing into one ``out_dir``; the skipped fields go to
        ``skipped-<i>-of-<n>.csv``.

    Returns
    -------
    SegmentationReport
    """
    from tqdm.auto import tqdm

    segmenter = segmenter if segmenter is not None else ClassicalSegmenter()
    ids = list(image_ids) if image_ids is not None else list_field_ids(images_dir)
    if shard is not None:
        ids = select_shard(ids, *shard)
    report = SegmentationReport()
    todo = []
    for image_id in ids:
        if all(path.is_file() for path in mask_paths(out_dir, image_id, mask_format)) and not (
                overlay and not overlay_path(out_dir, image_id).is_file()):
            report.skipped.append(image_id)
        else:
            todo.append(image_id)
    logger.info("segmenting %d fields (%d already done) from %s", len(todo), len(report.skipped), images_dir)
    args = (str(images_dir), str(out_dir), segmenter, mask_format, overlay)
    lost: dict[str, str] = {}
    with tqdm(total=len(todo), desc="segment", unit="field", disable=not progress) as bar:
        for batch, results, error in map_batches(_segment_batch, todo, *args, executor=executor,
                                                 workers=workers):
            bar.update(len(batch))
            if error is not None:
                lost.update(dict.fromkeys(batch, error))
                continue
            for result in results:
                _record(report, *result)
    report.failed = dict(sorted(report.failed.items()))
    name = SKIPPED_FILE if shard is None else f"skipped-{shard[0]}-of-{shard[1]}.csv"
    write_skipped(out_dir, {"segment": report.failed}, name=name)
    logger.info("%s", report)
    check_lost(lost, out_dir)
    return report


def _record(report: SegmentationReport, image_id: str, n_cells: int | None, error: str | None,
            segmented: bool = True):
    if error is None and not segmented:
        report.skipped.append(image_id)
    elif error is None:
        report.done.append(image_id)
        report.n_cells[image_id] = n_cells
    else:
        logger.warning("field %s skipped: %s", image_id, error)
        report.failed[image_id] = error
