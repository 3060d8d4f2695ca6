"""The ``hpa-embed`` command line: one subcommand per stage, each a thin call into the API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

log = logging.getLogger("hpa_embed")


# --------------------------------------------------------------------------- subcommands


def _run_generate(args: argparse.Namespace) -> int:
    import dataclasses

    from .synthetic import generate_dataset, get_preset

    config = get_preset(args.preset)
    overrides = {name: value for name, value in (("size", args.size), ("difficulty", args.difficulty),
                                                 ("bit_depth", args.bit_depth)) if value is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
    out = generate_dataset(args.out, args.images, config, seed=args.seed, workers=args.workers)
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


def _run_demo(args: argparse.Namespace) -> int:
    from .analysis import label_statistics
    from .io import list_field_ids, read_field, read_labels
    from .synthetic import generate_dataset, get_preset
    from .visualise import plot_label_statistics, save_channel_views

    out = Path(args.out)
    data = out / "data"
    print(f"[1/3] generating {args.images} synthetic fields ({args.preset} preset) in {data}")
    generate_dataset(data, args.images, get_preset(args.preset), seed=args.seed, workers=args.workers)

    print("[2/3] analysing the labels")
    stats = label_statistics(read_labels(data / "train.csv"))
    print(stats.to_text())
    plot_label_statistics(stats, out / "analysis")

    first = list_field_ids(data / "train")[0]
    print(f"[3/3] channel views of {first}")
    save_channel_views(read_field(data / "train", first), out / "channels", first)
    print(f"done: see {out}/analysis and {out}/channels")
    return 0


# --------------------------------------------------------------------------- parser


def get_parser() -> argparse.ArgumentParser:
    """The ``hpa-embed`` argument parser (one subparser per stage)."""
    parser = argparse.ArgumentParser(
        prog="hpa-embed",
        description="Single-cell embeddings of Human Protein Atlas images.",
    )
    parser.add_argument("--version", action="version", version=f"hpa_embed {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", metavar="<stage>", required=True)

    demo = commands.add_parser(
        "demo", help="run the pipeline end to end on built-in synthetic data",
        description="Generate a small synthetic HPA set and run every stage on it.",
    )
    demo.add_argument("--out", default="demo-output", help="output directory (default: demo-output)")
    demo.add_argument("--images", type=int, default=12, help="number of synthetic fields")
    demo.add_argument("--preset", default="small", help="synthetic preset (default: small)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    demo.set_defaults(run=_run_demo)

    generate = commands.add_parser(
        "generate", help="write a synthetic HPA data set (Kaggle layout + true masks and labels)",
        description="Write <out>/train/<ID>_{red,green,blue,yellow}.png, <out>/train.csv and the "
        "truth (<out>/truth/: cell and nucleus masks, per-cell labels).",
    )
    generate.add_argument("out", help="output directory")
    generate.add_argument("--images", type=int, default=16, help="number of fields")
    generate.add_argument("--preset", default="standard", help="tiny | small | standard | ...")
    generate.add_argument("--size", type=int, help="field side in pixels (overrides the preset)")
    generate.add_argument("--difficulty", type=float, help="0 (easy) .. 1 (hard)")
    generate.add_argument("--bit-depth", type=int, choices=(8, 16), help="8 or 16")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    generate.set_defaults(run=_run_generate)

    analyse = commands.add_parser(
        "analyse", aliases=["analyze"], help="label statistics of a train.csv (tables and PNG plots)",
        description="Label counts per class, labels per image and the most common label "
        "combinations, for the 2021 (ID,Label) and 2018 (Id,Target) formats.",
    )
    analyse.add_argument("labels", help="train.csv")
    analyse.add_argument("--out", help="directory for the plots (default: <csv dir>/analysis)")
    analyse.add_argument("--scheme", choices=("hpa2021", "hpa2018"), help="override the scheme")
    analyse.add_argument("--top", type=int, default=10, help="combinations to list")
    analyse.set_defaults(run=_run_analyse)

    channels = commands.add_parser(
        "channels", help="PNG views of each channel of a field and its RGBY composite",
    )
    channels.add_argument("directory", help="directory holding <ID>_<channel> images")
    channels.add_argument("image_id", help="the field's ID")
    channels.add_argument("--out", default="channels", help="output directory")
    channels.add_argument("--rgb", action="store_true", help="read red, green, blue only")
    channels.set_defaults(run=_run_channels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hpa-embed``; returns the exit code (2 for bad input, with the reason on stderr)."""
    from .io import DataError

    args = get_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except (DataError, FileNotFoundError) as error:
        print(f"hpa-embed {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
