"""CellStore random-access read throughput (target: >= 5,000 crops/s), plus append speed.

Fills a store with random uint8 crops, then reads random batches of rows (any order, as a
shuffling data loader does), first "cold-ish" (the chunk files are evicted from the page cache
with posix_fadvise(DONTNEED) before each pass, so every batch reads from the disk) and then warm.

    .venv/bin/python benchmarks/bench_store.py [--cells 20000] [--crop-size 128] [--batch 64]
                                               [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import Row, machine, parse_args, write_rows

from hpa_embed.store import CellStore

TARGET = 5_000  # crops/s
QUICK = {"cells": 4_000, "batches": 100}


def evict(store_path: Path) -> bool:
    """Drop the store's chunk files from the page cache; False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in (store_path / "crops").glob("chunk-*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def read_rate(store_path: Path, batch: int, batches: int, seed: int, cold: bool) -> float:
    if cold:
        evict(store_path)
    store = CellStore.open(store_path)  # fresh memory maps
    rng = np.random.default_rng(seed)
    row_batches = [rng.integers(0, len(store), batch) for _ in range(batches)]
    start = time.perf_counter()
    checksum = 0
    for rows in row_batches:
        checksum += int(store.get_crops(rows)[:, :, 0, 0].sum())
    return batch * batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the store (default: a temp dir)")
    args = parse_args(parser, QUICK, argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store"
        store = CellStore.create(path, crop_size=args.crop_size)
        rng = np.random.default_rng(0)
        per_append = 2_000
        start = time.perf_counter()
        for first in range(0, args.cells, per_append):
            n = min(per_append, args.cells - first)
            ids = [f"img{i // 20}_{i % 20 + 1}" for i in range(first, first + n)]
            cells = pd.DataFrame({"cell_id": ids, "image_id": [i.split("_")[0] for i in ids]})
            store.append(cells, rng.integers(0, 256, (n, *store.crop_shape), dtype=np.uint8))
        write_s = time.perf_counter() - start
        size_gb = sum(p.stat().st_size for p in (path / "crops").iterdir()) / 1e9
        can_evict = evict(path)
        cold = read_rate(path, args.batch, args.batches, seed=1, cold=True)
        read_rate(path, args.batch, args.batches, seed=2, cold=False)  # warm the cache
        warm = read_rate(path, args.batch, args.batches, seed=3, cold=False)

    shape = f"{len(store.channels)}x{args.crop_size}x{args.crop_size} uint8"
    print(f"store: {args.cells} crops of {shape}, {size_gb:.2f} GB in {store.chunk_size}-crop chunks")
    print(f"append:                 {args.cells / write_s:10,.0f} crops/s  ({size_gb / write_s:.2f} GB/s)")
    label = "cold-ish (evicted)" if can_evict else "cold-ish (NOT evicted)"
    print(f"random read {label}: {cold:10,.0f} crops/s  target >= {TARGET:,}  "
          f"{'PASS' if cold >= TARGET else 'FAIL'}")
    print(f"random read warm:       {warm:10,.0f} crops/s  target >= {TARGET:,}  "
          f"{'PASS' if warm >= TARGET else 'FAIL'}")
    print(f"(random batches of {args.batch} rows, {args.batches} batches per pass; {machine()})")
    size = f"{args.cells:,} crops of {args.crop_size} px, batches of {args.batch}"
    write_rows(args.json, [
        Row(f"CellStore append ({size})", args.cells / write_s, "crops/s", better="higher"),
        *(Row(f"CellStore random read, {name} ({size})", rate, "crops/s", TARGET, "target", "higher",
              f">= {TARGET:,}", rate >= TARGET) for name, rate in ((label, cold), ("warm", warm))),
    ])
    return 0 if min(cold, warm) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
