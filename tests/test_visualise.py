import numpy as np
import pytest
from PIL import Image

from hpa_embed.analysis import label_statistics
from hpa_embed.evaluate import classification_table
from hpa_embed.io import LabelTable
from hpa_embed.labels import HPA2021, RGB_CHANNELS
from hpa_embed.visualise import (
    composite_rgb,
    plot_confusion_matrices,
    plot_label_statistics,
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
