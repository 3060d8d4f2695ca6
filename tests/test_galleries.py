import numpy as np
import pytest
from PIL import Image

from hpa_embed.io import HpaEmbedError
from hpa_embed.labels import CHANNELS, HPA2021
from hpa_embed.store import CellStore
from hpa_embed.visualise import (
    crop_images,
    describe_cells,
    plot_cell_gallery,
    plot_neighbours,
    plot_top_cells,
)
from hpa_embed.visualise.galleries import _MATCH_COLOURS, _QUERY_COLOUR


@pytest.fixture(scope="module")
def store(tiny_store_path):
    return CellStore.open(tiny_store_path)


def read_png(path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def assert_not_blank(pixels: np.ndarray, min_colours: int = 200) -> None:
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) >= min_colours and pixels.std() > 20


def count_colour(pixels: np.ndarray, hex_colour: str) -> int:
    rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return int((pixels == rgb).all(axis=-1).sum())


def test_crop_images_share_one_stretch_and_show_the_protein():
    crops = np.zeros((2, 4, 3, 3), np.uint8)
    crops[0, 1] = 100  # green (protein) plane
    crops[1, 1] = 200
    crops[1, 2, 1, 1] = 255  # a blue pixel
    rgb = crop_images(crops, CHANNELS, percentile=None)
    assert rgb.shape == (2, 3, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0].tolist() == [0, 100, 0] and rgb[1, 0, 0].tolist() == [0, 200, 0]
    assert rgb[1, 1, 1].tolist() == [0, 200, 255]
    # with a percentile stretch the dimmer cell stays dimmer: one scale for both
    stretched = crop_images(crops, CHANNELS, percentile=99)
    assert stretched[0, 0, 0, 1] < stretched[1, 0, 0, 1] == 255
    side_by_side = crop_images(crops, CHANNELS, percentile=None, protein=True)
    assert side_by_side.shape == (2, 3, 9, 3)
    assert (side_by_side[1, :, 3:6] == 255).all()  # the white gap
    assert side_by_side[1, 1, 7].tolist() == [0, 200, 0]  # protein alone: no blue
    with pytest.raises(ValueError, match="green"):
        crop_images(crops[:, [0, 2, 3]], ("red", "blue", "yellow"), protein=True)
    with pytest.raises(ValueError, match=r"\[N, 4, S, S\]"):
        crop_images(crops[0], CHANNELS)


def test_describe_cells_names_true_labels_else_image_labels(store):
    cells = store.cells
    ids = cells["cell_id"].iloc[:3].tolist()
    table = describe_cells(cells, ids)
    assert table["cell_id"].tolist() == ids
    assert table["image_id"].tolist() == cells["image_id"].iloc[:3].tolist()
    first = cells["true_labels"].iloc[0]
    assert table["labels"].iloc[0] == (", ".join(HPA2021.names[k] for k in first) or "none")
    only_image = cells.drop(columns="true_labels")
    image_labels = cells["image_labels"].iloc[0]
    assert describe_cells(only_image, ids[:1])["labels"].iloc[0] == ", ".join(
        HPA2021.names[k] for k in image_labels)
    with pytest.raises(HpaEmbedError, match="'nope' is not among the"):
        describe_cells(cells, ["nope"])


def test_cell_gallery_shows_titles_and_coloured_predictions(store, tmp_path, monkeypatch):
    import hpa_embed.visualise.galleries as galleries

    drawn = []
    save = galleries.save_figure
    monkeypatch.setattr(galleries, "save_figure",
                        lambda figure, path: drawn.append(figure) or save(figure, path))
    cells = store.cells.iloc[:8]
    truth = cells["true_labels"].tolist()
    predicted = [list(labels) for labels in truth[:4]] + [[16, 0, 2, 3, 4, 5]] * 4
    path = plot_cell_gallery(store.get_crops(cells["row"].to_numpy()), cells["cell_id"].tolist(),
                             tmp_path / "gallery.png", true_labels=truth, predicted_labels=predicted,
                             probabilities=np.full((8, 19), 0.7), columns=4, protein=True,
                             title="eight cells")
    pixels = read_png(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 800
    assert_not_blank(pixels)
    axes = drawn[0].axes
    assert len(axes) == 8
    for ax, cell_id, labels in zip(axes, cells["cell_id"], truth):
        assert ax.get_title().startswith(f"{cell_id}\ntrue: ")
        assert all(HPA2021.names[k] in ax.get_title().replace("\n", " ") for k in labels)
    colours = [ax.xaxis.label.get_color() for ax in axes]
    assert colours[:4] == [_MATCH_COLOURS["same"]] * 4
    assert all(colour in (_MATCH_COLOURS["overlap"], _MATCH_COLOURS["none"]) for colour in colours[4:])
    assert axes[4].get_xlabel().replace("\n", " ").endswith("+2 more")  # 4 of 6 classes named
    with pytest.raises(ValueError, match="titles has 2 entries for 8 crops"):
        plot_cell_gallery(store.get_crops(cells["row"].to_numpy()), ["a", "b"], tmp_path / "bad.png")


def test_top_cells_frames_tell_right_from_wrong(store, tmp_path):
    cells = store.cells
    has_nucleoplasm = np.array([0 in labels for labels in cells["true_labels"]])
    assert 3 <= has_nucleoplasm.sum() < len(cells) - 3
    probabilities = np.zeros((len(cells), 19), np.float32)
    probabilities[:, 0] = has_nucleoplasm * 0.9 + np.linspace(0, 0.05, len(cells))  # right at the top
    lacks_class_1 = np.array([1 not in labels for labels in cells["true_labels"]])
    probabilities[:, 1] = lacks_class_1 * 0.9  # wrong at the top
    path = plot_top_cells(store, cells, probabilities, tmp_path / "top.png", per_class=3, classes=[0, 1])
    pixels = read_png(path)
    assert_not_blank(pixels)
    right, wrong = count_colour(pixels, "#1a7f37"), count_colour(pixels, "#c62828")
    assert right > 300 and wrong > 300 and 0.5 < right / wrong < 2  # 3 green and 3 red frames
    taller = plot_top_cells(store, cells, probabilities, tmp_path / "top4.png", per_class=3,
                            classes=[0, 1, 2, 3])
    assert read_png(taller).shape[0] > 1.6 * pixels.shape[0]
    with pytest.raises(ValueError, match="probabilities must be"):
        plot_top_cells(store, cells, probabilities[:5], tmp_path / "bad.png")


def test_neighbours_montage_holds_the_query_and_k_neighbours(store, tmp_path, monkeypatch):
    cells = store.cells
    query, neighbours = cells["cell_id"].iloc[0], cells["cell_id"].iloc[1:6].tolist()
    requested = []
    get_crops = store.get_crops
    monkeypatch.setattr(store, "get_crops", lambda rows: requested.append(list(rows)) or get_crops(rows))
    path = plot_neighbours(store, query, [*neighbours, None], [0.9, 0.8, 0.7, 0.6, 0.5, -np.inf],
                           tmp_path / "montage.png", score_name="cosine")
    assert requested == [cells["row"].iloc[:6].tolist()]  # the query, then the 5 found neighbours
    pixels = read_png(path)
    assert_not_blank(pixels)
    # a horizontal line through the query's frame crosses 6 panels separated by white
    frame_rows = np.flatnonzero((pixels == [31, 78, 156]).all(axis=-1).sum(axis=1) > 0)
    line = pixels[int(np.median(frame_rows))]
    inked = (line < 245).any(axis=-1).astype(int)
    assert np.count_nonzero(np.diff(inked) == 1) + inked[0] == 6
    assert count_colour(pixels, _QUERY_COLOUR) > 200
    with pytest.raises(ValueError, match="2 neighbour ids but 1 scores"):
        plot_neighbours(store, query, neighbours[:2], [0.5], tmp_path / "bad.png")
