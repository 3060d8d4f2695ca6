"""The whole run from one config: fields -> masks -> CellStore -> model -> embeddings -> index ->
predictions -> evaluation, each stage resumable and skipped when its output is up to date.

An output folder holds one subfolder per stage and the records that say what made them::

    <out>/config.toml           the run's configuration (every section, defaults filled in)
    <out>/data/                 input: the generated synthetic set (train/, train.csv, truth/)
    <out>/masks/                segment: <ID>_cellmask.png, <ID>_nucleimask.png; segmentation.csv
    <out>/store/                crop: the CellStore (cells.parquet + crops), split by image
    <out>/train/                train: config.toml, history.csv, checkpoints/{last,best} (with
                                [train] pseudo_rounds, the earlier rounds in train/rounds/<n>/)
    <out>/embeddings/           embed: embeddings.npy, cells.parquet, embed.json (every cell)
    <out>/index/                index: the FAISS CellIndex over every cell
    <out>/predictions/<method>/ classify: probabilities.npy, cells.parquet, images.csv
    <out>/evaluation/           evaluate: summary.json, per method cell_ap.csv, per_class.csv,
                                images_ap.csv, submission.csv and competition_ap.csv
    <out>/maps/                 map: UMAP coordinates, PNG maps, interactive/index.html
    <out>/report.html           report: every stage's figures and scores on one page (opens from
                                disk); its own figures in <out>/report/
    <out>/stages/<stage>.json   what produced each stage: its config sections, a fingerprint of
                                them and of the stages before it, start and end times, a summary
    <out>/skipped.csv           the fields the per-field stages skipped, and why (only when any)
    <out>/run.lock              held by the run writing to the folder: a second one is refused

A stage is skipped when its record is finished and its fingerprint is the one the config gives
now. When a section it reads changes (or a stage before it reruns), its folder is removed and it
runs again; the stages it does not read keep their outputs. An interrupted stage resumes where
it stopped (generation, segmentation and cropping skip the fields done, training continues from
its last checkpoint, the later stages are quick and rerun whole).

Evaluation scores the cells of held-out test images by default; scoring cells the model
trained on needs ``[evaluate] split = "train"`` or ``"all"``, and the summary then says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batch import SKIPPED_FILE, check_skipped, read_skipped, write_skipped
from .config import ConfigError, InputConfig, RunConfig, read_config_file, write_config_file
from .io import DataError, atomic_path

__all__ = ["STAGES", "RunPaths", "PipelineResult", "run_pipeline", "stage_status", "load_named_config",
           "NAMED_CONFIGS", "synthetic_config", "write_run_report"]

log = logging.getLogger(__name__)

#: The stages, in order.
STAGES: tuple[str, ...] = ("input", "segment", "crop", "train", "embed", "index", "classify", "evaluate",
                           "map", "report")

#: Config sections each stage reads (besides what the stages before it read).
_READS: dict[str, tuple[str, ...]] = {
    "input": ("input",),
    "segment": ("segment",),
    "crop": ("crop", "split"),
    "train": ("model", "loss", "data", "train"),
    "embed": (),
    "index": ("index",),
    "classify": ("classify",),
    "evaluate": ("evaluate",),
    "map": ("map",),
    "report": (),
}

#: Stages that work field by field and skip the fields they cannot use.
_PER_FIELD_STAGES: tuple[str, ...] = ("segment", "crop", "embed")
#: Stages whose tasks run on the run's executor (a local pool or a Dask cluster).
_EXECUTOR_STAGES: tuple[str, ...] = ("segment", "crop")
_RUN_LOCK = "run.lock"

#: Configs shipped with the package (``hpa_embed/configs/<name>.toml``).
NAMED_CONFIGS: tuple[str, ...] = ("demo", "tiny")


def load_named_config(name: str) -> RunConfig:
    """A config shipped with the package, e.g. ``"demo"``."""
    from importlib import resources

    if name not in NAMED_CONFIGS:
        raise ConfigError(f"no shipped config {name!r}; choose one of {NAMED_CONFIGS}")
    with resources.as_file(resources.files("hpa_embed") / "configs" / f"{name}.toml") as path:
        return read_config_file(path)


@dataclass(frozen=True)
class RunPaths:
    """Where each stage of a run in ``out`` reads and writes."""

    out: Path
    config: RunConfig

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def images(self) -> Path:
        if self.config.input.source == "directory":
            return Path(self.config.input.images)
        return self.data / "train"

    @property
    def labels(self) -> Path:
        if self.config.input.source == "directory":
            return Path(self.config.input.labels)
        return self.data / "train.csv"

    @property
    def truth(self) -> Path | None:
        """Root of a synthetic set with ``truth/`` (true masks and cell labels), if the run has one."""
        if self.config.input.source == "directory":
            return Path(self.config.input.truth) if self.config.input.truth else None
        return self.data

    @property
    def masks(self) -> Path:
        return self.out / "masks"

    @property
    def store(self) -> Path:
        return self.out / "store"

    @property
    def train(self) -> Path:
        return self.out / "train"

    @property
    def checkpoint(self) -> Path:
        best = self.train / "checkpoints" / "best"
        return best if (best / "config.json").is_file() else self.train / "checkpoints" / "last"

    @property
    def embeddings(self) -> Path:
        return self.out / "embeddings"

    @property
    def index(self) -> Path:
        return self.out / "index"

    def predictions(self, method: str) -> Path:
        return self.out / "predictions" / method

    @property
    def evaluation(self) -> Path:
        return self.out / "evaluation"

    @property
    def maps(self) -> Path:
        return self.out / "maps"

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    @property
    def report_figures(self) -> Path:
        return self.out / "report"

    def stage_dirs(self, stage: str) -> list[Path]:
        """The folders a stage writes (removed before it reruns from scratch)."""
        return {
            "input": [self.data] if self.config.input.source == "synthetic" else [],
            "segment": [self.masks],
            "crop": [self.store],
            "train": [self.train],
            "embed": [self.embeddings],
            "index": [self.index],
            "classify": [self.out / "predictions"],
            "evaluate": [self.evaluation],
            "map": [self.maps] if self.config.map.enabled else [],
            "report": [self.report_figures],
        }[stage]

    def record(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did.

    Attributes
    ----------
    paths : RunPaths
    ran, skipped : list of str
        Stages run by this call, and stages whose outputs were up to date.
    summaries : dict of str to dict
        Each finished stage's summary (counts, scores, where its files are).
    """

    paths: RunPaths
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summaries: dict[str, dict] = field(default_factory=dict)

    @property
    def fields_skipped(self) -> dict[str, dict[str, str]]:
        """``{stage: {image_id: reason}}``: the fields each per-field stage skipped."""
        return {stage: self.summaries[stage].get("failed", {}) for stage in _PER_FIELD_STAGES
                if stage in self.summaries}

    @property
    def evaluation(self) -> dict | None:
        """The evaluation summary (``evaluation/summary.json``), when the run got that far."""
        return self.summaries.get("evaluate")


# --------------------------------------------------------------------------- records


def _fingerprints(config: RunConfig) -> dict[str, str]:
    """Per stage, a hash of the sections it and every stage before it read."""
    sections = config.to_dict()
    prints, previous = {}, ""
    for stage in STAGES:
        text = json.dumps({"before": previous, **{name: sections[name] for name in _READS[stage]}},
                          sort_keys=True)
        previous = prints[stage] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return prints


def _read_record(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(path: Path, record: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def stage_status(config: RunConfig, out: str | os.PathLike) -> dict[str, str]:
    """Per stage: ``"done"`` (up to date), ``"partial"`` (interrupted, will resume),
    ``"outdated"`` (made with another config, will rerun) or ``"missing"`` (never run, or its
    folder is gone)."""
    paths, prints = RunPaths(Path(out), config), _fingerprints(config)
    status = {}
    for stage in STAGES:
        record = _read_record(paths.record(stage))
        gone = record is not None and record.get("finished") and not all(
            directory.exists() for directory in paths.stage_dirs(stage))
        if record is None or gone:
            status[stage] = "missing"
        elif record.get("fingerprint") != prints[stage]:
            status[stage] = "outdated"
        else:
            status[stage] = "done" if record.get("finished") else "partial"
    return status


# --------------------------------------------------------------------------- the stages


def synthetic_config(config: InputConfig):
    """The :class:`~hpa_embed.synthetic.SyntheticConfig` an input section asks for: its preset
    with the section's overrides."""
    from .synthetic import get_preset

    overrides = {name: getattr(config, name) for name in ("size", "difficulty")
                 if getattr(config, name) is not None}
    return dataclasses.replace(get_preset(config.preset), **overrides)



def _stage_input(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    config = paths.config.input
    if config.source == "directory":
        from .io import list_field_ids, read_labels

        for path, what in ((paths.images, "images"), (paths.labels, "labels")):
            if not path.exists():
                raise DataError(path, f"[input] {what}: not found")
        if paths.truth is not None and not (paths.truth / "truth").is_dir():
            raise DataError(paths.truth / "truth", "[input] truth: no truth/ folder here")
        fields = list_field_ids(paths.images)
        labels = read_labels(paths.labels)
        return {"images": paths.images, "labels": paths.labels, "truth": paths.truth,
                "fields": len(fields), "labelled_images": len(labels)}
    from .synthetic import generate_dataset

    generate_dataset(paths.data, config.n_images, synthetic_config(config), seed=config.seed,
                     workers=workers, progress=progress)
    return {"images": paths.images, "labels": paths.labels, "truth": paths.truth, "fields": config.n_images,
            "preset": config.preset}


def _stage_segment(paths: RunPaths, workers: int | None, progress: bool, executor: Any = None) -> dict:
    from .segment import create_segmenter, segment_directory

    config = paths.config.segment
    report = segment_directory(paths.images, paths.masks, create_segmenter(config), workers=workers,
                               mask_format=config.mask_format, progress=progress, executor=executor)
    if not report.n_cells:
        raise DataError(paths.images, "no field could be segmented: " + "; ".join(
            f"{image_id}: {reason}" for image_id, reason in list(report.failed.items())[:3]))
    summary = {"fields": len(report.n_cells), "cells": int(sum(report.n_cells.values())),
               "failed": dict(report.failed)}
    if paths.truth is not None:
        summary["against_truth"] = _score_segmentation(paths, sorted(report.n_cells))
    return summary


def _score_segmentation(paths: RunPaths, image_ids: list[str]) -> dict:
    """Cell and nucleus F1 at IoU 0.6 of the masks against the true ones, pooled over fields."""
    import pandas as pd

    from .io import find_mask_file, read_mask
    from .segment import object_f1

    rows = []
    for image_id in image_ids:
        for kind in ("cellmask", "nucleimask"):
            true_path = find_mask_file(paths.truth / "truth", image_id, kind)
            scores = object_f1(read_mask(true_path), read_mask(find_mask_file(paths.masks, image_id, kind)))
            rows.append({"image_id": image_id, "kind": kind, "n_true": scores.n_true, "n_pred": scores.n_pred,
                         "n_matched": scores.n_matched, "mean_iou": scores.mean_iou})
    table = pd.DataFrame(rows)
    with atomic_path(paths.masks / "segmentation.csv") as tmp:
        table.to_csv(tmp, index=False)
    pooled = {}
    for kind, group in table.groupby("kind"):
        matched, true, pred = (int(group[c].sum()) for c in ("n_matched", "n_true", "n_pred"))
        pooled[kind] = {"f1": 2 * matched / max(true + pred, 1), "precision": matched / max(pred, 1),
                        "recall": matched / max(true, 1), "mean_iou": float(group["mean_iou"].mean())}
    return pooled


def _stage_crop(paths: RunPaths, workers: int | None, progress: bool, executor: Any = None) -> dict:
    from .crops import build_store
    from .io import list_field_ids

    unsegmented = set(read_skipped(paths.masks)["image_id"])  # listed by the segment stage already
    image_ids = [image_id for image_id in list_field_ids(paths.images) if image_id not in unsegmented]
    report = build_store(paths.images, paths.masks, paths.store, labels=paths.labels, truth=paths.truth,
                         config=paths.config.crop, image_ids=image_ids, workers=workers,
                         fractions=paths.config.split.fractions, seed=paths.config.split.seed,
                         progress=progress, executor=executor)
    from .store import CellStore

    cells = CellStore.open(paths.store).cells
    if not len(cells):
        raise DataError(paths.store, "no cell was cropped: " + "; ".join(
            f"{image_id}: {reason}" for image_id, reason in list(report.fields_failed.items())[:3]))
    splits = cells.groupby("split")
    return {"cells": len(cells), "fields": int(cells["image_id"].nunique()),
            "cells_per_split": splits.size().to_dict(),
            "images_per_split": splits["image_id"].nunique().to_dict(),
            "failed": dict(report.fields_failed)}


def _train(paths: RunPaths, progress: bool):
    """Every training round of the run (resumed where it stopped) -> the last round's FitResult."""
    from .recipes import train_dim_negative, train_pseudo_round
    from .train import fit

    config = paths.config
    rounds = config.train.pseudo_rounds
    # with pseudo-label rounds the first rounds go to train/rounds/<n>, the last one to train/
    folders = [paths.train / "rounds" / str(number) for number in range(rounds)] + [paths.train]
    if config.train.dim_negative:
        result = train_dim_negative(paths.store, folders[0], config, progress=progress)
    else:
        result = fit(paths.store, folders[0], config.model, config.loss, config.data, config.train,
                     resume=True, progress=progress)
    for folder in folders[1:]:
        result = train_pseudo_round(paths.store, folder, config, result.checkpoint,
                                    support=config.train.pseudo_support, progress=progress)
    return result


def _embed(paths: RunPaths, progress: bool):
    from .embed import embed_store

    return embed_store(paths.checkpoint, paths.store, out=paths.embeddings, device=paths.config.train.device,
                       progress=progress)


def _stage_train(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    result = _train(paths, progress)
    from .visualise import plot_training_curves

    plot_training_curves(result.history, paths.train / "training_curves.png")
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    return {"checkpoint": result.checkpoint, "epochs": len(result.history),
            "last_epoch": {key: value for key, value in last.items() if isinstance(value, (int, float))}}


def _stage_embed(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    embedded = _embed(paths, progress)
    return {"cells": len(embedded), "dimension": int(embedded.X.shape[1]), "checkpoint": paths.checkpoint,
            "failed": embedded.meta["skipped"]}


def _stage_index(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    from .index import index_embeddings

    index = index_embeddings(paths.embeddings, paths.index, paths.config.index, progress=progress)
    return {"cells": len(index), "kind": index.kind, "metric": index.metric}


def _stage_classify(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    from .classify import predict_cells, write_predictions
    from .embed import read_embeddings

    config = paths.config.classify
    embedded = read_embeddings(paths.embeddings, mmap=True)  # the training cells vote: no copy of them
    summary = {}
    for method in config.methods:
        probabilities = predict_cells(embedded, method, checkpoint=paths.checkpoint, reference=embedded,
                                      reference_splits="train", label_mode=config.knn_labels,
                                      n_neighbors=config.n_neighbors, index_config=paths.config.index,
                                      training_run=paths.train,
                                      negative=config.negative, fusion_weight=config.fusion_weight)
        write_predictions(paths.predictions(method), embedded, probabilities, method)
        summary[method] = {"cells": len(probabilities), "path": paths.predictions(method)}
    return summary


def _stage_evaluate(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    from .evaluate import evaluate_predictions
    from .visualise import plot_evaluation

    config = paths.config.evaluate
    summary: dict[str, Any] = {"split": config.split, "splits": list(config.splits),
                               "scores_training_cells": config.scores_training_cells, "methods": {}}
    if config.scores_training_cells:
        summary["note"] = (f"split = {config.split!r}: the scores include cells the model was trained on "
                           "and are optimistic")
        log.warning("evaluate: %s", summary["note"])
    for method in paths.config.classify.methods:
        summary["methods"][method] = evaluate_predictions(
            paths.predictions(method), paths.evaluation / method, splits=config.splits, truth=paths.truth,
            masks=paths.masks if config.submission else None, iou_threshold=config.iou_threshold,
            threshold=config.threshold, progress=progress)
        plot_evaluation(paths.evaluation / method)
    with atomic_path(paths.evaluation / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return summary


def _stage_map(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    config = paths.config.map
    if not config.enabled:
        return {"enabled": False}
    from .visualise import UMAPProjector, draw_cell_maps

    method = config.method or paths.config.classify.methods[0]
    projector = UMAPProjector(n_neighbors=config.n_neighbors, min_dist=config.min_dist,
                              sample_size=config.sample_size)
    written = draw_cell_maps(paths.embeddings, paths.store, paths.maps, index=paths.index,
                             predictions=paths.predictions(method), n_neighbors=config.neighbours,
                             projector=projector, interactive=config.interactive, progress=progress)
    return {"enabled": True, "method": method, "files": {name: str(path) for name, path in written.items()}}


def _stage_report(paths: RunPaths, workers: int | None, progress: bool) -> dict:
    return {"report": write_run_report(paths.out, paths.config)}


def write_run_report(out: str | os.PathLike, config: RunConfig | None = None) -> Path:
    """(Re)write ``<out>/report.html`` of a run folder from what its stages wrote
    (:mod:`hpa_embed.report`); ``config`` defaults to the run's ``config.toml``."""
    from .report import write_report

    out = Path(out)
    if config is None:
        if not (out / "config.toml").is_file():
            raise DataError(out / "config.toml", "not found: not a run folder (see hpa-embed run)")
        config = read_config_file(out / "config.toml")
    paths = RunPaths(out, config)
    records = {stage: _read_record(paths.record(stage)) for stage in STAGES if stage != "report"}
    return write_report(paths, records)


_RUNNERS: dict[str, Callable[..., dict]] = {
    "input": _stage_input,
    "segment": _stage_segment,
    "crop": _stage_crop,
    "train": _stage_train,
    "embed": _stage_embed,
    "index": _stage_index,
    "classify": _stage_classify,
    "evaluate": _stage_evaluate,
    "map": _stage_map,
    "report": _stage_report,
}


# --------------------------------------------------------------------------- the run


def _check_stage_name(name: str | None, what: str) -> int | None:
    if name is None:
        return None
    if name not in STAGES:
        raise ConfigError(f"{what} {name!r}: not a stage; the stages are {', '.join(STAGES)}")
    return STAGES.index(name)


def run_pipeline(
    config: RunConfig | str | os.PathLike,
    out: str | os.PathLike,
    from_stage: str | None = None,
    until_stage: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    strict: bool = False,
    executor: Any = None,
) -> PipelineResult:
    """Run the stages of a config in order into ``out``, each skipped when up to date.

    Fields the per-field stages (segment, crop, embed) cannot use are skipped and listed in
    ``<out>/skipped.csv`` (:mod:`hpa_embed.batch`). Only one run at a time writes to ``out``:
    a second one is refused while the first holds ``<out>/run.lock``. Under ``torchrun`` every
    process calls this: train and embed run on all of them (DDP), every other stage on rank 0.

    Parameters
    ----------
    config : RunConfig or path
        The run's configuration, or a TOML file of it.
    out : path
        The output folder (see the module docstring).
    from_stage : str, optional
        Run this stage and every later one again, even if up to date; the stages before it must
        be done.
    until_stage : str, optional
        Stop after this stage.
    workers : int, optional
        Processes for the per-field stages (default: one per CPU).
    progress : bool
        Show progress bars.
    strict : bool
        Stop with a :class:`~hpa_embed.batch.BatchError` after a stage that skipped a field
        (default: go on with the fields that worked).
    executor : Executor, dask.distributed.Client or str, optional
        Where the segment and crop tasks run (default: a local pool of ``workers`` processes);
        a Dask Client or scheduler address runs them on its cluster, with ``out`` and the input
        on storage its workers share (:mod:`hpa_embed.executors`). The outputs are those of a
        local run, so a run can move between the two.

    Returns
    -------
    PipelineResult
    """
    config = config if isinstance(config, RunConfig) else read_config_file(config)
    start = _check_stage_name(from_stage, "from_stage") or 0
    stop = _check_stage_name(until_stage, "until_stage")
    stop = len(STAGES) - 1 if stop is None else stop
    if start > stop:
        raise ConfigError(f"from_stage {from_stage!r} comes after until_stage {until_stage!r}")
    if config.input.source == "synthetic":
        synthetic_config(config.input)  # an unknown preset fails here, before any work
    paths = RunPaths(Path(out), config)
    status = stage_status(config, out)
    not_done = [stage for stage in STAGES[:start] if status[stage] != "done"]
    if not_done:
        raise ConfigError(f"cannot start at {from_stage!r}: stage {not_done[0]!r} is {status[not_done[0]]} "
                          f"in {out}; run the earlier stages first")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0:
        return _take_part(config, paths, start, stop, from_stage is not None, progress)
    paths.out.mkdir(parents=True, exist_ok=True)
    with _run_lock(paths.out):
        return _run_stages(config, paths, status, start, stop, from_stage is not None, workers, progress,
                           strict, executor)


def _take_part(config: RunConfig, paths: RunPaths, start: int, stop: int, forcing: bool,
               progress: bool) -> PipelineResult:
    """A ``torchrun`` process of rank > 0: train and embed beside rank 0, which runs every other
    stage and writes every file and record; this one waits for the stage before each of the two
    to be done (by its record on disk: rank 0 may take hours to crop, longer than a collective
    waits)."""
    began = time.time()
    result = PipelineResult(paths)
    for stage, run in (("train", _train), ("embed", _embed)):
        number = STAGES.index(stage)
        if number > stop:
            break
        forced = forcing and number >= start
        # with a forced rerun of earlier stages, their old records do not count
        after = began if forcing and start < number else None
        _wait_for_stage(config, paths, STAGES[number - 1], after=after)
        if stage_status(config, paths.out)[stage] == "done" and not forced:
            result.skipped.append(stage)
            continue
        log.info("rank %s: %s with rank 0", os.environ.get("RANK"), stage)
        run(paths, progress=False)
        result.ran.append(stage)
    return result


def _wait_for_stage(config: RunConfig, paths: RunPaths, stage: str, after: float | None,
                    poll: float = 2.0) -> None:
    """Return once ``stage`` is done for ``config`` in ``paths.out`` (and finished after ``after``)."""
    while True:
        if stage_status(config, paths.out)[stage] == "done":
            finished = (_read_record(paths.record(stage)) or {}).get("finished", 0)
            if after is None or finished >= after:
                return
        time.sleep(poll)


@contextlib.contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/run.lock`` (an exclusive ``flock``) or refuse: one run writes to a folder."""
    with open(out / _RUN_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise DataError(out, f"another run ({holder}) is writing to this folder; wait for it to "
                                 "finish or choose another output folder") from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_stages(config: RunConfig, paths: RunPaths, status: dict[str, str], start: int, stop: int,
                forcing: bool, workers: int | None, progress: bool, strict: bool,
                executor: Any = None) -> PipelineResult:
    prints = _fingerprints(config)
    write_config_file(paths.out / "config.toml", config)
    result = PipelineResult(paths)
    for number, stage in enumerate(STAGES[: stop + 1]):
        record_path = paths.record(stage)
        record = _read_record(record_path)
        forced = number >= start and forcing
        if status[stage] == "done" and not forced:
            result.skipped.append(stage)
            result.summaries[stage] = record.get("summary", {})
            log.info("[%d/%d] %s: up to date, skipped", number + 1, len(STAGES), stage)
            _check_fields(paths, result, stage, strict)
            continue
        if status[stage] != "partial" or forced:  # outdated, missing or forced: start clean
            for directory in paths.stage_dirs(stage):
                if directory.exists():
                    log.info("%s: removing %s, made with another config", stage, directory)
                    shutil.rmtree(directory)
            record_path.unlink(missing_ok=True)
            record = {"stage": stage, "fingerprint": prints[stage], "started": time.time()}
        else:
            log.info("[%d/%d] %s: resuming an interrupted run", number + 1, len(STAGES), stage)
        for later in STAGES[number + 1:]:  # they read what this stage writes: rerun them too
            paths.record(later).unlink(missing_ok=True)
            status[later] = "missing"
        record["sections"] = {name: getattr(config, name).to_dict() for name in _READS[stage]}
        _write_record(record_path, record)
        log.info("[%d/%d] %s ...", number + 1, len(STAGES), stage)
        began = time.perf_counter()
        options = {"executor": executor} if stage in _EXECUTOR_STAGES else {}
        summary = _RUNNERS[stage](paths, workers, progress, **options)
        record.update(finished=time.time(), seconds=round(time.perf_counter() - began, 2), summary=summary)
        _write_record(record_path, record)
        result.ran.append(stage)
        result.summaries[stage] = json.loads(json.dumps(summary, default=_json_default))
        log.info("[%d/%d] %s: done in %.1f s", number + 1, len(STAGES), stage, record["seconds"])
        _check_fields(paths, result, stage, strict)
    return result


def _check_fields(paths: RunPaths, result: PipelineResult, stage: str, strict: bool) -> None:
    """After a per-field stage: ``<out>/skipped.csv`` lists what the stages so far skipped; a strict
    run stops here when this stage skipped a field."""
    if stage not in _PER_FIELD_STAGES:
        return
    write_skipped(paths.out, result.fields_skipped)
    summary = result.summaries[stage]
    check_skipped(summary.get("failed", {}), summary.get("fields", summary.get("cells", 0)), strict,
                  paths.out / SKIPPED_FILE)
