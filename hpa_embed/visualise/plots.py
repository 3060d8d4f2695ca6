"""Pictures: RGBY composites, channel views, dataset-analysis plots, training curves, per-class AP
and confusion matrices.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, no display
needed) and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..analysis import LabelStatistics
from ..io import atomic_path, write_png
from ..labels import CHANNELS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHANNEL_COLOURS",
    "scale_for_display",
    "composite_rgb",
    "colourise_channel",
    "save_figure",
    "save_channel_views",
    "plot_label_statistics",
    "plot_confusion_matrices",
    "plot_lr_find",
    "plot_training_curves",
    "plot_class_ap",
    "plot_evaluation",
]

#: RGB weight of each channel in a composite: yellow (ER) shows as red + green at half weight.
CHANNEL_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (0.5, 0.5, 0.0),
}


def scale_for_display(image: np.ndarray, percentile: float | None = 99.8) -> np.ndarray:
    """Stretch each channel of ``[C, H, W]`` so its ``percentile`` maps to 1 (None: no stretch).

    Dim HPA channels become visible without letting a few bright pixels set the scale.
    """
    image = np.asarray(image, dtype=np.float32)
    if percentile is None:
        return np.clip(image, 0, 1)
    # a strided sample keeps the percentile cheap on 3072² fields
    step = max(1, int(np.sqrt(image[0].size / 250_000)))
    high = np.percentile(image[:, ::step, ::step].reshape(len(image), -1), percentile, axis=1)
    high = np.where(high > 0, high, 1.0).astype(np.float32)
    return np.clip(image / high[:, None, None], 0, 1)


def composite_rgb(
    image: np.ndarray,
    channels: Sequence[str] = CHANNELS,
    percentile: float | None = 99.8,
) -> np.ndarray:
    """RGBY field ``[C, H, W]`` float -> uint8 ``[H, W, 3]`` composite.

    red = microtubules, green = protein, blue = nuclei, yellow = ER (as red + green at half weight),
    the HPA convention. ``channels`` names the planes of ``image`` (3-channel fields work too).
    """
    image = scale_for_display(image, percentile)
    if len(channels) != len(image):
        raise ValueError(f"image has {len(image)} planes but {len(channels)} channel names")
    weights = np.array([CHANNEL_COLOURS[name] for name in channels], dtype=np.float32)  # [C, 3]
    rgb = np.tensordot(image, weights, axes=([0], [0]))  # [H, W, 3]
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def colourise_channel(plane: np.ndarray, channel: str, percentile: float | None = 99.8) -> np.ndarray:
    """One channel ``[H, W]`` -> uint8 ``[H, W, 3]`` in its display colour (yellow as full yellow)."""
    colour = np.array(CHANNEL_COLOURS[channel], dtype=np.float32)
    colour = colour / colour.max()
    scaled = scale_for_display(plane[None], percentile)[0]
    return (scaled[..., None] * colour * 255 + 0.5).astype(np.uint8)


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def save_channel_views(
    image: np.ndarray,
    out_dir: str | os.PathLike,
    image_id: str,
    channels: Sequence[str] = CHANNELS,
    percentile: float | None = 99.8,
) -> list[Path]:
    """Write each channel (in its colour) and the RGBY composite of a field as PNG.

    Files: ``<out_dir>/<image_id>_<channel>.png`` per channel and ``<image_id>_composite.png``.
    Returns the paths written.
    """
    out_dir = Path(out_dir)
    paths = [
        write_png(out_dir / f"{image_id}_{name}.png", colourise_channel(plane, name, percentile))
        for name, plane in zip(channels, image)
    ]
    composite = composite_rgb(image, channels, percentile)
    paths.append(write_png(out_dir / f"{image_id}_composite.png", composite))
    return paths


def plot_label_statistics(stats: LabelStatistics, out_dir: str | os.PathLike) -> list[Path]:
    """The dataset-analysis figures as PNG in ``out_dir``.

    ``class_counts.png`` (images per class, bar chart), ``labels_per_image.png`` (histogram) and
    ``top_combinations.png`` (the most common label sets). Returns the paths written.
    """
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    counts = stats.class_counts
    figure = Figure(figsize=(8, 0.28 * len(counts) + 1.2))
    axes = figure.add_subplot()
    order = np.arange(len(counts))[::-1]
    axes.barh(order, counts["images"], color=list(stats.scheme.colours))
    axes.set_yticks(order, [f"{i} {name}" for i, name in zip(counts["class_id"], counts["name"])])
    axes.set_xlabel("images")
    axes.set_title(f"Images per class ({stats.n_images} images, {stats.scheme.name})")
    for y, value in zip(order, counts["images"]):
        axes.text(value, y, f" {value}", va="center", fontsize=7)
    paths = [save_figure(figure, out_dir / "class_counts.png")]

    figure = Figure(figsize=(5, 3.2))
    axes = figure.add_subplot()
    axes.bar(stats.labels_per_image.index, stats.labels_per_image.to_numpy(), color="#4c72b0")
    axes.set_xlabel("labels per image")
    axes.set_ylabel("images")
    axes.set_xticks(stats.labels_per_image.index)
    axes.set_title("Labels per image")
    paths.append(save_figure(figure, out_dir / "labels_per_image.png"))

    top = stats.top_combinations
    figure = Figure(figsize=(8, 0.3 * len(top) + 1.2))
    axes = figure.add_subplot()
    order = np.arange(len(top))[::-1]
    axes.barh(order, top["images"], color="#55a868")
    axes.set_yticks(order, [name if len(name) < 60 else name[:57] + "..." for name in top["names"]])
    axes.set_xlabel("images")
    axes.set_title(f"Most common label combinations ({stats.n_combinations} distinct)")
    paths.append(save_figure(figure, out_dir / "top_combinations.png"))
    return paths


_CONFUSION_COLUMNS = ("class_id", "name", "f1", "tn", "fp", "fn", "tp")


def plot_confusion_matrices(table: pd.DataFrame, path: str | os.PathLike, columns: int = 5) -> Path:
    """Draw one 2x2 confusion matrix per class (true rows, predicted columns) as a PNG grid.

    Only the classes present are drawn: those with a true or a predicted positive (a class with
    neither is all true negatives, and says nothing). Cells show counts; the colour is the
    fraction of the true row, so that rare classes (a few positives among thousands of negatives)
    read as clearly as common ones. Each panel's title gives the class and its F1.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per class with ``class_id``, ``name``, ``f1`` and the counts ``tn``, ``fp``,
        ``fn``, ``tp``: the table of :func:`hpa_embed.evaluate.classification_table`.
    path : path
        The PNG, written atomically.
    columns : int
        Panels per row of the grid.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure

    missing = [column for column in _CONFUSION_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; pass the table of classification_table")
    present = table[(table["tp"] + table["fn"] + table["fp"]) > 0]
    n_classes = len(present)
    columns = max(1, min(columns, n_classes))
    rows = max(1, -(-n_classes // columns))
    figure = Figure(figsize=(2.3 * columns + 0.4, 2.75 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, record in zip(axes, present.itertuples(index=False)):
        counts = np.array([[record.tn, record.fp], [record.fn, record.tp]])
        fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if fraction[i, j] > 0.6 else "black")
        ax.set_xticks([0, 1], ["neg", "pos"], fontsize=7)
        ax.set_yticks([0, 1], ["neg", "pos"], fontsize=7)
        f1 = "n/a" if np.isnan(record.f1) else f"{record.f1:.2f}"
        ax.set_title(f"{record.class_id} {_wrap(record.name, 26)}\nF1 {f1}", fontsize=8)
    for ax in axes[n_classes:]:
        ax.set_axis_off()
    if not n_classes:
        axes[0].text(0.5, 0.5, "no class has a true or a predicted positive", ha="center", va="center",
                     transform=axes[0].transAxes)
    left_out = len(table) - n_classes
    figure.suptitle(f"Confusion matrices of the {n_classes} classes with a true or predicted positive"
                    + (f" ({left_out} without left out)" if left_out else ""), fontsize=10)
    figure.supxlabel("predicted", fontsize=9)
    figure.supylabel("true", fontsize=9)
    return save_figure(figure, path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def plot_lr_find(lrs: np.ndarray, losses: np.ndarray, suggestion: float, path: str | os.PathLike) -> Path:
    """The LR finder's smoothed loss against the learning rate (log axis), the suggestion marked.

    ``lrs`` and ``losses`` are float ``[n]`` (:class:`hpa_embed.train.LRFinderResult`).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(lrs, losses, color="#4c72b0")
    axes.set_xscale("log")
    axes.axvline(suggestion, color="#c44e52", linestyle="--", label=f"steepest descent: {suggestion:.2e}")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title("LR finder")
    axes.legend()
    return save_figure(figure, path)


#: History columns per loss component: ``train_<key>`` and ``val_<key>``.
_LOSS_COMPONENTS = (("cls", "classification loss"), ("metric", "metric-learning loss"),
                    ("mil", "MIL (image-level) loss"), ("total", "total loss (weighted sum)"))
_TRAIN_COLOUR, _VAL_COLOUR = "#4c72b0", "#dd8452"


def _as_table(table: pd.DataFrame | str | os.PathLike, default_name: str) -> pd.DataFrame:
    """A table as given, or read from a CSV file (a directory stands for its ``default_name``)."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    return pd.read_csv(path / default_name if path.is_dir() else path)


def plot_training_curves(history: pd.DataFrame | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Loss curves of a training run, one panel per loss component, train and validation.

    Panels: classification, metric-learning, MIL and total loss (those the history holds), each
    with the training (mean over the epoch's batches) and the validation curve, and a last panel
    with the validation top-1 accuracy (the most probable class is one of the cell's labels) and
    macro AP. A dashed line marks the epoch of the lowest
    validation total loss: the ``best`` checkpoint.

    Parameters
    ----------
    history : pandas.DataFrame or path
        One row per epoch with ``epoch`` and any of ``train_cls``, ``train_metric``,
        ``train_mil``, ``train_total``, ``val_cls``, ``val_metric``, ``val_mil``, ``val_total``,
        ``val_accuracy``, ``val_macro_ap`` (:attr:`hpa_embed.train.FitResult.history`), or its
        ``history.csv`` (a run directory stands for its ``history.csv``).
    path : path
        The PNG, written atomically.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    history = _as_table(history, "history.csv")
    if "epoch" not in history.columns:
        raise ValueError("the history lacks the column 'epoch'; pass a training history.csv")

    def has(column: str) -> bool:
        return column in history.columns and history[column].notna().any()

    def used(key: str) -> bool:  # a component the loss did not use stays 0: no panel for it
        columns = [c for c in (f"train_{key}", f"val_{key}") if has(c)]
        return any(history[c].fillna(0).ne(0).any() for c in columns) or (key == "total" and bool(columns))

    panels = [(key, title) for key, title in _LOSS_COMPONENTS if used(key)]
    scores = [(column, label) for column, label in (("val_accuracy", "top-1 accuracy"),
                                                      ("val_macro_ap", "macro AP")) if has(column)]
    n_panels = len(panels) + bool(scores)
    if not n_panels:
        raise ValueError(f"the history has no loss or score column (columns: {list(history.columns)})")
    columns = n_panels if n_panels <= 3 else -(-n_panels // 2)  # 4 panels as 2 x 2, 5 as 3 + 2
    rows = -(-n_panels // columns)
    figure = Figure(figsize=(4.2 * columns, 3.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    epochs = history["epoch"].to_numpy()
    best = int(epochs[np.nanargmin(history["val_total"].to_numpy())]) if has("val_total") else None
    style = {"marker": "o", "markersize": 3, "linewidth": 1.6}
    for ax, (key, title) in zip(axes, panels):
        for split, colour in (("train", _TRAIN_COLOUR), ("val", _VAL_COLOUR)):
            if has(f"{split}_{key}"):
                label = "training" if split == "train" else "validation"
                ax.plot(epochs, history[f"{split}_{key}"], color=colour, label=label, **style)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("loss")
    if scores:
        ax = axes[len(panels)]
        for (column, label), colour in zip(scores, ("#55a868", "#c44e52")):
            ax.plot(epochs, history[column], color=colour, label=label, **style)
        ax.set_ylim(0, 1.02)
        ax.set_title("validation scores", fontsize=10)
        ax.set_ylabel("score")
    for ax in axes[:n_panels]:
        if best is not None:
            ax.axvline(best, color="0.4", linestyle="--", linewidth=1,
                       label=f"best checkpoint (epoch {best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    figure.suptitle(f"Training curves ({len(history)} epochs)", fontsize=11)
    return save_figure(figure, path)


def plot_class_ap(table: pd.DataFrame | str | os.PathLike, path: str | os.PathLike, *,
                  title: str | None = None) -> Path:
    """Per-class average precision as horizontal bars, the mean AP marked.

    Each bar is labelled with its AP and the number of true cells; a class without true cells
    (AP undefined, left out of the mean) is listed with "no true cells" and no bar.

    Parameters
    ----------
    table : pandas.DataFrame or path
        One row per class with ``class_id``, ``name``, ``ap`` and, optionally, ``n_gt``: the
        ``cell_ap.csv`` of an evaluation (:meth:`hpa_embed.evaluate.MetricResult.to_frame`), or
        that file (an evaluation directory stands for its ``cell_ap.csv``).
    path : path
        The PNG, written atomically.
    title : str, optional
        Default: "Cell-level AP per class (mAP ... over ... classes)".

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure

    table = _as_table(table, "cell_ap.csv")
    missing = [column for column in ("class_id", "name", "ap") if column not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; pass a cell_ap.csv table")
    ap = table["ap"].to_numpy(dtype=float)
    scored = ~np.isnan(ap)
    mean = float(ap[scored].mean()) if scored.any() else float("nan")
    figure = Figure(figsize=(8, 0.3 * len(table) + 1.4), layout="constrained")
    axes = figure.add_subplot()
    order = np.arange(len(table))[::-1]  # class 0 on top
    axes.barh(order, np.where(scored, ap, 0), color="#4c72b0", height=0.7)
    n_gt = table["n_gt"].to_numpy() if "n_gt" in table.columns else None
    for y, value, row in zip(order, ap, range(len(table))):
        count = f" (n={n_gt[row]})" if n_gt is not None else ""
        text = " no true cells" if np.isnan(value) else f" {value:.2f}{count}"
        axes.text(0 if np.isnan(value) else value, y, text, va="center", fontsize=8, zorder=3,
                  color="0.5" if np.isnan(value) else "black",
                  bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    axes.set_yticks(order, [f"{i} {name}" for i, name in zip(table["class_id"], table["name"])], fontsize=8)
    if scored.any():
        axes.axvline(mean, color="#c44e52", linestyle="--", linewidth=1.2,
                     label=f"mean over the {int(scored.sum())} classes with true cells: {mean:.3f}")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_xlim(0, 1.18)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.set_xlabel("average precision")
    axes.set_ylim(-0.7, len(table) - 0.3)
    axes.set_title(title or f"Cell-level AP per class (mAP {mean:.3f} over {int(scored.sum())} classes)",
                   fontsize=11)
    return save_figure(figure, path)


def plot_evaluation(out_dir: str | os.PathLike) -> list[Path]:
    """The figures of an evaluation folder, drawn from the tables in it.

    ``per_class.csv`` (:func:`hpa_embed.evaluate.evaluate_predictions`) gives
    ``confusion_matrices.png``, ``cell_ap.csv`` gives ``class_ap.png``. Returns the paths written.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    written = []
    if (out_dir / "per_class.csv").is_file():
        table = pd.read_csv(out_dir / "per_class.csv")
        written.append(plot_confusion_matrices(table, out_dir / "confusion_matrices.png"))
    if (out_dir / "cell_ap.csv").is_file():
        written.append(plot_class_ap(out_dir / "cell_ap.csv", out_dir / "class_ap.png"))
    return written
