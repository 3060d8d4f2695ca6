"""Benchmark of the synthetic generator: speed, and how hard the ``standard`` preset is.

    python benchmarks/bench_synthetic.py [--n-1024 16] [--n-2048 4] [--crowding-images 60]
                                         [--baseline-images 200] [--difficulties 0.2,0.5]
                                         [--workers 2] [--quick] [--json PATH]

1. Fields per second through ``generate_dataset`` (PNG writing included, ``--workers``
   processes, into a temporary directory) at 1024² (target: >= 2 fields/s with 2 workers) and
   2048², and the CPU seconds one process spends per field (what other jobs cannot inflate).
2. Crowding of ``standard``: the fraction of cells that touch a neighbour (target: 0.4-0.7 on
   average, lower on sparse fields, higher on confluent ones), by thirds of field coverage.
3. The intensity-statistics baseline: a logistic regression on simple per-cell statistics of the
   four channels inside the TRUE cell mask (mean, std, quantiles, nucleus/cytoplasm means and
   their ratio, area) predicting the TRUE cell labels; cell-level average precision per class on
   held-out images, and the macro mean. DESIGN.md wants it far below a trained model, so it
   should stay clearly below 0.5 on ``standard``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import Row, parse_args, write_rows

from hpa_embed.labels import HPA2021
from hpa_embed.synthetic import field_seed, generate_dataset, generate_field, get_preset, touching_fraction

TARGET_FIELDS_PER_S = 2.0
TARGET_TOUCHING = (0.4, 0.7)
QUANTILES = (10, 50, 90, 99)
QUICK = {"n_1024": 4, "n_2048": 1, "crowding_images": 12, "baseline_images": 40, "difficulties": "0.5"}


def measure_speed(size: int, n_images: int, workers: int) -> float:
    config = dataclasses.replace(get_preset("standard"), size=size)
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as out:
        start = time.perf_counter()
        generate_dataset(out, n_images, config, seed=0, workers=workers, progress=False)
        return n_images / (time.perf_counter() - start)


def cpu_seconds_per_field(size: int, n_images: int) -> float:
    """CPU seconds one process spends per field (generate + write): immune to other jobs."""
    from hpa_embed.synthetic.dataset import _make_field

    config = dataclasses.replace(get_preset("standard"), size=size)
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as out:
        for sub in ("train", "truth/parts"):
            os.makedirs(os.path.join(out, sub))
        _make_field(config, 0, 0, Path(out))  # warm-up: imports, caches
        start = time.process_time()
        for index in range(1, n_images + 1):
            _make_field(config, 0, index, Path(out))
        return (time.process_time() - start) / n_images


def _field_crowding(args) -> tuple[float, float, int]:
    config, seed, index = args
    field = generate_field(config, field_seed(seed, index))
    return float((field.cell_mask > 0).mean()), touching_fraction(field.cell_mask), field.n_cells


def crowding(n_images: int, workers: int, seed: int = 2) -> np.ndarray:
    """``[n, 3]``: coverage (fraction of the field in cells), touching fraction, cell count."""
    jobs = [(get_preset("standard"), seed, index) for index in range(n_images)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return np.asarray(list(pool.map(_field_crowding, jobs, chunksize=4)))


def cell_features(image: np.ndarray, cell_mask: np.ndarray, nucleus_mask: np.ndarray) -> np.ndarray:
    """Per-cell intensity statistics, float ``[n_cells, 4 * (5 + len(QUANTILES)) + 1]``."""
    n_cells = int(cell_mask.max())
    rows = []
    for cell_id in range(1, n_cells + 1):
        cell = cell_mask == cell_id
        nucleus = nucleus_mask == cell_id
        cytoplasm = cell & ~nucleus
        values = []
        for plane in image:
            inside = plane[cell]
            nucleus_mean = plane[nucleus].mean() if nucleus.any() else 0.0
            cytoplasm_mean = plane[cytoplasm].mean() if cytoplasm.any() else 0.0
            values += [inside.mean(), inside.std(), *np.percentile(inside, QUANTILES),
                       nucleus_mean, cytoplasm_mean, nucleus_mean / (cytoplasm_mean + 1e-3)]
        values.append(np.log(cell.sum()))
        rows.append(values)
    return np.asarray(rows, dtype=np.float64)


def _field_statistics(args) -> tuple[np.ndarray, np.ndarray]:
    config, seed, index = args
    field = generate_field(config, field_seed(seed, index))
    Y = HPA2021.to_multi_hot(field.cell_labels)
    return cell_features(field.image, field.cell_mask, field.nucleus_mask), Y


def baseline(difficulty: float, n_images: int, workers: int, seed: int = 1):
    """Per-class AP and macro AP of the intensity-statistics baseline at one difficulty."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import StandardScaler

    config = dataclasses.replace(get_preset("standard"), difficulty=difficulty)
    jobs = [(config, seed, index) for index in range(n_images)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_field_statistics, jobs, chunksize=4))
    n_train = int(0.7 * n_images)  # split by image: cells of one field never straddle the split
    X_train = np.concatenate([x for x, _ in results[:n_train]])
    Y_train = np.concatenate([y for _, y in results[:n_train]])
    X_test = np.concatenate([x for x, _ in results[n_train:]])
    Y_test = np.concatenate([y for _, y in results[n_train:]])
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    ap = np.full(HPA2021.num_classes, np.nan)
    for k in range(HPA2021.num_classes):
        if Y_train[:, k].any() and not Y_train[:, k].all() and Y_test[:, k].any():
            model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
            model.fit(X_train, Y_train[:, k])
            ap[k] = average_precision_score(Y_test[:, k], model.predict_proba(X_test)[:, 1])
    return ap, Y_train.sum(0), Y_test.sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-1024", type=int, default=16, help="fields for the 1024² speed run")
    parser.add_argument("--n-2048", type=int, default=4, help="fields for the 2048² speed run (0: skip)")
    parser.add_argument("--crowding-images", type=int, default=60,
                        help="'standard' fields for the touching-fraction figures (0: skip)")
    parser.add_argument("--baseline-images", type=int, default=200,
                        help="fields per difficulty for the baseline (0: skip)")
    parser.add_argument("--difficulties", default="0.2,0.5",
                        help="comma-separated difficulties for the baseline (standard is 0.5)")
    parser.add_argument("--workers", type=int, default=2)
    args = parse_args(parser, QUICK)
    figures = []

    print(f"== generation speed (generate_dataset, {args.workers} workers, PNG writing included; "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"{'field':>6} {'fields/s':>9} {'target':>8} {'CPU s/field':>12} "
          f"{'-> fields/s on ' + str(args.workers) + ' free cores':>28}")
    for size, n_images in ((1024, args.n_1024), (2048, args.n_2048)):
        if not n_images:
            continue
        speed = measure_speed(size, n_images, args.workers)
        cpu = cpu_seconds_per_field(size, max(2, n_images // 4))
        target = f">= {TARGET_FIELDS_PER_S}" if size == 1024 else "-"
        verdict = ("ok" if speed >= TARGET_FIELDS_PER_S else "below target (see CPU column)") \
            if size == 1024 else ""
        print(f"{str(size) + '²':>6} {speed:9.2f} {target:>8} {cpu:12.2f} "
              f"{args.workers / cpu:28.2f}  {verdict}")
        name = f"fields/s at {size}², {args.workers} workers, PNG writing included ({n_images} field(s))"
        if size == 1024:
            # the CPU time is what a shared machine cannot inflate: the target in CPU s per field
            cpu_target = args.workers / TARGET_FIELDS_PER_S
            figures += [
                Row(name, speed, "fields/s", TARGET_FIELDS_PER_S, "target", "higher",
                    f">= {TARGET_FIELDS_PER_S:g}", speed >= TARGET_FIELDS_PER_S),
                Row(f"CPU s per {size}² field, one process", cpu, "s", cpu_target, "target", "lower",
                    f"<= {cpu_target:g} (= {TARGET_FIELDS_PER_S:g} fields/s on {args.workers} free cores)",
                    cpu <= cpu_target),
            ]
        else:
            figures += [Row(name, speed, "fields/s", better="higher"),
                        Row(f"CPU s per {size}² field, one process", cpu, "s", better="lower")]

    if args.crowding_images:
        table = crowding(args.crowding_images, args.workers)
        print(f"\n== crowding of 'standard' ({args.crowding_images} fields): fraction of cells "
              "4-adjacent to another cell")
        print(f"{'fields':<28} {'coverage':>9} {'cells':>6} {'touching':>9} {'target':>10}")
        thirds = np.array_split(table[np.argsort(table[:, 0])], 3)
        for name, rows in zip(("sparsest third", "middle third", "densest third"), thirds):
            print(f"{name:<28} {rows[:, 0].mean():9.2f} {rows[:, 2].mean():6.1f} {rows[:, 1].mean():9.2f}")
        low, high = TARGET_TOUCHING
        mean = table[:, 1].mean()
        print(f"{'all':<28} {table[:, 0].mean():9.2f} {table[:, 2].mean():6.1f} {mean:9.2f} "
              f"{f'{low}-{high}':>10}  {'ok' if low <= mean <= high else 'OUTSIDE'}")
        figures.append(Row(f"cells touching a neighbour, 'standard' ({args.crowding_images} fields)", mean,
                        target=f"{low}-{high}", met=low <= mean <= high))

    if not args.baseline_images:
        write_rows(args.json, figures)
        return
    difficulties = [float(value) for value in args.difficulties.split(",")]
    print(f"\n== intensity-statistics baseline on 'standard' ({args.baseline_images} fields per "
          "difficulty, 70/30 split by field; logistic regression on per-cell statistics in the "
          "TRUE masks -> TRUE cell labels)")
    results = [baseline(d, args.baseline_images, args.workers) for d in difficulties]
    columns = " ".join(f"{'AP d=' + str(d):>9}" for d in difficulties)
    header = f"{'class':<34} {'train+':>6} {'test+':>6} {columns}"
    print(header)
    for k, name in enumerate(HPA2021.names):
        aps = " ".join(f"{r[0][k]:9.3f}" for r in results)
        print(f"{str(k) + ' ' + name[:31]:<34} {int(results[-1][1][k]):6d} {int(results[-1][2][k]):6d} {aps}")
    macro = " ".join(f"{np.nanmean(r[0]):9.3f}" for r in results)
    print(f"{'macro AP (classes with test cells)':<48} {macro}   target: clearly below 0.5 at d=0.5")
    for difficulty, result in zip(difficulties, results):
        value = np.nanmean(result[0])
        name = (f"intensity-statistics baseline, cell macro AP, difficulty {difficulty:g} "
                f"({args.baseline_images} fields)")
        if difficulty == 0.5:
            figures.append(Row(name, value, "", 0.5, "target", "lower", "< 0.5 at d=0.5", value < 0.5))
        else:
            figures.append(Row(name, value))
    write_rows(args.json, figures)


if __name__ == "__main__":
    main()
