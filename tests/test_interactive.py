import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpa_embed.labels import HPA2021
from hpa_embed.store import CellStore
from hpa_embed.visualise.interactive import (
    THUMB_DIR,
    cell_map_from_store,
    escape_json_for_html,
    write_cell_map,
)

EVIL = "<script>window.__pwned=1</script>"
EVIL_LINE = '<img src=x onerror="window.__pwned=1">'


def page_data(index_html: Path) -> dict:
    text = index_html.read_text(encoding="utf-8")
    found = re.findall(r'<script type="application/json" id="cellmap-data">(.*?)</script>', text, re.S)
    assert len(found) == 1
    return json.loads(found[0])


def tile(path: Path, data: dict, cell: int) -> np.ndarray:
    """The sprite tile of ``cell`` as an array, found the way the page finds it."""
    thumbs = data["thumbs"]
    slot = data["slot"][cell]
    sheet, j = divmod(slot, thumbs["per_sheet"])
    row, col = divmod(j, thumbs["per_row"])
    t = thumbs["size"]
    return np.asarray(Image.open(path / thumbs["rgby"][sheet]))[row * t:(row + 1) * t, col * t:(col + 1) * t]


def uniform_cells(n: int, size: int = 8, seed: int = 0):
    """``n`` cells on a jittered grid, each crop one uniform colour per channel, 3 classes."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.divmod(np.arange(n), side), axis=1).astype(float)
    xy = grid + rng.uniform(-0.1, 0.1, (n, 2))
    values = rng.integers(0, 256, (n, 4), dtype=np.uint8)
    thumbnails = np.broadcast_to(values[:, :, None, None], (n, 4, size, size)).copy()
    classes = np.arange(n) % 3
    cells = pd.DataFrame({
        "cell_id": [f"cell-{i}" for i in range(n)],
        "image_id": [f"img-{i // 10}" for i in range(n)],
        "cell_line": ["U-2 OS" if i % 2 else "A-431" for i in range(n)],
        "true_labels": [[int(c)] for c in classes],
        "image_labels": [[int(c), 16] for c in classes],
        "prediction": [int(c) if i % 4 else 5 for i, c in enumerate(classes)],
    })
    return xy, cells, thumbnails, values


def expected_rgb(values: np.ndarray) -> np.ndarray:
    """Hand-computed composite of uniform (red, green, blue, yellow) values, no stretch."""
    r, g, b, y = values.astype(float) / 255
    return np.clip(np.array([r + y / 2, g + y / 2, b]), 0, 1) * 255


# --------------------------------------------------------------------------- files, no browser


def test_json_escaping_keeps_text_and_drops_markup():
    value = {"id": "</script><!-- & ü \u2028", "n": [1, 2]}
    text = escape_json_for_html(value)
    assert not set("<>&") & set(text)
    assert text.isascii()
    assert json.loads(text) == value


def test_written_page_escapes_data_and_packs_sprites(tmp_path):
    xy, cells, thumbnails, values = uniform_cells(30)
    cells.loc[3, "cell_id"] = EVIL
    cells.loc[4, "cell_line"] = EVIL_LINE
    neighbours = np.tile(np.arange(5), (30, 1))
    index = write_cell_map(tmp_path / "map", xy, cells, thumbnails, neighbours, title=f"map {EVIL}",
                           percentile=None)
    assert index == tmp_path / "map" / "index.html"
    text = index.read_text(encoding="utf-8")
    assert "window.__pwned" in text  # the data is there ...
    assert EVIL not in text and "<img" not in text  # ... but never as markup
    assert "<title>map &lt;script&gt;" in text
    assert text.count("</script>") == 2  # the data block and the page's own code

    data = page_data(index)
    assert data["n"] == 30 and data["cell_id"][3] == EVIL
    assert data["columns"]["cell_line"]["values"][data["columns"]["cell_line"]["codes"][4]] == EVIL_LINE
    assert data["k"] == 5 and data["neighbours"][:5] == [0, 1, 2, 3, 4]
    assert sorted(data["slot"]) == list(range(30))
    assert [m["key"] for m in data["modes"]] == ["class", "image_id", "cell_line", "prediction", "correct"]

    thumbs = data["thumbs"]
    assert thumbs["size"] == 8 and thumbs["per_row"] == 256 and len(thumbs["rgby"]) == 1
    rgby = Image.open(tmp_path / "map" / thumbs["rgby"][0])
    green = Image.open(tmp_path / "map" / thumbs["green"][0])
    assert rgby.mode == "RGB" and green.mode == "L"
    assert rgby.size == green.size == (256 * 8, 8)  # one row of tiles holds all 30 cells
    for cell in (0, 7, 29):
        np.testing.assert_allclose(tile(tmp_path / "map", data, cell), np.broadcast_to(
            expected_rgb(values[cell]), (8, 8, 3)), atol=1)
    files = sorted(p.relative_to(tmp_path / "map").as_posix() for p in (tmp_path / "map").rglob("*"))
    assert files == [THUMB_DIR, f"{THUMB_DIR}/green-000.png", f"{THUMB_DIR}/rgby-000.png", "index.html"]


def test_sprites_split_into_sheets_and_downsample(tmp_path):
    n = 70
    xy = np.random.default_rng(1).normal(size=(n, 2))
    cells = pd.DataFrame({"cell_id": [str(i) for i in range(n)], "image_id": ["a"] * n})
    crops = np.zeros((n, 4, 512, 512), np.uint8)
    crops[:, 1, :256, :256] = 200  # green top-left quarter of every crop
    index = write_cell_map(tmp_path, xy, cells, crops, thumb_size=256, percentile=None)
    data = page_data(index)
    # 2048 px sheets of 256 px tiles: 64 cells per sheet -> 2 sheets of each kind
    assert data["thumbs"]["per_sheet"] == 64 and len(data["thumbs"]["green"]) == 2
    assert [m["key"] for m in data["modes"]] == ["image_id"]  # no label or line columns
    last = np.asarray(Image.open(tmp_path / data["thumbs"]["green"][1]))
    assert last.shape == (256, 2048)  # 6 cells on the last sheet: one row of 8 tiles, 2 left black
    assert (last[:128, :128] == 200).all() and (last[128:, :] == 0).all()


def test_area_downsampling_is_the_block_mean(tmp_path):
    crops = np.zeros((1, 4, 4, 4), np.uint8)
    crops[0, 2] = [[0, 40, 80, 120]] * 4  # blue ramp
    cells = pd.DataFrame({"cell_id": ["x"], "image_id": ["i"]})
    index = write_cell_map(tmp_path, np.zeros((1, 2)), cells, crops, thumb_size=2, percentile=None)
    got = tile(tmp_path, page_data(index), 0)[..., 2]
    assert got.tolist() == [[20, 100], [20, 100]]


def test_correctness_and_class_categories(tmp_path):
    cells = pd.DataFrame({
        "cell_id": list("abcde"), "image_id": ["i"] * 5,
        "true_labels": [[1], [1, 2], [3], None, [4]],
        "prediction": [[1], [2], [5], [1], "4|6"],
    })
    crops = np.zeros((5, 4, 2, 2), np.uint8)
    index = write_cell_map(tmp_path, np.arange(10.0).reshape(5, 2), cells, crops,
                           colour_by=("correct", "class", "cell_line"))
    modes = {m["key"]: m for m in page_data(index)["modes"]}
    assert list(modes) == ["correct", "class"]  # no cell_line column
    correct = modes["correct"]
    assert [correct["categories"][c] for c in correct["codes"]] == [
        "correct", "partly correct", "wrong", "unknown", "partly correct"]
    names = modes["class"]["categories"]
    assert [names[c] for c in modes["class"]["codes"]] == [
        HPA2021.names[1], "several classes", HPA2021.names[3], "no class", HPA2021.names[4]]


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(coordinates=np.full((4, 2), np.nan)), "non-finite"),
    (lambda a: a.update(neighbours=np.zeros((4, 2, 1), int)), "neighbours"),
    (lambda a: a.update(neighbours=np.full((4, 2), 4)), "neighbours"),
    (lambda a: a["cells"].__setitem__("cell_id", ["a", "a", "b", "c"]), "duplicate"),
    (lambda a: a.update(colour_by=("colour",)), "unknown colour_by"),
    (lambda a: a.update(thumbnails=np.zeros((3, 4, 2, 2), np.uint8)), "thumbnails"),
    (lambda a: a.update(thumbnails=np.zeros((4, 4, 2, 2), np.float32)), "uint8"),
])
def test_bad_input_is_refused(tmp_path, change, message):
    args = {"coordinates": np.zeros((4, 2)), "neighbours": None, "colour_by": ("image_id",),
            "cells": pd.DataFrame({"cell_id": list("abcd"), "image_id": ["i"] * 4}),
            "thumbnails": np.zeros((4, 4, 2, 2), np.uint8)}
    change(args)
    with pytest.raises(ValueError, match=message):
        write_cell_map(tmp_path, **args)


def test_map_from_store_reads_the_rows_named(tmp_path):
    xy, cells, thumbnails, _ = uniform_cells(12)
    store = CellStore.create(tmp_path / "store", crop_size=8, chunk_size=5)
    store.append(cells[["cell_id", "image_id"]], thumbnails)
    subset = store.cells.iloc[[11, 2, 7]].assign(true_labels=[[1], [2], [3]])
    direct = page_data(write_cell_map(tmp_path / "a", xy[[11, 2, 7]], subset, thumbnails[[11, 2, 7]]))
    stored = page_data(cell_map_from_store(tmp_path / "b", xy[[11, 2, 7]], subset, tmp_path / "store"))
    assert stored["cell_id"] == ["cell-11", "cell-2", "cell-7"]
    for cell in range(3):
        np.testing.assert_array_equal(tile(tmp_path / "b", stored, cell), tile(tmp_path / "a", direct, cell))


# --------------------------------------------------------------------------- in a browser

N_PAGE = 150
NEIGHBOURS = np.random.default_rng(5).integers(0, N_PAGE, (N_PAGE, 6))


@pytest.fixture(scope="module")
def cell_page(tmp_path_factory, chromium):
    xy, cells, thumbnails, values = uniform_cells(N_PAGE, seed=3)
    cells.loc[5, "cell_id"] = EVIL
    cells.loc[5, "cell_line"] = EVIL_LINE
    out = tmp_path_factory.mktemp("cellmap")
    index = write_cell_map(out, xy, cells, thumbnails, NEIGHBOURS, title=EVIL, percentile=None)
    page = chromium.new_page(viewport={"width": 1100, "height": 700}, device_scale_factor=1)
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(index.as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'")
    yield page, cells, values, problems
    page.close()


def hover(page, cell: int):
    pos = page.evaluate(f"cellMap.screenPosition({cell})")
    page.mouse.move(pos["x"], pos["y"])
    return pos


def test_page_loads_with_every_cell_and_no_error(cell_page):
    page, cells, _, problems = cell_page
    assert page.evaluate("cellMap.count") == N_PAGE
    assert page.get_attribute("body", "data-cell-count") == str(N_PAGE)
    assert page.evaluate("cellMap.webgl")
    assert page.text_content("#title") == EVIL
    assert page.eval_on_selector_all("#colour-by option", "os => os.map(o => o.value)") == [
        "class", "image_id", "cell_line", "prediction", "correct"]
    assert problems == []


def test_hover_shows_the_cells_thumbnail_and_id(cell_page):
    page, cells, values, problems = cell_page
    for cell in (17, 88):
        hover(page, cell)
        page.wait_for_function(f"cellMap.hovered() === {cell}")
        page.wait_for_selector("#thumb-rgby[data-state=loaded]")
        page.wait_for_selector("#thumb-green[data-state=loaded]")
        assert page.evaluate("cellMap.hovered()") == cell
        assert page.text_content("#info-title") == f"cell-{cell}"
        details = page.eval_on_selector_all("#details dd", "ds => ds.map(d => d.textContent)")
        assert details[:2] == [f"cell-{cell}", cells.image_id[cell]]
        assert HPA2021.names[cell % 3] in details
        shown = np.asarray(Image.open(io.BytesIO(page.locator("#thumb-rgby").screenshot())).convert("RGB"))
        np.testing.assert_allclose(shown[10:-10, 10:-10].reshape(-1, 3).mean(0), expected_rgb(values[cell]),
                                   atol=3)
        green = np.asarray(Image.open(io.BytesIO(page.locator("#thumb-green").screenshot())).convert("RGB"))
        np.testing.assert_allclose(green[10:-10, 10:-10].reshape(-1, 3).mean(0), [0, values[cell, 1], 0],
                                   atol=3)
    assert problems == []


def test_click_lists_exactly_the_given_neighbours(cell_page):
    page, cells, _, problems = cell_page
    pos = hover(page, 40)
    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_function("cellMap.selected() === 40")
    ids = page.eval_on_selector_all("#neighbours .nbr-id", "es => es.map(e => e.textContent)")
    assert ids == [cells.cell_id[j] for j in NEIGHBOURS[40]]
    assert page.evaluate("cellMap.selected()") == 40
    assert problems == []


def test_markup_in_data_shows_as_text_and_never_runs(cell_page):
    page, _, _, problems = cell_page
    hover(page, 5)
    page.wait_for_function("cellMap.hovered() === 5")
    assert page.text_content("#info-title") == EVIL
    details = page.eval_on_selector_all("#details dd", "ds => ds.map(d => d.textContent)")
    assert EVIL in details and EVIL_LINE in details
    page.fill("#find-input", EVIL)
    page.press("#find-input", "Enter")
    page.wait_for_function("cellMap.selected() === 5")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("#details img").count() == 0
    assert problems == []


def test_legend_hides_a_class_and_find_reports_a_missing_id(cell_page):
    page, _, _, problems = cell_page
    page.click("#reset-view")
    page.select_option("#colour-by", "class")
    entry = page.locator("#legend li", has_text=HPA2021.names[1])
    entry.click()
    hover(page, 1)  # class 1
    page.wait_for_timeout(50)
    assert page.evaluate("cellMap.hovered()") == -1
    hover(page, 3)  # class 0 is still shown
    page.wait_for_function("cellMap.hovered() === 3")
    entry.click()
    hover(page, 1)
    page.wait_for_function("cellMap.hovered() === 1")
    page.fill("#find-input", "no-such-cell")
    page.press("#find-input", "Enter")
    assert "no cell with id" in page.text_content("#find-status")
    page.select_option("#colour-by", "correct")
    legend = page.eval_on_selector_all("#legend li", "ls => ls.map(l => l.dataset.category)")
    assert set(legend) == {"correct", "wrong"}
    assert problems == []
