"""Peak memory of indexing and kNN classification over 1M embeddings, against the naive way.

Data: an embeddings directory (``hpa_embed.embed``'s format) of ``--n`` unit vectors in D=128
(1,000,000: a 512 MB float32 array; ``--quick``: 100,000), generated block by block into a memory
map: ``clusters`` Gaussian clusters on the sphere, each of one of the 19 classes. Its cells table
is like a run's: ``cell_id``, ``image_id``, ``mask_id``, ``image_labels`` (an image of 20 cells has
1 or 2 classes, each cell lies in a cluster of one of them), ``split`` (80 / 10 / 10 % of the
images) and ``row``. A second directory holds ``--queries`` cells of other images.

Each task runs in a fresh process that this one watches: it reads ``/proc/<pid>/status`` every
10 ms for the peak of ``RssAnon`` (the process's own memory), and the process reports its
``VmHWM`` (peak resident set, which also counts the pages of memory-mapped files it read: clean
page cache, the first memory the kernel takes back) and its ``RssAnon`` and ``VmRSS`` after its
imports. Figures are peaks above those baselines, in MB (10^6 bytes).

- index, library: ``index_embeddings`` (IVF), which memory-maps the array, reads only the cell ids
  of the table and adds the vectors block by block.
- index, naive: the same index built by ``CellIndex.build`` from the directory read into memory
  (``read_embeddings`` without the memory map: ``np.load`` of the whole array, the whole table).
- index, library, IVFPQ (``pq_m=16``; not with ``--quick``): as the first, 24 bytes per vector.
- kNN, library: ``predict_cells(method="knn")`` of the queries against the reference directory's
  labelled training cells (memory-mapped, indexed block by block; IVF).
- kNN, naive: the same classifier with the reference in memory (``read_embeddings`` without the
  memory map, its labelled rows copied, ``KNNClassifier.fit`` on the copy), as predict_cells did.

Targets: the library's peak below the naive one; with IVFPQ, below the array's size. Its peak
against the array is reported: an IVF index holds every vector itself (FAISS's inverted lists,
grown as vectors arrive, take about 1.4x their bytes with glibc's default malloc settings).

    .venv/bin/python benchmarks/bench_memory.py [--n 1000000] [--queries 20000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import Row, machine, parse_args, write_rows

CLASSES = 19
CELLS_PER_IMAGE = 20
TARGET_IVFPQ = 1.0  # the library's peak with IVFPQ (24 bytes per vector), in arrays' sizes
QUICK = {"n": 100_000, "ivfpq": False}
TASKS = ("index-library", "index-naive", "index-library-ivfpq", "knn-library", "knn-naive")


# --------------------------------------------------------------------------- data


def write_cells(path: Path, n: int, centres: np.ndarray, spread: float, seed: int, prefix: str) -> None:
    """An embeddings directory of ``n`` cells around ``centres`` (float32 ``[C, D]``), the array
    generated block by block into a memory map."""
    from hpa_embed.embed import Embeddings, write_embeddings

    rng = np.random.default_rng(seed)
    images = -(-n // CELLS_PER_IMAGE)
    first = rng.integers(0, CLASSES, images)
    second = np.where(rng.random(images) < 0.3, (first + rng.integers(1, CLASSES, images)) % CLASSES, -1)
    image = np.arange(n) // CELLS_PER_IMAGE
    scratch = path.with_name(f".{path.name}.X.npy")
    scratch.parent.mkdir(parents=True, exist_ok=True)
    X = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n, centres.shape[1]))
    for start in range(0, n, 100_000):
        block_image = image[start:start + 100_000]
        label = np.where((second[block_image] >= 0) & (rng.random(len(block_image)) < 0.5),
                         second[block_image], first[block_image])
        cluster = label + CLASSES * rng.integers(0, len(centres) // CLASSES, len(label))
        noise = rng.standard_normal((len(label), centres.shape[1]), dtype=np.float32)
        block = centres[cluster] + spread * noise
        X[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    labels = [[int(a)] if b < 0 else sorted([int(a), int(b)]) for a, b in zip(first, second)]
    split = rng.choice(np.array(["train", "val", "test"]), images, p=[0.8, 0.1, 0.1])
    image_ids = np.array([f"{prefix}_{i:07d}" for i in range(images)], dtype=object)
    cells = pd.DataFrame({
        "cell_id": [f"{image_ids[i // CELLS_PER_IMAGE]}_{i % CELLS_PER_IMAGE + 1}" for i in range(n)],
        "image_id": image_ids[image], "mask_id": np.arange(n) % CELLS_PER_IMAGE + 1,
        "image_labels": [labels[i] for i in image], "split": split[image], "row": np.arange(n),
    })
    write_embeddings(path, Embeddings(X, cells, {"source": "benchmarks/bench_memory.py"}))
    del X
    scratch.unlink()


# --------------------------------------------------------------------------- the tasks (child processes)


def status() -> dict[str, int]:
    """``/proc/self/status`` memory lines, in bytes."""
    return proc_status(Path("/proc/self/status").read_text())


def proc_status(text: str) -> dict[str, int]:
    """``RssAnon``, ``VmRSS`` and ``VmHWM`` of a ``/proc/<pid>/status`` text, in bytes."""
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def run_task(task: str, data: Path, work: Path, result: Path) -> None:
    """One task, in this (fresh) process; writes its baseline, VmHWM and seconds to ``result``."""
    from hpa_embed.classify import KNNClassifier, predict_cells
    from hpa_embed.config import IndexConfig
    from hpa_embed.data import cell_targets
    from hpa_embed.embed import read_embeddings
    from hpa_embed.index import CellIndex, index_embeddings

    config = IndexConfig(kind="ivf")
    reference, queries = data / "reference", data / "queries"
    baseline = status()
    start = time.perf_counter()
    if task == "index-library":
        index_embeddings(reference, work / "index", config, progress=False)
    elif task == "index-library-ivfpq":
        index_embeddings(reference, work / "index-ivfpq", IndexConfig(kind="ivfpq"), progress=False)
    elif task == "index-naive":
        embedded = read_embeddings(reference)  # np.load of the whole array
        cell_ids = embedded.cell_ids.astype(str).astype(object)
        CellIndex.build(embedded.X, cell_ids, config, progress=False).save(work / "naive-index")
    elif task == "knn-library":
        P = predict_cells(queries, "knn", reference=reference, reference_splits="train", negative="model")
        np.save(work / "knn-library.npy", P)
    elif task == "knn-naive":
        ref = read_embeddings(reference)
        positions, Y = cell_targets(ref.cells, "image_labels", splits="train")
        knn = KNNClassifier(n_neighbors=10).fit(np.asarray(ref.X)[positions], Y)
        P = knn.predict_proba(read_embeddings(queries).X).astype(np.float32)
        np.save(work / "knn-naive.npy", P)
    else:
        raise ValueError(f"unknown task {task!r}")
    seconds = time.perf_counter() - start
    result.write_text(json.dumps({"baseline": baseline, "VmHWM": status()["VmHWM"], "seconds": seconds}))


def measure(task: str, data: Path, work: Path) -> dict:
    """Run ``task`` in a fresh process, polling its anonymous memory; its figures in bytes."""
    result = work / f"{task}.json"
    child = subprocess.Popen([sys.executable, __file__, "--task", task, "--data", str(data),
                              "--work", str(work)], stdin=subprocess.DEVNULL)
    peak, path = 0, Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            peak = max(peak, proc_status(path.read_text()).get("RssAnon", 0))
        except OSError:  # the process is ending
            pass
        time.sleep(0.01)
    if child.returncode:
        raise RuntimeError(f"task {task} failed (exit status {child.returncode})")
    figures = json.loads(result.read_text())
    return {**figures, "peak_anon": peak - figures["baseline"]["RssAnon"],
            "VmHWM": figures["VmHWM"] - figures["baseline"]["VmRSS"]}


# --------------------------------------------------------------------------- the report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="reference cells")
    parser.add_argument("--queries", type=int, default=20_000, help="query cells classified by kNN")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.12)
    parser.add_argument("--ivfpq", action=argparse.BooleanOptionalAction, default=True,
                        help="also build an IVFPQ index (--no-ivfpq: skip it)")
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)  # a child process's task
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parse_args(parser, QUICK)
    if args.task:
        run_task(args.task, args.data, args.work, args.work / f"{args.task}.json")
        return

    size = f"{args.n / 1e6:g}M" if args.n >= 1_000_000 else f"{args.n // 1000}k"
    print(f"N = {args.n:,} x D = {args.dim}, {args.queries:,} queries  [{machine()}]")
    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp) / "data", Path(tmp) / "work"
        work.mkdir(parents=True)
        start = time.perf_counter()
        centres = np.random.default_rng(0).standard_normal((args.clusters, args.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        write_cells(data / "reference", args.n, centres, args.spread, seed=1, prefix="ref")
        write_cells(data / "queries", args.queries, centres, args.spread, seed=2, prefix="query")
        array = (data / "reference" / "embeddings.npy").stat().st_size / 1e6
        print(f"  data written in {time.perf_counter() - start:.0f} s; the reference array: {array:.0f} MB")
        measured = {}
        for task in TASKS if args.ivfpq else [task for task in TASKS if "ivfpq" not in task]:
            measured[task] = measure(task, data, work)
            figures = measured[task]
            print(f"  {task:<20} peak anonymous {figures['peak_anon'] / 1e6:7.0f} MB   VmHWM "
                  f"{figures['VmHWM'] / 1e6:7.0f} MB   {figures['seconds']:6.1f} s")
        difference = float(np.abs(np.load(work / "knn-library.npy") - np.load(work / "knn-naive.npy")).max())

    rows = [Row(f"embeddings array ({size} x {args.dim} float32)", array, "MB")]
    for what, label, naive in (("index", "IVF index built and saved", "array in memory"),
                               ("knn", f"kNN of {args.queries // 1000}k queries", "reference in memory")):
        library, baseline = measured[f"{what}-library"], measured[f"{what}-naive"]
        value = library["peak_anon"] / 1e6
        rows += [
            Row(f"peak memory, {label} ({size})", value, "MB", baseline["peak_anon"] / 1e6, f"naive: {naive}",
                "lower", "< naive", value < baseline["peak_anon"] / 1e6),
            Row(f"peak memory vs the array, {label} ({size})", value, "MB", array, "the array", "lower",
                "reported (the IVF index holds every vector)"),
            Row(f"peak resident set (VmHWM, with mapped file pages), {label} ({size})",
                library["VmHWM"] / 1e6, "MB", baseline["VmHWM"] / 1e6, f"naive: {naive}", "lower"),
            Row(f"time, {label} ({size})", library["seconds"], "s", baseline["seconds"], f"naive: {naive}",
                "lower"),
        ]
    if args.ivfpq:
        value = measured["index-library-ivfpq"]["peak_anon"] / 1e6
        rows.insert(5, Row(f"peak memory, IVFPQ index (m=16) built and saved ({size})", value, "MB", array,
                           "the array", "lower", f"<= {TARGET_IVFPQ:g}x the array",
                           value <= TARGET_IVFPQ * array))
    rows.append(Row(f"kNN probabilities, library vs naive: max |difference| ({size})", difference, "",
                    target="identical (<= 1e-6)", met=difference <= 1e-6))

    print(f"\n  {'figure':<78}{'value':>10}  {'compared with':<36}{'ratio':>7}  target")
    for row in rows:
        reference = "" if row.reference is None else f"{row.reference:.4g} {row.unit} ({row.reference_label})"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        met = "" if row.met is None else ("  met" if row.met else "  NOT MET")
        print(f"  {row.name:<78}{row.value:>8.4g} {row.unit:<2} {reference:<36}{ratio:>7}  {row.target}{met}")
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
