"""Embedding throughput of ``hpa_embed.embed.embed`` vs a bare torchvision forward pass.

Both run the same backbone (ResNet-50, 4 input channels, 128 px, channels-last, inference mode)
on the same number of cells in batches of the same size:

- bare: torchvision ResNet-50 on float tensors already in memory;
- embed: ``embed_store(checkpoint, store)``: loading the checkpoint, reading crops from the CellStore,
  preprocessing, the forward pass and the embedding head, whole call timed.

Target: embed >= 0.9 x bare cells/s. Run: ``python benchmarks/bench_embed.py`` (about 3 minutes
on 2 CPU cores; ``--quick``: a third of the cells, one round; ``--json PATH`` writes the figures
as rows).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from common import Row, machine, parse_args, synthetic_store, write_rows

from hpa_embed.config import ModelConfig
from hpa_embed.embed import embed_store
from hpa_embed.models import create_model, save_checkpoint
from hpa_embed.store import CellStore

TARGET_RATIO = 0.9
QUICK = {"images": 16, "rounds": 1}


def bare_forward(arch: str, n: int, batch: int, size: int) -> float:
    model = torchvision.models.get_model(arch, weights=None, num_classes=19)
    conv = model.conv1
    model.conv1 = torch.nn.Conv2d(
        4, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
    )
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.rand(batch, 4, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        started = time.perf_counter()
        for start in range(0, n, batch):
            model(x[: min(batch, n - start)])
    return n / (time.perf_counter() - started)


def ours(checkpoint: Path, store: Path, batch: int) -> tuple[float, int]:
    started = time.perf_counter()
    result = embed_store(checkpoint, store, batch_size=batch, device="cpu", progress=False)
    return len(result) / (time.perf_counter() - started), len(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=48, help="synthetic fields (about 15 cells each)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating (best counts)")
    args = parse_args(parser, QUICK)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = synthetic_store(tmp, args.size, args.images)
        n = len(CellStore.open(store))
        config = ModelConfig(arch=args.arch, in_chans=4, crop_size=args.size)
        torch.manual_seed(0)
        checkpoint = save_checkpoint(tmp / "checkpoint", create_model(config).eval(), config)
        ours(checkpoint, store, args.batch)  # warm-up: page cache and allocator, as the bare warm-up
        bare_runs, our_runs = [], []
        for _ in range(args.rounds):
            bare_runs.append(bare_forward(args.arch, n, args.batch, args.size))
            our_runs.append(ours(checkpoint, store, args.batch)[0])
    bare, best = max(bare_runs), max(our_runs)
    print(
        f"embedding throughput, {args.arch}, 4 channels, {args.size} px, batch {args.batch}, {n} cells, "
        f"best of {args.rounds} (CPU, {torch.get_num_threads()} threads; {machine()})"
    )
    print(f"{'bare torchvision forward':28s}{bare:10.2f} cells/s")
    print(f"{'hpa_embed embed_store()':28s}{best:10.2f} cells/s")
    ratio = best / bare
    print(f"embed / bare = {ratio:.3f}   (target >= 0.90: {'PASS' if ratio >= TARGET_RATIO else 'MISS'})")
    print(
        "all runs (cells/s): bare "
        + ", ".join(f"{v:.2f}" for v in bare_runs)
        + "; embed "
        + ", ".join(f"{v:.2f}" for v in our_runs)
    )
    write_rows(args.json, [
        Row(f"embedding throughput, embed_store ({args.arch}, {args.size} px, batch {args.batch}, {n} cells)",
            best, "cells/s", bare, "bare torchvision forward", "higher", f">= {TARGET_RATIO:g}x bare",
            ratio >= TARGET_RATIO),
    ])


if __name__ == "__main__":
    main()
