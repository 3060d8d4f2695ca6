"""Crash safety: a process killed with SIGKILL in the middle of writing leaves no half-written file where
a reader looks, and the same call run again finishes with what an uninterrupted run gives.

Each test runs the real work (one of the functions below) in a subprocess on tiny data, watches the files
it writes to know where it is, kills it there, checks what a reader sees, then makes the same call again.
"""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hpa_embed.io import DataError
from hpa_embed.store import CellStore

TESTS = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- the work, run killed or whole


@contextlib.contextmanager
def one_torch_thread():
    """Torch on one thread in this process, as ``OMP_NUM_THREADS=1`` makes it in the subprocesses: the
    killed and the uninterrupted runs then compute alike."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_tiny_store(data, out) -> None:
    from hpa_embed.config import CropConfig
    from hpa_embed.crops import build_store

    data = Path(data)
    build_store(data / "train", data / "truth", out, labels=data / "train.csv", truth=data,
                config=CropConfig(crop_size=32), workers=1, fields_per_commit=1, progress=False)


def fit_tiny(store, out) -> None:
    from hpa_embed.config import DataConfig, LossConfig, ModelConfig, TrainConfig
    from hpa_embed.train import fit

    fit(store, out, ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=16),
        LossConfig(classification="bce", miner="semihard"),
        DataConfig(label_mode="true_labels", batch_size=8, m_per_class=2, batches_per_epoch=3),
        TrainConfig(epochs=2, lr=1e-3, seed=3), resume=True, progress=False)


def index_vectors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(seed).standard_normal((n, 64), dtype=np.float32)
    return X, np.array([f"cell-{seed}-{i}" for i in range(n)], dtype=object)


def build_and_save_index(out, n="200000", seed="1") -> None:
    from hpa_embed.config import IndexConfig
    from hpa_embed.index import CellIndex

    X, cell_ids = index_vectors(int(n), int(seed))
    CellIndex.build(X, cell_ids, IndexConfig(kind="flat"), progress=False).save(out)


def run_tiny_pipeline(config, out) -> None:
    from hpa_embed.pipeline import run_pipeline

    run_pipeline(config, out, workers=1, progress=False)


# --------------------------------------------------------------------------- killing


def start(function: Callable, *args) -> subprocess.Popen:
    """``function(*args)`` (a function of this module, args as str) in a new process."""
    script = f"import sys; from test_crash import {function.__name__} as work; work(*sys.argv[1:])"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    errors = tempfile.TemporaryFile()  # a file: a pipe nobody reads would block a talkative process
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=environment,
                               stdout=subprocess.DEVNULL, stderr=errors)
    process.errors = errors
    return process


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL ``process`` as soon as ``ready()`` holds; False when it finished first (not killed)."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                process.errors.seek(0)
                assert process.returncode == 0, process.errors.read().decode()[-3000:]
                return False
            assert time.monotonic() < deadline, f"not ready after {timeout} s"
            time.sleep(0.0005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.errors.close()
    return process.returncode == -signal.SIGKILL


def temporary_in(directory: Path, name: str) -> Callable[[], bool]:
    """Whether ``directory`` holds the temporary file (or folder) that ``name`` is being written to now."""

    def ready() -> bool:
        try:
            return any(entry.name.startswith(f".{name}.tmp-") for entry in os.scandir(directory))
        except FileNotFoundError:
            return False

    return ready


def staged_chunk_being_written(store: Path) -> Callable[[], bool]:
    """Whether a crop task is writing its chunk in ``<store>/incoming/<run>/`` now."""

    def ready() -> bool:
        return any(path.name.startswith(".chunk-") and ".tmp-" in path.name
                   for path in (store / "incoming").glob("*/.*"))

    return ready


def leftovers(directory: Path) -> list[Path]:
    """The temporary files and folders of ``hpa_embed.io.atomic_path`` that a killed writer left."""
    return [path for path in directory.rglob(".*") if ".tmp-" in path.name or ".old-" in path.name]


def assert_every_visible_file_is_whole(directory: Path) -> None:
    """Each file under its final name (what a reader opens) parses to its end: no half-written
    parquet, npy, json, safetensors, FAISS or PNG file. A killed writer's temporaries are hidden."""
    import faiss
    from PIL import Image
    from safetensors.torch import load_file

    readers = {".parquet": pq.read_table, ".npy": lambda path: np.load(path, allow_pickle=False),
               ".json": lambda path: json.loads(path.read_text(encoding="utf-8")),
               ".safetensors": load_file, ".faiss": lambda path: faiss.read_index(str(path)),
               ".png": lambda path: Image.open(path).load()}
    for path in directory.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(directory).parts)
        if path.suffix in readers and path.is_file() and not hidden:
            readers[path.suffix](path)


# --------------------------------------------------------------------------- (a) writing a CellStore


def table_rows(store: Path) -> int:
    table = store / "cells.parquet"
    return pq.read_metadata(table).num_rows if table.is_file() else 0


def assert_store_is_a_prefix_of(path: Path, reference: CellStore) -> int:
    """The store a reader sees now: unique cells, each with the reference's crop of that cell."""
    store = CellStore.open(path)
    cells = store.cells
    assert cells["cell_id"].is_unique
    expected = reference.cells.set_index("cell_id").loc[cells["cell_id"], "row"].to_numpy()
    np.testing.assert_array_equal(store.get_crops(cells["row"].to_numpy()), reference.get_crops(expected))
    return len(store)


@pytest.mark.slow
def test_a_killed_store_build_resumes_without_losing_or_repeating_a_cell(tiny_dataset, tiny_store_path,
                                                                           tmp_path):
    reference = CellStore.open(tiny_store_path)  # the same build, uninterrupted
    out = tmp_path / "store"
    moments = {  # where each kill lands
        "after a commit": lambda: table_rows(out) > 0,
        "writing a crop chunk": staged_chunk_being_written(out),
        "writing the table": temporary_in(out, "cells.parquet"),
        "later, after more commits": lambda: table_rows(out) > len(reference) // 2,
    }
    killed = []
    for moment, ready in moments.items():
        before = table_rows(out)
        if not kill_when(start(build_tiny_store, tiny_dataset, out), ready):
            break  # it finished: nothing left to interrupt
        rows = assert_store_is_a_prefix_of(out, reference)
        assert before <= rows < len(reference), moment  # killed mid-build, nothing committed lost
        assert_every_visible_file_is_whole(out)
        killed.append(moment)
    assert killed[:2] == ["after a commit", "writing a crop chunk"]

    build_tiny_store(tiny_dataset, out)
    assert not list((out / "incoming").iterdir())  # what the killed runs staged was removed
    store = CellStore.open(out)
    pd.testing.assert_frame_equal(store.cells, reference.cells)
    np.testing.assert_array_equal(store.get_crops(store.cells["row"].to_numpy()),
                                  reference.get_crops(reference.cells["row"].to_numpy()))


# --------------------------------------------------------------------------- (b) training


@pytest.fixture(scope="module")
def straight_run(tiny_store_path, tmp_path_factory) -> Path:
    """The training run of ``fit_tiny``, uninterrupted."""
    out = tmp_path_factory.mktemp("fit") / "straight"
    with one_torch_thread():
        fit_tiny(tiny_store_path, out)
    return out


def assert_checkpoints_load(run: Path) -> None:
    from hpa_embed.models import load_checkpoint, load_state
    from hpa_embed.models.checkpoint import STATE_FILE

    for name in ("last", "best"):
        if (run / "checkpoints" / name).exists():
            load_checkpoint(run / "checkpoints" / name)
    if (run / "checkpoints" / "last").exists():
        assert load_state(run / "checkpoints" / "last" / STATE_FILE)["epoch"] >= 1


def assert_same_training(run: Path, straight: Path) -> None:
    import torch
    from safetensors.torch import load_file

    for name in ("last", "best"):
        got = load_file(run / "checkpoints" / name / "model.safetensors")
        expected = load_file(straight / "checkpoints" / name / "model.safetensors")
        assert got.keys() == expected.keys()
        for key, tensor in expected.items():
            assert torch.equal(got[key], tensor), (name, key)
    timing = ["train_cells_per_s"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").drop(columns=timing),
                                  pd.read_csv(straight / "history.csv").drop(columns=timing))


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["between epochs", "writing the best checkpoint",
                                    "writing the last checkpoint"])
def test_killed_training_resumes_to_the_weights_of_an_uninterrupted_run(tiny_store_path, straight_run,
                                                                         tmp_path, moment):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    ready = {
        "between epochs": lambda: (checkpoints / "last" / "config.json").is_file(),
        "writing the best checkpoint": temporary_in(checkpoints, "best"),
        "writing the last checkpoint": temporary_in(checkpoints, "last"),
    }[moment]
    assert kill_when(start(fit_tiny, tiny_store_path, run), ready)
    if moment != "between epochs":  # killed while the checkpoint's temporary folder was being filled
        assert leftovers(checkpoints)
    assert_every_visible_file_is_whole(run)
    assert_checkpoints_load(run)

    with one_torch_thread():
        fit_tiny(tiny_store_path, run)  # resume=True
    assert_same_training(run, straight_run)


# --------------------------------------------------------------------------- (c) saving a CellIndex


@pytest.mark.parametrize("old", [False, True], ids=["first save", "replacing an index"])
def test_an_index_killed_while_saving_is_the_old_one_or_none(tmp_path, old, one_faiss_thread):
    from hpa_embed.index import CellIndex

    path = tmp_path / "index"
    if old:
        build_and_save_index(path, n=50, seed=0)
    assert kill_when(start(build_and_save_index, path), temporary_in(tmp_path, "index"))
    assert leftovers(tmp_path)  # killed while the new index's temporary folder was being filled
    assert_every_visible_file_is_whole(tmp_path)
    if old:
        kept = CellIndex.load(path)
        assert kept.cell_ids.tolist() == index_vectors(50, 0)[1].tolist()
    else:
        assert not path.exists()
        with pytest.raises(DataError, match="index.json: not found"):
            CellIndex.load(path)

    build_and_save_index(path)
    saved, expected = CellIndex.load(path), index_vectors(200_000, 1)
    assert saved.cell_ids.tolist() == expected[1].tolist()
    X = expected[0] / np.linalg.norm(expected[0], axis=1, keepdims=True)
    np.testing.assert_allclose(saved.faiss_index.reconstruct_n(0, len(saved)), X, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- (d) a whole pipeline run


@pytest.fixture(scope="module")
def pipeline_config(tmp_path_factory) -> Path:
    """The shipped ``tiny`` config, smaller: 8 fields, 2 short epochs, no UMAP map."""
    from hpa_embed.config import MapConfig, write_config_file
    from hpa_embed.pipeline import load_named_config

    config = load_named_config("tiny")
    config = config.replace(input=dataclasses.replace(config.input, n_images=8),
                            data=dataclasses.replace(config.data, batches_per_epoch=2),
                            train=dataclasses.replace(config.train, epochs=2), map=MapConfig(enabled=False))
    return write_config_file(tmp_path_factory.mktemp("config") / "tiny.toml", config)


def assert_same_run_outputs(run: Path, straight: Path) -> None:
    from hpa_embed.embed import read_embeddings

    got, expected = CellStore.open(run / "store"), CellStore.open(straight / "store")
    pd.testing.assert_frame_equal(got.cells, expected.cells)
    np.testing.assert_array_equal(got.get_crops(got.cells["row"].to_numpy()),
                                  expected.get_crops(expected.cells["row"].to_numpy()))
    got, expected = read_embeddings(run / "embeddings"), read_embeddings(straight / "embeddings")
    np.testing.assert_array_equal(got.X, expected.X)
    pd.testing.assert_frame_equal(got.cells, expected.cells)
    summary = Path("evaluation") / "summary.json"
    summaries = [json.loads((folder / summary).read_text()) for folder in (run, straight)]
    assert summaries[0] == summaries[1]


@pytest.mark.slow
def test_a_killed_pipeline_run_reruns_to_the_outputs_of_an_uninterrupted_one(pipeline_config, tmp_path):
    from hpa_embed.config import read_config_file
    from hpa_embed.pipeline import STAGES, stage_status

    with one_torch_thread():
        run_tiny_pipeline(pipeline_config, tmp_path / "straight")
    out = tmp_path / "run"
    moments = {  # the stage killed, when
        "segment": lambda: any((out / "masks").glob("*_cellmask.png")),
        "train": lambda: (out / "train" / "checkpoints" / "last" / "config.json").is_file(),
    }
    config = read_config_file(pipeline_config)
    for stage, ready in moments.items():
        assert kill_when(start(run_tiny_pipeline, pipeline_config, out), ready), stage
        status = stage_status(config, out)
        assert status[stage] == "partial", (stage, status)
        assert all(status[s] == "done" for s in STAGES[:STAGES.index(stage)])
        assert_every_visible_file_is_whole(out)

    with one_torch_thread():
        run_tiny_pipeline(pipeline_config, out)
    assert stage_status(config, out) == dict.fromkeys(STAGES, "done")
    assert_same_run_outputs(out, tmp_path / "straight")
