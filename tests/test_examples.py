"""The runnable examples run, on the tiny data they make themselves, and write what they say."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpa_embed.config import read_config_file
from hpa_embed.embed import read_embeddings
from hpa_embed.evaluate import evaluate_predictions
from hpa_embed.index import CellIndex
from hpa_embed.io import find_mask_file, list_field_ids, read_mask
from hpa_embed.models import adapt_first_conv, load_checkpoint
from hpa_embed.pipeline import stage_status
from hpa_embed.rle import decode_binary_mask
from hpa_embed.store import CellStore
from hpa_embed.submission import read_submission

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args) -> str:
    """Run ``examples/<name>`` with ``args``; its stdout (the test fails with its stderr)."""
    command = [sys.executable, str(EXAMPLES / name), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """quickstart.py run once on its defaults: (its folder, its stdout); the later examples read it."""
    out = tmp_path_factory.mktemp("quickstart") / "run"
    return out, run_example("quickstart.py", "--out", out)


@pytest.mark.slow
def test_custom_training_loop_writes_a_checkpoint_that_loads(tmp_path):
    script = EXAMPLES / "custom_training_loop.py"
    command = [sys.executable, str(script), "--out", str(tmp_path), "--epochs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "epoch 1: mean loss" in result.stdout
    model, config, extra = load_checkpoint(tmp_path / "checkpoint")
    assert config.arch == "resnet18" and config.crop_size == 32 and extra["epoch"] == 1


def test_examples_use_public_names_only():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert "import _" not in text and "._" not in text.replace("__", ""), path


def test_examples_say_what_they_show_and_how_to_run_them():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text))
        assert docstring and f"python examples/{path.name}" in docstring, path
        assert "argparse.ArgumentParser" in text and '"--out"' in text, path


@pytest.mark.slow
def test_quickstart_goes_from_fields_to_held_out_scores(quickstart):
    out, stdout = quickstart
    store = CellStore.open(out / "store")
    model, config, _ = load_checkpoint(out / "train" / "checkpoints" / "best")
    assert config.arch == "resnet18" and config.crop_size == store.crop_size == 32
    embedded = read_embeddings(out / "embeddings")
    assert embedded.X.shape == (len(store), 32)
    assert list(embedded.cells["cell_id"]) == list(store.cells["cell_id"])
    assert list(CellIndex.load(out / "index").cell_ids) == list(store.cells["cell_id"])
    for method in ("head", "knn"):
        # the printed scores are those of the test cells of its predictions
        summary = evaluate_predictions(out / "predictions" / method, splits=("test",), truth=out / "data",
                                       masks=out / "masks", progress=False)
        printed = re.search(rf"^  {method}: (\d+) cells of (\d+) images: (.*)$", stdout, re.M)
        assert printed, stdout
        assert int(printed[1]) == summary["cells"] == (store.cells["split"] == "test").sum()
        assert int(printed[2]) == summary["images"]
        scores = dict(item.split(" ") for item in printed[3].split(", "))
        assert set(scores) == {"cell_map", "image_map", "competition_map"}
        assert all(abs(float(scores[name]) - value) < 1e-3 for name, value in summary["scores"].items())
        assert (out / "evaluation" / method / "cell_ap.csv").is_file()


@pytest.mark.slow
def test_similarity_search_finds_what_search_cell_finds_in_a_tiny_run(tmp_path):
    stdout = run_example("similarity_search.py", "--out", tmp_path)
    table = pd.read_csv(tmp_path / "neighbours.csv")
    (query,) = table["query"].unique()
    store = CellStore.open(tmp_path / "run" / "store")
    # the default query: the first cell of a test image
    assert query == store.cells.loc[store.cells["split"] == "test", "cell_id"].iloc[0]
    scores, cell_ids = CellIndex.load(tmp_path / "run" / "index").search_cell(query, 6)
    assert list(table["cell_id"]) == list(cell_ids) and list(table["rank"]) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(table["score"], scores, rtol=1e-5)
    image_of = store.cells.set_index("cell_id")["image_id"]
    assert list(table["image_id"]) == list(image_of[table["cell_id"]])
    assert f"query {query}: image {image_of[query]}" in stdout
    assert (tmp_path / "neighbours.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_similarity_search_takes_a_run_and_a_cell(quickstart, tmp_path):
    run, _ = quickstart
    query = CellStore.open(run / "store").cells["cell_id"].iloc[-1]
    run_example("similarity_search.py", "--run", run, "--cell", query, "-k", 3, "--out", tmp_path)
    table = pd.read_csv(tmp_path / "neighbours.csv")
    _, cell_ids = CellIndex.load(run / "index").search_cell(query, 3)
    assert set(table["query"]) == {query} and list(table["cell_id"]) == list(cell_ids)
    assert not (tmp_path / "run").exists() and (tmp_path / "neighbours.png").is_file()


@pytest.mark.slow
def test_map_your_cells_writes_the_maps_and_an_h5ad_of_a_run(quickstart, tmp_path):
    import anndata

    run, _ = quickstart
    stdout = run_example("map_your_cells.py", "--run", run, "--out", tmp_path)
    embedded = read_embeddings(run / "embeddings")
    coordinates = np.load(tmp_path / "coordinates.npy")
    assert coordinates.shape == (len(embedded), 2) and np.isfinite(coordinates).all()
    for name in ("map_class", "map_image", "map_prediction", "map_correct", "class_panels"):
        assert (tmp_path / f"{name}.png").is_file(), name
    page = tmp_path / "interactive" / "index.html"
    assert page.is_file() and page.resolve().as_uri() in stdout
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert list(adata.obs_names) == list(embedded.cells["cell_id"])
    np.testing.assert_array_equal(adata.X, embedded.X)
    np.testing.assert_array_equal(adata.obsm["X_umap"], coordinates)


@pytest.mark.slow
def test_kaggle_submission_has_a_row_per_field_and_masks_of_its_cells(tmp_path):
    stdout = run_example("kaggle_submission.py", "--out", tmp_path)
    fields = list_field_ids(tmp_path / "fields" / "train")
    submission = read_submission(tmp_path / "submission.csv")  # checks every mask decodes
    assert list(submission.images["image_id"]) == fields == ["syn_000000", "syn_000001", "syn_000002",
                                                             "syn_000003"]
    for image_id in fields:
        mask = read_mask(find_mask_file(tmp_path / "masks", image_id))
        rows = submission.predictions[submission.predictions["image_id"] == image_id]
        # every cell of the mask, each with a confidence for each of the 19 classes
        assert rows["cell"].nunique() == len(np.unique(mask[mask > 0]))
        assert len(rows) == 19 * rows["cell"].nunique() and rows["confidence"].between(0, 1).all()
        for rle in rows["rle"].unique():
            decoded = decode_binary_mask(rle, *mask.shape)
            (cell,) = np.unique(mask[decoded])
            assert cell > 0 and np.array_equal(decoded, mask == cell)
        assert f"  {image_id} 256x256: {rows['cell'].nunique()} cells" in stdout
    model, config, _ = load_checkpoint(tmp_path / "model" / "train" / "checkpoints" / "best")
    assert config.crop_size == CellStore.open(tmp_path / "store").crop_size == 32
    assert "against the true masks and labels" in stdout


@pytest.mark.slow
def test_pretrained_weights_load_from_the_named_file(tmp_path):
    weights = tmp_path / "resnet50.pth"
    stdout = run_example("pretrained_weights.py", "--make-demo-weights", "--weights", weights,
                         "--nuclei-model", tmp_path / "absent-nuclei.pth",
                         "--cell-model", tmp_path / "absent-cell.pth", "--out", tmp_path / "out")
    assert "note: segmenting with the classical segmenter instead" in stdout
    assert "--nuclei-model " + str(tmp_path / "absent-nuclei.pth") + " not found" in stdout
    if importlib.util.find_spec("hpacellseg") is None:
        assert "the hpacellseg package is not installed" in stdout
    model, config, _ = load_checkpoint(tmp_path / "out" / "train" / "checkpoints" / "best")
    assert config.arch == "resnet50" and config.pretrained == str(weights) and config.crop_size == 32
    source = torch.load(weights, map_location="cpu", weights_only=True)
    backbone = model.backbone.state_dict()
    torch.testing.assert_close(backbone["conv1.weight"], adapt_first_conv(source["conv1.weight"], 4))
    torch.testing.assert_close(backbone["layer4.2.conv3.weight"], source["layer4.2.conv3.weight"])
    assert re.search(r"; (\d+) of \1 other tensors equal to the file's", stdout), stdout


@pytest.mark.slow
def test_gpu_config_tiny_runs_the_gpu_config_shrunk(tmp_path):
    stdout = run_example("gpu_config.py", "--tiny", "--out", tmp_path)
    full = read_config_file(EXAMPLES / "configs" / "gpu-resnet50.toml")
    ran = read_config_file(tmp_path / "config.toml")
    assert (ran.model.arch, ran.model.crop_size, ran.crop.crop_size) == ("resnet18", 32, 32)
    assert (ran.train.epochs, ran.train.device, ran.input.n_images, ran.map.enabled) == (1, "cpu", 12, False)
    # what --tiny does not shrink is the GPU config's
    assert (ran.loss, ran.classify, ran.evaluate, ran.index) == (full.loss, full.classify, full.evaluate,
                                                                 full.index)
    assert ran.train.optimizer == full.train.optimizer and ran.data.sampler == full.data.sampler
    assert set(stage_status(ran, tmp_path).values()) == {"done"}
    assert "model     resnet18, 4 channels" in stdout and "device cpu" in stdout
    assert re.search(r"^  head: \d+ test cells of \d+ images: cell_map", stdout, re.M)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_gpu_config_refuses_the_full_run_on_a_cpu(tmp_path):
    command = [sys.executable, str(EXAMPLES / "gpu_config.py"), "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "no CUDA device here" in result.stderr
    assert "resnet50" in result.stdout and not any(tmp_path.iterdir())
