import subprocess
import sys

import pandas as pd
import pytest

import hpa_embed.cli as cli
from hpa_embed.cli import get_parser, main


def subcommands():
    parser = get_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(set(action.choices))


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert "usage: hpa-embed" in capsys.readouterr().out


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hpa_embed", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("hpa_embed ")


def test_analyse_prints_table_and_writes_plots(tmp_path, capsys):
    csv = tmp_path / "train.csv"
    csv.write_text("ID,Label\na,0|16\nb,0\nc,0|16\n")
    assert main(["analyse", str(csv), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "Nucleoplasm + Cytosol" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "class_counts.png", "labels_per_image.png", "top_combinations.png",
    ]


def test_bad_input_exits_2_with_file_named(tmp_path, capsys):
    csv = tmp_path / "train.csv"
    csv.write_text("ID,Label\na,42\n")
    assert main(["analyse", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "train.csv, line 2: label 42" in err


def test_channels_on_real_field(hpa_real, tmp_path):
    assert main(["channels", str(hpa_real / "fov"), "57_F11_1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "57_F11_1_composite.png").stat().st_size > 10_000


def test_pipeline_from_the_shell(tiny_dataset, tiny_store_path, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        '[model]\narch = "resnet18"\ncrop_size = 32\nembedding_dim = 16\n'
        '[loss]\nclassification = "bce"\n'
        '[data]\nlabel_mode = "image_labels"\nbatch_size = 8\nm_per_class = 2\nbatches_per_epoch = 2\n'
        "[train]\nepochs = 1\n"
    )
    run, emb, idx = tmp_path / "run", tmp_path / "emb", tmp_path / "index"
    assert main(["train", "--store", str(tiny_store_path), "--config", str(config), "--out", str(run),
                 "--no-progress"]) == 0
    best = str(run / "checkpoints" / "best")
    assert main(["embed", best, "--store", str(tiny_store_path), "--out", str(emb), "--no-progress"]) == 0
    assert main(["index", str(emb), "--out", str(idx), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--cell", "syn_000000_1", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("syn_000000_1") == 3 and "rank" in out  # the query column, 3 neighbours

    assert main(["classify", str(emb), "--out", str(tmp_path / "head")]) == 0
    assert main(["classify", str(emb), "--method", "knn", "--reference", str(emb), "--label-mode",
                 "true_labels", "--out", str(tmp_path / "knn")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--predictions", str(tmp_path / "knn"), "--out", str(tmp_path / "eval")]) == 0
    cells = pd.read_parquet(emb / "cells.parquet")
    test_cells = cells[cells["split"] == "test"]
    out = capsys.readouterr().out
    assert f"{len(test_cells)} cells of {test_cells['image_id'].nunique()} images (test): cell_map" in out
    assert (tmp_path / "eval" / "confusion_matrices.png").is_file()
    assert main(["evaluate", "--predictions", str(tmp_path / "knn"), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "scores cells the model was trained on" in out and f"{len(cells)} cells" in out

    submission = tmp_path / "submission.csv"
    assert main(["submit", str(tmp_path / "head"), "--masks", str(tiny_dataset / "truth"), "--out",
                 str(submission), "--images", str(tiny_dataset / "train")]) == 0
    assert submission.read_text().startswith("ID,ImageWidth,ImageHeight,PredictionString")
    capsys.readouterr()
    assert main(["evaluate", "--submission", str(submission), "--truth", str(tiny_dataset)]) == 0
    assert "competition metric (IoU >= 0.6) over the images of the submission: mAP" in capsys.readouterr().out
    assert main(["evaluate", "--submission", str(submission)]) == 2


def test_run_and_demo_configs_from_the_shell(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        '[input]\npreset = "tiny"\nn_images = 6\n[split]\nfractions = [0.5, 0.2, 0.3]\n'
        '[model]\narch = "resnet18"\ncrop_size = 32\nembedding_dim = 16\n'
        '[data]\nlabel_mode = "image_labels"\nbatch_size = 8\nm_per_class = 2\nbatches_per_epoch = 1\n'
        '[train]\nepochs = 1\n[classify]\nmethods = ["head"]\n[map]\nenabled = false\n'
    )
    out = tmp_path / "out"
    quiet = ["--workers", "1", "--no-progress"]
    assert main(["run", str(config), "--out", str(out), "--until", "crop", *quiet]) == 0
    printed = capsys.readouterr().out
    assert "stages run: input, segment, crop; up to date: none" in printed
    assert "segmentation against the true masks: cell F1" in printed
    assert main(["run", str(config), "--out", str(out), *quiet, "-q"]) == 0
    printed = capsys.readouterr().out
    ran = "stages run: train, embed, index, classify, evaluate, map, report; up to date: input, segment, crop"
    assert ran in printed
    assert f"the report: {out / 'report.html'} (open it in a browser)" in printed
    assert "evaluation on the test split(s):" in printed and "head:" in printed
    assert (out / "evaluation" / "head" / "confusion_matrices.png").stat().st_size > 5000


def test_config_template_and_check(tmp_path, capsys):
    assert main(["config", "template", "--out", str(tmp_path / "all.toml")]) == 0
    assert main(["config", "check", str(tmp_path / "all.toml")]) == 0
    assert "[evaluate]" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nbatch_sise = 3\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "[data] batch_sise: unknown key; did you mean batch_size?" in capsys.readouterr().err
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_defect_is_not_reported_as_bad_input(monkeypatch, tmp_path):
    def broken(args):
        raise ValueError("a defect in the code")

    monkeypatch.setattr(cli, "_run_analyse", broken)
    csv = tmp_path / "train.csv"
    csv.write_text("ID,Label\na,0\n")
    with pytest.raises(ValueError, match="a defect"):
        main(["analyse", str(csv)])


def test_trip_ups_of_a_new_user_get_one_clear_line(tiny_dataset, tiny_store_path, tmp_path, capsys):
    data = str(tiny_dataset)
    # a missing images or masks folder is refused before any store exists
    assert main(["crop", "/nonexistent", "--masks", f"{data}/truth", "--out", str(tmp_path / "s1")]) == 2
    assert "/nonexistent: images: not a directory" in capsys.readouterr().err
    assert main(["crop", f"{data}/train", "--masks", "/nonexistent", "--out", str(tmp_path / "s2")]) == 2
    assert "/nonexistent: masks: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    # a run folder stands for its best checkpoint
    config = tmp_path / "run.toml"
    config.write_text('[model]\narch = "resnet18"\ncrop_size = 32\nembedding_dim = 8\n'
                      '[data]\nlabel_mode = "image_labels"\nbatch_size = 8\nm_per_class = 2\n'
                      'batches_per_epoch = 1\n[train]\nepochs = 1\n')
    run = tmp_path / "run"
    assert main(["train", "--store", str(tiny_store_path), "--config", str(config), "--out", str(run),
                 "--no-progress", "-q"]) == 0
    capsys.readouterr()
    assert main(["checkpoint-info", str(run)]) == 0
    assert "resnet18" in capsys.readouterr().out
    # an unknown cell id is one line, not a traceback
    assert main(["embed", str(run), "--store", str(tiny_store_path), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0
    assert main(["index", str(tmp_path / "e"), "--out", str(tmp_path / "i"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "i"), "--cell", "no_such_cell"]) == 2
    assert "cell id 'no_such_cell' is not among the" in capsys.readouterr().err
    # the maps of those cells
    maps = tmp_path / "maps"
    assert main(["map", str(tmp_path / "e"), "--store", str(tiny_store_path), "--index", str(tmp_path / "i"),
                 "--out", str(maps), "--neighbours", "3", "--no-progress"]) == 0
    assert "interactive/index.html (open it in a browser)" in capsys.readouterr().out
    for name in ("map_class.png", "class_panels.png", "map_image.png"):
        assert (maps / name).stat().st_size > 5000, name
    assert (maps / "interactive" / "index.html").is_file()


def test_search_with_store_prints_image_labels_score_and_draws_montage(tiny_store_path, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from hpa_embed.index import CellIndex
    from hpa_embed.store import CellStore

    cells = CellStore.open(tiny_store_path).cells
    X = np.random.default_rng(0).normal(size=(len(cells), 8)).astype(np.float32)
    CellIndex.build(X, cells["cell_id"].tolist(), progress=False).save(tmp_path / "index")
    query = cells["cell_id"].iloc[0]
    montage = tmp_path / "montage.png"
    index, store = str(tmp_path / "index"), str(tiny_store_path)
    assert main(["search", index, "--cell", query, "-k", "4", "--store", store,
                 "--montage", str(montage)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"query {query}: image {cells['image_id'].iloc[0]}, labels ")
    assert out[1].split() == ["query", "rank", "cell_id", "image_id", "labels", "score"]
    rows = out[2:6]
    for rank, line in enumerate(rows, start=1):
        assert line.split()[:2] == [query, str(rank)]
        neighbour = cells.set_index("cell_id").loc[line.split()[2]]
        assert line.split()[3] == neighbour["image_id"] and float(line.split()[-1]) <= 1
    assert out[-1] == f"wrote {montage}"
    with Image.open(montage) as picture:
        assert picture.width > 1.6 * picture.height  # the query and 4 neighbours side by side, 2 rows
    assert main(["search", index, "--cell", query, "--out", str(tmp_path / "n.csv"), "--store", store]) == 0
    columns = pd.read_csv(tmp_path / "n.csv").columns.tolist()
    assert columns == ["query", "rank", "cell_id", "image_id", "labels", "score"]
    capsys.readouterr()
    assert main(["search", index, "--cell", query, "--montage", str(montage)]) == 2
    assert "--montage needs one --cell and the --store" in capsys.readouterr().err


def test_segment_overlay_writes_one_png_per_field(tiny_dataset, tmp_path, capsys):
    import shutil

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    ids = ["syn_000002", "syn_000003"]
    for image_id in ids:
        for path in (tiny_dataset / "train").glob(f"{image_id}_*"):
            shutil.copy(path, images)
    out = tmp_path / "masks"
    quiet = ["--workers", "1", "--no-progress"]
    assert main(["segment", str(images), "--out", str(out), "--overlay", *quiet]) == 0
    assert "2 fields segmented" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*_overlay.png")) == [f"{i}_overlay.png" for i in ids]
    for image_id in ids:
        with Image.open(out / f"{image_id}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (256, 256)
        with Image.open(out / f"{image_id}_cellmask.png") as mask:
            assert mask.mode.startswith("I")  # the masks stay 16-bit label images
