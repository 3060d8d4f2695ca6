"""Why is the CNN weak? Oracle runs on the same synthetic cells that separate the explanations.

Every run trains a from-scratch ResNet-18 on the true cell labels of one `standard` CellStore
(true masks, so segmentation plays no part) and scores cell mAP on the held-out test cells
against their true labels, beside the linear model on intensity statistics. The variants change
one thing at a time: the loss (CE on single-label cells vs BCE on the same cells), the sampler,
the classifier's initial bias, the learning rate, the number of epochs.

    .venv/bin/python benchmarks/bench_diagnose.py --images 160 --epochs 8
    .venv/bin/python benchmarks/bench_diagnose.py --only bce-shuffle,bce-prior-bias
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_calibration import intensity_baseline
from common import machine, synthetic_store

from hpa_embed.classify import head_probabilities
from hpa_embed.config import DataConfig, LossConfig, ModelConfig, TrainConfig
from hpa_embed.data import cell_targets
from hpa_embed.embed import embed_store
from hpa_embed.evaluate import cell_level_ap
from hpa_embed.store import CellStore
from hpa_embed.train import fit

CE = LossConfig(classification="ce", metric=None)
BCE = LossConfig(classification="bce", metric=None)
BCE_TRIPLET = LossConfig(classification="bce", metric="triplet", miner="semihard", multilabel_mining=True)
PRIOR = {"classifier_bias": "prior"}

# name: (cells: "single" = cells with one true label, "all" = every cell; loss; data; train overrides)
VARIANTS = {
    "ce-single": ("single", CE, DataConfig(label_mode="single_label", sampler="shuffle"), {}),
    "bce-single": ("single", BCE, DataConfig(label_mode="image_labels", sampler="shuffle"), {}),
    "bce-shuffle": ("all", BCE, DataConfig(label_mode="true_labels", sampler="shuffle"), {}),
    "bce-balanced": ("all", BCE, DataConfig(label_mode="true_labels", sampler="balanced", m_per_class=4), {}),
    "bce-prior-bias": ("all", BCE, DataConfig(label_mode="true_labels", sampler="shuffle"),
                       PRIOR),
    "bce-lr3e-3": ("all", BCE, DataConfig(label_mode="true_labels", sampler="shuffle"), {"lr": 3e-3}),
    # softmax cross-entropy against each cell's label distribution Y / |Y|, on every cell
    "ce-all": ("all", CE, DataConfig(label_mode="true_labels", sampler="shuffle"), {}),
    # the quality table's oracle, one change at a time from bce-prior-bias
    "bce-prior-balanced": ("all", BCE, DataConfig(label_mode="true_labels", sampler="balanced",
                                                  m_per_class=4), PRIOR),
    "bce-prior-triplet": ("all", BCE_TRIPLET, DataConfig(label_mode="true_labels", sampler="shuffle"), PRIOR),
    "bce-prior-balanced-triplet": (
        "all", BCE_TRIPLET, DataConfig(label_mode="true_labels", sampler="balanced", m_per_class=4), PRIOR),
}


def single_label_copy(store_path: Path, out: Path) -> Path:
    """A copy of the store whose 'image labels' are the true labels of cells that have one
    (the label modes "single_label" and "image_labels" then read the same cells)."""
    shutil.copytree(store_path, out)
    store = CellStore.open(out)
    true = store.cells["true_labels"]
    store.set_columns({"image_labels": [list(v) if v is not None and len(v) == 1 else [] for v in true]})
    return out


def run(store_path: Path, out: Path, args, loss: LossConfig, data: DataConfig, overrides: dict) -> float:
    store = CellStore.open(store_path)
    model = ModelConfig(arch="resnet18", in_chans=4, crop_size=args.crop_size)
    # the variants start from PyTorch's zero-mean classifier bias; bce-prior-bias changes only that
    train = TrainConfig(epochs=args.epochs, lr=args.lr, schedule="onecycle", seed=args.seed,
                        classifier_bias="zero")
    train = dataclasses.replace(train, **overrides)
    data = dataclasses.replace(data, batch_size=args.batch)
    result = fit(store, out, model, loss, data, train, progress=False)
    embedded = embed_store(result.checkpoint, store, split="test", progress=False)
    positions, Y = cell_targets(embedded.cells, "true_labels")
    probabilities = head_probabilities(result.checkpoint, embedded.X)
    return cell_level_ap(probabilities[positions], Y).map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated variant names")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store_path = synthetic_store(tmp, args.crop_size, args.images, "standard")
        store = CellStore.open(store_path)
        single = single_label_copy(store_path, tmp / "single")
        print(f"{args.images} 'standard' fields, {len(store)} cells "
              f"({store.cells['split'].value_counts().to_dict()}), {machine()}", file=sys.stderr)
        rows = [("intensity statistics (logistic regression)", intensity_baseline(store))]
        for name in names:
            cells, loss, data, overrides = VARIANTS[name]
            path = single if cells == "single" else store_path
            n_train = len(cell_targets(CellStore.open(path).cells, data.label_mode, splits="train")[0])
            begun = time.perf_counter()
            value = run(path, tmp / name, args, loss, data, overrides)
            rows.append((f"{name} ({n_train} training cells, {time.perf_counter() - begun:.0f} s)", value))
            print(f"{rows[-1][0]:56s}{value:10.3f}", file=sys.stderr)
    print(f"oracle cell mAP on held-out 'standard' cells (true labels, every test cell), ResNet-18 "
          f"{args.crop_size} px, {args.epochs} epochs, lr {args.lr}; {time.perf_counter() - started:.0f} s")
    print(f"{'variant':64s}{'cell mAP':>10s}")
    for name, value in rows:
        print(f"{name:64s}{value:10.3f}")


if __name__ == "__main__":
    main()
