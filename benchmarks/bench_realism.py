"""Realism of the synthetic protein channel: which per-cell intensity statistics separate the
location classes on ``standard``, and do real HPA cells of the same classes look like that?

1. Synthetic: ``--images`` ``standard`` fields (plus ``--forced`` fields labelled 13|16, like the
   real ones) in a temporary directory; per cell of the TRUE masks, statistics of the green channel:
   brightness (mean / total / 99th percentile in the cell, nucleus and cytoplasm, raw and divided
   by the field's 99.9th percentile as :func:`hpa_embed.crops.field_scales` does), how the signal
   is laid out (nucleus/cytoplasm ratio, share in the nucleus, rim/cell ratio, peak/mean, pixel
   CV, fine texture) and size. Each feature alone is ranked by its one-vs-rest AUC (averaged over
   the single-label classes, folded so 0.5 = no information) and its mutual information with the
   class; per class, the median and IQR of the top features.
2. Real: the field 57_F11_1 (segmented with :class:`~hpa_embed.segment.ClassicalSegmenter`), the
   13 crops of 56_F11_1 (nucleus = Otsu on blue inside the cell) and the green channel of
   1000_A12_2 with its reference masks (label unknown). Where each real cell falls in the
   synthetic distribution of plasma membrane (13), cytosol (16) and 13+16 cells (percentile), and
   the cell-to-cell spread of brightness within one field (CV) beside the synthetic one.
3. The intensity-statistics baselines, AP per class against the true cell labels on the held-out
   30 % of the fields: bench_calibration's logistic regression on 25 crop statistics (64 px crops
   of the true cells) as it is, with every green statistic of a field multiplied by one random
   exposure, with the green level removed (ratios to the green mean), green alone and no green;
   and a logistic regression on the features above (all, layout + size only, brightness only,
   brightness scrambled per cell, without the nucleus/cytoplasm split).

    .venv/bin/python benchmarks/bench_realism.py [--images 60] [--forced 10] [--plot docs/img/realism.png]

About 3 minutes on 2 busy cores (one process). The 1000_A12_2 reference "cellmask" and
"nucleimask" are the same nucleus-sized regions, so they are used as nuclei and cells are grown
from them into the protein channel's foreground.

Real images: Human Protein Atlas (www.proteinatlas.org); Thul PJ et al., Science 356:eaal3321 (2017).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from hpa_embed.crops import field_scales
from hpa_embed.labels import HPA2021, NEGATIVE
from hpa_embed.synthetic import field_seed, generate_dataset, generate_field, get_preset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa-real"
MEMBRANE, CYTOSOL = 13, 16

#: feature -> kind: "brightness" scales with the cell's protein amount (or the field's exposure),
#: "layout" is invariant to it (where the signal sits in the cell), "size" is geometry alone.
FEATURES = {
    "mean": "brightness", "total": "brightness", "p99": "brightness",
    "nucleus_mean": "brightness", "cytoplasm_mean": "brightness",
    "nucleus_total": "brightness", "cytoplasm_total": "brightness",
    "mean_norm": "brightness", "p99_norm": "brightness",
    "nucleus_norm": "brightness", "cytoplasm_norm": "brightness",
    "mean_rel_field": "brightness",
    "nuc_cyto_ratio": "layout", "nucleus_share": "layout", "rim_ratio": "layout",
    "peak_ratio": "layout", "pixel_cv": "layout", "texture": "layout",
    "area": "size", "area_rel_field": "size", "nucleus_fraction": "size",
}
#: Features that mean the same on real and synthetic data (no pixel units, no 8/16-bit range).
COMPARABLE = ["mean_norm", "p99_norm", "nucleus_norm", "cytoplasm_norm", "mean_rel_field",
              "nuc_cyto_ratio", "nucleus_share", "rim_ratio", "peak_ratio", "pixel_cv", "texture",
              "area_rel_field", "nucleus_fraction"]


def cell_statistics(green: np.ndarray, cell_mask: np.ndarray, nucleus_mask: np.ndarray,
                    scale: float) -> pd.DataFrame:
    """Per-cell statistics of one field's protein channel, one row per cell id 1..n.

    ``green`` float32 ``[H, W]`` in [0, 1]; masks int ``[H, W]`` (a nucleus carries its cell's
    id); ``scale`` the field's divisor (99.9th percentile of its cell pixels, floored).
    """
    rows = []
    for cell_id, box in enumerate(ndi.find_objects(cell_mask), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        cell = cell_mask[box] == cell_id
        nucleus = (nucleus_mask[box] == cell_id) & cell
        cytoplasm = cell & ~nucleus
        plane = green[box]
        values = plane[cell].astype(np.float64)
        mean = values.mean()
        n_mean = plane[nucleus].mean() if nucleus.any() else np.nan
        c_mean = plane[cytoplasm].mean() if cytoplasm.any() else np.nan
        radius = np.sqrt(cell.sum() / np.pi)  # equivalent radius: lengths relative to the cell
        edge = ndi.distance_transform_edt(np.pad(cell, 1))[1:-1, 1:-1]
        rim = cell & (edge <= 0.08 * radius)
        fine = plane - ndi.gaussian_filter(plane, 0.03 * radius)
        p99 = np.percentile(values, 99)
        rows.append({
            "cell_id": cell_id, "mean": mean, "total": values.sum(), "p99": p99,
            "nucleus_mean": n_mean, "cytoplasm_mean": c_mean,
            "nucleus_total": plane[nucleus].sum(), "cytoplasm_total": plane[cytoplasm].sum(),
            "mean_norm": mean / scale, "p99_norm": p99 / scale,
            "nucleus_norm": n_mean / scale, "cytoplasm_norm": c_mean / scale,
            "nuc_cyto_ratio": n_mean / (c_mean + 1e-3),
            "nucleus_share": plane[nucleus].sum() / max(values.sum(), 1e-9),
            "rim_ratio": plane[rim].mean() / (mean + 1e-4),
            "peak_ratio": p99 / (mean + 1e-4), "pixel_cv": values.std() / (mean + 1e-4),
            "texture": fine[cell].std() / (mean + 1e-4),
            "area": float(cell.sum()), "nucleus_fraction": nucleus.sum() / cell.sum(),
        })
    table = pd.DataFrame(rows)
    table["scale"] = scale
    if len(table):
        table["mean_rel_field"] = table["mean"] / table["mean"].median()
        table["area_rel_field"] = table["area"] / table["area"].median()
    return table


def green_scale(green: np.ndarray, cell_mask: np.ndarray) -> float:
    """The crop normaliser's divisor for the green channel (``CropConfig()`` defaults)."""
    return float(field_scales(green[None], cell_mask)[0])


def synthetic_cells(data: Path, n_forced: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics of every cell of the fields in ``data`` (made by ``generate_dataset``) and of
    ``n_forced`` more ``standard`` fields labelled 13|16, in the true masks; and of the 13|16
    fields' cells in ClassicalSegmenter masks (the real field's route), each matched to the true
    cell it overlaps at IoU >= 0.5, whose labels it takes."""
    from hpa_embed.io import read_field, read_mask
    from hpa_embed.segment import ClassicalSegmenter
    from hpa_embed.synthetic import read_truth

    tables = []
    truth = read_truth(data)
    for image_id, rows in truth.groupby("image_id", sort=True):
        green = read_field(data / "train", image_id, channels=("green",))[0]
        cell_mask = read_mask(data / "truth" / f"{image_id}_cellmask.png").astype(np.int32)
        nucleus_mask = read_mask(data / "truth" / f"{image_id}_nucleimask.png").astype(np.int32)
        table = cell_statistics(green, cell_mask, nucleus_mask, green_scale(green, cell_mask))
        labels = dict(zip(rows["cell_id"], rows["labels"]))
        table["labels"] = [tuple(labels[i]) for i in table["cell_id"]]
        tables.append(table.assign(image=image_id, forced=False))

    config = get_preset("standard")
    segmenter = ClassicalSegmenter()
    segmented = []
    for index in range(n_forced):
        field = generate_field(config, field_seed(seed + 1, index), f"forced_{index:04d}",
                               image_labels=[MEMBRANE, CYTOSOL])
        green = field.image[1]
        table = cell_statistics(green, field.cell_mask, field.nucleus_mask,
                                green_scale(green, field.cell_mask))
        table["labels"] = [tuple(field.cell_labels[i - 1]) for i in table["cell_id"]]
        tables.append(table.assign(image=field.image_id, forced=True))
        cell_mask, nucleus_mask = segmenter.segment(field.image)
        table = cell_statistics(green, cell_mask, nucleus_mask, green_scale(green, cell_mask))
        pairs = np.stack([cell_mask.ravel(), field.cell_mask.ravel()])
        pairs, overlap = np.unique(pairs[:, (pairs > 0).all(axis=0)], axis=1, return_counts=True)
        sizes_seg, sizes_true = np.bincount(cell_mask.ravel()), np.bincount(field.cell_mask.ravel())
        iou = overlap / (sizes_seg[pairs[0]] + sizes_true[pairs[1]] - overlap)
        match = {int(a): int(b) for a, b, v in zip(*pairs, iou) if v >= 0.5}
        table = table[table["cell_id"].isin(match)].copy()
        table["labels"] = [tuple(field.cell_labels[match[i] - 1]) for i in table["cell_id"]]
        segmented.append(table.assign(image=field.image_id, forced=True))
    cells = pd.concat(tables, ignore_index=True)
    segmented = pd.concat(segmented, ignore_index=True) if segmented else cells.iloc[:0].copy()
    for table in (cells, segmented):
        table["single"] = [labels[0] if len(labels) == 1 else -1 for labels in table["labels"]]
    return cells, segmented


def crop_baseline(data: Path, out: Path, seed: int) -> pd.DataFrame:
    """Per-class AP of bench_calibration's model (logistic regression on 25 crop statistics:
    mean, std, 10/50/90/99th percentiles of the 4 channels, pixel count) on crops of ``data``'s
    true cells (64 px, 70/30 split by field), with some of its features taken away or changed."""
    from bench_calibration import intensity_features
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from hpa_embed.config import CropConfig
    from hpa_embed.crops import build_store
    from hpa_embed.data import cell_targets
    from hpa_embed.store import CellStore

    build_store(data / "train", data / "truth", out, labels=data / "train.csv", truth=data,
                config=CropConfig(crop_size=64), workers=1, fractions=(0.7, 0.0, 0.3), progress=False)
    store = CellStore.open(out)
    splits = {}
    for split in ("train", "test"):
        X, Y = intensity_features(store, split)
        ids = store.cells["image_id"].to_numpy()[cell_targets(store.cells, "true_labels", splits=split)[0]]
        splits[split] = (X, Y, ids)
    green = [1, 5, 12, 13, 14, 15]  # green mean, std, 10/50/90/99th percentiles
    others = [i for i in range(24) if i not in green]
    rng = np.random.default_rng(seed)
    exposure = {image: np.exp(rng.normal(0, 0.35)) for image in store.cells["image_id"].unique()}

    def field_exposure(X, ids):
        # every green statistic of a field x one log-normal factor: an exposure that scales the
        # whole field, the unlabelled cells' autofluorescence included
        scaled = X.copy()
        scaled[:, green] *= np.array([exposure[i] for i in ids])[:, None]
        return scaled

    def level_removed(X, ids):
        # green std and percentiles over the green mean: the layout, not the level
        return np.hstack([X[:, others], X[:, green[1:]] / (X[:, [1]] + 1e-3), X[:, [24]]])

    variants = {
        "all 25 (bench_calibration)": lambda X, ids: X,
        "green x field exposure (sd 0.35)": field_exposure,
        "green level removed (ratios to mean)": level_removed,
        "green 6 + count": lambda X, ids: X[:, green + [24]],
        "no green (ref. channels + count)": lambda X, ids: X[:, others + [24]],
    }
    (X_train, Y_train, ids_train), (X_test, Y_test, ids_test) = splits["train"], splits["test"]
    trained = Y_train.any(axis=0) & ~Y_train.all(axis=0)
    tested = trained & Y_test.any(axis=0)
    columns = {}
    for name, transform in variants.items():
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
        model.fit(transform(X_train, ids_train), Y_train[:, trained])
        scores = np.zeros(Y_test.shape)
        scores[:, trained] = model.predict_proba(transform(X_test, ids_test))
        columns[name] = [average_precision_score(Y_test[:, k], scores[:, k]) if tested[k] else np.nan
                         for k in range(Y_test.shape[1])]
    table = pd.DataFrame(columns)
    table.insert(0, "test+", Y_test.sum(axis=0))
    table.insert(0, "class", [f"{k} {HPA2021.names[k][:22]}" for k in range(Y_test.shape[1])])
    table = table[tested].reset_index(drop=True)
    mean = {"class": "macro AP", "test+": int(Y_test[:, tested].sum())}
    mean.update({name: np.nanmean(values) for name, values in columns.items()})
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def real_cells() -> pd.DataFrame:
    """Statistics of the real cells: 57_F11_1 (segmented), 56_F11_1 (crops), 1000_A12_2."""
    from PIL import Image
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    from hpa_embed.io import read_field, to_unit_float
    from hpa_embed.segment import ClassicalSegmenter

    tables = []
    image = read_field(REAL / "fov", "57_F11_1")
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)
    table = cell_statistics(image[1], cell_mask, nucleus_mask, green_scale(image[1], cell_mask))
    tables.append(table.assign(image="57_F11_1 (A-431, 13|16)"))

    # 56_F11_1: crops side by side as one "field"; outside each cell is zero.
    crops = [np.load(path).astype(np.float32) / 255
             for path in sorted((REAL / "cells").glob("56_F11_1_*.npy"))]
    canvas = np.concatenate(crops, axis=1)  # [224, 13*224, 4], channels last
    cell_mask = np.zeros(canvas.shape[:2], np.int32)
    nucleus_mask = np.zeros_like(cell_mask)
    for index, crop in enumerate(crops):
        inside = crop.max(axis=2) > 0
        blue = crop[..., 2]
        nucleus = inside & (blue > threshold_otsu(blue[inside]))
        nucleus = ndi.binary_fill_holes(ndi.binary_opening(nucleus, iterations=2))
        columns = slice(index * 224, (index + 1) * 224)
        cell_mask[:, columns][inside] = index + 1
        nucleus_mask[:, columns][nucleus & inside] = index + 1
    green = np.ascontiguousarray(canvas[..., 1])
    table = cell_statistics(green, cell_mask, nucleus_mask, green_scale(green, cell_mask))
    tables.append(table.assign(image="56_F11_1 (U-2 OS, 13|16; crops)"))

    # 1000_A12_2: its "cellmask" and "nucleimask" are the same nucleus-sized regions (99.9 % of
    # pixels agree), so they serve as nuclei, and cells are grown from them into the foreground of
    # the smoothed protein channel (the only channel there is).
    masks = REAL / "reference-masks"
    green = to_unit_float(np.asarray(Image.open(masks / "1000_A12_2_green.png")))
    nucleus_mask = np.asarray(Image.open(masks / "1000_A12_2_nucleimask.png")).astype(np.int32)
    smooth = ndi.gaussian_filter(green, 12)
    foreground = ndi.binary_fill_holes(smooth > 0.5 * threshold_otsu(smooth)) | (nucleus_mask > 0)
    cell_mask = watershed(ndi.distance_transform_edt(nucleus_mask == 0), nucleus_mask, mask=foreground)
    table = cell_statistics(green, cell_mask.astype(np.int32), nucleus_mask, green_scale(green, cell_mask))
    tables.append(table.assign(image="1000_A12_2 (label unknown)"))
    return pd.concat(tables, ignore_index=True)


def separation(cells: pd.DataFrame, min_cells: int) -> tuple[pd.DataFrame, list[int]]:
    """Per feature, how well it alone separates the single-label classes: the folded one-vs-rest
    AUC (max(AUC, 1 - AUC)) averaged over the classes (and over those but Negative), the mutual
    information (nats) and the class it separates best (its unfolded AUC)."""
    from sklearn.feature_selection import mutual_info_classif
    from sklearn.metrics import roc_auc_score

    single = cells[cells["single"] >= 0]
    counts = single["single"].value_counts()
    classes = sorted(counts[counts >= min_cells].index)
    single = single[single["single"].isin(classes)]
    y = single["single"].to_numpy()
    rows = []
    for name, kind in FEATURES.items():
        x = np.nan_to_num(single[name].to_numpy(), nan=np.nanmedian(single[name]))
        aucs = {k: roc_auc_score(y == k, x) for k in classes}
        folded = {k: max(a, 1 - a) for k, a in aucs.items()}
        best = max(folded, key=folded.get)
        mi = mutual_info_classif(x[:, None], y, random_state=0)[0]
        rows.append({"feature": name, "kind": kind, "mean_auc": np.mean(list(folded.values())),
                     "auc_no18": np.mean([a for k, a in folded.items() if k != NEGATIVE]),
                     "mi": mi, "best_class": best, "best_auc": aucs[best]})
    return pd.DataFrame(rows).sort_values("mean_auc", ascending=False, ignore_index=True), classes


def _both(labels: tuple[int, ...]) -> bool:
    return set(labels) == {MEMBRANE, CYTOSOL}


def spread(cells: pd.DataFrame, segmented: pd.DataFrame, real: pd.DataFrame,
           min_cells: int = 3) -> pd.DataFrame:
    """Cell-to-cell CV of the cell's mean protein brightness within a field (median and IQR over
    fields with >= ``min_cells`` such cells), the CV of those fields' medians across fields, the
    share of faint cells (mean < 0.25 x the field's median), the field's green divisor (median)
    and the share of fields whose divisor is >= 0.99 (green saturated: normalisation does nothing)."""
    drawn, forced = cells[~cells["forced"]], cells[cells["forced"]]
    groups = {
        "syn 13 (single)": drawn[drawn["single"] == MEMBRANE],
        "syn 16 (single)": drawn[drawn["single"] == CYTOSOL],
        "syn 13|16 fields, all cells": forced,
        "syn 13|16 fields, 13+16 cells": forced[forced["labels"].map(_both)],
        "syn 13|16 fields, segmented": segmented,
        "syn drawn fields, labelled cells": drawn[drawn["single"] != NEGATIVE],
        "syn drawn fields, all cells": drawn,
        "syn drawn fields, Negative (18) cells": drawn[drawn["single"] == NEGATIVE],
    }
    scales = cells.groupby("image")["scale"].first()
    rows = []
    for name, group in groups.items():
        per_field = group.groupby("image")["mean"]
        cv = per_field.std() / per_field.mean()
        enough = per_field.size() >= min_cells
        medians = per_field.median()[enough]
        rows.append({"cells": name, "fields": int(enough.sum()), "n": len(group),
                     "within_cv": cv[enough].median(),
                     "within_iqr": f"{cv[enough].quantile(.25):.2f}-{cv[enough].quantile(.75):.2f}",
                     "across_cv": medians.std() / medians.mean(),
                     "faint": (group["mean_rel_field"] < 0.25).mean(),
                     "field_scale": scales[group["image"].unique()].median(),
                     "saturated": (scales[group["image"].unique()] >= 0.99).mean()})
    for name, table in real.groupby("image", sort=False):
        rows.append({"cells": f"real {name}", "fields": 1, "n": len(table),
                     "within_cv": table["mean"].std() / table["mean"].mean(), "within_iqr": "",
                     "across_cv": np.nan, "faint": (table["mean_rel_field"] < 0.25).mean(),
                     "field_scale": table["scale"].iloc[0],
                     "saturated": float(table["scale"].iloc[0] >= 0.99)})
    return pd.DataFrame(rows)


def real_percentiles(cells: pd.DataFrame, segmented: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Medians of the comparable features for synthetic 13, 16, 13+16 cells (true masks) and 13+16
    cells in segmented masks, the real images' medians, and the median percentile of each real
    image's cells in the synthetic 13+16 (segmented) distribution."""
    drawn = cells[~cells["forced"]]
    groups = {
        "syn13": drawn[drawn["single"] == MEMBRANE],
        "syn16": drawn[drawn["single"] == CYTOSOL],
        "syn13+16": cells[cells["labels"].map(_both)],
        "seg13+16": segmented[segmented["labels"].map(_both)],
    }
    rows = []
    for feature in COMPARABLE:
        row = {"feature": feature}
        for name, group in groups.items():
            row[name] = group[feature].median()
        reference = np.sort(groups["seg13+16"][feature].dropna().to_numpy())
        for name, table in real.groupby("image", sort=False):
            short = name.split()[0]
            values = table[feature].dropna().to_numpy()
            row[short] = np.median(values) if len(values) else np.nan
            row[f"{short} pct"] = (np.median(100 * np.searchsorted(reference, values) / len(reference))
                                   if len(values) and len(reference) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def baseline(cells: pd.DataFrame, seed: int) -> dict[str, float]:
    """Cell mAP (true labels, held-out 30 % of the fields) of a logistic regression on feature
    sets: all, layout + size only, brightness only, all with each cell's brightness features
    multiplied by one random log-normal factor (sd 1: brightness that says nothing about the
    class), and all but the features that split the nucleus from the cytoplasm."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import StandardScaler

    drawn = cells[~cells["forced"]]
    images = drawn["image"].unique()
    train = drawn["image"].isin(images[: int(0.7 * len(images))]).to_numpy()
    Y = HPA2021.to_multi_hot([list(t) for t in drawn["labels"]])
    rng = np.random.default_rng(seed)
    brightness = [f for f, k in FEATURES.items() if k == "brightness"]
    scrambled = drawn.copy()
    factor = np.exp(rng.normal(0, 1.0, len(drawn)))
    for f in brightness:
        if f != "mean_rel_field":
            scrambled[f] = scrambled[f] * factor
    scrambled["mean_rel_field"] = scrambled["mean"] / scrambled.groupby("image")["mean"].transform("median")
    sets = {
        "all features": (drawn, list(FEATURES)),
        "layout + size only": (drawn, [f for f, k in FEATURES.items() if k != "brightness"]),
        "brightness only": (drawn, brightness),
        "all, brightness scrambled per cell": (scrambled, list(FEATURES)),
        "all but the nucleus/cytoplasm split": (drawn, [f for f in FEATURES if not f.startswith(
            ("nucleus", "cytoplasm", "nuc_"))]),
    }
    results = {}
    for name, (table, features) in sets.items():
        X = np.log(np.clip(np.nan_to_num(table[features].to_numpy(np.float64)), 1e-6, None))
        scaler = StandardScaler().fit(X[train])
        X = scaler.transform(X)
        aps = []
        for k in range(HPA2021.num_classes):
            if Y[train, k].any() and not Y[train, k].all() and Y[~train, k].any():
                model = LogisticRegression(class_weight="balanced", max_iter=2000).fit(X[train], Y[train, k])
                aps.append(average_precision_score(Y[~train, k], model.predict_proba(X[~train])[:, 1]))
        results[name] = (float(np.mean(aps)), len(aps))
    return results


def class_table(cells: pd.DataFrame, classes: list[int], features: list[str]) -> pd.DataFrame:
    """Median [IQR] of ``features`` per single-label class."""
    rows = []
    for k in classes:
        group = cells[cells["single"] == k]
        row = {"class": f"{k} {HPA2021.names[k][:18]}", "n": len(group)}
        for f in features:
            q1, q2, q3 = np.nanpercentile(group[f], [25, 50, 75])
            row[f] = f"{q2:.3g} [{q1:.2g}-{q3:.2g}]"
        rows.append(row)
    return pd.DataFrame(rows)


def plot(cells: pd.DataFrame, real: pd.DataFrame, classes: list[int], features: list[str],
         path: Path) -> None:
    """Per-class box plots of ``features`` with the real cells marked beside 13 and 16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(features), 1, figsize=(12, 2.3 * len(features)), sharex=True)
    markers = dict(zip(real["image"].unique(), ("o", "s", "^")))
    colours = dict(zip(real["image"].unique(), ("tab:red", "tab:orange", "tab:purple")))
    for ax, feature in zip(np.atleast_1d(axes), features):
        data = [cells.loc[cells["single"] == k, feature].dropna() for k in classes]
        ax.boxplot(data, positions=range(len(classes)), widths=0.6, showfliers=False)
        for image, table in real.groupby("image", sort=False):
            x = len(classes) + list(markers).index(image) * 0.5
            ax.scatter(np.full(len(table), x) + np.random.default_rng(0).uniform(-0.1, 0.1, len(table)),
                       table[feature], marker=markers[image], s=14, color=colours[image], label=image)
        for k in (MEMBRANE, CYTOSOL):
            if k in classes:
                ax.axvspan(classes.index(k) - 0.4, classes.index(k) + 0.4, color="tab:green", alpha=0.12)
        ax.set_ylabel(feature)
        if feature in ("total", "area", "nuc_cyto_ratio", "peak_ratio", "texture"):
            ax.set_yscale("log")
    ticks = [f"{k}" for k in classes] + ["real"]
    axes[-1].set_xticks(list(range(len(classes))) + [len(classes) + 0.5], ticks)
    axes[-1].set_xlabel("single-label synthetic class ('standard'; 13, 16 shaded) | "
                        "real cells (13|16, unknown)")
    axes[0].legend(fontsize=7, loc="upper left", ncol=3)
    fig.suptitle("Per-cell protein statistics: synthetic classes vs real HPA cells "
                 "(real: Human Protein Atlas, Thul et al. 2017)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60, help="'standard' fields with drawn labels")
    parser.add_argument("--forced", type=int, default=10, help="extra fields labelled 13|16")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--min-cells", type=int, default=15,
                        help="single-label cells for a class to be ranked")
    parser.add_argument("--plot", type=Path, help="save per-class distributions of the top features")
    args = parser.parse_args()
    pd.set_option("display.width", 250, "display.max_columns", 30, "display.precision", 3)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_dataset(Path(tmp) / "data", args.images, "standard", seed=args.seed, workers=1,
                                progress=False)
        cells, segmented = synthetic_cells(data, args.forced, args.seed)
        crops = crop_baseline(data, Path(tmp) / "store", args.seed)
    real = real_cells()
    print(f"{args.images}+{args.forced} 'standard' fields, {len(cells)} cells "
          f"({(cells['single'] >= 0).sum()} single-label); {len(real)} real cells "
          f"({time.perf_counter() - started:.0f} s)")

    ranking, classes = separation(cells[~cells["forced"]], args.min_cells)
    print(f"\n== each feature alone: folded one-vs-rest AUC averaged over {len(classes)} single-label "
          f"classes with >= {args.min_cells} cells ({classes}), mutual information (nats)")
    print(ranking.to_string(index=False))

    top = ["mean", "p99", "total", "nuc_cyto_ratio", "rim_ratio", "peak_ratio", "area"]
    print("\n== per single-label class: median [IQR] (drawn fields)")
    print(class_table(cells[~cells["forced"]], classes, top).to_string(index=False))

    print("\n== cell-to-cell spread of the cell's mean protein brightness (CV) within a field, "
          "and of the fields' medians across fields; faint = mean < 0.25 x the field's median")
    print(spread(cells, segmented, real).to_string(index=False))

    print("\n== medians: synthetic 13, 16, 13+16 cells (true masks), 13+16 cells in ClassicalSegmenter "
          "masks, real images; 'pct' = median percentile of the real cells among the segmented 13+16 cells")
    print(real_percentiles(cells, segmented, real).to_string(index=False))

    print("\n== bench_calibration's intensity-statistics baseline on crops of the drawn fields' true cells "
          "(64 px, 70/30 by field): AP per class")
    print(crops.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    print("\n== intensity-statistics baseline (these features, logistic regression, 70/30 by field, "
          "cell mAP vs true labels)")
    for name, (value, n) in baseline(cells, args.seed).items():
        print(f"{name:40s}{value:8.3f}   ({n} classes)")
    if args.plot:
        plot(cells, real, classes, ["mean", "mean_norm", "nuc_cyto_ratio", "rim_ratio", "peak_ratio",
                                    "texture"], args.plot)
        print(f"\nfigure: {args.plot}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
