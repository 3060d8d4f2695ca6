"""Why is the CNN weak? Oracle runs on the same synthetic cells that separate the explanations.

Every run trains a from-scratch ResNet-18 on the true cell labels of one `standard` CellStore
(true masks, so segmentation plays no part) and scores cell mAP on the held-out test cells
against their true labels, beside the linear model on intensity statistics. The variants change
one thing at a time: the loss (CE on single-label cells vs BCE on the same cells), the sampler,
the classifier's initial bias; then, from the best of those (``bce-prior-balanced``), the
learning rate, augmentation, the crop size, the crops' normalisation, masked crops against crops
that keep their neighbours, and the backbone (``best-*``). The ``weak-*`` variants train on the
image labels instead, and on copies of them corrected one error at a time, to tell which error
of the weak labels costs what.

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
from hpa_embed.config import CropConfig, DataConfig, LossConfig, ModelConfig, TrainConfig
from hpa_embed.crops import build_store
from hpa_embed.data import cell_targets
from hpa_embed.embed import embed_store
from hpa_embed.evaluate import cell_level_ap
from hpa_embed.recipes import recipe_config, relative_brightness
from hpa_embed.store import CellStore
from hpa_embed.train import fit

CE = LossConfig(classification="ce", metric=None)
BCE = LossConfig(classification="bce", metric=None)
BCE_TRIPLET = LossConfig(classification="bce", metric="triplet", miner="semihard", multilabel_mining=True)
PRIOR = {"classifier_bias": "prior"}

# name: (labels: "all" = the store as it is, else a rule of RELABEL; loss; data; train overrides
#        [, crop overrides [, model overrides]])
VARIANTS = {
    "ce-single": ("single-true", CE, DataConfig(label_mode="single_label", sampler="shuffle"), {}),
    "bce-single": ("single-true", BCE, DataConfig(label_mode="image_labels", sampler="shuffle"), {}),
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
# from the best of the above, bce-prior-balanced, one change at a time: learning rate, crops, width
_BEST = VARIANTS["bce-prior-balanced"]
VARIANTS |= {
    "best-lr3e-3": (*_BEST[:3], {**PRIOR, "lr": 3e-3}),
    "best-lr3e-4": (*_BEST[:3], {**PRIOR, "lr": 3e-4}),
    "best-no-augment": (*_BEST[:2], dataclasses.replace(_BEST[2], augment=False), PRIOR),
    "best-96px": (*_BEST, {"crop_size": 96}),
    "best-crop-unnormalised": (*_BEST, {"normalisation": "none"}),
    "best-crop-neighbours": (*_BEST, {"keep_neighbours": True}),
    "best-resnet34": (*_BEST, {}, {"arch": "resnet34"}),
}
# the weak labels against the truth, on the same cells: the seed's recipe on its image labels and on
# the true labels of the same cells; the BCE recipe on image labels, without the cells that show
# none of them (silent), with the silent cells as Negative, and the oracle (bce-prior-balanced)
_SEED_CE = (CE, DataConfig(label_mode="single_label", sampler="shuffle"), {})
_WEAK_BCE = (BCE, DataConfig(label_mode="image_labels", sampler="balanced", m_per_class=4), PRIOR)
VARIANTS |= {
    "weak-seed-ce": ("all", *_SEED_CE),
    "weak-seed-ce-true": ("single-image-true", *_SEED_CE),
    "weak-bce": ("all", *_WEAK_BCE),
    "weak-bce-no-silent": ("shown", *_WEAK_BCE),
    "weak-bce-silent-negative": ("silent-negative", *_WEAK_BCE),
    "weak-bce-dim-negative": ("dim-negative", *_WEAK_BCE),
}


NEGATIVE = 18
#: Below this share of the brightest cell of its image (green, 95th percentile), "dim-negative"
#: calls a cell silent: the recipe's threshold.
DIM = recipe_config("dim-negative").train.dim_negative
# the labels a relabelled copy gives a cell, from its image's labels, its true labels and its
# green brightness relative to the brightest cell of its image
RELABEL = {
    # cells with one true label, given it (label modes "single_label" and "image_labels" then
    # read the same cells)
    "single-true": lambda image, true, bright: list(true) if len(true) == 1 else [],
    # the cells of single-label images, given their true label (one: the image's, or Negative)
    "single-image-true": lambda image, true, bright: list(true) if len(image) == 1 else [],
    # cells that show a label keep their image's labels; silent cells (true [18] in an image with
    # another label) are left out
    "shown": lambda image, true, bright: list(image) if true != [NEGATIVE] or image == [NEGATIVE] else [],
    # ... or become Negative
    "silent-negative": lambda image, true, bright: list(image) if true != [NEGATIVE] else [NEGATIVE],
    # without the truth: the dim cells of a labelled image become Negative
    "dim-negative": lambda image, true, bright: [NEGATIVE] if image and bright < DIM else list(image),
}


def relabelled_copy(store_path: Path, out: Path, rule: str) -> Path:
    """A copy of the store whose image labels are :data:`RELABEL` ``[rule]`` of each cell's."""
    shutil.copytree(store_path, out)
    store = CellStore.open(out)
    relabel, cells, brightness = RELABEL[rule], store.cells, relative_brightness(store)
    store.set_columns({"image_labels": [
        relabel(list(image), [] if true is None else list(true), bright)
        for image, true, bright in zip(cells["image_labels"], cells["true_labels"], brightness)]})
    return out


def recrop(directory: Path, out: Path, crop: dict) -> Path:
    """The fields of :func:`synthetic_store` in ``directory`` cut again along their true masks with
    the crop settings ``crop``; same cells, same split."""
    data = directory / "data"
    build_store(data / "train", data / "truth", out, labels=data / "train.csv", truth=data,
                config=CropConfig(**crop))
    return out


def run(store_path: Path, out: Path, args, loss: LossConfig, data: DataConfig, overrides: dict,
        model_overrides: dict | None = None) -> float:
    store = CellStore.open(store_path)
    model = ModelConfig(**{"arch": "resnet18", "in_chans": 4, "crop_size": store.crop_size,
                           **(model_overrides or {})})
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
        relabelled: dict[str, Path] = {}
        recropped: dict[str, Path] = {}  # the same fields, cut with other crop settings
        print(f"{args.images} 'standard' fields, {len(store)} cells "
              f"({store.cells['split'].value_counts().to_dict()}), {machine()}", file=sys.stderr)
        rows = [("intensity statistics (logistic regression)", intensity_baseline(store))]
        for name in names:
            labels, loss, data, overrides, *rest = VARIANTS[name]
            crop, model = (rest + [{}, {}])[:2]
            if labels != "all" and labels not in relabelled:
                relabelled[labels] = relabelled_copy(store_path, tmp / f"labels-{labels}", labels)
            path = store_path if labels == "all" else relabelled[labels]
            if crop:
                key = repr(sorted(crop.items()))
                if key not in recropped:
                    recropped[key] = recrop(tmp, tmp / f"store-{len(recropped)}",
                                            {"crop_size": args.crop_size, **crop})
                path = recropped[key]
            n_train = len(cell_targets(CellStore.open(path).cells, data.label_mode, splits="train")[0])
            begun = time.perf_counter()
            value = run(path, tmp / name, args, loss, data, overrides, model)
            rows.append((f"{name} ({n_train} training cells, {time.perf_counter() - begun:.0f} s)", value))
            print(f"{rows[-1][0]:56s}{value:10.3f}", file=sys.stderr)
    print(f"oracle cell mAP on held-out 'standard' cells (true labels, every test cell), ResNet-18 "
          f"{args.crop_size} px, {args.epochs} epochs, lr {args.lr}; {time.perf_counter() - started:.0f} s")
    print(f"{'variant':64s}{'cell mAP':>10s}")
    for name, value in rows:
        print(f"{name:64s}{value:10.3f}")


if __name__ == "__main__":
    main()
