"""The ``hpa-embed`` command line: one subcommand per stage, each a thin call into the API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .io import DataError, atomic_path

log = logging.getLogger("hpa_embed")


# --------------------------------------------------------------------------- subcommands


def _run_generate(args: argparse.Namespace) -> int:
    import dataclasses

    from .synthetic import generate_dataset, get_preset

    config = get_preset(args.preset)
    overrides = {
        name: value
        for name, value in (
            ("size", args.size),
            ("difficulty", args.difficulty),
            ("bit_depth", args.bit_depth),
        )
        if value is not None
    }
    if overrides:
        config = dataclasses.replace(config, **overrides)
    out = generate_dataset(args.out, args.images, config, seed=args.seed, workers=args.workers)
    print(f"wrote {args.images} fields to {out}")
    return 0


def _run_analyse(args: argparse.Namespace) -> int:
    from .analysis import label_statistics
    from .io import read_labels
    from .visualise import plot_label_statistics

    stats = label_statistics(read_labels(args.labels, scheme=args.scheme), top=args.top)
    print(stats.to_text())
    out = Path(args.out) if args.out else Path(args.labels).with_name("analysis")
    for path in plot_label_statistics(stats, out):
        print(f"wrote {path}")
    return 0


def _run_channels(args: argparse.Namespace) -> int:
    from .io import read_field
    from .labels import CHANNELS, RGB_CHANNELS
    from .visualise import save_channel_views

    channels = RGB_CHANNELS if args.rgb else CHANNELS
    image = read_field(args.directory, args.image_id, channels)
    for path in save_channel_views(image, args.out, args.image_id, channels):
        print(f"wrote {path}")
    return 0


def _run_segment(args: argparse.Namespace) -> int:
    from .segment import ClassicalSegmenter, HPACellSegmenter, segment_directory

    if args.segmenter == "hpacellseg":
        missing = [
            flag
            for flag, value in (("--nuclei-model", args.nuclei_model), ("--cell-model", args.cell_model))
            if not value
        ]
        if missing:
            raise ValueError(f"--segmenter hpacellseg needs {' and '.join(missing)}")
        segmenter = HPACellSegmenter(
            args.nuclei_model, args.cell_model, device=args.device, pixel_size=args.pixel_size
        )
    else:
        segmenter = ClassicalSegmenter(pixel_size=args.pixel_size)
    report = segment_directory(
        args.images,
        args.out,
        segmenter,
        workers=args.workers,
        mask_format=args.format,
        progress=not args.no_progress,
    )
    print(report)
    for image_id, reason in report.failed.items():
        print(f"  failed {image_id}: {reason}")
    return 1 if report.failed else 0


def _run_crop(args: argparse.Namespace) -> int:
    from .crops import CropConfig, build_store
    from .labels import CHANNELS, RGB_CHANNELS

    crop_flags = (
        args.crop_size,
        args.margin,
        args.keep_neighbours or None,
        args.normalisation,
        args.rgb or None,
    )
    config = None
    if any(flag is not None for flag in crop_flags):  # else an existing store keeps its settings
        defaults = CropConfig()
        config = CropConfig(
            crop_size=args.crop_size or defaults.crop_size,
            channels=RGB_CHANNELS if args.rgb else CHANNELS,
            margin=defaults.margin if args.margin is None else args.margin,
            keep_neighbours=args.keep_neighbours,
            normalisation=args.normalisation or defaults.normalisation,
        )
    report = build_store(
        args.images,
        args.masks,
        args.out,
        labels=args.labels,
        truth=args.truth,
        config=config,
        workers=args.workers,
        fields_per_commit=args.fields_per_commit,
        seed=args.seed,
    )
    print(
        f"added {report.cells_added} cells from {len(report.fields_added)} fields to {args.out} "
        f"({len(report.fields_skipped)} fields already there, {len(report.fields_failed)} failed)"
    )
    for image_id, reason in report.fields_failed.items():
        print(f"  failed {image_id}: {reason}")
    return 1 if report.fields_failed else 0


def _read_run_configs(path: str | None) -> dict:
    from .config import read_config_file

    return read_config_file(path) if path else {}


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import TrainConfig
    from .train import fit

    configs = _read_run_configs(args.config)
    if args.epochs is not None:
        configs["train"] = dataclasses.replace(configs.get("train", TrainConfig()), epochs=args.epochs)
    result = fit(args.store, args.out, resume=args.resume, progress=not args.no_progress, **configs)
    print(result.history.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"best checkpoint: {result.checkpoint}")
    return 0


def _run_lr_find(args: argparse.Namespace) -> int:
    from .train import lr_find

    result = lr_find(
        args.store,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_steps=args.steps,
        out=args.out,
        progress=not args.no_progress,
        **_read_run_configs(args.config),
    )
    print(f"suggested learning rate: {result.suggestion:.3g} (plot: {Path(args.out) / 'lr_find.png'})")
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from .embed import embed

    result = embed(
        args.checkpoint,
        args.store,
        out=args.out,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"wrote {len(result)} embeddings of dimension {result.X.shape[1]} to {args.out}")
    return 0


def _run_index(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import IndexConfig
    from .index import index_embeddings

    config = _read_run_configs(args.config).get("index", IndexConfig())
    overrides = {name: getattr(args, name) for name in ("kind", "nlist", "nprobe", "pq_m", "metric")}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    index = index_embeddings(args.embeddings, args.out, config, progress=not args.no_progress)
    print(f"wrote {index!r} to {args.out}")
    return 0


def _run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from .index import CellIndex, neighbours_table

    index = CellIndex.load(args.index)
    if args.nprobe is not None:
        index.nprobe = args.nprobe
    if args.cell:
        scores, cell_ids = index.search_cell(args.cell, args.k)
        names = args.cell
    else:
        scores, cell_ids = index.search(np.load(args.query, allow_pickle=False), args.k)
        names = list(range(len(scores)))
    table = neighbours_table(names, scores, cell_ids)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {len(table)} neighbours to {args.out}")
    else:
        print(table.to_string(index=False))
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    from .classify import predict_cells, write_predictions
    from .embed import read_embeddings

    embedded = read_embeddings(args.embeddings)
    probabilities = predict_cells(
        embedded,
        args.method,
        checkpoint=args.checkpoint,
        reference=args.reference,
        label_mode=args.label_mode,
        n_neighbors=args.k,
    )
    write_predictions(args.out, embedded, probabilities, args.method)
    print(f"wrote {args.method} probabilities of {len(probabilities)} cells to {args.out}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .classify import cell_targets, read_predictions
    from .evaluate import evaluate_cells, evaluate_submission

    if args.submission:
        if not args.truth:
            raise ValueError("--submission needs --truth (a synthetic data set root)")
        result = evaluate_submission(args.submission, args.truth, args.out, iou_threshold=args.iou)
        print(f"competition metric (IoU >= {args.iou}): {result}")
    else:
        cells, probabilities = read_predictions(args.predictions)
        positions, Y = cell_targets(cells, args.label_mode)
        if len(positions) == 0:
            raise ValueError(f"{args.predictions}: no cell carries {args.label_mode}")
        result = evaluate_cells(Y, probabilities[positions], args.out, threshold=args.threshold)
        print(f"cell-level AP against {args.label_mode} of {len(positions)} cells: {result}")
    frame = result.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        print(f"tables and figures in {args.out}")
    return 0


def _run_submit(args: argparse.Namespace) -> int:
    from .classify import read_predictions
    from .io import list_field_ids
    from .submission import build_submission, write_submission

    cells, probabilities = read_predictions(args.predictions)
    image_ids = list_field_ids(args.images) if args.images else None
    submission = build_submission(
        cells, probabilities, args.masks, image_ids=image_ids, min_confidence=args.min_confidence
    )
    write_submission(args.out, submission)
    print(f"wrote {len(submission.images)} images, {len(submission.predictions)} predictions to {args.out}")
    return 0


def _run_checkpoint_info(args: argparse.Namespace) -> int:
    from .models.checkpoint import describe_checkpoint

    print(describe_checkpoint(args.checkpoint))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from .analysis import label_statistics
    from .classify import cell_targets, predict_cells, read_predictions, write_predictions
    from .config import DataConfig, LossConfig, ModelConfig, TrainConfig
    from .crops import build_store, select_cells
    from .embed import Embeddings, embed
    from .evaluate import TruthDirectory, evaluate_cells, evaluate_submission, object_f1
    from .index import index_embeddings
    from .io import list_field_ids, read_field, read_labels, read_mask
    from .segment import segment_directory
    from .store import CellStore
    from .submission import build_submission, write_submission
    from .synthetic import generate_dataset, get_preset
    from .train import fit
    from .visualise import plot_label_statistics, save_channel_views

    out = Path(args.out)
    data = out / "data"
    steps = 9
    print(f"[1/{steps}] generating {args.images} synthetic fields ({args.preset} preset) in {data}")
    generate_dataset(data, args.images, get_preset(args.preset), seed=args.seed, workers=args.workers)

    print(f"[2/{steps}] analysing the labels")
    stats = label_statistics(read_labels(data / "train.csv"))
    print(stats.to_text())
    plot_label_statistics(stats, out / "analysis")

    ids = list_field_ids(data / "train")
    print(f"[3/{steps}] channel views of {ids[0]}")
    save_channel_views(read_field(data / "train", ids[0]), out / "channels", ids[0])

    print(f"[4/{steps}] segmenting the fields into cells")
    report = segment_directory(data / "train", out / "masks", workers=args.workers)
    scores = [
        object_f1(
            read_mask(data / "truth" / f"{i}_cellmask.png"), read_mask(out / "masks" / f"{i}_cellmask.png")
        )
        for i in ids
    ]
    print(
        f"  {sum(report.n_cells.values())} cells found; against the true masks: cell F1 at IoU 0.6 = "
        f"{np.mean([s.f1 for s in scores]):.3f}, mean IoU = {np.mean([s.mean_iou for s in scores]):.3f}"
    )

    print(f"[5/{steps}] cutting the cells out into a CellStore")
    built = build_store(
        data / "train",
        out / "masks",
        out / "store",
        labels=data / "train.csv",
        truth=data,
        workers=args.workers,
    )
    cells = CellStore.open(built.store).cells
    single, _ = select_cells(cells, "single_label")
    print(
        f"  {len(cells)} cells in {out / 'store'}; splits: "
        + ", ".join(f"{name} {count}" for name, count in cells["split"].value_counts().items())
        + f"; {len(single)} cells of single-label images"
    )

    print(f"[6/{steps}] training a small embedding model (ResNet-18, BCE + multi-label triplets)")
    result = fit(
        out / "store",
        out / "run",
        ModelConfig(arch="resnet18", in_chans=4),
        LossConfig(classification="bce", metric="triplet", miner="semihard"),
        DataConfig(label_mode="image_labels", batch_size=16, m_per_class=2),
        TrainConfig(epochs=args.epochs, seed=args.seed),
        resume=True,
    )
    columns = [
        c for c in ("epoch", "train_cls", "train_metric", "val_total", "val_macro_ap") if c in result.history
    ]
    print(result.history[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    print(f"[7/{steps}] embedding every cell and indexing the embeddings with FAISS")
    embedded = embed(result.checkpoint, out / "store", out=out / "embeddings", progress=False)
    index = index_embeddings(out / "embeddings", out / "index", progress=False)
    query = embedded.cell_ids[0]
    scores, neighbours = index.search_cell([query], 3)
    print(
        f"  {len(embedded)} cells of dimension {embedded.X.shape[1]}; most similar to {query}: "
        + ", ".join(f"{cell} ({score:.2f})" for cell, score in zip(neighbours[0], scores[0]))
    )

    print(f"[8/{steps}] classifying held-out cells by the linear head and by kNN over the training cells")
    held_out, reference = (
        Embeddings(embedded.X[mask], embedded.cells[mask].reset_index(drop=True), embedded.meta)
        for mask in (embedded.cells["split"] != "train", embedded.cells["split"] == "train")
    )
    for method in ("head", "knn"):
        probabilities = predict_cells(held_out, method, reference=reference, label_mode="image_labels")
        write_predictions(out / f"predictions-{method}", held_out, probabilities, method)
        positions, Y = cell_targets(held_out.cells, "true_labels")
        scores = evaluate_cells(Y, probabilities[positions], out / f"evaluation-{method}")
        print(f"  {method}: cell-level mAP against the true cell labels = {scores.map:.3f}")

    print(f"[9/{steps}] writing a Kaggle submission of the head's predictions and scoring it")
    cells, probabilities = read_predictions(out / "predictions-head")
    submission = build_submission(cells, probabilities, out / "masks", progress=False)
    write_submission(out / "submission.csv", submission)
    truth = {
        image_id: image
        for image_id, image in TruthDirectory(data).items()
        if image_id in set(cells["image_id"])
    }
    metric = evaluate_submission(submission, truth, out / "evaluation-submission", progress=False)
    print(f"  {out / 'submission.csv'}: competition mAP (IoU >= 0.6, predicted masks) = {metric.map:.3f}")
    print(f"done: see {out}/")
    return 0


# --------------------------------------------------------------------------- parser


def get_parser() -> argparse.ArgumentParser:
    """The ``hpa-embed`` argument parser (one subparser per stage)."""
    parser = argparse.ArgumentParser(
        prog="hpa-embed",
        description="Single-cell embeddings of Human Protein Atlas images.",
    )
    parser.add_argument("--version", action="version", version=f"hpa_embed {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", metavar="<stage>", required=True)

    demo = commands.add_parser(
        "demo",
        help="run the pipeline end to end on built-in synthetic data",
        description="Generate a small synthetic HPA set and run every stage on it.",
    )
    demo.add_argument("--out", default="demo-output", help="output directory (default: demo-output)")
    demo.add_argument("--images", type=int, default=12, help="number of synthetic fields")
    demo.add_argument("--preset", default="small", help="synthetic preset (default: small)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=2, help="training epochs")
    demo.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    demo.set_defaults(run=_run_demo)

    generate = commands.add_parser(
        "generate",
        help="write a synthetic HPA data set (Kaggle layout + true masks and labels)",
        description="Write <out>/train/<ID>_{red,green,blue,yellow}.png, <out>/train.csv and the "
        "truth (<out>/truth/: cell and nucleus masks, per-cell labels).",
    )
    generate.add_argument("out", help="output directory")
    generate.add_argument("--images", type=int, default=16, help="number of fields")
    generate.add_argument("--preset", default="standard", help="tiny | small | standard | ...")
    generate.add_argument("--size", type=int, help="field side in pixels (overrides the preset)")
    generate.add_argument("--difficulty", type=float, help="0 (easy) .. 1 (hard)")
    generate.add_argument("--bit-depth", type=int, choices=(8, 16), help="8 or 16")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    generate.set_defaults(run=_run_generate)

    analyse = commands.add_parser(
        "analyse",
        aliases=["analyze"],
        help="label statistics of a train.csv (tables and PNG plots)",
        description="Label counts per class, labels per image and the most common label "
        "combinations, for the 2021 (ID,Label) and 2018 (Id,Target) formats.",
    )
    analyse.add_argument("labels", help="train.csv")
    analyse.add_argument("--out", help="directory for the plots (default: <csv dir>/analysis)")
    analyse.add_argument("--scheme", choices=("hpa2021", "hpa2018"), help="override the scheme")
    analyse.add_argument("--top", type=int, default=10, help="combinations to list")
    analyse.set_defaults(run=_run_analyse)

    segment = commands.add_parser(
        "segment",
        help="segment every field of a directory into cell and nucleus masks",
        description="Write <out>/<ID>_cellmask.png and <ID>_nucleimask.png (16-bit; nucleus id == "
        "cell id) for every field; fields already done are skipped, unreadable ones reported.",
    )
    segment.add_argument("images", help="directory of <ID>_<channel> images")
    segment.add_argument("--out", required=True, help="directory for the masks")
    segment.add_argument("--segmenter", choices=("classical", "hpacellseg"), default="classical")
    segment.add_argument("--pixel-size", type=float, help="micrometres per pixel (default: measured)")
    segment.add_argument("--format", choices=("png", "npz"), default="png", help="mask file format")
    segment.add_argument("--workers", type=int, help="processes (default: all cores)")
    segment.add_argument("--nuclei-model", help="hpacellseg: nucleus model weights file")
    segment.add_argument("--cell-model", help="hpacellseg: cell model weights file")
    segment.add_argument("--device", default="cpu", help="hpacellseg: cpu, cuda or cuda:N")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")
    segment.set_defaults(run=_run_segment)

    crop = commands.add_parser(
        "crop",
        help="cut every cell out into a CellStore (resumable, appendable)",
        description="Crop the cells of every field into a CellStore directory (cells.parquet + "
        "crop chunks). Re-running resumes; pointing at new images appends.",
    )
    crop.add_argument("images", help="directory of <ID>_<channel> images")
    crop.add_argument("--masks", required=True, help="directory of <ID>_cellmask / _nucleimask files")
    crop.add_argument("--out", required=True, help="the CellStore directory")
    crop.add_argument("--labels", help="train.csv with the image labels")
    crop.add_argument("--truth", help="synthetic data set root: attach the true cell labels")
    crop.add_argument("--crop-size", type=int, help="crop side in pixels (default 128)")
    crop.add_argument("--margin", type=float, help="bounding-box margin, fraction of its side")
    crop.add_argument("--keep-neighbours", action="store_true", help="do not mask out other cells")
    crop.add_argument("--normalisation", choices=("field_percentile", "none"))
    crop.add_argument("--rgb", action="store_true", help="store red, green, blue only")
    crop.add_argument("--workers", type=int, help="processes (default: all cores)")
    crop.add_argument("--fields-per-commit", type=int, default=32)
    crop.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    crop.set_defaults(run=_run_crop)

    train = commands.add_parser(
        "train",
        help="train a cell embedding model on a CellStore",
        description="Train (or resume) a run: history.csv, checkpoints/last and checkpoints/best in "
        "--out. The TOML config holds [model], [loss], [data] and [train] tables (see "
        "examples/run.toml); a missing table takes the defaults. Under torchrun it trains with DDP.",
    )
    train.add_argument("--store", required=True, help="the CellStore directory")
    train.add_argument("--config", help="run configuration (TOML)")
    train.add_argument("--out", required=True, help="the run directory")
    train.add_argument("--epochs", type=int, help="override train.epochs")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_run_train)

    lr_find = commands.add_parser(
        "lr-find",
        help="learning-rate range test: loss vs LR plot and a suggested LR",
        description="Exponential LR sweep on the training cells; writes lr_find.png and lr_find.csv.",
    )
    lr_find.add_argument("--store", required=True, help="the CellStore directory")
    lr_find.add_argument("--config", help="run configuration (TOML)")
    lr_find.add_argument("--out", required=True, help="directory for the plot and the numbers")
    lr_find.add_argument("--start-lr", type=float, default=1e-7)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--steps", type=int, default=200)
    lr_find.add_argument("--no-progress", action="store_true", help="no progress bar")
    lr_find.set_defaults(run=_run_lr_find)

    embed = commands.add_parser(
        "embed",
        help="embed the cells of a CellStore with a trained checkpoint",
        description="Write <out>/embeddings.npy (float32 [N, D], L2-normalised), <out>/cells.parquet "
        "(the store's rows in the same order) and <out>/embed.json. Under torchrun each process "
        "embeds a shard.",
    )
    embed.add_argument("checkpoint", help="checkpoint directory (e.g. runs/a/checkpoints/best)")
    embed.add_argument("--store", required=True, help="the CellStore directory")
    embed.add_argument("--out", required=True, help="the embeddings directory")
    embed.add_argument("--split", choices=("train", "val", "test"), help="only this split")
    embed.add_argument("--batch-size", type=int, default=128)
    embed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.set_defaults(run=_run_embed)

    index = commands.add_parser(
        "index",
        help="build a FAISS index over an embeddings directory",
        description="Exact (flat) below index.flat_threshold cells, IVF above it (optionally with PQ).",
    )
    index.add_argument("embeddings", help="embeddings directory (hpa-embed embed)")
    index.add_argument("--out", required=True, help="the index directory")
    index.add_argument("--config", help="TOML with an [index] table")
    index.add_argument("--kind", choices=("auto", "flat", "ivf", "ivfpq"))
    index.add_argument("--nlist", type=int, help="IVF lists (default: from N)")
    index.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    index.add_argument("--pq-m", type=int, help="PQ sub-quantisers")
    index.add_argument("--metric", choices=("cosine", "l2"))
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(run=_run_index)

    search = commands.add_parser(
        "search",
        help="find the cells most similar to given cells or embeddings",
        description="Nearest neighbours from an index: of indexed cells (--cell) or of query "
        "embeddings (--query, a float32 [n, D] .npy). Prints or writes query, rank, cell_id, score.",
    )
    search.add_argument("index", help="index directory (hpa-embed index)")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--cell", nargs="+", help="cell ids in the index")
    query.add_argument("--query", help="query embeddings (.npy)")
    search.add_argument("-k", type=int, default=10, help="neighbours per query")
    search.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    search.add_argument("--out", help="write the neighbours as CSV")
    search.set_defaults(run=_run_search)

    classify = commands.add_parser(
        "classify",
        help="per-cell class probabilities by the linear head or kNN",
        description="Write <out>/probabilities.npy (float32 [N, 19]), <out>/cells.parquet and "
        "<out>/images.csv (image level: the union of the cells, i.e. the maximum).",
    )
    classify.add_argument("embeddings", help="embeddings of the cells to classify")
    classify.add_argument("--out", required=True, help="the predictions directory")
    classify.add_argument("--method", choices=("head", "knn"), default="head")
    classify.add_argument("--checkpoint", help="head: checkpoint (default: the embeddings' own)")
    classify.add_argument("--reference", help="knn: embeddings of labelled cells (e.g. the train split)")
    classify.add_argument(
        "--label-mode",
        choices=("image_labels", "true_labels"),
        default="image_labels",
        help="knn: the reference cells' labels",
    )
    classify.add_argument("-k", type=int, default=10, help="knn: neighbours")
    classify.set_defaults(run=_run_classify)

    evaluate = commands.add_parser(
        "evaluate",
        help="score predictions: cell-level AP or the competition metric",
        description="With a predictions directory: per-class AP against the cells' labels, per-class "
        "precision/recall and confusion matrices. With --submission: the competition metric (mAP "
        "at IoU >= 0.6) against a synthetic data set's true masks and labels.",
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="predictions directory (hpa-embed classify)")
    source.add_argument("--submission", help="submission CSV (hpa-embed submit)")
    evaluate.add_argument("--truth", help="--submission: synthetic data set root with truth/")
    evaluate.add_argument(
        "--label-mode",
        choices=("image_labels", "true_labels"),
        default="true_labels",
        help="--predictions: which labels are the truth",
    )
    evaluate.add_argument("--threshold", type=float, default=0.5, help="for precision/recall")
    evaluate.add_argument("--iou", type=float, default=0.6, help="mask IoU of a match")
    evaluate.add_argument("--out", help="directory for the tables and figures")
    evaluate.set_defaults(run=_run_evaluate)

    submit = commands.add_parser(
        "submit",
        help="write a Kaggle submission CSV from per-cell predictions",
        description="ID,ImageWidth,ImageHeight,PredictionString with 'label confidence mask' "
        "triples, masks as COCO RLE + zlib + base64.",
    )
    submit.add_argument("predictions", help="predictions directory (hpa-embed classify)")
    submit.add_argument("--masks", required=True, help="the cell masks the cells were cut along")
    submit.add_argument("--out", required=True, help="submission CSV")
    submit.add_argument("--images", help="image directory: list every field, also those without cells")
    submit.add_argument("--min-confidence", type=float, default=0.0, help="drop lower predictions")
    submit.set_defaults(run=_run_submit)

    info = commands.add_parser("checkpoint-info", help="describe a checkpoint directory")
    info.add_argument("checkpoint", help="checkpoint directory (model.safetensors + config.json)")
    info.set_defaults(run=_run_checkpoint_info)

    channels = commands.add_parser(
        "channels",
        help="PNG views of each channel of a field and its RGBY composite",
    )
    channels.add_argument("directory", help="directory holding <ID>_<channel> images")
    channels.add_argument("image_id", help="the field's ID")
    channels.add_argument("--out", default="channels", help="output directory")
    channels.add_argument("--rgb", action="store_true", help="read red, green, blue only")
    channels.set_defaults(run=_run_channels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hpa-embed``; returns the exit code (2 for bad input, with the reason on stderr)."""

    args = get_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing
    try:
        return args.run(args)
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"hpa-embed {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
