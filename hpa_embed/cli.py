"""The ``hpa-embed`` command line: one subcommand per stage, each a short call into the public API.

``hpa-embed run CONFIG.toml --out DIR`` runs every stage from one config
(:func:`hpa_embed.pipeline.run_pipeline`); ``hpa-embed demo`` is that call with the shipped demo
config. The other subcommands run one stage each. Exit status: 0 on success (fields that could not
be used are skipped, listed and written to ``skipped.csv`` beside the output), 1 when no field
succeeded or, with ``--strict``, when any was skipped, or when batches of fields were lost to a
dead worker (run again), 2 for bad arguments and for the library's own input and configuration
errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .batch import SKIPPED_FILE, BatchError, check_skipped, describe_skipped
from .io import HpaEmbedError, atomic_path

log = logging.getLogger("hpa_embed")


def _format_table(frame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}")


# --------------------------------------------------------------------------- the whole run


def _print_skipped(skipped: dict[str, str], out: Path) -> None:
    """The skipped fields, and where the full list is."""
    if skipped:
        print("\n".join(describe_skipped(skipped)))
        print(f"{len(skipped)} field(s) skipped, listed with the reasons in {out / SKIPPED_FILE}")


def _print_run(result) -> None:
    print(f"stages run: {', '.join(result.ran) or 'none'}; up to date: {', '.join(result.skipped) or 'none'}")
    for stage, skipped in result.fields_skipped.items():
        if skipped:
            print(f"{stage}:")
            _print_skipped(skipped, result.paths.out)
    summaries = result.summaries
    segmentation = summaries.get("segment", {}).get("against_truth", {}).get("cellmask")
    if segmentation:
        print(f"segmentation against the true masks: cell F1 at IoU 0.6 = {segmentation['f1']:.3f}, "
              f"mean IoU = {segmentation['mean_iou']:.3f}")
    if "crop" in summaries:
        counts = summaries["crop"]["cells_per_split"]
        print(f"cells: {summaries['crop']['cells']} ("
              + ", ".join(f"{split} {count}" for split, count in counts.items()) + ")")
    evaluation = result.evaluation
    if evaluation:
        print(f"evaluation on the {' + '.join(evaluation['splits'])} split(s):")
        for method, scores in evaluation["methods"].items():
            figures = ", ".join(f"{name} {value:.3f}" for name, value in scores["scores"].items())
            print(f"  {method}: {scores['cells']} cells of {scores['images']} images: {figures}")
        if evaluation.get("note"):
            print(f"  note: {evaluation['note']}")
    maps = summaries.get("map", {})
    if maps.get("enabled"):
        print(f"maps in {result.paths.maps}/; the interactive cell map: {maps['files']['interactive']}")
    if "report" in summaries:
        print(f"the report: {summaries['report']['report']} (open it in a browser)")
    print(f"results in {result.paths.out}/ (evaluation/summary.json, stages/*.json)")


def _run_run(args: argparse.Namespace) -> int:
    from .config import read_config_file
    from .pipeline import run_pipeline
    from .recipes import recipe_config

    config = read_config_file(args.config)
    if args.recipe:
        config = recipe_config(args.recipe, config)
    result = run_pipeline(config, args.out, from_stage=args.from_stage, until_stage=args.until_stage,
                          workers=args.workers, progress=not args.no_progress, strict=args.strict,
                          executor=args.dask_scheduler)
    _print_run(result)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .pipeline import load_named_config, run_pipeline

    result = run_pipeline(load_named_config("demo"), args.out, workers=args.workers,
                          progress=not args.no_progress)
    _print_run(result)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from .pipeline import write_run_report

    print(f"wrote {write_run_report(args.folder)}")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from .config import config_template, read_config_file, to_toml

    text = config_template() if args.action == "template" else to_toml(read_config_file(args.file))
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


# --------------------------------------------------------------------------- one stage each


def _run_generate(args: argparse.Namespace) -> int:
    from .synthetic import generate_dataset, get_preset

    overrides = {name: getattr(args, name) for name in ("size", "difficulty", "bit_depth")
                 if getattr(args, name) is not None}
    config = dataclasses.replace(get_preset(args.preset), **overrides)
    out = generate_dataset(args.out, args.images, config, seed=args.seed, workers=args.workers,
                           progress=not args.no_progress)
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
    from .config import SegmentConfig
    from .segment import create_segmenter, segment_directory

    config = SegmentConfig(segmenter=args.segmenter, pixel_size=args.pixel_size,
                           nuclei_model=args.nuclei_model, cell_model=args.cell_model, device=args.device,
                           mask_format=args.format)
    report = segment_directory(args.images, args.out, create_segmenter(config), workers=args.workers,
                               mask_format=config.mask_format, progress=not args.no_progress,
                               overlay=args.overlay, executor=args.dask_scheduler, shard=args.shard)
    print(report)
    _print_skipped(report.failed, Path(args.out))
    check_skipped(report.failed, len(report.done) + len(report.skipped), args.strict, args.images)
    return 0


def _run_crop(args: argparse.Namespace) -> int:
    from .config import CropConfig
    from .crops import build_store
    from .labels import CHANNELS, RGB_CHANNELS

    flags = {"crop_size": args.crop_size, "margin": args.margin, "normalisation": args.normalisation,
             "keep_neighbours": args.keep_neighbours or None, "channels": RGB_CHANNELS if args.rgb else None}
    given = {name: value for name, value in flags.items() if value is not None}
    # without crop flags an existing store keeps its own settings
    config = CropConfig(**{"channels": CHANNELS, **given}) if given else None
    report = build_store(args.images, args.masks, args.out, labels=args.labels, truth=args.truth,
                         config=config, workers=args.workers, fields_per_commit=args.fields_per_commit,
                         seed=args.seed, executor=args.dask_scheduler, shard=args.shard)
    print(f"added {report.cells_added} cells from {len(report.fields_added)} fields to {args.out} "
          f"({len(report.fields_skipped)} fields already there, {len(report.fields_failed)} skipped)")
    _print_skipped(report.fields_failed, Path(args.out))
    check_skipped(report.fields_failed, len(report.fields_added) + len(report.fields_skipped), args.strict,
                  args.images)
    return 0


def _run_merge_stores(args: argparse.Namespace) -> int:
    from .crops import merge_stores

    store = merge_stores(args.parts, args.out, seed=args.seed)
    print(f"merged {len(args.parts)} part stores into {args.out}: {len(store)} cells of "
          f"{store.cells['image_id'].nunique()} fields")
    return 0


def _training_config(args: argparse.Namespace):
    from .config import RunConfig, read_config_file

    config = read_config_file(args.config) if args.config else RunConfig()
    if getattr(args, "epochs", None) is not None:
        config = config.replace(train=dataclasses.replace(config.train, epochs=args.epochs))
    if args.device is not None:
        config = config.replace(train=dataclasses.replace(config.train, device=args.device))
    return config


def _run_train(args: argparse.Namespace) -> int:
    from .train import fit

    config = _training_config(args)
    result = fit(args.store, args.out, config.model, config.loss, config.data, config.train,
                 resume=args.resume, progress=not args.no_progress)
    print(_format_table(result.history))
    print(f"best checkpoint: {result.checkpoint}")
    return 0


def _run_lr_find(args: argparse.Namespace) -> int:
    from .train import lr_find

    config = _training_config(args)
    result = lr_find(args.store, config.model, config.loss, config.data, config.train, start_lr=args.start_lr,
                     end_lr=args.end_lr, num_steps=args.steps, out=args.out, progress=not args.no_progress)
    print(f"suggested learning rate: {result.suggestion:.3g} (plot: {Path(args.out) / 'lr_find.png'})")
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from .embed import embed_store

    result = embed_store(args.checkpoint, args.store, out=args.out, split=args.split,
                         batch_size=args.batch_size, device=args.device or "auto",
                         progress=not args.no_progress)
    print(f"wrote {len(result)} embeddings of dimension {result.X.shape[1]} to {args.out}")
    _print_skipped(result.meta["skipped"], Path(args.out))
    check_skipped(result.meta["skipped"], len(result), args.strict, args.store)
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from .config import IndexConfig, read_config_file
    from .index import index_embeddings

    config = read_config_file(args.config).index if args.config else IndexConfig()
    overrides = {name: getattr(args, name) for name in ("kind", "nlist", "nprobe", "pq_m", "metric")}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    index = index_embeddings(args.embeddings, args.out, config, progress=not args.no_progress)
    print(f"wrote {index!r} to {args.out}")
    return 0


def _run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from .index import CellIndex, neighbours_table

    if args.montage and not (args.store and args.cell and len(args.cell) == 1):
        raise HpaEmbedError("--montage needs one --cell and the --store that holds the crops")
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
    store = None
    if args.store:
        from .store import CellStore
        from .visualise.galleries import describe_cells

        store = CellStore.open(args.store)
        described = describe_cells(store.cells, table["cell_id"].tolist(), store.scheme)
        table.insert(3, "image_id", described["image_id"].to_numpy())
        table.insert(4, "labels", described["labels"].to_numpy())
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {len(table)} neighbours to {args.out}")
    elif store is not None:
        for query in describe_cells(store.cells, args.cell or [], store.scheme).itertuples(index=False):
            print(f"query {query.cell_id}: image {query.image_id}, labels {query.labels}")
        print(_format_table(table))
        print("labels: the cells' true labels where the store has them, else their image's labels")
    else:
        print(table.to_string(index=False))
    if args.montage:
        from .visualise import plot_neighbours

        score_name = "cosine" if index.metric == "cosine" else "sq. L2"
        plot_neighbours(store, args.cell[0], cell_ids[0], scores[0], args.montage, score_name=score_name)
        print(f"wrote {args.montage}")
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    from .classify import predict_cells, write_predictions
    from .embed import read_embeddings

    embedded = read_embeddings(args.embeddings, mmap=True)
    probabilities = predict_cells(embedded, args.method, checkpoint=args.checkpoint, reference=args.reference,
                                  label_mode=args.label_mode, n_neighbors=args.k, negative=args.negative,
                                  fusion_weight=args.fusion_weight, training_run=args.training_run)
    write_predictions(args.out, embedded, probabilities, args.method)
    print(f"wrote {args.method} probabilities of {len(probabilities)} cells to {args.out}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .config import EVALUATION_SPLITS
    from .evaluate import evaluate_predictions, evaluate_submission
    from .visualise import plot_evaluation

    if args.submission:
        if not args.truth:
            raise HpaEmbedError("--submission needs --truth (a synthetic data set root)")
        result = evaluate_submission(args.submission, args.truth, args.out, iou_threshold=args.iou,
                                     progress=not args.no_progress)
        print(f"competition metric (IoU >= {args.iou}) over the images of the submission: {result}")
        print(_format_table(result.to_frame()))
        return 0
    splits = EVALUATION_SPLITS[args.split]
    if "train" in splits:
        print(f"note: --split {args.split} scores cells the model was trained on; the scores are optimistic")
    summary = evaluate_predictions(args.predictions, args.out, splits=splits, truth=args.truth,
                                   label_mode=args.label_mode, threshold=args.threshold,
                                   progress=not args.no_progress)
    print(f"{summary['cells']} cells of {summary['images']} images ({' + '.join(splits)}): "
          + ", ".join(f"{name} {value:.3f}" for name, value in summary["scores"].items()))
    if args.out:
        plot_evaluation(args.out)
        print(f"tables and figures in {args.out}")
    return 0


def _run_map(args: argparse.Namespace) -> int:
    from .visualise import UMAPProjector, draw_cell_maps

    projector = UMAPProjector(n_neighbors=args.umap_neighbors, min_dist=args.min_dist)
    written = draw_cell_maps(args.embeddings, args.store, args.out, index=args.index,
                             predictions=args.predictions, n_neighbors=args.neighbours, projector=projector,
                             interactive=not args.no_interactive, progress=not args.no_progress)
    for name, path in written.items():
        print(f"wrote {path}" + (" (open it in a browser)" if name == "interactive" else ""))
    return 0


def _run_export_h5ad(args: argparse.Namespace) -> int:
    from .exchange import export_anndata

    adata = export_anndata(args.source, args.out, method=args.method)
    print(f"wrote {adata.n_obs} cells x {adata.n_vars} dimensions to {args.out} "
          f"(obsm: {', '.join(adata.obsm) or 'none'})")
    return 0


def _run_import_embeddings(args: argparse.Namespace) -> int:
    from .exchange import import_embeddings

    result = import_embeddings(args.source, cells=args.cells, key=args.key, out=args.out,
                               id_column=args.id_column)
    print(f"wrote {len(result)} embeddings of dimension {result.X.shape[1]} to {args.out}")
    return 0


def _run_submit(args: argparse.Namespace) -> int:
    from .classify import read_predictions
    from .config import EVALUATION_SPLITS
    from .io import list_field_ids
    from .submission import build_submission, write_submission

    cells, probabilities = read_predictions(args.predictions)
    if args.split:
        chosen = cells["split"].isin(EVALUATION_SPLITS[args.split]).to_numpy()
        cells, probabilities = cells[chosen].reset_index(drop=True), probabilities[chosen]
    image_ids = list_field_ids(args.images) if args.images else None
    submission = build_submission(cells, probabilities, args.masks, image_ids=image_ids,
                                  min_confidence=args.min_confidence, progress=not args.no_progress)
    write_submission(args.out, submission)
    print(f"wrote {len(submission.images)} images, {len(submission.predictions)} predictions to {args.out}")
    return 0


def _run_checkpoint_info(args: argparse.Namespace) -> int:
    from .models import describe_checkpoint

    print(describe_checkpoint(args.checkpoint))
    return 0


# --------------------------------------------------------------------------- parser


def _shared_parsers() -> dict[str, argparse.ArgumentParser]:
    """Flags several subcommands share, one parent parser each."""
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=int, help="processes for per-field work (default: all cores)")
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument("--no-progress", action="store_true", help="no progress bars")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's; else cuda if present)")
    strict = argparse.ArgumentParser(add_help=False)
    strict.add_argument("--strict", action="store_true",
                        help="exit with status 1 when any field is skipped (default: when none succeeds)")
    dask = argparse.ArgumentParser(add_help=False)
    dask.add_argument("--dask-scheduler", metavar="ADDRESS",
                      help="run the per-field tasks on this Dask scheduler (e.g. tcp://host:8786); the "
                      "input and output paths must be on storage its workers share (docs/cluster.md)")
    shard = argparse.ArgumentParser(add_help=False)
    shard.add_argument("--shard", type=_shard, metavar="I/N",
                       help="only shard I of N (0-based) of the fields, for array jobs, e.g. "
                       "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-(N-1)")
    return {"verbosity": verbosity, "workers": workers, "progress": progress, "device": device,
            "strict": strict, "dask": dask, "shard": shard}


def _shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> ``(I, N)`` (see :func:`hpa_embed.executors.select_shard`)."""
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def get_parser() -> argparse.ArgumentParser:
    """The ``hpa-embed`` argument parser (one subparser per stage)."""
    from .pipeline import STAGES
    from .recipes import RECIPES

    shared = _shared_parsers()
    parser = argparse.ArgumentParser(prog="hpa-embed",
                                     description="Single-cell embeddings of Human Protein Atlas images.")
    parser.add_argument("--version", action="version", version=f"hpa_embed {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    def add(name: str, run, help: str, parents: Sequence[str] = (), **kwargs) -> argparse.ArgumentParser:
        parent_parsers = [shared["verbosity"], *(shared[p] for p in parents)]
        sub = commands.add_parser(name, help=help, parents=parent_parsers, **kwargs)
        sub.set_defaults(run=run)
        return sub

    run = add("run", _run_run, "run every stage of a config: fields to evaluation (resumable)",
              ("workers", "progress", "strict", "dask"),
              description="Run the stages input, segment, crop, train, embed, index, classify, evaluate, "
              "map and report from one TOML config into --out. Stages whose output is up to date are "
              "skipped; a config change reruns the stages it touches; an interrupted run resumes. See "
              "`hpa-embed config template` for every key.")
    run.add_argument("config", help="run configuration (TOML)")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--from", dest="from_stage", choices=STAGES, help="rerun from this stage on")
    run.add_argument("--until", dest="until_stage", choices=STAGES, help="stop after this stage")
    run.add_argument("--recipe", choices=RECIPES,
                     help="a weak-label recipe on top of the config (its [data], [loss], [classify])")

    report = add("report", _run_report, "(re)write a run's report.html from what its stages wrote",
                 description="One HTML page with the run's config, every stage's figures and the scores; "
                 "it opens from disk with no network. `hpa-embed run` writes it as its last stage.")
    report.add_argument("folder", metavar="RUN", help="a run folder (hpa-embed run --out)")

    demo = add("demo", _run_demo, "run the whole pipeline on built-in synthetic data",
               ("workers", "progress"),
               description="`hpa-embed run` with the demo config shipped with the package "
               "(hpa_embed/configs/demo.toml): small synthetic fields, a small ResNet-18.")
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")

    config = add("config", _run_config, "print a commented config template, or check and expand a config",
                 description="template: every section and key with its default and documentation. "
                 "check FILE: read FILE (refusing unknown keys and bad values) and print it in full.")
    config.add_argument("action", choices=("template", "check"))
    config.add_argument("file", nargs="?", help="check: the config file")
    config.add_argument("--out", help="write to this file instead of printing")

    generate = add("generate", _run_generate, "write a synthetic HPA data set (Kaggle layout + truth)",
                   ("workers", "progress"),
                   description="Write <out>/train/<ID>_{red,green,blue,yellow}.png, <out>/train.csv and the "
                   "truth (<out>/truth/: cell and nucleus masks, per-cell labels).")
    generate.add_argument("out", help="output directory")
    generate.add_argument("--images", type=int, default=16, help="number of fields")
    generate.add_argument("--preset", default="standard", help="tiny | small | standard")
    generate.add_argument("--size", type=int, help="field side in pixels (overrides the preset)")
    generate.add_argument("--difficulty", type=float, help="0 (easy) .. 1 (hard)")
    generate.add_argument("--bit-depth", type=int, choices=(8, 16), help="8 or 16")
    generate.add_argument("--seed", type=int, default=0)

    analyse = add("analyse", _run_analyse, "label statistics of a train.csv (tables and PNG plots)",
                  aliases=["analyze"],
                  description="Label counts per class, labels per image and the most common label "
                  "combinations, for the 2021 (ID,Label) and 2018 (Id,Target) formats.")
    analyse.add_argument("labels", help="train.csv")
    analyse.add_argument("--out", help="directory for the plots (default: <csv dir>/analysis)")
    analyse.add_argument("--scheme", choices=("hpa2021", "hpa2018"), help="override the scheme")
    analyse.add_argument("--top", type=int, default=10, help="combinations to list")

    segment = add("segment", _run_segment, "segment every field of a directory into cell and nucleus masks",
                  ("workers", "progress", "device", "strict", "dask", "shard"),
                  description="Write <out>/<ID>_cellmask.png and <ID>_nucleimask.png (16-bit label images: "
                  "pixel value = cell id, 0 = background; nucleus id == cell id) for every field; fields "
                  "already done are skipped; unreadable ones are skipped and listed in <out>/skipped.csv. "
                  "With --overlay also <ID>_overlay.png, an RGB picture to look at (the masks stay label "
                  "images).")
    segment.add_argument("images", help="directory of <ID>_<channel> images")
    segment.add_argument("--out", required=True, help="directory for the masks")
    segment.add_argument("--segmenter", choices=("classical", "hpacellseg"), default="classical")
    segment.add_argument("--pixel-size", type=float, help="micrometres per pixel (default: measured)")
    segment.add_argument("--format", choices=("png", "npz"), default="png", help="mask file format")
    segment.add_argument("--nuclei-model", help="hpacellseg: nucleus model weights file")
    segment.add_argument("--cell-model", help="hpacellseg: cell model weights file")
    segment.add_argument("--overlay", action="store_true",
                         help="also write <ID>_overlay.png: cell (white) and nucleus (cyan) outlines on the "
                         "RGBY composite, beside the masks")
    segment.set_defaults(device="cpu")

    crop = add("crop", _run_crop, "cut every cell out into a CellStore (resumable, appendable)",
               ("workers", "strict", "dask", "shard"),
               description="Crop the cells of every field into a CellStore directory (cells.parquet + "
               "crop chunks). Re-running resumes; pointing at new images appends.")
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
    crop.add_argument("--fields-per-commit", type=int, default=32)
    crop.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")

    merge = add("merge-stores", _run_merge_stores, "join the part stores of `crop --shard` runs into one",
                description="Merge part stores (same crop settings, disjoint fields) into a new store OUT: "
                "their full crop chunks are hard-linked, not copied; the images get their train/val/test "
                "split as one run over all the fields would give them. Overlapping or inconsistent parts "
                "are refused.")
    merge.add_argument("out", metavar="OUT", help="the merged CellStore directory (must not exist)")
    merge.add_argument("parts", nargs="+", metavar="PART", help="part stores (crop --shard I/N --out PART)")
    merge.add_argument("--seed", type=int, default=0, help="seed of the split (as given to crop)")

    train = add("train", _run_train, "train a cell embedding model on a CellStore", ("progress", "device"),
                description="Train (or resume) a run: history.csv, checkpoints/last and checkpoints/best in "
                "--out. The config's [model], [loss], [data] and [train] tables are used (see "
                "`hpa-embed config template`). Under torchrun it trains with DDP.")
    train.add_argument("--store", required=True, help="the CellStore directory")
    train.add_argument("--config", help="run configuration (TOML)")
    train.add_argument("--out", required=True, help="the run directory")
    train.add_argument("--epochs", type=int, help="override [train] epochs")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")

    lr_find = add("lr-find", _run_lr_find, "learning-rate range test: loss vs LR plot and a suggested LR",
                  ("progress", "device"),
                  description="Exponential LR sweep on the training cells, with the batches `train` would "
                  "draw; writes lr_find.png and lr_find.csv. Each step costs one training batch.")
    lr_find.add_argument("--store", required=True, help="the CellStore directory")
    lr_find.add_argument("--config", help="run configuration (TOML)")
    lr_find.add_argument("--out", required=True, help="directory for the plot and the numbers")
    lr_find.add_argument("--start-lr", type=float, default=1e-7)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--steps", type=int, default=100)

    embed = add("embed", _run_embed, "embed the cells of a CellStore with a trained checkpoint",
                ("progress", "device", "strict"),
                description="Write <out>/embeddings.npy (float32 [N, D], L2-normalised), <out>/cells.parquet "
                "(the store's rows in the same order) and <out>/embed.json. Under torchrun each process "
                "embeds a shard.")
    embed.add_argument("checkpoint", help="checkpoint directory (e.g. runs/a/checkpoints/best)")
    embed.add_argument("--store", required=True, help="the CellStore directory")
    embed.add_argument("--out", required=True, help="the embeddings directory")
    embed.add_argument("--split", choices=("train", "val", "test"), help="only this split")
    embed.add_argument("--batch-size", type=int, default=128)

    index = add("index", _run_index, "build a FAISS index over an embeddings directory", ("progress",),
                description="Exact (flat) below [index] flat_threshold cells, IVF above it (optionally PQ).")
    index.add_argument("embeddings", help="embeddings directory (hpa-embed embed)")
    index.add_argument("--out", required=True, help="the index directory")
    index.add_argument("--config", help="TOML with an [index] table")
    index.add_argument("--kind", choices=("auto", "flat", "ivf", "ivfpq"))
    index.add_argument("--nlist", type=int, help="IVF lists (default: from N)")
    index.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    index.add_argument("--pq-m", type=int, help="PQ sub-quantisers")
    index.add_argument("--metric", choices=("cosine", "l2"))

    search = add("search", _run_search, "find the cells most similar to given cells or embeddings",
                 description="Nearest neighbours from an index: of indexed cells (--cell) or of query "
                 "embeddings (--query, a float32 [n, D] .npy). Prints or writes query, rank, cell_id, score; "
                 "with --store also each cell's image_id and labels (class names: true labels where the "
                 "store has them, else the image's). --montage draws the query cell beside its neighbours.")
    search.add_argument("index", help="index directory (hpa-embed index)")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--cell", nargs="+", help="cell ids in the index")
    query.add_argument("--query", help="query embeddings (.npy)")
    search.add_argument("-k", type=int, default=10, help="neighbours per query")
    search.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    search.add_argument("--out", help="write the neighbours as CSV")
    search.add_argument("--store", help="the CellStore of the indexed cells: adds image and labels")
    search.add_argument("--montage", help="PNG of the query cell and its k neighbours (one --cell; "
                        "needs --store)")

    classify = add("classify", _run_classify, "per-cell class probabilities by the linear head or kNN",
                   description="Write <out>/probabilities.npy (float32 [N, 19]), <out>/cells.parquet and "
                   "<out>/images.csv (image level: the union of the cells, i.e. the maximum).")
    classify.add_argument("embeddings", help="embeddings of the cells to classify")
    classify.add_argument("--out", required=True, help="the predictions directory")
    classify.add_argument("--method", choices=("head", "knn"), default="head")
    classify.add_argument("--checkpoint", help="head: checkpoint (default: the embeddings' own)")
    classify.add_argument("--reference", help="knn: embeddings of labelled cells (e.g. the train split)")
    classify.add_argument("--label-mode", choices=("image_labels", "training_targets", "true_labels"),
                          default="image_labels", help="knn: the reference cells' labels (training_targets: "
                          "what the model of --training-run trained on)")
    classify.add_argument("--training-run", help="knn with --label-mode training_targets: the training "
                          "run directory (<run>/train)")
    classify.add_argument("-k", type=int, default=10, help="knn: neighbours")
    classify.add_argument("--negative", choices=("complement", "model"), default="complement",
                          help="Negative score: max(model, 1 - highest other class), or the model's")
    classify.add_argument("--fusion-weight", type=float, default=0.0,
                          help="blend each cell's scores with its image's maximum (0..1)")

    evaluate = add("evaluate", _run_evaluate, "score predictions: cell-level AP or the competition metric",
                   ("progress",),
                   description="With a predictions directory: per-class AP of the cells of --split (held-out "
                   "test images by default) against their true labels (--truth or the cells' own) and "
                   "image-level AP against the image labels, per-class precision/recall and confusion "
                   "matrices. With --submission: the competition metric (mAP at IoU >= 0.6) against a "
                   "synthetic data set's true masks and labels.")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="predictions directory (hpa-embed classify)")
    source.add_argument("--submission", help="submission CSV (hpa-embed submit)")
    evaluate.add_argument("--truth", help="synthetic data set root with truth/")
    evaluate.add_argument("--split", choices=("test", "val", "heldout", "train", "all"), default="test",
                          help="--predictions: the cells scored (default: test)")
    evaluate.add_argument("--label-mode", choices=("image_labels", "true_labels"), default="true_labels",
                          help="--predictions: which labels are the truth for cell AP")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="for precision/recall")
    evaluate.add_argument("--iou", type=float, default=0.6, help="mask IoU of a match")
    evaluate.add_argument("--out", help="directory for the tables and figures")

    cell_map = add("map", _run_map, "UMAP maps of a run's cells: PNG maps and the interactive cell map",
                   ("progress",),
                   description="Project the cells of an embeddings directory with UMAP (its kNN graph from "
                   "the FAISS index) and write coordinates.npy, map_*.png (by class, image, prediction, "
                   "correctness), class_panels.png and interactive/index.html, which opens from disk.")
    cell_map.add_argument("embeddings", help="embeddings directory (hpa-embed embed)")
    cell_map.add_argument("--store", required=True, help="their CellStore (thumbnails)")
    cell_map.add_argument("--out", required=True, help="the map folder")
    cell_map.add_argument("--index", help="FAISS index of the same embeddings (default: built)")
    cell_map.add_argument("--predictions", help="predictions directory: colour by prediction and correctness")
    cell_map.add_argument("--neighbours", type=int, default=10, help="neighbours listed per clicked cell")
    cell_map.add_argument("--umap-neighbors", type=int, default=15, help="UMAP n_neighbors")
    cell_map.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    cell_map.add_argument("--no-interactive", action="store_true", help="PNG maps only")

    export = add("export-h5ad", _run_export_h5ad,
                 "write a run's cells as an AnnData .h5ad (scanpy, cellxgene)",
                 description="X = the embeddings, obs = the cell table indexed by cell_id (labels as class "
                 "ids joined by '|'), obsm = per-method probabilities, multi-hot labels and X_umap (the "
                 "map), uns = the run config, the class table and where the embeddings came from. See "
                 "docs/exchange.md.")
    export.add_argument("source", help="run folder (hpa-embed run --out) or embeddings directory")
    export.add_argument("--out", required=True, help="the .h5ad file")
    export.add_argument("--method", help="only the predictions of this classify method (default: all)")

    imported = add("import-embeddings", _run_import_embeddings,
                   "another model's embeddings (.h5ad, or .npy + cell table) as an embeddings directory",
                   description="Read X (or obsm[--key]) of an .h5ad, or a .npy whose rows follow --cells; "
                   "look the cells up by cell id in --cells (a table or CellStore; default the h5ad's obs); "
                   "scale rows to unit L2 norm and write an embeddings directory that index, search, "
                   "classify, evaluate and map take.")
    imported.add_argument("source", help=".h5ad file or .npy array [N, D]")
    imported.add_argument("--out", required=True, help="the embeddings directory")
    imported.add_argument("--cells", help="cell table (.parquet, .csv) or CellStore folder")
    imported.add_argument("--key", help="h5ad: obsm key of the embeddings (default: X)")
    imported.add_argument("--id-column", help="h5ad: obs column of the cell ids (default: cell_id, else "
                          "the obs names)")

    submit = add("submit", _run_submit, "write a Kaggle submission CSV from per-cell predictions",
                 ("progress",),
                 description="ID,ImageWidth,ImageHeight,PredictionString with 'label confidence mask' "
                 "triples, masks as COCO RLE + zlib + base64.")
    submit.add_argument("predictions", help="predictions directory (hpa-embed classify)")
    submit.add_argument("--masks", required=True, help="the cell masks the cells were cut along")
    submit.add_argument("--out", required=True, help="submission CSV")
    images = submit.add_mutually_exclusive_group()
    images.add_argument("--images", help="image directory: list every field, also those without cells")
    images.add_argument("--split", choices=("test", "val", "heldout", "train", "all"),
                        help="only the cells (and images) of this split")
    submit.add_argument("--min-confidence", type=float, default=0.0, help="drop lower predictions")

    info = add("checkpoint-info", _run_checkpoint_info, "describe a checkpoint directory")
    info.add_argument("checkpoint", help="checkpoint directory (model.safetensors + config.json)")

    channels = add("channels", _run_channels, "PNG views of each channel of a field and its RGBY composite")
    channels.add_argument("directory", help="directory holding <ID>_<channel> images")
    channels.add_argument("image_id", help="the field's ID")
    channels.add_argument("--out", default="channels", help="output directory")
    channels.add_argument("--rgb", action="store_true", help="read red, green, blue only")
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    """Stage and epoch progress by default; everything with -v; warnings only with -q."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING, force=True)
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.getLogger("hpa_embed").setLevel(level if verbose or quiet else logging.WARNING)
    for name in ("hpa_embed.pipeline", "hpa_embed.train"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hpa-embed``; returns the exit code (2 for bad input, with the reason on stderr)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.command == "config" and args.action == "check" and not args.file:
        parser.error("config check needs a FILE")
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.run(args)
    except BatchError as error:
        print(f"hpa-embed {args.command}: {error}", file=sys.stderr)
        return 1
    except HpaEmbedError as error:
        print(f"hpa-embed {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
