"""Merging the shards of a distributed :class:`~hpa_embed.index.CellIndex` build.

Each machine adds its contiguous block of cells to a shard made by
:meth:`CellIndex.new_shard` from one trained, empty IVF index and saves it;
:func:`merge_shards` joins the saved shards into one index whose inverted lists live on disk
(see ``docs/index.md``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from .index import CellIndex, duplicates
from .index_format import (
    INDEX_FILE,
    IVFDATA_FILE,
    META_FILE,
    TRAINED_FILE,
    read_description,
    read_id_table,
    replace_directory,
    write_index_files,
)
from .io import DataError

__all__ = ["merge_shards"]

log = logging.getLogger(__name__)


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> CellIndex:
    """Merge IVF shards into one index whose inverted lists live on disk.

    Each shard is a saved :class:`CellIndex` made by :meth:`CellIndex.new_shard` from the same
    trained index, holding contiguous cells: sorted by ``id_offset``, shard ``i`` must start where
    shard ``i - 1`` ends, the first at 0. The merged index (``out``) has ids 0..N-1, the shards'
    id tables concatenated, and ``index.ivfdata`` (``faiss.contrib.ondisk.merge_ondisk``, which
    memory-maps the shards, so the data never has to fit in RAM). It is read-only.

    Parameters
    ----------
    paths : sequence of path
        The saved shards, in any order.
    out : path
        The merged index directory; an existing CellIndex directory there is replaced.

    Returns
    -------
    CellIndex
        The merged index, loaded from ``out``.
    """
    from faiss.contrib.ondisk import merge_ondisk

    if not paths:
        raise ValueError("no shards to merge")
    # Descriptions and id tables only: merge_ondisk reads the vectors once, memory-mapped.
    shards = sorted((read_description(shard_path) for shard_path in paths),
                    key=lambda saved: saved.id_offset)
    first = shards[0]
    expected_offset = 0
    for saved in shards:
        where = saved.path / META_FILE
        if saved.kind not in ("ivf", "ivfpq") or saved.meta.get("on_disk"):
            raise DataError(where, "a shard must be an in-memory IVF index (see CellIndex.new_shard)")
        if saved.id_offset != expected_offset:
            raise DataError(where, f"id_offset {saved.id_offset}, but the shards before it end at "
                                   f"{expected_offset}: shards must hold contiguous cells (give each the "
                                   "position of its first cell)")
        expected_offset += saved.count
        for key in ("kind", "metric", "dimension"):
            if saved.meta[key] != first.meta[key]:
                raise DataError(where, f"{key} {saved.meta[key]!r} differs from {first.meta[key]!r} "
                                       f"in {first.path}")
        if saved.files.get(TRAINED_FILE) != first.files.get(TRAINED_FILE):
            raise DataError(saved.path / TRAINED_FILE, f"trained differently from {first.path}: shards "
                                                       "must come from one trained index (new_shard)")
    cell_ids = np.concatenate([read_id_table(saved) for saved in shards])
    if duplicates(cell_ids):
        raise ValueError(f"the shards share cell ids, e.g. {duplicates(cell_ids)}")
    trained_bytes = (first.path / TRAINED_FILE).read_bytes()
    out = Path(out)

    def write(tmp: Path) -> None:
        trained = faiss.deserialize_index(np.frombuffer(trained_bytes, dtype=np.uint8))
        # shift_ids=False: the shards already carry their global ids (FAISS's shift_ids adds
        # wrong offsets when the shards differ in size).
        merge_ondisk(trained, [str(saved.path / INDEX_FILE) for saved in shards], str(tmp / IVFDATA_FILE),
                     shift_ids=False)
        # CellIndex checks that the merged index holds one vector per cell id.
        merged = CellIndex(trained, cell_ids, first.config, first.kind, trained=trained_bytes, read_only=True)
        write_index_files(tmp, out, merged.faiss_index, merged.cell_ids, merged.config, merged.kind,
                          trained=merged.trained_bytes)

    replace_directory(out, write)
    log.info("merged %d shards (%d cells) into %s", len(shards), len(cell_ids), out)
    return CellIndex.load(out)
