import numpy as np
import pytest
from matplotlib.colors import to_rgba_array
from matplotlib.image import imread

from hpa_embed.labels import HPA2021
from hpa_embed.visualise.maps import (
    MAX_POINTS,
    class_panels_figure,
    class_table,
    map_figure,
    plot_class_panels,
    plot_map,
)


def cells(n, seed=0):
    """Cells in 19 clusters on a 2-D map: coordinates, class ids, multi-hot Y (every 5th cell with
    a second class), image ids, cell lines (some missing) and correctness (some unknown)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (19, 2))
    y = rng.integers(0, 19, n)
    coordinates = centres[y] + 0.6 * rng.standard_normal((n, 2))
    Y = np.zeros((n, 19), dtype=bool)
    Y[np.arange(n), y] = True
    Y[::5, (y[::5] + 1) % 19] = True
    images = np.array([f"image-{i}" for i in rng.integers(0, 60, n)], dtype=object)
    lines = rng.choice(np.array(["U2OS", "A-431", "HeLa", None], dtype=object), n)
    correct = np.where(rng.random(n) < 0.1, None, rng.random(n) < 0.8).astype(object)
    return {"coordinates": coordinates, "y": y, "Y": Y, "images": images, "lines": lines, "correct": correct}


def pixels(path):
    """RGB pixels [H, W, 3] of a written PNG, checked to be a drawn picture (not blank)."""
    image = imread(path)[..., :3]
    assert image.std() > 0.05, f"{path} is (nearly) blank"
    distinct = np.unique((image.reshape(-1, 3) * 15).round(), axis=0)
    assert len(distinct) >= 5, f"{path} has only {len(distinct)} colours"
    return image


def has_colour(image, colour, tolerance=2 / 255, at_least=20):
    rgb = to_rgba_array([colour])[0, :3]
    return (np.abs(image - rgb).max(axis=2) <= tolerance).sum() >= at_least


@pytest.fixture(scope="module")
def small():
    return cells(2000)


KINDS = [("class", "y"), ("class", "Y"), ("categorical", "images"), ("categorical", "lines"),
         ("correctness", "correct")]


@pytest.mark.parametrize("kind, column", KINDS)
@pytest.mark.parametrize("max_points", [MAX_POINTS, 500])  # dots; density (forced at 2,000 cells)
def test_every_map_is_written_and_not_blank(tmp_path, small, kind, column, max_points):
    path = plot_map(small["coordinates"], small[column], tmp_path / f"{column}.png", kind, title=column,
                    max_points=max_points, dpi=60)
    assert path == tmp_path / f"{column}.png"
    pixels(path)


@pytest.mark.parametrize("max_points", [MAX_POINTS, 500])
def test_class_map_uses_the_class_palette(tmp_path, small, max_points):
    path = plot_map(small["coordinates"], small["y"], tmp_path / "c.png", "class", max_points=max_points,
                    dpi=80)
    image = pixels(path)
    if max_points == MAX_POINTS:  # dots are drawn in their exact colour
        assert sum(has_colour(image, colour) for colour in HPA2021.colours) >= 15
    figure = map_figure(small["coordinates"], small["y"], "class")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert len(labels) == 19 and labels[0] == f"Nucleoplasm ({(small['y'] == 0).sum():,})"


def test_density_mode_engages_beyond_max_points():
    data = cells(MAX_POINTS + 1, seed=1)
    dense = map_figure(data["coordinates"], data["y"], "class").axes[0]
    assert len(dense.images) == 1 and not dense.collections
    assert "density" in dense.get_title()
    dots = map_figure(data["coordinates"][:MAX_POINTS], data["y"][:MAX_POINTS], "class").axes[0]
    assert len(dots.collections) == 1 and not dots.images
    image = dense.images[0].get_array()
    assert image.shape[:2] == (400, 400) or max(image.shape[:2]) == 400
    assert (image[..., 3] > 0).mean() > 0.05  # the bins holding cells are painted


def test_multi_hot_class_map_counts_several_classes(small):
    figure = map_figure(small["coordinates"], small["Y"], "class")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    several = (small["Y"].sum(axis=1) > 1).sum()
    assert f"several classes ({several:,})" in labels


def test_categorical_legend_is_capped(small):
    figure = map_figure(small["coordinates"], small["images"], "categorical", max_legend=10)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert len(labels) == 10 and labels[-1].startswith("other (51 values)")
    counts = [int(label.rsplit("(", 1)[1].rstrip(")").replace(",", "")) for label in labels]
    assert sum(counts) == len(small["images"]) and counts[:9] == sorted(counts[:9], reverse=True)


def test_correctness_categories(small):
    figure = map_figure(small["coordinates"], small["correct"], "correctness")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    correct = small["correct"]
    known = np.array([value is not None for value in correct])
    assert labels == [f"correct ({(known & (correct == True)).sum():,})",  # noqa: E712
                      f"wrong ({(known & (correct == False)).sum():,})",  # noqa: E712
                      f"unknown ({(~known).sum():,})"]
    as_text = np.where(known, np.where(correct == True, "correct", "wrong"), "")  # noqa: E712
    texts = [t.get_text() for t in map_figure(small["coordinates"], as_text, "correctness")
             .axes[0].get_legend().get_texts()]
    assert texts == labels


@pytest.mark.parametrize("max_points", [MAX_POINTS, 500])
def test_class_panels_written_one_per_class(tmp_path, small, max_points):
    Y = small["Y"].copy()
    Y[:, 7] = False  # an absent class gets no panel
    pixels(plot_class_panels(small["coordinates"], Y, tmp_path / "panels.png", max_points=max_points,
                             dpi=50))
    figure = class_panels_figure(small["coordinates"], Y, max_points=max_points)
    assert len(figure.axes) == 18
    titles = [ax.get_title() for ax in figure.axes]
    multi = Y.sum(axis=1) > 1
    assert titles[0] == f"0: Nucleoplasm\n{Y[:, 0].sum():,} cells, {(Y[:, 0] & multi).sum():,} multi-label"
    assert not any(title.startswith("7:") for title in titles)
    drawn = [len(ax.images) for ax in figure.axes] if max_points == 500 else [len(ax.collections)
                                                                                for ax in figure.axes]
    assert drawn == [2] * 18  # all cells in grey, then the class's cells


def test_class_table():
    names, colours = class_table(19)
    assert names == list(HPA2021.names) and colours.shape == (19, 4)
    assert class_table(28)[1].shape == (28, 4)
    assert class_table(3, ["a", "b", "c"])[0] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="pass names"):
        class_table(3)


def test_bad_input_refused(tmp_path, small):
    coordinates, y = small["coordinates"], small["y"]
    with pytest.raises(ValueError, match="kind"):
        plot_map(coordinates, y, tmp_path / "x.png", "colour")
    with pytest.raises(ValueError, match="values for"):
        plot_map(coordinates, y[:-1], tmp_path / "x.png", "class")
    bad = coordinates.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        plot_map(bad, y, tmp_path / "x.png", "class")
    with pytest.raises(ValueError, match="class ids"):
        plot_map(coordinates, np.full(len(y), 19), tmp_path / "x.png", "class")
    with pytest.raises(ValueError, match="no cell carries"):
        plot_class_panels(coordinates, np.zeros((len(y), 19), bool), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing half-written
