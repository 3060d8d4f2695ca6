import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpa_embed.analysis import label_statistics
from hpa_embed.evaluate import classification_table
from hpa_embed.io import LabelTable
from hpa_embed.labels import HPA2021, RGB_CHANNELS
from hpa_embed.visualise import (
    composite_rgb,
    plot_class_ap,
    plot_confusion_matrices,
    plot_label_statistics,
    plot_training_curves,
    save_channel_views,
)


def test_composite_maps_channels_to_colours():
    image = np.zeros((4, 2, 3), np.float32)
    image[0, 0, 0] = 1  # red
    image[1, 0, 1] = 1  # green
    image[2, 0, 2] = 1  # blue
    image[3, 1, 0] = 1  # yellow -> half red + half green
    rgb = composite_rgb(image, percentile=None)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[0, 1].tolist() == [0, 255, 0]
    assert rgb[0, 2].tolist() == [0, 0, 255]
    assert rgb[1, 0].tolist() == [128, 128, 0]
    assert rgb[1, 1].tolist() == [0, 0, 0]


def test_composite_percentile_stretches_dim_channels():
    image = np.full((3, 10, 10), 0.1, np.float32)
    rgb = composite_rgb(image, RGB_CHANNELS, percentile=99)
    assert (rgb == 255).all()


def test_channel_views_and_label_plots_are_written(tmp_path):
    image = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)
    paths = save_channel_views(image, tmp_path, "f1")
    assert [p.name for p in paths] == [
        "f1_red.png", "f1_green.png", "f1_blue.png", "f1_yellow.png", "f1_composite.png",
    ]
    red = np.asarray(Image.open(paths[0]))
    assert red.shape == (16, 16, 3) and red[..., 1:].max() == 0 and red[..., 0].max() > 200
    stats = label_statistics(LabelTable(["a", "b"], [[0], [0, 16]], HPA2021))
    for path in plot_label_statistics(stats, tmp_path / "plots"):
        with Image.open(path) as picture:
            assert picture.size[0] > 100 and picture.size[1] > 100


def test_plot_confusion_matrices(tmp_path):
    rng = np.random.default_rng(1)
    Y = rng.random((200, 19)) < 0.2
    probabilities = np.clip(Y * 0.6 + rng.random((200, 19)) * 0.5, 0, 1)
    path = plot_confusion_matrices(classification_table(Y, probabilities), tmp_path / "confusion.png")
    assert path == tmp_path / "confusion.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 400
        # 19 panels in a 5 x 4 grid: the last slot is blank, the others are not
        pixels = np.asarray(image.convert("L"))
    height, width = pixels.shape
    assert pixels[-height // 5 :, -width // 6 :].min() > 240
    assert pixels[: height // 4, : width // 5].min() < 100
    incomplete = classification_table(Y, probabilities).drop(columns="tp")
    with pytest.raises(ValueError, match="lacks column"):
        plot_confusion_matrices(incomplete, tmp_path / "bad.png")


def _capture_figures(monkeypatch) -> list:
    """Figures handed to save_figure (still written), to check what was drawn."""
    import hpa_embed.visualise.plots as plots

    drawn = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.append(figure) or save(figure, path))
    return drawn


def _assert_not_blank(path) -> None:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20 and pixels.std() > 20


def test_confusion_matrices_show_only_the_classes_present(tmp_path, monkeypatch):
    drawn = _capture_figures(monkeypatch)
    Y = np.zeros((40, 19), bool)
    Y[:10, 0] = Y[10:20, 16] = True
    predicted = np.zeros((40, 19))
    predicted[:12, 0] = predicted[30:, 5] = 1  # class 5: predicted, never true
    path = plot_confusion_matrices(classification_table(Y, predicted), tmp_path / "confusion.png")
    _assert_not_blank(path)
    titles = [ax.get_title() for ax in drawn[0].axes if ax.images]
    assert [title.split("\n")[0] for title in titles] == ["0 Nucleoplasm", "5 Nuclear bodies", "16 Cytosol"]
    assert "16 without left out" in drawn[0].get_suptitle()


def test_training_curves_per_loss_component(tmp_path, monkeypatch):
    drawn = _capture_figures(monkeypatch)
    epochs = np.arange(1, 6)
    history = pd.DataFrame({"epoch": epochs, "train_cls": 1 / epochs, "train_metric": 0.5 / epochs,
                            "train_mil": 0.3 / epochs, "train_total": 1.8 / epochs,
                            "val_cls": 1.2 / epochs, "val_metric": 0.6 / epochs, "val_mil": 0.4 / epochs,
                            "val_total": [2.0, 1.5, 1.0, 1.1, 1.2], "val_accuracy": epochs / 10,
                            "val_macro_ap": epochs / 6})
    history.to_csv(tmp_path / "history.csv", index=False)
    path = plot_training_curves(tmp_path, tmp_path / "curves.png")  # a run directory: its history.csv
    _assert_not_blank(path)
    panels = [ax for ax in drawn[0].axes if ax.lines]
    assert [ax.get_title() for ax in panels] == ["classification loss", "metric-learning loss",
                                                 "MIL (image-level) loss", "total loss (weighted sum)",
                                                 "validation scores"]
    cls = panels[0]
    assert [line.get_label() for line in cls.lines] == ["training", "validation", "best checkpoint (epoch 3)"]
    assert np.allclose(cls.lines[1].get_ydata(), 1.2 / epochs)
    # a history without the MIL term, and one epoch, still draws
    one = history.drop(columns=["train_mil", "val_mil"]).iloc[:1]
    plot_training_curves(one, tmp_path / "one.png")
    assert "MIL (image-level) loss" not in [ax.get_title() for ax in drawn[1].axes]
    with pytest.raises(ValueError, match="epoch"):
        plot_training_curves(history.drop(columns="epoch"), tmp_path / "bad.png")


def test_class_ap_bars(tmp_path, monkeypatch):
    drawn = _capture_figures(monkeypatch)
    table = pd.DataFrame({"class_id": np.arange(19), "name": list(HPA2021.names),
                          "ap": [0.9, np.nan, 0.3] + [np.nan] * 15 + [0.6],
                          "n_gt": [5, 0, 2] + [0] * 15 + [4]})
    table.to_csv(tmp_path / "cell_ap.csv", index=False)
    path = plot_class_ap(tmp_path, tmp_path / "class_ap.png")  # an evaluation directory: its cell_ap.csv
    _assert_not_blank(path)
    ax = drawn[0].axes[0]
    widths = [patch.get_width() for patch in ax.patches]
    assert widths[0] == 0.9 and widths[2] == 0.3 and widths[18] == 0.6 and widths[1] == 0
    texts = [text.get_text() for text in ax.texts]
    assert texts[0] == " 0.90 (n=5)" and texts[1] == " no true cells"
    assert "mAP 0.600 over 3 classes" in ax.get_title()
    with pytest.raises(ValueError, match="lacks column"):
        plot_class_ap(table.drop(columns="ap"), tmp_path / "bad.png")
