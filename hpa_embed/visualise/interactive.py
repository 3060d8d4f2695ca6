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


def _page_part(name: str) -> str:
    """The page's template, style sheet and script, kept beside this module (cellmap_page/)."""
    from importlib import resources

    return (resources.files(__package__) / "cellmap_page" / name).read_text(encoding="utf-8")


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
    template, css, script = (_page_part(name) for name in ("page.html", "page.css", "page.js"))
    page = (template.replace("%TITLE%", html.escape(title))
            .replace("%CSS%", css).replace("%JS%", script)
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
