"""run_pipeline: the whole run from one config, each stage resumable and rerun only when touched."""

import dataclasses
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

import hpa_embed.pipeline as pipeline
from hpa_embed.config import (
    ClassifyConfig,
    ConfigError,
    CropConfig,
    DataConfig,
    EvaluateConfig,
    InputConfig,
    LossConfig,
    MapConfig,
    ModelConfig,
    RunConfig,
    SplitConfig,
    TrainConfig,
)
from hpa_embed.pipeline import STAGES, load_named_config, run_pipeline, stage_status
from hpa_embed.store import CellStore

TINY = RunConfig(
    input=InputConfig(preset="tiny", n_images=10, seed=3),
    crop=CropConfig(crop_size=32),
    split=SplitConfig(fractions=(0.5, 0.2, 0.3)),
    model=ModelConfig(arch="resnet18", crop_size=32, embedding_dim=16),
    loss=LossConfig(classification="bce", miner="semihard"),
    data=DataConfig(label_mode="image_labels", batch_size=8, m_per_class=2, batches_per_epoch=2),
    train=TrainConfig(epochs=1),
    classify=ClassifyConfig(methods=("head", "knn"), n_neighbors=3),
    map=MapConfig(enabled=False),
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_pipeline(TINY, out, workers=1, progress=False)
    return out, result


def copy_of(tiny_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_run[0], out)
    return out


def test_a_run_goes_from_fields_to_held_out_scores(tiny_run):
    out, result = tiny_run
    assert result.ran == list(STAGES) and result.skipped == []
    assert stage_status(TINY, out) == dict.fromkeys(STAGES, "done")
    cells = CellStore.open(out / "store").cells
    test_cells = cells[cells["split"] == "test"]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary == result.evaluation
    assert summary["splits"] == ["test"] and summary["scores_training_cells"] is False
    for method in ("head", "knn"):
        scores = summary["methods"][method]
        # only the held-out test images are scored, every one of their cells
        assert scores["cells"] == len(test_cells) > 0
        assert scores["images"] == test_cells["image_id"].nunique()
        assert set(scores["scores"]) == {"cell_map", "image_map", "competition_map"}
        assert all(0 <= value <= 1 for value in scores["scores"].values())
        scored = pd.read_csv(out / "evaluation" / method / "cell_ap.csv")
        assert scored["n_gt"].sum() == sum(len(labels) for labels in test_cells["true_labels"])
    segmentation = result.summaries["segment"]["against_truth"]["cellmask"]
    assert 0.8 <= segmentation["f1"] <= 1
    assert (out / "config.toml").is_file() and (out / "masks" / "segmentation.csv").is_file()


def test_a_second_run_skips_every_stage(tiny_run, tmp_path):
    out = copy_of(tiny_run, tmp_path)
    before = {path: path.stat().st_mtime_ns for path in (out / "train").rglob("*") if path.is_file()}
    result = run_pipeline(TINY, out, workers=1, progress=False)
    assert result.ran == [] and result.skipped == list(STAGES)
    assert result.evaluation == tiny_run[1].evaluation
    assert before == {path: path.stat().st_mtime_ns for path in (out / "train").rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    "change, first_rerun",
    [
        ({"classify": ClassifyConfig(methods=("head", "knn"), n_neighbors=5)}, "classify"),
        ({"evaluate": EvaluateConfig(split="heldout")}, "evaluate"),
        ({"train": TrainConfig(epochs=1, lr=5e-4)}, "train"),
    ],
    ids=["classify", "evaluate", "train"],
)
def test_a_config_change_reruns_only_the_stages_it_touches(tiny_run, tmp_path, change, first_rerun):
    out = copy_of(tiny_run, tmp_path)
    result = run_pipeline(TINY.replace(**change), out, workers=1, progress=False)
    expected = list(STAGES[STAGES.index(first_rerun):])
    assert result.ran == expected
    assert result.skipped == [stage for stage in STAGES if stage not in expected]


def test_an_interrupted_run_resumes_at_the_stage_it_stopped(tiny_run, tmp_path, monkeypatch):
    out = copy_of(tiny_run, tmp_path)
    embed_stage = pipeline._RUNNERS["embed"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline._RUNNERS, "embed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(TINY, out, from_stage="embed", workers=1, progress=False)
    status = stage_status(TINY, out)
    assert [status[s] for s in STAGES] == ["done"] * 4 + ["partial"] + ["missing"] * 5
    monkeypatch.setitem(pipeline._RUNNERS, "embed", embed_stage)
    result = run_pipeline(TINY, out, workers=1, progress=False)
    assert result.ran == ["embed", "index", "classify", "evaluate", "map", "report"]
    assert result.evaluation == tiny_run[1].evaluation


def test_training_interrupted_mid_run_continues_from_its_last_checkpoint(tiny_run, tmp_path, monkeypatch):
    import hpa_embed.train as train_module

    out = copy_of(tiny_run, tmp_path)
    config = TINY.replace(train=TrainConfig(epochs=2))
    real_epoch, calls = train_module._train_epoch, []

    def stop_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, out, workers=1, progress=False)
    assert stage_status(config, out)["train"] == "partial"
    assert len(pd.read_csv(out / "train" / "history.csv")) == 1
    resumed = []

    def count(*args, **kwargs):
        resumed.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_epoch", count)
    result = run_pipeline(config, out, workers=1, progress=False)
    assert result.ran == list(STAGES[STAGES.index("train"):])
    assert list(pd.read_csv(out / "train" / "history.csv")["epoch"]) == [1, 2]
    assert len(resumed) == 1  # only the second epoch was trained again


def test_a_stage_whose_folder_is_gone_runs_again(tiny_run, tmp_path):
    out = copy_of(tiny_run, tmp_path)
    shutil.rmtree(out / "index")
    assert stage_status(TINY, out)["index"] == "missing"
    result = run_pipeline(TINY, out, workers=1, progress=False)
    assert result.ran == ["index", "classify", "evaluate", "map", "report"]


def test_from_and_until_run_a_part(tiny_run, tmp_path):
    out = tmp_path / "part"
    result = run_pipeline(TINY, out, until_stage="segment", workers=1, progress=False)
    assert result.ran == ["input", "segment"]
    assert not (out / "store").exists()
    with pytest.raises(ConfigError, match="stage 'crop' is missing"):
        run_pipeline(TINY, out, from_stage="train", workers=1, progress=False)
    copied = copy_of(tiny_run, tmp_path)
    result = run_pipeline(TINY, copied, from_stage="classify", workers=1, progress=False)
    assert result.ran == ["classify", "evaluate", "map", "report"]


def test_scoring_training_cells_is_said(tiny_run, tmp_path):
    out = copy_of(tiny_run, tmp_path)
    result = run_pipeline(TINY.replace(evaluate=EvaluateConfig(split="all", submission=False)), out,
                          workers=1, progress=False)
    assert result.ran == ["evaluate", "map", "report"]
    assert result.evaluation["scores_training_cells"] is True
    assert "trained on" in result.evaluation["note"]
    n_cells = len(CellStore.open(out / "store").cells)
    assert result.evaluation["methods"]["head"]["cells"] == n_cells
    assert "competition_map" not in result.evaluation["methods"]["head"]["scores"]


def test_an_unknown_preset_fails_before_any_work(tmp_path):
    config = TINY.replace(input=InputConfig(preset="huge"))
    with pytest.raises(ConfigError, match="unknown synthetic preset 'huge'"):
        run_pipeline(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_shipped_configs_read():
    demo = load_named_config("demo")
    assert demo.input.source == "synthetic" and demo.evaluate.split == "test"
    with pytest.raises(ConfigError, match="no shipped config"):
        load_named_config("nope")
    assert dataclasses.replace(demo.train, epochs=1).epochs == 1


def test_the_map_stage_draws_every_map(tiny_run, tmp_path):
    out = copy_of(tiny_run, tmp_path)
    config = TINY.replace(map=MapConfig(n_neighbors=5, neighbours=3))
    result = run_pipeline(config, out, workers=1, progress=False)
    assert result.ran == ["map", "report"]
    files = result.summaries["map"]["files"]
    for name in ("map_class", "class_panels", "map_image", "map_prediction", "map_correct"):
        assert Path(files[name]).stat().st_size > 5000, name
    coordinates = np.load(out / "maps" / "coordinates.npy")
    assert coordinates.shape == (len(CellStore.open(out / "store")), 2) and np.isfinite(coordinates).all()
    assert (out / "maps" / "interactive" / "index.html").is_file()


EVIL_FOLDER = "run <script>window.__pwned=1<"


def report_of(tiny_run, tmp_path) -> Path:
    """The tiny run copied into a folder whose name holds markup, with its report rewritten."""
    out = tmp_path / EVIL_FOLDER
    shutil.copytree(tiny_run[0], out)
    return pipeline.write_run_report(out)


def test_the_report_links_every_figure_and_escapes_what_it_shows(tiny_run, tmp_path):
    assert (tiny_run[0] / "report.html").is_file() and tiny_run[1].summaries["report"]["report"]
    report = report_of(tiny_run, tmp_path)
    text = report.read_text(encoding="utf-8")
    links = re.findall(r'<img src="([^"]+)"', text)
    # a field with its outlines, training curves, confusion matrices and AP per method, galleries
    for expected in ("report/field_overlay.png", "train/training_curves.png",
                     "evaluation/head/confusion_matrices.png", "evaluation/knn/class_ap.png",
                     "report/cells_true_predicted.png", "report/top_cells.png",
                     "report/query_neighbours.png"):
        assert expected in links, expected
    for link in links:  # relative, inside the run folder, and there
        assert not link.startswith(("/", "http")) and (report.parent / unquote(link)).is_file(), link
    summary = json.loads((report.parent / "evaluation" / "summary.json").read_text())
    for method, scores in summary["methods"].items():
        row = re.search(rf"<tr><td>{method}</td>(.*?)</tr>", text).group(1)
        assert f"{scores['scores']['competition_map']:.3f}" in row
    assert "&lt;script&gt;window.__pwned=1&lt;" in text and "<script>" not in text
    assert "the map stage has not run or is disabled" in text  # TINY has no map


def test_the_report_opens_in_a_browser_with_every_figure(tiny_run, tmp_path, chromium):
    report = report_of(tiny_run, tmp_path)
    page = chromium.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => (i.scrollIntoView(), i.src))")
    page.wait_for_function("[...document.images].every(i => i.complete)")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == len(sizes) >= 7 and min(widths) > 0
    assert page.evaluate("window.__pwned === undefined") and problems == []
    page.close()


def test_the_report_command_rewrites_a_runs_report(tiny_run, tmp_path, capsys):
    from hpa_embed.cli import main

    out = copy_of(tiny_run, tmp_path)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "report.html").stat().st_size > 2000
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "config.toml: not found: not a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_under_torchrun_trains_and_embeds_on_every_process(tmp_path):
    from conftest import run_torchrun

    from hpa_embed.embed import read_embeddings

    run_torchrun("pipeline_ddp_script.py", tmp_path / "out", tmp_path)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["ran"] == list(STAGES) and rank1["ran"] == ["train", "embed"]
    config = load_named_config("tiny")
    config = config.replace(train=dataclasses.replace(config.train, device="cpu"))
    assert all(state == "done" for state in stage_status(config, tmp_path / "out").values())
    cells = CellStore.open(tmp_path / "out" / "store").cells
    assert list(read_embeddings(tmp_path / "out" / "embeddings").cell_ids) == cells["cell_id"].tolist()
    # a rerun under torchrun finds every stage done, on both processes
    run_torchrun("pipeline_ddp_script.py", tmp_path / "out", tmp_path)
    assert json.loads((tmp_path / "rank1.json").read_text()) == {"ran": [], "skipped": ["train", "embed"]}
    assert json.loads((tmp_path / "rank0.json").read_text())["ran"] == []
