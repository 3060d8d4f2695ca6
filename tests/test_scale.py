"""Scale-out of the per-field stages: a Dask cluster, array-job shards and their merge give what
one process gives."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_embed.cli import main
from hpa_embed.config import CropConfig
from hpa_embed.crops import build_store, merge_stores
from hpa_embed.executors import (
    DASK_WORKER_CONFIG,
    MAX_FIELDS_PER_TASK,
    LostBatchesError,
    map_batches,
    select_shard,
    split_batches,
)
from hpa_embed.io import DataError
from hpa_embed.segment import ClassicalSegmenter, segment_directory
from hpa_embed.store import CellStore

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
# a second cluster's HTTP server finds the default port taken and says so
pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning")

CONFIG = CropConfig(crop_size=32)
CHUNK = 16  # small chunks: a merge links the full ones and copies the partial ones


def crop(data: Path, masks: Path, out: Path, **kwargs):
    """build_store of the tiny set into ``out``, a store of CHUNK-crop chunks."""
    if not out.exists():
        CellStore.create(out, crop_size=CONFIG.crop_size, chunk_size=CHUNK, attrs={"crop": CONFIG.to_dict()})
    return build_store(data / "train", masks, out, labels=data / "train.csv", truth=data, config=CONFIG,
                       progress=False, **kwargs)


def sorted_rows(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The table sorted by cell id (without ``row``) and the crops in that order."""
    store = CellStore.open(path)
    cells = store.cells.sort_values("cell_id").reset_index(drop=True)
    return cells.drop(columns="row"), store.get_crops(cells["row"].to_numpy())


def assert_same_cells(expected: Path, found: Path) -> None:
    (cells_a, crops_a), (cells_b, crops_b) = sorted_rows(expected), sorted_rows(found)
    pd.testing.assert_frame_equal(cells_a, cells_b)
    np.testing.assert_array_equal(crops_a, crops_b)


def assert_same_masks(expected: Path, found: Path) -> None:
    names = sorted(path.name for path in expected.glob("*mask.png"))
    assert names and names == sorted(path.name for path in found.glob("*mask.png"))
    for name in names:
        assert (expected / name).read_bytes() == (found / name).read_bytes(), name


@pytest.fixture(scope="module")
def local_run(tiny_dataset, tmp_path_factory) -> Path:
    """Masks and a store of the tiny set, made in this process."""
    out = tmp_path_factory.mktemp("local")
    segment_directory(tiny_dataset / "train", out / "masks", ClassicalSegmenter(), workers=1, progress=False)
    crop(tiny_dataset, out / "masks", out / "store", workers=1)
    return out


def local_cluster():
    with dask.config.set(DASK_WORKER_CONFIG):
        return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                        dashboard_address=None)


@pytest.fixture(scope="module")
def client():
    with local_cluster() as cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


# --------------------------------------------------------------------------- shards and batches


def test_select_shard_is_a_stable_partition():
    ids = [f"field_{i}" for i in range(200)]
    shards = [select_shard(ids, index, 3) for index in range(3)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert all(40 < len(shard) < 95 for shard in shards)
    # a field's shard depends on its id alone: more fields, listed in another order, move none
    more = select_shard(ids[::-1] + [f"extra_{i}" for i in range(20)], 1, 3)
    assert [item for item in more if item in ids] == shards[1]
    with pytest.raises(ValueError, match="0..count-1"):
        select_shard(ids, 3, 3)


def test_split_batches_shrink_towards_the_end():
    items = list(range(500))
    sizes = [len(batch) for batch in split_batches(items, slots=2)]
    assert sum(split_batches(items, slots=2), []) == items
    assert sizes == sorted(sizes, reverse=True) and max(sizes) == MAX_FIELDS_PER_TASK
    # the last tasks are single fields, and each takes about 1/6 of what was left
    assert sizes[-4:] == [1, 1, 1, 1]
    assert sizes[sizes.index(14)] == (500 - sum(sizes[:sizes.index(14)])) // 6
    assert [len(batch) for batch in split_batches(items[:10], slots=2, batch_size=4)] == [4, 4, 2]
    assert split_batches([], slots=2) == []


def _double_or_fail(batch: list[int]) -> list[int]:
    if 13 in batch:
        raise RuntimeError("lost")
    return [2 * item for item in batch]


def test_map_batches_goes_on_past_a_lost_batch():
    with ThreadPoolExecutor(2) as pool:
        results = list(map_batches(_double_or_fail, list(range(20)), executor=pool, workers=2,
                                   batch_size=3, ordered=True))
    assert [batch for batch, _, _ in results] == [list(range(i, min(i + 3, 20))) for i in range(0, 20, 3)]
    lost = [(batch, error) for batch, result, error in results if error]
    assert lost == [([12, 13, 14], "RuntimeError: lost")]
    assert [result for _, result, error in results if not error][0] == [0, 2, 4]


# --------------------------------------------------------------------------- Dask


def test_dask_run_equals_the_local_run(tiny_dataset, local_run, client, tmp_path):
    report = segment_directory(tiny_dataset / "train", tmp_path / "masks", ClassicalSegmenter(),
                               executor=client, progress=False)
    assert len(report.done) == 24 and not report.failed
    assert_same_masks(local_run / "masks", tmp_path / "masks")

    crop(tiny_dataset, tmp_path / "masks", tmp_path / "store", executor=client)
    expected, found = CellStore.open(local_run / "store"), CellStore.open(tmp_path / "store")
    pd.testing.assert_frame_equal(expected.cells, found.cells)  # the same rows, in the same order
    np.testing.assert_array_equal(expected.get_crops(np.arange(len(expected))),
                                  found.get_crops(np.arange(len(found))))


class SlowSegmenter:
    """The classical segmenter, slowed down so that a worker can be killed in the middle of a task."""

    def __init__(self, delay: float):
        self.delay = delay
        self.segmenter = ClassicalSegmenter()

    def segment(self, image):
        time.sleep(self.delay)
        return self.segmenter.segment(image)


def kill_a_busy_worker(client, timeout: float = 60.0) -> None:
    """SIGKILL the process of a worker as soon as it has a task."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [address for address, keys in client.processing().items() if keys and address in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return
        time.sleep(0.005)
    raise AssertionError("no worker started a task")


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing_after_the_rerun(tiny_dataset, local_run, tmp_path):
    images, masks, store = tiny_dataset / "train", tmp_path / "masks", tmp_path / "store"
    # no retries: the task of the killed worker is lost, not quietly run again elsewhere
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), local_cluster() as cluster, \
            distributed.Client(cluster) as client, ThreadPoolExecutor(1) as driver:
        running = driver.submit(segment_directory, images, masks, SlowSegmenter(0.2), executor=client,
                                progress=False)
        kill_a_busy_worker(client)
        with pytest.raises(LostBatchesError, match="run again"):
            running.result(timeout=120)
        assert len(list(masks.glob("*_cellmask.png"))) < 24
        again = segment_directory(images, masks, ClassicalSegmenter(), executor=client, progress=False)
        assert 0 < len(again.done) < 24 and len(again.done) + len(again.skipped) == 24
        assert_same_masks(local_run / "masks", masks)

        client.wait_for_workers(2, timeout=60)
        running = driver.submit(crop, tiny_dataset, masks, store, executor=client)
        kill_a_busy_worker(client)
        try:
            running.result(timeout=120)
        except LostBatchesError:  # unless the task finished before the kill
            assert (CellStore.open(store).cells["split"] == "").all()  # assigned when every field is in
        crop(tiny_dataset, masks, store, executor=client)
    assert_same_cells(local_run / "store", store)


# --------------------------------------------------------------------------- array-job shards


def test_two_shards_merged_equal_one_run(tiny_dataset, local_run, tmp_path):
    images, masks = tiny_dataset / "train", tmp_path / "masks"
    for index in range(2):
        segment_directory(images, masks, ClassicalSegmenter(), workers=1, progress=False, shard=(index, 2))
    assert_same_masks(local_run / "masks", masks)

    parts = [tmp_path / f"part-{index}" for index in range(2)]
    for index, part in enumerate(parts):
        report = crop(tiny_dataset, masks, part, workers=1, shard=(index, 2))
        assert set(report.fields_added) == set(select_shard(report.fields_added, index, 2))
        assert (CellStore.open(part).cells["split"] == "").all()  # assigned by the merge
    merged = merge_stores(parts, tmp_path / "store")
    assert_same_cells(local_run / "store", merged.path)
    # every chunk of the parts is linked, none copied
    part_chunks = [chunk for part in parts for chunk in sorted((part / "crops").glob("chunk-*.npy"))]
    chunks = sorted((merged.path / "crops").glob("chunk-*.npy"))
    assert [path.stat().st_ino for path in chunks] == [path.stat().st_ino for path in part_chunks]
    assert merged.chunk_rows == sum((CellStore.open(part).chunk_rows for part in parts), ())


def test_merge_refuses_overlapping_or_inconsistent_parts(tiny_dataset, local_run, tmp_path):
    store = local_run / "store"
    with pytest.raises(DataError, match="overlap"):
        merge_stores([store, store], tmp_path / "twice")
    other_chunks = tmp_path / "other-chunks"
    CellStore.create(other_chunks, crop_size=32, chunk_size=CHUNK * 2, attrs={"crop": CONFIG.to_dict()})
    other_size = tmp_path / "other-size"
    CellStore.create(other_size, crop_size=24, chunk_size=CHUNK,
                     attrs={"crop": CropConfig(crop_size=24).to_dict()})
    for other, what in ((other_chunks, "chunk_size"), (other_size, "crop_size")):
        with pytest.raises(DataError, match=what):
            merge_stores([store, other], tmp_path / "mixed")
    assert not (tmp_path / "twice").exists() and not (tmp_path / "mixed").exists()
    with pytest.raises(FileExistsError):
        merge_stores([store], store)


def test_cli_array_jobs_then_merge_stores(tiny_dataset, local_run, tmp_path, capsys):
    images, masks = tiny_dataset / "train", tmp_path / "masks"
    for index in range(2):
        assert main(["segment", str(images), "--out", str(masks), "--shard", f"{index}/2", "--workers", "1",
                     "--no-progress"]) == 0
        assert main(["crop", str(images), "--masks", str(masks), "--out", str(tmp_path / f"part-{index}"),
                     "--labels", str(tiny_dataset / "train.csv"), "--truth", str(tiny_dataset),
                     "--crop-size", "32", "--shard", f"{index}/2", "--workers", "1"]) == 0
    assert main(["merge-stores", str(tmp_path / "store"), str(tmp_path / "part-0"),
                 str(tmp_path / "part-1")]) == 0
    assert "merged 2 part stores" in capsys.readouterr().out
    assert_same_masks(local_run / "masks", masks)
    assert_same_cells(local_run / "store", tmp_path / "store")


@pytest.mark.slow
def test_pipeline_per_field_stages_on_dask_equal_local(client, tmp_path):
    from hpa_embed.pipeline import load_named_config, run_pipeline

    config = load_named_config("tiny")
    local = run_pipeline(config, tmp_path / "local", until_stage="crop", workers=1, progress=False)
    remote = run_pipeline(config, tmp_path / "dask", until_stage="crop", executor=client, progress=False)
    assert local.ran == remote.ran == ["input", "segment", "crop"]
    assert_same_masks(tmp_path / "local" / "masks", tmp_path / "dask" / "masks")
    assert_same_cells(tmp_path / "local" / "store", tmp_path / "dask" / "store")
