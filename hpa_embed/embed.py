"""Embeddings of every cell of a CellStore from a trained checkpoint.

An embeddings directory holds::

    <out>/embeddings.npy     float32 [N, D], L2-normalised rows
    <out>/cells.parquet      the store's table rows, in the same order (cell_id, image_id, ...)
    <out>/embed.json         count, dimension, the checkpoint and store they came from, the model config

Each file is written atomically, the table last. Under ``torchrun`` every rank embeds its own
contiguous shard of the cells, the shards are gathered in order, and rank 0 writes the result.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import channel_positions
from .distributed import distributed_context
from .io import DataError, atomic_path
from .models import CellEmbeddingModel, load_checkpoint, preprocess
from .store import CellStore

__all__ = ["Embeddings", "embed_store", "embed_crops", "read_embeddings", "write_embeddings"]

log = logging.getLogger(__name__)

_ARRAY_FILE = "embeddings.npy"
_TABLE_FILE = "cells.parquet"
_META_FILE = "embed.json"


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


def _embed_rows(model, store, rows: np.ndarray, batch_size: int, device, progress: bool) -> np.ndarray:
    channel_index = channel_positions(store.channels, model.config.channels, store.path)
    X = np.empty((len(rows), model.config.embedding_dim), dtype=np.float32)
    for start in tqdm(range(0, len(rows), batch_size), desc="embed", unit="batch", disable=not progress):
        batch = rows[start : start + batch_size]
        X[start : start + len(batch)] = embed_crops(model, store.get_crops(batch), channel_index, device)
    return X


def write_embeddings(out: str | os.PathLike, embeddings: Embeddings) -> Path:
    """Write an embeddings directory atomically (array and metadata first, the table last)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / _ARRAY_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(embeddings.X, dtype=np.float32))
    meta = {**embeddings.meta, "count": len(embeddings), "dimension": int(embeddings.X.shape[1])}
    with atomic_path(out / _META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    with atomic_path(out / _TABLE_FILE) as tmp:
        embeddings.cells.reset_index(drop=True).to_parquet(tmp, index=False)
    return out


def read_embeddings(path: str | os.PathLike, mmap: bool = False) -> Embeddings:
    """Read an embeddings directory; ``mmap=True`` maps the array instead of reading it."""
    path = Path(path)
    for name in (_ARRAY_FILE, _TABLE_FILE, _META_FILE):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: not an embeddings directory (see hpa-embed embed)")
    try:
        X = np.load(path / _ARRAY_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:
        raise DataError(path / _ARRAY_FILE, f"unreadable array ({error})") from error
    cells = pd.read_parquet(path / _TABLE_FILE)
    meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
    if X.ndim != 2 or X.dtype != np.float32 or len(X) != len(cells):
        raise DataError(
            path / _ARRAY_FILE,
            f"expected float32 [{len(cells)}, D] to match {_TABLE_FILE}, got {X.dtype} {X.shape}",
        )
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
        ``X`` float32 ``[N, D]`` aligned with ``cells`` (the store's rows, in table order).
        Under ``torchrun`` every rank returns the merged result.
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
    shards = np.array_split(np.arange(len(rows)), context.world_size)
    mine = shards[context.rank]
    X = _embed_rows(model, store, rows[mine], batch_size, context.device, progress and context.is_main)
    if context.world_size > 1:
        import torch.distributed as dist

        gathered = [None] * context.world_size
        dist.all_gather_object(gathered, X)
        X = np.concatenate(gathered)
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "store": str(store.path.resolve()),
        "split": split,
        "model": config.to_dict(),
    }
    result = Embeddings(X, cells.reset_index(drop=True), meta)
    if out is not None and context.is_main:
        write_embeddings(out, result)
        log.info("wrote %d embeddings (D=%d) to %s", len(result), X.shape[1], out)
    return result
