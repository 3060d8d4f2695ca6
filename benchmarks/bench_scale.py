"""Scale-out benchmark: segment + crop throughput (fields/s) on a local process pool and on a Dask
LocalCluster of one and of two workers, plus the per-field and per-cell costs docs/cluster.md
builds its cost on paper from.

    .venv/bin/python benchmarks/bench_scale.py [--fields 48] [--preset standard] [--repeats 3]
                                               [--quick] [--json PATH]

Every configuration segments (classical segmenter) and crops (128 px) the same synthetic fields
into a fresh folder: ``local pool`` is ``segment_directory`` / ``build_store`` with
``workers=2`` (a ProcessPoolExecutor), ``one process`` the same with ``workers=1`` (every field
in this process: how far the machine itself scales), ``Dask n`` the same calls with
``executor=`` a Client of a LocalCluster of n single-threaded worker processes, started under
``DASK_WORKER_CONFIG`` (the recommended cluster config; ``--dask-defaults`` keeps Dask's own).
Before the clock starts, each side segments and crops a few fields once (the Dask workers, and
this process, whose imports the pool's forked workers inherit), so that no timing includes
imports; the start of the local pool is timed, it forks in milliseconds. The configurations
take turns, ``--repeats`` rounds, and the best run of each counts. Targets: 2 Dask workers
>= 0.9x the local pool and >= 1.7x one Dask worker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import Row, machine, parse_args, write_rows

from hpa_embed.config import CropConfig
from hpa_embed.crops import build_store, merge_stores
from hpa_embed.executors import DASK_WORKER_CONFIG, select_shard
from hpa_embed.io import list_field_ids
from hpa_embed.segment import ClassicalSegmenter, segment_directory
from hpa_embed.store import CellStore, write_chunk
from hpa_embed.synthetic import generate_dataset

QUICK = {"fields": 8, "preset": "small", "repeats": 1}
VS_POOL, VS_ONE = 0.9, 1.7  # targets for 2 Dask workers


def run_once(data: Path, out: Path, executor=None, workers: int = 2, image_ids=None) -> dict:
    """Segment and crop the fields of ``data`` into ``out``; seconds of each stage, cells."""
    start = time.perf_counter()
    segment_directory(data / "train", out / "masks", ClassicalSegmenter(), workers=workers, executor=executor,
                      progress=False, image_ids=image_ids)
    segmented = time.perf_counter()
    report = build_store(data / "train", out / "masks", out / "store", labels=data / "train.csv",
                         config=CropConfig(), workers=workers, executor=executor, progress=False,
                         image_ids=image_ids)
    cropped = time.perf_counter()
    return {"segment_s": segmented - start, "crop_s": cropped - segmented, "cells": report.cells_added,
            "fields": len(report.fields_added)}


def measure(tmp: Path, name: str, data: Path, setup: str | int, defaults: bool = False) -> dict:
    """One timed run: ``setup`` "process" (every field in this process), "pool" (the local pool of
    2 processes) or n (a fresh Dask LocalCluster of n single-threaded worker processes), after a
    warm-up (this process, whose imports the pool's forked workers inherit, or a task on every
    Dask worker)."""
    ids = list_field_ids(data / "train")
    if isinstance(setup, str):
        run_once(data, tmp / f"warm-{name}", workers=1, image_ids=ids[:1])
        return run_once(data, tmp / name, workers=1 if setup == "process" else 2)
    dask_workers = setup
    import dask
    from distributed import Client, LocalCluster

    config = {} if defaults else DASK_WORKER_CONFIG
    with dask.config.set(config), LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None) as cluster, Client(cluster) as client:
        run_once(data, tmp / f"warm-{name}", client, image_ids=ids[:4])
        return run_once(data, tmp / name, client)


def append_rate(store_path: Path, fields_per_commit: int = 32) -> float:
    """Cells/s of the driver's part of a crop run: taking in the chunks the tasks wrote (one per
    batch of 16 fields) and committing the table, as build_store does (``fields_per_commit``
    fields at a time)."""
    source = CellStore.open(store_path)
    with tempfile.TemporaryDirectory(dir=store_path.parent) as tmp:
        target = CellStore.create(Path(tmp) / "store", crop_size=source.crop_size, channels=source.channels)
        fields = source.cells["image_id"].unique()
        batches = [source.cells[source.cells["image_id"].isin(fields[i:i + 16])]
                   for i in range(0, len(fields), 16)]
        with target.staging() as staging:  # the tasks' chunks, written before the clock
            chunks = [write_chunk(staging, source.get_crops(batch["row"].to_numpy())) for batch in batches]
            per_commit = max(1, fields_per_commit // 16)
            start = time.perf_counter()
            for i in range(0, len(batches), per_commit):
                target.append_chunks(pd.concat(batches[i:i + per_commit]), chunks[i:i + per_commit])
            return len(source) / (time.perf_counter() - start)


def merge_rate(store_path: Path, parts: int = 2, chunk_size: int = 64) -> float:
    """Cells/s of ``merge_stores`` over ``parts`` part stores holding the cells of a store, in
    ``chunk_size``-crop chunks (every chunk is linked)."""
    source = CellStore.open(store_path)
    with tempfile.TemporaryDirectory(dir=store_path.parent) as tmp:
        paths = []
        for index in range(parts):
            rows = source.cells[source.cells["image_id"].isin(
                select_shard(source.cells["image_id"].unique(), index, parts))]
            part = CellStore.create(Path(tmp) / f"part-{index}", crop_size=source.crop_size,
                                    channels=source.channels, chunk_size=chunk_size, scheme=source.scheme,
                                    attrs=source.meta["attrs"])
            part.append(rows.assign(split=""), source.get_crops(rows["row"].to_numpy()))
            paths.append(part.path)
        start = time.perf_counter()
        merge_stores(paths, Path(tmp) / "merged")
        return len(source) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, default=48, help="synthetic fields")
    parser.add_argument("--preset", default="standard", help="synthetic preset (tiny, small, standard)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; the best counts")
    parser.add_argument("--dir", type=Path, default=None, help="working folder (default: a temp dir)")
    parser.add_argument("--dask-defaults", action="store_true",
                        help="start the Dask workers with Dask's default environment (no DASK_WORKER_CONFIG)")
    args = parse_args(parser, QUICK, argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        tmp = Path(name)
        data = generate_dataset(tmp / "data", args.fields, args.preset, seed=3, progress=False)
        before = machine()
        setups = {"local pool of 2 processes": "pool", "Dask, 1 worker": 1, "Dask, 2 workers": 2,
                  "one process, no pool": "process"}
        runs: dict[str, list[dict]] = {name: [] for name in setups}
        for repeat in range(args.repeats):  # interleaved, so that a slow spell of the machine hits all
            for index, (name, setup) in enumerate(setups.items()):
                runs[name].append(measure(tmp, f"{index}-{repeat}", data, setup, args.dask_defaults))
        results = {name: min(done, key=lambda run: run["segment_s"] + run["crop_s"])
                   for name, done in runs.items()}
        appends = append_rate(tmp / "0-0" / "store")
        merges = merge_rate(tmp / "0-0" / "store")
        after = machine()

    rate = {name: run["fields"] / (run["segment_s"] + run["crop_s"]) for name, run in results.items()}
    pool, one, two, alone = (rate[name] for name in results)
    single = results["Dask, 1 worker"]
    cells = single["cells"]
    costs = {"segment, s per field": single["segment_s"] / single["fields"],
             "crop, s per field": single["crop_s"] / single["fields"],
             "crop, ms per cell": 1e3 * single["crop_s"] / cells,
             "cells per field": cells / single["fields"]}
    print(f"segment + crop of {args.fields} '{args.preset}' fields ({cells} cells, 128 px crops), "
          f"best of {args.repeats}")
    print(f"{'':30} {'segment s':>10} {'crop s':>8} {'fields/s':>9}")
    for name, run in results.items():
        print(f"{name:30} {run['segment_s']:10.2f} {run['crop_s']:8.2f} {rate[name]:9.3f}")
    for label, ratio, target in (("Dask 2 workers / local pool", two / pool, VS_POOL),
                                 ("Dask 2 workers / Dask 1 worker", two / one, VS_ONE)):
        print(f"{label}: {ratio:.2f}x  (target >= {target}x: {'PASS' if ratio >= target else 'FAIL'})")
    print(f"the machine's own scaling: local pool / one process {pool / alone:.2f}x, "
          f"local pool / Dask 1 worker {pool / one:.2f}x (the second target asks 2 Dask workers for "
          f"{VS_ONE / (pool / one):.2f}x the local pool)")
    print("costs, from the 1-worker run: " + ", ".join(f"{key} {value:.3g}" for key, value in costs.items()))
    print(f"driver: taking in the tasks' chunks and committing {appends:,.0f} cells/s; "
          f"merge_stores of 2 parts in 64-crop chunks {merges:,.0f} cells/s")
    print(f"({before} before, {after} after)")

    size = f"{args.fields} {args.preset} fields"
    write_rows(args.json, [
        Row(f"segment + crop, local pool of 2 processes ({size})", pool, "fields/s", better="higher"),
        Row(f"segment + crop, Dask 1 worker ({size})", one, "fields/s", better="higher"),
        Row(f"segment + crop, one process ({size})", alone, "fields/s", better="higher"),
        Row(f"segment + crop, Dask 2 workers ({size})", two, "fields/s", pool, "local pool of 2 processes",
            "higher", f">= {VS_POOL}x the local pool", two / pool >= VS_POOL),
        Row(f"segment + crop, Dask 2 workers ({size})", two, "fields/s", one, "Dask 1 worker", "higher",
            f">= {VS_ONE}x one worker", two / one >= VS_ONE),
        *(Row(f"{key} (Dask 1 worker, {size})", value) for key, value in costs.items()),
        Row(f"driver: chunks taken in and committed ({size})", appends, "cells/s", better="higher"),
        Row(f"merge_stores, 2 parts of 64-crop chunks ({size})", merges, "cells/s", better="higher"),
    ])
    return 0 if two / pool >= VS_POOL and two / one >= VS_ONE else 1


if __name__ == "__main__":
    sys.exit(main())
