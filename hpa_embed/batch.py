"""Runs over many fields: what was skipped and why, and when such a run counts as failed.

The per-field stages (segment, crop, embed, and a pipeline run) process every good field and
skip the others: a field that cannot be read, segmented or cut is logged, listed at the end and
written to ``skipped.csv`` beside the stage's output (columns ``image_id``, ``stage``,
``reason``), so that nothing stops a long run for one bad file. Such a run counts as failed
(:func:`check_skipped` raises) only when the user asked for strictness or nothing succeeded.
Inputs that are wrong as a whole (a missing directory, an unreadable label table) are refused
before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .io import DataError, HpaEmbedError, atomic_path

__all__ = ["SKIPPED_FILE", "BatchError", "write_skipped", "read_skipped", "check_skipped",
           "describe_skipped"]

#: The file, beside a stage's output, that lists the fields it skipped.
SKIPPED_FILE = "skipped.csv"
_COLUMNS = ["image_id", "stage", "reason"]


class BatchError(HpaEmbedError):
    """Fields were skipped in a strict run, or no field succeeded."""


def write_skipped(out_dir: str | os.PathLike, skipped: Mapping[str, Mapping[str, str]],
                  name: str = SKIPPED_FILE) -> Path | None:
    """Write ``<out_dir>/skipped.csv`` (or ``name``: one file per shard of an array job) from
    ``{stage: {image_id: reason}}``.

    Returns the file's path, or None when nothing was skipped (an older list is then removed,
    so that the file always describes the latest run).
    """
    path = Path(out_dir) / name
    rows = [(image_id, stage, reason) for stage, fields in skipped.items()
            for image_id, reason in fields.items()]
    if not rows:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=_COLUMNS).to_csv(tmp, index=False)
    return path


def read_skipped(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The table of :func:`write_skipped` (no rows when the file does not exist)."""
    path = Path(out_dir) / SKIPPED_FILE
    if not path.is_file():
        return pd.DataFrame(columns=_COLUMNS)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as error:
        raise DataError(path, f"unreadable list of skipped fields ({error})") from error
    if list(table.columns) != _COLUMNS:
        raise DataError(path, f"expected the columns {_COLUMNS}, found {list(table.columns)}")
    return table


def describe_skipped(skipped: Mapping[str, str], limit: int = 20) -> list[str]:
    """One line per skipped field (at most ``limit``, then a count of the rest)."""
    lines = [f"  skipped {image_id}: {reason}" for image_id, reason in list(skipped.items())[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return lines


def check_skipped(skipped: Mapping[str, str], succeeded: int, strict: bool, where: str | os.PathLike,
                  what: str = "fields") -> None:
    """Raise :class:`BatchError` when ``strict`` and something was skipped, or when nothing of
    ``succeeded + skipped`` succeeded (``succeeded`` counts what was done now or before)."""
    if not skipped:
        return
    first = "; ".join(f"{image_id}: {reason}" for image_id, reason in list(skipped.items())[:3])
    if succeeded == 0:
        raise BatchError(f"{where}: none of {len(skipped)} {what} succeeded ({first})")
    if strict:
        raise BatchError(f"{where}: {len(skipped)} {what} skipped, strict run ({first})")
