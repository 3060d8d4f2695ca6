"""Training throughput of ``fit`` vs a bare torchvision training loop, and peak memory.

Both train the same backbone (ResNet-50 by default, 4 input channels) at the same batch size,
crop size and thread count, each in a fresh process so that peak memory (max RSS; on CUDA the
peak allocated GPU memory too) is its own:

- bare: a torchvision ResNet-50 on a batch of random tensors already in memory, cross-entropy,
  AdamW. No data loading, no augmentation, no metric loss, no logging: the ceiling.
- fit: ``hpa_embed.train.fit`` on a CellStore of synthetic cells (balanced batches read from
  the store, preprocessing, augmentation, BCE + semi-hard multi-label triplet mining, history,
  checkpoint), one epoch of the same number of batches; its own per-epoch cells/s.

Each process first runs one untimed batch (fit: a one-batch run) so that first-touch
allocation costs stay out of both figures.

Target: fit >= 0.9 x bare cells/s. Run: ``python benchmarks/bench_train.py`` (about 4 minutes on
2 CPU cores; ``--quick`` for a quick look: ResNet-18, 3 batches, one round; ``--json PATH`` writes
the figures as rows).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row, machine, parse_args, synthetic_store, write_rows

TARGET_RATIO = 0.9
QUICK = {"arch": "resnet18", "steps": 3, "rounds": 1, "images": 12}


def _peak_memory() -> dict:
    import torch

    memory = {"max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        memory["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return memory


def run_bare(args) -> dict:
    import torch
    import torchvision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, weights=None, num_classes=19)
    conv = model.conv1
    model.conv1 = torch.nn.Conv2d(
        4, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
    )
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 4, args.size, args.size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 19, (args.batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    step().item()  # warm-up, as fit's warm-up run
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"cells_per_s": args.steps * args.batch / seconds, **_peak_memory()}


def run_fit(args) -> dict:
    import numpy as np

    from hpa_embed.config import DataConfig, LossConfig, ModelConfig, TrainConfig
    from hpa_embed.data import cell_targets
    from hpa_embed.losses import primary_labels
    from hpa_embed.store import CellStore
    from hpa_embed.train import fit

    # the fewest cells per class (a power of 2, dividing the batch) that the store's classes allow
    _, Y = cell_targets(CellStore.open(args.store).cells, "image_labels", splits="train")
    classes = len(np.unique(primary_labels(Y)))
    m = 1
    while m * classes < args.batch:
        m *= 2

    def run(out: Path, batches: int):
        return fit(
            args.store,
            out,
            ModelConfig(arch=args.arch, in_chans=4, crop_size=args.size),
            LossConfig(classification="bce", metric="triplet", miner="semihard"),
            DataConfig(
                label_mode="image_labels", batch_size=args.batch, m_per_class=m, batches_per_epoch=batches
            ),
            TrainConfig(epochs=1, grad_clip=None),
            progress=False,
        )

    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "warm-up", 1)  # first-touch allocations, as the bare loop's warm-up step
        result = run(Path(tmp) / "run", args.steps)
    return {"cells_per_s": float(result.history["train_cells_per_s"].iloc[0]), **_peak_memory()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating (best counts)")
    parser.add_argument("--images", type=int, default=40, help="synthetic fields in the store")
    parser.add_argument("--worker", choices=("bare", "fit"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parse_args(parser, QUICK)
    if args.worker:
        print(json.dumps(run_bare(args) if args.worker == "bare" else run_fit(args)))
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp), args.size, args.images)
        common = [
            "--arch",
            args.arch,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--store",
            str(store),
        ]
        results = {"bare": [], "fit": []}
        for _ in range(args.rounds):
            for worker in ("bare", "fit"):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", worker, *common],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[worker].append(json.loads(out.strip().splitlines()[-1]))
    best = {worker: max(runs, key=lambda r: r["cells_per_s"]) for worker, runs in results.items()}
    ratio = best["fit"]["cells_per_s"] / best["bare"]["cells_per_s"]
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads; {machine()}"
    )
    print(
        f"training throughput, {args.arch}, 4 channels, {args.size} px, batch {args.batch}, "
        f"{args.steps} batches per run, best of {args.rounds} ({device})"
    )
    print(f"{'':28s}{'cells/s':>10s}{'peak RSS GiB':>14s}")
    for worker, label in (("bare", "bare torchvision loop"), ("fit", "hpa_embed fit")):
        row = best[worker]
        print(
            f"{label:28s}{row['cells_per_s']:10.2f}{row['max_rss_gib']:14.2f}"
            + (f"   GPU peak {row['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in row else "")
        )
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"fit / bare = {ratio:.3f}   (target >= 0.90: {verdict})")
    print(
        "all runs (cells/s): "
        + "; ".join(
            f"{w} " + ", ".join(f"{r['cells_per_s']:.2f}" for r in runs) for w, runs in results.items()
        )
    )
    setting = f"{args.arch}, {args.size} px, batch {args.batch}"
    fit, bare = best["fit"], best["bare"]
    write_rows(args.json, [
        Row(f"training throughput, fit ({setting})", fit["cells_per_s"], "cells/s", bare["cells_per_s"],
            "bare torchvision loop", "higher", f">= {TARGET_RATIO:g}x bare", ratio >= TARGET_RATIO),
        Row(f"peak memory (max RSS), fit ({setting})", fit["max_rss_gib"], "GiB", bare["max_rss_gib"],
            "bare torchvision loop", "lower"),
    ])


if __name__ == "__main__":
    main()
