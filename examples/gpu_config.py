"""The GPU recipe from its config file: read it, say what it will do, run it on the GPU.

`examples/configs/gpu-resnet50.toml` describes the full-size run: 2,000 `standard` synthetic
fields, 128 px crops, a ResNet-50 trained for 20 epochs on class-balanced batches in mixed
precision (about 20 minutes of an A100-class GPU). `read_config_file` reads it into a frozen
`RunConfig` (every key it leaves out at its default; an unknown key or bad value is an error
naming the table and key), this script prints the plan, puts training on `cuda` when there is a
GPU, and hands the config to `run_pipeline`, which runs the stages into `--out` and skips
the ones already done when run again.

`--tiny` shrinks the same config with `RunConfig.replace` (12 `tiny` fields, ResNet-18, 32 px
crops, two batches of one epoch, on the CPU, no maps) so that the code path runs in well under
a minute on two CPU cores; CI runs it so.

    python examples/gpu_config.py --tiny                         # -> runs/examples/gpu-config-tiny
    python examples/gpu_config.py --out runs/resnet50             # on a machine with a GPU
    python examples/gpu_config.py --config my-run.toml --show     # print the plan and the full config
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from hpa_embed.config import InputConfig, RunConfig, read_config_file, to_toml
from hpa_embed.pipeline import run_pipeline

GPU_CONFIG = Path(__file__).resolve().parent / "configs" / "gpu-resnet50.toml"


def describe(config: RunConfig) -> str:
    """What a run of ``config`` does, a line per stage."""
    source, model, loss, data, train = config.input, config.model, config.loss, config.data, config.train
    fields = (f"{source.n_images} synthetic `{source.preset}` fields (seed {source.seed})"
              if source.source == "synthetic" else f"the fields in {source.images}, labels {source.labels}")
    metric = f" + {loss.metric} ({loss.miner} miner)" if loss.metric else ""
    frozen = (f", backbone frozen for {train.freeze_backbone_epochs} epoch(s)"
              if train.freeze_backbone_epochs else "")
    return "\n".join([
        f"  input     {fields}",
        f"  segment   {config.segment.segmenter} segmenter",
        f"  crop      {config.crop.crop_size} px crops of {', '.join(config.crop.channels)}",
        f"  model     {model.arch}, {model.in_chans} channels, embedding {model.embedding_dim}, "
        f"pretrained {model.pretrained or 'none (random)'}",
        f"  loss      {loss.classification}{metric}",
        f"  data      {data.label_mode}, batches of {data.batch_size} ({data.sampler} sampler), "
        f"{data.num_workers} loader workers",
        f"  train     {train.epochs} epoch(s), {train.optimizer} lr {train.lr} ({train.schedule}){frozen}, "
        f"precision {train.precision}, device {train.device}",
        f"  index     {config.index.kind} ({config.index.metric})",
        f"  classify  {', '.join(config.classify.methods)}; evaluate the {config.evaluate.split} split",
        f"  map       {'UMAP maps + the interactive cell map' if config.map.enabled else 'off'}",
    ])


def shrink(config: RunConfig) -> RunConfig:
    """The same run at toy size, for a CPU: every section not named here is kept as it is."""
    return config.replace(
        input=InputConfig(source="synthetic", preset="tiny", n_images=12),
        crop=replace(config.crop, crop_size=32),
        split=replace(config.split, fractions=(0.5, 0.2, 0.3)),  # a few test images, not one
        model=replace(config.model, arch="resnet18", crop_size=32, embedding_dim=32, pretrained=None),
        data=replace(config.data, batch_size=16, m_per_class=2, num_workers=0, batches_per_epoch=2),
        train=replace(config.train, epochs=1, freeze_backbone_epochs=0, device="cpu"),
        map=replace(config.map, enabled=False),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=GPU_CONFIG, help="run configuration (TOML)")
    parser.add_argument("--tiny", action="store_true", help="shrink it to run in seconds on a CPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="override the training device")
    parser.add_argument("--show", action="store_true", help="print the full config and stop")
    parser.add_argument("--workers", type=int, help="processes for the per-field stages (default: all cores)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/examples/gpu-config[-tiny])")
    args = parser.parse_args()

    config = read_config_file(args.config)
    if args.tiny:
        config = shrink(config)
    gpu = torch.cuda.is_available()
    device = args.device or ("cpu" if args.tiny else "cuda" if gpu else None)
    if device is not None:
        config = config.replace(train=replace(config.train, device=device))
    print(f"{args.config}{' (shrunk by --tiny)' if args.tiny else ''}, "
          f"{'a GPU: ' + torch.cuda.get_device_name() if gpu else 'no GPU'}:")
    print(describe(config))
    if args.show:
        print(to_toml(config), end="")
        return
    if device is None:
        sys.exit("no CUDA device here: this run takes hours on a CPU. Try --tiny, or --device cpu to run it "
                 "anyway.")

    out = args.out or Path("runs/examples/gpu-config" + ("-tiny" if args.tiny else ""))
    workers = args.workers or (1 if args.tiny else None)
    result = run_pipeline(config, out, workers=workers, progress=not args.tiny)
    print(f"stages run: {', '.join(result.ran) or 'none'}; up to date: {', '.join(result.skipped) or 'none'}")
    for method, summary in result.evaluation["methods"].items():
        scores = ", ".join(f"{name} {value:.3f}" for name, value in summary["scores"].items())
        print(f"  {method}: {summary['cells']} test cells of {summary['images']} images: {scores}")
    print(f"results in {out}/ (evaluation/summary.json, train/checkpoints/best, stages/*.json)")


if __name__ == "__main__":
    main()
