"""Embeddings of every cell of a CellStore from a trained checkpoint.

An embeddings directory holds::

    <out>/embeddings.npy     float32 [N, D], L2-normalised rows
    <out>/cells.parquet      the store's table rows, in the same order (cell_id, image_id, ...)
    <out>/embed.json         header (format "hpa_embed.embeddings", version, library version, the
                             SHA-256 of the two files above; see hpa_embed.io), count, dimension,
                             the checkpoint and store they came from, the model config

Each file is written atomically, ``embed.json`` last: it commits the directory, and
:func:`read_embeddings` refuses files that differ from its checksums. In one process the array
is written batch by batch into the file, so ``[N, D]`` never has to fit in memory. Under
``torchrun`` every rank embeds its own contiguous shard of the cells, the shards are gathered
in order (in memory), and rank 0 writes the result.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .batch import write_skipped
from .data import channel_positions
from .distributed import distributed_context
from .io import HEADER_KEYS, DataError, atomic_path, read_header, write_header
from .models import CellEmbeddingModel, load_checkpoint, preprocess
from .store import CellStore

__all__ = ["Embeddings", "embed_store", "embed_crops", "read_embeddings", "write_embeddings"]

log = logging.getLogger(__name__)

_ARRAY_FILE = "embeddings.npy"
_TABLE_FILE = "cells.parquet"
_META_FILE = "embed.json"
FORMAT_NAME = "hpa_embed.embeddings"
FORMAT_VERSION = 1


@dataclass
class Embeddings:
    """Cell embeddings and the cells they belong to.

    Attributes
    ----------
    X : numpy.ndarray
        float32 ``[N, D]``, unit L2 norm per row.
    cells : pandas.DataFrame
        ``N`` rows of the store's table (``cell_id``, ``image_id``, ``mask_id``, labels, ``split``, ...),
        row ``i`` describing ``X[i]``.
    meta : dict
        Where they came from (checkpoint, store, model config).
    """

    X: np.ndarray
    cells: pd.DataFrame
    meta: dict

    def __len__(self) -> int:
        return len(self.X)

    @property
    def cell_ids(self) -> np.ndarray:
        """The cells' ids, object ``[N]``."""
        return self.cells["cell_id"].to_numpy()


@torch.inference_mode()
def embed_crops(
    model: CellEmbeddingModel,
    crops: np.ndarray,
    channel_index: list[int] | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> np.ndarray:
    """One batch of crops (uint8 ``[B, C, S, S]``) -> embeddings float32 ``[B, D]``."""
    x = torch.from_numpy(np.ascontiguousarray(crops if channel_index is None else crops[:, channel_index]))
    x = preprocess(x.to(device, non_blocking=True), model.config)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model.embed(x).float().cpu().numpy()


def _embed_rows(model, store, rows: np.ndarray, batch_size: int, device, progress: bool,
                out: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Embed the crops of ``rows`` -> (float32 ``[m, D]``, the ``m`` rows whose crops could be read,
    in order; {position in ``rows``: reason} of the others). The embeddings are written into
    ``out`` (float32 ``[len(rows), D]``, e.g. a memory-mapped file) when given; the first ``m`` rows
    of it are returned."""
    channel_index = channel_positions(store.channels, model.config.channels, store.path)
    X = np.empty((len(rows), model.config.embedding_dim), dtype=np.float32) if out is None else out
    unreadable: dict[int, str] = {}
    done = 0
    for start in tqdm(range(0, len(rows), batch_size), desc="embed", unit="batch", disable=not progress):
        positions = np.arange(start, min(start + batch_size, len(rows)))
        try:
            crops = store.get_crops(rows[positions])
        except DataError:  # a damaged chunk: keep the cells that can be read
            readable = []
            for position in positions:
                try:
                    store.get_crops(rows[position : position + 1])
                    readable.append(position)
                except DataError as error:
                    unreadable[int(position)] = str(error)
            positions = np.array(readable, dtype=np.int64)
            if not len(positions):
                continue
            crops = store.get_crops(rows[positions])
        X[done:done + len(positions)] = embed_crops(model, crops, channel_index, device)
        done += len(positions)
    return X[:done], unreadable


def _embed_into_file(path: Path, model, store, rows: np.ndarray, batch_size: int, device,
                     progress: bool) -> tuple[np.ndarray, dict[int, str]]:
    """:func:`_embed_rows` straight into the ``.npy`` file ``path`` (written atomically), batch by
    batch, so that ``[N, D]`` is never in memory -> (the file memory-mapped, read-only; unreadable)."""
    with atomic_path(path) as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                           shape=(len(rows), model.config.embedding_dim))
        X, unreadable = _embed_rows(model, store, rows, batch_size, device, progress, out=target)
        count = len(X)
        target.flush()
        del X, target  # unmap before the file is cut
        if count < len(rows):
            _cut_rows(tmp, count)
    return np.load(path, mmap_mode="r", allow_pickle=False), unreadable


def _cut_rows(path: Path, count: int) -> None:
    """Keep the first ``count`` rows of the C-order ``.npy`` file ``path``, in place.

    numpy writes headers with room for a longer first axis, so the new header has the same size.
    """
    with open(path, "r+b") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order,
                  "shape": (count, *shape[1:])}
        handle.seek(0)
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(handle, header)
        else:
            np.lib.format.write_array_header_2_0(handle, header)
        if handle.tell() != offset or fortran_order:
            raise RuntimeError(f"{path}: cannot cut the rows of this .npy file in place")
        handle.truncate(offset + count * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def write_embeddings(out: str | os.PathLike, embeddings: Embeddings) -> Path:
    """Write an embeddings directory atomically (array and metadata first, the table last)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / _ARRAY_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(embeddings.X, dtype=np.float32))
    return _write_description(out, embeddings)


def _write_description(out: Path, embeddings: Embeddings) -> Path:
    """The table and the header of an embeddings directory whose array is written (header last)."""
    with atomic_path(out / _TABLE_FILE) as tmp:
        embeddings.cells.reset_index(drop=True).to_parquet(tmp, index=False)
    meta = {key: value for key, value in embeddings.meta.items() if key not in HEADER_KEYS}
    meta.update(count=len(embeddings), dimension=int(embeddings.X.shape[1]))
    write_header(out / _META_FILE, FORMAT_NAME, FORMAT_VERSION, meta, files=[_ARRAY_FILE, _TABLE_FILE])
    return out


def read_embeddings(path: str | os.PathLike, mmap: bool = False,
                    columns: Sequence[str] | None = None) -> Embeddings:
    """Read an embeddings directory; ``mmap=True`` maps the array instead of reading it, and
    ``columns`` reads only those of the table's columns that it has (``cell_id`` always): the
    table of a million cells can take as much memory as their array.

    Raises :class:`~hpa_embed.io.DataError` naming the file for a missing one, a header that is
    not ours, or a file that differs from its checksum in ``embed.json`` or from the counts there.
    Checking reads each file once more (about 1 s per GB).
    """
    path = Path(path)
    for name in (_ARRAY_FILE, _TABLE_FILE, _META_FILE):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: not an embeddings directory (see hpa-embed embed)")
    try:
        legacy = "format" not in json.loads((path / _META_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        legacy = False  # read_header names the problem
    if legacy:
        raise DataError(path / _META_FILE, "written by an older hpa_embed, without checksums: embed the "
                                           "cells again (hpa-embed embed, or hpa-embed run --from embed)")
    meta = read_header(path / _META_FILE, FORMAT_NAME, {FORMAT_VERSION}, what="directory of embeddings")
    if set(meta.get("files", {})) != {_ARRAY_FILE, _TABLE_FILE}:
        raise DataError(path / _META_FILE, f"must list the checksums of {_ARRAY_FILE} and {_TABLE_FILE}")
    meta = {key: value for key, value in meta.items() if key not in HEADER_KEYS}
    try:
        X = np.load(path / _ARRAY_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:
        raise DataError(path / _ARRAY_FILE, f"unreadable array ({error})") from error
    try:
        if columns is not None:
            available = set(pq.read_schema(path / _TABLE_FILE).names)
            columns = [name for name in dict.fromkeys(["cell_id", *columns]) if name in available]
        cells = pd.read_parquet(path / _TABLE_FILE, columns=columns)
        pa.default_memory_pool().release_unused()  # arrow's allocator keeps the decoded table otherwise
    except Exception as error:  # pyarrow raises several types for a broken file
        raise DataError(path / _TABLE_FILE, f"unreadable table ({error})") from error
    if X.ndim != 2 or X.dtype != np.float32 or len(X) != len(cells):
        raise DataError(
            path / _ARRAY_FILE,
            f"expected float32 [{len(cells)}, D] to match {_TABLE_FILE}, got {X.dtype} {X.shape}",
        )
    if (meta.get("count"), meta.get("dimension")) != X.shape:
        raise DataError(path / _META_FILE, f"says {meta.get('count')} embeddings of dimension "
                                           f"{meta.get('dimension')}, {_ARRAY_FILE} holds {X.shape}")
    return Embeddings(X, cells, meta)


def embed_store(
    checkpoint: str | os.PathLike,
    store: CellStore | str | os.PathLike,
    out: str | os.PathLike | None = None,
    split: str | None = None,
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = True,
) -> Embeddings:
    """Embed the cells of a store with a trained model.

    Parameters
    ----------
    checkpoint : path
        A checkpoint directory (``checkpoints/best`` of a run).
    store : CellStore or path
    out : path, optional
        Write the embeddings directory here (see the module docstring).
    split : str, optional
        Only the cells of this split (``"train"``, ``"val"``, ``"test"``); default all.
    batch_size : int
        Cells per forward pass.
    device : {"auto", "cpu", "cuda"}
    progress : bool

    Returns
    -------
    Embeddings
        ``X`` float32 ``[N, D]`` aligned with ``cells`` (the store's rows, in table order); with
        ``out`` in one process, ``<out>/embeddings.npy`` memory-mapped read-only.
        Cells whose crops cannot be read (a damaged chunk) are left out, logged, and listed per
        field in ``meta["skipped"]`` (and ``<out>/skipped.csv``). Under ``torchrun`` every rank
        returns the merged result.
    """
    store = store if isinstance(store, CellStore) else CellStore.open(store)
    context = distributed_context(device)
    model, config, extra = load_checkpoint(checkpoint, map_location=context.device)
    model = model.to(memory_format=torch.channels_last)
    if store.crop_size != config.crop_size:
        raise DataError(
            store.path,
            f"the store holds {store.crop_size} px crops, the model in {checkpoint} "
            f"was trained on {config.crop_size} px",
        )
    cells = store.cells
    if split is not None:
        cells = cells[cells["split"] == split]
    rows = cells["row"].to_numpy(dtype=np.int64)
    streamed = out is not None and context.world_size == 1
    if streamed:  # one process: straight into the output file, block by block
        X, unreadable = _embed_into_file(Path(out) / _ARRAY_FILE, model, store, rows, batch_size,
                                         context.device, progress)
    else:
        shards = np.array_split(np.arange(len(rows)), context.world_size)
        mine = shards[context.rank]
        X, unreadable = _embed_rows(model, store, rows[mine], batch_size, context.device,
                                    progress and context.is_main)
        unreadable = {int(mine[position]): reason for position, reason in unreadable.items()}
    if context.world_size > 1:
        import torch.distributed as dist

        gathered = [None] * context.world_size
        dist.all_gather_object(gathered, (X, unreadable))
        X = np.concatenate([part[0] for part in gathered])  # each shard holds its readable rows, in order
        unreadable = {key: value for part in gathered for key, value in part[1].items()}
    cells = cells.reset_index(drop=True)
    skipped: dict[str, str] = {}
    if unreadable:
        lost = np.zeros(len(cells), dtype=bool)
        lost[list(unreadable)] = True
        for position, reason in sorted(unreadable.items()):
            skipped.setdefault(str(cells["image_id"].iat[position]), reason)
        log.warning("%d cell(s) of %d field(s) skipped: their crops could not be read",
                    lost.sum(), len(skipped))
        cells = cells[~lost].reset_index(drop=True)  # X holds the readable rows only
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "store": str(store.path.resolve()),
        "split": split,
        "model": config.to_dict(),
        "skipped": skipped,
    }
    result = Embeddings(X, cells, meta)
    if out is not None and context.is_main:
        if streamed:
            _write_description(Path(out), result)
        else:
            write_embeddings(out, result)
        write_skipped(out, {"embed": skipped})
        log.info("wrote %d embeddings (D=%d) to %s", len(result), X.shape[1], out)
    return result
