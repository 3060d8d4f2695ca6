"""The report of a run: one HTML page with what ran, every stage's figures and the scores.

``<out>/report.html`` opens from disk with no network: its figures are PNG files of the run
folder, linked by relative paths (the report's own in ``<out>/report/``, the others where their
stages wrote them), and every string it shows is escaped. Sections:

- the run: config, stages with their times;
- input: label statistics of the images, one field with the outlines of its masks;
- segmentation: fields, cells, F1 against the true masks where known;
- training: loss and validation curves;
- results: per classifier the cell, image and competition mAP, confusion matrices, per-class AP;
- the map: the UMAP maps and a link to the interactive cell map;
- cells: test cells with their true and predicted labels, the top cells per class, a query cell
  beside its nearest neighbours in the index.

:func:`hpa_embed.pipeline.write_run_report` builds the report of a run folder; the pipeline's
last stage calls it.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .io import atomic_path

__all__ = ["write_report", "REPORT_FILE", "REPORT_DIR"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
REPORT_DIR = "report"

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 0 24px 60px;
       color: #1d1d1f; }
h1 { margin: 28px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.muted { color: #666; } .missing { color: #a15c00; }
table { border-collapse: collapse; margin: 10px 0; }
td, th { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; } th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 8px 16px 16px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { color: #555; font-size: 13px; }
.wide img { max-width: 1120px; } .half img { max-width: 540px; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; max-height: 360px; }
nav a { margin-right: 14px; }
"""

_SCORE_NAMES = {"cell_map": "cell mAP", "image_map": "image mAP", "competition_map": "competition mAP"}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


class _Page:
    """The HTML of the report, section by section; figures linked relative to the run folder."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def section(self, anchor: str, title: str) -> None:
        self.add(f'<h2 id="{_e(anchor)}">{_e(title)}</h2>')

    def note(self, text: str, css: str = "muted") -> None:
        self.add(f'<p class="{css}">{_e(text)}</p>')

    def figure(self, path: Path | None, caption: str, css: str = "") -> bool:
        """A figure of the run folder; a line saying it is missing when the file is not there."""
        if path is None or not path.is_file():
            self.note(f"{caption}: not drawn in this run", "missing")
            return False
        link = quote(path.relative_to(self.out).as_posix())
        self.add(f'<figure class="{css}"><a href="{link}"><img src="{link}" alt="{_e(caption)}" '
                 f'loading="lazy"></a><figcaption>{_e(caption)}</figcaption></figure>')
        return True

    def table(self, header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[bool] = ()) -> None:
        head = "".join(f"<th>{_e(name)}</th>" for name in header)
        body = []
        for row in rows:
            cells = []
            for i, value in enumerate(row):
                is_number = i < len(numeric) and numeric[i] and isinstance(value, (int, float))
                text = f"{value:.3f}" if isinstance(value, float) else str(value)
                cells.append(f'<td class="num">{_e(text)}</td>' if is_number else f"<td>{_e(text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.add(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    def html(self, title: str) -> str:
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(self.parts) + "\n</body></html>\n")


# --------------------------------------------------------------------------- figures


def _field_overlay(paths, image_id: str, out: Path) -> Path | None:
    """One field with the outlines of its predicted masks, as the segment stage saw it."""
    from .io import read_field, read_mask, write_png
    from .segment import mask_paths
    from .visualise import overlay_masks

    cell_path, nucleus_path = mask_paths(paths.masks, image_id, paths.config.segment.mask_format)
    if not (cell_path.is_file() and nucleus_path.is_file()):
        return None
    image = read_field(paths.images, image_id)
    return write_png(out, overlay_masks(image, read_mask(cell_path), read_mask(nucleus_path)))


def _label_figures(paths, out_dir: Path) -> list[Path]:
    from .analysis import label_statistics
    from .io import read_labels
    from .visualise import plot_label_statistics

    if not Path(paths.labels).is_file():
        return []
    return plot_label_statistics(label_statistics(read_labels(paths.labels)), out_dir)


def _cell_figures(paths, method: str, out_dir: Path, n_cells: int = 18, k: int = 8) -> dict[str, Path]:
    """Galleries of the evaluated cells: true vs predicted labels, the top cells per class, and a
    query beside its neighbours."""
    from .classify import read_predictions
    from .index import CellIndex
    from .store import CellStore
    from .visualise import plot_cell_gallery, plot_neighbours, plot_top_cells

    store = CellStore.open(paths.store)
    cells, probabilities = read_predictions(paths.predictions(method))
    splits = paths.config.evaluate.splits
    chosen = (np.flatnonzero(cells["split"].isin(splits).to_numpy()) if "split" in cells
              else np.arange(len(cells)))
    if not len(chosen):
        return {}
    cells, probabilities = cells.iloc[chosen].reset_index(drop=True), probabilities[chosen]
    truth = "true_labels" if "true_labels" in cells and cells["true_labels"].notna().any() else "image_labels"
    shown = np.random.default_rng(0).permutation(len(cells))[:n_cells]
    rows = cells["row"].to_numpy(dtype=np.int64)[shown]  # the cells' rows in the store
    predicted = [np.flatnonzero(p >= 0.5).tolist() or [int(p.argmax())] for p in probabilities[shown]]
    figures = {"gallery": plot_cell_gallery(
        store.get_crops(rows), cells["cell_id"].iloc[shown].tolist(),
        out_dir / "cells_true_predicted.png",
        true_labels=[list(v) if v is not None else None for v in cells[truth].iloc[shown]],
        predicted_labels=predicted, probabilities=probabilities[shown], scheme=store.scheme,
        channels=store.channels, columns=6,
        title=f"{', '.join(splits)} cells: {truth.replace('_', ' ')} and predictions ({method})")}
    present = sorted({int(k) for labels in cells[truth].dropna() for k in labels})
    if present:
        figures["top_cells"] = plot_top_cells(store, cells, probabilities, out_dir / "top_cells.png",
                                              per_class=6, classes=present[:10])
    if Path(paths.index).is_dir():
        index = CellIndex.load(paths.index)
        query = str(cells["cell_id"].iloc[shown[0]])
        scores, neighbour_ids = index.search_cell(query, k)
        figures["neighbours"] = plot_neighbours(store, query, neighbour_ids, scores,
                                                out_dir / "query_neighbours.png",
                                                score_name="cosine" if index.metric == "cosine" else "score")
    return figures


# --------------------------------------------------------------------------- the page


def _stage_rows(records: dict[str, dict]) -> list[tuple]:
    rows = []
    for stage, record in records.items():
        if record is None:
            rows.append((stage, "not run", "", ""))
            continue
        finished = record.get("finished")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(finished)) if finished else ""
        rows.append((stage, "done" if finished else "interrupted", record.get("seconds", ""), when))
    return rows


def write_report(paths, records: dict[str, dict | None]) -> Path:
    """Draw the report's figures into ``<out>/report/`` and write ``<out>/report.html``.

    Parameters
    ----------
    paths : hpa_embed.pipeline.RunPaths
        Where the run's stages wrote (its ``config`` is the run's config).
    records : dict of str to dict or None
        Each stage's record (``<out>/stages/<stage>.json``), in stage order; None for a stage
        that has not run. A section whose stage has not run says so.

    Returns
    -------
    Path
        ``<out>/report.html``.
    """
    out = Path(paths.out)
    figures_dir = out / REPORT_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    summaries = {stage: (record or {}).get("summary") for stage, record in records.items()
                 if record and record.get("finished")}
    config = paths.config
    page = _Page(out)
    page.add(f"<h1>hpa_embed run report</h1><p class='muted'>{_e(out.resolve())}</p>")
    page.add("<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("run", "run"), ("input", "input"), ("segmentation", "segmentation"), ("training", "training"),
        ("results", "results"), ("map", "map"), ("cells", "cells"))) + "</nav>")

    page.section("run", "The run")
    page.table(("stage", "status", "seconds", "finished"), _stage_rows(records), (False, False, True))
    page.add(f"<details><summary>config.toml</summary><pre>{_e(_config_text(out))}</pre></details>")

    page.section("input", "Input")
    input_summary = summaries.get("input")
    if input_summary:
        page.note(f"{input_summary.get('fields')} fields from {input_summary.get('images')}")
        captions = {"class_counts": "images per class", "labels_per_image": "labels per image",
                    "top_combinations": "most common label sets"}
        for path in _label_figures(paths, figures_dir):
            page.figure(path, captions.get(path.stem, path.stem), "half")
    else:
        page.note("the input stage has not run", "missing")

    page.section("segmentation", "Segmentation")
    segment = summaries.get("segment")
    if segment:
        page.note(f"{segment['fields']} fields, {segment['cells']} cells, {len(segment.get('failed', {}))} "
                  f"fields failed ({config.segment.segmenter} segmenter)")
        truth = segment.get("against_truth")
        if truth:
            page.table(("mask", "F1 at IoU 0.6", "precision", "recall", "mean IoU"),
                       [(name, s["f1"], s["precision"], s["recall"], s["mean_iou"])
                        for name, s in truth.items()],
                       (False, True, True, True, True))
        image_id = _example_field(paths)
        if image_id:
            page.figure(_field_overlay(paths, image_id, figures_dir / "field_overlay.png"),
                        f"field {image_id}: cell outlines (white) and nuclei (cyan) of the predicted masks",
                        "wide")
    else:
        page.note("the segment stage has not run", "missing")

    page.section("training", "Training")
    train = summaries.get("train")
    if train:
        page.note(f"{config.model.arch} at {config.model.crop_size} px, {config.loss.classification}"
                  f"{' + ' + config.loss.metric if config.loss.metric else ''} loss, label mode "
                  f"{config.data.label_mode}, {train.get('epochs')} epochs")
        page.figure(paths.train / "training_curves.png", "training and validation curves", "half")
    else:
        page.note("the train stage has not run", "missing")

    page.section("results", "Results")
    evaluation = summaries.get("evaluate")
    if evaluation:
        names = sorted({name for m in evaluation["methods"].values() for name in m["scores"]},
                       key=list(_SCORE_NAMES).index)
        page.table(("classifier", "cells", "images", *(_SCORE_NAMES.get(n, n) for n in names)),
                   [(method, m["cells"], m["images"], *(m["scores"].get(n, "") for n in names))
                    for method, m in evaluation["methods"].items()],
                   (False, True, True, *([True] * len(names))))
        page.note(f"scored on the {' + '.join(evaluation['splits'])} split(s)"
                  + (f"; {evaluation['note']}" if evaluation.get("note") else ""))
        for method in evaluation["methods"]:
            page.figure(paths.evaluation / method / "confusion_matrices.png", f"{method}: confusion matrices",
                        "half")
            page.figure(paths.evaluation / method / "class_ap.png", f"{method}: AP per class", "half")
    else:
        page.note("the evaluate stage has not run", "missing")

    page.section("map", "The map")
    maps = summaries.get("map")
    if maps and maps.get("enabled"):
        interactive = paths.maps / "interactive" / "index.html"
        if interactive.is_file():
            link = quote(interactive.relative_to(out).as_posix())
            page.add(f'<p><a href="{link}">Open the interactive cell map</a> (hover a point for its cell, '
                     "click for its neighbours)</p>")
        for name, caption in (("map_class", "cells by class"), ("class_panels", "one panel per class"),
                              ("map_prediction", "cells by predicted class"),
                              ("map_correct", "top prediction right or wrong"),
                              ("map_image", "cells by image"),
                              ("map_cell_line", "cells by cell line")):
            if (paths.maps / f"{name}.png").is_file():
                page.figure(paths.maps / f"{name}.png", caption, "wide" if name == "class_panels" else "half")
    else:
        page.note("the map stage has not run or is disabled ([map] enabled)", "missing")

    page.section("cells", "Cells")
    if summaries.get("classify") and summaries.get("index"):
        method = config.classify.methods[0]
        cell_figures = _cell_figures(paths, method, figures_dir)
        for name, caption in (("gallery", "cells with their true and predicted labels"),
                              ("top_cells", "the cells with the highest probability of each class"),
                              ("neighbours", "a query cell and its nearest neighbours in the index")):
            page.figure(cell_figures.get(name), caption, "wide")
    else:
        page.note("the classify and index stages have not run", "missing")

    path = out / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(page.html(f"hpa_embed report: {out.name}"), encoding="utf-8")
    return path


def _config_text(out: Path) -> str:
    config_file = out / "config.toml"
    return config_file.read_text(encoding="utf-8") if config_file.is_file() else "(no config.toml)"


def _example_field(paths) -> str | None:
    """A field to show: the first of the evaluated split in the store, else the first with masks."""
    from .store import CellStore

    if (Path(paths.store) / "cells.parquet").is_file():
        cells = CellStore.open(paths.store).cells
        chosen = cells[cells["split"].isin(paths.config.evaluate.splits)] if "split" in cells else cells
        if len(chosen):
            return str(sorted(chosen["image_id"].unique())[0])
    masks = sorted(Path(paths.masks).glob("*_cellmask.*"))
    return masks[0].name.split("_cellmask")[0] if masks else None

