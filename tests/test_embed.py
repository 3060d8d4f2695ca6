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
