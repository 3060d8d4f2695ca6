"""Calibration of the synthetic ``standard`` preset against what real data showed.

DESIGN.md asks that, on ``standard``:

- the seed's recipe (cells of single-label images, each given its image's label, cross-entropy
  + triplet loss) lands near the cell mAP it reached on real data, about 0.35;
- a model trained on the true cell labels (the oracle) lands well below 1.0;
- a linear model on simple per-cell intensity statistics lands far below both.

This script generates a ``standard`` set, cuts the cells along the true masks (so that the
competition metric reduces to per-cell AP, :func:`hpa_embed.evaluate.cell_level_ap`), trains
the recipes with :func:`hpa_embed.train.fit`, classifies the held-out test cells with the
trained linear head and prints the cell mAP of each, against the true cell labels, beside the
target. The full-size recipe is ResNet-50 at 128 px; on a 2-core CPU the default is ResNet-18 at
64 px (``--arch``, ``--crop-size``, ``--epochs`` change it).

    python benchmarks/bench_calibration.py [--images 160] [--epochs 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, synthetic_store

from hpa_embed.classify import head_probabilities
from hpa_embed.config import DataConfig, LossConfig, ModelConfig, TrainConfig
from hpa_embed.data import cell_targets
from hpa_embed.embed import embed_store
from hpa_embed.evaluate import cell_level_ap
from hpa_embed.store import CellStore
from hpa_embed.train import fit

RECIPES = {
    # name: (label mode, loss, target)
    "seed recipe (single-label cells, CE + triplet)": (
        "single_label",
        LossConfig(classification="ce", metric="triplet", miner="semihard"),
        "about 0.35",
    ),
    "weak labels (all cells, image labels, BCE + triplet)": (
        "image_labels",
        LossConfig(classification="bce", metric="triplet", miner="semihard"),
        "-",
    ),
    "oracle (true cell labels, BCE + triplet)": (
        "true_labels",
        LossConfig(classification="bce", metric="triplet", miner="semihard"),
        "well below 1.0",
    ),
}


def intensity_features(
    store: CellStore, split: str, labelled_only: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel statistics of the crops of one split (cell pixels only): mean, std, the 10th,
    50th, 90th and 99th percentiles, and the cell's pixel count -> ``(X [n, 25], Y [n, K])``.

    ``labelled_only``: only cells with true labels (``Y`` their labels); else every cell of the
    split in table order (``Y`` of the unlabelled ones all False).
    """
    positions, Y = cell_targets(store.cells, "true_labels", splits=split)
    if not labelled_only:
        everything = np.flatnonzero((store.cells["split"] == split).to_numpy())
        full = np.zeros((len(everything), Y.shape[1]), dtype=bool)
        full[np.searchsorted(everything, positions)] = Y
        positions, Y = everything, full
    crops = store.get_crops(store.cells["row"].to_numpy()[positions]).astype(np.float32) / 255
    inside = crops.max(axis=1, keepdims=True) > 0
    count = inside.sum(axis=(2, 3)).clip(min=1)
    mean = (crops * inside).sum(axis=(2, 3)) / count
    square = (crops**2 * inside).sum(axis=(2, 3)) / count
    flat = np.where(inside, crops, np.nan).reshape(len(crops), crops.shape[1], -1)
    quantiles = np.nanpercentile(flat, (10, 50, 90, 99), axis=2).transpose(1, 2, 0).reshape(len(crops), -1)
    std = np.sqrt(np.maximum(square - mean**2, 0))
    return np.hstack([mean, std, quantiles, count]), Y


def fit_intensity_model(store: CellStore):
    """Logistic regression (one per class) on the intensity statistics of the training cells'
    crops against their true labels -> ``(model, trained)``, ``trained`` bool ``[K]`` the classes
    it has columns for."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, Y_train = intensity_features(store, "train")
    trained = Y_train.any(axis=0)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
    return model.fit(X_train, Y_train[:, trained]), trained


def intensity_baseline(store: CellStore) -> float:
    """Cell mAP of :func:`fit_intensity_model` on the test cells."""
    model, trained = fit_intensity_model(store)
    X_test, Y_test = intensity_features(store, "test")
    scores = np.zeros(Y_test.shape)
    scores[:, trained] = model.predict_proba(X_test)
    return cell_level_ap(scores, Y_test).map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--m-per-class", type=int, default=8, help="cells per class in a balanced batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store_path = synthetic_store(tmp, args.crop_size, args.images, args.preset)
        store = CellStore.open(store_path)
        test_positions, Y_test = cell_targets(store.cells, "true_labels", splits="test")
        test_rows = store.cells["row"].to_numpy()[test_positions]
        print(
            f"{args.images} '{args.preset}' fields, {len(store)} cells "
            f"({store.cells['split'].value_counts().to_dict()}), {machine()}",
            file=sys.stderr,
        )
        rows.append(("linear model on intensity statistics", intensity_baseline(store), "far below both"))
        for name, (mode, loss, target) in RECIPES.items():
            run = fit(
                store,
                tmp / mode,
                ModelConfig(arch=args.arch, in_chans=4, crop_size=args.crop_size),
                loss,
                DataConfig(label_mode=mode, batch_size=args.batch, m_per_class=args.m_per_class),
                TrainConfig(epochs=args.epochs, lr=args.lr, schedule="onecycle"),
                progress=False,
            )
            embedded = embed_store(run.checkpoint, store, split="test", progress=False)
            assert np.array_equal(embedded.cells["row"].to_numpy(), test_rows)
            probabilities = head_probabilities(run.checkpoint, embedded.X)
            rows.append((name, cell_level_ap(probabilities, Y_test).map, target))
    print(
        f"cell mAP on held-out '{args.preset}' cells against their true labels "
        f"({args.arch}, {args.crop_size} px, {args.epochs} epochs; {time.perf_counter() - started:.0f} s)"
    )
    print(f"{'method':56s}{'cell mAP':>10s}   target")
    for name, value, target in rows:
        print(f"{name:56s}{value:10.3f}   {target}")


if __name__ == "__main__":
    main()
