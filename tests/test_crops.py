"""Tests of hpa_embed.crops and hpa_embed.store on small hand-built fields."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_embed.config import CropConfig
from hpa_embed.crops import (
    assign_splits,
    build_store,
    cell_geometry,
    extract_crops,
    field_scales,
)
from hpa_embed.data import cell_targets
from hpa_embed.io import DataError, LabelTable, read_field, write_labels, write_mask, write_png
from hpa_embed.labels import CHANNELS, HPA2021, RGB_CHANNELS
from hpa_embed.store import CellStore, write_chunk

NO_SCALING = dict(normalisation="none", margin=0.0)


# --------------------------------------------------------------------------- helpers


def rectangles_mask(shape, boxes) -> np.ndarray:
    """int32 mask with cell k+1 filling boxes[k] = (y0, x0, y1, x1)."""
    mask = np.zeros(shape, dtype=np.int32)
    for index, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        mask[y0:y1, x0:x1] = index
    return mask


def write_field(directory: Path, image_id: str, image: np.ndarray, channels=CHANNELS) -> None:
    for name, plane in zip(channels, image):
        write_png(directory / f"{image_id}_{name}.png", np.rint(plane * 255).astype(np.uint8))


def make_dataset(root: Path, n_fields: int = 5, seed: int = 0) -> tuple[Path, Path, Path]:
    """``n_fields`` 40x56 fields of 3 rectangular cells each, masks and a label table."""
    rng = np.random.default_rng(seed)
    images, masks = root / "train", root / "masks"
    ids, labels = [], []
    for index in range(n_fields):
        image_id = f"f{index:02d}"
        boxes = [(2, 3, 14, 20), (18, 5, 36, 15), (20, 30, 30 + index % 5, 50)]
        mask = rectangles_mask((40, 56), boxes)
        nuclei = np.where(np.isin(mask, [1, 2]), mask, 0) * (rng.random(mask.shape) < 0.5)
        image = (rng.random((4, 40, 56)) * 0.3 + 0.2 * (mask > 0)).astype(np.float32)
        write_field(images, image_id, image)
        write_mask(masks / f"{image_id}_cellmask.png", mask)
        write_mask(masks / f"{image_id}_nucleimask.png", nuclei)
        ids.append(image_id)
        labels.append([index % 3] if index % 2 == 0 else [0, 16])
    write_labels(root / "train.csv", LabelTable(ids, labels, HPA2021))
    return images, masks, root / "train.csv"


def crops_by_cell(store: CellStore) -> dict[str, np.ndarray]:
    return dict(zip(store.cells["cell_id"], store.get_crops(store.cells["row"].to_numpy())))


# --------------------------------------------------------------------------- geometry and crops


def test_cell_geometry_matches_hand_computed_values():
    mask = rectangles_mask((20, 30), [(2, 3, 6, 9), (10, 20, 20, 30)])
    mask[6, 3] = 1  # an extra pixel below cell 1: area 25, bbox grows by one row
    nuclei = np.zeros_like(mask)
    nuclei[3:5, 4:7] = 1
    geometry = cell_geometry(mask, nuclei)
    assert geometry["mask_id"].tolist() == [1, 2]
    assert geometry[["y0", "x0", "y1", "x1"]].to_numpy().tolist() == [[2, 3, 7, 9], [10, 20, 20, 30]]
    assert geometry["area"].tolist() == [25, 100]
    # cell 1: 24 pixels with mean (3.5, 5.5) plus (6, 3)
    assert geometry["centroid_y"].tolist() == pytest.approx([(24 * 3.5 + 6) / 25, 14.5])
    assert geometry["centroid_x"].tolist() == pytest.approx([(24 * 5.5 + 3) / 25, 24.5])
    assert geometry["nucleus_area"].tolist() == [6, 0]
    assert geometry["touches_border"].tolist() == [False, True]
    assert (cell_geometry(mask)["nucleus_area"] == -1).all()


def test_cell_geometry_skips_missing_ids():
    mask = np.zeros((5, 5), dtype=np.int32)
    mask[1, 1], mask[3, 3] = 4, 9
    assert cell_geometry(mask)["mask_id"].tolist() == [4, 9]
    assert len(cell_geometry(np.zeros((5, 5), dtype=np.int32))) == 0


def test_crop_without_resize_is_the_masked_window():
    image = np.zeros((4, 30, 30), dtype=np.float32)
    image[:, 5:15, 8:28] = np.array([0.2, 0.4, 0.6, 0.8])[:, None, None]
    mask = rectangles_mask((30, 30), [(5, 8, 15, 28)])  # 10 x 20: window 20 x 20, rows 0..4 empty
    cells, crops = extract_crops(image, mask, None, CropConfig(crop_size=20, **NO_SCALING))
    assert crops.shape == (1, 4, 20, 20) and crops.dtype == np.uint8
    assert cells[["window_y0", "window_x0", "window_size"]].to_numpy().tolist() == [[0, 8, 20]]
    expected = np.zeros((4, 20, 20), dtype=np.uint8)
    expected[:, 5:15, :] = np.rint(np.array([0.2, 0.4, 0.6, 0.8]) * 255)[:, None, None]
    np.testing.assert_array_equal(crops[0], expected)


def test_resized_crop_keeps_aspect_ratio_and_content():
    image = np.full((3, 60, 80), 0.5, dtype=np.float32)
    mask = rectangles_mask((60, 80), [(10, 20, 30, 60)])  # 20 high, 40 wide
    _, crops = extract_crops(image, mask, None, CropConfig(crop_size=20, channels=RGB_CHANNELS,
                                                          **NO_SCALING))
    crop = crops[0, 0].astype(int)
    value = round(0.5 * 255)
    # window rows 10..29 hold the cell, i.e. output rows 5..14; all columns are cell
    assert (crop[6:14] == value).all()
    assert (crop[:4] == 0).all() and (crop[16:] == 0).all()
    assert 0 < crop[5, 10] < value and crop[5, 10] == crop[14, 10]  # antialiased edges, symmetric


def test_masking_zeroes_neighbours_and_keep_neighbours_keeps_them():
    image = np.zeros((4, 20, 20), dtype=np.float32)
    mask = rectangles_mask((20, 20), [(5, 2, 15, 10), (5, 10, 15, 18)])  # side by side
    image[:, mask == 1] = 0.4
    image[:, mask == 2] = 0.8
    image[:, mask == 0] = 0.1
    config = CropConfig(crop_size=10, **NO_SCALING)
    _, masked = extract_crops(image, mask, None, config)
    _, kept = extract_crops(image, mask, None, CropConfig(crop_size=10, keep_neighbours=True,
                                                          **NO_SCALING))
    # cell 1: bbox rows 5..14, cols 2..9 -> window rows 5..14, cols 1..10 (side 10)
    assert (masked[0][:, :, 1:9] == 102).all()  # 0.4 * 255
    assert (masked[0][:, :, [0, 9]] == 0).all()  # background column and neighbour column
    assert (kept[0][:, :, 0] == 26).all() and (kept[0][:, :, 9] == 204).all()  # 0.1, 0.8


def test_field_percentile_scale_and_raw_recovery():
    rng = np.random.default_rng(1)
    image = np.zeros((4, 32, 32), dtype=np.float32)
    mask = rectangles_mask((32, 32), [(4, 4, 20, 20)])
    image[0] = rng.random((32, 32)) * 0.6
    image[1] = rng.random((32, 32)) * 0.01  # nearly empty channel: the floor applies
    image[2, mask == 0] = 1.0  # bright background must not set the scale
    image[2, mask == 1] = 0.3
    image[3] = 0.2
    config = CropConfig(crop_size=16, margin=0.0, percentile=99.0, min_scale=0.05)
    scales = field_scales(image, mask, config)
    cell = mask == 1
    expected = [np.percentile(image[0][cell], 99.0), 0.05, 0.3, 0.2]
    np.testing.assert_allclose(scales, expected, rtol=1e-6)
    cells, crops = extract_crops(image, mask, None, config)
    recorded = cells[[f"scale_{name}" for name in CHANNELS]].to_numpy()[0]
    np.testing.assert_allclose(recorded, scales)
    raw = crops[0].astype(np.float64) / 255 * recorded[:, None, None]
    truth = image[:, 4:20, 4:20]
    unclipped = truth < recorded[:, None, None]
    assert np.abs(raw - truth)[unclipped].max() <= recorded.max() / 255 / 2 + 1e-6
    assert (crops[0][0][~unclipped[0]] == 255).all()


def test_extract_crops_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mask shape"):
        extract_crops(np.zeros((4, 10, 10), np.float32), np.zeros((10, 11), np.int32))
    with pytest.raises(ValueError, match="channels"):
        extract_crops(np.zeros((3, 10, 10), np.float32), np.zeros((10, 10), np.int32))


# --------------------------------------------------------------------------- the store


def random_cells(n: int, start: int = 0, seed: int = 0, size: int = 8):
    rng = np.random.default_rng(seed)
    cells = pd.DataFrame({"cell_id": [f"img{i // 3}_{i}" for i in range(start, start + n)],
                          "image_id": [f"img{i // 3}" for i in range(start, start + n)],
                          "image_labels": [[i % 19] for i in range(start, start + n)]})
    return cells, rng.integers(0, 256, (n, 4, size, size), dtype=np.uint8)


def test_store_round_trip_append_and_random_access(tmp_path):
    store = CellStore.create(tmp_path / "s", crop_size=8, chunk_size=5)
    first, first_crops = random_cells(7)
    second, second_crops = random_cells(6, start=7, seed=1)
    assert store.append(first, first_crops).tolist() == list(range(7))
    assert store.append(second, second_crops).tolist() == list(range(7, 13))  # rewrites chunk 1
    reopened = CellStore.open(tmp_path / "s")
    assert len(reopened) == 13 and reopened.crop_shape == (4, 8, 8)
    assert reopened.cells["cell_id"].tolist() == first["cell_id"].tolist() + second["cell_id"].tolist()
    assert reopened.cells["image_labels"].tolist() == [[i % 19] for i in range(13)]
    everything = np.concatenate([first_crops, second_crops])
    rows = np.array([12, 0, 5, 5, 9, 3, 12, 1])
    np.testing.assert_array_equal(reopened.get_crops(rows), everything[rows])
    assert reopened.get_crops([]).shape == (0, 4, 8, 8)
    clone = pickle.loads(pickle.dumps(reopened))  # as sent to data-loader workers: no crop copies
    assert len(pickle.dumps(reopened)) < everything.nbytes
    np.testing.assert_array_equal(clone.get_crops(rows), everything[rows])
    with pytest.raises(IndexError):
        reopened.get_crops([13])
    assert sorted(p.name for p in (tmp_path / "s" / "crops").iterdir()) == [
        "chunk-000000.npy", "chunk-000001.npy", "chunk-000002.npy"]


def test_chunks_written_elsewhere_join_the_store_as_they_are(tmp_path):
    store = CellStore.create(tmp_path / "s", crop_size=8, chunk_size=5)
    cells, crops = random_cells(21, seed=3)
    store.append(cells[:7], crops[:7])  # chunks of 5 and 2 rows
    staging = tmp_path / "s" / "incoming" / "run"
    staging.mkdir(parents=True)
    staged = [write_chunk(staging, crops[7:10]), write_chunk(staging, crops[10:18])]  # 3 and 8 rows
    assert store.append_chunks(cells[7:18], staged).tolist() == list(range(7, 18))
    assert not list(staging.iterdir())  # moved into the store
    assert store.chunk_rows == (5, 2, 3, 8)
    store.append(cells[18:], crops[18:])  # fills no chunk past chunk_size: a new one
    reopened = CellStore.open(tmp_path / "s")
    assert reopened.chunk_rows == (5, 2, 3, 8, 3) and len(reopened) == 21
    rows = np.array([20, 0, 6, 7, 9, 10, 17, 18, 3, 17])
    np.testing.assert_array_equal(reopened.get_crops(rows), crops[rows])
    assert reopened.cells["cell_id"].tolist() == cells["cell_id"].tolist()
    # the checksum recorded is the one the writer computed: a changed staged chunk is caught
    (bad,) = [write_chunk(staging, random_cells(4, seed=9)[1])]
    np.save(bad.path, np.zeros((4, 4, 8, 8), np.uint8))
    reopened.append_chunks(random_cells(4, start=21)[0], [bad])
    with pytest.raises(DataError, match="chunk-000005.npy: checksum mismatch"):
        CellStore.open(tmp_path / "s").get_crops([22])


def test_staged_chunks_of_the_wrong_shape_are_refused_before_anything_moves(tmp_path):
    store = CellStore.create(tmp_path / "s", crop_size=8)
    cells, crops = random_cells(4)
    good = write_chunk(tmp_path, crops[:2])
    wrong = write_chunk(tmp_path, np.zeros((2, 4, 6, 6), np.uint8))
    with pytest.raises(DataError, match=r"chunk-.*\.npy: staged chunk holds uint8 \(2, 4, 6, 6\)"):
        store.append_chunks(cells, [good, wrong])
    with pytest.raises(ValueError, match="4 table rows but 2 crops"):
        store.append_chunks(cells, [good])
    assert Path(good.path).exists() and len(CellStore.open(tmp_path / "s")) == 0
    with pytest.raises(ValueError, match="uint8"):
        write_chunk(tmp_path, crops[:0])


def test_a_version_1_store_reads_and_takes_writes(tmp_path):
    """Format 1 (every chunk but the last full; the oldest stores without checksums) reads as
    before, and its first write records every chunk and marks the store version 2."""
    import pyarrow.parquet as pq

    path = tmp_path / "s"
    store = CellStore.create(path, crop_size=8, chunk_size=4)
    cells, crops = random_cells(14)
    store.append(cells[:10], crops[:10])  # chunks of 4, 4, 2
    meta = json.loads((path / "store.json").read_text())
    (path / "store.json").write_text(json.dumps({**meta, "version": 1}))
    table = pq.read_table(path / "cells.parquet")
    pq.write_table(table.replace_schema_metadata({}), path / "cells.parquet")  # no checksums
    old = CellStore.open(path)
    assert old.chunk_rows == (4, 4, 2) and old.meta["version"] == 1
    np.testing.assert_array_equal(old.get_crops(np.arange(10)), crops[:10])
    old.append(cells[10:], crops[10:])
    assert json.loads((path / "store.json").read_text())["version"] == 2
    recorded = json.loads(pq.read_schema(path / "cells.parquet").metadata[b"hpa_embed.chunks"])
    assert {name: entry["rows"] for name, entry in recorded.items()} == {
        "chunk-000000.npy": 4, "chunk-000001.npy": 4, "chunk-000002.npy": 4, "chunk-000003.npy": 2}
    np.testing.assert_array_equal(CellStore.open(path).get_crops(np.arange(14)), crops)


def test_staging_folders_of_killed_runs_are_removed_not_those_of_runs_in_progress(tmp_path):
    import fcntl

    store = CellStore.create(tmp_path / "s", crop_size=8)
    incoming = tmp_path / "s" / "incoming"
    incoming.mkdir()
    for name in ("killed", "running"):
        (incoming / name).mkdir()
        (incoming / name / "chunk-x.npy").write_bytes(b"x")
        (incoming / f"{name}.lock").touch()
    with open(incoming / "running.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with store.staging() as folder:
            assert folder.parent == incoming and folder.is_dir()
            assert sorted(path.name for path in incoming.iterdir()) == sorted(
                ["running", "running.lock", folder.name, f"{folder.name}.lock"])
    assert sorted(path.name for path in incoming.iterdir()) == ["running", "running.lock"]


def test_store_refuses_duplicates_and_bad_crops(tmp_path):
    store = CellStore.create(tmp_path / "s", crop_size=8)
    cells, crops = random_cells(3)
    store.append(cells, crops)
    with pytest.raises(ValueError, match="already in the store"):
        store.append(cells, crops)
    with pytest.raises(ValueError, match="uint8"):
        store.append(random_cells(2, start=3)[0], crops[:2].astype(np.float32))
    with pytest.raises(FileExistsError):
        CellStore.create(tmp_path / "s")
    with pytest.raises(DataError, match="not a cell store"):
        CellStore.open(tmp_path)
    meta_path = tmp_path / "s" / "store.json"
    meta = json.loads(meta_path.read_text())
    assert (meta["format"], meta["version"], meta["crop_size"]) == ("hpa_embed.cellstore", 2, 8)
    meta_path.write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(DataError, match=r"store\.json: cell store format version 3 is not supported"):
        CellStore.open(tmp_path / "s")


@pytest.mark.parametrize("failing", ["chunk", "table"])
def test_failed_append_leaves_previous_store_readable(tmp_path, monkeypatch, failing):
    store = CellStore.create(tmp_path / "s", crop_size=8, chunk_size=4)
    cells, crops = random_cells(6)
    store.append(cells, crops)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    if failing == "chunk":  # fail while writing the second chunk of the append
        real_save, calls = np.save, []

        def save_then_fail(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                explode()
            real_save(*args, **kwargs)

        monkeypatch.setattr(np, "save", save_then_fail)
    else:
        monkeypatch.setattr(pd.DataFrame, "to_parquet", explode)
    more, more_crops = random_cells(5, start=6, seed=2)
    with pytest.raises(RuntimeError, match="disk full"):
        store.append(more, more_crops)
    monkeypatch.undo()
    reopened = CellStore.open(tmp_path / "s")
    assert len(reopened) == 6
    np.testing.assert_array_equal(reopened.get_crops(np.arange(6)), crops)
    assert not [p for p in (tmp_path / "s").rglob(".*tmp*")]  # no temporary leftovers
    reopened.append(more, more_crops)  # and the store still takes appends
    np.testing.assert_array_equal(CellStore.open(tmp_path / "s").get_crops(np.arange(11)),
                                  np.concatenate([crops, more_crops]))


def labelled_crops(prefix: str, start: int, n: int):
    """Cells ``<prefix><i>`` whose crops are filled with ``i`` (so a crop names its cell)."""
    numbers = np.arange(start, start + n)
    cells = pd.DataFrame({"cell_id": [f"{prefix}{i}" for i in numbers], "image_id": [prefix] * n})
    return cells, np.broadcast_to(numbers.astype(np.uint8)[:, None, None, None], (n, 4, 8, 8)).copy()


def assert_every_crop_is_its_cells(store_path: Path, expected_ids: set[str]):
    store = CellStore.open(store_path)
    ids = store.cells["cell_id"].tolist()
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids  # none lost, none twice
    crops = store.get_crops(store.cells["row"].to_numpy())
    for cell_id, crop in zip(ids, crops):
        assert (crop == int(cell_id[1:])).all(), cell_id


def test_two_writers_of_one_store_take_turns_and_lose_nothing(tmp_path):
    CellStore.create(tmp_path / "s", crop_size=8, chunk_size=4)
    first, second = CellStore.open(tmp_path / "s"), CellStore.open(tmp_path / "s")
    expected = set()
    for batch in range(4):  # each writer's table is stale when it appends: it reads it again
        for prefix, store in (("a", first), ("b", second)):
            cells, crops = labelled_crops(prefix, 3 * batch, 3)
            store.append(cells, crops)
            expected |= set(cells["cell_id"])
    assert len(first) == len(second) - 3 == 21
    assert_every_crop_is_its_cells(tmp_path / "s", expected)
    with pytest.raises(DataError, match="another writer added 3 cells"):
        first.set_columns({"split": ["train"] * 21})
    with pytest.raises(ValueError, match="already in the store"):
        first.append(*labelled_crops("b", 0, 1))


WRITER = """
import sys, time
import numpy as np, pandas as pd
from hpa_embed.store import CellStore
store, prefix = CellStore.open(sys.argv[1]), sys.argv[2]
for batch in range(8):
    numbers = np.arange(3 * batch, 3 * batch + 3)
    cells = pd.DataFrame({"cell_id": [f"{prefix}{i}" for i in numbers], "image_id": [prefix] * 3})
    store.append(cells, np.broadcast_to(numbers.astype(np.uint8)[:, None, None, None], (3, 4, 8, 8)).copy())
    time.sleep(0.01)
"""


def test_two_processes_appending_to_one_store_lose_nothing(tmp_path):
    import subprocess
    import sys

    CellStore.create(tmp_path / "s", crop_size=8, chunk_size=4)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "s"), prefix])
               for prefix in ("a", "b")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    assert_every_crop_is_its_cells(tmp_path / "s", {f"{p}{i}" for p in "ab" for i in range(24)})


# --------------------------------------------------------------------------- build_store


def test_build_store_crops_every_field(tmp_path):
    images, masks, labels = make_dataset(tmp_path, n_fields=4)
    config = CropConfig(crop_size=16)
    report = build_store(images, masks, tmp_path / "store", labels=labels, config=config, workers=1)
    store = CellStore.open(tmp_path / "store")
    assert report.cells_added == len(store) == 12 and report.fields_added == ["f00", "f01", "f02", "f03"]
    assert store.cells["cell_id"].tolist()[:3] == ["f00_1", "f00_2", "f00_3"]
    assert store.cells.groupby("image_id")["image_labels"].first().tolist() == [[0], [0, 16], [2], [0, 16]]
    assert store.cells["true_labels"].isna().all()
    assert set(store.cells["split"]) <= {"train", "val", "test"}
    assert store.meta["attrs"]["crop"]["crop_size"] == 16 and store.channels == CHANNELS
    # the stored crops are what extract_crops gives for the same field
    from hpa_embed.io import read_mask

    cells, crops = extract_crops(read_field(images, "f02"), read_mask(masks / "f02_cellmask.png"),
                                 read_mask(masks / "f02_nucleimask.png"), config)
    stored = store.cells[store.cells["image_id"] == "f02"]
    np.testing.assert_array_equal(store.get_crops(stored["row"].to_numpy()), crops)
    assert stored["nucleus_area"].tolist() == cells["nucleus_area"].tolist()
    assert (stored["nucleus_area"].to_numpy()[:2] > 0).all()


def test_build_store_appends_and_resumes_without_duplicates(tmp_path, monkeypatch):
    images, masks, labels = make_dataset(tmp_path, n_fields=6)
    config = CropConfig(crop_size=16)
    build_store(images, masks, tmp_path / "once", labels=labels, config=config, workers=1)
    reference = crops_by_cell(CellStore.open(tmp_path / "once"))

    # an interruption after the first commit (2 fields) of a run
    real_append, calls = CellStore.append_chunks, []

    def append_then_crash(self, cells, chunks):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_append(self, cells, chunks)

    monkeypatch.setattr(CellStore, "append_chunks", append_then_crash)
    with pytest.raises(KeyboardInterrupt):
        build_store(images, masks, tmp_path / "s", labels=labels, config=config,
                    image_ids=["f00", "f01", "f02", "f03"], workers=1, fields_per_commit=2)
    monkeypatch.undo()
    assert sorted(set(CellStore.open(tmp_path / "s").cells["image_id"])) == ["f00", "f01"]
    assert not list((tmp_path / "s" / "incoming").iterdir())  # the run's staged chunks are gone

    resumed = build_store(images, masks, tmp_path / "s", labels=labels,
                          image_ids=["f00", "f01", "f02", "f03"], workers=1)
    assert resumed.fields_skipped == ["f00", "f01"] and resumed.fields_added == ["f02", "f03"]
    splits_before = CellStore.open(tmp_path / "s").cells.set_index("cell_id")["split"]
    appended = build_store(images, masks, tmp_path / "s", labels=labels, workers=1)  # second batch
    assert appended.fields_added == ["f04", "f05"]
    store = CellStore.open(tmp_path / "s")
    assert store.cells["cell_id"].is_unique and len(store) == 18
    assert store.cells.set_index("cell_id")["split"][splits_before.index].equals(splits_before)
    got = crops_by_cell(store)
    assert got.keys() == reference.keys()
    for cell_id, crop in reference.items():
        np.testing.assert_array_equal(got[cell_id], crop)
    with pytest.raises(ValueError, match="other crop settings"):
        build_store(images, masks, tmp_path / "s", config=CropConfig(crop_size=32), workers=1)


def test_build_store_skips_and_reports_bad_fields(tmp_path):
    images, masks, labels = make_dataset(tmp_path, n_fields=3)
    write_mask(masks / "f01_cellmask.png", np.zeros((10, 10), dtype=np.int32))
    (masks / "f02_nucleimask.png").unlink()
    report = build_store(images, masks, tmp_path / "store", labels=labels, workers=2)
    assert report.fields_added == ["f00"]
    assert "f01_cellmask.png" in report.fields_failed["f01"]
    assert "(10, 10)" in report.fields_failed["f01"] and "(40, 56)" in report.fields_failed["f01"]
    assert "f02_nucleimask.png" in report.fields_failed["f02"]
    assert len(CellStore.open(tmp_path / "store")) == 3


def test_build_store_true_labels_by_iou(tmp_path):
    images, masks, labels = make_dataset(tmp_path, n_fields=2)
    truth = tmp_path / "truth"
    rows = []
    for image_id in ("f00", "f01"):
        true_mask = rectangles_mask((40, 56), [(2, 3, 14, 20), (18, 5, 36, 15)])  # cell 3 unknown
        true_mask[2:14, 3:6] = 0  # true cell 1 smaller than the predicted one: IoU 0.82
        write_mask(truth / f"{image_id}_cellmask.png", true_mask)
        write_mask(truth / f"{image_id}_nucleimask.png", true_mask)
        rows += [{"image_id": image_id, "cell_id": 1, "labels": "4", "area": 168},
                 {"image_id": image_id, "cell_id": 2, "labels": "18", "area": 180}]
    pd.DataFrame(rows).assign(cell_line="U-2 OS", mitotic=False).to_csv(truth / "cells.csv", index=False)
    build_store(images, masks, tmp_path / "store", labels=labels, truth=tmp_path, workers=1)
    store = CellStore.open(tmp_path / "store")
    assert store.cells["true_labels"].tolist() == [[4], [18], None] * 2
    rows_, Y = cell_targets(store.cells, "true_labels")
    assert rows_.tolist() == [0, 1, 3, 4] and np.flatnonzero(Y[1]).tolist() == [18]


def test_build_store_on_a_synthetic_set_with_its_truth(tmp_path):
    from hpa_embed.synthetic import generate_dataset, read_truth

    root = generate_dataset(tmp_path / "syn", 3, "tiny", seed=0, workers=1, progress=False)
    build_store(root / "train", root / "truth", tmp_path / "store", labels=root / "train.csv",
                truth=root, config=CropConfig(crop_size=32), workers=1)
    store = CellStore.open(tmp_path / "store")
    expected = read_truth(root).assign(cell_id=lambda t: t["image_id"] + "_" + t["cell_id"].astype(str))
    assert len(store) == len(expected)
    got = store.cells.set_index("cell_id")["true_labels"]
    assert got[expected["cell_id"]].tolist() == expected["labels"].tolist()
    assert store.cells.set_index("cell_id")["area"][expected["cell_id"]].tolist() == expected["area"].tolist()


# --------------------------------------------------------------------------- splits


def test_assign_splits_is_by_image_stratified_and_stable():
    rng = np.random.default_rng(0)
    rare_images = [f"i{i}" for i in range(0, 300, 23)]  # 14 images hold the rare class 11
    labels = [[0, 11] if i % 23 == 0 else [int(rng.integers(0, 10))] for i in range(300)]
    cells = pd.DataFrame([{"image_id": f"i{i}", "image_labels": labels[i]}
                          for i in range(300) for _ in range(int(rng.integers(1, 5)))])
    split = assign_splits(cells, (0.8, 0.1, 0.1), seed=3)
    assert (split.groupby(cells["image_id"]).nunique() == 1).all()  # never an image on two sides
    per_image = split.groupby(cells["image_id"]).first()
    counts = per_image.value_counts()
    assert abs(counts["train"] - 240) <= 3 and abs(counts["val"] - 30) <= 3
    for seed in range(5):
        # 14 rare images: a random split leaves val or test without one 42% of the time
        rare = assign_splits(cells, seed=seed).groupby(cells["image_id"]).first()[rare_images]
        assert set(rare) == {"train", "val", "test"} and (rare == "train").sum() >= 9
    assert split.equals(assign_splits(cells, (0.8, 0.1, 0.1), seed=3))  # deterministic
    # images that already have a split keep it; new images get one
    cells["split"] = split.where(cells["image_id"] != "i7", "")
    again = assign_splits(cells, seed=99)
    assert again[cells["image_id"] != "i7"].equals(split[cells["image_id"] != "i7"])
    assert again[cells["image_id"] == "i7"].nunique() == 1
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(cells, (0.5, 0.5))


# --------------------------------------------------------------------------- the real field


def test_real_field_crops_into_a_store(hpa_real, tmp_path):
    from hpa_embed.segment import ClassicalSegmenter

    image = read_field(hpa_real / "fov", "57_F11_1")
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)
    write_mask(tmp_path / "masks" / "57_F11_1_cellmask.png", cell_mask)
    write_mask(tmp_path / "masks" / "57_F11_1_nucleimask.png", nucleus_mask)
    report = build_store(hpa_real / "fov", tmp_path / "masks", tmp_path / "store",
                         labels=hpa_real / "labels.csv", workers=1)
    store = CellStore.open(tmp_path / "store")
    assert not report.fields_failed and 3 <= len(store) == int(cell_mask.max())
    crops = store.get_crops(np.arange(len(store)))
    assert crops.shape == (len(store), 4, 128, 128)
    brightest = crops.reshape(len(store), 4, -1).max(-1)
    assert (brightest[:, [0, 2]] > 100).all()  # every cell has microtubules and a nucleus
    assert store.cells["image_labels"].iloc[0] == [13, 16]
    assert store.cells["area"].sum() == (cell_mask > 0).sum()
    # the same field, three channels, neighbours kept
    rgb = CropConfig(crop_size=64, channels=RGB_CHANNELS, keep_neighbours=True)
    cells, rgb_crops = extract_crops(image[:3], cell_mask, nucleus_mask, rgb)
    assert rgb_crops.shape == (len(store), 3, 64, 64) and "scale_yellow" not in cells
