"""The interactive cell map: one self-contained HTML page over a 2-D map of cells.

:func:`write_cell_map` writes ``<out_dir>/index.html`` and ``<out_dir>/cellmap_thumbs/`` (the
cells' thumbnails packed into sprite sheets). The page opens from disk (``file://``) with no
network and no external library: a small WebGL scatter of every cell, a picking grid for hover,
a colour-by selector, a legend whose entries hide and show their cells, a find-by-id box, and on
click the cell's nearest neighbours as thumbnails.

Everything the data holds reaches the page as JSON inside ``<script type="application/json">``
with ``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026``, and the page inserts
it with ``textContent`` only: an id or label such as ``<script>...</script>`` shows as text.
"""

from __future__ import annotations

import colorsys
import html
import json
import logging
import operator
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..io import atomic_path
from ..labels import CHANNELS, HPA2021, ClassScheme, get_scheme
from .plots import CHANNEL_COLOURS

if TYPE_CHECKING:
    from ..store import CellStore

__all__ = ["COLOUR_MODES", "write_cell_map", "cell_map_from_store", "escape_json_for_html"]

log = logging.getLogger(__name__)

#: The colour-by modes a page may offer, with the label its selector shows.
COLOUR_MODES: dict[str, str] = {
    "class": "class",
    "image_id": "image",
    "cell_line": "cell line",
    "prediction": "prediction",
    "correct": "correctness",
}
#: Folder (beside index.html) that holds the sprite sheets; replaced as a whole on each write.
THUMB_DIR = "cellmap_thumbs"
#: Largest side of a sprite sheet, pixels: big enough for few files, small enough to decode fast.
SHEET_PX = 2048
_QUANT = 65535  # map coordinates are stored as integers 0..65535 in the unit square
_GREY = "#8a8f98"
_DARK_GREY = "#5b6068"


def escape_json_for_html(value: Any) -> str:
    """``value`` as JSON that is safe inside ``<script type="application/json">``.

    Non-ASCII is written as ``\\uXXXX`` and ``<``, ``>``, ``&`` as ``\\u003c``, ``\\u003e``,
    ``\\u0026``: these characters only ever occur inside JSON strings, where the escape decodes to
    the same text, so no data can close the script element or open a comment.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- table columns


def _label_list(value, column: str, row: int) -> list[int] | None:
    """One cell's labels (a list of ids, one id, or ``"8|5|0"``) -> list of class ids; None: unknown."""
    if isinstance(value, str):  # the Kaggle form "8|5|0"
        value = value.replace("|", " ").split()
    elif value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    elif np.isscalar(value):
        value = [value]
    ids = []
    for v in value:
        try:
            ids.append(operator.index(v) if not isinstance(v, str) else int(v))
        except (TypeError, ValueError):
            if not (isinstance(v, float) and v.is_integer()):
                problem = f"{value!r} is not a list of class ids"
                raise ValueError(f"cells[{column!r}] row {row}: {problem}") from None
            ids.append(int(v))
    return ids


def _label_column(cells: pd.DataFrame, column: str, scheme: ClassScheme) -> list[list[int] | None] | None:
    if column not in cells:
        return None
    labels = [_label_list(value, column, row) for row, value in enumerate(cells[column])]
    for row, ids in enumerate(labels):
        for class_id in ids or ():
            if not 0 <= class_id < scheme.num_classes:
                raise ValueError(f"cells[{column!r}] row {row}: class {class_id} is outside the "
                                 f"{scheme.name} scheme (ids 0..{scheme.num_classes - 1})")
    return labels


def _categorical(values: pd.Series) -> dict[str, list]:
    codes, uniques = pd.factorize(values.astype(str), sort=False)
    return {"values": [str(v) for v in uniques], "codes": codes.tolist()}


def _spread_colours(n: int) -> list[str]:
    """``n`` distinguishable colours: golden-angle hues at two lightness levels."""
    colours = []
    for i in range(n):
        hue = (i * 0.381966) % 1.0
        light = 0.62 if i % 2 == 0 else 0.48
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.7)
        colours.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return colours


def _class_mode(labels: list[list[int] | None], scheme: ClassScheme, key: str, label: str) -> dict:
    """One category per class, then 'several classes' and 'no class' (as the static maps)."""
    k = scheme.num_classes
    codes = [ids[0] if ids and len(set(ids)) == 1 else (k if ids else k + 1) for ids in labels]
    return {"key": key, "label": label, "order": "given",
            "categories": [*scheme.names, "several classes", "no class"],
            "colours": [*scheme.colours, _GREY, _DARK_GREY], "codes": codes}


def _correct_mode(predicted: list, truth: list, label: str) -> dict:
    codes = []
    for pred, true in zip(predicted, truth):
        if pred is None or true is None:
            codes.append(3)
        elif set(pred) == set(true):
            codes.append(0)
        else:
            codes.append(1 if set(pred) & set(true) else 2)
    return {"key": "correct", "label": label, "order": "given",
            "categories": ["correct", "partly correct", "wrong", "unknown"],
            "colours": ["#4cc26b", "#e7b32f", "#e5484d", _DARK_GREY], "codes": codes}


def _page_data(cells: pd.DataFrame, scheme: ClassScheme, colour_by: Sequence[str]) -> dict:
    """The per-cell columns and the colour modes of the page."""
    for name in ("cell_id", "image_id"):
        if name not in cells:
            raise ValueError(f"the cell table lacks column {name!r}")
    if cells["cell_id"].duplicated().any():
        duplicate = cells["cell_id"][cells["cell_id"].duplicated()].iloc[0]
        raise ValueError(f"duplicate cell_id {duplicate!r}: the find box needs unique ids")
    unknown = [mode for mode in colour_by if mode not in COLOUR_MODES]
    if unknown:
        raise ValueError(f"unknown colour_by mode(s) {unknown}; modes are {list(COLOUR_MODES)}")

    true = _label_column(cells, "true_labels", scheme)
    image = _label_column(cells, "image_labels", scheme)
    predicted = _label_column(cells, "prediction", scheme)
    if true is not None and all(ids is None for ids in true):
        true = None
    columns: dict[str, Any] = {"image": _categorical(cells["image_id"])}
    if "cell_line" in cells:
        columns["cell_line"] = _categorical(cells["cell_line"].fillna(""))
    # class colours and correctness use the cells' own labels where known, else the image labels
    truth, truth_name = (true, "true labels") if true is not None else (image, "image labels")

    modes = []
    for mode in dict.fromkeys(colour_by):
        if mode == "class" and truth is not None:
            modes.append(_class_mode(truth, scheme, "class", f"class ({truth_name})"))
        elif mode in ("image_id", "cell_line") and mode.removesuffix("_id") in columns:
            column = mode.removesuffix("_id")
            count = len(columns[column]["values"])
            modes.append({"key": mode, "label": COLOUR_MODES[mode], "order": "count",
                          "categories": columns[column]["values"], "colours": _spread_colours(count),
                          "column": column})
        elif mode == "prediction" and predicted is not None:
            modes.append(_class_mode(predicted, scheme, "prediction", "prediction"))
        elif mode == "correct" and predicted is not None and truth is not None:
            modes.append(_correct_mode(predicted, truth, f"correctness (vs {truth_name})"))
        else:
            log.info("cell map: no colour-by %r (the cell table lacks its column)", mode)
    if not modes:
        raise ValueError(f"none of the colour_by modes {list(colour_by)} has its columns in the cell table")
    return {
        "cell_id": cells["cell_id"].astype(str).tolist(),
        "columns": columns,
        "labels": {"true": true, "image": image, "prediction": predicted},
        "class_names": list(scheme.names),
        "modes": modes,
    }


# --------------------------------------------------------------------------- thumbnails


def _resample(block: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``[n, C, S, S]`` down to ``[n, C, size, size]`` float32."""
    block = block.astype(np.float32)
    side = block.shape[-1]
    if side == size:
        return block
    edges = (np.arange(size) * side) // size
    widths = np.diff(np.append(edges, side)).astype(np.float32)
    block = np.add.reduceat(block, edges, axis=-1) / widths
    return np.add.reduceat(block, edges, axis=-2) / widths[:, None]


def _channel_highs(sample: np.ndarray, percentile: float | None) -> np.ndarray:
    """Value of each channel that maps to full brightness, from a sample ``[n, C, S, S]``."""
    if percentile is None:
        return np.full(sample.shape[1], 255.0, dtype=np.float32)
    planes = sample.transpose(1, 0, 2, 3).reshape(sample.shape[1], -1)
    high = np.percentile(planes, percentile, axis=1).astype(np.float32)
    return np.where(high >= 1, high, 255.0).astype(np.float32)


def _tile(images: np.ndarray, per_row: int) -> np.ndarray:
    """``[n, T, T, ...]`` -> one sheet ``[rows*T, per_row*T, ...]``, row-major, black padding."""
    n, side = len(images), images.shape[1]
    rows = -(-n // per_row)
    padded = np.zeros((rows * per_row, *images.shape[1:]), dtype=images.dtype)
    padded[:n] = images
    padded = padded.reshape(rows, per_row, side, side, *images.shape[3:])
    return padded.swapaxes(1, 2).reshape(rows * side, per_row * side, *images.shape[3:])


def _save_image(path: Path, array: np.ndarray, image_format: str) -> None:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    if image_format == "png":
        image.save(path, format="PNG", compress_level=6)
    else:
        image.save(path, format="JPEG", quality=90)


def _spatial_order(xy: np.ndarray) -> np.ndarray:
    """Cells in Morton (Z) order of their map position: map neighbours share a sprite sheet."""
    q = np.clip((xy * 1023).astype(np.int64), 0, 1023)
    code = np.zeros(len(xy), dtype=np.int64)
    for bit in range(10):
        code |= ((q[:, 0] >> bit) & 1) << (2 * bit) | ((q[:, 1] >> bit) & 1) << (2 * bit + 1)
    return np.argsort(code, kind="stable")


def _write_sprites(
    folder: Path,
    read: Callable[[np.ndarray], np.ndarray],
    order: np.ndarray,
    channels: Sequence[str],
    thumb_size: int | None,
    percentile: float | None,
    image_format: str,
    progress: bool,
) -> dict:
    """Write the RGBY and green-channel sprite sheets of the cells in ``order``."""
    n = len(order)
    first = np.asarray(read(order[:1]))
    if first.dtype != np.uint8 or first.ndim != 4 or first.shape[1] != len(channels):
        raise ValueError(f"thumbnails must be uint8 [N, {len(channels)}, S, S] in channel order "
                         f"{tuple(channels)}, got {first.dtype} {first.shape}")
    side = first.shape[-1]
    size = side if thumb_size is None else min(side, int(thumb_size))
    per_row = max(1, SHEET_PX // size)
    per_sheet = per_row * per_row
    green = list(channels).index("green")
    weights = np.array([CHANNEL_COLOURS[name] for name in channels], dtype=np.float32)  # [C, 3]

    sample = np.unique(np.linspace(0, n - 1, min(n, 2000)).astype(np.int64))
    highs = _channel_highs(_resample(read(order[sample]), size), percentile)
    scale = (1.0 / highs)[None, :, None, None]

    ext = "png" if image_format == "png" else "jpg"
    sheets: dict[str, list[str]] = {"rgby": [], "green": []}
    starts = range(0, n, per_sheet)
    for number, start in enumerate(tqdm(starts, desc="cell map sprites", disable=not progress)):
        block = np.asarray(read(order[start:start + per_sheet]))
        if block.shape[1:] != first.shape[1:] or block.dtype != np.uint8:
            raise ValueError(f"thumbnails changed shape: {block.dtype} {block.shape[1:]} after "
                             f"{first.dtype} {first.shape[1:]}")
        planes = np.clip(_resample(block, size) * scale, 0, 1)  # [n, C, T, T]
        rgb = np.zeros((*planes[:, 0].shape, 3), np.float32)  # [n, T, T, 3]
        for c, k in zip(*np.nonzero(weights)):
            rgb[..., k] += weights[c, k] * planes[:, c]
        np.clip(rgb, 0, 1, out=rgb)
        for kind, images in (("rgby", rgb), ("green", planes[:, green])):
            name = f"{kind}-{number:03d}.{ext}"
            _save_image(folder / name, (_tile(images, per_row) * 255 + 0.5).astype(np.uint8), image_format)
            sheets[kind].append(f"{THUMB_DIR}/{name}")
    return {"size": size, "per_row": per_row, "per_sheet": per_sheet, **sheets}


# --------------------------------------------------------------------------- the page


def _check_inputs(coordinates, cells, neighbours) -> tuple[np.ndarray, np.ndarray | None]:
    xy = np.asarray(coordinates, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coordinates must be float [N, 2], got shape {xy.shape}")
    if len(xy) == 0:
        raise ValueError("no cells: coordinates is empty")
    if not np.isfinite(xy).all():
        raise ValueError(f"coordinates hold {int((~np.isfinite(xy)).any(axis=1).sum())} non-finite row(s)")
    if len(cells) != len(xy):
        raise ValueError(f"{len(cells)} table rows but {len(xy)} coordinates")
    if neighbours is None:
        return xy, None
    nbrs = np.asarray(neighbours)
    if nbrs.ndim != 2 or len(nbrs) != len(xy) or not np.issubdtype(nbrs.dtype, np.integer):
        raise ValueError(f"neighbours must be int [N, k] with N = {len(xy)}, got {nbrs.dtype} {nbrs.shape}")
    if nbrs.size and (nbrs.min() < -1 or nbrs.max() >= len(xy)):
        raise ValueError(f"neighbours must be rows 0..{len(xy) - 1} (or -1 for none), "
                         f"got {nbrs.min()}..{nbrs.max()}")
    return xy, nbrs.astype(np.int64)


def _unit_square(xy: np.ndarray) -> np.ndarray:
    """Scale into [0, 1]² keeping the aspect ratio, centred."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max()) or 1.0
    return (xy - (low + high) / 2) / span + 0.5


def _write_page(out_dir, xy, cells, neighbours, read, colour_by, title, scheme, channels,
                thumb_size, percentile, image_format, progress) -> Path:
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    if "green" not in channels:
        raise ValueError(f"the thumbnails need a green (protein) channel; channels are {tuple(channels)}")
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    data = _page_data(cells.reset_index(drop=True), scheme, colour_by)
    unit = _unit_square(xy)
    order = _spatial_order(unit)
    slot = np.empty(len(order), dtype=np.int64)
    slot[order] = np.arange(len(order))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / THUMB_DIR) as folder:
        folder.mkdir()
        thumbs = _write_sprites(folder, read, order, channels, thumb_size, percentile, image_format,
                                progress)
    quantised = np.rint(unit * _QUANT).astype(np.int64)
    data.update({
        "title": title,
        "n": len(xy),
        "x": quantised[:, 0].tolist(),
        "y": quantised[:, 1].tolist(),
        "quant": _QUANT,
        "slot": slot.tolist(),
        "thumbs": thumbs,
        "k": 0 if neighbours is None else int(neighbours.shape[1]),
        "neighbours": None if neighbours is None else neighbours.ravel().tolist(),
    })
    page = (_PAGE.replace("%TITLE%", html.escape(title))
            .replace("%CSS%", _CSS).replace("%JS%", _JS)
            .replace("%DATA%", escape_json_for_html(data)))
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("cell map of %d cells written to %s", len(xy), path)
    return path


def write_cell_map(
    out_dir: str | os.PathLike,
    coordinates: np.ndarray,
    cells: pd.DataFrame,
    thumbnails: np.ndarray,
    neighbours: np.ndarray | None = None,
    colour_by: Sequence[str] = ("class", "image_id", "cell_line", "prediction", "correct"),
    title: str = "hpa_embed cell map",
    *,
    scheme: str | ClassScheme = HPA2021,
    channels: Sequence[str] = CHANNELS,
    thumb_size: int | None = 64,
    percentile: float | None = 99.8,
    image_format: str = "png",
    progress: bool = False,
) -> Path:
    """Write the interactive cell map: ``<out_dir>/index.html`` + ``<out_dir>/cellmap_thumbs/``.

    Parameters
    ----------
    out_dir : path
        Folder to write into (created if needed; other files in it are left alone).
    coordinates : float ``[N, 2]``
        Map position of each cell (e.g. UMAP), any scale; the page keeps the aspect ratio.
    cells : pandas.DataFrame
        ``N`` rows in the order of ``coordinates``: ``cell_id`` (unique) and ``image_id``;
        optional ``cell_line``, ``image_labels`` and ``true_labels`` (lists of class ids, or the
        Kaggle ``"8|5|0"`` strings), ``prediction`` (a list of class ids or the top class id).
    thumbnails : uint8 ``[N, C, S, S]``
        Crops in ``channels`` order (red, green, blue, yellow); a memory map works, it is read a
        sprite sheet at a time.
    neighbours : int ``[N, k]``, optional
        Row ``i`` holds the positions (0..N-1) of cell ``i``'s ``k`` nearest cells, itself left out
        (e.g. ``CellIndex.search_rows(X, k, exclude_rows=...)``); -1 for none. Shown on click.
    colour_by : sequence of str
        Modes of :data:`COLOUR_MODES` offered, the first shown first. A mode whose columns the
        table lacks is left out (logged); class colours and correctness use ``true_labels`` when
        the table has them, else ``image_labels``.
    title : str
        Page title (shown as text).
    scheme : str or ClassScheme
        Class scheme of the label columns (names and colours).
    channels : sequence of str
        Names of the thumbnail planes; must include ``"green"``.
    thumb_size : int or None
        Crops larger than this are area-averaged down to it (None: keep ``S``).
    percentile : float or None
        Each channel is stretched so this percentile (over a sample of up to 2,000 cells) is full
        brightness, the same for all cells so brightness stays comparable; None: raw values.
    image_format : {"png", "jpeg"}
        Sprite format: PNG is lossless, JPEG (quality 90) smaller on noisy crops.
    progress : bool
        Show a progress bar over the sprite sheets.

    Returns
    -------
    Path
        ``<out_dir>/index.html``.
    """
    xy, nbrs = _check_inputs(coordinates, cells, neighbours)
    thumbnails = np.asarray(thumbnails)  # a memory map stays one
    if thumbnails.ndim != 4 or len(thumbnails) != len(xy):
        raise ValueError(f"thumbnails must be uint8 [N, C, S, S] with N = {len(xy)}, "
                         f"got {thumbnails.dtype} {thumbnails.shape}")
    return _write_page(out_dir, xy, cells, nbrs, lambda rows: thumbnails[rows], colour_by, title,
                       scheme, channels, thumb_size, percentile, image_format, progress)


def cell_map_from_store(
    out_dir: str | os.PathLike,
    coordinates: np.ndarray,
    cells: pd.DataFrame | None,
    store: CellStore | str | os.PathLike,
    neighbours: np.ndarray | None = None,
    colour_by: Sequence[str] = ("class", "image_id", "cell_line", "prediction", "correct"),
    title: str = "hpa_embed cell map",
    *,
    scheme: str | ClassScheme | None = None,
    channels: Sequence[str] | None = None,
    thumb_size: int | None = 64,
    percentile: float | None = 99.8,
    image_format: str = "png",
    progress: bool = False,
) -> Path:
    """:func:`write_cell_map` with the thumbnails read from a :class:`~hpa_embed.store.CellStore`.

    ``cells`` holds a ``row`` column naming each cell's crop in the store (None: the store's whole
    table); ``store`` is a CellStore or its directory. ``scheme`` and ``channels`` default to the
    store's; the other arguments are :func:`write_cell_map`'s. Crops are read a sprite sheet at a
    time (``store.get_crops``), so a large store never sits in memory.
    """
    from ..store import CellStore

    if not isinstance(store, CellStore):
        store = CellStore.open(store)
    cells = store.cells if cells is None else cells
    if "row" not in cells:
        raise ValueError("the cell table lacks column 'row' (the crop row in the store)")
    xy, nbrs = _check_inputs(coordinates, cells, neighbours)
    rows = cells["row"].to_numpy(dtype=np.int64)
    return _write_page(out_dir, xy, cells, nbrs, lambda positions: store.get_crops(rows[positions]),
                       colour_by, title, store.scheme if scheme is None else scheme,
                       store.channels if channels is None else channels, thumb_size, percentile,
                       image_format, progress)


# --------------------------------------------------------------------------- page template

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>%TITLE%</title>
<style>%CSS%</style>
</head>
<body>
<header id="bar">
  <h1 id="title"></h1>
  <label>colour by <select id="colour-by"></select></label>
  <form id="find" autocomplete="off">
    <input id="find-input" type="search" placeholder="find cell id" aria-label="find a cell by id">
    <button type="submit">find</button>
  </form>
  <span id="find-status" role="status"></span>
  <button id="reset-view" type="button">reset view</button>
  <span id="count"></span>
</header>
<main>
  <div id="plot">
    <canvas id="gl"></canvas><canvas id="overlay"></canvas>
    <div id="gl-status" hidden></div>
    <div id="help">scroll: zoom &middot; drag: pan &middot; hover: cell &middot; click: neighbours</div>
    <section id="legend-box">
      <h2>legend <button id="show-all" type="button">show all</button>
        <button id="hide-all" type="button">hide all</button></h2>
      <ul id="legend"></ul>
    </section>
  </div>
  <aside id="side">
    <section id="info-box">
      <h2 id="info-title">hover a cell</h2>
      <div class="thumbs">
        <figure><div id="thumb-rgby" class="thumb big"></div><figcaption>RGBY</figcaption></figure>
        <figure><div id="thumb-green" class="thumb big green"></div>
          <figcaption>protein (green)</figcaption></figure>
      </div>
      <dl id="details"></dl>
    </section>
    <section id="nbr-box">
      <h2 id="nbr-title">nearest neighbours</h2>
      <div id="neighbours"></div>
    </section>
  </aside>
</main>
<script type="application/json" id="cellmap-data">%DATA%</script>
<script>%JS%</script>
</body>
</html>
"""

_CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; background: #121418; color: #d8dce3;
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
body { display: flex; flex-direction: column; }
#bar { display: flex; align-items: center; gap: 14px; padding: 8px 14px; background: #1b1e24;
  border-bottom: 1px solid #2a2e36; flex-wrap: wrap; }
#bar h1 { font-size: 15px; margin: 0 8px 0 0; font-weight: 600; color: #f1f3f6; }
select, input, button { background: #262a32; color: #e4e7ec; border: 1px solid #3a3f4a;
  border-radius: 4px; padding: 3px 7px; font: inherit; }
button { cursor: pointer; } button:hover { background: #30353f; }
#find { display: flex; gap: 4px; margin: 0; } #find-input { width: 190px; }
#find-status { color: #e7b32f; } #count { margin-left: auto; color: #8a8f98; }
main { flex: 1; display: flex; min-height: 0; }
#plot { position: relative; flex: 1; min-width: 0; overflow: hidden; cursor: crosshair; }
#plot canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
#overlay { pointer-events: none; }
#gl-status { position: absolute; left: 12px; top: 12px; color: #e5484d; }
#help { position: absolute; left: 10px; bottom: 8px; color: #6b717c; font-size: 11px;
  pointer-events: none; }
#side { width: 340px; flex: none; overflow-y: auto; background: #181b20;
  border-left: 1px solid #2a2e36; padding: 10px 12px; }
#legend-box { position: absolute; left: 10px; top: 10px; width: 260px; max-height: calc(100% - 44px);
  overflow-y: auto; background: rgba(27, 30, 36, 0.9); border: 1px solid #2a2e36; border-radius: 6px;
  padding: 6px 8px; cursor: default; }
h2 { font-size: 13px; margin: 4px 0 8px; color: #f1f3f6; font-weight: 600;
  overflow-wrap: anywhere; }
h2 button { font-size: 11px; padding: 1px 6px; margin-left: 4px; font-weight: 400; }
section { margin-bottom: 14px; }
.thumbs { display: flex; gap: 10px; }
figure { margin: 0; } figcaption { font-size: 11px; color: #8a8f98; text-align: center; }
.thumb { background-color: #000; background-repeat: no-repeat; image-rendering: pixelated;
  border: 1px solid #2f343d; }
.thumb.big { width: 130px; height: 130px; }
.thumb.green { background-color: #00ff00; background-blend-mode: multiply; }
.thumb.green[data-state="empty"], .thumb.green[data-state="loading"] { background-color: #000; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 10px 0 0; }
dt { color: #8a8f98; } dd { margin: 0; overflow-wrap: anywhere; }
#neighbours { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 4px; }
.nbr { display: flex; flex-direction: column; align-items: center; padding: 2px; gap: 2px; min-width: 0;
  background: none; border: 1px solid transparent; }
.nbr:hover { border-color: #4e5563; background: #20242b; }
.nbr .thumb { width: 64px; height: 64px; }
.nbr-id { font-size: 10px; color: #aab0ba; max-width: 100%; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
#legend { list-style: none; margin: 0; padding: 0; }
#legend button { display: flex; width: 100%; align-items: center; gap: 7px; background: none;
  border: none; padding: 2px 3px; text-align: left; }
#legend button:hover { background: #23272e; }
#legend .off { opacity: 0.35; text-decoration: line-through; }
.swatch { width: 11px; height: 11px; border-radius: 50%; flex: none; }
.name { flex: 1; overflow-wrap: anywhere; } .n { color: #7b818c; font-variant-numeric: tabular-nums; }
"""

_JS = r"""
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const D = JSON.parse($("cellmap-data").textContent);
  const N = D.n, K = D.k, T = D.thumbs;
  const X = new Float32Array(N), Y = new Float32Array(N);
  for (let i = 0; i < N; i++) { X[i] = D.x[i] / D.quant; Y[i] = D.y[i] / D.quant; }
  document.body.dataset.cellCount = String(N);
  $("title").textContent = D.title;
  $("count").textContent = N.toLocaleString("en") + " cells";

  // ------------------------------------------------------------------ colour modes
  const hexRgb = (h) => [1, 3, 5].map((p) => parseInt(h.slice(p, p + 2), 16));
  const modes = D.modes.map((m) => {
    const codes = m.column ? D.columns[m.column].codes : m.codes;
    const counts = new Int32Array(m.categories.length);
    for (let i = 0; i < N; i++) counts[codes[i]]++;
    let order = m.categories.map((_, c) => c).filter((c) => counts[c] > 0);
    if (m.order === "count") order.sort((a, b) => counts[b] - counts[a]);
    return { key: m.key, label: m.label, categories: m.categories, rgb: m.colours.map(hexRgb),
             colours: m.colours, codes: codes, counts: counts, order: order,
             hidden: new Uint8Array(m.categories.length) };
  });
  let mode = modes[0];
  const visible = (i) => !mode.hidden[mode.codes[i]];

  // ------------------------------------------------------------------ view
  const plot = $("plot"), glCanvas = $("gl"), overlay = $("overlay");
  const ctx = overlay.getContext("2d");
  // the map is centred on OX, in the part of the plot the legend leaves free (when wide enough)
  let W = 1, H = 1, OX = 0.5, dpr = 1, cx = 0.5, cy = 0.5, zoom = 1;
  let freeW = 1;
  const scale = () => Math.min(freeW, H) * 0.92 * zoom;
  const toScreen = (i) => [OX + (X[i] - cx) * scale(), H / 2 - (Y[i] - cy) * scale()];
  const baseSize = Math.max(2, Math.min(9, 40 / Math.pow(N, 0.3)));
  const pointSize = () => Math.min(18, baseSize * Math.sqrt(zoom));

  // ------------------------------------------------------------------ WebGL scatter
  const gl = glCanvas.getContext("webgl", { antialias: false });
  let prog = null, colourBuf = null;
  const colours = new Uint8Array(N * 4);
  if (!gl) {
    const status = $("gl-status");
    status.hidden = false;
    status.textContent = "WebGL is not available: points are not drawn " +
      "(hover, find and neighbours still work).";
  } else {
    const shader = (type, src) => {
      const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    prog = gl.createProgram();
    gl.attachShader(prog, shader(gl.VERTEX_SHADER,
      "attribute vec2 a_pos; attribute vec4 a_col; uniform vec2 u_scale, u_offset; uniform float u_size;" +
      "varying vec3 v_col; void main() { v_col = a_col.rgb;" +
      "gl_Position = a_col.a > 0.0 ? vec4(a_pos * u_scale + u_offset, 0.0, 1.0) : vec4(2.0, 2.0, 2.0, 1.0);" +
      "gl_PointSize = u_size; }"));
    gl.attachShader(prog, shader(gl.FRAGMENT_SHADER,
      "precision mediump float; varying vec3 v_col; uniform float u_alpha; void main() {" +
      "vec2 c = gl_PointCoord - 0.5; if (dot(c, c) > 0.25) discard; gl_FragColor = vec4(v_col, u_alpha); }"));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    const pos = new Float32Array(N * 2);
    for (let i = 0; i < N; i++) { pos[2 * i] = X[i]; pos[2 * i + 1] = Y[i]; }
    const posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, posBuf); gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
    const aPos = gl.getAttribLocation(prog, "a_pos");
    gl.enableVertexAttribArray(aPos); gl.vertexAttribPointer(aPos, 2, gl.FLOAT, false, 0, 0);
    colourBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, colourBuf);
    const aCol = gl.getAttribLocation(prog, "a_col");
    gl.enableVertexAttribArray(aCol); gl.vertexAttribPointer(aCol, 4, gl.UNSIGNED_BYTE, true, 0, 0);
    gl.enable(gl.BLEND); gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
  }

  function updateColours() {
    for (let i = 0; i < N; i++) {
      const c = mode.codes[i], rgb = mode.rgb[c];
      colours[4 * i] = rgb[0]; colours[4 * i + 1] = rgb[1]; colours[4 * i + 2] = rgb[2];
      colours[4 * i + 3] = mode.hidden[c] ? 0 : 255;
    }
    if (gl) {
      gl.bindBuffer(gl.ARRAY_BUFFER, colourBuf);
      gl.bufferData(gl.ARRAY_BUFFER, colours, gl.DYNAMIC_DRAW);
    }
    requestDraw();
  }

  function drawPoints() {
    if (!gl) return;
    gl.viewport(0, 0, glCanvas.width, glCanvas.height);
    gl.clearColor(0.071, 0.078, 0.094, 1); gl.clear(gl.COLOR_BUFFER_BIT);
    const s = scale();
    gl.uniform2f(gl.getUniformLocation(prog, "u_scale"), 2 * s / W, 2 * s / H);
    gl.uniform2f(gl.getUniformLocation(prog, "u_offset"), (2 * OX - 2 * s * cx) / W - 1, -2 * s * cy / H);
    gl.uniform1f(gl.getUniformLocation(prog, "u_size"), pointSize() * dpr);
    gl.uniform1f(gl.getUniformLocation(prog, "u_alpha"), N > 20000 ? 0.75 : 0.9);
    gl.drawArrays(gl.POINTS, 0, N);
  }

  function ring(i, radius, colour, width) {
    const [x, y] = toScreen(i);
    ctx.beginPath(); ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.lineWidth = width; ctx.strokeStyle = colour; ctx.stroke();
  }

  function drawOverlay() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const r = pointSize() / 2 + 4;
    if (selected >= 0) {
      const [sx, sy] = toScreen(selected);
      ctx.strokeStyle = "rgba(94, 200, 255, 0.45)"; ctx.lineWidth = 1;
      for (const j of neighboursOf(selected)) {
        const [x, y] = toScreen(j);
        ctx.beginPath(); ctx.moveTo(sx, sy); ctx.lineTo(x, y); ctx.stroke();
      }
      for (const j of neighboursOf(selected)) ring(j, r, "#5ec8ff", 1.5);
      ring(selected, r + 2, "#ffd43b", 2.5);
    }
    if (hovered >= 0) ring(hovered, r + 1, "#ffffff", 2);
  }

  // hover and selection redraw only the 2-D overlay; the points are redrawn when the view or
  // the colours change
  let drawQueued = false, pointsDirty = false;
  function requestDraw(points = true) {
    pointsDirty = pointsDirty || points;
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      if (pointsDirty) drawPoints();
      pointsDirty = false;
      drawOverlay();
    });
  }
  const requestOverlay = () => requestDraw(false);

  function resize() {
    const rect = plot.getBoundingClientRect();
    dpr = window.devicePixelRatio || 1;
    W = Math.max(1, rect.width); H = Math.max(1, rect.height);
    const legendW = $("legend-box").offsetWidth + 20;
    freeW = W > 2.5 * legendW ? W - legendW : W;
    OX = W - freeW / 2;
    for (const c of [glCanvas, overlay]) { c.width = Math.round(W * dpr); c.height = Math.round(H * dpr); }
    drawPoints(); drawOverlay();
  }

  // ------------------------------------------------------------------ picking grid
  const G = Math.max(1, Math.ceil(Math.sqrt(N / 2)));
  const start = new Int32Array(G * G + 1), items = new Int32Array(N);
  {
    const bucket = new Int32Array(N);
    for (let i = 0; i < N; i++) {
      const gx = Math.min(G - 1, Math.floor(X[i] * G)), gy = Math.min(G - 1, Math.floor(Y[i] * G));
      bucket[i] = gy * G + gx; start[bucket[i] + 1]++;
    }
    for (let b = 0; b < G * G; b++) start[b + 1] += start[b];
    const fill = start.slice(0, G * G);
    for (let i = 0; i < N; i++) items[fill[bucket[i]]++] = i;
  }

  /** The visible cell nearest to screen point (px, py) within the point radius + 4 px, or -1. */
  function pick(px, py) {
    const s = scale(), wx = cx + (px - OX) / s, wy = cy - (py - H / 2) / s;
    const r = (pointSize() / 2 + 4) / s;
    const clampG = (v) => Math.max(0, Math.min(G - 1, Math.floor(v * G)));
    const x0 = clampG(wx - r), x1 = clampG(wx + r), y0 = clampG(wy - r), y1 = clampG(wy + r);
    let best = -1, bestD = r * r;
    for (let gy = y0; gy <= y1; gy++) {
      for (let gx = x0; gx <= x1; gx++) {
        const b = gy * G + gx;
        for (let t = start[b]; t < start[b + 1]; t++) {
          const i = items[t], dx = X[i] - wx, dy = Y[i] - wy, d = dx * dx + dy * dy;
          if (d <= bestD && visible(i)) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  // ------------------------------------------------------------------ thumbnails and details
  const sheetCache = { rgby: [], green: [] };
  function setThumb(el, kind, i, px) {
    const slot = D.slot[i], sheet = Math.floor(slot / T.per_sheet), j = slot % T.per_sheet;
    const f = px / T.size, key = kind + ":" + i;
    let img = sheetCache[kind][sheet];
    if (!img) { img = new Image(); img.src = T[kind][sheet]; sheetCache[kind][sheet] = img; }
    el.dataset.cell = key;
    el.dataset.state = "loading";
    const apply = () => {
      if (el.dataset.cell !== key) return;
      el.style.backgroundImage = "url(\"" + img.src + "\")";
      el.style.backgroundSize = (T.per_row * T.size * f) + "px auto";
      el.style.backgroundPosition = (-(j % T.per_row) * T.size * f) + "px " +
        (-Math.floor(j / T.per_row) * T.size * f) + "px";
      el.dataset.state = "loaded";
    };
    if (img.complete && img.naturalWidth > 0) apply();
    else {
      el.style.backgroundImage = "none";
      img.addEventListener("load", apply, { once: true });
      img.addEventListener("error", () => { if (el.dataset.cell === key) el.dataset.state = "error"; },
                           { once: true });
    }
  }

  const names = (ids) => ids === null ? null
    : (ids.length ? ids.map((c) => D.class_names[c]).join(", ") : "none");
  const value = (column, i) => D.columns[column].values[D.columns[column].codes[i]];
  function showCell(i) {
    $("info-title").textContent = D.cell_id[i];
    $("info-box").dataset.cellId = D.cell_id[i];
    setThumb($("thumb-rgby"), "rgby", i, 128);
    setThumb($("thumb-green"), "green", i, 128);
    const rows = [["cell", D.cell_id[i]], ["image", value("image", i)]];
    if (D.columns.cell_line) rows.push(["cell line", value("cell_line", i)]);
    const labelRows = [["true", "true labels"], ["image", "image labels"], ["prediction", "predicted"]];
    for (const [key, label] of labelRows) {
      const text = D.labels[key] ? names(D.labels[key][i]) : null;
      if (text !== null) rows.push([label, text]);
    }
    if (mode.key === "correct") rows.push(["correctness", mode.categories[mode.codes[i]]]);
    const dl = $("details");
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v; dl.append(dt, dd);
    }
  }
  function clearCell() {
    $("info-title").textContent = "hover a cell";
    delete $("info-box").dataset.cellId;
    $("details").replaceChildren();
    for (const id of ["thumb-rgby", "thumb-green"]) {
      const el = $(id); el.style.backgroundImage = "none"; el.dataset.cell = ""; el.dataset.state = "empty";
    }
  }

  function neighboursOf(i) {
    const out = [];
    for (let t = i * K; t < (i + 1) * K; t++) if (D.neighbours[t] >= 0) out.push(D.neighbours[t]);
    return out;
  }

  let hovered = -1, selected = -1;
  function setHover(i) {
    if (i === hovered) return;
    hovered = i;
    if (i >= 0) showCell(i); else if (selected >= 0) showCell(selected); else clearCell();
    requestOverlay();
  }

  function select(i) {
    selected = i;
    const box = $("neighbours");
    box.replaceChildren();
    if (i < 0) { $("nbr-title").textContent = "nearest neighbours"; requestOverlay(); return; }
    showCell(i);
    if (!K) { $("nbr-title").textContent = "no neighbours were given"; requestOverlay(); return; }
    $("nbr-title").textContent = K + " nearest neighbours of " + D.cell_id[i];
    for (const j of neighboursOf(i)) {
      const tile = document.createElement("button");
      tile.type = "button"; tile.className = "nbr"; tile.title = D.cell_id[j];
      tile.dataset.cellId = D.cell_id[j];
      const thumb = document.createElement("div"); thumb.className = "thumb";
      const caption = document.createElement("span"); caption.className = "nbr-id";
      caption.textContent = D.cell_id[j];
      tile.append(thumb, caption); box.append(tile);
      setThumb(thumb, "rgby", j, 64);
      tile.addEventListener("mouseenter", () => showCell(j));
      tile.addEventListener("mouseleave", () => showCell(selected));
      tile.addEventListener("click", () => select(j));
    }
    requestOverlay();
  }

  // ------------------------------------------------------------------ legend and selector
  const LEGEND_MAX = 40;
  function buildLegend() {
    const ul = $("legend");
    ul.replaceChildren();
    const shown = mode.order.slice(0, LEGEND_MAX), rest = mode.order.slice(LEGEND_MAX);
    const entry = (cats, colour, name, count) => {
      const li = document.createElement("li"), b = document.createElement("button");
      b.type = "button";
      const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = colour;
      const nm = document.createElement("span"); nm.className = "name"; nm.textContent = name;
      const n = document.createElement("span"); n.className = "n"; n.textContent = count.toLocaleString("en");
      b.append(sw, nm, n);
      const sync = () => { const off = cats.every((c) => mode.hidden[c]); b.classList.toggle("off", off);
                           b.setAttribute("aria-pressed", String(!off)); };
      b.addEventListener("click", () => {
        const hide = !cats.every((c) => mode.hidden[c]);
        for (const c of cats) mode.hidden[c] = hide ? 1 : 0;
        sync(); afterVisibility();
      });
      sync(); li.dataset.category = name; li.append(b); ul.append(li);
    };
    for (const c of shown) entry([c], mode.colours[c], mode.categories[c], mode.counts[c]);
    if (rest.length) {
      let total = 0; for (const c of rest) total += mode.counts[c];
      entry(rest, "#444a55", rest.length + " more", total);
    }
  }
  function afterVisibility() {
    updateColours();
    if (hovered >= 0 && !visible(hovered)) setHover(-1);
  }
  const selector = $("colour-by");
  for (const m of modes) {
    const o = document.createElement("option"); o.value = m.key; o.textContent = m.label; selector.append(o);
  }
  function setMode(key) {
    mode = modes.find((m) => m.key === key) || modes[0];
    selector.value = mode.key;
    buildLegend(); afterVisibility();
    if (hovered >= 0) showCell(hovered); else if (selected >= 0) showCell(selected);
  }
  selector.addEventListener("change", () => setMode(selector.value));
  const setAll = (hide) => { mode.hidden.fill(hide ? 1 : 0); buildLegend(); afterVisibility(); };
  $("show-all").addEventListener("click", () => setAll(false));
  $("hide-all").addEventListener("click", () => setAll(true));

  // ------------------------------------------------------------------ find by id
  let idIndex = null;
  function indexOf(id) {
    if (!idIndex) { idIndex = new Map(); for (let i = 0; i < N; i++) idIndex.set(D.cell_id[i], i); }
    const hit = idIndex.get(id);
    return hit === undefined ? -1 : hit;
  }
  $("find").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("find-input").value.trim();
    let i = indexOf(query);
    if (i < 0 && query) i = D.cell_id.findIndex((id) => id.startsWith(query));
    const status = $("find-status");
    if (i < 0) { status.textContent = "no cell with id " + JSON.stringify(query); return; }
    status.textContent = "";
    if (!visible(i)) { mode.hidden[mode.codes[i]] = 0; buildLegend(); afterVisibility(); }
    cx = X[i]; cy = Y[i]; zoom = Math.max(zoom, 4);
    select(i); requestDraw();
  });

  // ------------------------------------------------------------------ mouse
  let drag = null;
  const local = (e) => {
    const r = plot.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  };
  // the canvas takes the mouse (the overlay lets it through; the legend keeps its own)
  glCanvas.addEventListener("mousedown", (e) => {
    const [x, y] = local(e);
    drag = { x, y, cx, cy, moved: false };
  });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved) { const [x, y] = local(e); select(pick(x, y)); }
    drag = null;
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const [x, y] = local(e);
    if (drag.moved || Math.abs(x - drag.x) + Math.abs(y - drag.y) > 3) {
      drag.moved = true;
      cx = drag.cx - (x - drag.x) / scale(); cy = drag.cy + (y - drag.y) / scale();
      requestDraw();
    }
  });
  glCanvas.addEventListener("mousemove", (e) => {
    if (drag) return;
    const [x, y] = local(e);
    setHover(pick(x, y));
  });
  glCanvas.addEventListener("mouseleave", () => setHover(-1));
  glCanvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = local(e), s = scale();
    const wx = cx + (x - OX) / s, wy = cy - (y - H / 2) / s;
    zoom = Math.max(0.5, Math.min(500, zoom * Math.exp(-e.deltaY * 0.0015)));
    const s2 = scale(); cx = wx - (x - OX) / s2; cy = wy + (y - H / 2) / s2;
    requestDraw();
  }, { passive: false });
  $("reset-view").addEventListener("click", () => { cx = 0.5; cy = 0.5; zoom = 1; requestDraw(); });

  // ------------------------------------------------------------------ start
  new ResizeObserver(resize).observe(plot);
  resize();
  setMode(modes[0].key);
  clearCell();

  /** For tests and benchmarks: positions, lookups and timings, no hidden state changed. */
  window.cellMap = {
    count: N,
    indexOf: indexOf,
    screenPosition: (id) => {
      const i = typeof id === "number" ? id : indexOf(id);
      if (i < 0) return null;
      const r = plot.getBoundingClientRect(), [x, y] = toScreen(i);
      return { x: r.left + x, y: r.top + y };
    },
    hovered: () => hovered,
    selected: () => selected,
    setColourBy: setMode,
    webgl: !!gl,
    drawMs: (n) => {  // reading a pixel back waits until the frame is really drawn
      const pixel = new Uint8Array(4), t0 = performance.now();
      for (let k = 0; k < n; k++) {
        drawPoints();
        if (gl) gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
      }
      return (performance.now() - t0) / n;
    },
    pickUs: (n) => {
      const t0 = performance.now();
      let hits = 0;
      for (let k = 0; k < n; k++) if (pick(Math.random() * W, Math.random() * H) >= 0) hits++;
      return { us: (performance.now() - t0) * 1000 / n, hits: hits };
    },
  };
  document.body.dataset.ready = "1";
})();
"""
