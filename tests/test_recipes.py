"""The weak-label recipes: each trains through the pipeline, and their rules against hand-made cases."""

import shutil

import numpy as np
import pandas as pd
import pytest

from hpa_embed.classify import aggregate_images, fuse_scores, predict_cells, score_negative
from hpa_embed.cli import main
from hpa_embed.config import (
    ConfigError,
    CropConfig,
    DataConfig,
    InputConfig,
    MapConfig,
    ModelConfig,
    RunConfig,
    SplitConfig,
    TrainConfig,
    read_config_file,
    write_config_file,
)
from hpa_embed.embed import read_embeddings
from hpa_embed.pipeline import STAGES, run_pipeline
from hpa_embed.recipes import RECIPES, dim_negative_labels, pseudo_labels, recipe_config, relative_brightness
from hpa_embed.store import CellStore

BASE = RunConfig(
    input=InputConfig(preset="tiny", n_images=10, seed=4),
    crop=CropConfig(crop_size=32),
    split=SplitConfig(fractions=(0.5, 0.2, 0.3)),
    model=ModelConfig(arch="resnet18", crop_size=32, embedding_dim=16),
    data=DataConfig(batch_size=8, m_per_class=2, batches_per_epoch=2),
    train=TrainConfig(epochs=1),
    map=MapConfig(enabled=False),
)


@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    """A run folder whose input, segment and crop stages are done."""
    out = tmp_path_factory.mktemp("recipes") / "base"
    run_pipeline(BASE, out, until_stage="crop", workers=1, progress=False)
    return out


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_trains_and_is_scored(cropped, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(cropped, out)
    config = recipe_config(name, BASE)
    result = run_pipeline(config, out, workers=1, progress=False)
    assert result.ran == list(STAGES[STAGES.index("train"):])
    (method,) = config.classify.methods
    scores = result.evaluation["methods"][method]["scores"]
    assert set(scores) == {"cell_map", "image_map", "competition_map"}
    assert all(0 <= value <= 1 for value in scores.values())
    if name == "pseudo":  # round one as dim-negative, then the round on pseudo-labels
        first, last = (read_config_file(out / "train" / path / "config.toml") for path in ("rounds/0", "."))
        assert first.train.dim_negative == 0.2 and last.data.label_mode == "pseudo_labels"
        assert read_embeddings(out / "embeddings").meta["checkpoint"].endswith("train/checkpoints/best")
    if name == "dim-negative":  # one round, on image labels with the dim cells made Negative
        trained = read_config_file(out / "train" / "config.toml")
        assert trained.data.label_mode == "pseudo_labels" and trained.train.dim_negative == 0.2
    if name == "knn":  # the training cells vote with what they trained on: their dim-negative targets
        store = CellStore.open(out / "store")
        cells = store.cells
        trained = ((cells["split"] == "train") & cells["image_labels"].map(
            lambda value: value is not None and len(value) > 0)).to_numpy()
        image_Y = store.scheme.to_multi_hot([list(value) for value in cells["image_labels"][trained]])
        expected = dim_negative_labels(image_Y, relative_brightness(store)[trained], 0.2)
        assert expected[:, 18].sum() > image_Y[:, 18].sum()  # some dim cells became Negative
        embedded = read_embeddings(out / "embeddings")
        votes = predict_cells(embedded, "knn", reference=embedded, reference_splits="train",
                              label_mode="training_targets", training_run=out / "train", n_neighbors=1,
                              negative="model")
        position = pd.Series(np.arange(len(embedded)), index=embedded.cells["cell_id"].astype(str))
        own = votes[position[cells["cell_id"][trained].astype(str)].to_numpy()]  # each cell's nearest: itself
        np.testing.assert_array_equal(own, expected.astype(np.float32))
    if name == "seed-ce":  # the targets written are the single-label training cells' image labels
        cells = CellStore.open(out / "store").cells
        single = cells[(cells["split"] == "train") & (cells["image_labels"].map(
            lambda value: value is not None and len(value) == 1))]
        targets = pd.read_parquet(out / "train" / "targets.parquet")
        assert targets["cell_id"].tolist() == single["cell_id"].astype(str).tolist()
        assert targets["labels"].map(list).tolist() == single["image_labels"].map(list).tolist()


def test_recipes_set_what_they_say():
    assert recipe_config("seed-ce").data.label_mode == "single_label"
    seed = recipe_config("seed-ce")
    assert seed.loss.classification == "ce" and seed.loss.metric is None
    assert seed.data.sampler == "balanced"
    assert recipe_config("seed-ce-triplet").loss.metric == "triplet"
    assert recipe_config("balanced").data.sampler == "balanced"
    assert recipe_config("mil").loss.mil_weight > 0 and recipe_config("mil").data.sampler == "images"
    assert recipe_config("pseudo").train.pseudo_rounds == 1
    assert recipe_config("dim-negative").train.dim_negative == 0.2
    assert recipe_config("balanced").train.dim_negative == 0
    assert recipe_config("fusion").classify.fusion_weight == 0.5
    assert recipe_config("knn").classify.methods == ("knn",)
    assert recipe_config("knn").classify.knn_labels == "training_targets"
    assert recipe_config("knn").train.dim_negative == recipe_config("fusion").train.dim_negative == 0.2
    assert recipe_config("mil").train.dim_negative == 0.2
    assert recipe_config("oracle").data.label_mode == "true_labels"
    # the base run's own settings stay
    assert recipe_config("mil", BASE).train.epochs == 1 and recipe_config("mil", BASE).crop.crop_size == 32
    with pytest.raises(ConfigError, match="unknown recipe 'best'"):
        recipe_config("best")


def test_run_with_a_recipe_from_the_shell(cropped, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(cropped, out)
    config = write_config_file(tmp_path / "run.toml", BASE)
    assert main(["run", str(config), "--recipe", "fusion", "--out", str(out), "--no-progress", "-q"]) == 0
    assert "stages run: train, embed, index, classify, evaluate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["run", str(config), "--recipe", "nope", "--out", str(out)])
    assert info.value.code == 2


def test_pseudo_labels_keep_supported_image_labels_and_make_the_rest_negative():
    image_labels = np.zeros((4, 19), dtype=bool)
    image_labels[:3, [0, 16]] = True  # image a: nucleoplasm + cytosol, three cells
    image_labels[3, 5] = True  # image b: nuclear bodies, one cell
    probabilities = np.zeros((4, 19))
    probabilities[:3, 0] = [0.8, 0.5, 0.1]  # class 0: max 0.8 -> supported from 0.4 on
    probabilities[:3, 16] = [0.1, 0.9, 0.2]  # class 16: max 0.9 -> from 0.45 on
    probabilities[:3, 7] = 0.99  # not an image label: never kept
    probabilities[3, 5] = 0.01  # the image's only cell carries its label
    Y = pseudo_labels(image_labels, probabilities, ["a", "a", "a", "b"], support=0.5)
    assert [np.flatnonzero(row).tolist() for row in Y] == [[0], [0, 16], [18], [5]]
    with pytest.raises(ValueError, match="support"):
        pseudo_labels(image_labels, probabilities, ["a"] * 4, support=0)


def test_score_negative_is_the_complement_of_the_most_confident_other_class():
    probabilities = np.array([[0.9] + [0.0] * 17 + [0.05], [0.2] + [0.1] * 17 + [0.3]])
    scored = score_negative(probabilities)
    np.testing.assert_allclose(scored[:, 18], [max(0.05, 1 - 0.9), max(0.3, 1 - 0.2)], rtol=1e-6)
    np.testing.assert_array_equal(scored[:, :18], probabilities[:, :18].astype(np.float32))
    assert probabilities[1, 18] == 0.3  # a copy


def test_predict_cells_fuses_with_the_image_maximum(cropped, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cropped, out)
    run_pipeline(BASE, out, until_stage="embed", workers=1, progress=False)
    embedded = read_embeddings(out / "embeddings")
    plain = predict_cells(embedded, "head", negative="model")
    fused = predict_cells(embedded, "head", negative="model", fusion_weight=0.25)
    images, image_scores = aggregate_images(plain, embedded.cells["image_id"])
    index = np.searchsorted(images, embedded.cells["image_id"].to_numpy())
    np.testing.assert_allclose(fused, 0.75 * plain + 0.25 * image_scores[index], rtol=1e-6)
    np.testing.assert_allclose(fuse_scores(plain, image_scores, index, 0.25), fused, rtol=1e-6)


def test_dim_negative_labels_make_only_the_dim_cells_of_labelled_images_negative():
    image_labels = np.zeros((5, 19), dtype=bool)
    image_labels[:3, [0, 16]] = True  # image a: nucleoplasm + cytosol
    image_labels[3:, 18] = True  # image b: Negative
    brightness = np.array([1.0, 0.19, 0.2, 0.05, 1.0])
    Y = dim_negative_labels(image_labels, brightness, 0.2)
    assert [np.flatnonzero(row).tolist() for row in Y] == [[0, 16], [18], [0, 16], [18], [18]]
    with pytest.raises(ValueError, match="threshold"):
        dim_negative_labels(image_labels, brightness, 1.0)
    with pytest.raises(ConfigError, match="dim_negative"):
        TrainConfig(dim_negative=-0.1)


def test_relative_brightness_is_a_percentile_of_the_cell_beside_its_images_brightest(tmp_path):
    store = CellStore.create(tmp_path / "s", crop_size=4)
    crops = np.zeros((3, 4, 4, 4), np.uint8)
    crops[:, 0, 1:3, 1:3] = 10  # the cell's pixels (red, non-zero), outside is zero
    crops[0, 1, 1:3, 1:3] = [[100, 100], [100, 200]]  # green inside the cell
    crops[1, 1, 1:3, 1:3] = 50
    crops[2, 1, 1:3, 1:3] = 30
    cells = pd.DataFrame({"cell_id": ["a_1", "a_2", "b_1"], "image_id": ["a", "a", "b"],
                          "scale_green": np.float32([1.0, 1.0, 2.0])})
    store.append(cells, crops)
    brightness = relative_brightness(CellStore.open(tmp_path / "s"), percentile=50)
    # medians of the cells' green pixels: 100, 50 (image a: 50 / 100), 30 (image b: alone)
    np.testing.assert_allclose(brightness, [1.0, 0.5, 1.0])


def test_training_targets_of_a_run_without_them_are_refused_naming_the_file(tmp_path):
    from hpa_embed.classify import with_training_targets
    from hpa_embed.embed import Embeddings
    from hpa_embed.io import DataError

    cells = pd.DataFrame({"cell_id": ["a"], "split": ["train"]})
    reference = Embeddings(np.zeros((1, 2), np.float32), cells, {})
    with pytest.raises(DataError, match="targets.parquet.*wrote no targets"):
        with_training_targets(reference, tmp_path)
    pd.DataFrame({"cell_id": ["a"], "labels": [[3, 18]]}).to_parquet(tmp_path / "targets.parquet")
    assert with_training_targets(reference, tmp_path).cells["pseudo_labels"].tolist() == [[3, 18]]
