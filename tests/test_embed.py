from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_torchrun

from hpa_embed.config import ModelConfig
from hpa_embed.embed import embed_store, read_embeddings
from hpa_embed.io import DataError
from hpa_embed.models import create_model, preprocess, save_checkpoint
from hpa_embed.store import CellStore


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", in_chans=3, crop_size=32, embedding_dim=8)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", create_model(config).eval(), config)


def test_embed_matches_direct_forward_and_round_trips(tiny_store_path, checkpoint, tmp_path):
    result = embed_store(
        checkpoint, tiny_store_path, out=tmp_path / "emb", split="val", batch_size=5, progress=False
    )
    store = CellStore.open(tiny_store_path)
    val = store.cells[store.cells["split"] == "val"]
    assert list(result.cells["cell_id"]) == list(val["cell_id"])
    assert result.X.dtype == np.float32 and result.X.shape == (len(val), 8)
    np.testing.assert_allclose(np.linalg.norm(result.X, axis=1), 1, rtol=1e-5)
    # brute force: the model on the RGB channels of the same crops, one batch
    from hpa_embed.models import load_checkpoint

    model, config, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        expected = model.embed(preprocess(store.get_crops(val["row"].to_numpy())[:, :3], config)).numpy()
    np.testing.assert_allclose(result.X, expected, atol=1e-5)
    back = read_embeddings(tmp_path / "emb")
    np.testing.assert_array_equal(back.X, result.X)
    assert list(back.cell_ids) == list(result.cell_ids) and back.meta["count"] == len(val)


def test_embed_writes_the_output_array_batch_by_batch(tiny_store_path, checkpoint, tmp_path):
    in_memory = embed_store(checkpoint, tiny_store_path, batch_size=5, progress=False)
    streamed = embed_store(checkpoint, tiny_store_path, out=tmp_path / "emb", batch_size=5, progress=False)
    # the returned array is the output file, memory-mapped: [N, D] was never held in memory
    assert isinstance(streamed.X, np.memmap) and not streamed.X.flags.writeable
    assert Path(streamed.X.filename) == (tmp_path / "emb" / "embeddings.npy").resolve()
    np.testing.assert_allclose(streamed.X, in_memory.X, atol=1e-6)
    assert sorted(path.name for path in (tmp_path / "emb").iterdir()) == [
        "cells.parquet", "embed.json", "embeddings.npy"]


def test_read_embeddings_reads_only_the_columns_asked_for(tmp_path):
    import pandas as pd

    from hpa_embed.embed import Embeddings, write_embeddings

    cells = pd.DataFrame({"cell_id": ["a", "b"], "image_id": ["i", "i"], "split": ["train", "test"]})
    write_embeddings(tmp_path / "emb", Embeddings(np.eye(2, dtype=np.float32), cells, {}))
    read = read_embeddings(tmp_path / "emb", mmap=True, columns=["split", "true_labels"])
    assert list(read.cells.columns) == ["cell_id", "split"] and isinstance(read.X, np.memmap)
    assert list(read_embeddings(tmp_path / "emb").cells.columns) == ["cell_id", "image_id", "split"]


def test_cut_rows_keeps_the_first_rows_of_a_npy_file_in_place(tmp_path):
    from hpa_embed.embed import _cut_rows

    array = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=(100_000, 3))
    array[:] = np.arange(300_000, dtype=np.float32).reshape(-1, 3)
    array.flush()
    del array
    _cut_rows(tmp_path / "a.npy", 7)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(21, dtype=np.float32).reshape(7, 3))
    assert (tmp_path / "a.npy").stat().st_size < 1000


def test_embed_refuses_bad_input(tiny_store_path, checkpoint, tmp_path):
    with pytest.raises(DataError, match="not an embeddings directory"):
        read_embeddings(tmp_path)
    with pytest.raises(DataError, match="config.json"):
        embed_store(tmp_path, tiny_store_path)
    config = ModelConfig(arch="resnet18", in_chans=3, crop_size=64, embedding_dim=8)
    wrong = save_checkpoint(tmp_path / "wrong", create_model(config), config)
    with pytest.raises(DataError, match="32 px crops"):
        embed_store(wrong, tiny_store_path)


@pytest.mark.slow
def test_two_process_embedding_equals_one_process(tiny_store_path, checkpoint, tmp_path):
    single = embed_store(checkpoint, tiny_store_path, batch_size=16, progress=False)
    run_torchrun("embed_ddp_script.py", checkpoint, tiny_store_path, tmp_path / "ddp")
    ddp = read_embeddings(tmp_path / "ddp")
    assert list(ddp.cell_ids) == list(single.cell_ids)
    np.testing.assert_allclose(ddp.X, single.X, atol=1e-5)
