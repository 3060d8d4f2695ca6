"""Cost of the 4-channel model and of checkpoints, against baselines.

Prints each measured figure beside its baseline and target:

- Inference throughput (cells/s) of the 4-channel ResNet-50 + heads vs the same model with
  3 channels, at the default crop size. Target: within 5% (only the first convolution grows).
- Training-step throughput (forward + backward) of the same pair. Target: within 5%.
- Checkpoint size vs the bytes of the state dict's tensors. Target: overhead < 1%.
- Checkpoint save and load times, and whether the reloaded model gives identical outputs.

Run: .venv/bin/python benchmarks/bench_models.py [--arch resnet50] [--batch 16] [--threads 1]
     [--channels-last] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import Row, machine, parse_args, write_rows

from hpa_embed.config import ModelConfig
from hpa_embed.models import create_model, load_checkpoint, save_checkpoint

QUICK = {"repeats": 2}


def timed_pair(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds per call of two functions, timed in alternation after a warm-up, so that
    load from other jobs on the machine falls on both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in zip((first, second), times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def model_steps(config: ModelConfig, batch: int, channels_last: bool):
    """(inference step, training step) closures for one model on random input."""
    torch.manual_seed(0)
    # channels_last pays on GPUs; on CPU its convolution backward is slower in this torch build
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(config).to(memory_format=memory_format)
    x = torch.rand(batch, config.in_chans, config.crop_size, config.crop_size)
    x = x.contiguous(memory_format=memory_format)

    def infer():
        model.eval()
        with torch.inference_mode():
            model(x)

    def train_step():
        model.train()
        output = model(x)
        (output.logits.sum() + output.embedding.sum()).backward()

    return infer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared box)")
    parser.add_argument("--channels-last", action="store_true")
    args = parse_args(parser, QUICK)
    torch.set_num_threads(args.threads)
    four = ModelConfig(arch=args.arch, in_chans=4)
    three = ModelConfig(arch=args.arch, in_chans=3)
    print(f"{args.arch}, crops {four.crop_size} px, batch {args.batch}, embedding {four.embedding_dim}, "
          f"CPU threads {torch.get_num_threads()}, channels_last {args.channels_last}, "
          f"median of {args.repeats}; {machine()}")
    print(f"{'measure':46s} {'measured':>12s} {'baseline':>12s}  target")
    infer4, train4 = model_steps(four, args.batch, args.channels_last)
    infer3, train3 = model_steps(three, args.batch, args.channels_last)
    rows = [("inference cells/s, 4 vs 3 channels", *timed_pair(infer4, infer3, args.repeats)),
            ("training cells/s, 4 vs 3 channels", *timed_pair(train4, train3, args.repeats))]
    figures = []
    for name, t_four, t_three in rows:
        ours, base = args.batch / t_four, args.batch / t_three
        verdict = "met" if ours >= 0.95 * base else "MISSED"
        print(f"{name:46s} {ours:12.1f} {base:12.1f}  >= 95%: {verdict} ({ours / base:.1%})")
        figures.append(Row(f"{name.split(',')[0]}, 4 channels ({args.arch}, batch {args.batch})", ours,
                           "cells/s", base, "same model, 3 channels", "higher", ">= 0.95x",
                           ours >= 0.95 * base))

    model = create_model(four).eval()
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    x = torch.rand(4, 4, four.crop_size, four.crop_size)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "checkpoint"
        t_save, t_load = timed_pair(lambda: save_checkpoint(directory, model, four, {"epoch": 1}),
                                    lambda: load_checkpoint(directory), args.repeats)
        size = sum(p.stat().st_size for p in directory.iterdir())
        loaded = load_checkpoint(directory)[0]
        with torch.inference_mode():
            identical = torch.equal(model(x).embedding, loaded(x).embedding)
    overhead = size / tensor_bytes - 1
    print(f"{'checkpoint bytes vs state-dict tensor bytes':46s} {size:12d} {tensor_bytes:12d}  "
          f"overhead < 1%: {'met' if overhead < 0.01 else 'MISSED'} ({overhead:.3%})")
    print(f"{'checkpoint save / load (s)':46s} {t_save:12.2f} {t_load:12.2f}  "
          f"(reloaded outputs identical: {identical})")
    figures += [
        Row(f"checkpoint bytes ({args.arch})", size, "B", tensor_bytes, "state-dict tensor bytes", "lower",
            "overhead < 1%", overhead < 0.01),
        Row(f"checkpoint save ({args.arch})", t_save, "s", better="lower"),
        Row(f"checkpoint load ({args.arch})", t_load, "s", better="lower"),
        Row("reloaded model gives identical outputs", identical, "yes/no", target="identical", met=identical),
    ]
    write_rows(args.json, figures)


if __name__ == "__main__":
    main()
