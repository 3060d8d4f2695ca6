"""Runs over many fields: good fields are done, bad ones skipped and listed, strictness on request."""

import fcntl
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from hpa_embed.batch import SKIPPED_FILE, BatchError, check_skipped, read_skipped, write_skipped
from hpa_embed.cli import main
from hpa_embed.config import CropConfig, InputConfig, ModelConfig, RunConfig, SplitConfig
from hpa_embed.crops import build_store
from hpa_embed.embed import embed_store, read_embeddings
from hpa_embed.io import DataError, list_field_ids
from hpa_embed.models import create_model, save_checkpoint
from hpa_embed.pipeline import run_pipeline
from hpa_embed.segment import segment_directory
from hpa_embed.store import CellStore


@pytest.fixture
def damaged(tiny_dataset, tmp_path):
    """A copy of 6 tiny fields: one with a truncated green file, one without its red file."""
    images = tmp_path / "images"
    images.mkdir()
    ids = list_field_ids(tiny_dataset / "train")[:6]
    for path in (tiny_dataset / "train").iterdir():
        if path.name.split("_")[0] + "_" + path.name.split("_")[1] in ids:
            shutil.copy(path, images / path.name)
    truncated = images / f"{ids[1]}_green.png"
    truncated.write_bytes(truncated.read_bytes()[:100])
    (images / f"{ids[2]}_red.png").unlink()
    return images, ids


def test_skipped_list_round_trips_and_is_removed_when_nothing_was_skipped(tmp_path):
    path = write_skipped(tmp_path, {"segment": {"a": "bad, file"}, "crop": {"b": "no mask"}})
    table = read_skipped(tmp_path)
    assert path == tmp_path / SKIPPED_FILE
    assert table.values.tolist() == [["a", "segment", "bad, file"], ["b", "crop", "no mask"]]
    assert write_skipped(tmp_path, {"segment": {}}) is None and not path.exists()
    assert read_skipped(tmp_path).empty


def test_check_skipped_fails_only_when_strict_or_nothing_succeeded():
    check_skipped({}, 0, True, "x")
    check_skipped({"a": "bad"}, 3, False, "x")
    with pytest.raises(BatchError, match="1 fields skipped, strict run"):
        check_skipped({"a": "bad"}, 3, True, "x")
    with pytest.raises(BatchError, match="none of 1 fields succeeded"):
        check_skipped({"a": "bad"}, 0, False, "x")


def test_segment_does_the_good_fields_and_lists_the_bad_ones(damaged, tiny_dataset, tmp_path, capsys):
    images, ids = damaged
    report = segment_directory(images, tmp_path / "masks", workers=1, progress=False)
    assert sorted(report.done) == sorted(set(ids) - {ids[1], ids[2]})
    listed = read_skipped(tmp_path / "masks")
    assert listed["image_id"].tolist() == [ids[1], ids[2]] and set(listed["stage"]) == {"segment"}
    assert f"{ids[1]}_green.png" in listed["reason"][0] and "truncated" in listed["reason"][0]
    assert "missing red channel" in listed["reason"][1]
    # the shell: status 0 with the list printed, 1 when strict
    segment = ["segment", "--workers", "1", "--no-progress"]
    assert main([*segment, str(images), "--out", str(tmp_path / "m2")]) == 0
    out = capsys.readouterr().out
    assert f"skipped {ids[1]}" in out and f"skipped {ids[2]}" in out and SKIPPED_FILE in out
    assert main([*segment, str(images), "--out", str(tmp_path / "m3"), "--strict"]) == 1
    assert "strict run" in capsys.readouterr().err
    # a rerun after the files are mended does those two fields only, and clears the list
    for name in (f"{ids[1]}_green.png", f"{ids[2]}_red.png"):
        shutil.copy(tiny_dataset / "train" / name, images / name)
    again = segment_directory(images, tmp_path / "masks", workers=1, progress=False)
    assert sorted(again.done) == sorted([ids[1], ids[2]]) and not again.failed
    assert not (tmp_path / "masks" / SKIPPED_FILE).exists()


def test_nothing_succeeded_is_status_1(tmp_path, damaged, capsys):
    images, ids = damaged
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for path in images.glob(f"{ids[1]}_*"):
        shutil.copy(path, only_bad / path.name)
    assert main(["segment", str(only_bad), "--out", str(tmp_path / "m"), "--workers", "1"]) == 1
    assert "none of 1 fields succeeded" in capsys.readouterr().err


def test_crop_does_the_good_fields_and_lists_the_bad_ones(damaged, tiny_dataset, tmp_path, capsys):
    images, ids = damaged
    report = build_store(images, tiny_dataset / "truth", tmp_path / "store",
                         labels=tiny_dataset / "train.csv", config=CropConfig(crop_size=32), workers=1,
                         progress=False)
    cells = CellStore.open(tmp_path / "store").cells
    assert set(cells["image_id"]) == set(ids) - {ids[1], ids[2]} == set(report.fields_added)
    assert read_skipped(tmp_path / "store")["image_id"].tolist() == [ids[1], ids[2]]
    args = ["crop", str(images), "--masks", str(tiny_dataset / "truth"), "--out", str(tmp_path / "s2"),
            "--workers", "1", "--labels", str(tiny_dataset / "train.csv"), "--crop-size", "32"]
    assert main(args) == 0
    assert main([*args[:5], str(tmp_path / "s3"), *args[6:], "--strict"]) == 1


def test_inputs_wrong_as_a_whole_fail_up_front_and_create_nothing(tiny_dataset, tmp_path, capsys):
    assert main(["segment", str(tmp_path / "nowhere"), "--out", str(tmp_path / "masks")]) == 2
    assert main(["crop", str(tiny_dataset / "train"), "--masks", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "store")]) == 2
    assert main(["crop", str(tiny_dataset / "train"), "--masks", str(tiny_dataset / "truth"),
                 "--out", str(tmp_path / "store"), "--labels", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "nowhere: not a directory" in err and "none.csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_embed_skips_the_cells_of_a_damaged_chunk(tiny_dataset, tmp_path, capsys):
    build_store(tiny_dataset / "train", tiny_dataset / "truth", tmp_path / "store",
                labels=tiny_dataset / "train.csv", config=CropConfig(crop_size=32), workers=1, progress=False)
    # rewrite the store with small chunks, so that one damaged chunk holds some of the cells only
    source = CellStore.open(tmp_path / "store")
    store = CellStore.create(tmp_path / "chunked", crop_size=32, channels=source.channels, chunk_size=16)
    store.append(source.cells.drop(columns="row"), source.get_crops(source.cells["row"].to_numpy()))
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=8)
    checkpoint = save_checkpoint(tmp_path / "model", create_model(config).eval(), config)
    whole = embed_store(checkpoint, store.path, progress=False)
    chunk = store.path / "crops" / "chunk-000001.npy"
    chunk.write_bytes(chunk.read_bytes()[:200])
    result = embed_store(checkpoint, store.path, out=tmp_path / "emb", progress=False)
    lost = store.cells["row"].between(16, 31).to_numpy()
    assert list(result.cell_ids) == store.cells["cell_id"][~lost].tolist()
    np.testing.assert_allclose(result.X, whole.X[~lost], atol=1e-5)
    lost_fields = sorted(store.cells["image_id"][lost].unique())
    assert sorted(result.meta["skipped"]) == lost_fields
    assert "chunk-000001.npy" in next(iter(result.meta["skipped"].values()))
    assert sorted(read_skipped(tmp_path / "emb")["image_id"]) == lost_fields
    assert len(read_embeddings(tmp_path / "emb")) == (~lost).sum()
    args = ["embed", str(checkpoint), "--store", str(store.path), "--out", str(tmp_path / "e2"),
            "--no-progress"]
    assert main(args) == 0 and main([*args, "--strict"]) == 1


def _directory_run(damaged, tiny_dataset):
    images, _ = damaged
    return RunConfig(input=InputConfig(source="directory", images=str(images),
                                       labels=str(tiny_dataset / "train.csv"), truth=str(tiny_dataset)),
                     crop=CropConfig(crop_size=32), split=SplitConfig(fractions=(0.5, 0.2, 0.3)),
                     model=ModelConfig(arch="resnet18", crop_size=32))


def test_a_run_goes_on_without_the_bad_fields_and_lists_them(damaged, tiny_dataset, tmp_path):
    images, ids = damaged
    config = _directory_run(damaged, tiny_dataset)
    result = run_pipeline(config, tmp_path / "run", until_stage="crop", workers=1, progress=False)
    assert set(result.fields_skipped["segment"]) == {ids[1], ids[2]}
    listed = read_skipped(tmp_path / "run")
    assert listed[["image_id", "stage"]].values.tolist() == [[ids[1], "segment"], [ids[2], "segment"]]
    assert set(CellStore.open(tmp_path / "run" / "store").cells["image_id"]) == set(ids) - {ids[1], ids[2]}
    with pytest.raises(BatchError, match="2 fields skipped, strict run"):
        run_pipeline(config, tmp_path / "strict", until_stage="crop", workers=1, progress=False, strict=True)
    assert not (tmp_path / "strict" / "store").exists()  # it stopped after segment


def test_a_second_run_into_the_same_folder_is_refused(damaged, tiny_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "run.lock", "a+") as held:  # a run in progress (another open file description)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345 on elsewhere")
        held.flush()
        with pytest.raises(DataError, match="another run .pid 12345 on elsewhere. is writing to this folder"):
            run_pipeline(_directory_run(damaged, tiny_dataset), out, until_stage="segment", workers=1,
                         progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    run_pipeline(_directory_run(damaged, tiny_dataset), out, until_stage="segment", workers=1, progress=False)
    assert (out / "stages" / "segment.json").exists()
    assert pd.read_csv(out / "masks" / SKIPPED_FILE)["stage"].eq("segment").all()
